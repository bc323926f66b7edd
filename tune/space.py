"""What a trial is: its hyperparameters (`Hparams`, the one typed trial configuration), the presets that
search them, and Optuna's define-by-run sampler over them.

A space maps every field of `Hparams` to an Optuna distribution (`IntDistribution`,
`FloatDistribution`, `CategoricalDistribution`) or to a constant. The sampler only samples; n_embd is
derived from n_head * head_dim, so every sampled configuration is valid by construction.

Adding a hyperparameter touches this module only: a field of `Hparams` (its flag and check in the
field's metadata), its place in `model_config`/`train_config`, and its range in the presets. The flags,
search.json, trials.csv, the report's tables and plots and the progress lines all follow the fields.
"""

from __future__ import annotations

import json
import math
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from typing import Any, Union

from optuna.distributions import (BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution,
                                  distribution_to_json, json_to_distribution)

from nanogpt.errors import UserError
from nanogpt.model import MLPS, NORMS, PARAMETRIZATIONS, POS_EMBS, GPTConfig
from nanogpt.train import OPTIMIZERS, TrainConfig

Spec = Union[BaseDistribution, int, float, str]


def _hp(flag: str, help: str, check: str, log: bool = False, choices: tuple = (), short: str = "", fmt: str = "",
        table: bool = True, **default):
    """A hyperparameter field: its command-line flag, help text, the check its values must pass
    (positive | fraction | nonneg | choice: one of `choices`) and whether a range of it is sampled on a log scale;
    how it is shown: `short` label and `fmt` in one-line descriptions, `table`: a column of the top-trials table.
    `default=`: only for fields added later, so code that builds Hparams by hand keeps working."""
    return field(metadata={"flag": flag, "help": help, "check": check, "log": log, "choices": choices,
                           "short": short, "fmt": fmt, "table": table}, **default)


@dataclass(frozen=True)
class Hparams:
    """One trial's hyperparameters. Field names are the Optuna parameter names (stable: studies store them)."""

    n_layer: int = _hp("n-layer", "transformer blocks", "positive", short="L")
    n_head: int = _hp("n-head", "attention heads per block", "positive", short="H")
    # shown as the model's width, n_embd (see SHOWN)
    head_dim: int = _hp("head-dim", "channels per head (n_embd = n_head * head_dim)", "positive", short="embd")
    dropout: float = _hp("dropout", "dropout probability", "fraction", short="drop", fmt=".2f")
    learning_rate: float = _hp("lr", "peak learning rate (a range is sampled on a log scale)", "positive", log=True,
                               short="lr", fmt=".1e")
    batch_size: int = _hp("batch-size", "sequences per training step", "positive", short="B")
    block_size: int = _hp("block-size", "context length in tokens", "positive", short="T", table=False)
    weight_decay: float = _hp("weight-decay", "AdamW weight decay on 2-D weights", "nonneg", table=False)
    optimizer: str = _hp("optimizer", "adamw, or muon (torch.optim.Muon's rule, nanogpt.muon, on the blocks' 2-D "
                         "weights, AdamW on the rest, one learning rate)", "choice", choices=OPTIMIZERS, default="adamw")
    # the architecture (GPTConfig's options), nanoGPT's by default; a search.json without them resumes at these
    pos_emb: str = _hp("pos-emb", "positions: learned (nanoGPT's table) or rope (rotary, on q and k)", "choice",
                       choices=POS_EMBS, default="learned", table=False)
    norm: str = _hp("norm", "layernorm (nanoGPT's) or rmsnorm (parameter-free)", "choice", choices=NORMS,
                    default="layernorm", table=False)
    mlp: str = _hp("mlp", "gelu (nanoGPT's), relu2 (ReLU squared) or swiglu (8/3 n_embd hidden)", "choice",
                   choices=MLPS, default="gelu", table=False)
    qk_norm: bool = _hp("qk-norm", "RMSNorm of each head's q and k: true or false", "choice", choices=(False, True),
                        short="qk_norm", default=False, table=False)
    tie_embeddings: bool = _hp("tie-embeddings", "lm_head shares wte's weight (nanoGPT): true or false", "choice",
                               choices=(True, False), short="tied", default=True, table=False)
    logit_softcap: float = _hp("logit-softcap", "logits = cap * tanh(logits / cap); 0 = off", "nonneg",
                               short="softcap", fmt="g", default=0.0, table=False)
    zero_init: bool = _hp("zero-init", "output projections (and an untied lm_head) start at zero: true or false",
                          "choice", choices=(False, True), short="zero_init", default=False, table=False)
    parametrization: str = _hp("parametrization", "sp (standard, nanoGPT's) or mup (muP: the best learning rate "
                               "holds as n_embd grows)", "choice", choices=PARAMETRIZATIONS, default="sp", table=False)
    mup_base_width: int = _hp("mup-base-width", "mup: the n_embd at which mup equals sp (its learning rates and "
                              "init)", "positive", short="mup_base", default=128, table=False)

    @property
    def n_embd(self) -> int:
        return self.n_head * self.head_dim

    @classmethod
    def from_config(cls, config: dict) -> "Hparams":
        """From a Ray trial config (sampled values plus constants); other keys are ignored. A field added later
        takes its default where the config (a trial of an older search) does not hold it."""
        return cls(**{f.name: config[f.name] for f in fields(cls) if f.name in config or f.default is MISSING})

    def to_dict(self) -> dict:
        return {**asdict(self), "n_embd": self.n_embd}

    def line(self) -> str:
        """One short line, e.g. 'L=2 H=4 embd=64 drop=0.05 lr=3.0e-03 B=16 T=64 adamw' (labelled fields only,
        n_embd for head_dim as the model is built; a choice shows its value alone; the architecture only where
        it is not nanoGPT's)."""
        parts = []
        for f in fields(self):
            value = self.n_embd if f.name == "head_dim" else getattr(self, f.name)
            if f.name in ARCHITECTURE and value == f.default:
                continue
            if f.metadata["short"]:
                parts.append(f"{f.metadata['short']}={value:{f.metadata['fmt']}}")
            elif f.metadata["check"] == "choice":
                parts.append(str(value))
        return " ".join(parts)

    def model_config(self, vocab_size: int) -> GPTConfig:
        return GPTConfig(block_size=self.block_size, vocab_size=vocab_size, n_layer=self.n_layer,
                         n_head=self.n_head, n_embd=self.n_embd, dropout=self.dropout,
                         bias=False,  # nanoGPT: a little better and faster without biases
                         **{name: getattr(self, name) for name in ARCHITECTURE})

    def train_config(self, *, budget_unit: str, budget: float, eval_every: float, device: str = "cpu",
                     **shared: Any) -> TrainConfig:
        """The trial's TrainConfig for a budget in its unit; `shared`: the search-wide TrainConfig fields
        (eval_iters, eval_batch_size, train_loss_from, seed, schedule, ...). min_lr: TrainConfig's default."""
        return TrainConfig.for_budget(budget_unit, budget, eval_every, batch_size=self.batch_size,
                                      learning_rate=self.learning_rate, weight_decay=self.weight_decay,
                                      optimizer=self.optimizer, device=device, **shared)


HPARAMS = [f.name for f in fields(Hparams)]  # in sampling order
HPARAM_DEFAULTS = {f.name: f.default for f in fields(Hparams) if f.default is not MISSING}  # the fields added later
ARCHITECTURE = ("pos_emb", "norm", "mlp", "qk_norm", "tie_embeddings", "logit_softcap", "zero_init",  # GPTConfig's
                "parametrization", "mup_base_width")
# the columns a trial is shown by: the hyperparameters, with the model's width n_embd for head_dim
SHOWN = [("n_embd" if h == "head_dim" else h) for h in HPARAMS]
TABLE = [("n_embd" if f.name == "head_dim" else f.name) for f in fields(Hparams) if f.metadata["table"]]


def is_log(column: str) -> bool:
    """Whether a hyperparameter's range is sampled (and best plotted) on a log scale."""
    f = Hparams.__dataclass_fields__.get(column)
    return bool(f and f.metadata["log"])


def derived(config: dict) -> dict:
    """The columns a trial's config implies but does not hold (n_embd), where it holds what they need."""
    return {"n_embd": config["n_head"] * config["head_dim"]} if config.get("n_head") and config.get("head_dim") else {}
FLAGS = {f.metadata["flag"]: f for f in fields(Hparams)}  # range flag -> field


def is_int(name: str) -> bool:
    return Hparams.__dataclass_fields__[name].type in ("int", int)


def is_str(name: str) -> bool:
    return Hparams.__dataclass_fields__[name].type in ("str", str)


def is_bool(name: str) -> bool:
    return Hparams.__dataclass_fields__[name].type in ("bool", bool)


def with_defaults(space: dict) -> dict:
    """A space (specs or their JSON) with the fields added since it was saved at their defaults."""
    return {**space, **{k: v for k, v in HPARAM_DEFAULTS.items() if k not in space}}


# --- specs: distributions and constants ---------------------------------------------------------


def spec_values(spec: Spec) -> list:
    """The values a spec can take at its ends (ranges) or in full (choices, constants)."""
    if isinstance(spec, (IntDistribution, FloatDistribution)):
        return [spec.low, spec.high]
    if isinstance(spec, CategoricalDistribution):
        return list(spec.choices)
    return [spec]


def max_value(spec: Spec):
    return max(spec_values(spec))


def _word(value) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def describe(spec: Spec) -> str:
    if isinstance(spec, IntDistribution):
        return f"{spec.low}:{spec.high}" + (f":{spec.step}" if spec.step != 1 else "")
    if isinstance(spec, FloatDistribution):
        return f"{spec.low:g}:{spec.high:g}" + (" (log)" if spec.log else "")
    if isinstance(spec, CategoricalDistribution):
        return ",".join(_word(c) for c in spec.choices)
    return f"{spec:g}" if isinstance(spec, float) else _word(spec)


def check_spec(name: str, spec: Spec) -> None:
    """Values that can never train are refused before Ray starts."""
    f = Hparams.__dataclass_fields__[name]
    flag, check, values = "--" + f.metadata["flag"], f.metadata["check"], spec_values(spec)
    if check == "choice":
        allowed = f.metadata["choices"]
        # bool is an int: True would pass as 1, and 1 as True
        if isinstance(spec, (IntDistribution, FloatDistribution)) or any(
                v not in allowed or type(v) is not type(allowed[0]) for v in values):
            shown = [str(a).lower() if isinstance(a, bool) else a for a in allowed]
            raise UserError(f"{flag}: {name} takes {' or '.join(shown)} (one, or several separated by commas), "
                            f"got {describe(spec)}")
        return
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) for v in values):
        raise UserError(f"{flag}: {name} takes numbers, got {describe(spec)}")
    if is_int(name) and any(v <= 0 or v != int(v) for v in values):
        raise UserError(f"{flag}: {name} must be a positive integer, got {describe(spec)}")
    if check == "positive" and any(v <= 0 for v in values):
        what = "the learning rate" if name == "learning_rate" else name
        raise UserError(f"{flag}: {what} must be > 0, got {describe(spec)}")
    if check == "fraction" and any(not 0 <= v < 1 for v in values):
        raise UserError(f"{flag}: {name} must be in [0, 1), got {describe(spec)}")
    if check == "nonneg" and any(v < 0 for v in values):
        raise UserError(f"{flag}: {name} must be >= 0, got {describe(spec)}")


def _number(text: str, flag: str, integer: bool) -> int | float:
    try:
        value = float(text)
    except ValueError:
        raise UserError(f"--{flag}: {text!r} is not a number") from None
    if integer:
        if not value.is_integer():
            raise UserError(f"--{flag}: {text!r} must be a whole number")
        return int(value)
    return value


def _bool(text: str, flag: str) -> bool:
    if text.lower() in ("true", "1", "yes", "on"):
        return True
    if text.lower() in ("false", "0", "no", "off"):
        return False
    raise UserError(f"--{flag}: {text!r} is not true or false (give true, false, or true,false to search both)")


def parse_range(flag: str, text: str) -> Spec:
    """A range flag's text -> a spec: 'LOW:HIGH' (ints may add ':STEP'), 'A,B,C' choices, or one value."""
    f = FLAGS[flag]
    name, integer = f.name, is_int(f.name)
    text = text.strip()
    if not text:
        raise UserError(f"--{flag} is empty: give a range like 2:6, choices like 2,4,8, or a value")
    if is_str(name) or is_bool(name):  # words: 'A,B' choices or one value, never a range
        words = tuple(dict.fromkeys(w.strip() for w in text.split(",") if w.strip()))
        if is_bool(name):
            words = tuple(dict.fromkeys(_bool(w, flag) for w in words))
        spec = CategoricalDistribution(words) if len(words) > 1 else (words[0] if words else text)
        check_spec(name, spec)
        return spec
    if ":" in text:
        parts = text.split(":")
        if len(parts) not in (2, 3) or (len(parts) == 3 and not integer):
            raise UserError(f"--{flag}: {text!r} is not a range; write LOW:HIGH" + (" or LOW:HIGH:STEP" if integer else ""))
        low, high = (_number(p, flag, integer) for p in parts[:2])
        if low > high:
            raise UserError(f"--{flag}: the range {text} is empty (min {low} > max {high}); write it as {high}:{low}")
        check_spec(name, CategoricalDistribution([low, high]))
        if integer:
            step = _number(parts[2], flag, True) if len(parts) == 3 else 1
            if step <= 0:
                raise UserError(f"--{flag}: the step in {text} must be positive")
            if (high - low) % step:
                raise UserError(f"--{flag}: {high} - {low} is not a multiple of the step {step}")
            return IntDistribution(low, high, step=step)
        return FloatDistribution(low, high, log=f.metadata["log"])
    if "," in text:
        choices = tuple(dict.fromkeys(_number(p, flag, integer) for p in text.split(",") if p.strip()))
        if not choices:
            raise UserError(f"--{flag}: no choices in {text!r}")
        spec: Spec = CategoricalDistribution(choices)
    else:
        spec = _number(text, flag, integer)
    check_spec(name, spec)
    return spec


def space_to_json(space: dict[str, Spec]) -> dict:
    """A space as plain JSON (search.json): distributions as Optuna's own JSON, constants as they are."""
    return {k: json.loads(distribution_to_json(v)) if isinstance(v, BaseDistribution) else v for k, v in space.items()}


def space_from_json(obj: dict) -> dict[str, Spec]:
    return {k: json_to_distribution(json.dumps(v)) if isinstance(v, dict) else v for k, v in obj.items()}


def describe_space(space: dict[str, Spec]) -> dict[str, str]:
    return {name: describe(space[name]) for name in HPARAMS if name in space}


def largest(space: dict[str, Spec]) -> Hparams:
    """The most expensive trial the space allows (each field at its largest): to check budgets before Ray.
    Of the architecture's choices, the costliest per token: swiglu (its hidden width rounds up), untied."""
    space = with_defaults(space)
    costliest = {"mlp": "swiglu", "tie_embeddings": False}
    pick = {name: costliest[name] if costliest.get(name) in spec_values(space[name]) else max_value(space[name])
            for name in HPARAMS}
    return Hparams(**pick)


def check_space(space: dict[str, Spec]) -> None:
    """What no single field's check can see: rope needs an even head size."""
    space = with_defaults(space)
    odd = [d for d in spec_values(space["head_dim"]) if d % 2]
    if "rope" in spec_values(space["pos_emb"]) and odd:
        raise UserError(f"--pos-emb rope rotates pairs of channels: every --head-dim must be even, got "
                        f"{describe(space['head_dim'])}")


# --- define-by-run ------------------------------------------------------------------------------


def suggest(trial, name: str, dist: BaseDistribution):
    if isinstance(dist, IntDistribution):
        return trial.suggest_int(name, dist.low, dist.high, step=dist.step, log=dist.log)
    if isinstance(dist, FloatDistribution):
        return trial.suggest_float(name, dist.low, dist.high, step=dist.step, log=dist.log)
    if isinstance(dist, CategoricalDistribution):
        return trial.suggest_categorical(name, list(dist.choices))
    raise TypeError(f"unsupported distribution {dist!r}")


class SpaceSampler:
    """Optuna define-by-run function: samples the space and returns the constants of the trial's config.

    A class holding the space as JSON (not a closure) so Ray can pickle it with the searcher state."""

    def __init__(self, space_json: dict):
        space_json = with_defaults(space_json)  # a space saved before a field was added: its default
        unknown = set(space_json) ^ set(HPARAMS)
        if unknown:
            raise ValueError(f"a space must give every hyperparameter exactly once; off: {sorted(unknown)}")
        self.space_json = space_json

    def __call__(self, trial) -> dict:
        fixed = {}
        # which sampler chose this trial (TPE or random): recorded so a resumed search can show that
        # TPE, not a fresh random searcher, carried on
        study = getattr(getattr(trial, "ot_trial", trial), "study", None)
        if study is not None:
            fixed["sampler"] = type(study.sampler).__name__
        space = space_from_json(self.space_json)
        for name in HPARAMS:
            spec = space[name]
            if isinstance(spec, BaseDistribution):
                suggest(trial, name, spec)
            else:
                fixed[name] = spec
        return fixed


# --- presets ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Preset:
    """A named search: its space, data, budget (in a unit: steps, tokens, flops or s) and resources."""

    name: str
    description: str
    space: dict
    dataset: str = "mixed"
    num_samples: int = 16
    trial_budget: str = "500steps"  # what every trial may spend
    eval_every: float = 25  # in the budget's unit: one evaluation (one report to Tune) each
    grace_period: float = 75  # ASHA: spend before a trial can be stopped (a multiple of eval_every)
    reduction_factor: int = 3
    eval_iters: int = 10
    eval_batch_size: int = 32
    # trials take train_loss from their training steps and evaluate only val: halves evaluation cost
    train_loss_from: str = "steps"
    cpus_per_trial: float = 1
    gpus_per_trial: float = 0
    n_startup_trials: int = 6  # random trials before TPE models the results
    # wsd: warmup-stable-decay with cooldown rungs; their loss at a tenth of the budget picked the final winner on
    # both data sets measured, so grace periods sit at a tenth (benchmarks/RESULTS.md, "Rank correlation")
    schedule: str = "wsd"


def _int(low: int, high: int, step: int = 1) -> IntDistribution:
    return IntDistribution(low, high, step=step)


def _choice(*choices) -> CategoricalDistribution:
    return CategoricalDistribution(choices)


def _float(low: float, high: float, log: bool = False) -> FloatDistribution:
    return FloatDistribution(low, high, log=log)


PRESETS: dict[str, Preset] = {
    # the teaching demo: a small budget, with a margin above the smallest measured, at which the best model counts
    # past held-out numbers (report: pattern probes); equal FLOPs favour the small models. Why these sizes and this
    # budget, measured: benchmarks/RESULTS.md, "Presets: why their sizes and budgets".
    "laptop": Preset(
        name="laptop",
        description="small models on the built-in mixed corpus, 3e11 FLOPs a trial; under 2 minutes on 2 CPU cores",
        space={
            "n_layer": _int(2, 3),
            "n_head": _choice(2, 4),
            "head_dim": 16,
            # no dropout: with it attention leaves its fused kernel and every step draws masks, a far slower step at
            # these sizes; the probes pass without it (benchmarks/RESULTS.md, "Presets")
            "dropout": 0.0,
            "learning_rate": _float(3e-3, 2e-2, log=True),
            "batch_size": _choice(16, 32),
            "block_size": 64,
            "weight_decay": 0.1,
            "optimizer": "muon",
        },
        num_samples=10,
        trial_budget="3e11flops",
        eval_every=3e10,
        grace_period=3e10,  # a tenth: cooldown rungs rank that early (Preset.schedule)
    ),
    "shakespeare-cpu": Preset(
        name="shakespeare-cpu",
        description="tiny Shakespeare, char-level, 1 CPU a trial; about 15 minutes on 2 cores with --time-budget 840",
        space={
            "n_layer": _int(2, 5),
            "n_head": _choice(4, 6, 8),
            "head_dim": _choice(32, 48),
            "dropout": _float(0.0, 0.1),
            "learning_rate": _float(2e-3, 1.2e-2, log=True),
            "batch_size": _choice(32, 48, 64),
            "block_size": 64,
            "weight_decay": 0.1,
            "optimizer": _choice("adamw", "muon"),
        },
        dataset="shakespeare",
        num_samples=24,
        trial_budget="1.5e13flops",  # about 600 steps of a mid-sized model (benchmarks/RESULTS.md, "Presets")
        eval_every=1.5e12,
        eval_iters=20,
        grace_period=1.5e12,  # a tenth: cooldown rungs rank that early (Preset.schedule)
        n_startup_trials=8,
    ),
    # the one command that takes on nanoGPT's CPU recipe at its own compute (benchmarks/beat_nanogpt.py):
    # trials of 2e12 FLOPs, the winner trained for the recipe's 8e12 with --final-budget 8e12flops. Muon only,
    # smaller batches, dropout 0 (too few passes over the data to overfit): benchmarks/RESULTS.md, "Presets".
    "shakespeare-muon": Preset(
        name="shakespeare-muon",
        description="tiny Shakespeare, char-level, Muon, 2e12 FLOPs a trial, 1 CPU each; with --final-budget "
                    "8e12flops --time-budget 780, under 20 minutes on 2 cores",
        space={
            "n_layer": _int(2, 3),
            "n_head": 4,
            "head_dim": _choice(24, 32, 48),
            "dropout": 0.0,
            "learning_rate": _float(5e-3, 2e-2, log=True),
            "batch_size": _choice(16, 32, 64),
            "block_size": 64,
            "weight_decay": 0.1,
            "optimizer": "muon",
        },
        dataset="shakespeare",
        num_samples=40,
        trial_budget="2e12flops",
        eval_every=2e11,
        grace_period=2e11,  # a tenth: cooldown rungs rank that early (Preset.schedule)
        eval_iters=20,
        n_startup_trials=6,
    ),
    "gpu": Preset(
        name="gpu",
        description="around nanoGPT's baby GPT on tiny Shakespeare: block 256, up to 6 layers x 384 embd, 0.25 GPU a trial",
        space={
            "n_layer": _int(4, 6),
            "n_head": _choice(4, 6, 8),
            "head_dim": _choice(32, 48, 64),
            "dropout": _float(0.0, 0.3),
            "learning_rate": _float(3e-4, 3e-3, log=True),
            "batch_size": _choice(32, 64),
            "block_size": 256,
            "weight_decay": 0.1,
            "optimizer": _choice("adamw", "muon"),
        },
        dataset="shakespeare",
        num_samples=16,
        trial_budget="5000steps",
        eval_every=250,
        eval_iters=50,
        eval_batch_size=64,
        grace_period=500,  # a tenth: cooldown rungs rank that early (Preset.schedule)
        cpus_per_trial=2,
        gpus_per_trial=0.25,
    ),
}
# shakespeare-muon's search on today's architecture, the set that measured best at nanoGPT's recipe shape with Muon
# (benchmarks/RESULTS.md, "Architecture ablation": 2e12 FLOPs, learning rate swept per row, 3 seeds: 1.786 against
# 1.902 for nanoGPT's, and 1.810 with ReLU^2 in place of SwiGLU): rotary positions, parameter-free RMSNorm, a SwiGLU
# MLP, QK-norm, an untied lm_head and zero-initialised output projections. It exports exactly as a Qwen3 model
# (--export hf). Its best learning rate sits lower than nanoGPT's (4e-3 against 8e-3 there).
PRESETS["shakespeare-modern"] = replace(
    PRESETS["shakespeare-muon"], name="shakespeare-modern",
    description="shakespeare-muon's search on a modern GPT (rope, rmsnorm, swiglu, qk_norm, untied lm_head, zero "
                "init; exports as Qwen3)",
    space={**PRESETS["shakespeare-muon"].space, "learning_rate": _float(2e-3, 1e-2, log=True), "pos_emb": "rope",
           "norm": "rmsnorm", "mlp": "swiglu", "qk_norm": True, "tie_embeddings": False, "logit_softcap": 0.0,
           "zero_init": True})
