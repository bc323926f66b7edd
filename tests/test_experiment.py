"""tune.experiment reads a Ray Tune experiment from JSON alone, and agrees with Ray's own reader."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from nanogpt.errors import UserError
from tune.experiment import best_checkpoint, latest_checkpoint, read_trials

BLOB = {"_type": "CLOUDPICKLE_FALLBACK", "value": "80054e2e"}  # pickle of None, as Ray embeds it


def _trial_json(trial_id: str, status: str, dirname: str | None = None) -> str:
    """A trial entry shaped as Ray 2.60's Trial.get_json_state() writes it (the fields that matter)."""
    return json.dumps({"stub": False, "trainable_name": "train_gpt", "trial_id": trial_id, "storage": BLOB,
                       "config": {"n_layer": 1, "learning_rate": 1e-3}, "status": status,
                       "relative_logdir": dirname or f"trial_{trial_id}", "results": "80054e2e"})


def _write_state(exp: Path, stamp: str, trials: list[tuple[str, str]]) -> None:
    run_metadata = json.dumps({"num_failures": 0, "error_filename": None, "checkpoint_manager": BLOB})
    state = {"trial_data": [[_trial_json(t, s), run_metadata] for t, s in trials],
             "runner_data": {"_stopper": BLOB}, "stats": {"start_time": 0.0}}
    (exp / f"experiment_state-{stamp}.json").write_text(json.dumps(state))


def _write_trial(exp: Path, trial_id: str, val_losses: list[float], checkpoints=(), tail: str = "") -> Path:
    d = exp / f"trial_{trial_id}"
    d.mkdir()
    (d / "params.json").write_text(json.dumps({"n_layer": 2, "learning_rate": 3e-3}))
    lines = [json.dumps({"step": 5 * (i + 1), "val_loss": v, "trial_id": trial_id,
                         "checkpoint_dir_name": f"checkpoint_{i:06d}"}) for i, v in enumerate(val_losses)]
    (d / "result.json").write_text("\n".join(lines) + "\n" + tail)
    for i in checkpoints:
        (d / f"checkpoint_{i:06d}").mkdir()
    return d


@pytest.fixture
def exp(tmp_path):
    """A hand-made experiment: a, finished (with a cut-off last line); b, errored; c, pending, no dir yet;
    d, a directory the saved state does not know yet."""
    exp = tmp_path / "e"
    exp.mkdir()
    _write_state(exp, "2026-01-01_00-00-00", [("a", "RUNNING"), ("b", "RUNNING")])
    _write_state(exp, "2026-01-01_00-00-09", [("a", "TERMINATED"), ("b", "ERROR"), ("c", "PENDING")])
    _write_trial(exp, "a", [3.0, 2.0, 2.5], checkpoints=(1, 2), tail='{"step": 20, "val_lo')
    b = _write_trial(exp, "b", [4.0, float("nan")], checkpoints=(0, 1))
    (b / "error.txt").write_text("Failure # 1\nRuntimeError: boom\n")
    _write_trial(exp, "d", [])
    (exp / "best").mkdir()  # the search's own directories are no trials
    (exp / "plots").mkdir()
    return exp


def test_reads_trials_statuses_results_checkpoints_errors(exp):
    trials = {t.trial_id: t for t in read_trials(exp)}
    assert list(trials) == ["a", "b", "c", "d"]
    a, b, c, d = trials.values()
    assert (a.status, b.status, c.status, d.status) == ("TERMINATED", "ERROR", "PENDING", None)
    assert a.path == exp / "trial_a" and a.config == {"n_layer": 2, "learning_rate": 3e-3}
    assert [r["val_loss"] for r in a.results] == [3.0, 2.0, 2.5]  # the cut-off line is dropped
    assert list(a.checkpoints) == ["checkpoint_000001", "checkpoint_000002"]  # checkpoint_000000 is not on disk
    assert a.checkpoints["checkpoint_000001"]["val_loss"] == 2.0
    assert best_checkpoint(a) == exp / "trial_a" / "checkpoint_000001"
    assert best_checkpoint(a, "val_loss", "max") == exp / "trial_a" / "checkpoint_000002"
    assert best_checkpoint(a, "no_such_metric") is None
    # the newest on disk, whatever its loss: a finished trial's stable weights where it stopped (benchmarks/regret.py)
    assert latest_checkpoint(a) == exp / "trial_a" / "checkpoint_000002"
    assert b.error.endswith("RuntimeError: boom\n") and a.error is None
    assert best_checkpoint(b) == exp / "trial_b" / "checkpoint_000000"  # the NaN one is never best
    assert math.isnan(b.last_result["val_loss"])
    assert not c.path.exists() and c.results == [] and c.checkpoints == {} and latest_checkpoint(c) is None
    assert c.config == {"n_layer": 1, "learning_rate": 1e-3}  # from experiment_state, no params.json yet
    assert d.results == [] and d.last_result is None


def test_newest_state_that_parses_wins(exp):
    (exp / "experiment_state-2026-01-01_00-00-09.json").write_text('{"trial_data": [["{\\"trial_id')  # caught mid-copy
    statuses = {t.trial_id: t.status for t in read_trials(exp)}
    assert statuses == {"a": "RUNNING", "b": "RUNNING", "d": None}


def test_empty_result_json_and_no_state(exp):
    (exp / "trial_a" / "result.json").write_text("")
    for f in exp.glob("experiment_state-*.json"):
        f.unlink()
    trials = {t.trial_id: t for t in read_trials(exp)}
    assert list(trials) == ["a", "b", "d"] and {t.status for t in trials.values()} == {None}
    assert trials["a"].results == [] and trials["a"].checkpoints == {}


def test_names_from_the_directory_never_point_outside_it(exp, tmp_path):
    (tmp_path / "outside").mkdir()
    with open(exp / "trial_d" / "result.json", "a") as f:
        f.write(json.dumps({"val_loss": 0.1, "checkpoint_dir_name": "../../outside"}) + "\n")
    state = exp / "experiment_state-2026-01-01_00-00-09.json"
    state.write_text(state.read_text().replace("trial_c", "../../outside"))
    trials = {t.trial_id: t for t in read_trials(exp)}
    assert trials["d"].checkpoints == {} and best_checkpoint(trials["d"]) is None
    assert trials["c"].path == exp / "trial_c"


def test_has_checkpoint_decides_which_checkpoints_exist(exp):
    """A search at a URI: its local copy has no checkpoint directories, the URI does."""
    asked = []

    def at_uri(d: Path) -> bool:
        asked.append(d)
        return d.name == "checkpoint_000000"

    a = read_trials(exp, has_checkpoint=at_uri)[0]
    assert list(a.checkpoints) == ["checkpoint_000000"] and a.checkpoints["checkpoint_000000"]["val_loss"] == 3.0
    assert exp / "trial_a" / "checkpoint_000000" in asked


def test_reading_a_missing_or_empty_directory_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="not a directory"):
        read_trials(tmp_path / "missing")
    with pytest.raises(UserError, match="no Ray Tune experiment"):
        read_trials(tmp_path)


def test_reading_imports_neither_ray_nor_cloudpickle(exp):
    code = ("import sys; from tune.experiment import read_trials; read_trials(sys.argv[1]); "
            "bad = [m for m in ('ray', 'cloudpickle', 'ray.cloudpickle') if m in sys.modules]; "
            "assert not bad, bad")
    proc = subprocess.run([sys.executable, "-c", code, str(exp)], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr


@pytest.mark.slow
def test_agrees_with_ray_experiment_analysis(tiny_search):
    from ray.tune import ExperimentAnalysis, ResultGrid

    path, _ = tiny_search
    ea = ExperimentAnalysis(str(path), default_metric="val_loss", default_mode="min")
    grid = ResultGrid(ea)
    ours = read_trials(path)
    assert [t.trial_id for t in ours] == [t.trial_id for t in ea.trials]
    for mine, theirs, result in zip(ours, ea.trials, grid):
        assert mine.status == theirs.status
        assert mine.path == Path(theirs.path) == Path(result.path)
        assert mine.config == theirs.config
        df = ea.trial_dataframes[theirs.trial_id]
        assert [r["val_loss"] for r in mine.results] == df["val_loss"].tolist()
        assert [r["training_iteration"] for r in mine.results] == df["training_iteration"].tolist()
        assert mine.last_result["val_loss"] == theirs.last_result["val_loss"]
        kept = {Path(c.checkpoint.path).name: c.metrics["val_loss"]
                for c in theirs.run_metadata.checkpoint_manager.best_checkpoint_results}
        assert {name: m["val_loss"] for name, m in mine.checkpoints.items()} == kept
        best = ea.get_best_checkpoint(theirs)
        assert best_checkpoint(mine) == (Path(best.path) if best else None)
        assert (mine.error is None) == (result.error is None)
