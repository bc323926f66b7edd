"""A full disk: files are replaced whole or not at all, the search stops with one line naming what could not be
written, --resume after that finishes exactly the trials that were left, and torn Ray state is refused.
The full disk is simulated (OSError ENOSPC injected, a file cut short): the real disk is never filled."""

import errno
import os

import optuna
import pandas as pd
import pytest
import torch

from conftest import TINY, assert_one_line_error, make_trainer, run_cli
from nanogpt.cli import run_main
from nanogpt.batches import TokenData
from nanogpt.errors import UserError
from tune.search import main as search_main


def _no_space(*args):
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), *args)


def test_checkpoint_write_on_a_full_disk_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    ids = torch.randint(0, 8, (400,)).numpy().astype("uint16")
    trainer = make_trainer((TokenData(train=ids, val=ids, val_chars_per_token=1.0, dataset="t"), None), base={},
                           n_layer=1, n_head=1, n_embd=8, block_size=8, vocab_size=8,
                           max_steps=2, batch_size=2, eval_interval=1, eval_iters=1)
    trainer.save(tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    real_save = torch.save

    def save_then_fill_the_disk(obj, f, *a, **kw):  # half a file, then the disk is full
        real_save({"model": {}}, f)
        raise _no_space()

    monkeypatch.setattr(torch, "save", save_then_fill_the_disk)
    with pytest.raises(UserError, match=r"model\.pt: No space left on device"):
        trainer.save(tmp_path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def _study(exp):
    return optuna.load_study(study_name=exp.name, storage=f"sqlite:///{exp / 'optuna.db'}")


@pytest.mark.slow
def test_full_disk_stops_the_search_with_one_line_and_resume_finishes_the_rest(tmp_path, monkeypatch, capsys):
    args = [*TINY, "--num-samples", "3", "--max-steps", "20", "--eval-interval", "5", "--scheduler", "fifo",
            "--max-concurrent", "1", "--results-dir", str(tmp_path), "--name", "full"]
    exp = tmp_path / "full"
    real_replace = os.replace

    def replace(src, dst, *a, **kw):  # the disk fills up as the first trial's outcome is recorded
        if str(dst).endswith("outcomes.json"):
            raise _no_space(str(src))
        return real_replace(src, dst, *a, **kw)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(SystemExit) as e:
        run_main(search_main, args)
    monkeypatch.undo()
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert e.value.code == 2 and len(err) == 1, err
    assert f"could not write {exp / 'outcomes.json'}: No space left on device (disk full)" in err[0]
    assert "--resume --name full" in err[0]

    resumed = run_cli("tune.search", "--resume", "--name", "full", "--results-dir", str(tmp_path), "--no-report")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    df = pd.read_csv(exp / "trials.csv")
    assert len(df) == 3 and set(df["outcome"]) == {"finished"}, df[["trial_id", "outcome"]]
    assert len(list(exp.glob("trial_*"))) == 3  # no trial started twice
    states = [t.state for t in _study(exp).trials]
    assert states == [optuna.trial.TrialState.COMPLETE] * 3, states


@pytest.mark.slow
def test_resume_from_torn_ray_state_uses_the_copy_or_is_refused(tmp_path):
    """Ray's state cut off mid-write (a full disk, a kill during Ray's copy): --resume puts back the search's own
    whole copy of Ray's last snapshot (tune.ray_state); without one it refuses and starts nothing."""
    args = [*TINY, "--num-samples", "2", "--max-steps", "10", "--eval-interval", "5", "--scheduler", "fifo",
            "--results-dir", str(tmp_path), "--name", "torn", "--no-report"]
    first = run_cli("tune.search", *args)
    assert first.returncode == 0, first.stdout + first.stderr
    exp = tmp_path / "torn"
    state = sorted(exp.glob("experiment_state-*.json"))[-1]
    whole = state.read_bytes()
    state.write_bytes(whole[: len(whole) // 2])  # cut mid-write
    trials_before = sorted(p.name for p in exp.glob("trial_*"))
    db_before = (exp / "optuna.db").read_bytes()
    (exp / ".ray-state").rename(tmp_path / "copy")

    resumed = run_cli("tune.search", "--resume", "--name", "torn", "--results-dir", str(tmp_path))
    assert resumed.returncode == 2
    assert_one_line_error(resumed, state.name, "cut off")
    assert sorted(p.name for p in exp.glob("trial_*")) == trials_before
    assert (exp / "optuna.db").read_bytes() == db_before
    assert not [t for t in _study(exp).trials if t.state == optuna.trial.TrialState.RUNNING]

    (tmp_path / "copy").rename(exp / ".ray-state")
    resumed = run_cli("tune.search", "--resume", "--name", "torn", "--results-dir", str(tmp_path))
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resuming from the search's copy of Ray's last whole snapshot" in resumed.stderr
    assert sorted(p.name for p in exp.glob("trial_*")) == trials_before  # nothing started again
    df = pd.read_csv(exp / "trials.csv")
    assert len(df) == 2 and set(df["outcome"]) == {"finished"}, df[["trial_id", "outcome"]]
