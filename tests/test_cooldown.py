"""Warmup-stable-decay and cooldown branches: the branch leaves the run untouched, spend adds up to the budget,
resume is exact, and a run continued to a longer budget equals one trained straight to it."""

import copy
import functools

import pytest
import torch

import nanogpt.train
from conftest import assert_resume_equals_uninterrupted, make_trainer
from nanogpt.cooldown import branch_steps, plan_training_steps, rung_steps
from nanogpt.train import Trainer, TrainConfig, lr_at


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models on one thread

make = functools.partial(make_trainer, dropout=0.1, schedule="wsd")  # conftest's tiny trainer, wsd, with dropout


def assert_same_weights(a: Trainer, b: Trainer) -> None:
    for (k, p), q in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        torch.testing.assert_close(p, q, atol=0, rtol=0, msg=k)


def test_wsd_schedule():
    cfg = TrainConfig(max_steps=1000, learning_rate=1e-3, warmup_steps=100, schedule="wsd", cooldown_frac=0.2)
    assert lr_at(50, cfg) < lr_at(100, cfg) == lr_at(799, cfg) == pytest.approx(1e-3)  # stable at the peak
    assert lr_at(899, cfg) == pytest.approx((1e-3 + 1e-4) / 2)  # linear decay over the last 200 steps
    assert lr_at(999, cfg) == pytest.approx(1e-4) and lr_at(5000, cfg) == pytest.approx(1e-4)
    rungs = TrainConfig(max_steps=1000, learning_rate=1e-3, schedule="wsd", cooldown_rungs=[100])
    assert lr_at(999, rungs) == pytest.approx(1e-3)  # with cooldown rungs the run holds the peak: branches decay
    with pytest.raises(ValueError, match="wsd"):
        TrainConfig(cooldown_rungs=[100])
    with pytest.raises(ValueError, match="cooldown_frac"):
        TrainConfig(schedule="wsd", cooldown_frac=1.0)


def test_plan_shares_the_budget():
    at = rung_steps([10, 30, 90], 1, 10, 100)
    assert at == [10, 30, 90]
    t = plan_training_steps(100, at, 0.2)
    # 77 training steps + branches of 2 (at 10) and 6 (at 30) + the end branch of 15 = 100; 78 would need 102
    assert t == 77
    assert plan_training_steps(3, [], 0.2) == 2 and plan_training_steps(1, [], 0.2) == 0


def test_branch_leaves_the_run_untouched(data):
    t = make(data, max_steps=20)
    t.run()
    before = copy.deepcopy(t.state_dict())
    stable = t.evaluate(("val",))["val"]
    decayed, weights = t._branch(10), t.decayed
    after = t.state_dict()
    for k in ("model",):
        for name, p in before[k].items():
            torch.testing.assert_close(after[k][name], p, atol=0, rtol=0, msg=name)
    assert str(after["optimizer"]) == str(before["optimizer"])  # moments and step counts, tensors included
    assert torch.equal(after["rng_torch"], before["rng_torch"]) and torch.equal(after["rng_batch"], before["rng_batch"])
    assert decayed != stable
    assert any(not torch.equal(weights[k], p) for k, p in after["model"].items())


def test_run_with_branches_trains_as_one_without(data, monkeypatch):
    """Same stable weights at the end whether the branches ran or were replaced by a constant: they take
    nothing from the run's weights, optimizer or random streams (dropout is on)."""
    with_branches = make(data, max_steps=60, cooldown_rungs=[10, 30])
    history = with_branches.run()
    monkeypatch.setattr(nanogpt.train, "cooldown_branch", lambda *args: (1.0, None))
    without = make(data, max_steps=60, cooldown_rungs=[10, 30])
    without.run()
    assert_same_weights(with_branches, without)
    branched = [m for m in history if m["cooldown_steps"]]
    assert [m["step"] for m in branched] == [10, 30, with_branches.step]
    assert all(m["val_loss"] != m["stable_val_loss"] for m in branched)  # the rung loss is the branch's


def test_spend_adds_up_to_the_budget(data):
    td, tok = data
    probe = make(data)
    flops_per_step = 8 * 16 * probe.flops_per_token
    budget = 100.5 * flops_per_step  # not a whole number of steps
    t = make(data, max_steps=1, budget_unit="flops", budget=budget, eval_every=10 * flops_per_step, eval_interval=1,
             cooldown_rungs=[10 * flops_per_step, 30 * flops_per_step])
    history = t.run()
    last = history[-1]
    assert last["status"] == "finished" and t.step + t.branch_steps == 100  # every whole step of the budget
    assert last["total_spend"] == pytest.approx(last["spend"] + last["branch_spend"])
    assert last["total_spend"] == pytest.approx(100 * flops_per_step) and last["total_spend"] <= budget
    assert [m["cooldown_steps"] for m in history if m["cooldown_steps"]][:2] == [2, 6]


@pytest.mark.parametrize("kw", [dict(cooldown_frac=0.5), dict(max_steps=60, cooldown_rungs=[10, 30])])
def test_resume_mid_cooldown_is_exact(data, tmp_path, kw):
    """Killed at step 30 (inside the decay of a wsd run; right after a rung's branch with cooldown rungs) and
    resumed: the same losses and weights as the run that was never stopped."""
    assert_resume_equals_uninterrupted(functools.partial(make, data, **kw), tmp_path / "ckpt", 30,
                                       compare=("val_loss", "total_spend"), atol=0)


def test_continued_run_equals_a_straight_one(data, tmp_path):
    """A trial with cooldown rungs, continued from its stable checkpoint to a 3x budget with the plain wsd
    schedule, ends with the weights of a wsd run trained straight to that budget."""
    trial = make(data, cooldown_rungs=[10])
    trial.run()
    trial.save(tmp_path / "trial")
    warmup = nanogpt.train.read_checkpoint(tmp_path / "trial")[0]["warmup_steps"]
    final_budget = 3 * trial.step
    continued = make(data, max_steps=final_budget, warmup_steps=warmup)
    continued.continue_from(tmp_path / "trial")
    continued.run()
    straight = make(data, max_steps=final_budget, warmup_steps=warmup)
    straight.run()
    assert continued.step == straight.step == final_budget
    assert_same_weights(continued, straight)
    assert continued.history[-1]["val_loss"] == straight.history[-1]["val_loss"]


def test_checkpoint_at_a_rung_samples_with_the_decayed_weights(data, tmp_path):
    """A checkpoint taken at a cooldown rung keeps the stable weights for training on (model.pt) and the branch's
    decayed weights, whose loss it reported, for sampling (decayed.pt); one taken elsewhere has no decayed.pt."""
    from nanogpt.checkpoint import load_model

    t = make(data, max_steps=60, cooldown_rungs=[10])
    seen = []
    t.run(lambda m, tr: seen.append((m["step"], m["cooldown_steps"], tr.save(tmp_path / str(m["step"])))))
    for step, branched, d in seen:
        assert (d / "decayed.pt").is_file() == bool(branched)
    step, _, d = seen[-1]
    model, _, _ = load_model(d)
    decayed = torch.load(d / "decayed.pt", weights_only=True)["model"]
    for k, p in model.state_dict().items():
        torch.testing.assert_close(p, decayed[k], atol=0, rtol=0)
    assert any(not torch.equal(p, t.model.state_dict()[k]) for k, p in decayed.items())


def test_a_huge_budget_is_planned_without_walking_its_steps(data):
    """A run of 1e15 steps with cooldown rungs plans its rungs and training steps by arithmetic: it used to walk
    every planned step (rung_steps, plan_training_steps) before training and never reported."""
    import signal

    def too_slow(*_):
        raise TimeoutError("planning walked the steps")

    before = signal.signal(signal.SIGALRM, too_slow)
    signal.alarm(20)
    try:
        t = make(data, max_steps=10**15, eval_interval=10**14, cooldown_rungs=[10**14, 3 * 10**14])
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, before)
    assert t.total_steps == 10**15
    at = rung_steps(t.rungs, 1.0, 10**14, 10**15)
    assert len(at) == 2 and abs(at[0] - 10**14) <= 10**5 and abs(at[1] - 3 * 10**14) <= 10**5  # to eval_every's 1e-9

    def cost(steps):  # training, branches at the two rungs and the end branch: the budget, to a step
        return steps + sum(branch_steps(r, 0.2) for r in at if r < steps) + branch_steps(steps, 0.2)

    assert cost(t.planned_steps) <= 10**15 < cost(t.planned_steps + 1)


def test_rung_steps_by_arithmetic_match_the_evaluations_a_run_makes():
    """The closed-form rung steps are the evaluations Trainer.run branches at: checked against a walk over every step
    (the former implementation) on budgets in steps and FLOPs, evaluations that fall between steps included."""
    import math
    import random

    def walked(rungs, step_spend, eval_every, total_steps):
        out, next_eval, i, tol = [], eval_every, 0, 1e-9 * eval_every
        for step in range(1, total_steps + 1):
            spend = step * step_spend
            if spend < next_eval - tol:
                continue
            next_eval = (math.floor(spend / eval_every + 1e-9) + 1) * eval_every
            if i < len(rungs) and spend >= rungs[i] - tol:
                out.append(step)
            while i < len(rungs) and spend >= rungs[i] - tol:
                i += 1
        return out

    rnd = random.Random(0)
    for _ in range(2000):
        if rnd.random() < 0.5:
            sp, ee, budget = 1.0, float(rnd.randint(1, 30)), float(rnd.randint(1, 400))
        else:
            sp = rnd.choice([128.0, 3.7e5 * rnd.randint(1, 9), 1.234567e7])
            budget = sp * rnd.uniform(1, 300)
            ee = budget / rnd.choice([1, 3, 7, 10, 33]) if rnd.random() < 0.7 else sp * rnd.randint(1, 5)
        total = int(budget // sp + 1e-9)
        grace, rf = ee * rnd.randint(1, 4), rnd.choice([2, 3])
        rungs = [grace * rf ** k for k in range(6) if grace * rf ** k <= budget]
        assert rung_steps(rungs, sp, ee, total) == walked(rungs, sp, ee, total), (rungs, sp, ee, total)
