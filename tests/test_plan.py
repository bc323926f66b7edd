"""nanogpt.plan.RunPlan alone, no model: the numbers a Trainer of conftest's tiny model (16-token blocks, 25248 FLOPs a
token, Muon's Newton-Schulz 1146880 FLOPs a step) planned before the plan was its own part."""

import pytest

from nanogpt.errors import UserError
from nanogpt.plan import RunPlan
from nanogpt.train import TrainConfig

FPT = 25248  # the tiny model's flops_per_token


def plan(tokens_per_step=4 * 16, optimizer_flops=0, **kw) -> RunPlan:
    return RunPlan.from_config(TrainConfig(**kw), tokens_per_step, FPT, optimizer_flops)


def test_steps_tokens_and_flops_budgets():
    p = plan(max_steps=100)
    assert (p.budget, p.eval_every, p.step_spend, p.planned_steps, p.total_steps, p.rungs) == (100.0, 250.0, 1.0, 100, 100, [])
    assert [p.lr(s) for s in (0, 5, 50, 150)] == [9.090909090909092e-05, 0.0005454545454545455, 0.0006281416799501188, 0.0001]
    p = plan(budget_unit="tokens", budget=10000, batch_size=4)
    assert (p.budget, p.eval_every, p.step_spend, p.planned_steps, p.total_steps) == (10000.0, 1000.0, 64.0, 156, 156)
    assert p.lr(50) == 0.0008699655326998423 and p.lr(150) == 0.000104015130330349
    assert p.budget_left(155, 155 * 64, 1.0, 0.0, 0.0) and not p.budget_left(156, 156 * 64, 1.0, 0.0, 0.0)
    p = plan(optimizer_flops=1146880, budget_unit="flops", budget=3e9, batch_size=4, optimizer="muon")
    assert (p.step_spend, p.planned_steps, p.eval_every) == (2762752.0, 1085, 3e8)
    assert p.spend(2, 128, 0.5) == 128 * FPT + 2 * 1146880 and p.lr(150) == 0.0009942900904421233


def test_a_seconds_budget_plans_by_speed():
    p = plan(budget_unit="s", budget=20, batch_size=4)
    assert (p.planned_steps, p.total_steps, p.step_spend, p.eval_every) == (None, None, None, 2.0)
    assert p.lr(50) == 0.001  # the peak until the length is known
    p.plan_by_speed(9, 2.0, 2.0)
    assert p.planned_steps is None  # before PROBE_STEPS
    p.plan_by_speed(10, 2.5, 2.5)
    assert p.planned_steps == 80
    assert p.budget_left(10, 19.9, 19.0, 0.0, 0.9) and not p.budget_left(10, 20.0, 19.0, 0.0, 1.0)


def test_cooldown_rungs_leave_the_branches_their_steps():
    p = plan(budget_unit="tokens", budget=64 * 200, batch_size=4, schedule="wsd",
             cooldown_rungs=[64 * 20, 64 * 50, 64 * 100], eval_every=64 * 10)
    assert (p.planned_steps, p.total_steps, p.rungs, p.rung_at) == (138, 200, [1280.0, 3200.0, 6400.0], [20, 50, 100])
    assert p.config_plan == 138 and p.lr(150) == 0.001  # the run holds the peak: its branches decay
    done, due = 0, []
    for step in (19, 20, 50, 100, 150):
        n, done = p.branch_due(step, step * 64, done, False, 0)
        due.append((n, done))
    assert due == [(0, 0), (4, 1), (10, 2), (20, 3), (0, 3)]
    assert p.branch_due(138, 138 * 64, 3, True, 33) == (29, 3)  # the end branch: what the budget has left
    assert p.branch_spend(33, 1.0) == 33 * 64


def test_fill_time_replans_and_squeezes_the_decay():
    p = plan(tokens_per_step=8 * 16, budget_unit="tokens", budget=8 * 16 * 40, batch_size=8, schedule="wsd",
             fill_time_s=100.0)
    assert p.planned_steps == 40 and p.cfg.warmup_steps == 4  # the warmup fixed from the first plan
    p.plan_to_fill(20, seconds=10.0, steps=20, train_s=8.0, evals=1)
    assert (p.planned_steps, p.budget, p.decay_anchor) == (113, 14464.0, None)
    p.plan_to_fill(109, seconds=95.0, steps=109, train_s=80.0, evals=5)
    assert (p.planned_steps, p.budget, p.decay_anchor) == (110, 14080.0, (109, 0.0002565217391304348))
    assert p.state_dict() == {"planned_steps": 110, "decay_anchor": [109, 0.0002565217391304348]}
    resumed = plan(tokens_per_step=8 * 16, budget_unit="tokens", budget=8 * 16 * 40, batch_size=8, schedule="wsd",
                   fill_time_s=100.0)
    resumed.load_state_dict(p.state_dict())
    assert (resumed.planned_steps, resumed.budget, resumed.decay_anchor) == (110, 14080.0, p.decay_anchor)
    resumed.restart()  # continued under its own config: the first plan
    assert (resumed.planned_steps, resumed.budget, resumed.decay_anchor) == (40, 5120.0, None)


def test_a_budget_under_one_step_is_refused():
    with pytest.raises(UserError, match="less than one training step"):
        plan(budget_unit="tokens", budget=10, batch_size=4)
