"""Tune callbacks of a search: each trial's outcome recorded as it ends, a compact progress display
(one line per trial event, Ray's tables stay off), and the upload of a URI search's own files as it goes."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from pathlib import Path

from ray.tune import Callback
from ray.tune.stopper import Stopper

from nanogpt.amounts import format_amount, number
from nanogpt.files import write_json
from nanogpt.files import DISK_ERROR_TEXT, WriteFailed
from tune.binding import THIS_SEARCH
from tune.outcomes import (CLOCK_FILE, OUTCOMES_FILE, Outcome, diverged, error_line, outcome_of_result, read_clock,
                           read_outcomes)
from tune.space import Hparams

log = logging.getLogger(__name__)  # DEBUG (tune.search -v): every evaluation of every trial


def describe_config(config: dict) -> str:
    """A trial's hyperparameters in one short line (n_embd derived, as the model is built)."""
    return Hparams.from_config(config).line()


def last_error_line(error_file: str | None) -> str:
    """The exception line of a trial's error.txt (the traceback stays in the file)."""
    try:
        return error_line(Path(error_file).read_text())
    except (OSError, TypeError):
        return error_line(None)


def _num(r: dict, key: str) -> float:
    v = r.get(key)
    return math.nan if v is None else float(v)


def _spent(r: dict) -> float:
    """What a trial has spent of its budget: training and cooldown branches together (the budget counts both;
    trials.csv's `spend`); `train_spend` there is training alone."""
    return _num(r, "total_spend") if r.get("total_spend") is not None else _num(r, "spend")


def evaluation_line(trial_id: str, r: dict, unit: str) -> str:
    """One evaluation of a trial (-v)."""
    return (f"{trial_id} eval    step {r.get('step')} spent {format_amount(_spent(r), unit)} "
            f"val_loss {_num(r, 'val_loss'):.4f} "
            f"train_loss {_num(r, 'train_loss'):.4f} {_num(r, 'tokens_per_s') / 1e3:.1f}k tok/s")


class TimeBudget(Stopper):
    """--time-budget: stops every trial once the search clock (OutcomeRecorder's, over all the search's runs)
    reaches the budget, so the budget spent is the time search_clock.json and the report show.

    Ray's own time_budget_s counts from its first check in each run and resumes from the state it last saved, so
    every run's start-up and its end after the last save go uncounted: on a busy machine a 45 s budget over one
    resume ran 56 s on the search clock. Ray saves this stopper with its experiment state: it holds nothing, and
    reads the budget and the clock from the running search's recorder (tune.binding)."""

    def __call__(self, trial_id, result) -> bool:
        return False

    def stop_all(self) -> bool:
        clock = THIS_SEARCH.clock
        return clock is not None and bool(clock.time_budget_s) and clock.used_s() >= clock.time_budget_s


class Progress(Callback):
    """One line per trial start and end: its outcome, val_loss, step and spend in the budget's unit, and the best
    so far among the trials that have not diverged (tune.outcomes.diverged, as the report chooses best/)."""

    def __init__(self, config):
        self.num_samples = config.num_samples
        self.unit = config.budget_unit
        self.t0 = None
        self.done = 0
        self.losses: dict[str, float] = {}  # trial -> its best comparable val_loss so far
        self.ended_diverged: set[str] = set()  # trials whose loss became NaN or infinite
        self.vocab_size: int | None = None  # from the trials' results: the uniform baseline's vocabulary
        # under wsd only the cooldown rungs are comparable; the evaluations between them are at the peak learning rate
        self.rungs_only = config.schedule == "wsd"

    def __setstate__(self, state: dict) -> None:  # restored by Ray, maybe from a search saved before these fields
        state.pop("best", None)
        self.__dict__.update({"losses": {}, "ended_diverged": set(), "vocab_size": None, **state})

    def _diverged(self, trial_id: str) -> bool:
        outcome = Outcome.DIVERGED.value if trial_id in self.ended_diverged else None
        return trial_id in self.losses and diverged(outcome, self.losses[trial_id], self.vocab_size)

    @property
    def best(self) -> tuple[float, str] | None:
        """(val_loss, trial) of the best trial so far that has not diverged."""
        ok = [(v, t) for t, v in self.losses.items() if not self._diverged(t)]
        return min(ok) if ok else None

    def _stamp(self) -> str:
        if self.t0 is None:
            self.t0 = time.time()
        return f"[{time.time() - self.t0:6.0f}s]"

    def on_trial_start(self, iteration, trials, trial, **info):
        print(f"{self._stamp()} {trial.trial_id} start   {describe_config(trial.config)}", flush=True)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s %s", self._stamp(), evaluation_line(trial.trial_id, result, self.unit))
        self.vocab_size = result.get("vocab_size") or self.vocab_size
        val = result.get("val_loss")
        if self.rungs_only and not result.get("cooldown_steps"):
            return
        if isinstance(val, (int, float)) and not math.isnan(val):
            self.losses[trial.trial_id] = min(val, self.losses.get(trial.trial_id, math.inf))

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.done += 1
        r = trial.last_result or {}
        if r.get("outcome") == Outcome.DIVERGED.value:
            self.ended_diverged.add(trial.trial_id)
        outcome = Outcome.DIVERGED.value if self._diverged(trial.trial_id) else r.get("outcome", "?")
        best = self.best
        best = f" | best so far {best[0]:.4f} ({best[1]})" if best else ""
        spent = format_amount(_spent(r), self.unit) if r.get("spend") is not None else "?"
        print(f"{self._stamp()} {trial.trial_id} {outcome:<9} val_loss {r.get('val_loss', float('nan')):.4f} "
              f"step {r.get('step')} spent {spent} | {self.done}/{self.num_samples} done{best}", flush=True)

    def on_trial_error(self, iteration, trials, trial, **info):
        self.done += 1
        print(f"{self._stamp()} {trial.trial_id} errored: {last_error_line(trial.error_file)} (full text: {trial.error_file}) "
              f"| {self.done}/{self.num_samples} done", flush=True)

    def on_trial_recover(self, iteration, trials, trial, **info):
        print(f"{self._stamp()} {trial.trial_id} failed; retrying from its last checkpoint", flush=True)


def _disk_error(trial) -> WriteFailed | None:
    """A trial that could not write (disk full) stops the whole search: every other trial would fail the same
    way. It stays unfinished in Ray's state, and --resume reruns it from its last checkpoint once there is space."""
    line = last_error_line(trial.error_file)
    return WriteFailed(f"trial {trial.trial_id} could not write ({line})") if DISK_ERROR_TEXT.search(line) else None


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def final_progress_line(m: dict, budget: float, unit: str) -> str:
    """One evaluation of the final training: spend (and its share of the budget), loss, speed, time left. The time
    left assumes the rest goes as fast as what came before (evaluations included)."""
    spend, elapsed = _num(m, "spend"), _num(m, "elapsed_s")
    planned = _num(m, "budget")  # --final-budget auto re-plans it from the training's speed
    budget = planned if math.isfinite(planned) else budget
    eta = elapsed * (budget - spend) / spend if spend > 0 else math.nan
    return (f"final  step {m.get('step')}  spent {number(spend)} of {format_amount(budget, unit)} "
            f"({100 * spend / budget:3.0f}%)  "
            f"val_loss {_num(m, 'val_loss'):.4f}  {_num(m, 'tokens_per_s') / 1e3:.1f}k tok/s  ETA {_duration(eta)}")


def follow_final(ref, queue, budget: float, unit: str) -> dict:
    """Wait for the final training's Ray task, printing each evaluation it puts on `queue` (a ray.util.queue.Queue)
    as it comes; returns the task's result."""
    import ray

    while True:
        ready, _ = ray.wait([ref], timeout=1.0)
        # the task's puts return only once queued: after it finished, one more drain sees them all
        n = queue.qsize()
        for m in queue.get_nowait_batch(n) if n else []:
            print(final_progress_line(m, budget, unit), flush=True)
        if ready:
            return ray.get(ref)


class MirrorSync(Callback):
    """Uploads files of a URI search's local copy (tune.storage.Mirror) after every finished trial
    and at the end, so that an interrupted search keeps them at the URI too."""

    def __init__(self, mirror, *rels: str):
        self.mirror, self.rels = mirror, rels

    def __setstate__(self, state: dict) -> None:  # restored by Ray: upload from the search's copy as it is now
        self.__dict__.update(state, mirror=THIS_SEARCH.run.mirror)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.mirror.push(*self.rels)

    def on_experiment_end(self, trials, **info):
        self.mirror.push(*self.rels)


class OutcomeRecorder(Callback):
    """Records each trial's outcome as it ends, into RESULTS_DIR/NAME/outcomes.json (written atomically), and keeps
    the search clock (search_clock.json) that --time-budget is spent on (TimeBudget).

    Must come before Ray's logger callbacks (user callbacks do), so the outcome written onto a result
    reaches result.json and the searcher."""

    def __init__(self, experiment_dir: str | Path, time_budget_s: float | None, searcher=None):
        self.experiment_dir = str(experiment_dir)
        self.time_budget_s = time_budget_s
        self.searcher = searcher
        self.t0 = time.time()
        self.used0 = 0.0
        self._written = 0.0
        self.failed: WriteFailed | None = None  # a write that failed (disk full): it stops the search
        self.started: set[str] = set()  # the trials Ray started in this run (reported or not)

    # Ray treats an exception in a trial's callbacks as that trial's failure (and tells Optuna FAIL); raised
    # between steps instead, it ends the search as a crash would, and --resume continues it
    def on_step_begin(self, iteration, trials, **info):
        if self.failed is not None:
            raise self.failed

    def _defer(self, write: Callable[[], None]) -> None:
        try:
            write()
        except WriteFailed as e:
            self.failed = self.failed or e

    def __setstate__(self, state: dict) -> None:  # restored by Ray: the results directory where it is now
        self.__dict__.update(state, experiment_dir=str(THIS_SEARCH.run.dir))

    # the search clock: the search's running time over all its runs (the time between runs left out), from Ray's
    # setting up the callbacks to the experiment's end in each; --time-budget is spent on it (TimeBudget)
    def setup(self, **info):
        self.used0, self.t0, self._written = read_clock(self.experiment_dir), time.time(), 0.0
        self.started = set()
        THIS_SEARCH.clock = self

    def used_s(self) -> float:
        return self.used0 + time.time() - self.t0

    def _write_clock(self) -> None:
        self._written = time.time()
        write_json(Path(self.experiment_dir) / CLOCK_FILE, {"running_s": self.used_s()})

    def on_step_end(self, iteration, trials, **info):
        if self.failed is None and time.time() - self._written >= 1.0:
            self._defer(self._write_clock)
        if self.failed is not None:
            raise self.failed

    def _record(self, trial, outcome: Outcome) -> None:
        last = trial.last_result or {}
        outcomes = read_outcomes(self.experiment_dir)
        outcomes[trial.trial_id] = {"outcome": outcome.value, "spend": last.get("total_spend", last.get("spend")),
                                    "train_spend": last.get("spend"), "step": last.get("step")}
        write_json(Path(self.experiment_dir) / OUTCOMES_FILE, outcomes, indent=1)

    def on_trial_start(self, iteration, trials, trial, **info):
        self.started.add(trial.trial_id)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        outcome = outcome_of_result(result)
        if outcome is not None:
            result["outcome"] = outcome.value

    def on_trial_complete(self, iteration, trials, trial, **info):
        last = trial.last_result or {}
        self._defer(lambda: self._record(trial, Outcome(last.get("outcome") or Outcome.PRUNED)))

    def on_trial_recover(self, iteration, trials, trial, **info):
        self.failed = self.failed or _disk_error(trial)  # before its retries fail the same way and Optuna hears FAIL

    def on_trial_error(self, iteration, trials, trial, **info):
        self.failed = self.failed or _disk_error(trial)
        if self.failed is None:
            self._record(trial, Outcome.ERRORED)

    def on_experiment_end(self, trials, **info):
        """Trials the search's time budget stopped get no completion call from Ray: record them here, also one that
        had started but not yet reported (a slow first evaluation, a loaded machine): it ran, so it is out_of_time,
        and Optuna hears FAIL (no value to rank it by). After Ctrl-C the same trials were interrupted instead, and
        --resume continues them."""
        self._write_clock()
        if not self.time_budget_s or self.used_s() < self.time_budget_s - 0.5:
            return
        recorded = read_outcomes(self.experiment_dir)
        for trial in trials:
            started = trial.trial_id in getattr(self, "started", ()) or trial.last_result.get("step")
            if trial.trial_id in recorded or trial.status != "TERMINATED" or not started:
                continue
            trial.last_result["outcome"] = Outcome.OUT_OF_TIME.value
            self._record(trial, Outcome.OUT_OF_TIME)
            if self.searcher is not None:
                self.searcher.on_trial_complete(trial.trial_id, result=dict(trial.last_result))
