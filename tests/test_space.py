"""The search space and the search's configuration: range flags as Optuna distributions, presets,
define-by-run sampling, budgets, search.json, --resume with the original command. No Ray needed."""

import dataclasses

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from nanogpt.errors import UserError
from nanogpt.model import GPTConfig
from tune.config import SearchConfig, build_parser, config_from_args, parse_amount
from tune.space import HPARAMS, PRESETS, Hparams, SpaceSampler, largest, parse_range, space_to_json, with_defaults


@pytest.mark.parametrize("flag,text,expected", [
    ("n-layer", "2:6", IntDistribution(2, 6)),
    ("n-layer", "2:8:2", IntDistribution(2, 8, step=2)),
    ("n-head", "2,4,8", CategoricalDistribution((2, 4, 8))),
    ("head-dim", "16:64", IntDistribution(16, 64)),
    ("dropout", "0:0.2", FloatDistribution(0.0, 0.2)),
    ("lr", "1e-4:3e-3", FloatDistribution(1e-4, 3e-3, log=True)),
    ("batch-size", "8,16,32", CategoricalDistribution((8, 16, 32))),
    ("n-layer", "3", 3),
    ("pos-emb", "learned,rope", CategoricalDistribution(("learned", "rope"))),
    ("mlp", "swiglu", "swiglu"),
    ("qk-norm", "true,false", CategoricalDistribution((True, False))),
    ("tie-embeddings", "false", False),
    ("logit-softcap", "0,15,30", CategoricalDistribution((0.0, 15.0, 30.0))),
    ("parametrization", "sp,mup", CategoricalDistribution(("sp", "mup"))),
    ("parametrization", "mup", "mup"),
    ("mup-base-width", "64", 64),
])
def test_parse_range(flag, text, expected):
    assert parse_range(flag, text) == expected


@pytest.mark.parametrize("flag,text,needle", [
    ("n-layer", "6:2", "empty"),
    ("n-layer", "", "empty"),
    ("n-layer", "2.5:4", "whole number"),
    ("n-head", "0,2", "positive"),
    ("head-dim", "-8:16", "positive"),
    ("dropout", "0:1.5", "[0, 1)"),
    ("dropout", "1", "[0, 1)"),
    ("lr", "0:1e-3", "> 0"),
    ("lr", "-1e-3", "> 0"),
    ("batch-size", "a,b", "not a number"),
    ("dropout", "0:0.1:0.05", "not a range"),
    ("n-layer", "1:6:2", "multiple of the step"),
    ("pos-emb", "learned,alibi", "learned or rope"),
    ("norm", "1", "layernorm or rmsnorm"),
    ("qk-norm", "maybe", "not true or false"),
    ("logit-softcap", "-1", ">= 0"),
    ("parametrization", "ntk", "sp or mup"),
    ("mup-base-width", "0", "positive"),
])
def test_parse_range_rejects(flag, text, needle):
    with pytest.raises(UserError) as e:
        parse_range(flag, text)
    assert needle in str(e.value)


def test_every_config_tpe_samples_from_a_widened_space_builds():
    """TPE over the gpu preset's space, widened: every config builds a GPT and a TrainConfig."""
    space = {**PRESETS["gpu"].space, "n_head": CategoricalDistribution((1, 3, 6, 12)), "head_dim": IntDistribution(5, 70)}
    sampler = SpaceSampler(space_to_json(space))
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0, n_startup_trials=5))
    for _ in range(40):
        trial = study.ask()
        constants = sampler(trial)  # samples first: trial.params fills as it does
        config = {**trial.params, **constants}
        hp = Hparams.from_config(config)
        model_cfg = hp.model_config(vocab_size=65)
        train_cfg = hp.train_config(budget_unit="flops", budget=1e12, eval_every=1e11)
        assert isinstance(model_cfg, GPTConfig) and model_cfg.n_embd == config["n_head"] * config["head_dim"]
        assert model_cfg.block_size == 256 and train_cfg.budget == 1e12
        assert config["sampler"] == "TPESampler"
        study.tell(trial, float(model_cfg.n_embd))


def test_sampler_only_samples_and_returns_constants():
    sampler = SpaceSampler(space_to_json(PRESETS["laptop"].space))
    trial = optuna.create_study().ask()
    out = sampler(trial)
    assert out["block_size"] == 64 and out["weight_decay"] == 0.1 and out["dropout"] == 0.0
    assert set(trial.params) == {"n_layer", "n_head", "learning_rate", "batch_size"}
    assert trial.distributions["learning_rate"].log


def test_a_space_must_name_every_hyperparameter():
    with pytest.raises(ValueError, match="every hyperparameter"):
        SpaceSampler({"n_layer": 2})


def test_presets_exist_and_are_sane():
    assert {"laptop", "shakespeare-cpu", "gpu"} <= set(PRESETS)
    assert PRESETS["laptop"].dataset == "mixed" and PRESETS["gpu"].gpus_per_trial == 0.25
    for p in PRESETS.values():
        assert set(p.space) <= set(HPARAMS) and set(with_defaults(p.space)) == set(HPARAMS)
        budget, unit = parse_amount(p.trial_budget, "preset")
        assert p.grace_period <= budget and (p.grace_period / p.eval_every).is_integer()


@pytest.mark.parametrize("text,expected", [("500steps", (500, "steps")), ("8e12flops", (8e12, "flops")),
                                           ("2e6tokens", (2e6, "tokens")), ("120s", (120, "s")), ("1.5e12 flops", (1.5e12, "flops"))])
def test_parse_amount(text, expected):
    assert parse_amount(text, "--trial-budget") == expected


@pytest.mark.parametrize("text,needle", [("5parsecs", "unit"), ("12", "needs a unit"), ("0flops", "> 0"),
                                         ("2.5steps", "whole")])
def test_parse_amount_rejects(text, needle):
    with pytest.raises(UserError, match=needle):
        parse_amount(text, "--trial-budget")


def _config(*argv, tmp_path=None) -> SearchConfig:
    return config_from_args(build_parser().parse_args([*argv, "--results-dir", str(tmp_path or "/tmp/none")]))


def test_search_json_alone_rebuilds_the_search(tmp_path):
    """Trial constants, the trial's TrainConfig and the sampler's settings, from a saved search.json."""
    cfg = _config("--preset", "shakespeare-cpu", "--trial-budget", "4e12flops", "--n-layer", "2:3", "--name", "x",
                  "--seed", "5", tmp_path=tmp_path)
    cfg.experiment_dir.mkdir(parents=True)
    cfg.save()
    loaded = SearchConfig.load(cfg.experiment_dir)
    assert loaded == cfg
    assert loaded.space_sampler().space_json == cfg.space_sampler().space_json
    a, b = cfg.make_sampler(), loaded.make_sampler()
    assert type(a) is type(b) is optuna.samplers.TPESampler
    assert cfg.sampler == {"kind": "tpe", "seed": 5, "n_startup_trials": 8, "multivariate": True,
                           "constant_liar": True, "n_ei_candidates": 24}
    hp = Hparams(n_layer=2, n_head=4, head_dim=32, dropout=0.0, learning_rate=1e-3, batch_size=32, block_size=64,
                 weight_decay=0.1)
    assert loaded.trial_train_config(hp) == cfg.trial_train_config(hp)
    assert cfg.trial_train_config(hp).budget_unit == "flops"
    assert cfg.eval_every == pytest.approx(4e12 / 10)  # the preset's ten evaluations a trial
    assert cfg.grace_period == cfg.eval_every  # a tenth of the budget under wsd, on an evaluation


def test_budget_flags(tmp_path):
    assert _config("--max-steps", "40", tmp_path=tmp_path).trial_budget == 40
    with pytest.raises(UserError, match="not both"):
        _config("--max-steps", "40", "--trial-budget", "40steps", tmp_path=tmp_path)
    with pytest.raises(UserError, match="one unit"):
        _config("--trial-budget", "1e12flops", "--eval-every", "100steps", tmp_path=tmp_path)
    with pytest.raises(UserError, match="above the trial budget"):
        _config("--trial-budget", "1e12flops", "--grace-period", "2e12", tmp_path=tmp_path)
    with pytest.raises(UserError, match="never be evaluated"):
        _config("--trial-budget", "100s", "--eval-every", "200s", tmp_path=tmp_path)
    cfg = _config("--trial-budget", "60s", "--final-budget", "120s", tmp_path=tmp_path)
    assert (cfg.budget_unit, cfg.trial_budget, cfg.final_budget, cfg.eval_every) == ("s", 60, 120, 6)


def _saved(tmp_path, *argv) -> SearchConfig:
    cfg = _config(*argv, "--name", "old", tmp_path=tmp_path)
    cfg.experiment_dir.mkdir(parents=True)
    cfg.save()
    return cfg


def test_resume_accepts_the_original_command(tmp_path):
    original = ["--dataset", "counting", "--max-steps", "40", "--lr", "1e-4:3e-2", "--seed", "3", "--num-samples", "6"]
    saved = _saved(tmp_path, *original)
    resumed = _config(*original, "--resume", "--name", "old", tmp_path=tmp_path)
    assert resumed == saved
    assert _config("--resume", "--name", "old", tmp_path=tmp_path) == saved  # or no flags at all


@pytest.mark.parametrize("changed,flag,old,new", [
    (["--max-steps", "50"], "--max-steps", "40", "50"),
    (["--lr", "1e-3:3e-2"], "--lr", "0.0001:0.03 (log)", "0.001:0.03 (log)"),
    (["--seed", "4"], "--seed", "3", "4"),
    (["--tokenizer", "bpe"], "--tokenizer", "char", "bpe"),
])
def test_resume_refuses_a_changed_flag_naming_both_values(tmp_path, changed, flag, old, new):
    _saved(tmp_path, "--dataset", "counting", "--max-steps", "40", "--lr", "1e-4:3e-2", "--seed", "3")
    with pytest.raises(UserError) as e:
        _config("--dataset", "counting", *changed, "--resume", "--name", "old", tmp_path=tmp_path)
    msg = str(e.value)
    assert msg.startswith(flag) and f"with {old}," in msg and f"says {new};" in msg, msg


def test_search_config_is_frozen(tmp_path):
    cfg = _config(tmp_path=tmp_path)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.num_samples = 3


def test_the_architecture_is_searched_or_fixed_like_the_optimizer(tmp_path):
    cfg = _config("--pos-emb", "learned,rope", "--mlp", "gelu,swiglu", "--qk-norm", "true,false", "--norm", "rmsnorm",
                  "--zero-init", "true", tmp_path=tmp_path)
    specs = cfg.space_specs()
    assert specs["pos_emb"] == CategoricalDistribution(("learned", "rope")) and specs["norm"] == "rmsnorm"
    assert specs["qk_norm"] == CategoricalDistribution((True, False)) and specs["zero_init"] is True
    assert cfg.space["tie_embeddings"] is True and cfg.space["logit_softcap"] == 0.0  # recorded in search.json
    models = sampled_models(cfg)
    assert {(m.norm, m.zero_init, m.tie_embeddings) for m in models} == {("rmsnorm", True, True)}
    seen = {(m.pos_emb, m.mlp, m.qk_norm) for m in models}
    assert {s[0] for s in seen} == {"learned", "rope"} and {s[2] for s in seen} == {True, False}
    assert largest(specs).mlp == "swiglu"
    with pytest.raises(UserError, match="every --head-dim must be even"):
        _config("--pos-emb", "rope", "--head-dim", "15,16", tmp_path=tmp_path)


def sampled_models(cfg, n: int = 12) -> list:
    """The models of n trials drawn from cfg's space by a seeded random sampler, as the searcher draws them."""
    sampler = SpaceSampler(cfg.space)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    models = []
    for _ in range(n):
        trial = study.ask()
        constants = sampler(trial)  # samples first: trial.params fills as it does
        models.append(Hparams.from_config({**trial.params, **constants}).model_config(vocab_size=65))
        study.tell(trial, 1.0)
    return models


def test_the_default_preset_keeps_nanogpts_architecture_and_the_modern_one_fixes_its_own(tmp_path):
    hp = Hparams.from_config(SpaceSampler(_config(tmp_path=tmp_path).space)(optuna.create_study().ask()) | dict(
        n_layer=2, n_head=2, learning_rate=1e-3, batch_size=16))
    assert hp.model_config(65) == GPTConfig(block_size=64, vocab_size=65, n_layer=2, n_head=2, n_embd=32, bias=False)
    assert "rope" not in hp.line()
    modern = _config("--preset", "shakespeare-modern", tmp_path=tmp_path).space
    assert {k: modern[k] for k in ("pos_emb", "norm", "mlp", "qk_norm", "tie_embeddings", "zero_init")} == dict(
        pos_emb="rope", norm="rmsnorm", mlp="swiglu", qk_norm=True, tie_embeddings=False, zero_init=True)
    line = Hparams.from_config({**modern, "n_layer": 2, "head_dim": 32, "learning_rate": 1e-2, "batch_size": 32}).line()
    assert line.endswith("muon rope rmsnorm swiglu qk_norm=True tied=False zero_init=True")


def test_a_trial_config_from_before_the_architecture_takes_nanogpts():
    old = dict(n_layer=2, n_head=2, head_dim=16, dropout=0.0, learning_rate=1e-3, batch_size=16, block_size=64,
               weight_decay=0.1, optimizer="adamw")
    assert Hparams.from_config(old).model_config(65).architecture() == \
        GPTConfig().architecture() == "learned positions, layernorm, gelu MLP, tied lm_head"


def test_the_parametrization_is_searched_or_fixed(tmp_path):
    """--parametrization sp,mup searches it (each trial's model takes the drawn one, at --mup-base-width);
    --parametrization mup fixes it; a search.json or trial from before it takes sp."""
    cfg = _config("--parametrization", "sp,mup", "--head-dim", "16,32", "--mup-base-width", "64", tmp_path=tmp_path)
    assert cfg.space_specs()["parametrization"] == CategoricalDistribution(("sp", "mup"))
    models = sampled_models(cfg)
    assert {m.mup_base_width for m in models} == {64} and {m.parametrization for m in models} == {"sp", "mup"}
    fixed = _config("--parametrization", "mup", tmp_path=tmp_path)
    assert fixed.space["parametrization"] == "mup" and fixed.space["mup_base_width"] == 128
    line = Hparams.from_config({**fixed.space, "n_layer": 2, "n_head": 2, "learning_rate": 1e-2, "batch_size": 32})
    assert line.line().endswith(" mup") and "muP (base width 128)" in line.model_config(65).architecture()
    assert with_defaults({})["parametrization"] == "sp" and _config(tmp_path=tmp_path).space["parametrization"] == "sp"
    assert Hparams.from_config(dict(n_layer=2, n_head=2, head_dim=16, dropout=0.0, learning_rate=1e-3, batch_size=16,
                                    block_size=64, weight_decay=0.1)).model_config(65).parametrization == "sp"


def test_dry_run_shows_the_searched_architecture(run, tmp_path):
    proc = run("tune.search", "--dry-run", "--pos-emb", "learned,rope", "--mlp", "relu2", "--parametrization",
               "sp,mup", "--results-dir", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert '"pos_emb": {' in proc.stdout and '"mlp": "relu2"' in proc.stdout and '"parametrization": {' in proc.stdout
    assert "relu2 MLP" in proc.stdout  # the first trial's architecture
    assert not any(tmp_path.iterdir())


def test_optimizer_is_a_searched_hyperparameter():
    assert "optimizer" in HPARAMS
    assert parse_range("optimizer", "adamw,muon") == CategoricalDistribution(("adamw", "muon"))
    assert parse_range("optimizer", "muon") == "muon"
    for bad in ("sgd", "adamw,sgd", "1:2"):
        with pytest.raises(UserError, match="adamw or muon"):
            parse_range("optimizer", bad)
    hp = Hparams(n_layer=1, n_head=2, head_dim=8, dropout=0.0, learning_rate=1e-3, batch_size=4, block_size=16,
                 weight_decay=0.1, optimizer="muon")
    assert hp.train_config(budget_unit="steps", budget=10, eval_every=5).optimizer == "muon"
    assert PRESETS["shakespeare-cpu"].space["optimizer"] == CategoricalDistribution(("adamw", "muon"))
