"""The search's schedule settings: --schedule, --cooldown-frac, --final-from, --time-budget durations and
--final-budget auto, checked before Ray; the rungs a wsd trial branches at are ASHA's."""

import dataclasses

import pandas as pd
import pytest

from nanogpt.errors import UserError
from tune.config import SearchConfig, build_parser, config_from_args, parse_duration
from tune.space import Hparams


def config(tmp_path, *argv: str) -> SearchConfig:
    return config_from_args(build_parser().parse_args([*argv, "--results-dir", str(tmp_path)]))


@pytest.mark.parametrize("text, seconds", [("900", 900), ("900s", 900), ("15m", 900), ("1h", 3600), ("1.5h", 5400)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "15x", "-5m", "0", "m", "inf"])
def test_bad_durations(text):
    with pytest.raises(UserError, match="--time-budget"):
        parse_duration(text)


def test_final_budget_auto_splits_the_time_budget(tmp_path):
    c = config(tmp_path, "--time-budget", "15m", "--final-budget", "auto", "--schedule", "wsd")
    assert c.final_auto and c.total_time_s == 900 and c.time_budget_s == pytest.approx(450) and c.final_budget is None
    with pytest.raises(UserError, match="--time-budget"):
        config(tmp_path, "--final-budget", "auto")
    assert config(tmp_path, "--time-budget", "1h").time_budget_s == 3600  # without auto: the search's alone


def test_final_share_moves_the_split(tmp_path):
    c = config(tmp_path, "--time-budget", "10m", "--final-budget", "auto", "--final-share", "0.7")
    assert c.final_share == 0.7 and c.total_time_s == 600 and c.time_budget_s == pytest.approx(180)
    assert SearchConfig.load(c.save(tmp_path).parent).final_share == 0.7  # saved: a resume splits as the search did
    with pytest.raises(UserError, match="--final-share.*--final-budget auto"):
        config(tmp_path, "--time-budget", "10m", "--final-share", "0.7")  # no final training to share with
    for bad in ("0", "1", "1.5"):
        with pytest.raises(UserError, match="--final-share"):
            config(tmp_path, "--time-budget", "10m", "--final-budget", "auto", "--final-share", bad)


@pytest.mark.parametrize("argv, message", [
    (["--schedule", "cosine", "--final-from", "continue"], "needs --schedule wsd"),
    (["--schedule", "wsd", "--max-steps", "100", "--final-budget", "100steps"], "not more than the trial budget"),
    (["--schedule", "wsd", "--cooldown-frac", "1"], "--cooldown-frac"),
])
def test_schedule_errors(tmp_path, argv, message):
    with pytest.raises(UserError, match=message):
        config(tmp_path, *argv)


def test_wsd_trials_branch_at_ashas_rungs(tmp_path):
    from ray.tune.schedulers import ASHAScheduler

    c = config(tmp_path, "--schedule", "wsd", "--trial-budget", "1e12flops", "--eval-every", "1e11",
               "--grace-period", "1e11", "--reduction-factor", "3")
    asha = ASHAScheduler(time_attr="spend", max_t=c.trial_budget, grace_period=c.grace_period,
                         reduction_factor=c.reduction_factor, metric="val_loss", mode="min")
    assert sorted(m for m, _ in asha._brackets[0]._rungs) == pytest.approx(c.rungs) == [1e11, 3e11, 9e11]
    hp = Hparams(n_layer=1, n_head=2, head_dim=8, dropout=0.0, learning_rate=1e-3, batch_size=4, block_size=16,
                 weight_decay=0.1)
    tc = c.trial_train_config(hp)
    assert tc.schedule == "wsd" and tc.cooldown_rungs == c.rungs and c.final_from == "continue"
    assert config(tmp_path, "--schedule", "cosine").trial_train_config(hp).cooldown_rungs is None


def test_auto_final_budget_from_the_winners_pace(tmp_path):
    from tune.final import auto_final_budget

    c = config(tmp_path, "--time-budget", "15m", "--final-budget", "auto", "--schedule", "wsd", "--max-steps", "100")
    best = pd.Series({"train_spend": 80.0, "seconds": 40.0, "steps": 80})  # 2 steps a second
    # the first plan: continued, its own 80 steps, then the 150 s left at its pace (the training re-plans from its own)
    assert auto_final_budget(c, best, 150) == 80 + 300
    # on a node of 2 trials' CPUs the final training runs at twice a trial's pace (tune.trainable.final_speedup)
    assert auto_final_budget(c, best, 150, speedup=2.0) == 80 + 600
    assert auto_final_budget(c, best, 0) is None


def test_the_final_trainings_first_plan_counts_the_nodes_threads(tmp_path, monkeypatch):
    """The final training holds a whole node: its first plan (and the horizon of its learning rate) at the trial's
    pace x the node's CPUs over a trial's; a GPU trial's share says nothing of its speed alone (x1)."""
    import tune.trainable

    monkeypatch.setattr(tune.trainable, "node_cpus", lambda: 4)
    assert tune.trainable.final_speedup(config(tmp_path)) == 4.0
    assert tune.trainable.final_speedup(config(tmp_path, "--cpus-per-trial", "2")) == 2.0
    assert tune.trainable.final_speedup(config(tmp_path, "--cpus-per-trial", "8")) == 1.0  # never below a trial's
    gpu = dataclasses.replace(config(tmp_path), gpus_per_trial=0.25, device="auto")
    assert tune.trainable.final_speedup(gpu) == 1.0


def test_auto_final_budget_too_small_for_one_more_step_is_none(tmp_path):
    """A few seconds left, less than one of the winner's steps in FLOPs: no final training (the task would refuse
    a budget that leaves the continued trial no step, and the whole command would fail after its search)."""
    from tune.final import auto_final_budget

    c = config(tmp_path, "--time-budget", "15m", "--final-budget", "auto", "--schedule", "wsd",
               "--trial-budget", "1e12flops")
    best = pd.Series({"train_spend": 9e11, "seconds": 30.0, "steps": 3})  # 3e11 FLOPs a step, 3e10 a second
    assert auto_final_budget(c, best, 3) is None  # 9e10 FLOPs of time: less than a third of a step
    assert auto_final_budget(c, best, 30) == pytest.approx(9e11 + 9e11)
