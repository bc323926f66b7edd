"""Cooldown branches of a warmup-stable-decay run: an estimate, at any point of the stable phase, of the
loss the run would reach if it decayed there.

A branch copies the model and the optimizer state, decays the learning rate linearly from the peak to
min_lr over `cooldown_frac` of the steps trained so far, evaluates the copy and throws it away. The run's
own weights, optimizer state and random streams (batches, dropout) are left as they were, so a run with
branches trains exactly as one without them and resumes exactly.

Budget: a run with cooldown rungs spends its budget on training and branches together. It branches at
each rung and once at its end; `plan_training_steps` picks the most training steps for which all of
that fits, and the end branch takes what is left, so training plus branches is the budget to a step.
"""

from __future__ import annotations

import copy
import math
from typing import Callable

import torch


def branch_steps(steps_so_far: int, cooldown_frac: float) -> int:
    """The length of a branch taken after `steps_so_far` training steps: at least one step."""
    return max(1, round(cooldown_frac * steps_so_far))


def decay_lr(i: int, n: int, peak: float, min_lr: float) -> float:
    """Learning rate of step i (0-based) of an n-step linear decay from `peak`: min_lr at its last step."""
    return peak + (min_lr - peak) * (i + 1) / n


def _evaluates(step: int, step_spend: float, eval_every: float) -> bool:
    """Whether Trainer.run evaluates after `step`: the step's spend reaches a multiple of eval_every that the
    step before it had not reached."""
    def reached(s: int) -> int:
        return math.floor(s * step_spend / eval_every + 1e-9)
    return step >= 1 and reached(step) > reached(step - 1)


def _first_step_reaching(amount: float, step_spend: float, tol: float) -> int:
    """The first step (at least 1) whose spend reaches `amount` (to `tol`)."""
    s = max(1, math.ceil((amount - tol) / step_spend))
    while s > 1 and (s - 1) * step_spend >= amount - tol:  # float rounding of the division, either way
        s -= 1
    while s * step_spend < amount - tol:
        s += 1
    return s


def rung_steps(rungs: list[float], step_spend: float, eval_every: float, total_steps: int) -> list[int]:
    """The training steps whose evaluations branch: the run evaluates at the first step whose spend reaches
    each multiple of eval_every (Trainer.run), and branches at the first evaluation at or past each rung.
    Arithmetic per rung: a run of 1e15 steps is planned as fast as one of 100."""
    out, tol = [], 1e-9 * eval_every
    for rung in rungs:
        step = _first_step_reaching(rung, step_spend, tol)
        if not _evaluates(step, step_spend, eval_every):
            # the next evaluation: the first step reaching the next multiple of eval_every past this step's spend
            k = math.floor(step * step_spend / eval_every + 1e-9) + 1
            step = _first_step_reaching(k * eval_every, step_spend, tol)
        if step > total_steps:
            break
        if not out or step > out[-1]:
            out.append(step)
    return out


def plan_training_steps(total_steps: int, rungs_at: list[int], cooldown_frac: float) -> int:
    """The most training steps T for which T, a branch at every rung before T and the end branch fit in
    `total_steps`; 0 when not even one step does. The cost grows with T: bisection, whatever the budget."""
    def cost(t: int) -> int:
        return t + sum(branch_steps(r, cooldown_frac) for r in rungs_at if r < t) + branch_steps(t, cooldown_frac)

    # T at most total / (1 + frac): the end branch alone costs about frac * T
    lo, hi = 0, int(total_steps / (1 + cooldown_frac)) + 1
    while hi - lo > 1:  # T = lo fits (0 always does); T >= hi does not, or is past the bound
        mid = (lo + hi) // 2
        if cost(mid) <= total_steps:
            lo = mid
        else:
            hi = mid
    return lo


def cooldown_branch(model: torch.nn.Module, optimizers: list[torch.optim.Optimizer], batch_gen: torch.Generator,
                    n_steps: int, peak: float, min_lr: float,
                    make_optimizers: Callable[[torch.nn.Module], list[torch.optim.Optimizer]],
                    train_step: Callable[[torch.nn.Module, list[torch.optim.Optimizer], float, torch.Generator], float],
                    evaluate: Callable[[torch.nn.Module], float], cuda: bool = False) -> tuple[float, dict | None]:
    """Decay a copy of a run's `model` and `optimizers` for n_steps from `peak` to min_lr, on the batches the run's
    `batch_gen` would draw next; return the copy's validation loss (inf when it diverged) and its weights (None
    then). The run's model, optimizers, generator and the global random streams (CUDA's too, with `cuda`) are left
    as they were. `make_optimizers(model)`: the run's optimizers for the copy, to load their state into;
    `train_step(model, optimizers, lr, batch_gen)`: one optimizer step, its loss; `evaluate(model)`: its val loss."""
    branch = copy.deepcopy(model)
    branch_optimizers = make_optimizers(branch)
    for mine, theirs in zip(branch_optimizers, optimizers):
        mine.load_state_dict(copy.deepcopy(theirs.state_dict()))  # load_state_dict keeps the tensors it is given
    # the branch draws the batches the run would draw next, from a copy of its generator; dropout's global
    # stream is put back afterwards
    branch_gen = torch.Generator().set_state(batch_gen.get_state())
    rng = torch.get_rng_state()
    rng_cuda = torch.cuda.get_rng_state_all() if cuda else None
    try:
        for i in range(n_steps):
            loss = train_step(branch, branch_optimizers, decay_lr(i, n_steps, peak, min_lr), branch_gen)
            if not math.isfinite(loss):
                return float("inf"), None
        val = evaluate(branch)
    finally:
        torch.set_rng_state(rng)
        if rng_cuda is not None:
            torch.cuda.set_rng_state_all(rng_cuda)
    return (val, branch.state_dict()) if math.isfinite(val) else (float("inf"), None)
