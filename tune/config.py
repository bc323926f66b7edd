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
import types
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Sequence

from nanogpt.amounts import UNIT_NAMES, format_amount, number, parse_amount, parse_duration
from nanogpt.cli import OneLineParser, user_type
from nanogpt.compile import COMPILE_MODES
from nanogpt.dataset import DATASETS
from nanogpt.errors import UserError
from nanogpt.files import write_json
from nanogpt.tokenizer import DEFAULT_BPE_VOCAB, DEFAULT_TOKENIZER, TOKENIZERS, bpe_vocab_problem
from nanogpt.train import UNITS, default_eval_every
from optuna.distributions import json_to_distribution

from tune.space import (FLAGS, HPARAMS, PRESETS, Hparams, Preset, SpaceSampler, check_space, check_spec, describe,
                        describe_space, parse_range, space_from_json, space_to_json, spec_values, with_defaults)
from tune.algorithms import SCHEDULERS, SEARCHERS, make_sampler, sampler_options
from tune.storage import Mirror, is_uri

SETTINGS_FILE = "search.json"
FINAL_TIME_SHARE = 0.5  # --final-budget auto: the share of --time-budget kept for the final training; it continues
# the winner, so the trial's spend is not lost, and the search's later trials mostly refine near-duplicates
# (benchmarks/RESULTS.md, "Equal wall-clock")


class _FromPreset:
    def __repr__(self) -> str:
        return "the preset's"


FROM_PRESET = _FromPreset()  # a setting whose default is the preset's field of the same name
_NO_DEFAULT = dataclasses.MISSING


def setting(flag: str | None = None, help: str = "", *, default: Any = None, type: Callable | None = None,
            choices: Sequence[str] | None = None, check: Callable | None = None, metavar: str | None = None,
            group: str = "search", saved_default: Any = _NO_DEFAULT, aliases: Sequence[str] = ()):
    """A search setting, declared once: its flag, help, default (a value, or FROM_PRESET), type, choices and
    check. The parser, the --resume comparison and the checks are generated from these. Settings that are
    amounts in the budget's unit (`type=None`, a metavar AMOUNT) declare flag and help here and are resolved
    by a named step of `resolve`. `saved_default`: only for fields added later, so an old search.json loads.
    `aliases`: older spellings of the flag, still accepted."""
    meta = {"flag": flag, "help": help, "default": default, "type": type, "choices": choices, "check": check,
            "metavar": metavar, "group": group, "aliases": tuple(aliases)}
    return field(metadata=meta) if saved_default is _NO_DEFAULT else field(default=saved_default, metadata=meta)


def positive(value) -> str | None:
    """A check: None when the value passes, else what it must be."""
    return None if value > 0 and math.isfinite(value) else "> 0"


def nonneg(value) -> str | None:
    return None if value >= 0 and math.isfinite(value) else ">= 0"


def open_fraction(value) -> str | None:
    return None if 0 < value < 1 else "in (0, 1)"


def seed_range(value) -> str | None:
    """Optuna's samplers seed numpy's RandomState: 0 <= seed < 2**32."""
    return None if 0 <= value < 2**32 else f"from 0 to {2**32 - 1} (Optuna's and numpy's range)"


def at_least(low: int, why: str = "") -> Callable:
    def check(value) -> str | None:
        return None if value >= low else f"at least {low}{why}"
    return check


@dataclass(frozen=True)
class SearchConfig:
    """Everything that defines a search. Saved whole as search.json; nothing else is read again."""

    name: str = setting()
    results_dir: str = setting()
    preset: str = setting("--preset", "space, data set and budget to start from: " + "; ".join(
        f"{p.name}: {p.description}" for p in PRESETS.values()), default="laptop", choices=sorted(PRESETS),
        group="what to search")
    dataset: str | None = setting("--dataset", f"built-in data set: {', '.join(DATASETS)}", default=FROM_PRESET,
                                  group="what to search")
    data_file: str | None = setting("--data-file", "any UTF-8 text file (90% train, last 10% validation)",
                                    group="what to search")
    tokenizer: str = setting("--tokenizer", "how text becomes tokens", default=DEFAULT_TOKENIZER, choices=list(TOKENIZERS),
                             group="what to search")
    bpe_vocab_size: int = setting("--bpe-vocab-size", "BPE vocabulary size", default=DEFAULT_BPE_VOCAB, type=int,
                                  check=bpe_vocab_problem, group="what to search")
    space: dict = setting()  # hyperparameter -> Optuna distribution JSON, or a constant; flags: the Hparams fields
    num_samples: int = setting("--num-samples", "trials to run", default=FROM_PRESET, type=int, check=positive,
                               group="budget")
    budget_unit: str = setting()  # steps | tokens | flops | s: the unit of --trial-budget (or steps, --max-steps)
    trial_budget: float = setting(
        "--trial-budget", "what every trial may spend: a number with a unit, steps, tokens, flops (training FLOPs: "
        "forward, backward and Muon's Newton-Schulz) or s (seconds of training), e.g. 500steps, 8e12flops, 120s", default=FROM_PRESET, metavar="AMOUNT",
        group="budget")
    # an evaluation (one report to Tune) each time a trial's spend passes a multiple of this
    eval_every: float = setting("--eval-every", "spend between evaluations (one report to Tune each), in the "
                                "budget's unit (nanogpt.train's --eval-every)", default=FROM_PRESET, metavar="AMOUNT",
                                group="budget")
    final_budget: float | None = setting(
        "--final-budget", "after the search, train the best configuration once more for this (same unit) into final/ "
        "(under wsd: continue it); auto (with --time-budget): as much as the time budget leaves after the search",
        metavar="AMOUNT", group="budget")
    eval_iters: int = setting()
    eval_batch_size: int = setting()
    train_loss_from: str = setting()
    time_budget_s: float | None = setting(
        "--time-budget", "stop the whole search after this long: 900, 900s, 15m or 1h; with --final-budget auto it "
        "covers the search (1 - --final-share of it, saved here) and the final training", type=parse_duration,
        check=positive, metavar="DURATION", group="budget")
    cpus_per_trial: float = setting("--cpus-per-trial", "CPUs of each trial (its torch threads)", default=FROM_PRESET,
                                    type=float, check=positive, group="budget")
    gpus_per_trial: float = setting("--gpus-per-trial", "GPUs of each trial, fractional allowed, e.g. 0.25",
                                    default=FROM_PRESET, type=float, check=nonneg, group="budget")
    max_concurrent: int | None = setting("--max-concurrent", "trials at once (unset: as many as resources allow)",
                                         type=int, check=positive, group="budget")
    seed: int = setting("--seed", "the sampler's and every trial's seed (1337, as nanogpt.train's and nanoGPT's)",
                        default=1337, type=int, check=seed_range)
    searcher: str = setting("--searcher", "who proposes trials: " + "; ".join(
        f"{k}: {v.help}" for k, v in SEARCHERS.items()), default="optuna", choices=list(SEARCHERS))
    sampler: dict = setting()  # the Optuna sampler's options, all explicit (from the searcher's table entry)
    scheduler: str = setting("--scheduler", "who stops trials early: " + "; ".join(
        f"{k}: {v.help}" for k, v in SCHEDULERS.items()), default="asha", choices=list(SCHEDULERS))
    grace_period: float = setting("--grace-period", "ASHA: spend before a trial can be stopped, in the budget's "
                                  "unit (a multiple of --eval-every)", default=FROM_PRESET, metavar="AMOUNT")
    reduction_factor: int = setting("--reduction-factor", "ASHA: keep 1 in N at each rung", default=FROM_PRESET,
                                    type=int, check=at_least(2))
    max_failures: int = setting("--max-failures", "retries of a trial whose worker died", default=2, type=int,
                                check=nonneg)
    metric: str = setting()
    mode: str = setting()
    created: str = setting()
    # for a URI results directory: the local copy's path, where Optuna's study (optuna.db) was opened
    local_copy: str | None = setting(saved_default=None)
    tell_optuna: str = setting(
        "--tell-optuna", "what Optuna is told: truth: pruned trials are PRUNED, diverged FAIL; ray: Ray's "
        "OptunaSearch, which calls every trial with a metric COMPLETE, early-stopped ones too (for ablations)",
        default="truth", choices=["truth", "ray"], saved_default="truth")
    device: str = setting(
        "--device", "where trials train: auto = CUDA when a trial has a GPU share, else CPU; cpu = CPU even with a GPU "
        "share (Ray's GPUs only schedule, e.g. logical GPUs from ray start --num-gpus); cuda = always CUDA; mps = an "
        "Apple GPU", default="auto", choices=["auto", "cpu", "cuda", "mps"], group="budget", saved_default="auto")
    compile: str = setting(
        "--compile", "torch.compile each trial's training step: auto = only where its steps repay the compile time "
        "(measured per shape and machine), on, off", default="auto", choices=list(COMPILE_MODES), group="budget",
        saved_default="auto")
    export: str | None = setting(
        "--export", "after the search, export best/ (and final/) into best-FORMAT/ (final-FORMAT/): hf = Hugging Face "
        "transformers, nanogpt = nanoGPT's ckpt.pt + meta.pkl (character tokenizer only)", choices=["hf", "nanogpt"],
        group="where", saved_default=None)
    command: str | None = setting(saved_default=None)  # the command line that started it (exported model cards)
    # the report's prompts, recorded when the search starts (from the data set, or the start of --data-file), so
    # that a report never reads a file on the reader's machine; None in searches made before they were recorded
    prompts: list[str] | None = setting(saved_default=None)
    schedule: str = setting(
        "--schedule", "trials' learning rate schedule: cosine, or wsd (warmup-stable-decay): trials hold the peak and "
        "report cooldown rungs, the loss of a copy decayed at each of ASHA's rungs and at their end",
        default=FROM_PRESET, choices=["cosine", "wsd"], saved_default="cosine")
    cooldown_frac: float = setting("--cooldown-frac", "wsd: a cooldown's length as a share of the steps trained so far",
                                   default=0.2, type=float, check=open_fraction, saved_default=0.2)
    final_from: str | None = setting(
        "--final-from", "--final-budget: continue the best finished trial's stable checkpoint to the final budget, then "
        "decay (wsd), or retrain its configuration from scratch (unset: continue under wsd, scratch under cosine)",
        choices=["continue", "scratch"], group="budget", saved_default="scratch")
    # --final-budget auto: total_time_s (--time-budget) covers the search (time_budget_s) and the final training,
    # whose budget is sized from the winner's own pace when the search ends
    final_auto: bool = setting(saved_default=False)
    total_time_s: float | None = setting(saved_default=None)
    final_share: float = setting(
        "--final-share", "--final-budget auto: the share of --time-budget kept for the final training; the search "
        "gets the rest", default=FINAL_TIME_SHARE, type=float, check=open_fraction, group="budget",
        saved_default=FINAL_TIME_SHARE)
    # the ladder (tune.ladder): the best trials' stable phases continued to growing spends, the best 1/rf kept at each
    ladder: str = setting(
        "--ladder", "--final-budget under wsd: on = continue the best reduction-factor^k finished trials (the best of each model first) to growing "
        "spends (a factor --reduction-factor apart, the first that far above the trials'), keeping the best "
        "1/--reduction-factor by their cooldown-branch "
        "loss at each, until one reaches the final budget (final/); off = continue the winner alone",
        default="off", choices=["on", "off"], group="budget", saved_default="off")
    horizon_lr_beta: float = setting(
        "--horizon-lr-beta", "a continued trial's peak learning rate follows its new horizon: lr x (final budget / the "
        "trial's spend)^-beta (0.125: DeepSeek LLM's lr ~ compute^-0.125; 0 keeps the trial's): the ladder's runs and "
        "the winner continued to --final-budget (--final-from continue)",
        default=0.125, type=float, check=nonneg, group="budget", saved_default=0.125)
    # how the run ends, not what the search is (not compared on --resume): report.md and plots, or not (--no-report);
    # here so that `run(config_from_args(args))` honours --no-report as the command does
    report: bool = setting(saved_default=True)

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
        return with_defaults(space_from_json(self.space))  # a search saved before a field was added: its default

    def space_sampler(self) -> SpaceSampler:
        return SpaceSampler(self.space)

    def make_sampler(self):
        """The Optuna sampler, from the saved options alone."""
        return make_sampler(self.sampler)

    def make_scheduler(self):
        """The Ray Tune scheduler (imports Ray)."""
        return SCHEDULERS[self.scheduler].make(self)

    @property
    def rungs(self) -> list[float]:
        """ASHA's rungs in the budget's unit, as Ray's ASHAScheduler places them (grace * rf^k below max_t)."""
        n = int(math.log(self.trial_budget / self.grace_period) / math.log(self.reduction_factor) + 1)
        return [self.grace_period * self.reduction_factor ** k for k in range(n)]

    def trial_train_config(self, hp: Hparams, device: str = "cpu"):
        """The TrainConfig of a trial with these hyperparameters; under wsd it branches at the rungs (whatever
        the scheduler: a FIFO search records the same rung losses)."""
        rungs = dict(cooldown_rungs=self.rungs) if self.schedule == "wsd" else {}
        return hp.train_config(budget_unit=self.budget_unit, budget=self.trial_budget, eval_every=self.eval_every,
                               device=device, **rungs, **self.shared_train_fields())

    def final_train_config(self, hp: Hparams, device: str = "cpu", warmup_steps: int | None = None):
        """The TrainConfig of the winner's final training (--final-budget): ten evaluations. `warmup_steps`: the
        trial's own, when the final training continues it (so it equals a run trained straight to the budget)."""
        return hp.train_config(budget_unit=self.budget_unit, budget=self.final_budget,
                               eval_every=default_eval_every(self.final_budget, self.budget_unit),
                               device=device, warmup_steps=warmup_steps, **self.shared_train_fields())

    def shared_train_fields(self) -> dict:
        return dict(eval_iters=self.eval_iters, eval_batch_size=self.eval_batch_size,
                    train_loss_from=self.train_loss_from, seed=self.seed, schedule=self.schedule,
                    cooldown_frac=self.cooldown_frac, compile=self.compile)

    def budget_text(self, amount: float | None = None) -> str:
        return format_amount(self.trial_budget if amount is None else amount, self.budget_unit)

    def describe(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in describe_space(self.space_specs()).items())

    # --- on disk

    def save(self, directory: Path | None = None) -> Path:
        path = Path(directory or self.experiment_dir) / SETTINGS_FILE
        write_json(path, asdict(self), indent=2)
        return path

    @classmethod
    def load(cls, experiment_dir: str | Path) -> "SearchConfig":
        path = Path(experiment_dir) / SETTINGS_FILE
        try:
            text = path.read_bytes().decode("utf-8")
        except FileNotFoundError:
            raise UserError(f"{experiment_dir} holds no search ({SETTINGS_FILE} is missing)") from None
        except (OSError, ValueError) as e:  # unreadable, not UTF-8
            raise UserError(f"{path} is not a search configuration: {str(e).splitlines()[0][:120]}") from None
        return cls.loads(text, path)

    @classmethod
    def loads(cls, text: str, path: str | Path) -> "SearchConfig":
        """The configuration in search.json's text (`path`: where it was read, for the errors)."""
        try:
            obj = json.loads(text)
            _check_types(cls, obj, path)
            return cls(**obj)
        except json.JSONDecodeError as e:
            raise UserError(f"{path} is not a search configuration: corrupt JSON ({e})") from None
        except TypeError:
            known = {f.name for f in fields(cls)}
            off = sorted(known ^ set(obj)) if isinstance(obj, dict) else []
            raise UserError(f"{path} is not a search configuration this version reads "
                            f"(fields missing or unknown: {', '.join(off[:5])}{'...' if len(off) > 5 else ''})") from None


def _fits(value, hint) -> bool:
    """Whether a JSON value has a field's type (str, int, float, bool, dict, list[X], X | None)."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in args)
    if hint is type(None):
        return value is None
    if hint in (int, float):
        return isinstance(value, (int, float) if hint is float else int) and not isinstance(value, bool)
    if typing.get_origin(hint) is list:
        return isinstance(value, list) and all(_fits(v, args[0]) for v in value)
    return isinstance(value, hint)


def _check_types(cls, obj, path: Path) -> None:
    """search.json made elsewhere: every field of the type this version writes, or one line naming it."""
    if not isinstance(obj, dict):
        raise UserError(f"{path} is not a search configuration (not a JSON object)")
    hints = typing.get_type_hints(cls)
    for name, value in obj.items():
        if name in hints and not _fits(value, hints[name]):
            raise UserError(f"{path} is not a search configuration this version reads: {name} is {value!r:.60} "
                            f"(expected {hints[name]})")


# --- the command line ---------------------------------------------------------------------------

# the run's own options: how to run it, not what the search is (not saved, not compared on --resume)
_GROUPS = ("what to search", "budget", "search", "where")


def _setting_fields() -> list:
    return [f for f in fields(SearchConfig) if f.metadata.get("flag")]


def _help(f) -> str:
    meta, default = f.metadata, f.metadata["default"]
    if default is FROM_PRESET:
        laptop = PRESETS["laptop"]
        shown = getattr(laptop, f.name, None)
        if meta.get("metavar") == "AMOUNT" and isinstance(shown, (int, float)):
            shown = format_amount(shown, parse_amount(laptop.trial_budget, "--trial-budget")[1])
        tail = f"default: the preset's (laptop: {shown})" if shown is not None else "default: the preset's"
    else:
        tail = "default: unset" if default is None else f"default: {default}"
    return f"{meta['help']} ({tail})".replace("%", "%%")  # argparse formats help with %


def _laptop_range(hparam: str) -> str:
    spec = PRESETS["laptop"].space.get(hparam)
    return "unset" if spec is None else describe(spec)


def build_parser() -> argparse.ArgumentParser:
    """The parser, generated from SearchConfig's settings and the Hparams fields. Settings default to None
    here: a flag the user gave is one that is not None (what --resume compares)."""
    p = OneLineParser(
        prog="python -m tune.search",
        description="Search small-GPT hyperparameters with Ray Tune (ASHA) and Optuna (TPE).",
    )
    groups = {name: p.add_argument_group(name) for name in _GROUPS}
    source = groups["what to search"].add_mutually_exclusive_group()
    for f in _setting_fields():
        meta = f.metadata
        into = source if f.name in ("dataset", "data_file") else groups[meta["group"]]
        kind = user_type(meta["type"], meta["flag"]) if meta["type"] is parse_duration else meta["type"]
        into.add_argument(meta["flag"], *meta["aliases"], dest=f.name, default=None, type=kind, choices=meta["choices"],
                          metavar=meta["metavar"], help=_help(f))
        if f.name == "trial_budget":
            into.add_argument("--max-steps", type=int, default=None, help="same as --trial-budget Nsteps")
        if f.name == "eval_every":  # nanogpt.train's (and nanoGPT's) meaning: steps, whatever the budget's unit
            into.add_argument("--eval-interval", type=int, default=None, metavar="STEPS",
                              help="evaluate every this many steps, as nanogpt.train's --eval-interval: the same as "
                                   "--eval-every Nsteps (a trial budget in steps only) (default: unset)")
    for flag, f in FLAGS.items():
        # nanogpt.train's spelling (the field's name) first; a short one stays an alias (--lr)
        groups["what to search"].add_argument(
            *dict.fromkeys(["--" + f.name.replace("_", "-"), "--" + flag]), dest=f.name, default=None, metavar="RANGE",
            help=f"{f.metadata['help']}: LOW:HIGH, A,B,C or a value (default: the preset's (laptop: "
                 f"{_laptop_range(f.name)}))")
    r = groups["where"]
    r.add_argument("--results-dir", default="results", help="experiments go to RESULTS_DIR/NAME (default: results)")
    r.add_argument("--name", default=None, help="experiment name (default: PRESET-DATE-TIME)")
    r.add_argument("--resume", action="store_true",
                   help="continue the interrupted search RESULTS_DIR/NAME (the original command plus --resume works); "
                        "this unpickles Ray's saved state: resume only your own searches")
    r.add_argument("--address", default=None, help="join a running Ray cluster (host:port or 'auto'); default: local Ray")
    r.add_argument("--dashboard", action="store_true", help="start Ray's dashboard on 127.0.0.1 (local Ray only)")
    r.add_argument("--dry-run", action="store_true",
                   help="print the resolved settings (search.json) and the first trial's model size and steps; "
                        "write nothing")
    r.add_argument("-v", "--verbose", action="store_true",
                   help="also show each trial's evaluations and ASHA's decisions as they happen (on stderr)")
    r.add_argument("--no-report", action="store_true", help="skip report.md and plots at the end")
    r.add_argument("--top", type=int, default=5, help="rows in the final table (default: 5)")
    return p


def _given(args: argparse.Namespace) -> dict[str, tuple[str, ...]]:
    """The flags the user gave (argparse dest) -> the SearchConfig fields each one sets."""
    sets = {f.name: (f.name,) for f in _setting_fields()}
    sets.update(trial_budget=("budget_unit", "trial_budget"), max_steps=("budget_unit", "trial_budget"),
                **{f.name: (f"space.{f.name}",) for f in FLAGS.values()})
    return {dest: names for dest, names in sets.items() if getattr(args, dest, None) is not None}


def _flag(dest: str) -> str:
    if dest in HPARAMS:
        return "--" + Hparams.__dataclass_fields__[dest].metadata["flag"]
    if dest in SearchConfig.__dataclass_fields__:
        return SearchConfig.__dataclass_fields__[dest].metadata["flag"]
    return "--" + dest.replace("_", "-")


def _field_value(config: SearchConfig, name: str) -> Any:
    if name.startswith("space."):  # a search saved before a field was added ran with its default
        return with_defaults(config.space).get(name.split(".", 1)[1])
    return getattr(config, name)


def _shown(value: Any) -> str:
    if isinstance(value, dict):  # a distribution's JSON
        return describe(json_to_distribution(json.dumps(value))) if "name" in value else str(value)
    return "unset" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


# Counts reach native code as fixed-size integers (Ray's scheduler and ASHA through numpy, the tokenizers library,
# float() for budgets): a bound past which a flag is refused here, not a traceback after search.json is written
MAX_COUNT = 2**31 - 1


def _check(flag: str, value: Any, check: Callable | None, integer: bool) -> None:
    if value is None:
        return
    if integer and value > MAX_COUNT:  # before the check: math.isfinite cannot take an int past float's range
        raise UserError(f"{flag} must be at most {MAX_COUNT:,}, got {value}")
    if check is None:
        return
    wanted = check(value)
    if wanted:
        kind = "an integer" if integer else "a number"
        raise UserError(f"{flag} must be {wanted if wanted.startswith('at least') else f'{kind} {wanted}'}, got {value}")


def _simple_settings(args: argparse.Namespace, preset: Preset) -> dict:
    """Every setting with a type (a plain value): the flag's value, else its default (or the preset's), checked."""
    out = {}
    for f in _setting_fields():
        meta = f.metadata
        if meta["type"] is None and meta["choices"] is None:
            continue  # amounts and the data source: resolved by their own steps
        given = getattr(args, f.name)
        _check(meta["flag"], given, meta["check"], meta["type"] is int)
        default = getattr(preset, f.name) if meta["default"] is FROM_PRESET else meta["default"]
        out[f.name] = default if given is None else given
    return out


def _budget(args: argparse.Namespace, preset: Preset) -> tuple[float, str]:
    """--trial-budget AMOUNT, or --max-steps N (= Nsteps), or the preset's."""
    if args.trial_budget is not None and args.max_steps is not None:
        raise UserError("give either --trial-budget or --max-steps, not both")
    if args.max_steps is not None:
        _check("--max-steps", args.max_steps, positive, integer=True)
        return float(args.max_steps), "steps"
    return parse_amount(args.trial_budget or preset.trial_budget, "--trial-budget")


def _eval_every(args: argparse.Namespace, preset: Preset, budget: float, unit: str) -> float:
    preset_budget, preset_unit = parse_amount(preset.trial_budget, "preset budget")
    steps = getattr(args, "eval_interval", None)
    if steps is not None:
        if args.eval_every is not None:
            raise UserError("give --eval-every or --eval-interval, not both: --eval-interval N is --eval-every Nsteps")
        if unit != "steps":
            raise UserError(f"--eval-interval counts steps (as nanogpt.train's), but the trial budget is in "
                            f"{UNIT_NAMES[unit]}: give --eval-every in {UNIT_NAMES[unit]} instead "
                            f"(e.g. --eval-every {number(budget / 10)}{unit})")
        args.eval_every = f"{steps}steps"
    if args.eval_every is not None:
        eval_every = parse_amount(args.eval_every, "--eval-every", unit)[0]
    elif unit == preset_unit:  # the preset's number of evaluations a trial, whatever the budget
        eval_every = float(preset.eval_every) * budget / preset_budget
        if unit == "steps":
            eval_every = float(max(1, round(eval_every)))
    else:
        eval_every = default_eval_every(budget, unit)
    if unit == "steps" and not eval_every.is_integer():
        raise UserError(f"--eval-every must be whole steps, got {eval_every:g}")
    if eval_every > budget:
        raise UserError(f"--eval-every {format_amount(eval_every, unit)} is more than the trial budget "
                        f"{format_amount(budget, unit)}: a trial would never be evaluated before its end")
    return eval_every


def _grace(args: argparse.Namespace, preset: Preset, budget: float, unit: str, eval_every: float,
           schedule: str) -> float:
    preset_budget, preset_unit = parse_amount(preset.trial_budget, "preset budget")
    if args.grace_period is not None:
        grace = parse_amount(args.grace_period, "--grace-period", unit)[0]
        if grace > budget:
            raise UserError(f"--grace-period {format_amount(grace, unit)} is above the trial budget "
                            f"{format_amount(budget, unit)}: no trial could ever be stopped early")
    elif unit == preset_unit and budget == preset_budget and args.eval_every is None:
        grace = float(preset.grace_period)
    else:
        # keep the presets' proportion, on an evaluation: a tenth of the budget under wsd, whose cooldown rungs rank
        # trials that early (benchmarks/RESULTS.md, "Rank correlation"), a quarter under cosine
        share = 0.1 if schedule == "wsd" else 0.25
        grace = max(eval_every, math.floor(budget * share / eval_every + 1e-9) * eval_every)
    n_evals = grace / eval_every
    if abs(n_evals - round(n_evals)) > 1e-9 or round(n_evals) < 1:
        raise UserError(f"--grace-period ({format_amount(grace, unit)}) must be a multiple of --eval-every "
                        f"({format_amount(eval_every, unit)}): ASHA decides on evaluations")
    return grace


def _final(args: argparse.Namespace, values: dict, budget: float, unit: str) -> dict:
    """--final-budget AMOUNT or auto, --final-from and --time-budget, checked together: the fields they set."""
    auto = args.final_budget is not None and args.final_budget.strip() == "auto"
    total = values["time_budget_s"]
    if auto and total is None:
        raise UserError("--final-budget auto sizes the final training from the time budget: give --time-budget too "
                        "(e.g. --time-budget 15m)")
    if args.final_share is not None and not auto:
        raise UserError("--final-share splits --time-budget between the search and --final-budget auto's final "
                        "training: give --final-budget auto (and --time-budget) with it, or drop it")
    final = parse_amount(args.final_budget, "--final-budget", unit)[0] if args.final_budget and not auto else None
    final_from = values["final_from"] or ("continue" if values["schedule"] == "wsd" else "scratch")
    if final_from == "continue" and values["schedule"] != "wsd":
        raise UserError("--final-from continue needs --schedule wsd: a cosine trial ends decayed, there is no stable "
                        "checkpoint to continue; use --final-from scratch")
    if final_from == "continue" and final is not None and final <= budget:
        raise UserError(f"--final-budget {format_amount(final, unit)} is not more than the trial budget "
                        f"{format_amount(budget, unit)}: continuing the winner needs a larger one (or --final-from scratch)")
    if values["ladder"] == "on":
        _check_ladder(values, final is not None or auto, final_from, unit)
    return dict(final_budget=final, final_from=final_from, final_auto=auto, total_time_s=total if auto else None,
                time_budget_s=total * (1 - values["final_share"]) if auto else total)


def _check_ladder(values: dict, final: bool, final_from: str, unit: str) -> None:
    """--ladder on continues trials' stable phases (tune.ladder): wsd, --final-from continue, a final budget, and a
    budget the ladder can place spends in before training (not seconds)."""
    if values["schedule"] != "wsd" or final_from != "continue":
        raise UserError("--ladder on continues trials' stable phases: it needs --schedule wsd and --final-from continue "
                        "(a cosine trial ends decayed); leave --ladder off to train the winner alone")
    if not final:
        raise UserError("--ladder on climbs to the final budget: give --final-budget AMOUNT (or auto with --time-budget)")
    if unit == "s":
        raise UserError("--ladder on needs a trial budget in steps, tokens or flops (its spends are placed before "
                        "training; a seconds budget is measured as it runs)")


def _check_export(fmt: str | None, tokenizer: str, space: dict | None = None) -> None:
    """--export FORMAT: refused now, before the search, where the tokenizer cannot go into that format, or where a
    model the space can draw has an architecture option the format has no equivalent of (every combination of the
    space's values for GPTConfig's options: any may win)."""
    from nanogpt.export import NANOGPT_ARCH, choices_problem

    if fmt is None:
        return
    exports = getattr(TOKENIZERS[tokenizer], "exports", ())
    if fmt not in exports:
        why = " (nanoGPT's meta.pkl maps characters)" if fmt == "nanogpt" else ""
        instead = f"use --export {' or '.join(exports)}" if exports else "leave --export off"
        raise UserError(f"--export {fmt} cannot hold a {tokenizer} tokenizer{why}: {instead}")
    choices = {name: spec_values(spec) for name, spec in (space or {}).items() if name in (*NANOGPT_ARCH, "bias")}
    choices.setdefault("bias", [False])  # Hparams.model_config's
    if problem := choices_problem(choices, fmt):
        raise UserError(f"--export {fmt}: {problem}")


def _space(args: argparse.Namespace, preset: Preset) -> dict:
    space = with_defaults(preset.space)  # a preset that leaves the architecture out keeps nanoGPT's, saved whole
    for f in FLAGS.values():
        if getattr(args, f.name) is not None:
            space[f.name] = parse_range(f.metadata["flag"], getattr(args, f.name))
    for hparam, spec in space.items():
        check_spec(hparam, spec)  # a preset's own values too (muon where torch lacks it)
    check_space(space)
    return space


def _check_resources(gpus: float, device: str) -> None:
    if gpus > 1 and gpus != int(gpus):
        raise UserError(f"--gpus-per-trial above 1 must be a whole number, got {gpus}")
    if device == "cuda" and gpus == 0:
        raise UserError("--device cuda needs a GPU share: give --gpus-per-trial (Ray hides GPUs from trials without one)")


def resolve(args: argparse.Namespace, results_dir: str, name: str) -> SearchConfig:
    """A new search's configuration: the preset merged with the flags, every check done here, before Ray."""
    if args.top < 1:
        raise UserError(f"--top must be at least 1, got {args.top}")
    values = _simple_settings(args, PRESETS[args.preset or "laptop"])
    preset = PRESETS[values["preset"]]
    budget, unit = _budget(args, preset)
    eval_every = _eval_every(args, preset, budget, unit)
    _check_resources(values["gpus_per_trial"], values["device"])
    values.update(_final(args, values, budget, unit))
    space = _space(args, preset)
    _check_export(values["export"], values["tokenizer"], space)
    # a URI pyarrow cannot open is an error now, before Ray
    local_copy = str(Mirror(f"{results_dir}/{name}").local) if is_uri(results_dir) else None
    return SearchConfig(
        **values, name=name, results_dir=results_dir,
        dataset=None if args.data_file else args.dataset or preset.dataset,
        data_file=str(Path(args.data_file).expanduser().resolve()) if args.data_file else None,
        space=space_to_json(space), budget_unit=unit, trial_budget=budget, eval_every=eval_every,
        grace_period=_grace(args, preset, budget, unit, eval_every, values["schedule"]),
        eval_iters=preset.eval_iters, eval_batch_size=preset.eval_batch_size, train_loss_from=preset.train_loss_from,
        sampler=sampler_options(values["searcher"], values["seed"], preset),
        metric="val_loss", mode="min", created=time.strftime("%Y-%m-%d %H:%M:%S"), local_copy=local_copy,
        report=not getattr(args, "no_report", False),
    )


def check_same(args: argparse.Namespace, saved: SearchConfig, results_dir: str) -> None:
    """--resume with flags: each one the user gave must say what the saved search says."""
    given = _given(args)
    if not given:
        return
    fresh = resolve(args, results_dir, saved.name)
    for dest, names in given.items():
        for name in names:
            new, old = _field_value(fresh, name), _field_value(saved, name)
            if new != old:
                raise UserError(f"{_flag(dest)}: {saved.name} was searched with {_shown(old)}, this command says "
                                f"{_shown(new)}; --resume continues a search with its own settings: drop the flag "
                                f"or start a new search with another --name")


def config_from_args(args: argparse.Namespace) -> SearchConfig:
    """Validate the command line into a SearchConfig. Nothing is written here, not even a URI search's local copy."""
    uri = is_uri(args.results_dir)
    results_dir = args.results_dir.rstrip("/") if uri else str(Path(args.results_dir).expanduser().resolve())
    if args.name is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", args.name):
        raise UserError(f"--name {args.name!r} must be 1 to 100 ASCII letters (a-z, A-Z), digits, '.', '_' or '-', "
                        f"starting with a letter or digit: it names the search's directory and Ray's experiment")
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
        # read at the URI: the local copy is downloaded by the run, under the search's lock (tune.search.run)
        saved = SearchConfig.loads(mirror.read_text(SETTINGS_FILE), f"{mirror.uri}/{SETTINGS_FILE}")
        exp = mirror.local
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
    if saved.name != args.name:
        # the name places the search's files (RESULTS_DIR/NAME): only the directory's own name is trusted
        raise UserError(f"{exp / SETTINGS_FILE} names the search {saved.name!r}, not {args.name!r}: a results "
                        f"directory keeps its name when copied or moved: copy or move it as {saved.name!r}")
    check_same(args, saved, results_dir)
    # a local search's files are where its directory is now, whatever search.json says
    return dataclasses.replace(saved, results_dir=results_dir, local_copy=saved.local_copy if uri else None,
                               report=not getattr(args, "no_report", False))
