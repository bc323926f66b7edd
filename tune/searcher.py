"""Ray's OptunaSearch, telling Optuna what happened to each trial (see tune.outcomes)."""

from __future__ import annotations

import math

from ray.tune.search.optuna import OptunaSearch

from tune.outcomes import Outcome


class TruthfulOptunaSearch(OptunaSearch):
    """Ray's OptunaSearch, telling Optuna what happened: intermediate values keyed by spend, and
    COMPLETE / PRUNED / FAIL by the trial's outcome (see the module docstring)."""

    def on_trial_result(self, trial_id: str, result: dict):
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        value, spend = result.get(self.metric), result.get("spend")
        if value is None or spend is None or not math.isfinite(value):
            return
        ot_trial = self._ot_trials[trial_id]
        step = int(round(spend))
        if step not in ot_trial.storage.get_trial(ot_trial._trial_id).intermediate_values:
            ot_trial.report(value, step)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        import optuna

        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
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
