"""`python -m tune.search`: find a good small-GPT configuration for a text and a budget.

Ray Tune schedules the trials (function trainable, per-trial resources, ASHA, checkpoints, retries,
resume); Optuna's TPE samples them (define-by-run, study kept in SQLite) and is told how each ended.
Every trial gets the same budget (steps, tokens, FLOPs or seconds); with --final-budget the winner is
trained once more for the user's budget. Everything is checked before Ray starts; bad input is one
line and exit 2.

This module runs a search from start to end; each step lives in its own module: the checks before it starts
(tune.preflight), Ray's environment (tune.ray_env), the Tuner (tune.tuner), Ray's saved state (tune.ray_state),
the final training (tune.final, tune.ladder), stopping early (tune.stopping) and the terminal's summary
(tune.summary).
"""

from __future__ import annotations

import dataclasses
import logging
import shlex
import shutil
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from nanogpt.batches import TokenData
from nanogpt.errors import UserError
from nanogpt.files import WriteFailed
from tune import preflight as checks
from tune.config import SETTINGS_FILE, SearchConfig, config_from_args
from tune.final import FINAL_DIR, final_training
from tune.outcomes import CLOCK_FILE, OPTUNA_DB, OUTCOMES_FILE, read_clock
from tune.ray_env import init_ray, local_loopback, quiet_ray, token_auth
from tune.stopping import SearchStopped, disk_failure, settle_interrupted, stop_on_signals
from tune.summary import announce, finish
from tune.tuner import make_tuner


@dataclass(frozen=True)
class RunOptions:
    """How one run of a search goes, beside the search's own settings (SearchConfig, saved in search.json):
    `resume` it, join the Ray cluster at `address` (None: a local Ray, with its `dashboard` or not), write the
    `report` (report.md and plots) and show the `top` trials in the summary."""

    resume: bool
    address: str | None = None
    dashboard: bool = False
    report: bool = True
    top: int = 5


def run(config: SearchConfig, resume: bool, address: str | None = None, dashboard: bool = False,
        report: bool | None = None, top: int = 5) -> Path:
    """Run (or resume) a search; returns the experiment directory. Everything is checked before anything is
    written; the run holds the results directory's lock for the name from then on (tune.lock). `report`: write
    report.md and plots (default: the configuration's, False after --no-report)."""
    options = RunOptions(resume, address, dashboard, config.report if report is None else report, top)
    with local_loopback(address):
        return _checked_run(config, options)


def _checked_run(config: SearchConfig, options: RunOptions) -> Path:
    """Pre-flight checks, then the search under the results directory's lock."""
    quiet_ray()
    mirror = config.mirror
    t_command = time.time()  # --time-budget covers the command from here: the data and its tokenizer too
    config, data, tokenizer = checks.preflight(config, options.resume, options.address)
    with hold(config):
        if not options.resume:
            checks.refuse_taken(config)  # another run of the name may have started and ended meanwhile
        else:
            from tune.ray_state import check_ray_state

            if mirror:
                mirror.pull()  # the search's files and Ray's results; checkpoints stay at the URI
            check_ray_state(config.experiment_dir)
            checks.refuse_spent(config)  # a URI search's clock, as pulled
        try:
            return _search(config, options, data, tokenizer, t_command)
        except Exception as e:
            failed = disk_failure(e, config.experiment_dir)
            if failed is None:
                raise
            raise WriteFailed(f"{failed}; the search stopped: free space, then continue it with: python -m tune.search "
                              f"--resume --name {config.name} --results-dir {config.results_dir}") from None


def _search(config: SearchConfig, options: RunOptions, data: TokenData, tokenizer, t_start: float) -> Path:
    """The search itself, under the results directory's lock: Ray, the Tuner, the final training, the summary.
    `t_start`: when the command began (before its data and tokenizer): --final-budget auto's time runs from then."""
    from tune import report as report_mod

    exp, mirror, resume = config.experiment_dir, config.mirror, options.resume
    if options.address:
        token_auth()
    import ray

    init_ray(config, options.address, options.dashboard)
    try:
        if not resume:
            _start(config)
        announce(config, data, tokenizer, resume, time.time() - t_start)
        t0 = time.time()
        data_ref = ray.put(data)
        with stop_on_signals() as stop:
            grid = make_tuner(config, data_ref, tokenizer, restore=resume).fit()
        wall = time.time() - t0
        if stop.signum is not None:
            settle_interrupted(exp, config.name)
        if mirror:
            mirror.push(OPTUNA_DB, OUTCOMES_FILE, CLOCK_FILE)
            mirror.pull()  # Ray's results, for the report: they were written at the URI
        # trials.csv and best/ from the JSON reader `python -m tune.report` uses (not the grid): a report made
        # later, or by someone else, gives the same table
        df = report_mod.export(exp, mirror=mirror)
        if (config.final_budget or config.final_auto) and stop.signum is None:
            left = config.total_time_s - max(time.time() - t_start, read_clock(exp)) if config.final_auto else None
            done = final_training(config, data_ref, tokenizer, df, left, grid)
            if done and mirror:
                mirror.push(FINAL_DIR)
    finally:
        ray.shutdown()
    finish(config, df, wall, options.report and stop.signum is None, options.top)
    if stop.signum is not None:
        raise SearchStopped(stop.signum, config)
    return exp


def _start(config: SearchConfig) -> None:
    """A new search's directory and its search.json (and at the URI, for a URI search)."""
    exp, mirror = config.experiment_dir, config.mirror
    if mirror:
        shutil.rmtree(exp, ignore_errors=True)  # a stale local copy of an earlier search of that URI
    exp.mkdir(parents=True)
    config.save()
    if mirror:
        mirror.push(SETTINGS_FILE)


@contextmanager
def hold(config: SearchConfig) -> Iterator[None]:
    """The results directory's lock for the search's name (tune.lock): one run at a time, new or resumed."""
    from tune.lock import hold_local, hold_uri

    mirror = config.mirror
    if mirror:
        with hold_uri(mirror.fs, mirror.sibling(f".{config.name}.lock"), f"{mirror.uri.rsplit('/', 1)[0]}/.{config.name}.lock",
                      config.name):
            yield
    else:
        with hold_local(Path(config.results_dir) / f".{config.name}.lock", config.name):
            yield


def execute(args, command: list[str]) -> Path | None:
    """What `python -m tune.search` does with its settings (an argparse Namespace of build_parser's flags): the
    command line and tune.api.search both come here. `command`: the flags, recorded in search.json. Returns the
    experiment directory; None after --dry-run."""
    config = config_from_args(args)
    if not args.resume:
        config = dataclasses.replace(config, command=shlex.join(["python", "-m", "tune.search", *command]))
    if args.dry_run:  # everything a run checks before it trains, then what it would do
        print(checks.dry_run(config, args.resume, args.address))
        return None
    if args.verbose:  # each evaluation (tune.progress) and ASHA's decisions (tune.asha), as they happen
        logging.getLogger("tune").setLevel(logging.DEBUG)
    try:
        return run(config, resume=args.resume, address=args.address, dashboard=args.dashboard, top=args.top)
    except SearchStopped as e:
        e.config = e.config or config  # stopped before run had its configuration: the one it was given
        raise


def main(argv: list[str] | None = None) -> int:
    from tune.options import attributed, from_command_line

    argv = sys.argv[1:] if argv is None else argv
    args, origin = from_command_line(argv)  # --config FILE: its settings, the flags over them
    try:
        execute(args, argv)
    except UserError as e:
        named = attributed(e, origin)
        if named is e:
            raise
        raise named from None
    except SearchStopped as e:  # Ctrl-C: 130, SIGTERM: 143, with the line that continues the search
        print(f"{signal.Signals(e.signum).name}: the search stopped; continue it with: python -m tune.search --resume "
              f"--name {e.config.name} --results-dir {e.config.results_dir}", file=sys.stderr, flush=True)
        return 128 + e.signum
    return 0


if __name__ == "__main__":
    from nanogpt.cli import run_main

    run_main(main)
