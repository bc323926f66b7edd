"""A Ray Tune experiment directory (RESULTS_DIR/NAME), read from its JSON files only.

Ray's own readers (ExperimentAnalysis, ResultGrid, Tuner.restore) unpickle: experiment_state-*.json
embeds cloudpickle blobs (`{"_type": "CLOUDPICKLE_FALLBACK", "value": HEX}` and hex strings), and
params.pkl, tuner.pkl and searcher-state-*.pkl are pickles. Unpickling runs code chosen by whoever
wrote the directory, so this module reads only what is JSON: per trial params.json, result.json
(one JSON object a line) and error.txt, and from experiment_state-*.json the plain fields of each
trial (id, status, directory name, config), parsed with `json.loads` and no object hook, so the
blobs stay inert strings. Neither Ray nor pickle is imported.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

from nanogpt.errors import UserError

log = logging.getLogger(__name__)

STATUSES = ("PENDING", "RUNNING", "PAUSED", "TERMINATED", "ERROR")  # ray.tune.experiment.Trial's


@dataclass(frozen=True)
class TrialRecord:
    """One trial as the experiment directory records it."""

    trial_id: str
    path: Path  # the trial's directory (may not exist yet for a PENDING trial)
    config: dict  # params.json, else the config in experiment_state
    status: str | None  # one of STATUSES as Ray last saved it (Ray's own loaders read RUNNING as PENDING), else None
    results: list[dict]  # every complete line of result.json, in order
    checkpoints: dict[str, dict]  # checkpoint dir name (on disk) -> the result that reported it
    error: str | None  # error.txt

    @property
    def last_result(self) -> dict | None:
        return self.results[-1] if self.results else None


def read_trials(path: str | Path, has_checkpoint: Callable[[Path], bool] | None = None) -> list[TrialRecord]:
    """Every trial of the experiment at `path`: those in its newest experiment_state-*.json, in Ray's
    order (PENDING ones too, with or without a directory), then trial directories the state does not
    name yet (a state saved before they started, or no state file at all).
    `has_checkpoint(dir)`: whether a checkpoint directory exists (default: on this disk; a URI search's
    local copy leaves checkpoints at the URI)."""
    path = Path(path)
    has_checkpoint = has_checkpoint or Path.is_dir
    if not path.is_dir():
        raise UserError(f"{path} is not a directory: expected RESULTS_DIR/NAME of a search")
    states = _trial_states(path)
    dirs = sorted(p for p in path.iterdir() if p.is_dir() and ((p / "params.json").is_file() or (p / "result.json").is_file()))
    if states is None and not dirs:
        raise UserError(f"{path} holds no Ray Tune experiment (no experiment_state-*.json, no trial directories)")

    trials, seen = [], set()
    for trial_id, state in (states or {}).items():
        dirname = state.get("relative_logdir")
        trial_dir = inside(path, dirname if _is_plain_name(dirname) else f"trial_{trial_id}", "trial directory")
        seen.add(trial_dir.name)
        trials.append(_read_trial(trial_dir, trial_id, state, has_checkpoint))
    for trial_dir in dirs:
        if trial_dir.name not in seen:
            inside(path, trial_dir.name, "trial directory")
            trials.append(_read_trial(trial_dir, None, {}, has_checkpoint))
    return trials


def inside(root: str | Path, rel: str | Path, what: str = "name") -> Path:
    """root/rel, refused when it resolves outside root (through '..', an absolute path or a symbolic link):
    names read from a results directory (object-store keys, trial and checkpoint directories) and the files
    a report writes there never reach outside it."""
    root = Path(root)
    path = root / rel
    if Path(rel).is_absolute() or not path.resolve().is_relative_to(root.resolve()):
        raise UserError(f"{what} {str(rel)!r} resolves outside {root}: refusing it (a results directory "
                        f"never names files elsewhere; is this one crafted?)")
    return path


def open_study(db: str | Path, name: str):
    """The Optuna study `name` in `db` (optuna.db), every trial read once to prove the file whole; a file that
    is not one, cut short, or without that study is a UserError naming it. Opened without creating tables:
    reading someone else's study leaves it unchanged."""
    import optuna
    import sqlalchemy.exc

    db = Path(db)
    try:
        with db.open("rb") as f:
            head = f.read(16)
    except OSError as e:
        raise UserError(f"{db} cannot be read ({e.strerror}): no Optuna study") from None
    if head != b"SQLite format 3\0":
        raise UserError(f"{db} is not an SQLite database: no Optuna study")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        storage = optuna.storages.RDBStorage(f"sqlite:///{db.resolve()}", skip_table_creation=True)
        names = [s.study_name for s in storage.get_all_studies()]
        if name not in names:
            raise UserError(f"{db} holds no study {name!r} (it holds {', '.join(map(repr, names)) or 'none'})")
        study = optuna.load_study(study_name=name, storage=storage)
        study.get_trials(deepcopy=False)
        return study
    except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.OptunaError, RuntimeError) as e:  # malformed, cut, another schema
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{db} is not a readable Optuna study ({first})") from None


def best_checkpoint(trial: TrialRecord, metric: str = "val_loss", mode: Literal["min", "max"] = "min") -> Path | None:
    """The trial's checkpoint directory whose result has the best finite `metric`; None if it has none."""
    scored = [(metrics[metric], name) for name, metrics in trial.checkpoints.items() if _is_finite(metrics.get(metric))]
    if not scored:
        return None
    pick = min if mode == "min" else max
    return trial.path / pick(scored)[1]


def latest_checkpoint(trial: TrialRecord) -> Path | None:
    """The trial's newest checkpoint directory on disk (what Ray's Result.checkpoint names: under wsd, its stable
    weights where it stopped); None if it has none."""
    return trial.path / list(trial.checkpoints)[-1] if trial.checkpoints else None


def _trial_states(path: Path) -> dict[str, dict] | None:
    """trial_id -> the plain JSON fields Ray saved for it (status, relative_logdir, config...), from the
    newest experiment_state file that parses (Ray copies it in from a staging dir: a read can catch it
    half-written). None when there is no readable state file."""
    for file in sorted(path.glob("experiment_state-*.json"), reverse=True):
        inside(path, file.name, "file")
        try:
            # Ray 2.60 writes {"trial_data": [[trial_json, run_metadata_json], ...], "runner_data", "stats"};
            # trial_json is itself a JSON document. No object hook: CLOUDPICKLE blobs stay dicts of hex.
            data = json.loads(file.read_text(encoding="utf-8"))
            states = {}
            for trial_json, _run_metadata in data["trial_data"]:
                state = json.loads(trial_json)
                if isinstance(state, dict) and _is_plain_name(state.get("trial_id")):
                    states[state["trial_id"]] = state
            return states
        except (OSError, ValueError, TypeError, KeyError, RecursionError) as e:
            log.debug("skipping %s: %s", file, e)
    return None


def _read_trial(trial_dir: Path, trial_id: str | None, state: dict, has_checkpoint: Callable[[Path], bool]) -> TrialRecord:
    for name in ("result.json", "params.json", "error.txt"):  # a link to one of the reader's files is refused
        inside(trial_dir, name, "file")
    results = _read_results(trial_dir / "result.json")
    config = _read_json(trial_dir / "params.json")
    if not isinstance(config, dict):
        config = state.get("config") if isinstance(state.get("config"), dict) else {}
    if trial_id is None:
        ids = [r["trial_id"] for r in results if isinstance(r.get("trial_id"), str)]
        trial_id = ids[-1] if ids else trial_dir.name.removeprefix("trial_")
    checkpoints = {}
    for r in results:
        name = r.get("checkpoint_dir_name")
        if _is_plain_name(name) and has_checkpoint(inside(trial_dir, name, "checkpoint")):
            checkpoints[name] = r
            if (trial_dir / name).is_dir():  # at a URI, fetched later into the local copy: no links there
                for f in (trial_dir / name).iterdir():
                    inside(trial_dir, f.relative_to(trial_dir), "file")
    try:
        error = (trial_dir / "error.txt").read_text(encoding="utf-8", errors="replace")
    except OSError:
        error = None
    status = state.get("status")
    return TrialRecord(trial_id=trial_id, path=trial_dir, config=config,
                       status=status if status in STATUSES else None, results=results,
                       checkpoints=checkpoints, error=error)


def _read_results(file: Path) -> list[dict]:
    """The lines of result.json that are whole JSON objects; a cut-off last line is dropped."""
    try:
        text = file.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    results = []
    for line in text.splitlines():
        try:
            row = json.loads(line)
        except (ValueError, RecursionError):
            continue
        if isinstance(row, dict):
            results.append(row)
    return results


def _read_json(file: Path):
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None


def _is_plain_name(name) -> bool:
    """A single path component: names read from the directory never point outside it."""
    return isinstance(name, str) and name not in ("", ".", "..") and not any(c in name for c in "/\\\0")


def _is_finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

