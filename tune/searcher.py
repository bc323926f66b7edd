"""Ray's OptunaSearch, made safe to resume, and telling Optuna what happened to each trial (see tune.outcomes).

The study lives in SQLite (optuna.db): every report and tell is on disk at once. Ray's snapshot of the searcher
(its trial map and the set of trials it has told) is taken every few seconds. After a crash, a trial that ended
between the last snapshot and the crash is RUNNING in Ray's state and is rerun from its last checkpoint, while
the study already holds its end. Optuna refuses to tell a finished trial twice (ValueError) and to report to it,
so both searchers below ask the study first: what the study holds is the record, and the rerun is not told.
"""

from __future__ import annotations

import logging
import math

from ray.tune.search.optuna import OptunaSearch

from tune.outcomes import Outcome

log = logging.getLogger(__name__)


class ResumableOptunaSearch(OptunaSearch):
    """Ray's OptunaSearch (its own telling: COMPLETE whenever the last result has the metric), which does not
    tell or report to a trial the study already records as finished."""

    def suggest(self, trial_id: str):
        config = super().suggest(trial_id)
        if trial_id in self._ot_trials:  # so a trial seen in optuna-dashboard is found in trials.csv
            self._ot_trials[trial_id].set_user_attr("ray_trial_id", trial_id)
        return config

    def _study_trial(self, trial_id: str):
        """The study's record of the trial (one read of the storage), or None for a trial it does not hold."""
        ot_trial = self._ot_trials.get(trial_id)
        return None if ot_trial is None else ot_trial.storage.get_trial(ot_trial._trial_id)

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
