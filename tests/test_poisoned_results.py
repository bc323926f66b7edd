"""Opening a results directory never runs code from it: every pickle Ray leaves there is replaced by a
payload that writes a marker file when unpickled, and neither tune.experiment nor the report (python -m
tune.report, report.load, load_curves, trials.csv) may write one; both work with the pickles deleted."""

import json
import pickle
import shutil
from pathlib import Path

import pandas as pd
import pytest

from conftest import run_cli
from tune.experiment import best_checkpoint, read_trials

pytestmark = pytest.mark.slow  # needs the shared tiny search on real Ray

# Trial fields Ray 2.60 stores as hex-encoded cloudpickle strings (Trial._nonjson_fields).
HEX_FIELDS = ("results", "extra_arg", "placement_group_factory", "_resources", "_default_placement_group_factory")


class _Payload:
    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('unpickled')",))


class _Planter:
    """Makes payloads, each with its own marker file under `markers`."""

    def __init__(self, markers: Path):
        self.markers = markers
        self.count = 0

    def payload(self, where: str) -> bytes:
        self.count += 1
        return pickle.dumps(_Payload(self.markers / f"{self.count}-{where.replace('/', '_')}"))

    def blobs(self, obj, where: str):
        """`obj` with every CLOUDPICKLE_FALLBACK blob replaced by a payload."""
        if isinstance(obj, dict):
            if obj.get("_type") == "CLOUDPICKLE_FALLBACK":
                return {"_type": "CLOUDPICKLE_FALLBACK", "value": self.payload(where).hex()}
            return {k: self.blobs(v, f"{where}.{k}") for k, v in obj.items()}
        if isinstance(obj, list):
            return [self.blobs(v, where) for v in obj]
        return obj


ERROR_TEXT = "Failure # 1 (occurred at 2026-11-25)\nRuntimeError: planted\n"


def _plant(exp: Path, markers: Path) -> dict[str, int]:
    """Replace every pickle in the experiment by a payload; return how many were planted where.
    The first trial becomes an errored one whose pickled exception (error.pkl, which Ray's ResultGrid
    unpickles for a trial that is not TERMINATED) is a payload too."""
    planter = _Planter(markers)
    planted = {}
    [state_file] = exp.glob("experiment_state-*.json")
    state = json.loads(state_file.read_text())
    trial_data = []
    for i, (trial_json, run_metadata) in enumerate(state["trial_data"]):
        trial = planter.blobs(json.loads(trial_json), "trial")
        for field in HEX_FIELDS:
            assert field in trial, f"Ray no longer stores {field} as a pickle: update HEX_FIELDS"
            trial[field] = planter.payload(field).hex()
        run_metadata = planter.blobs(json.loads(run_metadata), "run_metadata")
        if i == 0:
            trial["status"] = "ERROR"
            run_metadata.update(error_filename="error.txt", pickled_error_filename="error.pkl")
            trial_dir = exp / trial["relative_logdir"]
            (trial_dir / "error.txt").write_text(ERROR_TEXT)
            (trial_dir / "error.pkl").write_bytes(planter.payload("error.pkl"))
        trial_data.append([json.dumps(trial), json.dumps(run_metadata)])
    state["trial_data"] = trial_data
    state["runner_data"] = planter.blobs(state["runner_data"], "runner")
    state_file.write_text(json.dumps(state))
    planted["experiment_state"] = planter.count

    pickles = [*exp.glob("trial_*/params.pkl"), exp / "tuner.pkl", *exp.glob("searcher-state-*.pkl")]
    for f in pickles:
        assert f.is_file(), f
        f.write_bytes(planter.payload(f.name))
    planted["params.pkl"] = len(list(exp.glob("trial_*/params.pkl")))
    planted["searcher-state"] = len(list(exp.glob("searcher-state-*.pkl")))
    return planted


@pytest.fixture
def poisoned(tiny_search, tmp_path):
    """A copy of the shared search with every pickle replaced by a payload, and the (empty) marker folder."""
    src, _ = tiny_search
    exp = tmp_path / src.name
    shutil.copytree(src, exp)
    markers = tmp_path / "markers"
    markers.mkdir()
    planted = _plant(exp, markers)
    n_trials = len(list(exp.glob("trial_*")))
    assert planted["experiment_state"] > 5 * n_trials and planted["params.pkl"] == n_trials, planted
    assert planted["searcher-state"] == 1, planted
    return exp, markers


@pytest.fixture
def unpickled(tiny_search, tmp_path):
    """A copy of the shared search whose pickle files are deleted (experiment_state is JSON and stays)."""
    src, _ = tiny_search
    exp = tmp_path / src.name
    shutil.copytree(src, exp)
    for f in [*exp.rglob("*.pkl")]:
        f.unlink()
    return exp


def _assert_complete(exp: Path, reference: Path, errored: bool) -> None:
    """The reader sees in `exp` what it sees in the untouched `reference` (with its first trial errored)."""
    got, want = read_trials(exp), read_trials(reference)
    assert [t.trial_id for t in got] == [t.trial_id for t in want] and len(got) >= 8
    for i, (g, w) in enumerate(zip(got, want)):
        assert w.status == "TERMINATED" and w.error is None and w.results and w.checkpoints
        if errored and i == 0:
            assert (g.status, g.error) == ("ERROR", ERROR_TEXT)
        else:
            assert (g.status, g.error) == (w.status, w.error)
        assert (g.config, g.results) == (w.config, w.results)
        assert g.checkpoints == w.checkpoints
        assert best_checkpoint(g) == exp / best_checkpoint(w).relative_to(reference)


def test_reader_runs_no_planted_payload(poisoned, tiny_search):
    exp, markers = poisoned
    _assert_complete(exp, tiny_search[0], errored=True)
    assert not list(markers.iterdir()), "a payload ran"


def test_payloads_are_live(poisoned):
    """Control: Ray's own reader does unpickle experiment_state, so the test above would catch one that does."""
    from ray.tune import ExperimentAnalysis

    exp, markers = poisoned
    try:
        ExperimentAnalysis(str(exp))
    except Exception:
        pass  # the payloads return None where Ray expects its objects
    assert list(markers.iterdir())


def test_reader_without_any_pickle(unpickled, tiny_search):
    assert not list(unpickled.rglob("*.pkl"))
    _assert_complete(unpickled, tiny_search[0], errored=False)


def _assert_report_complete(exp: Path, n_trials: int) -> None:
    df = pd.read_csv(exp / "trials.csv")
    assert len(df) == n_trials and df["best_val_loss"].notna().sum() >= n_trials - 1
    assert (exp / "best" / "model.pt").is_file()
    text = (exp / "report.md").read_text()
    assert all(t in text for t in df["trial_id"].astype(str)), "report.md misses trials"


def test_report_runs_no_planted_payload(poisoned, tiny_search):
    from tune import report

    exp, markers = poisoned
    n_trials = len(read_trials(tiny_search[0]))
    for f in ("trials.csv", "report.md"):
        (exp / f).unlink()
    shutil.rmtree(exp / "best")
    proc = run_cli("tune.report", str(exp))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    df = report.load(exp)
    assert not list(markers.iterdir()), "a payload ran"
    assert len(df) == n_trials and df["best_val_loss"].notna().sum() >= n_trials - 1
    assert set(report.load_curves(exp)["trial_id"].astype(str)) == set(df["trial_id"].astype(str))
    _assert_report_complete(exp, n_trials)
    assert not list(markers.iterdir()), "a payload ran"


def test_report_without_any_pickle(unpickled, tiny_search):
    from tune import report

    n_trials = len(read_trials(tiny_search[0]))
    for f in ("trials.csv", "report.md"):
        (unpickled / f).unlink()
    shutil.rmtree(unpickled / "best")
    proc = run_cli("tune.report", str(unpickled))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert len(report.load(unpickled)) == n_trials
    _assert_report_complete(unpickled, n_trials)
