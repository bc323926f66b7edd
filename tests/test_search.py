"""End-to-end searches on a real local Ray: tiny models, few steps."""

import dataclasses
import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest

from conftest import REPO, TINY, run_cli, terminated_trials
from nanogpt.model import GPT, GPTConfig
from nanogpt.train import optimizer_flops
from tune.report import COLUMNS
from tune.space import HPARAMS

pytestmark = pytest.mark.slow

OUTCOMES = {"finished", "pruned", "out_of_time", "diverged", "errored", "interrupted", "not_started"}


@pytest.fixture(scope="module")
def search(tiny_search):
    return tiny_search


def _study(exp: Path, name: str) -> dict[str, optuna.trial.FrozenTrial]:
    """trial_id -> Optuna trial, matched through the sampled parameters Ray gave each trial."""
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{exp / 'optuna.db'}")
    by_params = {json.dumps(t.params, sort_keys=True): t for t in study.trials}
    out = {}
    for params in exp.glob("trial_*/params.json"):
        cfg = json.loads(params.read_text())
        key = json.dumps({k: cfg[k] for k in study.trials[0].params}, sort_keys=True)
        out[params.parent.name.removeprefix("trial_")] = by_params[key]
    assert len(out) == len(study.trials)
    return out


def test_search_runs_all_trials_and_writes_outputs(search):
    exp, proc = search
    df = pd.read_csv(exp / "trials.csv")
    assert len(df) == 8 and list(df.columns) == COLUMNS
    for name in ("optuna.db", "search.json", "outcomes.json", "report.md", "best/model.pt", "best/tokenizer.json",
                 "best/config.json"):
        assert (exp / name).exists(), name
    assert "top 5 by val_loss" in proc.stdout and "report:" in proc.stdout and "outcomes: " in proc.stdout
    # sorted by validation loss, the best first, and best/ holds the best trial
    assert list(df["best_val_loss"]) == sorted(df["best_val_loss"])
    best = json.loads((exp / "best" / "trial.json").read_text())
    assert best["trial_id"] == df["trial_id"][0]
    assert df[["n_params", "tokens_seen", "seconds", "tokens_per_s", "spend", "steps"]].gt(0).all().all()
    assert df["node"].notna().all() and set(df["budget_unit"]) == {"steps"}
    assert set(df["outcome"]) <= OUTCOMES
    # nothing Ray prints for itself reaches the user: no banner box, no TensorBoard hint into /tmp
    assert "Configuration for experiment" not in proc.stdout + proc.stderr
    assert "tensorboard --logdir" not in proc.stdout + proc.stderr


def test_asha_pruned_some_trials_at_rungs(search):
    exp, _ = search
    df = pd.read_csv(exp / "trials.csv")
    pruned = df[df["outcome"] == "pruned"]
    assert len(pruned) >= 1, df[["trial_id", "outcome", "steps"]]
    assert set(pruned["spend"]) <= {5, 10, 20}  # grace 5, reduction factor 2, budget 40 steps
    assert set(df["outcome"]) <= {"finished", "pruned"}
    assert (df.loc[df["outcome"] == "finished", "spend"] == 40).all()
    assert all(s.startswith("pruned by ASHA at ") for s in pruned["status"])


def test_optuna_is_told_the_truth(search):
    """PRUNED in optuna.db exactly for the pruned trials (with intermediate values by spend), COMPLETE
    for the finished ones with their final val_loss."""
    from ray.tune import Tuner

    exp, _ = search
    assert Tuner.can_restore(str(exp))
    df = pd.read_csv(exp / "trials.csv").set_index("trial_id")
    study = _study(exp, "e2e")
    for trial_id, t in study.items():
        row = df.loc[trial_id]
        expected = {"finished": optuna.trial.TrialState.COMPLETE, "pruned": optuna.trial.TrialState.PRUNED}[row["outcome"]]
        assert t.state == expected, (trial_id, row["outcome"], t.state)
        assert max(t.intermediate_values) == row["spend"]  # keyed by spend, up to where it stopped
        if expected == optuna.trial.TrialState.COMPLETE:
            assert t.value == pytest.approx(row["last_val_loss"])
        assert set(t.params) == {"dropout", "learning_rate", "batch_size"}  # what TINY leaves to sample


def test_every_config_the_search_sampled_builds_within_its_ranges(search):
    exp, _ = search
    df = pd.read_csv(exp / "trials.csv")
    for row in df.itertuples():
        assert row.n_embd == row.n_head * row.head_dim
        GPTConfig(block_size=row.block_size, vocab_size=20, n_layer=row.n_layer, n_head=row.n_head,
                  n_embd=row.n_embd, dropout=row.dropout)
        assert 1e-4 <= row.learning_rate <= 3e-2 and row.batch_size in (4, 8)
    assert set(df["sampler"]) == {"TPESampler"}
    assert set(HPARAMS) <= set(df.columns)


def test_best_checkpoint_samples_text(search):
    exp, _ = search
    proc = run_cli("nanogpt.sample", "--checkpoint", str(exp / "best"), "--prompt", "Number 7", "--max-new-tokens", "20")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("Number 7") and len(proc.stdout.strip()) > len("Number 7")


def test_flops_budget_equal_spend_and_final_training(tmp_path):
    """Every finished trial spends the FLOPs budget to within one step; pruned ones stop at rung spends; the
    winner is trained once more for --final-budget into final/, which samples and is in the report."""
    budget, every = 4e8, 1e8
    proc = run_cli("tune.search", "--dataset", "counting", "--n-layer", "1:2", "--n-head", "2", "--head-dim", "8",
                   "--block-size", "16", "--batch-size", "4,8,16", "--lr", "3e-3:3e-2", "--num-samples", "6",
                   "--trial-budget", f"{budget:g}flops", "--eval-every", f"{every:g}", "--grace-period", f"{every:g}",
                   "--reduction-factor", "2", "--final-budget", "2e8flops", "--seed", "1", "--schedule", "cosine",
                   "--results-dir", str(tmp_path), "--name", "fl", "--top", "2", "-v")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    exp = tmp_path / "fl"
    # -v: every evaluation and ASHA's decisions, on stderr; stdout stays compact
    assert " eval    step " in proc.stderr and " ASHA rung at 1e8 FLOPs trained: val_loss " in proc.stderr
    assert " eval    step " not in proc.stdout
    df = pd.read_csv(exp / "trials.csv")
    assert set(df["budget_unit"]) == {"flops"}
    vocab = json.loads((exp / "best" / "config.json").read_text())["model"]["vocab_size"]
    for row in df.itertuples():
        model = GPT(GPTConfig(block_size=16, vocab_size=vocab, n_layer=row.n_layer, n_head=2, n_embd=16, bias=False))
        # forward and backward, and Muon's Newton-Schulz (the laptop preset's optimizer)
        step_flops = model.flops_per_token() * row.batch_size * 16 + optimizer_flops(model, row.optimizer)
        assert row.train_spend == pytest.approx(row.steps * step_flops)
        if row.outcome == "finished":  # training and cooldown branches together: the budget, to a step
            assert budget - step_flops < row.spend <= budget
        else:
            assert row.outcome == "pruned"
            rungs = [every * 2 ** k for k in range(3)]
            assert any(r <= row.train_spend < r + step_flops for r in rungs), (row.train_spend, step_flops)
    assert (df["outcome"] == "finished").any()
    # final/: the best finished configuration, trained for 2e8 FLOPs
    meta = json.loads((exp / "final" / "config.json").read_text())
    assert meta["train"]["budget_unit"] == "flops" and meta["train"]["budget"] == 2e8 and meta["status"] == "finished"
    best = df[df["outcome"] == "finished"].iloc[0]
    assert meta["model"]["n_layer"] == best["n_layer"] and meta["train"]["batch_size"] == best["batch_size"]
    assert "final model: val_loss" in proc.stdout
    assert proc.stdout.count("final  step ") == 10 and " of 2e8 FLOPs (" in proc.stdout  # one line an evaluation, as it trains
    sample = run_cli("nanogpt.sample", "--checkpoint", str(exp / "final"), "--prompt", "Number 3", "--max-new-tokens", "8")
    assert sample.returncode == 0 and sample.stdout.startswith("Number 3"), sample.stderr
    text = (exp / "report.md").read_text()
    assert "## Final model" in text and "**final**" in text


def test_random_fifo_bpe_one_at_a_time(tmp_path):
    proc = run_cli("tune.search", *TINY, "--num-samples", "3", "--max-steps", "10", "--eval-interval", "5",
                   "--searcher", "random", "--scheduler", "fifo", "--tokenizer", "bpe", "--bpe-vocab-size", "300",
                   "--max-concurrent", "1", "--results-dir", str(tmp_path), "--name", "rf", "--no-report",
                   "--export", "hf")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    exp = tmp_path / "rf"
    # --export hf: best/ as a Hugging Face model (tests/test_export.py checks what transformers makes of it)
    assert f"Hugging Face model in {exp / 'best-hf'}" in proc.stdout
    assert json.loads((exp / "best-hf" / "tokenizer.json").read_text())["model"]["type"] == "BPE"
    df = pd.read_csv(exp / "trials.csv")
    assert len(df) == 3
    assert set(df["outcome"]) == {"finished"}  # FIFO never stops a trial early
    assert set(df["sampler"]) == {"RandomSampler"}
    assert not (exp / "report.md").exists()
    assert json.loads((exp / "best" / "tokenizer.json").read_text())["kind"] == "bpe"
    # --max-concurrent 1: no two trials trained at the same time
    spans = []
    for f in exp.glob("trial_*/result.json"):
        rows = [json.loads(x) for x in f.read_text().splitlines()]
        spans.append((rows[0]["started_at"], rows[-1]["started_at"] + rows[-1]["time_total_s"]))
    spans.sort()
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:])), spans


def _finished_trials(exp: Path) -> dict[str, float]:
    """trial dir -> mtime of result.json, for trials whose last result says finished."""
    done = {}
    for result in exp.glob("trial_*/result.json"):
        # Ray copies result.json in from its staging directory: a read may catch it mid-copy
        lines = [x for x in result.read_text().splitlines() if x.endswith("}")]
        if lines and json.loads(lines[-1]).get("status") == "finished":
            done[result.parent.name] = result.stat().st_mtime
    return done


def test_interrupt_then_resume_with_the_original_command(tmp_path):
    args = [*TINY, "--num-samples", "6", "--max-steps", "150", "--eval-interval", "25", "--scheduler", "fifo",
            "--results-dir", str(tmp_path), "--name", "rs", "--no-report", "--seed", "1"]
    proc = subprocess.Popen([sys.executable, "-m", "tune.search", *args], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    exp = tmp_path / "rs"
    deadline = time.time() + 180
    while len(_finished_trials(exp)) < 2 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.5)
    assert proc.poll() is None, "the search ended before it could be interrupted: make trials longer"
    proc.send_signal(signal.SIGINT)  # Ctrl-C
    out, _ = proc.communicate(timeout=120)
    before = terminated_trials(exp)
    assert 1 <= len(before) < 6, out
    interrupted = pd.read_csv(exp / "trials.csv")
    assert interrupted["outcome"].isin(["interrupted", "not_started"]).any(), interrupted[["trial_id", "outcome"]]
    assert "--resume" in out

    # a changed flag is refused, naming it; the original command plus --resume continues
    changed = run_cli("tune.search", *[a if a != "150" else "160" for a in args], "--resume")
    assert changed.returncode == 2 and changed.stderr.startswith("error: --max-steps: rs was searched with 150"), changed.stderr
    resumed = run_cli("tune.search", *args, "--resume")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    df = pd.read_csv(exp / "trials.csv")
    assert len(df) == 6 and set(df["outcome"]) == {"finished"}, df[["trial_id", "outcome"]]
    # finished trials were not trained again
    after = terminated_trials(exp)
    for trial, mtime in before.items():
        assert after[trial] == mtime, f"{trial} was retrained"
    study = optuna.load_study(study_name="rs", storage=f"sqlite:///{exp / 'optuna.db'}")
    assert len([t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]) == 6
    # the restored searcher is still TPE: it sampled every trial, the new ones included
    assert set(df["sampler"]) == {"TPESampler"}
    assert all(math.isfinite(v) for v in df["best_val_loss"])


def test_time_budget_spans_resumes_and_optuna_hears_pruned(tmp_path):
    """--time-budget counts the search's running time over its runs, as Ray's does: a search stopped by Ctrl-C
    part-way (exit 130, the --resume line, no RUNNING trial left in optuna.db) gets the rest on --resume. The trials the budget stops end out_of_time, PRUNED in optuna.db with the
    evaluations they made, told by the callback and searcher restored from Ray's state."""
    budget = 45  # room for Ray's start-up before a trial has reported twice, on a slow or busy machine (pytest -n)
    args = [*TINY, "--num-samples", "4", "--max-steps", "100000", "--eval-interval", "25", "--scheduler", "fifo",
            "--compile", "off", "--time-budget", str(budget), "--results-dir", str(tmp_path), "--name", "tb", "--no-report", "--seed", "3"]
    exp = tmp_path / "tb"
    proc = subprocess.Popen([sys.executable, "-m", "tune.search", *args], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if any((d / "result.json").is_file() and len((d / "result.json").read_text().splitlines()) >= 2
               for d in exp.glob("trial_*")):
            break
        time.sleep(0.3)
    assert proc.poll() is None, "the search ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130 and f"--resume --name tb --results-dir {tmp_path}" in out, out  # Ctrl-C: 130
    first = json.loads((exp / "search_clock.json").read_text())["running_s"]
    assert 0 < first < budget - 2, (first, out)
    assert "out_of_time" not in set(pd.read_csv(exp / "trials.csv")["outcome"]), out
    stopped = optuna.load_study(study_name="tb", storage=f"sqlite:///{exp / 'optuna.db'}").trials
    assert stopped and all(t.state == optuna.trial.TrialState.FAIL and t.user_attrs["interrupted"] for t in stopped)

    t0 = time.time()
    resumed = run_cli("tune.search", *args, "--resume")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"the time budget ({budget} s) ended the search" in resumed.stdout, resumed.stdout
    total = json.loads((exp / "search_clock.json").read_text())["running_s"]
    # the stop lands on a trial's report: on a loaded machine (load 12-14 on 2 cores seen) reports come seconds apart
    assert budget - 1 <= total < budget + 15 and time.time() - t0 < budget + 60, (first, total)
    df = pd.read_csv(exp / "trials.csv")
    assert (df["outcome"] == "out_of_time").sum() >= 1, df[["trial_id", "outcome"]]
    assert set(df["outcome"]) <= {"out_of_time", "not_started"}, df[["trial_id", "outcome"]]
    study = optuna.load_study(study_name="tb", storage=f"sqlite:///{exp / 'optuna.db'}")
    counts = {state: [t.state for t in study.trials].count(state) for state in optuna.trial.TrialState}
    # out of time after an evaluation: PRUNED with what it reported; before its first one: FAIL (nothing to rank by)
    assert counts[optuna.trial.TrialState.PRUNED] == ((df["outcome"] == "out_of_time") & df["steps"].notna()).sum()
    assert all(t.intermediate_values for t in study.trials if t.state == optuna.trial.TrialState.PRUNED)
    # the trials the Ctrl-C stopped stay FAIL (interrupted); each one the resumed run ran again got a new trial
    resumed_from = {t.user_attrs.get("resumes") for t in study.trials}
    waiting = [t for t in study.trials if t.user_attrs.get("interrupted") and t.number not in resumed_from]
    assert all(t.state == optuna.trial.TrialState.FAIL for t in study.trials if t.user_attrs.get("interrupted"))
    # a trial Ray had drawn but not started stays RUNNING in the study (Optuna has no "not started"), or FAIL
    # (interrupted) when the Ctrl-C came while it waited
    assert counts[optuna.trial.TrialState.RUNNING] + len(waiting) == (df["outcome"] == "not_started").sum()


def test_time_budget_is_spent_on_the_search_clock(tmp_path):
    """The budget stops the search when the search clock (search_clock.json, over all its runs) reaches it. Ray's
    TimeoutStopper left each run's start-up and its end after its last save uncounted (a 45 s budget ran 56 s over
    one resume on a busy machine); the stopper Ray saves and restores holds nothing of its own."""
    import copy

    from tune.outcomes import CLOCK_FILE
    from tune.progress import OutcomeRecorder, TimeBudget

    (tmp_path / CLOCK_FILE).write_text(json.dumps({"running_s": 9.7}))  # what the search's earlier runs spent
    budget = copy.deepcopy(TimeBudget())  # a copy, as Ray restores it from its experiment state
    recorder = OutcomeRecorder(tmp_path, 10.0)
    recorder.setup()
    assert not budget.stop_all() and not budget("a trial", {"val_loss": 1.0})
    time.sleep(0.4)
    assert budget.stop_all()


def test_a_trial_the_budget_stopped_before_its_first_report_is_out_of_time_not_not_started(tmp_path):
    """A trial that started (its `start` line printed) and had not reported when the time budget ended the search ran:
    it is out_of_time (Optuna hears FAIL: no value to rank it by), never not_started. One Ray drew but never started
    stays not_started. (On a loaded machine a laptop trial's first evaluation came after a 2-minute budget.)"""
    from types import SimpleNamespace

    from ray.tune.experiment import Trial

    from tune.outcomes import CLOCK_FILE, describe, read_outcomes
    from tune.progress import OutcomeRecorder

    told = []
    searcher = SimpleNamespace(on_trial_complete=lambda trial_id, result: told.append((trial_id, result)))
    (tmp_path / CLOCK_FILE).write_text(json.dumps({"running_s": 10.0}))  # the budget is spent
    recorder = OutcomeRecorder(tmp_path, 10.0, searcher)
    recorder.setup()
    ran, drawn = Trial("t", stub=True, trial_id="ran"), Trial("t", stub=True, trial_id="drawn")  # Ray's own trials
    ran.set_status(Trial.TERMINATED)
    recorder.on_trial_start(0, [ran, drawn], ran)
    recorder.on_experiment_end([ran, drawn])
    assert read_outcomes(tmp_path) == {"ran": {"outcome": "out_of_time", "spend": None, "train_spend": None,
                                               "step": None}}
    assert [(tid, r["outcome"]) for tid, r in told] == [("ran", "out_of_time")]
    assert describe("out_of_time", {"spend": None}) == "stopped by the search's time budget before its first evaluation"


def test_final_budget_without_a_finished_trial_says_so(tmp_path, capsys):
    """No finished trial: one line at the end, and no final/ (no Ray needed to decide)."""
    from tune.config import build_parser, config_from_args
    from tune.final import train_winner

    config = config_from_args(build_parser().parse_args(["--max-steps", "50", "--final-budget", "100steps",
                                                         "--results-dir", str(tmp_path)]))
    trials = pd.DataFrame({"outcome": ["pruned", "errored"], "trial_id": ["a", "b"]})
    assert train_winner(config, None, None, trials) is None
    assert capsys.readouterr().out.strip() == "no trial finished its budget: no final training (--final-budget 100 steps)"
    assert not (config.experiment_dir / "final").exists()


def test_interrupted_final_training_continues_where_it_stopped(tmp_path):
    """train_final checkpoints into final.partial at every evaluation; run again (what --resume does) it
    continues from there and ends where an uninterrupted run ends."""
    import ray

    from nanogpt.token_cache import prepare
    from nanogpt.train import Trainer
    from tune.config import build_parser, config_from_args
    from tune.space import Hparams
    from tune.trainable import train_final

    config = config_from_args(build_parser().parse_args(
        [*TINY, "--max-steps", "10", "--final-budget", "40steps", "--results-dir", str(tmp_path), "--name", "f"]))
    data, tok = prepare("counting")
    hp = Hparams(n_layer=1, n_head=2, head_dim=8, dropout=0.0, learning_rate=3e-3, batch_size=4, block_size=16,
                 weight_decay=0.1, **({"optimizer": "adamw"} if "optimizer" in Hparams.__dataclass_fields__ else {}))
    partial = tmp_path / "final.partial"

    class Stop(Exception):
        pass

    config_dict = {k: getattr(hp, k) for k in Hparams.__dataclass_fields__}
    other = tmp_path / "other.partial"  # left by the final training of another winner (a resumed search's new pick)

    def stop_after_two(into: Path, continued_from: str | None):
        def save(metrics, t):
            t.save(into)
            (into / "final_for.json").write_text(json.dumps({"config": config_dict, "continued_from": continued_from}))
            if metrics["step"] >= 8:
                raise Stop
        return save

    for seed, into, continued_from in [(7, other, "another"), (None, partial, None)]:
        cfg = config.final_train_config(hp)
        first = Trainer(hp.model_config(tok.vocab_size), dataclasses.replace(cfg, seed=seed or cfg.seed), data, tok)
        with pytest.raises(Stop):
            first.run(stop_after_two(into, continued_from))
    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        final = ray.remote(num_cpus=1)(train_final)
        out = ray.get(final.remote(config_dict, data, tok.to_dict(), config, str(partial)))
        fresh = ray.get(final.remote(config_dict, data, tok.to_dict(), config, str(tmp_path / "fresh")))
        restarted = ray.get(final.remote(config_dict, data, tok.to_dict(), config, str(other)))
    finally:
        ray.shutdown()
    resumed_steps = [m["step"] for m in json.loads(out["files"]["config.json"])["history"]]
    assert resumed_steps == [4, 8, 12, 16, 20, 24, 28, 32, 36, 40] and out["status"] == "finished"
    assert out["metrics"]["val_loss"] == pytest.approx(fresh["metrics"]["val_loss"], rel=1e-5)
    # another trial's partial is not restored: the run starts over and ends where a fresh one does
    assert [m["step"] for m in json.loads(restarted["files"]["config.json"])["history"]] == resumed_steps
    assert restarted["metrics"]["val_loss"] == pytest.approx(fresh["metrics"]["val_loss"], rel=1e-5)


def test_wsd_search_reports_cooldown_rungs_and_continues_the_winner(tmp_path):
    """--schedule wsd: rung losses are the cooldown branches', every finished trial spends its budget on training
    and branches together, and --final-budget continues the best finished trial (report.md names it)."""
    proc = run_cli("tune.search", *TINY, "--num-samples", "3", "--max-steps", "40", "--eval-interval", "4",
                   "--grace-period", "4", "--reduction-factor", "3", "--scheduler", "fifo", "--schedule", "wsd",
                   "--final-budget", "80steps", "--seed", "1", "--results-dir", str(tmp_path), "--name", "w")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    exp = tmp_path / "w"
    df = pd.read_csv(exp / "trials.csv")
    assert (df["outcome"] == "finished").all() and (df["spend"] == 40).all() and (df["train_spend"] < 40).all()
    results = [json.loads(line) for line in next(exp.glob("trial_*/result.json")).read_text().splitlines()]
    # ASHA's rungs 4 and 12, and the end: 31 training steps, the rest of the 40 went to the three branches
    assert [r["step"] for r in results if r["cooldown_steps"]] == [4, 12, 31]
    meta = json.loads((exp / "final" / "config.json").read_text())
    best = df.iloc[0]
    assert meta["continued_from"] == best["trial_id"] and meta["step"] == 80 and meta["train"]["schedule"] == "wsd"
    # one model size: no scaling fit, the raw winner is continued, and final/ records why
    assert meta["chosen_by"]["chosen"] == meta["chosen_by"]["raw_winner"] == best["trial_id"]
    assert "no scaling fit" in meta["chosen_by"]["reason"] and "final choice: " in proc.stdout
    assert f"continued trial `{best['trial_id']}`" in (exp / "report.md").read_text()
    assert f"{best['trial_id']} continued from its stable checkpoint" in proc.stdout
    # its peak learning rate follows the new horizon, as a ladder run's: (80 / its trial's spend)^-0.125 of the trial's
    h = meta["horizon_lr"]
    assert h["beta"] == 0.125 and h["horizon"] == 80 and h["trial_lr"] == pytest.approx(best["learning_rate"])
    assert h["lr"] == pytest.approx(best["learning_rate"] * (80 / best["train_spend"]) ** -0.125)
    assert meta["train"]["learning_rate"] == pytest.approx(h["lr"])
    assert f"peak learning rate {h['lr']:.3g} for its horizon" in (exp / "report.md").read_text()


def test_rays_superseded_upload_of_a_vanished_temp_file_is_not_shown_every_other_error_is():
    """CI run 9: on SIGTERM Ray logged, with a traceback, that an older background upload of its experiment state
    failed on a temporary file of its own renamed under the copy ('.UUID-tmp-searcher-state-...pkl'); the forced
    save after it uploads the whole state again and waits. That record is dropped; any other error stays."""
    import logging

    from tune.ray_env import EXPERIMENT_STATE_LOGGER, SupersededUpload, quiet_ray

    def record(exc):
        return logging.LogRecord(EXPERIMENT_STATE_LOGGER, logging.ERROR, __file__, 1, "Saving experiment state to "
                                 "storage at '/r/term' failed with exception: ", None, (type(exc), exc, None))

    vanished = FileNotFoundError("[Errno 2] Failed to open local file '/tmp/ray/session_1/artifacts/2/term/"
                                 "driver_artifacts/.dcc6d5cb-6b22-tmp-searcher-state-2026-12-07_13-51-40.pkl'. "
                                 "Detail: [errno 2] No such file or directory")
    gone = FileNotFoundError("[Errno 2] Failed to open local file '/tmp/ray/session_1/artifacts/2/term/"
                             "driver_artifacts/experiment_state-2026-12-07.json'")
    full = OSError(28, "No space left on device")
    f = SupersededUpload()
    assert not f.filter(record(vanished))
    assert f.filter(record(gone)) and f.filter(record(full))
    assert f.filter(logging.LogRecord(EXPERIMENT_STATE_LOGGER, logging.WARNING, __file__, 1, "slow", None, None))
    quiet_ray()
    quiet_ray()
    assert sum(isinstance(x, SupersededUpload) for x in logging.getLogger(EXPERIMENT_STATE_LOGGER).filters) == 1


def test_sigterm_stops_the_search_for_resume_with_exit_143(tmp_path):
    """SIGTERM to the driver stops the search as Ctrl-C does: Ray saves its state, the line that continues it, exit
    143 (it ended in Ray's C++ abort, exit 134, with no line); no RUNNING trial is left in optuna.db, and a trial
    that had started is recorded interrupted, not not_started, even before its first report."""
    args = [*TINY, "--num-samples", "4", "--max-steps", "100000", "--eval-interval", "25", "--scheduler", "fifo",
            "--max-concurrent", "2", "--compile", "off", "--results-dir", str(tmp_path), "--name", "term",
            "--no-report", "--seed", "3"]
    exp = tmp_path / "term"
    proc = subprocess.Popen([sys.executable, "-m", "tune.search", *args], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 150
    while time.time() < deadline and proc.poll() is None:
        if any((d / "result.json").is_file() and (d / "result.json").read_text().strip() for d in exp.glob("trial_*")):
            break
        time.sleep(0.3)
    assert proc.poll() is None, "the search ended before it could be stopped"
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=150)
    assert proc.returncode == 143, out + err
    assert f"SIGTERM: the search stopped; continue it with: python -m tune.search --resume --name term " \
           f"--results-dir {tmp_path}" in err, err
    assert "Traceback" not in err, err
    study = optuna.load_study(study_name="term", storage=f"sqlite:///{exp / 'optuna.db'}")
    assert study.trials and not [t for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]
    df = pd.read_csv(exp / "trials.csv")
    started = {d.name.removeprefix("trial_") for d in exp.glob("trial_*")}
    assert set(df.loc[df["trial_id"].isin(started), "outcome"]) == {"interrupted"}, df[["trial_id", "outcome"]]
