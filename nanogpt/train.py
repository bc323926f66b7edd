"""The training loop: AdamW with nanoGPT's weight-decay groups (or Muon on the blocks' matrices), warmup +
cosine decay or warmup-stable-decay (with cooldown branches: nanogpt.cooldown), gradient clipping, periodic
evaluation handed to a callback, exact-resume checkpoints.

The loop knows nothing of Ray: the search passes a callback that reports each evaluation.
`python -m nanogpt.train` trains one configuration, the notebook's single run.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
import dataclasses
from dataclasses import asdict, dataclass
from enum import Enum
from pathlib import Path
from typing import Callable, Literal

import torch

from nanogpt.checkpoint import (MODEL_FILE, CheckpointError, load_optimizers_state, load_rng_state,
                                optimizers_state, read_checkpoint, read_checkpoint_tokenizer, rng_state,
                                run_meta, write_checkpoint)
from nanogpt.compile import COMPILE_MODES, StepCompiler, shape_key
from nanogpt.cooldown import cooldown_branch
from nanogpt.amounts import UNITS, parse_amount, parse_duration
from nanogpt.batches import TokenData, get_batch
from nanogpt.errors import UserError
from nanogpt.model import GPT, GPTConfig, hidden_matrices, resolve_device
from nanogpt.muon import Muon, newton_schulz_flops
# lr_at, step_spend, warmup_steps, wsd_decay_start: nanogpt.plan's, imported from here too
from nanogpt.plan import (PROBE_STEPS, FillClock, RunPlan, lr_at, step_spend, warmup_steps,  # noqa: F401
                          wsd_decay_start)

log = logging.getLogger(__name__)

OPTIMIZERS = ("adamw", "muon")
SCHEDULES = ("cosine", "wsd")




def default_eval_every(budget: float, unit: str) -> float:
    """Ten evaluations a budget (whole steps for a budget in steps)."""
    return float(max(1, int(budget // 10))) if unit == "steps" else budget / 10


def muon_matrices(model: GPT) -> list[torch.nn.Parameter]:
    """What Muon takes with --optimizer muon: the 2-D weights inside the blocks."""
    return [p for p in hidden_matrices(model) if p.requires_grad]


def optimizer_flops(model: GPT, optimizer: str) -> int:
    """FLOPs one optimizer step adds to a FLOPs budget: Muon's Newton-Schulz on its matrices (about 2.3 GFLOP a step
    at nanoGPT's CPU recipe, against 3.9 for its forward and backward), so Muon and AdamW trials are compared at the
    compute they cost. AdamW's elementwise update (about ten FLOPs a parameter, under 0.3% of a step of 768 tokens
    or more) and Muon's momentum are not counted."""
    if optimizer != "muon":
        return 0
    return sum(newton_schulz_flops(p.shape) for p in muon_matrices(model))


@dataclass(frozen=True)
class TrainConfig:
    """How to train. Defaults are nanoGPT's recommended CPU recipe (shakespeare_char on a laptop)."""

    max_steps: int = 2000  # optimizer steps (the budget when budget_unit is "steps")
    # what the training budget counts: optimizer steps, tokens, training FLOPs (GPT.flops_per_token() per
    # token, nanoGPT's formula, plus Muon's Newton-Schulz per step) or seconds of training steps (evaluations not counted)
    budget_unit: Literal["steps", "tokens", "flops", "s"] = "steps"
    budget: float | None = None  # the budget in budget_unit (unused for steps: max_steps); tokens/flops: train while the next step fits
    # evaluate each time the spend passes a multiple of this: an amount in the budget's unit (3e10flops; a bare
    # number is in budget_unit); for a steps budget the same as --eval-interval; None = eval_interval steps, or budget / 10
    eval_every: float | None = None
    batch_size: int = 12  # sequences per step
    learning_rate: float = 1e-3  # peak learning rate, after warmup
    min_lr: float | None = None  # floor of the cosine decay; None = learning_rate / 10
    warmup_steps: int | None = None  # linear warmup to learning_rate; None = min(100, planned steps // 10)
    lr_decay_steps: int | None = None  # step where the cosine reaches min_lr; None = the planned steps (for seconds: by a speed probe)
    weight_decay: float = 0.1  # on 2-D weights only (matmuls, embeddings)
    beta1: float = 0.9  # AdamW's first-moment decay (nanoGPT's CPU recipe: 0.9)
    beta2: float = 0.99  # AdamW's second-moment decay (nanoGPT's CPU recipe: 0.99)
    grad_clip: float = 1.0  # max global gradient norm; 0 disables clipping
    eval_interval: int = 250  # evaluate every this many steps (and at the last step), when budget_unit is "steps"
    eval_iters: int = 20  # batches per split per evaluation
    eval_batch_size: int | None = None  # sequences per eval batch; None = batch_size
    # train_loss at an evaluation: "eval" = mean over eval_iters fixed train batches in eval mode, as
    # nanoGPT; "steps" = mean loss of the training steps since the last evaluation (free: searches use it)
    train_loss_from: Literal["eval", "steps"] = "eval"
    # stop (with a final evaluation) after this long in wall time: 900, 900s, 15m, 1h (as tune.search's --time-budget)
    time_budget_s: float | None = None
    seed: int = 1337  # model initialisation, batches and dropout: the same seed trains the same model (nanoGPT's 1337)
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"  # auto = CUDA when available; mps = Apple GPUs
    # adamw: AdamW on every parameter; muon: Muon (nanogpt.muon: torch.optim.Muon's rule, batched) on the 2-D weights
    # inside the blocks (same lr, adjust_lr_fn="match_rms_adamw"), AdamW on embeddings, lm_head (tied or not), norms, biases
    optimizer: Literal["adamw", "muon"] = "adamw"
    # cosine: warmup, then cosine decay to min_lr; wsd (warmup-stable-decay): warmup, the peak learning rate,
    # then a linear decay to min_lr over the last cooldown_frac of the planned steps
    schedule: Literal["cosine", "wsd"] = "cosine"
    cooldown_frac: float = 0.2  # wsd: the decay's share of the run (and a cooldown branch's length, as a share of the steps so far)
    # wsd: spends (budget_unit) where the run branches a decayed copy and reports that copy's val_loss (cooldown
    # rungs); the run then stays at the peak, ends with a branch too, and its budget pays for the branches
    cooldown_rungs: list[float] | None = None
    # wall seconds the run may take from its start (or resume), evaluations and checkpoints included: the budget
    # is its first plan, then its length in steps comes from its own speed, re-planned at each evaluation while
    # the peak learning rate holds (wsd; cosine: once, in its warmup), so that it ends decayed by then; it also
    # stops there (tune.search --final-budget auto). A seconds budget (budget_unit s) counts training time alone
    fill_time_s: float | None = None
    # torch.compile the training forward and backward: on, off, or auto = only where the steps left repay the
    # compile time (nanogpt.compile); compile time is counted apart from training time, and in a seconds budget
    compile: Literal["auto", "on", "off"] = "off"

    @classmethod
    def for_budget(cls, unit: str, budget: float, eval_every: float, **fields) -> TrainConfig:
        """A config whose budget is `budget` in `unit`, evaluated each `eval_every` of it: for steps, max_steps and
        eval_interval (whole steps); `fields`: the rest of its fields."""
        if unit == "steps":
            return cls(max_steps=int(budget), eval_interval=int(eval_every), **fields)
        return cls(budget_unit=unit, budget=budget, eval_every=eval_every, **fields)

    def __post_init__(self) -> None:
        positive = ["max_steps", "batch_size", "eval_interval", "eval_iters"]
        for name in positive:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"TrainConfig.{name} must be a positive integer, got {v!r}")
        if self.eval_batch_size is not None and self.eval_batch_size <= 0:
            raise ValueError(f"eval_batch_size must be positive, got {self.eval_batch_size}")
        if not (self.learning_rate > 0 and math.isfinite(self.learning_rate)):
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if not 0 <= self.end_lr <= self.learning_rate:
            raise ValueError(f"min_lr must be in [0, learning_rate={self.learning_rate}], got {self.end_lr}")
        if self.budget_unit not in UNITS:
            raise ValueError(f"budget_unit must be steps, tokens, flops or s, got {self.budget_unit!r}")
        if self.budget_unit == "steps":
            if self.budget is not None or self.eval_every is not None:
                raise ValueError("a budget in steps is max_steps and eval_interval: leave budget and eval_every unset")
        else:
            if self.budget is None or not (self.budget > 0 and math.isfinite(self.budget)):
                raise ValueError(f"a budget in {self.budget_unit} needs budget > 0, got {self.budget}")
            if not self.eval_every_in_unit > 0:
                raise ValueError(f"eval_every must be > 0, got {self.eval_every_in_unit}")
        warmup, decay = self.fixed_warmup, self.fixed_decay_steps
        if warmup is not None and warmup < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup}")
        if decay is not None and warmup is not None and decay < warmup:
            raise ValueError(f"lr_decay_steps ({decay}) must be >= warmup_steps ({warmup})")
        if self.weight_decay < 0 or self.grad_clip < 0:
            raise ValueError("weight_decay and grad_clip must be >= 0")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise ValueError(f"beta1 and beta2 must be in [0, 1), got {self.beta1}, {self.beta2}")
        if self.time_budget_s is not None and self.time_budget_s <= 0:
            raise ValueError(f"time_budget_s must be > 0, got {self.time_budget_s}")
        if self.fill_time_s is not None:
            if not (self.fill_time_s > 0 and math.isfinite(self.fill_time_s)):
                raise ValueError(f"fill_time_s must be > 0, got {self.fill_time_s}")
            if self.budget_unit == "s" or self.cooldown_rungs is not None:
                raise ValueError("fill_time_s plans the run's length itself: not with a seconds budget or cooldown "
                                 "rungs")
        if self.train_loss_from not in ("eval", "steps"):
            raise ValueError(f"train_loss_from must be 'eval' or 'steps', got {self.train_loss_from!r}")
        if self.device not in ("auto", "cpu", "cuda", "mps"):
            raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'mps', got {self.device!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**64:
            raise ValueError(f"seed must be an integer from 0 to 2**64 - 1 (torch's range), got {self.seed!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if not 0 < self.cooldown_frac < 1:
            raise ValueError(f"cooldown_frac must be in (0, 1), got {self.cooldown_frac}")
        if self.cooldown_rungs is not None:
            if self.schedule != "wsd":
                raise ValueError("cooldown_rungs need the schedule wsd (a cosine run has no stable phase to branch from)")
            rungs = self.rung_spends
            if any(not (r > 0 and math.isfinite(r)) for r in rungs):
                raise ValueError(f"cooldown_rungs must be spends > 0, got {rungs}")
        if self.compile not in COMPILE_MODES:
            raise ValueError(f"compile must be one of {', '.join(COMPILE_MODES)}, got {self.compile!r}")

    @property
    def end_lr(self) -> float:
        """Where the decay ends: min_lr, else learning_rate / 10."""
        return self.learning_rate / 10 if self.min_lr is None else self.min_lr

    @property
    def budget_in_unit(self) -> float:
        """The budget in budget_unit: max_steps for steps."""
        return float(self.max_steps if self.budget_unit == "steps" else self.budget)

    @property
    def eval_every_in_unit(self) -> float:
        """The spend between evaluations in budget_unit: eval_interval for steps, else eval_every, else a tenth of
        the budget."""
        if self.budget_unit == "steps":
            return float(self.eval_interval)
        return default_eval_every(self.budget, self.budget_unit) if self.eval_every is None else self.eval_every

    @property
    def fixed_warmup(self) -> int | None:
        """The warmup known before the run plans: warmup_steps, else for a steps budget min(100, max_steps // 10);
        None: a tenth of the planned steps (nanogpt.plan.warmup_steps)."""
        if self.warmup_steps is None and self.budget_unit == "steps":
            return min(100, self.max_steps // 10)
        return self.warmup_steps

    @property
    def fixed_decay_steps(self) -> int | None:
        """The step where the decay ends, known before the run plans: lr_decay_steps, else for a steps budget
        max_steps; None: the planned steps."""
        if self.lr_decay_steps is None and self.budget_unit == "steps":
            return self.max_steps
        return self.lr_decay_steps

    @property
    def rung_spends(self) -> list[float] | None:
        """cooldown_rungs in order, as floats."""
        return None if self.cooldown_rungs is None else sorted(float(r) for r in self.cooldown_rungs)

    def to_dict(self) -> dict:
        """The fields, with what the config derives in place of None (a checkpoint's config.json "train")."""
        eval_every = None if self.budget_unit == "steps" else self.eval_every_in_unit
        return {**asdict(self), "min_lr": self.end_lr, "warmup_steps": self.fixed_warmup,
                "lr_decay_steps": self.fixed_decay_steps, "eval_every": eval_every,
                "cooldown_rungs": self.rung_spends}


ADAM_EPS = 1e-8  # torch's default, as nanoGPT's


def configure_optimizer(model: GPT, cfg: TrainConfig, device: torch.device) -> list[torch.optim.Optimizer]:
    """The optimizers of a run: [AdamW] or [AdamW, Muon], stepped together with one learning rate schedule.

    AdamW has nanoGPT's groups: weight decay on tensors of 2+ dims (matmuls, embeddings), not on biases or
    norms. With cfg.optimizer "muon", the 2-D weights inside the blocks go to Muon instead; Muon's
    "match_rms_adamw" scales its update to AdamW's RMS, so both share the learning rate schedule.

    muP (model.config.parametrization "mup", width_mult = n_embd / mup_base_width): a group's "lr_scale" multiplies
    the scheduled learning rate (Trainer.train_step). With AdamW the blocks' matrices take lr / width_mult, and every
    group eps / width_mult, as EleutherAI's nanoGPT-mup. With Muon they take lr / sqrt(width_mult): muP asks for an
    update of spectral norm ~ sqrt(fan_out / fan_in), width-free for these matrices (Yang, Simon & Bernstein 2023,
    "A Spectral Condition for Feature Learning"); an orthogonalized update has spectral norm 1, and match_rms_adamw
    multiplies it by 0.2 sqrt(max(fan_out, fan_in)), which grows as sqrt(width). Muon's own "original" rule
    would need no correction, but would no longer share AdamW's learning rate."""
    params = [p for p in model.parameters() if p.requires_grad]
    muon = muon_matrices(model) if cfg.optimizer == "muon" else []
    in_muon = {id(p) for p in muon}
    rest = [p for p in params if id(p) not in in_muon]
    decay = [p for p in rest if p.dim() >= 2]
    no_decay = [p for p in rest if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    mup, width_mult = model.config.parametrization == "mup", model.config.width_mult
    if mup:
        if not muon:  # AdamW takes the hidden matrices: a group of their own
            hidden = {id(p) for p in muon_matrices(model)}
            groups = [{"params": [p for p in decay if id(p) not in hidden], "weight_decay": cfg.weight_decay},
                      {"params": [p for p in decay if id(p) in hidden], "weight_decay": cfg.weight_decay,
                       "lr_scale": 1.0 / width_mult}, groups[1]]
        groups = [{"lr_scale": 1.0, "eps": ADAM_EPS / width_mult, **g} for g in groups]
    # fused AdamW: one kernel for all parameters; measured fastest on CPU here too (benchmarks/RESULTS.md)
    optimizers: list[torch.optim.Optimizer] = [
        torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=(cfg.beta1, cfg.beta2), eps=ADAM_EPS, fused=True)]
    if muon:
        muon_group = {"params": muon, **({"lr_scale": 1.0 / math.sqrt(width_mult)} if mup else {})}
        optimizers.append(Muon([muon_group], lr=cfg.learning_rate, weight_decay=cfg.weight_decay,
                               adjust_lr_fn="match_rms_adamw"))
    return optimizers


Callback = Callable[[dict, "Trainer"], None]


@torch.no_grad()
def eval_losses(model: GPT, data: TokenData, cfg: TrainConfig, block_size: int, device: torch.device,
                autocast: Callable, splits: tuple[str, ...] = ("train", "val")) -> dict[str, float]:
    """Mean loss of `model` over cfg.eval_iters batches per split of `data`. The eval batches are the same at every
    evaluation (fixed generator), so curves are not jittered by sampling noise."""
    model.eval()
    bs = cfg.eval_batch_size or cfg.batch_size
    out = {}
    for split in splits:
        ids = {"train": data.train, "val": data.val}[split]
        gen = torch.Generator().manual_seed({"train": 10_000, "val": 10_001}[split])
        losses = torch.zeros(cfg.eval_iters)
        for k in range(cfg.eval_iters):
            x, y = get_batch(ids, block_size, bs, gen)
            with autocast():
                _, loss = model(x.to(device), y.to(device))
            losses[k] = loss.item()
        out[split] = losses.mean().item()
    model.train()
    return out


def autocast_for(device: torch.device) -> Callable:
    """The forward's autocast context: bf16 on CUDA with bf16, else none."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return lambda: torch.autocast("cuda", dtype=torch.bfloat16)
    # fp32 on CPU: a bf16 matmul pays only on a CPU with bf16 hardware, and there not at every size; without it, it
    # runs many times slower than fp32 (benchmarks/RESULTS.md, "Fast trials")
    return contextlib.nullcontext


class Status(str, Enum):
    """Where a training run stands; reported (as its value) with every evaluation."""

    RUNNING = "running"
    FINISHED = "finished"  # spent its whole budget
    DIVERGED = "diverged"  # the loss became NaN or infinite
    OUT_OF_TIME = "time_budget"  # TrainConfig.time_budget_s ran out first


@dataclass
class LoopState:
    """The training loop's counters: what a checkpoint keeps of the run besides its weights, optimizer state, plan
    and random streams. state_dict: their asdict, the status as its value, under the checkpoint's keys."""

    step: int = 0
    tokens_seen: int = 0
    train_time: float = 0.0  # seconds spent in training steps
    elapsed: float = 0.0  # seconds in run(), evaluations included; carried across resumes
    status: Status = Status.RUNNING
    loss_sum: float = 0.0  # training-step losses since the last evaluation (their sum and count)
    loss_count: int = 0
    # cooldown branches (nanogpt.cooldown): their steps and seconds, and how many rungs have branched
    branch_steps: int = 0
    branch_time: float = 0.0
    eval_time: float = 0.0  # seconds in the run's own evaluations (a branch's evaluation is in branch_time)
    rungs_done: int = 0

    def state_dict(self) -> dict:
        return {**asdict(self), "status": self.status.value}

    @classmethod
    def from_state_dict(cls, sd: dict) -> LoopState:
        """A checkpoint's counters; those an older checkpoint lacks (after `elapsed`) at their start values."""
        required = ("step", "tokens_seen", "train_time", "elapsed", "status")
        state = cls(**{f.name: sd[f.name] for f in dataclasses.fields(cls) if f.name in required or f.name in sd})
        state.status = Status(state.status)
        return state


# a checkpoint's state (Trainer.state_dict): its keys, in their order
STATE_KEYS = ("model", "optimizer", "muon", "step", "tokens_seen", "train_time", "compile_s", "elapsed", "status",
              "loss_sum", "loss_count", "planned_steps", "decay_anchor", "branch_steps", "branch_time", "eval_time",
              "rungs_done", "rng_torch", "rng_batch", "rng_cuda")


class _Forward:
    """A Trainer attribute that is its part's (`part`: the name of the Trainer's attribute holding it), read and
    set under the name other modules use."""

    def __init__(self, part: str, name: str):
        self.part, self.name = part, name

    def __get__(self, obj, objtype=None):
        return self if obj is None else getattr(getattr(obj, self.part), self.name)

    def __set__(self, obj, value) -> None:
        setattr(getattr(obj, self.part), self.name, value)


class Trainer:
    """Owns a model, its optimizer and the training state; `run` trains until the budget is spent. Its parts' fields
    other modules read and set are its attributes too (below the class): its plan's (self.plan, a RunPlan) and its
    loop counters' (self.loop, a LoopState)."""

    def __init__(self, model_cfg: GPTConfig, cfg: TrainConfig, data: TokenData, tokenizer=None):
        if tokenizer is not None and tokenizer.vocab_size != model_cfg.vocab_size:
            raise ValueError(f"model vocab_size {model_cfg.vocab_size} differs from the tokenizer's "
                             f"{tokenizer.vocab_size}")
        data.check_block_size(model_cfg.block_size)
        self.model_cfg, self.cfg, self.data, self.tokenizer = model_cfg, cfg, data, tokenizer
        self.device = resolve_device(cfg.device)
        torch.manual_seed(cfg.seed)  # model init
        self.model = GPT(model_cfg).to(self.device)
        self.flops_per_token = self.model.flops_per_token()
        self.optimizer_flops = optimizer_flops(self.model, cfg.optimizer)  # a step's, in a FLOPs budget
        self.optimizers = configure_optimizer(self.model, cfg, self.device)
        self.compiler = StepCompiler(self.model, cfg.compile, shape_key(model_cfg, cfg.batch_size, self.device))
        self.batch_gen = torch.Generator().manual_seed(cfg.seed)
        self.loop = LoopState()
        self.history: list[dict] = []
        self.decayed: dict | None = None  # the weights of this evaluation's branch, saved beside the stable ones
        # the budget in its unit, what one step spends, the run's length in steps and its schedule
        self.plan = RunPlan.from_config(cfg, cfg.batch_size * model_cfg.block_size, self.flops_per_token,
                                        self.optimizer_flops)
        self.cfg = self.plan.cfg  # fill_time_s: with the warmup of its first plan
        self.autocast = autocast_for(self.device)

    @property
    def spend(self) -> float:
        """What the run's training steps have spent, in the budget's unit (cooldown branches not counted)."""
        return self.plan.spend(self.step, self.tokens_seen, self.train_time + self.compiler.compile_s)

    @property
    def branch_spend(self) -> float:
        """What the run's cooldown branches have spent, in the budget's unit."""
        return self.plan.branch_spend(self.branch_steps, self.branch_time)

    def _budget_left(self) -> bool:
        return self.plan.budget_left(self.step, self.spend, self.train_time, self.branch_time, self.compiler.compile_s)

    def _maybe_compile(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Compile before this step where due (StepCompiler.maybe_compile), with the steps and seconds left."""
        self.compiler.maybe_compile(x, y, self.step, self.train_time, (self.planned_steps or self.step) - self.step,
                                    self.plan.seconds_left(self.spend, self.elapsed))

    # --- evaluation -------------------------------------------------------------------

    def evaluate(self, splits: tuple[str, ...] = ("train", "val"), model: GPT | None = None) -> dict[str, float]:
        """Mean loss of `model` (default: the run's) over eval_iters batches per split (eval_losses)."""
        return eval_losses(model or self.model, self.data, self.cfg, self.model_cfg.block_size, self.device,
                           self.autocast, splits)

    def _metrics(self, train_loss: float, val_loss: float) -> dict:
        return {
            "step": self.step,
            "train_loss": train_loss,
            "val_loss": val_loss,
            "val_bpc": val_loss / math.log(2) / self.data.val_chars_per_token,
            "tokens_seen": self.tokens_seen,
            "tokens_per_s": self.tokens_seen / self.train_time if self.train_time > 0 else 0.0,
            "n_params": self.model.get_num_params(),
            "elapsed_s": self.elapsed,
            "compile_s": self.compiler.compile_s,
            # where elapsed_s went (benchmarks/search_overhead.py); the rest is the callbacks' (checkpoints)
            "train_s": self.train_time,
            "eval_s": self.eval_time,
            "branch_s": self.branch_time,
            "compiled": self.compiler.compiled,
            "spend": self.spend,
            "budget": self.budget,  # in the budget's unit: what the run plans to spend (fill_time_s moves it)
            "branch_spend": self.branch_spend,
            "total_spend": self.spend + self.branch_spend,
            "lr": self.plan.lr(max(0, self.step - 1)),
            "status": self.status.value,
        }

    # --- the loop ---------------------------------------------------------------------

    def train_step(self, model: GPT, optimizers: list[torch.optim.Optimizer], lr: float,
                   batch_gen: torch.Generator) -> float:
        """One optimizer step of `model` at learning rate `lr` on the next batch of `batch_gen`; its loss."""
        cfg, B, T = self.cfg, self.cfg.batch_size, self.model_cfg.block_size
        for opt in optimizers:
            for group in opt.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)  # muP's per-group scale (configure_optimizer)
        x, y = get_batch(self.data.train, T, B, batch_gen)
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        own = model is self.model  # the run's model may be compiled; a cooldown branch's copy trains eager
        if own and not self.compiler.decided:
            self._maybe_compile(x, y)
        elif own and self.compiler.compiled and self.compiler.mode == "auto" and not self.compiler.speed_checked:
            self.compiler.check_speed(self.step, self.train_time)
        with self.autocast():
            _, loss = (self.compiler.forward if own else model)(x, y)
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            # foreach: a few multi-tensor kernels, not two per parameter (CPU's default); measured in RESULTS.md
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip, foreach=True)
        for opt in optimizers:
            opt.step()
        return loss.item()  # also synchronises CUDA, so the caller's timing is honest

    def run(self, callback: Callback | None = None) -> list[dict]:
        """Train until the budget is spent (or the wall-time limit, or divergence). After every evaluation,
        callback(metrics, trainer) is called; it may save a checkpoint with trainer.save(dir).

        An evaluation falls on the first step whose spend reaches each multiple of eval_every, and on the
        last step: trials of a search are compared at equal spend."""
        cfg, B, T = self.cfg, self.cfg.batch_size, self.model_cfg.block_size
        model, optimizers = self.model, self.optimizers
        model.train()
        t_start = time.perf_counter() - self.elapsed
        next_eval = (math.floor(self.spend / self.eval_every + 1e-9) + 1) * self.eval_every
        compile_s_before = self.compiler.compile_s
        fill = None if cfg.fill_time_s is None else FillClock.start(self.plan, time.perf_counter(), self.step,
                                                                     self.train_time)
        while self.status is Status.RUNNING and self._budget_left():
            t0 = time.perf_counter()
            loss_value = self.train_step(model, optimizers, self.plan.lr(self.step), self.batch_gen)
            t0 += self.compiler.compile_s - compile_s_before  # a compile inside the step counts in compile_s alone
            compile_s_before = self.compiler.compile_s
            self.step += 1
            self.tokens_seen += B * T
            self.train_time += time.perf_counter() - t0
            self.elapsed = time.perf_counter() - t_start
            self.loss_sum += loss_value
            self.loss_count += 1
            if cfg.budget_unit == "s" and self.step == PROBE_STEPS:
                self.plan.plan_by_speed(self.step, self.spend, self.train_time)
            if fill is not None:
                fill.after_step(self.step, self.train_time, time.perf_counter())

            if not math.isfinite(loss_value):
                self.status = Status.DIVERGED
                log.warning("loss became %s at step %d: stopping this run as diverged", loss_value, self.step)
                metrics = self._metrics(loss_value, float("inf"))
            else:
                if not self._budget_left():
                    self.status = Status.FINISHED
                elif cfg.time_budget_s is not None and self.elapsed >= cfg.time_budget_s:
                    self.status = Status.OUT_OF_TIME
                elif fill is not None and fill.out_of_time(time.perf_counter()):
                    self.status = Status.OUT_OF_TIME
                if self.spend < next_eval - 1e-9 * self.eval_every and self.status is Status.RUNNING:
                    continue
                next_eval = (math.floor(self.spend / self.eval_every + 1e-9) + 1) * self.eval_every
                if cfg.budget_unit == "s":
                    self.plan.plan_by_speed(self.step, self.spend, self.train_time)
                if fill is not None:
                    fill.at_evaluation(self.step, self.train_time, time.perf_counter(), self.status is Status.RUNNING)
                metrics = self._evaluation(t_start)
            self.history.append(metrics)
            if callback is not None:
                callback(metrics, self)
        self.compiler.record_run_speed(self.step, self.train_time)
        return self.history

    def _evaluation(self, t_start: float) -> dict:
        """An evaluation inside run(): the losses (at a cooldown rung, the decayed copy's val loss) and the
        metrics reported for them; a non-finite val loss ends the run as diverged."""
        t_eval = time.perf_counter()
        if self.cfg.train_loss_from == "steps":
            losses = {**self.evaluate(("val",)), "train": self.loss_sum / self.loss_count}
        else:
            losses = self.evaluate()
        self.eval_time += time.perf_counter() - t_eval
        stable_val, branch = losses["val"], 0
        if math.isfinite(stable_val):  # a cooldown branch at a rung, and at the run's end (RunPlan.branch_due)
            branch, self.rungs_done = self.plan.branch_due(self.step, self.spend, self.rungs_done,
                                                           self.status is Status.FINISHED, self.branch_steps)
        self.decayed = None
        if branch:  # a cooldown rung: the loss reported is the decayed copy's
            losses["val"] = self._branch(branch)
        self.loss_sum, self.loss_count = 0.0, 0
        self.elapsed = time.perf_counter() - t_start
        metrics = {**self._metrics(losses["train"], losses["val"]), "stable_val_loss": stable_val,
                   "cooldown_steps": branch}
        if not math.isfinite(losses["val"]):
            self.status = Status.DIVERGED
            metrics["status"] = self.status.value
            metrics["val_loss"] = metrics["val_bpc"] = float("inf")
        return metrics

    def _branch(self, n_steps: int) -> float:
        t0 = time.perf_counter()
        peak = self.plan.lr(max(0, self.step - 1))  # where the run's own schedule stands
        val, self.decayed = cooldown_branch(
            self.model, self.optimizers, self.batch_gen, n_steps, peak, self.cfg.end_lr,
            lambda model: configure_optimizer(model, self.cfg, self.device), self.train_step,
            lambda model: self.evaluate(("val",), model=model)["val"], self.device.type == "cuda")
        self.branch_steps += n_steps
        self.branch_time += time.perf_counter() - t0
        return val

    # --- checkpoints ------------------------------------------------------------------

    def state_dict(self) -> dict:
        sd = {
            "model": self.model.state_dict(),
            **optimizers_state(self.optimizers),  # optimizer (AdamW), muon
            **self.loop.state_dict(),
            "compile_s": self.compiler.compile_s,
            **self.plan.state_dict(),  # planned_steps, decay_anchor
            **rng_state(self.batch_gen, self.device.type == "cuda"),
        }
        return {k: sd[k] for k in STATE_KEYS}

    def load_state_dict(self, sd: dict) -> None:
        self.model.load_state_dict(sd["model"])
        load_optimizers_state(self.optimizers, sd, self.cfg.optimizer)
        self.loop = LoopState.from_state_dict(sd)
        self.compiler.compile_s = sd.get("compile_s", 0.0)
        self.plan.load_state_dict(sd)  # planned by speed: the saved plan
        load_rng_state(sd, self.batch_gen, self.device.type == "cuda")

    def save(self, directory: str | Path) -> Path:
        """Write model.pt (weights, optimizer, step, RNG), config.json and tokenizer.json."""
        meta = run_meta(self.model_cfg, self.cfg, self.data, self.step, self.status.value, self.plan.warmup,
                        self.decay_anchor, self.history)
        return write_checkpoint(directory, self.state_dict(), meta, self.decayed, self.tokenizer)

    def restore(self, directory: str | Path, checkpoint: tuple[dict, dict] | None = None) -> None:
        """Continue from a checkpoint written by save() for the same model and data.
        `checkpoint`: what read_checkpoint(directory) returned, when the caller has read it already."""
        meta, sd = checkpoint or read_checkpoint(directory)
        if GPTConfig(**meta["model"]) != self.model_cfg:  # an older config.json: the options it lacks at their defaults
            raise CheckpointError(f"checkpoint {directory} holds a different model config: {meta['model']}")
        self.load_state_dict(sd)
        self.history = list(meta.get("history", []))

    def continue_from(self, directory: str | Path) -> None:
        """Train on from another run's checkpoint of this model (a search trial's stable weights): its weights,
        optimizer, spend and random streams, under this trainer's configuration and larger budget."""
        self.restore(directory)
        self.plan.restart()  # the other run's plan is not this one's
        if not self._budget_left():
            raise UserError(f"{directory} has spent {self.spend:g} {self.cfg.budget_unit} already: nothing is left "
                            f"of a budget of {self.budget:g} to continue it")
        self.status = Status.RUNNING


for _name in ("budget", "eval_every", "step_spend", "planned_steps", "total_steps", "rungs", "decay_anchor"):
    setattr(Trainer, _name, _Forward("plan", _name))
for _name in (f.name for f in dataclasses.fields(LoopState)):
    setattr(Trainer, _name, _Forward("loop", _name))
del _name


def plot_loss_curve(history: list[dict], path: str | Path, title: str = "") -> Path:
    """Train and val loss against step, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [m["step"] for m in history]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, [m["train_loss"] for m in history], marker="o", label="train")
    ax.plot(steps, [m["val_loss"] for m in history], marker="o", label="val")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(title or "loss curve")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


# --- python -m nanogpt.train ------------------------------------------------------------

# the notebook's single run: nanoGPT's CPU-sized model (GPTConfig's own defaults are GPT-2 124M)
CLI_MODEL_DEFAULTS = {"n_layer": 4, "n_head": 4, "n_embd": 128, "block_size": 64, "dropout": 0.0}


def build_parser():
    import argparse

    from nanogpt.cli import add_dataclass_args
    from nanogpt.dataset import DATASETS
    from nanogpt.tokenizer import DEFAULT_BPE_VOCAB, DEFAULT_TOKENIZER, TOKENIZERS

    p = argparse.ArgumentParser(prog="python -m nanogpt.train", description="Train one GPT configuration.")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--dataset", help=f"built-in data set: {', '.join(DATASETS)} (default: mixed)")
    src.add_argument("--data-file", help="any UTF-8 text file (90%% train, last 10%% validation)")
    p.add_argument("--tokenizer", choices=list(TOKENIZERS), default=DEFAULT_TOKENIZER,
                   help=f"how text becomes tokens (default: {DEFAULT_TOKENIZER})")
    p.add_argument("--bpe-vocab-size", type=int, default=DEFAULT_BPE_VOCAB,
                   help=f"tokens of a BPE tokenizer (default: {DEFAULT_BPE_VOCAB})")
    p.add_argument("--out", default="results/train", help="checkpoint directory (default: results/train)")
    p.add_argument("--resume", action="store_true", help="continue the run saved in --out, with its own configuration")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--prompt", action="append",
                   help="prompt for the before/after samples, repeatable (default: the data set's own prompts)")
    p.add_argument("--max-new-tokens", "--sample-tokens", dest="sample_tokens", type=int, default=120, metavar="N",
                   help="tokens a before/after sample generates, as nanogpt.sample's (default: 120)")
    p.add_argument("--temperature", type=float, default=0.8, help="sampling temperature (default: 0.8)")
    add_dataclass_args(p, GPTConfig, CLI_MODEL_DEFAULTS, skip={"vocab_size"})
    # --lr: tune.search's spelling too; --compile: auto from the command line (TrainConfig's own default is off);
    # cooldown_rungs: the search's (it knows the rungs)
    # --time-budget and --fill-time take durations (15m), as tune.search's --time-budget; their older spellings in
    # seconds stay; --eval-every takes an amount with its unit (3e10flops), as tune.search's
    add_dataclass_args(p, TrainConfig, {"compile": "auto"}, skip={"cooldown_rungs"},
                       aliases={"learning_rate": ["--lr"], "time_budget_s": ["--time-budget-s"],
                                "fill_time_s": ["--fill-time-s"]},
                       names={"time_budget_s": "--time-budget", "fill_time_s": "--fill-time"},
                       types={"time_budget_s": parse_duration, "fill_time_s": parse_duration, "eval_every": str},
                       metavars={"time_budget_s": "DURATION", "fill_time_s": "DURATION", "eval_every": "AMOUNT"})
    return p


def _eval_every_from_args(args) -> None:
    """--eval-every AMOUNT in the budget's unit (a bare number is in it): for a steps budget, eval_interval."""
    if args.eval_every is None:
        return
    amount, unit = parse_amount(args.eval_every, "--eval-every", args.budget_unit, what="the budget")
    if unit == "steps":
        args.eval_interval, args.eval_every = int(amount), None
    else:
        args.eval_every = amount


def _trainer_from_args(args, out: Path) -> Trainer:
    """A new run from the flags, or (--resume) the run saved in `out` with its own configuration and data."""
    from nanogpt.cli import dataclass_from_args
    from nanogpt.dataset import DATASETS
    from nanogpt.token_cache import prepare

    has_ckpt = (out / MODEL_FILE).exists()
    if has_ckpt and not args.resume:
        raise UserError(f"{out} already holds a checkpoint: add --resume to continue it, or choose another --out")
    if args.resume and not has_ckpt:
        raise UserError(f"nothing to resume: {out} holds no checkpoint")
    if not args.resume:
        _eval_every_from_args(args)
        data, tokenizer = prepare(args.dataset, args.data_file, args.tokenizer, args.bpe_vocab_size)
        return Trainer(dataclass_from_args(GPTConfig, args, vocab_size=tokenizer.vocab_size),
                       dataclass_from_args(TrainConfig, args), data, tokenizer)
    checkpoint = read_checkpoint(out)
    meta = checkpoint[0]
    if args.dataset is None and args.data_file is None and meta["dataset"] in DATASETS:
        args.dataset = meta["dataset"]  # a resumed run continues on its own data, not on the default
    tokenizer = read_checkpoint_tokenizer(out)
    data, _ = prepare(args.dataset, args.data_file, tokenizer)  # encoded with the run's own tokenizer
    if data.dataset != meta["dataset"]:
        raise UserError(f"{out} was trained on {meta['dataset']}, not {data.dataset}: resume with the same data")
    trainer = Trainer(GPTConfig(**meta["model"]), TrainConfig(**meta["train"]), data, tokenizer)
    trainer.restore(out, checkpoint)
    print(f"resuming {out} at step {meta['step']} with its saved configuration (model and training flags ignored)")
    return trainer


def main(argv: list[str] | None = None) -> int:
    from nanogpt.dataset import default_prompts
    from nanogpt.sample import generate_text

    args = build_parser().parse_args(argv)
    if args.threads is not None:
        if args.threads < 1:
            raise UserError(f"--threads must be at least 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    trainer = _trainer_from_args(args, out)
    data, tokenizer, cfg = trainer.data, trainer.tokenizer, trainer.cfg
    prompts = args.prompt or default_prompts(data.dataset, data.head)
    print(f"data: {data.describe()}; {tokenizer.kind} tokenizer with {tokenizer.vocab_size} tokens")
    print(f"model: {trainer.model.get_num_params():,} parameters ({trainer.model_cfg.architecture()}) on {trainer.device}, "
          f"{torch.get_num_threads()} threads")

    def show_samples(when: str) -> None:
        print(f"\n--- samples {when} (temperature {args.temperature}) ---")
        for prompt in prompts:
            print(repr(generate_text(trainer.model, tokenizer, prompt, args.sample_tokens, args.temperature, seed=cfg.seed)))

    def report(m: dict, t: Trainer) -> None:
        print(f"step {m['step']:>6} | train {m['train_loss']:.4f} | val {m['val_loss']:.4f} | "
              f"{m['val_bpc']:.3f} bpc | {m['tokens_per_s'] / 1e3:.1f}k tok/s | {m['elapsed_s']:.1f} s | {m['status']}")
        t.save(out)

    show_samples("before training")
    print()
    history = trainer.run(report)
    show_samples("after training")
    if history:
        png = plot_loss_curve(history, out / "loss.png", f"{data.dataset}: {trainer.model.get_num_params():,} params")
        print(f"\ncheckpoint: {out}   loss curve: {png}")
    if trainer.status is Status.DIVERGED:
        print("the run diverged (loss became NaN or infinite): lower --learning-rate")
        return 1
    return 0


if __name__ == "__main__":
    from nanogpt.cli import run_main

    run_main(main)
