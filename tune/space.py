"""Search presets and the define-by-run search space for OptunaSearch.

A space maps a hyperparameter name to one of: a constant, an int range, a float range
(optionally log scale) or a list of choices. `SpaceSampler` only samples (Optuna's
define-by-run): n_embd is derived later, in the trainable, as n_head * head_dim, so every
sampled configuration is valid by construction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Union


@dataclass(frozen=True)
class IntRange:
    low: int
    high: int
    step: int = 1

    def describe(self) -> str:
        return f"{self.low}:{self.high}" + (f":{self.step}" if self.step != 1 else "")


@dataclass(frozen=True)
class FloatRange:
    low: float
    high: float
    log: bool = False

    def describe(self) -> str:
        return f"{self.low:g}:{self.high:g}" + (" (log)" if self.log else "")


@dataclass(frozen=True)
class Choice:
    options: tuple

    def describe(self) -> str:
        return ",".join(str(o) for o in self.options)


Spec = Union[IntRange, FloatRange, Choice, int, float, str, bool]

# the order in which parameters are sampled (stable names: the Optuna study stores them)
SEARCHED = ("n_layer", "n_head", "head_dim", "dropout", "learning_rate", "batch_size", "block_size", "weight_decay")
INT_PARAMS = {"n_layer", "n_head", "head_dim", "batch_size", "block_size"}
LOG_PARAMS = {"learning_rate"}
# range flags of `python -m tune.search` -> parameter names
RANGE_FLAGS = {
    "n_layer": "n_layer",
    "n_head": "n_head",
    "head_dim": "head_dim",
    "dropout": "dropout",
    "lr": "learning_rate",
    "batch_size": "batch_size",
    "block_size": "block_size",
    "weight_decay": "weight_decay",
}


@dataclass(frozen=True)
class Preset:
    """A named search: its space, its budget and its data."""

    name: str
    description: str
    space: dict
    dataset: str = "mixed"
    num_samples: int = 16
    max_steps: int = 500
    eval_interval: int = 25
    eval_iters: int = 10
    eval_batch_size: int = 32
    # trials take train_loss from their training steps and evaluate only val: halves evaluation cost
    train_loss_from: str = "steps"
    grace_period: int = 75
    reduction_factor: int = 3
    cpus_per_trial: float = 1
    gpus_per_trial: float = 0
    n_startup_trials: int = 6  # random trials before TPE models the results
    warmup_steps: int = 20
    min_lr_ratio: float = 0.1


PRESETS: dict[str, Preset] = {
    "laptop": Preset(
        name="laptop",
        description="small models on the built-in mixed corpus; 2-3 minutes on 2 CPU cores",
        space={
            "n_layer": IntRange(1, 4),
            "n_head": Choice((2, 4)),
            "head_dim": Choice((16, 32)),
            "dropout": FloatRange(0.0, 0.2),
            "learning_rate": FloatRange(3e-4, 1e-2, log=True),
            "batch_size": Choice((16, 32)),
            "block_size": 64,
            "weight_decay": 0.1,
        },
        num_samples=20,
    ),
    "shakespeare-cpu": Preset(
        name="shakespeare-cpu",
        description="tiny Shakespeare, char-level, 1 CPU a trial; about 15 minutes on 2 cores with --time-budget 840",
        space={
            "n_layer": IntRange(2, 5),
            "n_head": Choice((4, 6, 8)),
            "head_dim": Choice((32, 48)),
            "dropout": FloatRange(0.0, 0.1),
            "learning_rate": FloatRange(2e-3, 1.2e-2, log=True),
            "batch_size": Choice((32, 48, 64)),
            "block_size": 64,
            "weight_decay": 0.1,
        },
        dataset="shakespeare",
        num_samples=24,
        max_steps=600,
        eval_interval=100,
        eval_iters=20,
        grace_period=200,
        reduction_factor=3,
        n_startup_trials=8,
        warmup_steps=50,
    ),
    "gpu": Preset(
        name="gpu",
        description="around nanoGPT's baby GPT on tiny Shakespeare: block 256, up to 6 layers x 384 embd, 0.25 GPU a trial",
        space={
            "n_layer": IntRange(4, 6),
            "n_head": Choice((4, 6, 8)),
            "head_dim": Choice((32, 48, 64)),
            "dropout": FloatRange(0.0, 0.3),
            "learning_rate": FloatRange(3e-4, 3e-3, log=True),
            "batch_size": Choice((32, 64)),
            "block_size": 256,
            "weight_decay": 0.1,
        },
        dataset="shakespeare",
        num_samples=16,
        max_steps=5000,
        eval_interval=250,
        eval_iters=50,
        eval_batch_size=64,
        grace_period=500,
        reduction_factor=3,
        cpus_per_trial=2,
        gpus_per_trial=0.25,
        n_startup_trials=6,
        warmup_steps=100,
    ),
}


# --- parsing range flags ------------------------------------------------------------------


def _number(text: str, name: str, integer: bool) -> int | float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"--{name}: {text!r} is not a number") from None
    if integer:
        if not value.is_integer():
            raise ValueError(f"--{name}: {text!r} must be a whole number")
        return int(value)
    return value


def parse_range(flag: str, text: str) -> Spec:
    """'2:6' (range, ints may add ':step'), '2,4,8' (choices) or '4' (constant) -> a spec."""
    param = RANGE_FLAGS[flag]
    integer = param in INT_PARAMS
    text = text.strip()
    if not text:
        raise ValueError(f"--{flag.replace('_', '-')} is empty: give a range like 2:6, choices like 2,4,8, or a value")
    name = flag.replace("_", "-")
    if ":" in text:
        parts = text.split(":")
        if len(parts) not in (2, 3) or (len(parts) == 3 and not integer):
            raise ValueError(f"--{name}: {text!r} is not a range; write LOW:HIGH" + (" or LOW:HIGH:STEP" if integer else ""))
        low, high = (_number(p, name, integer) for p in parts[:2])
        if low > high:
            raise ValueError(f"--{name}: the range {text} is empty (min {low} > max {high}); write it as {high}:{low}")
        if integer:
            step = _number(parts[2], name, True) if len(parts) == 3 else 1
            if step <= 0:
                raise ValueError(f"--{name}: the step in {text} must be positive")
            spec: Spec = IntRange(low, high, step)
        else:
            spec = FloatRange(low, high, log=param in LOG_PARAMS)
    elif "," in text:
        options = tuple(_number(p, name, integer) for p in text.split(",") if p.strip())
        if not options:
            raise ValueError(f"--{name}: no choices in {text!r}")
        spec = Choice(tuple(dict.fromkeys(options)))
    else:
        spec = _number(text, name, integer)
    check_spec(param, spec)
    return spec


def _bounds(spec: Spec) -> list:
    if isinstance(spec, (IntRange, FloatRange)):
        return [spec.low, spec.high]
    if isinstance(spec, Choice):
        return list(spec.options)
    return [spec]


def check_spec(param: str, spec: Spec) -> None:
    """Values that can never train are refused before Ray starts."""
    flag = "--" + next((f for f, p in RANGE_FLAGS.items() if p == param), param).replace("_", "-")
    values = _bounds(spec)
    if param in INT_PARAMS and any(v <= 0 for v in values):
        raise ValueError(f"{flag}: {param} must be a positive integer, got {spec_text(spec)}")
    if param == "dropout" and any(not 0 <= v < 1 for v in values):
        raise ValueError(f"{flag}: dropout must be in [0, 1), got {spec_text(spec)}")
    if param == "learning_rate" and any(not (v > 0 and math.isfinite(v)) for v in values):
        raise ValueError(f"{flag}: the learning rate must be > 0, got {spec_text(spec)}")
    if param == "weight_decay" and any(v < 0 for v in values):
        raise ValueError(f"{flag}: weight decay must be >= 0, got {spec_text(spec)}")


def spec_text(spec: Spec) -> str:
    return spec.describe() if hasattr(spec, "describe") else str(spec)


def max_value(spec: Spec):
    return max(_bounds(spec))


def with_overrides(preset: Preset, overrides: dict[str, Spec], **budget) -> Preset:
    """The preset with some parameters' ranges and budget fields replaced."""
    unknown = set(overrides) - set(SEARCHED)
    if unknown:
        raise ValueError(f"unknown search parameters: {', '.join(sorted(unknown))}")
    return replace(preset, space={**preset.space, **overrides}, **{k: v for k, v in budget.items() if v is not None})


# --- define-by-run ------------------------------------------------------------------------


class SpaceSampler:
    """Optuna define-by-run function: samples the space and returns the trial's constants.

    A class (not a closure) so Ray can pickle it with the searcher state for --resume.
    """

    def __init__(self, space: dict, constants: dict):
        self.space = dict(space)
        self.constants = dict(constants)

    def __call__(self, trial) -> dict:
        fixed = dict(self.constants)
        # which sampler chose this trial (TPE or random): recorded so a resumed search can show
        # that TPE, not a fresh random searcher, carried on
        study = getattr(getattr(trial, "ot_trial", trial), "study", None)
        if study is not None:
            fixed["sampler"] = type(study.sampler).__name__
        for name in SEARCHED:
            spec = self.space.get(name)
            if isinstance(spec, IntRange):
                trial.suggest_int(name, spec.low, spec.high, step=spec.step)
            elif isinstance(spec, FloatRange):
                trial.suggest_float(name, spec.low, spec.high, log=spec.log)
            elif isinstance(spec, Choice):
                trial.suggest_categorical(name, list(spec.options))
            elif spec is not None:
                fixed[name] = spec
        return fixed


def trial_constants(preset: Preset, *, dataset: str, seed: int, max_steps: int, eval_interval: int) -> dict:
    """What every trial of the search shares (merged into each sampled config)."""
    return {
        "max_steps": max_steps,
        "eval_interval": eval_interval,
        "eval_iters": preset.eval_iters,
        "eval_batch_size": preset.eval_batch_size,
        "train_loss_from": preset.train_loss_from,
        "warmup_steps": min(preset.warmup_steps, max_steps // 10),
        "min_lr_ratio": preset.min_lr_ratio,
        "dataset": dataset,
        "seed": seed,
    }


def spec_to_json(spec: Spec) -> dict | int | float | str:
    """A spec as plain JSON, for search.json."""
    if isinstance(spec, IntRange):
        return {"int": [spec.low, spec.high, spec.step]}
    if isinstance(spec, FloatRange):
        return {"float": [spec.low, spec.high], "log": spec.log}
    if isinstance(spec, Choice):
        return {"choice": list(spec.options)}
    return spec


def spec_from_json(obj) -> Spec:
    if isinstance(obj, dict):
        if "int" in obj:
            return IntRange(*obj["int"])
        if "float" in obj:
            return FloatRange(*obj["float"], log=obj["log"])
        return Choice(tuple(obj["choice"]))
    return obj


def describe_space(space: dict) -> dict[str, str]:
    return {name: spec_text(space[name]) for name in SEARCHED if name in space}
