"""The search's one configuration: `SearchConfig`, resolved once from a preset and the command line,
frozen, and saved whole as search.json. `--resume`, the trainable and the report read only it.

Budgets are amounts with a unit: `500steps`, `2e6tokens`, `8e12flops` (training FLOPs, nanoGPT's
formula) or `120s` (seconds of training on the trial's resources). Every trial of a search gets the
same budget; evaluations and ASHA's rungs are in the same unit, so trials are compared at equal spend.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from nanogpt.compile import COMPILE_MODES
from nanogpt.data import DATASETS
from nanogpt.errors import UserError
from optuna.distributions import json_to_distribution

from tune.space import (FLAGS, HPARAMS, PRESETS, Hparams, Preset, SpaceSampler, check_spec, describe, describe_space,
                        parse_range, space_from_json, space_to_json)
from tune.storage import Mirror, is_uri

SETTINGS_FILE = "search.json"
UNITS = ("steps", "tokens", "flops", "s")
_AMOUNT = re.compile(r"^\s*([0-9.eE+-]+)\s*(steps?|tokens?|flops?|s|sec|seconds?)?\s*$")
_UNIT_ALIASES = {"step": "steps", "token": "tokens", "flop": "flops", "sec": "s", "second": "s", "seconds": "s"}


def parse_amount(text: str, flag: str, unit: str | None = None) -> tuple[float, str]:
    """'8e12flops' -> (8e12, 'flops'). A bare number takes `unit` (the budget's); a unit that differs
    from `unit` is refused."""
    m = _AMOUNT.match(str(text))
    if not m:
        raise UserError(f"{flag} {text!r}: write a number with a unit, one of {', '.join(UNITS)} (e.g. 8e12flops, 120s)")
    try:
        amount = float(m.group(1))
    except ValueError:
        raise UserError(f"{flag} {text!r}: {m.group(1)!r} is not a number") from None
    given = _UNIT_ALIASES.get(m.group(2), m.group(2))
    if given is None:
        if unit is None:
            raise UserError(f"{flag} {text!r} needs a unit: {', '.join(UNITS)} (e.g. 8e12flops, 120s)")
        given = unit
    if unit is not None and given != unit:
        raise UserError(f"{flag} {text!r} is in {given}, but the trial budget is in {unit}: use one unit")
    if not (amount > 0 and math.isfinite(amount)):
        raise UserError(f"{flag} must be > 0, got {text!r}")
    if given == "steps" and not amount.is_integer():
        raise UserError(f"{flag} {text!r}: steps are whole numbers")
    return amount, given


def format_amount(amount: float, unit: str) -> str:
    return f"{amount:g}{unit}"


@dataclass(frozen=True)
class SearchConfig:
    """Everything that defines a search. Saved whole as search.json; nothing else is read again."""

    name: str
    results_dir: str
    preset: str
    dataset: str | None
    data_file: str | None
    tokenizer: str
    bpe_vocab_size: int
    space: dict  # hyperparameter -> Optuna distribution JSON, or a constant
    num_samples: int
    budget_unit: str  # steps | tokens | flops | s
    trial_budget: float  # what every trial may spend, in budget_unit
    eval_every: float  # an evaluation (one report to Tune) each time a trial's spend passes a multiple of this
    final_budget: float | None  # train the winner once more for this (budget_unit), into final/
    eval_iters: int
    eval_batch_size: int
    train_loss_from: str
    time_budget_s: float | None  # the whole search's wall-time limit
    cpus_per_trial: float
    gpus_per_trial: float
    max_concurrent: int | None
    seed: int
    searcher: str  # optuna (TPE) | random
    sampler: dict  # the Optuna sampler's options, all explicit
    scheduler: str  # asha | fifo
    grace_period: float  # ASHA: spend before a trial can be stopped, in budget_unit
    reduction_factor: int
    max_failures: int
    metric: str
    mode: str
    created: str
    # for a URI results directory: the local copy's path, where Optuna's study (optuna.db) was opened
    local_copy: str | None = None
    # what Optuna is told: "truth" (COMPLETE / PRUNED / FAIL by outcome) or "ray" (Ray's OptunaSearch: every
    # trial with a metric COMPLETE, early-stopped ones too); "ray" exists for ablations
    tell_optuna: str = "truth"
    # where trials train: auto = CUDA when the trial has a GPU share, else CPU; cpu = always CPU, even with a
    # GPU share (Ray's GPUs are then only a scheduling resource, e.g. logical GPUs in a test); cuda = always CUDA
    device: str = "auto"
    # torch.compile each trial's training step: auto (where its steps repay the compile time), on or off
    compile: str = "auto"

    # --- where things are

    @property
    def experiment_path(self) -> str:
        """Where Ray keeps the experiment: RESULTS_DIR/NAME, a directory or a URI."""
        if is_uri(self.results_dir):
            return f"{self.results_dir.rstrip('/')}/{self.name}"
        return str(Path(self.results_dir) / self.name)

    @property
    def mirror(self) -> Mirror | None:
        """For a URI results directory, the local copy the project's own files are written in."""
        return Mirror(self.experiment_path) if is_uri(self.results_dir) else None

    @property
    def experiment_dir(self) -> Path:
        """The local directory of the search's files: RESULTS_DIR/NAME, or a URI's local copy."""
        return Path(self.local_copy) if self.local_copy else Path(self.results_dir) / self.name

    # --- what it derives

    def space_specs(self) -> dict:
        return space_from_json(self.space)

    def space_sampler(self) -> SpaceSampler:
        return SpaceSampler(self.space)

    def make_sampler(self):
        """The Optuna sampler, from the saved options alone."""
        import optuna

        opts = dict(self.sampler)
        kind = opts.pop("kind")
        return optuna.samplers.TPESampler(**opts) if kind == "tpe" else optuna.samplers.RandomSampler(**opts)

    def trial_train_config(self, hp: Hparams, device: str = "cpu"):
        """The TrainConfig of a trial with these hyperparameters."""
        return hp.train_config(budget_unit=self.budget_unit, budget=self.trial_budget, eval_every=self.eval_every,
                               device=device, **self.shared_train_fields())

    def final_train_config(self, hp: Hparams, device: str = "cpu"):
        """The TrainConfig of the winner's final training (--final-budget): ten evaluations."""
        return hp.train_config(budget_unit=self.budget_unit, budget=self.final_budget,
                               eval_every=_final_eval_every(self.final_budget, self.budget_unit),
                               device=device, **self.shared_train_fields())

    def shared_train_fields(self) -> dict:
        return dict(eval_iters=self.eval_iters, eval_batch_size=self.eval_batch_size,
                    train_loss_from=self.train_loss_from, seed=self.seed, compile=self.compile)

    def budget_text(self, amount: float | None = None) -> str:
        return format_amount(self.trial_budget if amount is None else amount, self.budget_unit)

    def describe(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in describe_space(self.space_specs()).items())

    # --- on disk

    def save(self, directory: Path | None = None) -> Path:
        path = Path(directory or self.experiment_dir) / SETTINGS_FILE
        path.write_text(json.dumps(asdict(self), indent=2))
        return path

    @classmethod
    def load(cls, experiment_dir: str | Path) -> "SearchConfig":
        path = Path(experiment_dir) / SETTINGS_FILE
        try:
            obj = json.loads(path.read_text())
            return cls(**obj)
        except FileNotFoundError:
            raise UserError(f"{experiment_dir} holds no search ({SETTINGS_FILE} is missing)") from None
        except json.JSONDecodeError as e:
            raise UserError(f"{path} is not a search configuration: corrupt JSON ({e})") from None
        except TypeError:
            known = {f.name for f in fields(cls)}
            off = sorted(known ^ set(obj)) if isinstance(obj, dict) else []
            raise UserError(f"{path} is not a search configuration this version reads "
                            f"(fields missing or unknown: {', '.join(off[:5])}{'...' if len(off) > 5 else ''})") from None


def _final_eval_every(budget: float, unit: str) -> float:
    return float(max(1, int(budget // 10))) if unit == "steps" else budget / 10


# --- the command line ---------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    # settings default to None: a flag the user gave is one that is not None (what --resume compares)
    p = argparse.ArgumentParser(
        prog="python -m tune.search",
        description="Search small-GPT hyperparameters with Ray Tune (ASHA) and Optuna (TPE).",
    )
    g = p.add_argument_group("what to search")
    g.add_argument("--preset", default=None, choices=sorted(PRESETS),
                   help="space, data set and budget to start from (default: laptop): "
                        + "; ".join(f"{p.name}: {p.description}" for p in PRESETS.values()))
    src = g.add_mutually_exclusive_group()
    src.add_argument("--dataset", default=None, help=f"built-in data set: {', '.join(DATASETS)} (default: the preset's)")
    src.add_argument("--data-file", default=None, help="any UTF-8 text file (90%% train, last 10%% validation)")
    g.add_argument("--tokenizer", default=None, choices=["char", "bpe"], help="default: char")
    g.add_argument("--bpe-vocab-size", type=int, default=None, help="default: 512")
    for flag, f in FLAGS.items():
        g.add_argument("--" + flag, dest=f.name, default=None, metavar="RANGE",
                       help=f"{f.metadata['help']}: LOW:HIGH, A,B,C or a value (overrides the preset)")
    b = p.add_argument_group("budget")
    b.add_argument("--num-samples", type=int, default=None, help="trials to run (default: the preset's)")
    b.add_argument("--trial-budget", default=None, metavar="AMOUNT",
                   help="what every trial may spend: a number with a unit, steps, tokens, flops (training FLOPs) "
                        "or s (seconds of training), e.g. 500steps, 8e12flops, 120s (default: the preset's)")
    b.add_argument("--max-steps", type=int, default=None, help="same as --trial-budget Nsteps")
    b.add_argument("--eval-interval", default=None, metavar="AMOUNT",
                   help="spend between evaluations (one report to Tune each), in the budget's unit")
    b.add_argument("--final-budget", default=None, metavar="AMOUNT",
                   help="after the search, train the best configuration once more for this (same unit) into final/")
    b.add_argument("--time-budget", type=float, default=None, metavar="SECONDS", help="stop the whole search after this long")
    b.add_argument("--cpus-per-trial", type=float, default=None)
    b.add_argument("--gpus-per-trial", type=float, default=None, help="fractional allowed, e.g. 0.25")
    b.add_argument("--device", default=None, choices=["auto", "cpu", "cuda"],
                   help="where trials train: auto (default) = CUDA when a trial has a GPU share, else CPU; cpu = CPU "
                        "even with a GPU share (Ray's GPUs only schedule, e.g. logical GPUs from ray start --num-gpus)")
    b.add_argument("--compile", default=None, choices=list(COMPILE_MODES),
                   help="torch.compile each trial's training step: auto = where its steps repay the compile time "
                        "(default), on, off")
    b.add_argument("--max-concurrent", type=int, default=None, help="trials at once (default: as many as resources allow)")
    s = p.add_argument_group("search")
    s.add_argument("--searcher", default=None, choices=["optuna", "random"], help="optuna = TPE (default)")
    s.add_argument("--scheduler", default=None, choices=["asha", "fifo"], help="default: asha")
    s.add_argument("--grace-period", default=None, metavar="AMOUNT", help="ASHA: spend before a trial can be stopped")
    s.add_argument("--reduction-factor", type=int, default=None, help="ASHA: keep 1 in N at each rung")
    s.add_argument("--seed", type=int, default=None, help="the sampler's and every trial's seed (default: 0)")
    s.add_argument("--max-failures", type=int, default=None, help="retries of a trial whose worker died (default: 2)")
    s.add_argument("--tell-optuna", default=None, choices=["truth", "ray"],
                   help="truth (default): pruned trials are PRUNED, diverged FAIL; ray: Ray's OptunaSearch, which calls "
                        "every trial with a metric COMPLETE, early-stopped ones too (for ablations)")
    r = p.add_argument_group("where")
    r.add_argument("--results-dir", default="results", help="experiments go to RESULTS_DIR/NAME (default: results)")
    r.add_argument("--name", default=None, help="experiment name (default: PRESET-DATE-TIME)")
    r.add_argument("--resume", action="store_true",
                   help="continue the interrupted search RESULTS_DIR/NAME (the original command plus --resume works); "
                        "this unpickles Ray's saved state: resume only your own searches")
    r.add_argument("--address", default=None, help="join a running Ray cluster (host:port or 'auto'); default: local Ray")
    r.add_argument("--dashboard", action="store_true", help="start Ray's dashboard on 127.0.0.1 (local Ray only)")
    r.add_argument("--no-report", action="store_true", help="skip report.md and plots at the end")
    r.add_argument("--top", type=int, default=5, help="rows in the final table")
    return p


# flag (argparse dest) -> the SearchConfig fields it sets: with --resume, these must equal the saved ones
FLAG_FIELDS: dict[str, tuple[str, ...]] = {
    "preset": ("preset",), "dataset": ("dataset",), "data_file": ("data_file",), "tokenizer": ("tokenizer",),
    "bpe_vocab_size": ("bpe_vocab_size",), "num_samples": ("num_samples",),
    "trial_budget": ("budget_unit", "trial_budget"), "max_steps": ("budget_unit", "trial_budget"),
    "eval_interval": ("eval_every",), "final_budget": ("final_budget",), "time_budget": ("time_budget_s",),
    "cpus_per_trial": ("cpus_per_trial",), "gpus_per_trial": ("gpus_per_trial",), "device": ("device",), "compile": ("compile",),
    "max_concurrent": ("max_concurrent",), "searcher": ("searcher",), "scheduler": ("scheduler",),
    "grace_period": ("grace_period",), "reduction_factor": ("reduction_factor",), "seed": ("seed",),
    "max_failures": ("max_failures",), "tell_optuna": ("tell_optuna",), **{f.name: (f"space.{f.name}",) for f in FLAGS.values()},
}


def _flag(dest: str) -> str:
    return "--" + (Hparams.__dataclass_fields__[dest].metadata["flag"] if dest in HPARAMS else dest.replace("_", "-"))


def _check_positive(name: str, value, integer: bool = True, allow_zero: bool = False) -> None:
    if value is None:
        return
    ok = value >= 0 if allow_zero else value > 0
    if not ok or not math.isfinite(value):
        kind = "an integer" if integer else "a number"
        bound = ">= 0" if allow_zero else "> 0"
        raise UserError(f"--{name} must be {kind} {bound}, got {value}")


def _field_value(config: SearchConfig, name: str) -> Any:
    if name.startswith("space."):
        return config.space.get(name.split(".", 1)[1])
    return getattr(config, name)


def _shown(value: Any) -> str:
    if isinstance(value, dict):  # a distribution's JSON
        return describe(json_to_distribution(json.dumps(value))) if "name" in value else str(value)
    return "unset" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def resolve(args: argparse.Namespace, results_dir: str, name: str) -> SearchConfig:
    """A new search's configuration from the preset and the flags, every check done here, before Ray."""
    preset: Preset = PRESETS[args.preset or "laptop"]
    for flag, integer in [("num_samples", True), ("max_steps", True), ("max_concurrent", True),
                          ("time_budget", False), ("cpus_per_trial", False), ("bpe_vocab_size", True)]:
        _check_positive(flag.replace("_", "-"), getattr(args, flag), integer)
    _check_positive("gpus-per-trial", args.gpus_per_trial, integer=False, allow_zero=True)
    _check_positive("max-failures", args.max_failures, allow_zero=True)
    if args.reduction_factor is not None and args.reduction_factor < 2:
        raise UserError(f"--reduction-factor must be at least 2, got {args.reduction_factor}")
    if args.top < 1:
        raise UserError(f"--top must be at least 1, got {args.top}")
    if args.bpe_vocab_size is not None and args.bpe_vocab_size < 257:
        raise UserError(f"--bpe-vocab-size must be at least 257 (256 bytes + <unk>), got {args.bpe_vocab_size}")

    space = dict(preset.space)
    for f in FLAGS.values():
        if getattr(args, f.name) is not None:
            space[f.name] = parse_range(f.metadata["flag"], getattr(args, f.name))
    for hparam, spec in space.items():
        check_spec(hparam, spec)  # a preset's own values too (muon where torch lacks it)

    # the budget: --trial-budget AMOUNT, or --max-steps N (= Nsteps); then evaluations and rungs in its unit
    if args.trial_budget is not None and args.max_steps is not None:
        raise UserError("give either --trial-budget or --max-steps, not both")
    if args.max_steps is not None:
        budget, unit = float(args.max_steps), "steps"
    else:
        budget, unit = parse_amount(args.trial_budget or preset.trial_budget, "--trial-budget")
    preset_budget, preset_unit = parse_amount(preset.trial_budget, "preset budget")
    same_unit = unit == preset_unit
    if args.eval_interval is not None:
        eval_every = parse_amount(args.eval_interval, "--eval-interval", unit)[0]
    elif same_unit:  # the preset's number of evaluations a trial, whatever the budget
        eval_every = float(preset.eval_every) * budget / preset_budget
        if unit == "steps":
            eval_every = float(max(1, round(eval_every)))
    else:
        eval_every = budget / 10 if unit != "steps" else float(max(1, int(budget // 10)))
    if unit == "steps" and not eval_every.is_integer():
        raise UserError(f"--eval-interval must be whole steps, got {eval_every:g}")
    if eval_every > budget:
        raise UserError(f"--eval-interval {format_amount(eval_every, unit)} is more than the trial budget "
                        f"{format_amount(budget, unit)}: a trial would never be evaluated before its end")
    if args.grace_period is not None:
        grace = parse_amount(args.grace_period, "--grace-period", unit)[0]
        if grace > budget:
            raise UserError(f"--grace-period {format_amount(grace, unit)} is above the trial budget "
                            f"{format_amount(budget, unit)}: no trial could ever be stopped early")
    elif same_unit and budget == preset_budget and args.eval_interval is None:
        grace = float(preset.grace_period)
    else:
        # keep the presets' proportion: about a quarter of the budget, on an evaluation
        grace = max(eval_every, math.floor(budget / 4 / eval_every + 1e-9) * eval_every)
    n_evals = grace / eval_every
    if abs(n_evals - round(n_evals)) > 1e-9 or round(n_evals) < 1:
        raise UserError(f"--grace-period ({format_amount(grace, unit)}) must be a multiple of --eval-interval "
                        f"({format_amount(eval_every, unit)}): ASHA decides on evaluations")
    final = parse_amount(args.final_budget, "--final-budget", unit)[0] if args.final_budget is not None else None

    cpus = args.cpus_per_trial if args.cpus_per_trial is not None else preset.cpus_per_trial
    gpus = args.gpus_per_trial if args.gpus_per_trial is not None else preset.gpus_per_trial
    if gpus > 1 and gpus != int(gpus):
        raise UserError(f"--gpus-per-trial above 1 must be a whole number, got {gpus}")
    if args.device == "cuda" and gpus == 0:
        raise UserError("--device cuda needs a GPU share: give --gpus-per-trial (Ray hides GPUs from trials without one)")
    dataset = args.dataset if args.data_file is None else None
    if dataset is None and args.data_file is None:
        dataset = preset.dataset
    data_file = str(Path(args.data_file).expanduser().resolve()) if args.data_file else None
    seed = args.seed if args.seed is not None else 0
    searcher = args.searcher or "optuna"
    if searcher == "optuna":
        # every option explicit: Optuna 5 changed TPESampler's defaults (multivariate, constant_liar)
        sampler = {"kind": "tpe", "seed": seed, "n_startup_trials": preset.n_startup_trials, "multivariate": True,
                   "constant_liar": True, "n_ei_candidates": 24}
    else:
        sampler = {"kind": "random", "seed": seed}
    # a URI pyarrow cannot open is an error now, before Ray
    local_copy = str(Mirror(f"{results_dir}/{name}").local) if is_uri(results_dir) else None
    return SearchConfig(
        name=name, results_dir=results_dir, preset=preset.name, dataset=dataset, data_file=data_file,
        tokenizer=args.tokenizer or "char", bpe_vocab_size=args.bpe_vocab_size or 512,
        space=space_to_json(space), num_samples=args.num_samples or preset.num_samples,
        budget_unit=unit, trial_budget=budget, eval_every=eval_every, final_budget=final,
        eval_iters=preset.eval_iters, eval_batch_size=preset.eval_batch_size, train_loss_from=preset.train_loss_from,
        time_budget_s=args.time_budget, cpus_per_trial=cpus, gpus_per_trial=gpus, device=args.device or "auto",
        max_concurrent=args.max_concurrent, seed=seed, searcher=searcher, sampler=sampler,
        scheduler=args.scheduler or "asha", grace_period=grace,
        reduction_factor=args.reduction_factor or preset.reduction_factor,
        max_failures=args.max_failures if args.max_failures is not None else 2,
        metric="val_loss", mode="min", created=time.strftime("%Y-%m-%d %H:%M:%S"), local_copy=local_copy,
        tell_optuna=args.tell_optuna or "truth", compile=args.compile or "auto",
    )


def check_same(args: argparse.Namespace, saved: SearchConfig, results_dir: str) -> None:
    """--resume with flags: each one the user gave must say what the saved search says."""
    given = [dest for dest in FLAG_FIELDS if getattr(args, dest, None) is not None]
    if not given:
        return
    fresh = resolve(args, results_dir, saved.name)
    for dest in given:
        for name in FLAG_FIELDS[dest]:
            new, old = _field_value(fresh, name), _field_value(saved, name)
            if new != old:
                raise UserError(f"{_flag(dest)}: {saved.name} was searched with {_shown(old)}, this command says "
                                f"{_shown(new)}; --resume continues a search with its own settings: drop the flag "
                                f"or start a new search with another --name")


def config_from_args(args: argparse.Namespace) -> SearchConfig:
    """Validate the command line into a SearchConfig. Nothing is written to the results directory here (resuming
    from a URI downloads the search into its local copy first)."""
    uri = is_uri(args.results_dir)
    results_dir = args.results_dir.rstrip("/") if uri else str(Path(args.results_dir).expanduser().resolve())
    if args.name is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", args.name):
        raise UserError(f"--name {args.name!r} must be letters, digits, '.', '_' or '-' (at most 100)")
    if not args.resume:
        name = args.name or f"{args.preset or 'laptop'}-{time.strftime('%Y%m%d-%H%M%S')}"
        return resolve(args, results_dir, name)

    if args.name is None:
        raise UserError("--resume needs --name NAME of the search to continue")
    if uri:
        mirror = Mirror(f"{results_dir}/{args.name}")
        if not mirror.exists(SETTINGS_FILE):
            raise UserError(f"nothing to resume: {mirror.uri} holds no search (no {SETTINGS_FILE}); "
                            f"check --results-dir and --name")
        exp = mirror.pull()  # the search's files and Ray's results; checkpoints stay at the URI
        saved = SearchConfig.load(exp)
        if saved.local_copy and saved.local_copy != str(exp):
            # Ray's saved searcher opens the study by that path: elsewhere it would start an empty one
            raise UserError(f"{mirror.uri} was started with its local copy at {saved.local_copy}, where Ray's saved "
                            f"Optuna searcher looks for its study; resume with NANOGPT_TUNE_CACHE set so that the "
                            f"copy lands there again (now: {exp})")
    else:
        exp = Path(results_dir) / args.name
        if not (exp / SETTINGS_FILE).is_file():
            raise UserError(f"nothing to resume: {exp} holds no search (no {SETTINGS_FILE}); check --results-dir and --name")
        saved = SearchConfig.load(exp)
    check_same(args, saved, results_dir)
    return dataclasses.replace(saved, results_dir=results_dir)


def field_names() -> list[str]:
    return [f.name for f in fields(SearchConfig)]
