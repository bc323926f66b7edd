"""How a search stops before it ends, with its state saved for --resume. Ctrl-C and SIGTERM (`stop_on_signals`) stop
the trials the way Ray Tune stops on Ctrl-C, and `settle_interrupted` then marks the study's trials Ray left running
as interrupted; `SearchStopped` carries the signal to `tune.search.main`, which ends with the resume line and exit
128 + the signal's number. A full or failing disk (`disk_failure`) is found in what Ray raises, however deep Ray
wrapped it, so that the search stops with one line naming what could not be written.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from nanogpt.files import DISK_ERROR_TEXT, DISK_ERRNOS, WriteFailed, write_failed
from tune.config import SearchConfig
from tune.outcomes import OPTUNA_DB


class SearchStopped(Exception):
    """The search was stopped by a signal (Ctrl-C, SIGTERM) and saved its state: `main` ends with the resume line
    and exit 128 + the signal's number."""

    def __init__(self, signum: int, config: SearchConfig):
        super().__init__(signal.Signals(signum).name)
        self.signum, self.config = signum, config


class _Stop:
    signum: int | None = None


@contextmanager
def stop_on_signals() -> Iterator[_Stop]:
    """Ctrl-C and SIGTERM stop the search the way Ray Tune stops on Ctrl-C: the trials are stopped, Ray saves the
    experiment's state and fit() returns, so --resume continues it. Ray's own SIGINT handler is kept off
    (TUNE_DISABLE_SIGINT_HANDLER): ours records which signal came, then calls the handler Ray installs in fit() for
    SIGUSR1, which is its Ctrl-C handler. SIGTERM used to kill the driver mid-write (Ray's C++ abort, exit 134). A
    second signal, or one before Ray's handler is in place, stops at once (KeyboardInterrupt)."""
    stop = _Stop()

    def handler(signum, frame):
        ray_stop = signal.getsignal(signal.SIGUSR1)
        if stop.signum is not None or not callable(ray_stop):
            stop.signum = stop.signum or signum
            raise KeyboardInterrupt
        stop.signum = signum
        print(f"\n{signal.Signals(signum).name}: stopping the search; Ray saves its state for --resume "
              f"(again to stop at once)", file=sys.stderr, flush=True)
        ray_stop(signal.SIGUSR1, frame)

    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    env_before = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    for sig in before:
        signal.signal(sig, handler)
    try:
        yield stop
    except KeyboardInterrupt:
        raise SearchStopped(stop.signum or signal.SIGINT, None) from None
    finally:
        for sig, h in before.items():
            signal.signal(sig, h)
        if env_before is None:
            os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
        else:
            os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = env_before


def settle_interrupted(exp: Path, name: str) -> None:
    """After a signal: the study's trials Ray left running (stopped, or drawn and not started) are marked FAIL with
    the user attribute `interrupted`, so optuna.db holds no RUNNING trial while nothing runs. On --resume the searcher
    (tune.searcher) gives each of them a new RUNNING trial of the same parameters when Ray runs it again."""
    import optuna

    from tune.searcher import INTERRUPTED_ATTR

    storage = optuna.storages.RDBStorage(f"sqlite:///{(exp / OPTUNA_DB).resolve()}")
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:  # no study yet
        return
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        storage.set_trial_user_attr(t._trial_id, INTERRUPTED_ATTR, True)
        storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)


def disk_failure(e: BaseException, exp: Path) -> str | None:
    """What could not be written, when `e` (or what caused it: Ray wraps errors) is a full or failing disk."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, WriteFailed):
            return str(e)
        if isinstance(e, OSError) and e.errno in DISK_ERRNOS:  # Ray's own writes: the file is often unnamed
            return str(write_failed(e.filename or f"a file under {exp} (or Ray's temp dir)", e))
        lines = [ln for ln in str(e).splitlines() if DISK_ERROR_TEXT.search(ln)]
        if lines:  # a Ray task's error (the final training) carries the remote one as text
            return f"a Ray task could not write ({lines[-1].strip()[:300]})"
        e = e.__cause__ or e.__context__
    return None
