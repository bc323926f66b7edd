"""Why each trial ended, as data, recorded when it happens; and Optuna told the same truth.
This module needs no Ray: the report reads outcomes with it.

- The trainable reports `status` with every result: running, finished (spent its whole budget) or diverged.
- Ray marks a result `done` when the scheduler (ASHA) stops the trial on it: a running trial whose result is
  done was pruned. `OutcomeRecorder` writes that onto the result (so result.json and the searcher carry it)
  and records every trial's outcome in outcomes.json (tune.progress).
- The search's time budget and Ctrl-C end trials without a completion call; the recorder tells them
  apart at the end (out_of_time), and a trial never recorded was interrupted or not started.
- `tune.searcher.TruthfulOptunaSearch` reports intermediate values keyed by spend (the budget's unit) and ends each Optuna
  trial as COMPLETE (finished), PRUNED (pruned or out of time) or FAIL (diverged or errored). Ray's own
  OptunaSearch calls every trial with a metric COMPLETE, early-stopped ones included.
"""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path

from nanogpt.train import Status

OUTCOMES_FILE = "outcomes.json"
CLOCK_FILE = "search_clock.json"  # {"running_s": seconds the search has run, over all its runs (tune.progress)}


class Outcome(str, Enum):
    FINISHED = "finished"  # spent its whole budget
    PRUNED = "pruned"  # stopped by the scheduler (ASHA) at a rung
    OUT_OF_TIME = "out_of_time"  # the search's --time-budget ended it
    DIVERGED = "diverged"  # loss became NaN or infinite
    ERRORED = "errored"  # raised (after its retries)
    INTERRUPTED = "interrupted"  # the search was stopped (Ctrl-C, a crash) while it ran: --resume continues it
    NOT_STARTED = "not_started"  # the search ended before it ran


# how a training run's own end reads as a trial's outcome
_ENDED = {Status.FINISHED: Outcome.FINISHED, Status.DIVERGED: Outcome.DIVERGED, Status.OUT_OF_TIME: Outcome.OUT_OF_TIME}
# ended by the search, not by their own budget (values: a table's column holds the strings)
STOPPED_EARLY = (Outcome.PRUNED.value, Outcome.OUT_OF_TIME.value)

# the human line beside each outcome (trials.csv's `status`, the report's tables)
_TEXT = {
    Outcome.FINISHED: "finished its budget ({spend})",
    Outcome.PRUNED: "pruned by {scheduler} at {spend}",
    Outcome.OUT_OF_TIME: "stopped by the search's time budget at {spend}",
    Outcome.DIVERGED: "diverged at step {steps}",
    Outcome.ERRORED: "errored",
    Outcome.INTERRUPTED: "interrupted at step {steps}",
    Outcome.NOT_STARTED: "not started",
}


def outcome_of_result(result: dict) -> Outcome | None:
    """The outcome a result ends its trial with, or None while the trial goes on."""
    try:
        status = Status(result.get("status"))
    except ValueError:
        return None
    if status is Status.RUNNING:
        return Outcome.PRUNED if result.get("done") else None
    return _ENDED[status]


def describe(outcome: Outcome | str, row: dict, scheduler: str | None = None) -> str:
    """The human line for a trial (a trials-table row: spend, budget_unit, steps), e.g. 'pruned by ASHA at 3e+11flops'."""
    spend = "" if row.get("spend") is None else f"{row['spend']:.3g}{row.get('budget_unit') or ''}"
    return _TEXT[Outcome(outcome)].format(spend=spend, steps=row.get("steps"),
                                          scheduler=scheduler.upper() if scheduler else "the scheduler")


def read_outcomes(experiment_dir: str | Path) -> dict[str, dict]:
    """trial_id -> {"outcome", "spend", "step"} as recorded during the search (empty if none)."""
    path = Path(experiment_dir) / OUTCOMES_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def read_clock(experiment_dir: str | Path) -> float:
    """Seconds the search has run over all its runs, as recorded so far (0 before its first step)."""
    try:
        return float(json.loads((Path(experiment_dir) / CLOCK_FILE).read_text())["running_s"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0.0


def error_line(text: str | None) -> str:
    """The exception line of a trial's error text (the traceback stays in its error.txt)."""
    lines = [ln for ln in (text or "").splitlines() if ln.strip()]
    return lines[-1].strip()[:300] if lines else "unknown error"
