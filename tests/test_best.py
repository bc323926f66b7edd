"""Which trial is the best, the same everywhere (issue 29, 7 and 8): best/ is copied whole or not at all from a
search that is running (Ray deletes the checkpoint being copied), and a diverged trial is never best/, never
exported, never "best so far". Fast: a results directory made by hand (tests/test_trust.make_search), no Ray."""

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from test_trust import make_checkpoint, make_search
from tune import report

VOCAB = 25  # the uniform baseline ln(25) = 3.22 nats, as in issue 29


def _result(tid: str, step: int, val_loss: float, checkpoint: str | None = None, status: str = "running",
            **extra) -> dict:
    row = {"trial_id": tid, "step": step, "spend": float(step), "val_loss": val_loss, "val_bpc": val_loss,
           "n_params": 500, "tokens_seen": 64 * step, "elapsed_s": 1.0, "tokens_per_s": 64.0, "status": status, **extra}
    if checkpoint:
        row["checkpoint_dir_name"] = checkpoint
    return row


def _write_results(exp: Path, tid: str, rows: list[dict]) -> None:
    (exp / f"trial_{tid}" / "result.json").write_text("".join(json.dumps(r) + "\n" for r in rows))


def _add_checkpoint(exp: Path, tid: str, name: str, val_loss: float, step: int) -> None:
    """A newer checkpoint Ray registered for the trial, with its result line."""
    make_checkpoint(exp / f"trial_{tid}" / name)
    with open(exp / f"trial_{tid}" / "result.json", "a") as f:
        f.write(json.dumps(_result(tid, step, val_loss, name, outcome="finished", status="finished")) + "\n")


def _trial_json(exp: Path) -> dict:
    return json.loads((exp / "best" / "trial.json").read_text())


# --- 7. best/ from a search that is running ---------------------------------------------------------------------


@pytest.mark.parametrize("when", ["before listing", "mid-way"])
def test_a_checkpoint_deleted_while_copied_into_best_is_skipped_for_the_then_best(tmp_path, monkeypatch, when):
    """Ray registers a better checkpoint of the trial and deletes the one being copied: the trials are read again
    and the new best copied; best/ and trials.csv agree, and the report says what was skipped."""
    exp = make_search(tmp_path / "results")
    real = shutil.copytree
    calls = []

    def copytree(src, dst, **kw):
        calls.append(Path(src).name)
        if len(calls) > 1:
            return real(src, dst, **kw)
        _add_checkpoint(exp, "a0001", "checkpoint_000001", 1.5, 10)  # Ray: a better one, then the old one goes
        if when == "before listing":
            shutil.rmtree(src)
            return real(src, dst, **kw)

        def copy_then_delete(s, d, **kw2):  # the first file copied, then the directory is gone
            shutil.copy2(s, d, **kw2)
            shutil.rmtree(src, ignore_errors=True)
        return real(src, dst, copy_function=copy_then_delete, **kw)

    monkeypatch.setattr(report.shutil, "copytree", copytree)
    text = report.write_report(exp, max_new_tokens=2).read_text()
    assert calls == ["checkpoint_000000", "checkpoint_000001"]
    assert _trial_json(exp)["checkpoint"].endswith("trial_a0001/checkpoint_000001")
    assert (exp / "best" / "model.pt").is_file() and not (exp / "best.tmp").exists()
    csv = pd.read_csv(exp / "trials.csv")
    assert csv.loc[csv["trial_id"].eq("a0001"), "checkpoint"].iloc[0].endswith("checkpoint_000001")
    assert "trial a0001's checkpoint checkpoint_000000 vanished while it was copied into best/" in text


def test_best_is_left_as_it_was_when_every_checkpoint_vanishes_while_copied(tmp_path, monkeypatch):
    """Never a half-written best/: the one an earlier report wrote stays, whole, and the report says why."""
    exp = make_search(tmp_path / "results")
    report.export(exp)
    before = {f.name: f.read_bytes() for f in (exp / "best").iterdir()}
    real = shutil.copytree

    def copytree(src, dst, **kw):
        def copy_then_delete(s, d, **kw2):
            shutil.copy2(s, d, **kw2)
            shutil.rmtree(src, ignore_errors=True)
        return real(src, dst, copy_function=copy_then_delete, **kw)

    monkeypatch.setattr(report.shutil, "copytree", copytree)
    text = report.write_report(exp, max_new_tokens=2).read_text()
    assert {f.name: f.read_bytes() for f in (exp / "best").iterdir()} == before
    assert not (exp / "best.tmp").exists() and not (exp / "best.old").exists()
    assert "trial a0001's checkpoint" in text and "trial b0002's checkpoint" in text


def test_a_copy_that_fails_with_the_checkpoint_still_there_is_not_skipped(tmp_path, monkeypatch):
    """Only a vanished checkpoint is skipped: a full disk is one line, not another trial's weights in best/."""
    import errno

    from nanogpt.files import WriteFailed

    exp = make_search(tmp_path / "results")

    def full(src, dst, **kw):
        raise OSError(errno.ENOSPC, "No space left on device", str(dst))

    monkeypatch.setattr(report.shutil, "copytree", full)
    with pytest.raises(WriteFailed, match="No space left on device"):
        report.export(exp)
    assert not (exp / "best").exists() and not (exp / "best.tmp").exists()


# --- 8. a diverged trial is never the best ----------------------------------------------------------------------


@pytest.mark.parametrize("vocab_in_results", [True, False])
def test_a_trial_that_diverged_after_an_early_checkpoint_is_never_best(tmp_path, vocab_in_results):
    """Issue 29: val_loss 1052 where uniform is ln(25) = 3.2 left a checkpoint, then the loss became infinite. The
    only other trial has no checkpoint: no best/, and the report says the trial diverged. Without vocab_size in its
    results (a search made before), the vocabulary comes from a checkpoint's config.json."""
    exp = make_search(tmp_path / "results")
    extra = {"vocab_size": VOCAB} if vocab_in_results else {}
    _write_results(exp, "a0001", [_result("a0001", 5, 1052.0, "checkpoint_000000", **extra),
                                  _result("a0001", 6, float("inf"), status="diverged", outcome="diverged", **extra)])
    outcomes = json.loads((exp / "outcomes.json").read_text())
    outcomes["a0001"] = {"outcome": "diverged", "spend": 6.0, "step": 6}
    (exp / "outcomes.json").write_text(json.dumps(outcomes))
    shutil.rmtree(exp / "trial_b0002" / "checkpoint_000000")
    text = report.write_report(exp, max_new_tokens=2).read_text()
    assert not (exp / "best").exists()
    csv = pd.read_csv(exp / "trials.csv")
    assert csv.loc[csv["trial_id"].eq("a0001"), "outcome"].iloc[0] == "diverged"
    assert "best trial `a0001`" not in text and "diverged, never the best" in text


def test_a_finished_trial_above_the_uniform_baseline_is_diverged(tmp_path):
    """A trial that spent its budget without getting below ln(vocab) + 1 nat: diverged, in trials.csv and the
    report (which says why), never best/; a trial below it is the best even with a higher loss than the others'."""
    exp = make_search(tmp_path / "results")
    _write_results(exp, "a0001", [_result("a0001", 5, 5.0, "checkpoint_000000", status="finished",
                                          outcome="finished", vocab_size=VOCAB)])
    _write_results(exp, "b0002", [_result("b0002", 5, 4.0, "checkpoint_000000", status="finished",
                                          outcome="finished", vocab_size=VOCAB)])
    df = report.export(exp)
    assert list(df["outcome"]) == ["finished", "diverged"] and list(df["trial_id"]) == ["b0002", "a0001"]
    assert "above the uniform baseline ln(25) = 3.22 by more than 1 nat" in df["status"].iloc[1]
    assert _trial_json(exp)["trial_id"] == "b0002"


def test_a_trial_that_ended_diverged_is_never_best_even_with_a_low_early_loss(tmp_path):
    """Its configuration blows up: best/ and the final training take the best trial that did not diverge."""
    from tune.config import SearchConfig
    from tune.final import plan_final

    exp = make_search(tmp_path / "results")
    _write_results(exp, "a0001", [_result("a0001", 5, 1.0, "checkpoint_000000", vocab_size=VOCAB),
                                  _result("a0001", 6, float("nan"), status="diverged", outcome="diverged",
                                          vocab_size=VOCAB)])
    outcomes = json.loads((exp / "outcomes.json").read_text())
    outcomes["a0001"]["outcome"] = "diverged"
    (exp / "outcomes.json").write_text(json.dumps(outcomes))
    df = report.export(exp)
    assert _trial_json(exp)["trial_id"] == "b0002"
    import dataclasses

    config = dataclasses.replace(SearchConfig.load(exp), final_budget=20.0)
    assert plan_final(config, df)[0]["trial_id"] == "b0002"


def test_a_diverged_best_is_removed_and_never_exported(tmp_path):
    """best/ (and best-hf/) that an earlier run made from a trial that has diverged since do not outlive it."""
    import dataclasses

    from tune.config import SearchConfig
    from tune.summary import export_models

    exp = make_search(tmp_path / "results")
    shutil.rmtree(exp / "trial_b0002" / "checkpoint_000000")
    report.export(exp)
    assert _trial_json(exp)["trial_id"] == "a0001"
    config = dataclasses.replace(SearchConfig.load(exp), export="hf")
    export_models(config)
    assert (exp / "best-hf").is_dir()
    _write_results(exp, "a0001", [_result("a0001", 5, 1052.0, "checkpoint_000000", vocab_size=VOCAB)])
    text = report.write_report(exp, max_new_tokens=2).read_text()
    assert not (exp / "best").exists() and "which has diverged since: removed" in text
    assert export_models(config) == [] and not (exp / "best-hf").exists()


def test_progress_never_calls_a_diverged_trial_best_so_far(capsys):
    from tune.config import build_parser, config_from_args
    from tune.progress import Progress

    progress = Progress(config_from_args(build_parser().parse_args([])))
    a, b, c = (SimpleNamespace(trial_id=t, last_result={}) for t in "abc")
    rung = {"vocab_size": VOCAB, "cooldown_steps": 2}
    progress.on_trial_result(0, [], a, {"val_loss": 1052.0, **rung})  # above ln(25) + 1
    assert progress.best is None
    progress.on_trial_result(0, [], b, {"val_loss": 3.0, **rung})
    progress.on_trial_result(0, [], c, {"val_loss": 2.0, **rung})
    assert progress.best == (2.0, "c")
    c.last_result = {"val_loss": float("inf"), "outcome": "diverged", "step": 9, "spend": 9.0}
    progress.on_trial_complete(0, [], c)
    a.last_result = {"val_loss": 1052.0, "outcome": "finished", "step": 9, "spend": 9.0}
    progress.on_trial_complete(0, [], a)
    assert progress.best == (3.0, "b")
    lines = capsys.readouterr().out.splitlines()
    assert "c diverged" in lines[0] and "best so far 3.0000 (b)" in lines[0]
    assert "a diverged" in lines[1] and "best so far 3.0000 (b)" in lines[1]


def test_the_uniform_baseline_margin_spares_an_untrained_model():
    """A freshly initialised GPT scores about ln(vocab): not diverged; a blown-up one is."""
    import math

    import torch

    from nanogpt.model import GPT, GPTConfig
    from tune.outcomes import loss_diverged

    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=16, vocab_size=VOCAB, n_layer=1, n_head=2, n_embd=16)).eval()
    x, y = torch.randint(0, VOCAB, (4, 16)), torch.randint(0, VOCAB, (4, 16))
    loss = model(x, y)[1].item()
    assert abs(loss - math.log(VOCAB)) < 0.2 and not loss_diverged(loss, VOCAB)
    assert loss_diverged(1052.0, VOCAB) and loss_diverged(float("nan"), None) and not loss_diverged(1052.0, None)


def test_learning_curves_of_a_diverged_trial_do_not_flatten_the_others(tmp_path, monkeypatch):
    from tune import plots

    curves = pd.DataFrame([{"trial_id": t, "spend": s, "step": s, "val_loss": v}
                           for t, vals in (("a", [4.0, 3.1]), ("b", [4.2, 3.3]), ("c", [1052.0, 300.0]))
                           for s, v in zip((10, 20), vals)])
    trials = pd.DataFrame({"trial_id": ["a", "b", "c"], "best_val_loss": [3.1, 3.3, 300.0],
                           "outcome": ["finished", "finished", "diverged"]})
    figs = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figs.append(fig))
    plots.learning_curves(curves, trials, tmp_path / "lc.png")
    ax = figs[0].axes[0]
    assert ax.get_ylim()[1] < 5 and plots.DIVERGED_LABEL in [t.get_text() for t in ax.get_legend().get_texts()]
