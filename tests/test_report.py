"""The report: built from the experiment's JSON files (no pickle, no Ray), robust to partial experiments."""

import shutil
import struct

import numpy as np
import pandas as pd
import pytest

from conftest import run_cli
from tune import report

pytestmark = pytest.mark.slow  # needs the shared tiny search on real Ray

PNG = b"\x89PNG\r\n\x1a\n"


def _png_size(path):
    data = path.read_bytes()
    assert data[:8] == PNG, f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


@pytest.fixture
def exp(tiny_search, tmp_path):
    """A private copy of the shared search, free to damage."""
    src, _ = tiny_search
    dst = tmp_path / src.name
    shutil.copytree(src, dst)
    return dst


def test_load_one_row_per_trial_sorted(tiny_search):
    path, _ = tiny_search
    df = report.load(path)
    assert len(df) == 8
    assert list(df.columns) == report.COLUMNS
    assert df["best_val_loss"].is_monotonic_increasing
    assert (df["n_embd"] == df["n_head"] * df["head_dim"]).all()
    assert df["n_params"].gt(0).all() and df["tokens_per_s"].gt(0).all()
    assert (df["best_val_loss"] <= df["last_val_loss"] + 1e-12).all()
    csv = pd.read_csv(path / "trials.csv")
    assert list(csv["trial_id"]) == list(df["trial_id"])


def test_probe_lines_generate_on_one_thread(tiny_search, monkeypatch):
    """Greedy generation on two threads waits on the busy second core many times over (RESULTS.md, "Search
    overhead"): the terminal's probe lines run on one thread like the report, and give the threads back."""
    import torch

    from tune import probes

    path, _ = tiny_search
    seen, cells = [], probes.probe_cells
    monkeypatch.setattr(probes, "probe_cells", lambda *a: seen.append(torch.get_num_threads()) or cells(*a))
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert report.probe_lines(path) and seen and set(seen) == {1}
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(old)


def test_learning_curves_long_format(tiny_search):
    path, _ = tiny_search
    curves = report.load_curves(path)
    assert set(curves["trial_id"]) == set(report.load(path)["trial_id"])
    assert {"step", "train_loss", "val_loss", "val_bpc", "elapsed_s"} <= set(curves.columns)
    for _, g in curves.groupby("trial_id"):
        assert g["step"].is_monotonic_increasing and g["step"].iloc[0] == 5


def test_report_sections_plots_and_generations(tiny_search):
    path, proc = tiny_search
    text = (path / "report.md").read_text()
    for section in ("## Summary", "## All trials, by validation loss", "## Generations", "## Pattern probes",
                    "## Plots", "untrained", "best trial", "median trial", "- trials: "):
        assert section in text, section
    for name in ("learning_curves", "val_loss_vs_params", "val_loss_vs_hparams", "importance", "attention",
                 "parallel_coordinates"):
        w, h = _png_size(path / "plots" / f"{name}.png")
        assert w > 100 and h > 100
        assert f"plots/{name}.png" in text
    # every generation block after a prompt header starts with that prompt
    for prompt in ["Number 7 comes before", "Number 456 comes before"]:
        block = text.split(f"### Prompt {prompt!r}")[1].split("### ")[0]
        fences = block.split("```")[1::2]
        assert fences and all(f.strip("\n").startswith(prompt) for f in fences)
    # the table lists every trial, best first
    df = report.load(path)
    table = text.split("## All trials, by validation loss")[1]
    header = next(line for line in table.splitlines() if line.startswith("| "))
    assert header.startswith("| trial_id | outcome | ") and header.count("|") <= 12  # about nine columns
    positions = [table.index(t) for t in df["trial_id"]]
    assert positions == sorted(positions)


def test_report_cli_rebuilds_with_custom_prompt(exp):
    (exp / "report.md").unlink()
    shutil.rmtree(exp / "plots")
    proc = run_cli("tune.report", str(exp), "--prompt", "Number 42 comes", "--top", "2")
    assert proc.returncode == 0, proc.stderr
    text = (exp / "report.md").read_text()
    assert "### Prompt 'Number 42 comes'" in text
    assert (exp / "plots" / "learning_curves.png").exists()


def test_the_summary_names_the_best_trials_architecture():
    from tune.sections import _architecture
    from tune.space import HPARAM_DEFAULTS

    assert _architecture(pd.Series(HPARAM_DEFAULTS)) == "learned positions, layernorm, gelu MLP, tied lm_head"
    modern = pd.Series({**HPARAM_DEFAULTS, "pos_emb": "rope", "mlp": "relu2", "qk_norm": np.bool_(True),
                        "zero_init": True, "tie_embeddings": False, "logit_softcap": np.float64(30)})
    assert _architecture(modern) == "rope, layernorm, relu2 MLP, qk_norm, untied lm_head, logit softcap 30, zero init"
    mup = pd.Series({**HPARAM_DEFAULTS, "parametrization": "mup", "mup_base_width": np.int64(64)})
    assert _architecture(mup) == "learned positions, layernorm, gelu MLP, tied lm_head, muP (base width 64)"


def test_pareto_front():
    from tune.plots import pareto_front

    df = pd.DataFrame({"n_params": [10, 20, 30, 40], "best_val_loss": [2.0, 2.5, 1.5, 1.6]})
    assert list(pareto_front(df)["n_params"]) == [10, 30]


def test_missing_checkpoints_and_corrupt_trial_do_not_break_the_report(exp):
    df = report.load(exp)
    best, second, third = df["trial_id"][:3]
    # the best trial lost its checkpoints; the second lost its results file; the third is garbage
    for ckpt in exp.glob(f"trial_{best}/checkpoint_*"):
        shutil.rmtree(ckpt)
    (exp / f"trial_{second}" / "result.json").unlink()
    (exp / f"trial_{second}" / "progress.csv").unlink(missing_ok=True)
    (exp / f"trial_{third}" / "result.json").write_text("{not json\n")
    shutil.rmtree(exp / "best")
    out = report.write_report(exp)
    text = out.read_text()
    assert "## Missing from this report" in text
    assert f"trial {best} has no checkpoint on disk" in text
    df2 = pd.read_csv(exp / "trials.csv")
    assert len(df2) == 8
    assert (exp / "best" / "model.pt").exists()  # best/ now comes from the best trial that has a checkpoint
    import json

    assert json.loads((exp / "best" / "trial.json").read_text())["trial_id"] != best


def test_interrupted_search_is_reported(exp):
    """A search stopped mid-way: Ray's state still says a trial is running and it never got an outcome."""
    import glob
    import json

    before = report.load(exp)
    victim, step = before.loc[before["outcome"].eq("pruned"), ["trial_id", "steps"]].iloc[0]
    state_file = sorted(glob.glob(str(exp / "experiment_state-*.json")))[-1]
    state = json.loads(open(state_file).read())
    for entry in state["trial_data"]:
        trial = json.loads(entry[0])
        if trial["trial_id"] == victim:
            trial["status"] = "RUNNING"
            entry[0] = json.dumps(trial)
    open(state_file, "w").write(json.dumps(state))
    outcomes = json.loads((exp / "outcomes.json").read_text())
    del outcomes[victim]
    (exp / "outcomes.json").write_text(json.dumps(outcomes))
    result = exp / f"trial_{victim}" / "result.json"
    rows = [json.loads(x) for x in result.read_text().splitlines()]
    rows[-1].pop("outcome")
    result.write_text("".join(json.dumps(r) + "\n" for r in rows))
    df = report.load(exp)
    row = df.loc[df["trial_id"] == victim].iloc[0]
    assert (row["outcome"], row["status"]) == ("interrupted", f"interrupted at step {step}")
    text = report.write_report(exp).read_text()
    assert "1 interrupted" in text


def test_report_of_a_directory_without_an_experiment_is_a_report_error(tmp_path):
    with pytest.raises(report.ReportError, match="no Ray Tune experiment"):
        report.load(tmp_path)
