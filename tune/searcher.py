"""Ray's OptunaSearch, made safe to resume, and telling Optuna what happened to each trial (see tune.outcomes).

The study lives in SQLite (optuna.db): every report and tell is on disk at once. Ray's snapshot of the searcher
(its trial map and the set of trials it has told) is taken every few seconds. After a crash, a trial that ended
between the last snapshot and the crash is RUNNING in Ray's state and is rerun from its last checkpoint, while
the study already holds its end. Optuna refuses to tell a finished trial twice (ValueError) and to report to it,
so both searchers below ask the study first: what the study holds is the record, and the rerun is not told.

Ray's saved state also holds the paths the search started with: unpickled, the study's storage and the search
algorithm's experiment take theirs from the search this process binds (tune.binding), where it is now.
"""

from __future__ import annotations

import copy
import logging
import math
from pathlib import Path

import optuna
from ray.tune.search import ConcurrencyLimiter, SearchGenerator, Searcher
from ray.tune.search.optuna import OptunaSearch

from tune.binding import THIS_SEARCH
from tune.outcomes import OPTUNA_DB, Outcome

log = logging.getLogger(__name__)

# a study trial Ray's run was stopped in by a signal (tune.stopping.settle_interrupted): marked FAIL with this user
# attribute so that optuna.db holds no RUNNING trial while nothing runs; a resumed run gives it a new trial
INTERRUPTED_ATTR = "interrupted"

class RelocatableSearchGenerator(SearchGenerator):
    """Ray's wrapper of a Searcher, whose restored experiment is where the search is now. Ray restores the trials
    it had with the new location but this wrapper's experiment with the one the search started in, so trials
    created after a resume would be written into the original directory (or fail, once it has moved)."""

    def set_state(self, state: dict) -> None:
        import pyarrow.fs

        super().set_state(state)
        storage = copy.copy(self._experiment.spec["storage"])
        path = THIS_SEARCH.run.path
        if "://" in path:
            fs, fs_path = pyarrow.fs.FileSystem.from_uri(path)
        else:
            fs, fs_path = pyarrow.fs.LocalFileSystem(), Path(path).as_posix()
        storage.storage_filesystem = fs
        storage.storage_fs_path, _, storage.experiment_dir_name = fs_path.rstrip("/").rpartition("/")
        self._experiment.spec["storage"] = self._experiment.storage = storage


def search_algorithm(searcher: Searcher, max_concurrent: int | None) -> RelocatableSearchGenerator:
    """What Tune is given: the searcher, limited to `max_concurrent` trials at once, in a relocatable wrapper."""
    return RelocatableSearchGenerator(ConcurrencyLimiter(searcher, max_concurrent) if max_concurrent else searcher)


class StudyStorage(optuna.storages.RDBStorage):
    """The search's optuna.db. Pickled without its path: unpickled (Tuner.restore), it opens the bound search's
    optuna.db, never the one where the search was started."""

    def __init__(self, experiment_dir: str | Path):
        super().__init__(_sqlite_url(experiment_dir))

    def __getstate__(self) -> dict:
        return {**super().__getstate__(), "url": None}

    def __setstate__(self, state: dict) -> None:
        super().__setstate__({**state, "url": _sqlite_url(THIS_SEARCH.run.dir)})


def _sqlite_url(experiment_dir: str | Path) -> str:
    return f"sqlite:///{Path(experiment_dir).resolve() / OPTUNA_DB}"


class ResumableOptunaSearch(OptunaSearch):
    """Ray's OptunaSearch (its own telling: COMPLETE whenever the last result has the metric), which does not
    tell or report to a trial the study already records as finished."""

    def suggest(self, trial_id: str):
        config = super().suggest(trial_id)
        if trial_id in self._ot_trials:  # so a trial seen in optuna-dashboard is found in trials.csv
            self._ot_trials[trial_id].set_user_attr("ray_trial_id", trial_id)
        return config

    def _study_trial(self, trial_id: str):
        """The study's record of the trial (one read of the storage), or None for a trial it does not hold. A trial
        marked interrupted when the search was stopped is given a new RUNNING trial first (_revive)."""
        ot_trial = self._ot_trials.get(trial_id)
        frozen = None if ot_trial is None else ot_trial.storage.get_trial(ot_trial._trial_id)
        if (frozen is not None and frozen.state == optuna.trial.TrialState.FAIL
                and frozen.user_attrs.get(INTERRUPTED_ATTR)):
            frozen = self._revive(trial_id, frozen)
        return frozen

    def _revive(self, trial_id: str, frozen):
        """Ray runs again a trial whose study trial was marked interrupted: the study gets a RUNNING trial of the same
        parameters and the reports it had, and this Ray trial is told through it from now on."""
        template = optuna.trial.create_trial(
            state=optuna.trial.TrialState.RUNNING, params=frozen.params, distributions=frozen.distributions,
            intermediate_values=frozen.intermediate_values,
            user_attrs={k: v for k, v in frozen.user_attrs.items() if k != INTERRUPTED_ATTR} | {"resumes": frozen.number})
        storage = self._ot_study._storage
        new_id = storage.create_new_trial(self._ot_study._study_id, template_trial=template)
        self._ot_trials[trial_id] = optuna.trial.Trial(self._ot_study, new_id)
        self._completed_trials.discard(trial_id)
        log.debug("trial %s: interrupted study trial %d continues as a new one", trial_id, frozen.number)
        return storage.get_trial(new_id)

    def _finished_in_study(self, trial_id: str, frozen=None) -> bool:
        frozen = frozen or self._study_trial(trial_id)
        if frozen is None or not frozen.state.is_finished():
            return False
        if trial_id not in self._completed_trials:
            log.debug("trial %s: the study already records it %s; not told again", trial_id, frozen.state.name)
            self._completed_trials.add(trial_id)
        return True

    def on_trial_result(self, trial_id: str, result: dict):
        if self._finished_in_study(trial_id):
            return
        super().on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        if self._finished_in_study(trial_id):
            return
        super().on_trial_complete(trial_id, result, error)


class TruthfulOptunaSearch(ResumableOptunaSearch):
    """Ray's OptunaSearch, telling Optuna what happened: intermediate values keyed by spend, and
    COMPLETE / PRUNED / FAIL by the trial's outcome (see the module docstring)."""

    def on_trial_result(self, trial_id: str, result: dict):
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        value, spend = result.get(self.metric), result.get("spend")
        if value is None or spend is None or not math.isfinite(value):
            return
        frozen = self._study_trial(trial_id)
        if self._finished_in_study(trial_id, frozen):
            return
        step = int(round(spend))
        if step not in frozen.intermediate_values:
            self._ot_trials[trial_id].report(value, step)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        import optuna

        if trial_id in self._completed_trials or trial_id not in self._ot_trials or self._finished_in_study(trial_id):
            return
        result = result or {}
        outcome = result.get("outcome")
        value = result.get(self.metric)
        if error or outcome in (Outcome.DIVERGED, Outcome.ERRORED) or value is None or not math.isfinite(value):
            state, value = optuna.trial.TrialState.FAIL, None
        else:
            self.on_trial_result(trial_id, result)  # the last evaluation, as the scheduler saw it
            if outcome == Outcome.FINISHED:
                state = optuna.trial.TrialState.COMPLETE
            else:  # pruned, or out of time: Optuna's TPE ranks these by their last step and value
                state, value = optuna.trial.TrialState.PRUNED, None
        self._ot_study.tell(self._ot_trials[trial_id], value, state=state)
        self._completed_trials.add(trial_id)
