"""ASHA that says why: each rung decision (the trial's val_loss against the rung's cutoff) logged at DEBUG as it is
made (`tune.search -v` shows it). The decisions are Ray's own; this only reads its brackets before it decides."""

from __future__ import annotations

import logging

from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from nanogpt.amounts import format_amount

log = logging.getLogger(__name__)


class ExplainedASHA(ASHAScheduler):
    """Ray's ASHAScheduler; `unit` names the budget's unit in the lines it logs."""

    def __init__(self, *args, unit: str = "", **kwargs):
        super().__init__(*args, **kwargs)
        self.unit = unit

    def _rung_reached(self, trial, result: dict) -> tuple[float, float | None, int] | None:
        """(milestone, cutoff in the metric's own sign or None, trials recorded there) of the rung this result
        is judged at, as _Bracket.on_result will find it; None when it reaches no new rung."""
        bracket, spent = self._trial_info.get(trial.trial_id), result.get(self._time_attr)
        if bracket is None or spent is None or self._metric not in result or spent >= self._max_t:
            return None
        for milestone, recorded in bracket._rungs:  # highest first
            if spent < milestone or trial.trial_id in recorded:
                continue
            cutoff = bracket.cutoff(recorded)
            return milestone, None if cutoff is None else self._metric_op * float(cutoff), len(recorded)
        return None

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        rung = self._rung_reached(trial, result) if log.isEnabledFor(logging.DEBUG) else None
        action = super().on_trial_result(tune_controller, trial, result)
        if rung is not None:
            milestone, cutoff, n = rung
            value, verdict = result[self._metric], "stopped" if action == TrialScheduler.STOP else "continues"
            where = (f"{trial.trial_id} ASHA rung at {format_amount(milestone, self.unit)} trained: {self._metric} "
                     f"{value:.4f}")
            if cutoff is None:
                log.debug("%s, first to reach it: %s", where, verdict)
            else:
                log.debug("%s vs cutoff %.4f (the best 1/%g of %d trials there): %s", where, cutoff, self._reduction_factor,
                          n, verdict)
        return action
