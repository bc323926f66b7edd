"""The search space: range flags, presets, define-by-run sampling. No Ray needed."""

import optuna
import pytest

from nanogpt.model import GPTConfig
from tune.space import PRESETS, Choice, FloatRange, IntRange, SpaceSampler, parse_range, trial_constants, with_overrides
from tune.trainable import build_configs


@pytest.mark.parametrize("flag,text,expected", [
    ("n_layer", "2:6", IntRange(2, 6)),
    ("n_layer", "2:8:2", IntRange(2, 8, 2)),
    ("n_head", "2,4,8", Choice((2, 4, 8))),
    ("head_dim", "16:64", IntRange(16, 64)),
    ("dropout", "0:0.2", FloatRange(0.0, 0.2)),
    ("lr", "1e-4:3e-3", FloatRange(1e-4, 3e-3, log=True)),
    ("batch_size", "8,16,32", Choice((8, 16, 32))),
    ("n_layer", "3", 3),
])
def test_parse_range(flag, text, expected):
    assert parse_range(flag, text) == expected


@pytest.mark.parametrize("flag,text,needle", [
    ("n_layer", "6:2", "empty"),
    ("n_layer", "", "empty"),
    ("n_layer", "2.5:4", "whole number"),
    ("n_head", "0,2", "positive"),
    ("head_dim", "-8:16", "positive"),
    ("dropout", "0:1.5", "[0, 1)"),
    ("dropout", "1", "[0, 1)"),
    ("lr", "0:1e-3", "> 0"),
    ("lr", "-1e-3", "> 0"),
    ("batch_size", "a,b", "not a number"),
    ("dropout", "0:0.1:0.05", "not a range"),
])
def test_parse_range_rejects(flag, text, needle):
    with pytest.raises(ValueError, match=None) as e:
        parse_range(flag, text)
    assert needle in str(e.value)


def test_every_sampled_config_is_valid():
    """TPE over the gpu preset's space (widest shapes): every config builds a GPT."""
    preset = with_overrides(PRESETS["gpu"], {"n_head": Choice((1, 3, 6, 12)), "head_dim": IntRange(5, 70)})
    sampler = SpaceSampler(preset.space, trial_constants(preset, dataset="x", seed=0, max_steps=100, eval_interval=10))
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0, n_startup_trials=5))
    for _ in range(40):
        trial = study.ask()
        constants = sampler(trial)
        config = {**trial.params, **constants}
        model_cfg, train_cfg = build_configs(config, vocab_size=65)
        assert isinstance(model_cfg, GPTConfig)
        assert model_cfg.n_embd == config["n_head"] * config["head_dim"]
        assert model_cfg.block_size == 256 and train_cfg.max_steps == 100
        assert train_cfg.train_loss_from == "steps"  # trials evaluate val only
        assert config["sampler"] == "TPESampler"
        study.tell(trial, float(model_cfg.n_embd))


def test_sampler_only_samples_and_returns_constants():
    preset = PRESETS["laptop"]
    sampler = SpaceSampler(preset.space, {"max_steps": 7, "dataset": "mixed"})
    study = optuna.create_study()
    trial = study.ask()
    out = sampler(trial)
    assert out["max_steps"] == 7 and out["dataset"] == "mixed" and out["block_size"] == 64
    assert set(trial.params) == {"n_layer", "n_head", "head_dim", "dropout", "learning_rate", "batch_size"}
    assert trial.distributions["learning_rate"].log


def test_presets_exist_and_are_sane():
    assert {"laptop", "shakespeare-cpu", "gpu"} <= set(PRESETS)
    assert PRESETS["laptop"].dataset == "mixed" and PRESETS["gpu"].gpus_per_trial == 0.25
    assert PRESETS["gpu"].space["block_size"] == 256
    for p in PRESETS.values():
        assert p.grace_period <= p.max_steps and p.grace_period % p.eval_interval == 0
