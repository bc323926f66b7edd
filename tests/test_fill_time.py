"""fill_time_s (tune.search --final-budget auto): a run plans its length from its own speed so that it ends by a
wall-clock time, re-plans while the wsd peak holds, only shortens (squeezing the rest of the decay) once the decay
begins, and resumes with it."""

import functools
import json
import math

import pytest

from conftest import make_trainer
from nanogpt.train import Status, Trainer, TrainConfig, lr_at, wsd_decay_start


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models on one thread

# conftest's tiny model, a wsd run of 40 steps' tokens that fills 100 s
make = functools.partial(make_trainer, base=dict(budget_unit="tokens", budget=8 * 16 * 40, batch_size=8,
                                                 learning_rate=3e-3, eval_iters=2, schedule="wsd", fill_time_s=100.0))


def test_plan_from_the_run_speed(data):
    t = make(data)
    assert t.planned_steps == 40 and t.cfg.warmup_steps == 4  # the warmup is fixed from the first plan
    t.step = 20
    # 20 steps in 10 s, 8 s of them training: 0.4 s a step, and 2 s for the one evaluation so far
    t.plan.plan_to_fill(t.step, seconds=10.0, steps=20, train_s=8.0, evals=1)
    per_step = 0.4 + 2.0 * t.step_spend / t.eval_every  # an evaluation every eval_every tokens
    left = int((100 * 0.96 - 10 - 2) / per_step)
    assert t.planned_steps == 20 + left and t.budget == t.planned_steps * t.step_spend
    assert lr_at(t.step, t.cfg, t.planned_steps) == pytest.approx(3e-3)  # still at the peak


def test_plan_never_lengthens_once_the_decay_began(data):
    t = make(data)
    t.step = wsd_decay_start(t.cfg, t.planned_steps, t.cfg.warmup_steps)
    t.plan.plan_to_fill(t.step, seconds=1.0, steps=30, train_s=0.5, evals=1)
    assert t.planned_steps == 40


def test_a_late_plan_starts_the_decay_now(data):
    """Out of time at the peak: the decay begins at once rather than the lr jumping into its middle."""
    t = make(data, budget=8 * 16 * 400)
    t.step = 200
    t.plan.plan_to_fill(t.step, seconds=97.0, steps=200, train_s=90.0, evals=3)
    assert t.planned_steps == math.ceil(200 / 0.8)
    assert wsd_decay_start(t.cfg, t.planned_steps, t.cfg.warmup_steps) == 200


def test_run_fills_its_time_and_ends_decayed(data):
    t = make(data, fill_time_s=3.0)
    history = t.run()
    assert t.status in (Status.FINISHED, Status.OUT_OF_TIME)
    assert t.step > 40  # far more than the first plan: its own speed re-planned it
    if t.status is Status.FINISHED:  # on a machine fast enough to keep its plan: the decay ran to its end
        assert history[-1]["lr"] == pytest.approx(t.cfg.end_lr)
        assert history[-1]["budget"] == t.planned_steps * t.step_spend == t.spend


def test_resume_keeps_the_plan_and_continue_drops_another_runs(data, tmp_path):
    t = make(data)
    t.step = 20
    t.plan.plan_to_fill(t.step, seconds=10.0, steps=20, train_s=8.0, evals=1)
    t.step = 0
    t.save(tmp_path)
    resumed = make(data)
    resumed.restore(tmp_path)
    assert resumed.planned_steps == t.planned_steps and resumed.budget == t.budget
    continued = make(data, budget=8 * 16 * 60)
    continued.continue_from(tmp_path)
    assert continued.planned_steps == 60 and continued.budget == 8 * 16 * 60


def test_refused_where_the_length_is_planned_otherwise():
    with pytest.raises(ValueError, match="fill_time_s"):
        TrainConfig(budget_unit="s", budget=10, fill_time_s=10)
    with pytest.raises(ValueError, match="fill_time_s"):
        TrainConfig(schedule="wsd", cooldown_rungs=[5], fill_time_s=10)
    with pytest.raises(ValueError, match="fill_time_s"):
        TrainConfig(fill_time_s=0)
    moving = TrainConfig(max_steps=50, schedule="wsd", warmup_steps=0, fill_time_s=10)
    assert lr_at(60, moving, planned_steps=100) == moving.learning_rate  # a steps budget's plan moves its decay too


def test_final_training_fills_the_seconds_left(tmp_path, monkeypatch):
    """--final-budget auto: the final training's task gets the seconds left, re-plans its length from its own speed
    on the node's threads, and ends decayed within them (the first plan, from a trial's pace, was far less). Called
    as the Ray task's function, with the task's resources (one CPU) given, not a Ray of its own."""
    import tune.trainable
    from conftest import TINY
    from nanogpt.token_cache import prepare
    from tune.config import build_parser, config_from_args
    from tune.space import Hparams
    from tune.trainable import train_final

    class OneCPU:
        def get_assigned_resources(self):
            return {"CPU": 1.0}

    monkeypatch.setattr(tune.trainable.ray, "get_runtime_context", lambda: OneCPU())
    config = config_from_args(build_parser().parse_args(
        [*TINY, "--max-steps", "10", "--final-budget", "20steps", "--schedule", "wsd", "--final-from", "scratch",
         "--results-dir", str(tmp_path), "--name", "f"]))
    data, tok = prepare("counting")
    hp = {"n_layer": 1, "n_head": 2, "head_dim": 8, "dropout": 0.0, "learning_rate": 3e-3, "batch_size": 4,
          "block_size": 16, "weight_decay": 0.1, "optimizer": "adamw"}
    hp = {k: v for k, v in hp.items() if k in Hparams.__dataclass_fields__}
    out = train_final(hp, data, tok.to_dict(), config, str(tmp_path / "final.partial"), None, None, 4.0)
    history = json.loads(out["files"]["config.json"])["history"]
    assert history[-1]["step"] > 20 and out["status"] in ("finished", "time_budget")
    # it filled most of its 4 s (its first plan, 20 steps, takes a small part of one) and kept within them (a margin)
    assert 2.0 < out["wall_s"] < 4.0 + 2.0
    if out["status"] == "finished":
        assert history[-1]["lr"] == pytest.approx(3e-4)


def test_steps_that_slow_in_the_decay_still_end_decayed_by_the_deadline(data):
    """Issue 29's second breakage: a final training planned 714 steps, re-planned to 290 and was stopped by its time
    at 270, in the middle of its decay. Now the plan keeps shortening during the decay (checked every few steps, at
    the recent speed), the rest of the decay squeezed in from where the lr stands: it ends decayed, in time."""
    import time

    t = make(data, fill_time_s=6.0)
    lrs, step = [], Trainer.train_step

    def slowing(self, model, optimizers, lr, gen):
        lrs.append(lr)
        if self.plan.decaying(self.step):
            time.sleep(0.01)  # after the decay begins a step takes several times longer (another job on the machine)
        return step(self, model, optimizers, lr, gen)

    t.train_step = slowing.__get__(t)
    t0 = time.perf_counter()
    history = t.run()
    assert time.perf_counter() - t0 < 6.0
    assert t.status is Status.FINISHED and t.decay_anchor is not None  # squeezed, not stopped
    assert history[-1]["lr"] == pytest.approx(t.cfg.end_lr) and lrs[-1] == pytest.approx(t.cfg.end_lr)
    peak = lrs.index(max(lrs))
    assert all(b <= a + 1e-12 for a, b in zip(lrs[peak:], lrs[peak + 1:]))  # never back up


def test_a_squeezed_decay_resumes_where_it_stood(data, tmp_path):
    t = make(data)
    t.step = 36  # in the decay of a 40-step plan
    # 2.5 s a step, evaluations counted: 2 fit
    t.plan.plan_to_fill(t.step, seconds=88.0, steps=36, train_s=80.0, evals=5)
    assert t.planned_steps == 38 and t.decay_anchor[0] == 36
    assert lr_at(36, t.cfg, 38, t.decay_anchor) < t.decay_anchor[1] and lr_at(37, t.cfg, 38, t.decay_anchor) == pytest.approx(t.cfg.end_lr)
    t.save(tmp_path)
    resumed = make(data)
    resumed.restore(tmp_path)
    assert resumed.decay_anchor == t.decay_anchor and resumed.planned_steps == 38
