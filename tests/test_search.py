"""End-to-end searches on a real local Ray: tiny models, few steps."""

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
from nanogpt.model import GPTConfig

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def search(tiny_search):
    return tiny_search


def test_search_runs_all_trials_and_writes_outputs(search):
    exp, proc = search
    df = pd.read_csv(exp / "trials.csv")
    assert len(df) == 8
    for name in ("optuna.db", "search.json", "report.md", "best/model.pt", "best/tokenizer.json", "best/config.json"):
        assert (exp / name).exists(), name
    assert "top 5 by val_loss" in proc.stdout and "report:" in proc.stdout
    # sorted by validation loss, the best first, and best/ holds the best trial
    assert list(df["best_val_loss"]) == sorted(df["best_val_loss"])
    best = json.loads((exp / "best" / "trial.json").read_text())
    assert best["trial_id"] == df["trial_id"][0]
    for col in ("step", "val_loss", "val_bpc", "tokens_seen", "n_params", "seconds", "tokens_per_s", "node"):
        assert col in df.columns or col in ("step", "val_loss")


def test_asha_stopped_some_trials_early(search):
    exp, _ = search
    df = pd.read_csv(exp / "trials.csv")
    early = df[df["status"].str.startswith("stopped early by ASHA")]
    assert len(early) >= 1, df[["trial_id", "status", "steps"]]
    assert (early["steps"] < 40).all()
    assert set(df["status"]) <= {"finished"} | set(early["status"])


def test_experiment_is_restorable_and_study_complete(search):
    from ray.tune import Tuner

    exp, _ = search
    assert Tuner.can_restore(str(exp))
    study = optuna.load_study(study_name="e2e", storage=f"sqlite:///{exp / 'optuna.db'}")
    assert len(study.trials) == 8
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    assert {"n_layer", "n_head", "head_dim", "learning_rate", "batch_size"} <= set(study.trials[0].params) | {"n_layer", "n_head", "head_dim"}


def test_every_sampled_config_is_valid(search):
    exp, _ = search
    df = pd.read_csv(exp / "trials.csv")
    for row in df.itertuples():
        assert row.n_embd == row.n_head * row.head_dim
        GPTConfig(block_size=row.block_size, vocab_size=20, n_layer=row.n_layer, n_head=row.n_head,
                  n_embd=row.n_embd, dropout=row.dropout)
        assert 1e-4 <= row.learning_rate <= 3e-2 and row.batch_size in (4, 8)
    assert set(df["sampler"]) == {"TPESampler"}


def test_best_checkpoint_samples_text(search):
    exp, _ = search
    proc = run_cli("nanogpt.sample", "--checkpoint", str(exp / "best"), "--prompt", "Number 7", "--max-new-tokens", "20")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("Number 7") and len(proc.stdout.strip()) > len("Number 7")


def test_random_fifo_bpe_one_at_a_time(tmp_path):
    proc = run_cli("tune.search", *TINY, "--num-samples", "3", "--max-steps", "10", "--eval-interval", "5",
                   "--searcher", "random", "--scheduler", "fifo", "--tokenizer", "bpe", "--bpe-vocab-size", "300",
                   "--max-concurrent", "1", "--results-dir", str(tmp_path), "--name", "rf", "--no-report")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    exp = tmp_path / "rf"
    df = pd.read_csv(exp / "trials.csv")
    assert len(df) == 3
    assert set(df["status"]) == {"finished"}  # FIFO never stops a trial early
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


def test_interrupt_then_resume_ends_with_exactly_n_trials(tmp_path):
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

    resumed = run_cli("tune.search", "--resume", "--name", "rs", "--results-dir", str(tmp_path), "--no-report")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    df = pd.read_csv(exp / "trials.csv")
    assert len(df) == 6 and set(df["status"]) == {"finished"}, df[["trial_id", "status"]]
    # finished trials were not trained again
    after = terminated_trials(exp)
    for trial, mtime in before.items():
        assert after[trial] == mtime, f"{trial} was retrained"
    study = optuna.load_study(study_name="rs", storage=f"sqlite:///{exp / 'optuna.db'}")
    assert len([t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]) == 6
    # the restored searcher is still TPE: it sampled every trial, the new ones included
    assert set(df["sampler"]) == {"TPESampler"}
    assert all(math.isfinite(v) for v in df["best_val_loss"])
