"""A training run's plan: its budget in its unit, what a step spends, how many steps it trains (and, with cooldown
rungs, how many training and branches take together), the learning rate schedule over them, and the re-planning of
a seconds budget (by the steps' speed) and of fill_time_s (to end decayed by a wall-clock time).

Pure arithmetic on a TrainConfig and the model's per-step spend: no torch tensors, no model. nanogpt.train's
Trainer holds one RunPlan and asks it; tests check it alone.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from nanogpt.cooldown import branch_steps, decay_lr, plan_training_steps, rung_steps
from nanogpt.errors import UserError

PROBE_STEPS = 10  # a seconds budget sizes its schedule from the speed of the steps so far, first after these
FILL_MARGIN = 0.04  # fill_time_s: the share of its seconds a plan leaves for the speed to vary


def step_spend(unit: str, tokens_per_step: int, flops_per_token: float, optimizer_flops: float = 0.0) -> float | None:
    """What one training step spends in a budget's unit (None for seconds: that is measured, not known). FLOPs count
    the forward and backward (flops_per_token a token) and the optimizer's step (`optimizer_flops`)."""
    return {"steps": 1.0, "tokens": float(tokens_per_step),
            "flops": float(tokens_per_step * flops_per_token + optimizer_flops), "s": None}[unit]


def warmup_steps(cfg, planned_steps: int | None) -> int:
    """The run's warmup (cfg: a nanogpt.train.TrainConfig): cfg.fixed_warmup, else a tenth of the planned steps, at
    most 100."""
    return cfg.fixed_warmup if cfg.fixed_warmup is not None else min(100, (planned_steps or 0) // 10)


def wsd_decay_start(cfg, decay_steps: int, warmup: int) -> int:
    """wsd: the first step of the decay, which takes the last cooldown_frac of `decay_steps` (never the warmup)."""
    return max(warmup, decay_steps - round(cfg.cooldown_frac * decay_steps))


def lr_at(step: int, cfg, planned_steps: int | None = None,
          anchor: tuple[int, float] | None = None) -> float:
    """Learning rate for optimizer step `step` (0-based): linear warmup, then cosine to min_lr, or (wsd) the peak
    and a linear decay to min_lr over the last cooldown_frac of the steps (none with cooldown rungs: the decays
    are branches). `planned_steps`: the run's length in steps, where cfg leaves warmup or decay to it.
    `anchor` (step, lr): fill_time_s shortened the plan during the decay; from that step the lr falls linearly
    from lr (the step before's) to min_lr at the new last step, so the decay still ends by the deadline."""
    if anchor is not None and planned_steps is not None and step >= anchor[0]:
        return cfg.end_lr if step >= planned_steps else decay_lr(step - anchor[0], planned_steps - anchor[0],
                                                                  anchor[1], cfg.end_lr)
    warmup = warmup_steps(cfg, planned_steps)
    # fill_time_s: the plan moves, and the decay with it (a steps budget's lr_decay_steps is its first plan)
    decay = cfg.fixed_decay_steps if cfg.fixed_decay_steps is not None and cfg.fill_time_s is None else planned_steps
    if step < warmup:
        return cfg.learning_rate * (step + 1) / (warmup + 1)
    # cooldown rungs: the run holds the peak, its branches decay; length not known yet (seconds budget before
    # its speed probe): hold the peak
    if decay is None or cfg.cooldown_rungs is not None:
        return cfg.learning_rate
    if step >= decay:
        return cfg.end_lr
    if cfg.schedule == "wsd":
        start = wsd_decay_start(cfg, decay, warmup)
        return cfg.learning_rate if step < start else decay_lr(step - start, decay - start, cfg.learning_rate, cfg.end_lr)
    ratio = (step - warmup) / max(1, decay - warmup)
    coeff = 0.5 * (1.0 + math.cos(math.pi * ratio))  # 1 -> 0
    return cfg.end_lr + coeff * (cfg.learning_rate - cfg.end_lr)


@dataclass
class RunPlan:
    """The plan of one run (cfg: its nanogpt.train.TrainConfig, with fill_time_s's warmup fixed from the first
    plan). `planned_steps`: training steps (None: a seconds budget before its speed is known); `total_steps`:
    training and cooldown branches together; `rung_at`: the training steps whose evaluations branch;
    `config_plan`: the first plan, what a continued run plans from; `decay_anchor`: where fill_time_s's squeezed
    decay began (step, lr)."""

    cfg: object
    budget: float
    eval_every: float
    step_spend: float | None
    flops_per_token: float
    optimizer_flops: float
    planned_steps: int | None
    total_steps: int | None
    rungs: list[float]
    rung_at: list[int] = field(default_factory=list)
    config_plan: int | None = None
    decay_anchor: tuple[int, float] | None = None

    @classmethod
    def from_config(cls, cfg, tokens_per_step: int, flops_per_token: float, optimizer_flops: float = 0.0) -> RunPlan:
        """The first plan of a run of `cfg` whose step trains `tokens_per_step` tokens at `flops_per_token` (the
        model's) and whose optimizer step costs `optimizer_flops`. A budget under one step is a UserError."""
        unit = cfg.budget_unit
        budget, eval_every = cfg.budget_in_unit, float(cfg.eval_every_in_unit)
        spend = step_spend(unit, tokens_per_step, flops_per_token, optimizer_flops)
        planned = None if unit == "s" else int(budget // spend + 1e-9)
        total, rungs, at = planned, cfg.rung_spends or [], []
        if cfg.cooldown_rungs is not None and total is not None:
            at = rung_steps(rungs, spend, eval_every, total)
            planned = plan_training_steps(total, at, cfg.cooldown_frac)
        if cfg.fill_time_s is not None and cfg.fixed_warmup is None:
            # its plan moves; its warmup must not (a longer plan would take the run back into it)
            cfg = dataclasses.replace(cfg, warmup_steps=warmup_steps(cfg, planned))
        if planned == 0:
            raise UserError(f"a budget of {budget:g} {unit} is less than one training step of this model "
                            f"({spend:g} {unit}); raise the budget")
        return cls(cfg, budget, eval_every, spend, flops_per_token, optimizer_flops, planned, total, rungs, at,
                   config_plan=planned)

    @property
    def unit(self) -> str:
        return self.cfg.budget_unit

    def spend(self, step: int, tokens_seen: int, seconds: float) -> float:
        """What `step` training steps of `tokens_seen` tokens in `seconds` (training and compile) spent, in the
        budget's unit (cooldown branches not counted)."""
        return {"steps": step, "tokens": tokens_seen,
                "flops": tokens_seen * self.flops_per_token + step * self.optimizer_flops,
                "s": seconds}[self.unit]

    def branch_spend(self, steps: int, seconds: float) -> float:
        """What cooldown branches of `steps` steps in `seconds` spent, in the budget's unit."""
        return seconds if self.unit == "s" else steps * self.step_spend

    def budget_left(self, step: int, spend: float, train_s: float, branch_s: float, compile_s: float) -> bool:
        """Whether the run trains another step, after `step` steps that spent `spend`, with `train_s`, `branch_s`
        and `compile_s` seconds of training, branches and compiles (a seconds budget's)."""
        if self.planned_steps is not None and self.unit != "s":
            return step < self.planned_steps
        if self.cfg.cooldown_rungs is not None:  # leave the end branch its share
            return train_s * (1 + self.cfg.cooldown_frac) + branch_s + compile_s < self.budget
        return spend < self.budget

    def lr(self, step: int) -> float:
        """The learning rate of step `step` (0-based) under this plan."""
        return lr_at(step, self.cfg, self.planned_steps, self.decay_anchor)

    @property
    def warmup(self) -> int:
        return warmup_steps(self.cfg, self.planned_steps)

    def decaying(self, step: int) -> bool:
        """The schedule has left its peak (wsd) or its warmup (cosine) at `step`: fill_time_s's plan only
        shortens now."""
        warmup = self.warmup
        return step >= (warmup if self.cfg.schedule == "cosine" else
                        wsd_decay_start(self.cfg, self.planned_steps, warmup))

    def plan_by_speed(self, step: int, spend: float, train_s: float) -> None:
        """Seconds budget: the run's length in steps from the speed of its `step` steps so far (`train_s`)."""
        if step >= PROBE_STEPS:
            self.planned_steps = step + int((self.budget - spend) / (train_s / step))

    def plan_to_fill(self, step: int, seconds: float, steps: int, train_s: float, evals: int,
                     recent_step_s: float = 0.0) -> None:
        """fill_time_s, at step `step`: the run's length in steps so that it ends by then, from this run's own speed
        so far (`seconds` since it started, `steps` and `train_s` of training in them, `evals` evaluations; a step's
        seconds since the last check, `recent_step_s`, where slower than the average): what is not a training step
        (evaluations, checkpoints) is counted per evaluation, one more kept for the end. The plan moves both ways
        while the wsd peak holds (for cosine, during its warmup); once the decay has begun it only shortens, the
        rest of the decay squeezed into the steps that fit (decay_anchor), so that a run whose steps slowed still
        ends decayed by the deadline rather than being stopped in the middle of its decay."""
        cfg = self.cfg
        if steps < PROBE_STEPS:
            return
        decaying = self.decaying(step)
        step_s = max(train_s / steps, recent_step_s)
        per_eval = max(0.0, seconds - train_s) / max(evals, 1)
        evals_per_step = self.step_spend / self.eval_every
        deadline = cfg.fill_time_s * (1 - FILL_MARGIN)
        left = int((deadline - seconds - per_eval) / (step_s + per_eval * evals_per_step))
        planned = step + max(1, left)
        if decaying:
            if planned >= self.planned_steps:
                return
            # the lr of the step before, in the plan it was taken under, is where the squeezed decay starts
            self.decay_anchor = (step, self.lr(step - 1))
        elif cfg.schedule == "wsd":  # a decay that would have begun already begins now instead
            planned = max(planned, math.ceil(step / (1 - cfg.cooldown_frac)))
        self.planned_steps = planned
        self.budget = planned * self.step_spend

    def branch_due(self, step: int, spend: float, rungs_done: int, finished: bool,
                   branched_steps: int) -> tuple[int, int]:
        """(the steps of the cooldown branch an evaluation after `step` steps that spent `spend` takes, or 0; the
        rungs branched so far, `rungs_done` before it). Branches fall at each rung and at the run's end
        (`finished`); the end branch takes what the budget has left after `branched_steps`, which the plan made
        at least its share."""
        if self.cfg.cooldown_rungs is None:
            return 0, rungs_done
        tol = 1e-9 * self.eval_every
        at_rung = False
        while rungs_done < len(self.rungs) and spend >= self.rungs[rungs_done] - tol:
            rungs_done, at_rung = rungs_done + 1, True
        if finished and self.total_steps is not None:
            return self.total_steps - step - branched_steps, rungs_done
        return (branch_steps(step, self.cfg.cooldown_frac) if at_rung or finished else 0), rungs_done

    def state_dict(self) -> dict:
        """What a checkpoint keeps of the plan."""
        return {"planned_steps": self.planned_steps,
                "decay_anchor": list(self.decay_anchor) if self.decay_anchor else None}

    def load_state_dict(self, sd: dict) -> None:
        """Resume: a plan made by speed (a seconds budget, fill_time_s) is the checkpoint's; others are the config's."""
        if self.unit == "s" or self.cfg.fill_time_s is not None:
            self.planned_steps = sd.get("planned_steps") or self.planned_steps
            anchor = sd.get("decay_anchor")
            self.decay_anchor = (int(anchor[0]), float(anchor[1])) if anchor else None
            if self.cfg.fill_time_s is not None:
                self.budget = self.planned_steps * self.step_spend

    def seconds_left(self, spend: float, elapsed: float) -> float | None:
        """The seconds the steps left may take, where a time bounds them (a seconds budget, time_budget_s; None
        where none does), after `spend` and `elapsed` seconds of run()."""
        seconds_left = None
        if self.unit == "s":
            seconds_left = self.budget - spend
        if self.cfg.time_budget_s is not None:
            seconds_left = min(math.inf if seconds_left is None else seconds_left, self.cfg.time_budget_s - elapsed)
        return seconds_left

    def restart(self) -> None:
        """Continue another run's checkpoint: this config's first plan and budget, not the other run's."""
        self.planned_steps = self.config_plan
        self.decay_anchor = None
        self.budget = self.cfg.budget_in_unit


@dataclass
class FillClock:
    """fill_time_s's view of one Trainer.run() call (a continued or resumed run's earlier seconds are another
    budget's): when it began (`t0`, perf_counter seconds), its steps and training seconds then, its evaluations
    so far, and (`mark`) the step and training seconds of the last check, for the recent speed."""

    plan: RunPlan
    t0: float
    step0: int
    train0: float
    evals: int = 0
    mark: tuple[int, float] = (0, 0.0)

    @classmethod
    def start(cls, plan: RunPlan, now: float, step: int, train_s: float) -> FillClock:
        return cls(plan, now, step, train_s, 0, (step, train_s))

    def after_step(self, step: int, train_s: float, now: float) -> None:
        """After a training step: re-plan PROBE_STEPS steps into this run, then every PROBE_STEPS steps once the
        decay began (the decay's plan: checked often, at the recent speed where slower)."""
        steps = step - self.step0
        if steps % PROBE_STEPS == 0 and (steps == PROBE_STEPS or self.plan.decaying(step)):
            recent = (train_s - self.mark[1]) / max(1, step - self.mark[0])
            self.plan.plan_to_fill(step, now - self.t0, steps, train_s - self.train0, self.evals,
                                   recent if steps > PROBE_STEPS else 0.0)
            self.mark = (step, train_s)

    def at_evaluation(self, step: int, train_s: float, now: float, running: bool) -> None:
        """At an evaluation: re-plan while the run goes on; count the evaluation."""
        if running:
            self.plan.plan_to_fill(step, now - self.t0, step - self.step0, train_s - self.train0, self.evals)
        self.evals += 1

    def out_of_time(self, now: float) -> bool:
        return now - self.t0 >= self.plan.cfg.fill_time_s
