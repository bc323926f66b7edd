"""`python -m tune.search`: find a good small-GPT configuration for a text and a budget.

Ray Tune schedules the trials (function trainable, per-trial resources, ASHA, checkpoints,
retries, resume); Optuna's TPE samples them (define-by-run, study kept in SQLite).
Everything about the search is checked before Ray starts; bad input is one line and exit 2.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import re
import shutil
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from nanogpt.data import DATASETS, TokenData, load_dataset, tokenize
from nanogpt.tokenizer import build_tokenizer
from tune.space import (PRESETS, RANGE_FLAGS, SpaceSampler, describe_space, max_value, parse_range, spec_from_json,
                        spec_to_json, trial_constants, with_overrides)
from tune.storage import Mirror, is_uri


SETTINGS_FILE = "search.json"
OPTUNA_DB = "optuna.db"
METRIC, MODE = "val_loss", "min"


@dataclass
class Settings:
    """Everything that defines a search; saved as search.json so --resume and the report reuse it."""

    name: str
    results_dir: str
    preset: str
    dataset: str | None
    data_file: str | None
    tokenizer: str
    bpe_vocab_size: int
    space: dict  # parameter -> spec text, for humans
    num_samples: int
    max_steps: int
    eval_interval: int
    time_budget_s: float | None
    cpus_per_trial: float
    gpus_per_trial: float
    max_concurrent: int | None
    seed: int
    searcher: str
    scheduler: str
    grace_period: int
    reduction_factor: int
    max_failures: int
    created: str
    # for a URI results directory: the local copy's path, where Optuna's study (optuna.db) was opened
    local_copy: str | None = None

    @property
    def experiment_path(self) -> str:
        """Where Ray keeps the experiment: RESULTS_DIR/NAME, a directory or a URI."""
        if is_uri(self.results_dir):
            return f"{self.results_dir.rstrip('/')}/{self.name}"
        return str(Path(self.results_dir) / self.name)

    @functools.cached_property
    def mirror(self) -> Mirror | None:
        """For a URI results directory, the local copy the project's own files are written in."""
        return Mirror(self.experiment_path) if is_uri(self.results_dir) else None

    @property
    def experiment_dir(self) -> Path:
        """The local directory of the search's files: RESULTS_DIR/NAME, or a URI's local copy."""
        mirror = self.mirror
        return mirror.local if mirror else Path(self.results_dir) / self.name

    def save(self) -> None:
        (self.experiment_dir / SETTINGS_FILE).write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, experiment_dir: Path) -> "Settings":
        return cls(**json.loads((Path(experiment_dir) / SETTINGS_FILE).read_text()))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m tune.search",
        description="Search small-GPT hyperparameters with Ray Tune (ASHA) and Optuna (TPE).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    g = p.add_argument_group("what to search")
    g.add_argument("--preset", default="laptop", choices=sorted(PRESETS),
                   help="space, data set and budget to start from: "
                        + "; ".join(f"{p.name}: {p.description}" for p in PRESETS.values()))
    src = g.add_mutually_exclusive_group()
    src.add_argument("--dataset", default=None, help=f"built-in data set: {', '.join(DATASETS)} (default: the preset's)")
    src.add_argument("--data-file", default=None, help="any UTF-8 text file (90%% train, last 10%% validation)")
    g.add_argument("--tokenizer", default="char", choices=["char", "bpe"])
    g.add_argument("--bpe-vocab-size", type=int, default=512)
    for flag, param in RANGE_FLAGS.items():
        g.add_argument("--" + flag.replace("_", "-"), default=None, metavar="RANGE",
                       help=f"{param}: LOW:HIGH, A,B,C or a value (overrides the preset)")
    b = p.add_argument_group("budget")
    b.add_argument("--num-samples", type=int, default=None, help="trials to run (default: the preset's)")
    b.add_argument("--max-steps", type=int, default=None, help="training steps of a trial that is never stopped")
    b.add_argument("--eval-interval", type=int, default=None, help="steps between evaluations (one report to Tune each)")
    b.add_argument("--time-budget", type=float, default=None, metavar="SECONDS", help="stop the whole search after this long")
    b.add_argument("--cpus-per-trial", type=float, default=None)
    b.add_argument("--gpus-per-trial", type=float, default=None, help="fractional allowed, e.g. 0.25")
    b.add_argument("--max-concurrent", type=int, default=None, help="trials at once (default: as many as resources allow)")
    s = p.add_argument_group("search")
    s.add_argument("--searcher", default="optuna", choices=["optuna", "random"], help="optuna = TPE")
    s.add_argument("--scheduler", default="asha", choices=["asha", "fifo"])
    s.add_argument("--grace-period", type=int, default=None, help="ASHA: steps before a trial can be stopped")
    s.add_argument("--reduction-factor", type=int, default=None, help="ASHA: keep 1 in N at each rung")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--max-failures", type=int, default=2, help="retries of a trial whose worker died")
    r = p.add_argument_group("where")
    r.add_argument("--results-dir", default="results", help="experiments go to RESULTS_DIR/NAME")
    r.add_argument("--name", default=None, help="experiment name (default: PRESET-DATE-TIME)")
    r.add_argument("--resume", action="store_true", help="continue the interrupted search RESULTS_DIR/NAME")
    r.add_argument("--address", default=None, help="join a running Ray cluster (host:port or 'auto'); default: local Ray")
    r.add_argument("--dashboard", action="store_true", help="start Ray's dashboard on 127.0.0.1 (local Ray only)")
    r.add_argument("--no-report", action="store_true", help="skip report.md and plots at the end")
    r.add_argument("--top", type=int, default=5, help="rows in the final table")
    return p


# flags that shape a search: with --resume, the saved settings are used and these are refused
SHAPING = ["preset", "dataset", "data_file", "tokenizer", "bpe_vocab_size", "num_samples", "max_steps", "eval_interval", "time_budget",
           "cpus_per_trial", "gpus_per_trial", "max_concurrent", "searcher", "scheduler", "grace_period",
           "reduction_factor", "seed", *RANGE_FLAGS]


def _check_positive(name: str, value, integer: bool = True, allow_zero: bool = False) -> None:
    if value is None:
        return
    ok = value >= 0 if allow_zero else value > 0
    if not ok:
        kind = "an integer" if integer else "a number"
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"--{name} must be {kind} {bound}, got {value}")


def _check_writable(results_dir: Path) -> None:
    try:
        results_dir.mkdir(parents=True, exist_ok=True)
        probe = results_dir / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise ValueError(f"results directory {results_dir} is not writable ({e.strerror}); choose another with --results-dir") from None


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Validate the command line into Settings. Nothing is written to the results directory here (resuming
    from a URI downloads the search into its local copy first)."""
    uri = is_uri(args.results_dir)
    results_dir = args.results_dir.rstrip("/") if uri else Path(args.results_dir).expanduser().resolve()
    if args.name is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", args.name):
        raise ValueError(f"--name {args.name!r} must be letters, digits, '.', '_' or '-' (at most 100)")

    if args.resume:
        if args.name is None:
            raise ValueError("--resume needs --name NAME of the search to continue")
        if uri:
            mirror = Mirror(f"{results_dir}/{args.name}")
            if not mirror.exists(SETTINGS_FILE):
                raise ValueError(f"nothing to resume: {mirror.uri} holds no search (no {SETTINGS_FILE}); "
                                 f"check --results-dir and --name")
            exp = mirror.pull()  # the search's files and Ray's results; checkpoints stay at the URI
            saved = Settings.load(exp).local_copy
            if saved and saved != str(exp):
                # Ray's saved searcher opens the study by that path: elsewhere it would start an empty one
                raise ValueError(f"{mirror.uri} was started with its local copy at {saved}, where Ray's saved Optuna "
                                 f"searcher looks for its study; resume with NANOGPT_TUNE_CACHE set so that the "
                                 f"copy lands there again (now: {exp})")
        else:
            exp = results_dir / args.name
        if not (exp / SETTINGS_FILE).is_file():
            raise ValueError(f"nothing to resume: {exp} holds no search (no {SETTINGS_FILE}); check --results-dir and --name")
        defaults = build_parser()
        given = [f for f in SHAPING if getattr(args, f) != defaults.get_default(f)]
        if given:
            flags = ", ".join("--" + f.replace("_", "-") for f in given)
            raise ValueError(f"--resume continues {args.name} with its saved settings; drop {flags}")
        settings = Settings.load(exp)
        settings.results_dir = str(results_dir)
        return settings

    preset = PRESETS[args.preset]
    overrides = {RANGE_FLAGS[f]: parse_range(f, getattr(args, f)) for f in RANGE_FLAGS if getattr(args, f) is not None}
    for flag, integer in [("num_samples", True), ("max_steps", True), ("eval_interval", True), ("grace_period", True),
                          ("max_concurrent", True), ("time_budget", False), ("cpus_per_trial", False), ("bpe_vocab_size", True)]:
        _check_positive(flag.replace("_", "-"), getattr(args, flag), integer)
    _check_positive("gpus-per-trial", args.gpus_per_trial, integer=False, allow_zero=True)
    _check_positive("max-failures", args.max_failures, allow_zero=True)
    if args.reduction_factor is not None and args.reduction_factor < 2:
        raise ValueError(f"--reduction-factor must be at least 2, got {args.reduction_factor}")
    if args.top < 1:
        raise ValueError(f"--top must be at least 1, got {args.top}")
    preset = with_overrides(
        preset, overrides, num_samples=args.num_samples, max_steps=args.max_steps, eval_interval=args.eval_interval,
        grace_period=args.grace_period, reduction_factor=args.reduction_factor, cpus_per_trial=args.cpus_per_trial,
        gpus_per_trial=args.gpus_per_trial,
    )
    eval_interval = min(preset.eval_interval, preset.max_steps)
    grace = min(preset.grace_period, preset.max_steps)
    if args.grace_period is None and (args.max_steps is not None or args.eval_interval is not None):
        # keep the preset's proportions: a quarter of the steps, on an evaluation
        grace = max(eval_interval, min(grace, preset.max_steps // 4) // eval_interval * eval_interval)
    if grace < eval_interval or grace % eval_interval:
        raise ValueError(f"--grace-period ({grace}) must be a multiple of --eval-interval ({eval_interval}): "
                         f"ASHA decides on evaluations")
    if preset.gpus_per_trial > 1 and preset.gpus_per_trial != int(preset.gpus_per_trial):
        raise ValueError(f"--gpus-per-trial above 1 must be a whole number, got {preset.gpus_per_trial}")
    dataset = args.dataset if args.data_file is None else None
    if dataset is None and args.data_file is None:
        dataset = preset.dataset
    data_file = str(Path(args.data_file).expanduser().resolve()) if args.data_file else None
    name = args.name or f"{preset.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    # a URI pyarrow cannot open is an error now, before Ray
    local_copy = str(Mirror(f"{results_dir}/{name}").local) if uri else None
    return Settings(
        name=name, results_dir=str(results_dir), preset=preset.name, dataset=dataset, data_file=data_file,
        tokenizer=args.tokenizer, bpe_vocab_size=args.bpe_vocab_size,
        space={k: spec_to_json(v) for k, v in preset.space.items()},
        num_samples=preset.num_samples, max_steps=preset.max_steps, eval_interval=eval_interval,
        time_budget_s=args.time_budget, cpus_per_trial=preset.cpus_per_trial, gpus_per_trial=preset.gpus_per_trial,
        max_concurrent=args.max_concurrent, seed=args.seed, searcher=args.searcher, scheduler=args.scheduler,
        grace_period=grace, reduction_factor=preset.reduction_factor, max_failures=args.max_failures,
        created=time.strftime("%Y-%m-%d %H:%M:%S"), local_copy=local_copy,
    )


def space_of(settings: Settings) -> dict:
    return {k: spec_from_json(v) for k, v in settings.space.items()}


def prepare_data(settings: Settings) -> tuple[TokenData, object]:
    """Load and tokenize once, in the driver; trials get the tensors through tune.with_parameters."""
    dataset = load_dataset(settings.dataset, settings.data_file)
    tokenizer = build_tokenizer(settings.tokenizer, dataset.text, settings.bpe_vocab_size)
    data = tokenize(dataset, tokenizer)
    data.check_block_size(max_value(space_of(settings)["block_size"]))
    return data, tokenizer


def check_address(address: str, timeout: float = 3.0) -> None:
    """Fail in seconds, not minutes, when a cluster address cannot be reached."""
    if address in ("auto", "local") or address.startswith("ray://"):
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"--address {address!r} is not HOST:PORT (e.g. 127.0.0.1:6379) or 'auto'")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as e:
        raise ValueError(f"cannot reach a Ray cluster at {address} ({e.strerror or e}); start one with "
                         f"`ray start --head --port={port}` or leave out --address for a local Ray") from None


# --- Ray ---------------------------------------------------------------------------------


def _quiet_ray() -> None:
    # Ray's own INFO/WARNING chatter; our progress callback prints what a user needs, and errors still surface
    for name in ("ray", "ray.tune", "ray.train"):
        logging.getLogger(name).setLevel(logging.ERROR)


def init_ray(settings: Settings, address: str | None, dashboard: bool) -> None:
    import ray

    if address:
        ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False)
    else:
        ray.init(
            address="local",
            include_dashboard=dashboard,
            dashboard_host="127.0.0.1",  # never exposed beyond this machine
            logging_level=logging.ERROR,
            # trial stdout/stderr stays in Ray's logs: trial errors reach the user through the
            # progress lines and each trial's error.txt, without worker shutdown chatter
            log_to_driver=False,
        )
    if settings.gpus_per_trial > 0:
        gpus = ray.cluster_resources().get("GPU", 0)
        if gpus < settings.gpus_per_trial:
            ray.shutdown()
            raise ValueError(f"--gpus-per-trial {settings.gpus_per_trial:g} but the Ray cluster has {gpus:g} GPUs; "
                             f"use --gpus-per-trial 0 on this machine")
    cpus = ray.cluster_resources().get("CPU", 0)
    if cpus < settings.cpus_per_trial:
        ray.shutdown()
        raise ValueError(f"--cpus-per-trial {settings.cpus_per_trial:g} but the Ray cluster has {cpus:g} CPUs")


def trial_dirname(trial) -> str:
    return f"trial_{trial.trial_id}"  # short: long names break on some file systems


def make_tuner(settings: Settings, data: TokenData, tokenizer, restore: bool):
    import optuna
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search.optuna import OptunaSearch

    from tune.progress import MirrorSync, Progress
    from tune.trainable import train_gpt

    trainable = tune.with_resources(
        tune.with_parameters(train_gpt, data=data, tokenizer=tokenizer.to_dict()),
        {"cpu": settings.cpus_per_trial, "gpu": settings.gpus_per_trial},
    )
    exp = settings.experiment_dir
    if restore:
        return tune.Tuner.restore(settings.experiment_path, trainable=trainable, resume_unfinished=True,
                                  resume_errored=True)

    preset = PRESETS[settings.preset]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if settings.searcher == "optuna":
        sampler = optuna.samplers.TPESampler(seed=settings.seed, n_startup_trials=preset.n_startup_trials)
    else:
        sampler = optuna.samplers.RandomSampler(seed=settings.seed)
    constants = trial_constants(preset, dataset=data.dataset, seed=settings.seed, max_steps=settings.max_steps,
                                eval_interval=settings.eval_interval)
    searcher = OptunaSearch(
        space=SpaceSampler(space_of(settings), constants),
        metric=METRIC,
        mode=MODE,
        sampler=sampler,
        study_name=settings.name,
        storage=optuna.storages.RDBStorage(f"sqlite:///{exp / OPTUNA_DB}"),
    )
    if settings.scheduler == "asha":
        scheduler = ASHAScheduler(time_attr="step", max_t=settings.max_steps, grace_period=settings.grace_period,
                                  reduction_factor=settings.reduction_factor)
    else:
        scheduler = FIFOScheduler()
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            metric=METRIC, mode=MODE, search_alg=searcher, scheduler=scheduler,
            num_samples=settings.num_samples, max_concurrent_trials=settings.max_concurrent,
            time_budget_s=settings.time_budget_s, reuse_actors=True, trial_dirname_creator=trial_dirname,
        ),
        run_config=tune.RunConfig(
            name=settings.name,
            storage_path=settings.results_dir,
            failure_config=tune.FailureConfig(max_failures=settings.max_failures),
            checkpoint_config=tune.CheckpointConfig(
                num_to_keep=1, checkpoint_score_attribute=METRIC, checkpoint_score_order=MODE
            ),  # the best checkpoint by val_loss; Ray always keeps the latest too (for retries)
            verbose=0,
            callbacks=[Progress(settings.num_samples)]
            + ([MirrorSync(settings.mirror, OPTUNA_DB)] if settings.mirror else []),
        ),
    )


def run(settings: Settings, resume: bool, address: str | None = None, dashboard: bool = False,
        report: bool = True, top: int = 5) -> Path:
    """Run (or resume) a search; returns the experiment directory."""
    from tune import report as report_mod

    _quiet_ray()
    exp = settings.experiment_dir
    data, tokenizer = prepare_data(settings)  # data errors surface before Ray starts
    if address is None and settings.gpus_per_trial > 0:
        import torch

        if torch.cuda.device_count() < settings.gpus_per_trial:
            raise ValueError(f"--gpus-per-trial {settings.gpus_per_trial:g} but this machine has "
                             f"{torch.cuda.device_count()} CUDA GPUs; use --gpus-per-trial 0")
    if address:
        check_address(address)
        # Ray 2.60 clusters use token authentication; a driver joining one must say so too (Ray only
        # turns it on by itself for clusters it starts), and before ray is imported. The token stays
        # where Ray keeps it (~/.ray/auth_token, RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH).
        if "RAY_AUTH_MODE" not in os.environ and (
            os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")
            or (Path.home() / ".ray" / "auth_token").is_file()
        ):
            os.environ["RAY_AUTH_MODE"] = "token"
    mirror = settings.mirror
    if resume:
        from ray.tune import Tuner

        if not Tuner.can_restore(settings.experiment_path):
            raise ValueError(f"{settings.experiment_path} cannot be resumed: Ray's experiment state is missing "
                             f"(the search never started)")
    elif mirror:
        mirror.check_writable()
        if mirror.exists():
            raise ValueError(f"{mirror.uri} already exists: add --resume to continue it, or pick another --name")
    else:
        _check_writable(Path(settings.results_dir))
        if exp.exists():
            raise ValueError(f"{exp} already exists: add --resume to continue it, or pick another --name")
    import ray

    init_ray(settings, address, dashboard)
    try:
        if not resume:
            if mirror:
                shutil.rmtree(exp, ignore_errors=True)  # a stale local copy of an earlier search of that URI
            exp.mkdir(parents=True)
            settings.save()
            if mirror:
                mirror.push(SETTINGS_FILE)
        print(f"search {settings.name}: preset {settings.preset}, data {data.dataset} "
              f"({len(data.train):,} train tokens, {tokenizer.kind} vocab {tokenizer.vocab_size}), "
              f"{settings.num_samples} trials x {settings.max_steps} steps, {settings.searcher} + {settings.scheduler}, "
              f"{settings.cpus_per_trial:g} CPU" + (f" + {settings.gpus_per_trial:g} GPU" if settings.gpus_per_trial else "")
              + " per trial" + (" (resumed)" if resume else ""))
        print("space: " + ", ".join(f"{k}={v}" for k, v in describe_space(space_of(settings)).items()))
        t0 = time.time()
        tuner = make_tuner(settings, data, tokenizer, restore=resume)
        tuner.fit()
        wall = time.time() - t0
    finally:
        ray.shutdown()
    if mirror:
        mirror.push(OPTUNA_DB)
        mirror.pull()  # Ray's results, for the report: they were written at the URI
    df = report_mod.export(exp, mirror=mirror)
    print(f"\n{len(df)} trials in {wall:.0f} s; top {min(top, len(df))} by val_loss:")
    print(report_mod.top_table(df, top))
    unfinished = df["status"].str.startswith(("interrupted", "not started")).sum()
    if settings.time_budget_s and wall >= settings.time_budget_s:
        print(f"\nthe time budget ({settings.time_budget_s:g} s) ended the search after {len(df)} trials")
    elif unfinished or len(df) < settings.num_samples:
        print(f"\nthe search stopped before all {settings.num_samples} trials finished; continue it with:\n"
              f"  python -m tune.search --resume --name {settings.name} --results-dir {settings.results_dir}")
    if (exp / "best").is_dir():
        print(f"\nbest checkpoint: {exp / 'best'}  (python -m nanogpt.sample --checkpoint {exp / 'best'})")
    else:
        print("\nno trial produced a checkpoint: no best/ was written")
    if report:
        path = report_mod.write_report(exp, trials=df, mirror=mirror)
        print(f"report: {path}")
    print(f"trials table: {exp / 'trials.csv'}")
    if mirror:
        print(f"results uploaded to {mirror.uri} (local copy: {exp})")
    return exp


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = settings_from_args(args)
    run(settings, resume=args.resume, address=args.address, dashboard=args.dashboard,
        report=not args.no_report, top=args.top)
    return 0


if __name__ == "__main__":
    from nanogpt.cli import run_main

    run_main(main)
