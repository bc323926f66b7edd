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
import logging
import math
from enum import Enum
from pathlib import Path

from nanogpt.amounts import format_amount
from nanogpt.train import Status

OUTCOMES_FILE = "outcomes.json"
OPTUNA_DB = "optuna.db"  # the Optuna study (SQLite)
log = logging.getLogger(__name__)

CLOCK_FILE = "search_clock.json"  # {"running_s": seconds the search has run, over all its runs (tune.progress)}


class Outcome(str, Enum):
    FINISHED = "finished"  # spent its whole budget
    PRUNED = "pruned"  # stopped by the scheduler (ASHA) at a rung
    OUT_OF_TIME = "out_of_time"  # the search's --time-budget ended it
    DIVERGED = "diverged"  # loss became NaN or infinite, or never got below the uniform baseline (see `diverged`)
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


# A model that knows nothing, every token equally likely, scores ln(vocab_size) nats a token: the uniform baseline.
# A freshly initialised GPT (weights of std 0.02) scores within a few hundredths of a nat of it (0.01 at a vocabulary
# of 65, 0.06 at 4096), and any sane run is below it by its first evaluation. A loss above it by more than this
# margin means the model is confidently wrong (1 nat: e = 2.7 times more surprised than guessing uniformly), i.e.
# its weights blew up: blown-up runs score tens to thousands of nats (1052 where uniform is 3.2 in issue 29).
DIVERGED_MARGIN = 1.0  # nats above ln(vocab_size)


def uniform_loss(vocab_size) -> float | None:
    """ln(vocab_size): the loss of predicting every token equally likely; None when the vocabulary is unknown."""
    ok = isinstance(vocab_size, (int, float)) and not isinstance(vocab_size, bool) and 1 < vocab_size < 1e12
    return math.log(vocab_size) if ok else None


def loss_diverged(loss, vocab_size) -> bool:
    """Whether a trial's best validation loss says it diverged: not a finite number, or more than DIVERGED_MARGIN
    above the uniform baseline (with the vocabulary unknown, only the first)."""
    if isinstance(loss, bool) or not isinstance(loss, (int, float)) or not math.isfinite(loss):
        return True
    uniform = uniform_loss(vocab_size)
    return uniform is not None and loss > uniform + DIVERGED_MARGIN


def diverged(outcome: str | None, best_loss, vocab_size) -> bool:
    """Whether a trial diverged: it ended as diverged (its loss became NaN or infinite), or its best validation
    loss says so (`loss_diverged`). A diverged trial is never the best: not best/, not exported, not "best so far"
    in the progress lines, not trained for the final budget; the report and trials.csv give it that outcome."""
    return outcome == Outcome.DIVERGED.value or loss_diverged(best_loss, vocab_size)


def rankable(df):
    """The trials of a trials table (tune.results's) that can be the best, in its order (best first): a finite best
    val_loss and not diverged. A boolean mask, so an empty table stays a table. The report's table gives every
    diverged trial that outcome (tune.results), so best/, the report, the plots, the scaling law and the final
    training all choose among the same trials."""
    import pandas as pd

    vals = pd.to_numeric(df["best_val_loss"], errors="coerce")
    ok = vals.notna() & ~vals.isin([math.inf, -math.inf])
    return df.loc[ok & ~df["outcome"].eq(Outcome.DIVERGED.value) if "outcome" in df else ok]


def diverged_text(best_loss, vocab_size) -> str:
    """Why a trial's loss counts as diverged, e.g. 'best val_loss 1052 is above the uniform baseline ln(25) = 3.22
    by more than 1 nat'."""
    uniform = uniform_loss(vocab_size)
    if isinstance(best_loss, (int, float)) and math.isfinite(best_loss) and uniform is not None:
        return (f"best val_loss {best_loss:.4g} is above the uniform baseline ln({int(vocab_size)}) = {uniform:.2f} "
                f"by more than {DIVERGED_MARGIN:g} nat")
    return "its loss became NaN or infinite"


def describe(outcome: Outcome | str, row: dict, scheduler: str | None = None) -> str:
    """The human line for a trial (a trials-table row: spend, budget_unit, steps), e.g. 'pruned by ASHA at 3e11 FLOPs'."""
    spend = "" if row.get("spend") is None else format_amount(row["spend"], row.get("budget_unit") or "")
    if outcome == Outcome.OUT_OF_TIME and not spend:
        return "stopped by the search's time budget before its first evaluation"
    return _TEXT[Outcome(outcome)].format(spend=spend, steps=row.get("steps"),
                                          scheduler=scheduler.upper() if scheduler else "the scheduler")


def read_outcomes(experiment_dir: str | Path) -> dict[str, dict]:
    """trial_id -> {"outcome", "spend", "step"} as recorded during the search (empty if none). A file that is
    not what the search writes is one warning naming it; its entries that are are kept."""
    from tune.experiment import inside

    path = inside(experiment_dir, OUTCOMES_FILE, "file")
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:  # unreadable, not UTF-8, not JSON
        log.warning("%s is unreadable (%s): outcomes are taken from the trials' results",
                    path, str(e).splitlines()[0][:120])
        return {}
    if not isinstance(data, dict):
        log.warning("%s is not a JSON object: outcomes are taken from the trials' results", path)
        return {}
    known = {o.value for o in Outcome}
    good = {k: v for k, v in data.items() if isinstance(v, dict) and v.get("outcome") in known}
    bad = [k for k in data if k not in good]
    if bad:
        log.warning("%s: %d entries without a known outcome (e.g. %r: %.60r) ignored: theirs are taken from the "
                    "trials' results", path, len(bad), bad[0], data[bad[0]])
    return good


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
