"""A resumed trial restarts from a checkpoint that is on storage, whatever Ray's saved state names.

Ray deletes a trial's older checkpoint as soon as it registers a newer one (CheckpointConfig(num_to_keep): the best
and the latest are kept), but its experiment state reaches storage later: on its next loop at the soonest, and
asynchronously. A search killed in between leaves a state that names a checkpoint Ray has deleted, and on --resume
Ray's restore of that trial fails ("does not exist on storage anymore") until the trial errors. Keeping more
checkpoints only narrows that window (the state is forced out once every num_to_keep checkpoints). Ray once fell back
to the newest checkpoint on storage (ray-project/ray#29099); its storage rewrite (2.7) dropped that. `CheckpointCheck`
does it again, before the trial's worker is given its storage: each checkpoint Ray tracks for the trial is checked on
storage, and when one is gone the trial continues from its newest complete checkpoint there (the training state in
it, spend included, is exact), or starts over when none is left, with one line saying which.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pyarrow.fs
from ray import tune
from ray.train._internal.checkpoint_manager import _CheckpointManager
from ray.train._internal.session import _TrainingResult

from nanogpt.checkpoint import TOKENIZER_FILE, CheckpointError, last_eval, read_checkpoint

log = logging.getLogger(__name__)

_CHECKPOINT_DIR = re.compile(r"checkpoint_(\d+)")  # Ray's StorageContext names them checkpoint_000042


class CheckpointCheck(tune.Callback):
    """Checks every trial once per run before it (re)starts: at the step's start, before Ray schedules its worker
    (which takes the trial's storage, with the index its next checkpoint is numbered after)."""

    def __init__(self):
        self._checked: set[str] = set()

    def on_step_begin(self, iteration, trials, **info):
        for trial in trials:
            if trial.trial_id not in self._checked and trial.status in ("PENDING", "PAUSED"):
                self._checked.add(trial.trial_id)
                match_storage(trial)


def match_storage(trial) -> None:
    """Make the trial's tracked checkpoints those that are on storage (see the module's docstring)."""
    manager = trial.run_metadata.checkpoint_manager
    named = manager.latest_checkpoint_result
    if named is None:  # never checkpointed: Ray starts it from the beginning
        return
    fs = trial.storage.storage_filesystem
    kept = [r for r in manager.best_checkpoint_results if _exists(fs, r.checkpoint.path)]
    if len(kept) == len(manager.best_checkpoint_results) and _exists(fs, named.checkpoint.path):
        return
    on_storage = _checkpoint_dirs(fs, trial.storage.trial_fs_path)
    latest = named if _exists(fs, named.checkpoint.path) else _newest_complete(fs, on_storage, named)
    fresh = _CheckpointManager(manager.checkpoint_config)
    for r in kept:  # ascending score, as Ray keeps them; Ray's own policy then drops those the latest displaces
        if latest is None or r.checkpoint.path != latest.checkpoint.path:
            fresh.register_checkpoint(r)
    if latest is not None:
        fresh.register_checkpoint(latest)
    trial.run_metadata.checkpoint_manager = fresh
    # new checkpoints are numbered after every directory on storage: none is written over
    trial.storage.current_checkpoint_index = max(on_storage, default=trial.storage.current_checkpoint_index)
    trial.invalidate_json_state()
    gone = named.checkpoint.path.rsplit("/", 1)[-1]
    if latest is named:
        log.warning("trial %s: a best checkpoint Ray's saved state tracks is gone from storage; it continues from %s, "
                    "as that state says", trial.trial_id, gone)
    elif latest is not None:
        name, step = latest.checkpoint.path.rsplit("/", 1)[-1], latest.metrics.get("step")
        log.warning("trial %s: %s, which Ray's saved state names as its checkpoint, is gone from storage (Ray deleted "
                    "it after its last snapshot); it continues from %s (step %s), its newest complete checkpoint",
                    trial.trial_id, gone, name, step)
    else:
        log.warning("trial %s: %s, which Ray's saved state names as its checkpoint, is gone from storage and no "
                    "complete checkpoint of it is left: it starts over", trial.trial_id, gone)


def _exists(fs: pyarrow.fs.FileSystem, path: str) -> bool:
    return fs.get_file_info(path).type != pyarrow.fs.FileType.NotFound


def _checkpoint_dirs(fs: pyarrow.fs.FileSystem, trial_path: str) -> dict[int, str]:
    """index -> path of the trial's checkpoint directories on storage."""
    infos = fs.get_file_info(pyarrow.fs.FileSelector(trial_path, allow_not_found=True))
    dirs = {}
    for info in infos:
        m = _CHECKPOINT_DIR.fullmatch(info.base_name)
        if m and info.type == pyarrow.fs.FileType.Directory:
            dirs[int(m.group(1))] = info.path
    return dirs


def _newest_complete(fs: pyarrow.fs.FileSystem, on_storage: dict[int, str], named: _TrainingResult):
    """The newest checkpoint on storage that reads back whole (a worker killed while copying one in leaves it
    cut short), as Ray's record of it: its own last evaluation's metrics over Ray's counters at the named one.
    None when none does."""
    for index in sorted(on_storage, reverse=True):
        checkpoint = tune.Checkpoint(on_storage[index], filesystem=fs)
        try:
            with checkpoint.as_directory() as d:
                meta, _ = read_checkpoint(d)
                if not (Path(d) / TOKENIZER_FILE).is_file():
                    raise CheckpointError(f"{d}: {TOKENIZER_FILE} is missing")
        except (CheckpointError, OSError) as e:
            log.debug("skipping %s: %s", on_storage[index], e)
            continue
        last = last_eval(meta)
        metrics = {**named.metrics, **last, "checkpoint_dir_name": on_storage[index].rsplit("/", 1)[-1]}
        return _TrainingResult(checkpoint=checkpoint, metrics=metrics)
    return None
