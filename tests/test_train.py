"""The training loop: schedule, metrics, exact resume, divergence, checkpoints; and the nanogpt CLIs."""

import dataclasses
import functools
import math

import pytest
import torch

from conftest import assert_one_line_error, assert_resume_equals_uninterrupted, make_trainer, run_cli
from nanogpt.model import GPTConfig
from nanogpt.checkpoint import CheckpointError, load_model
from nanogpt.train import TrainConfig, lr_at

METRICS = {"step", "train_loss", "val_loss", "val_bpc", "tokens_seen", "tokens_per_s", "n_params", "elapsed_s"}


# every GPTConfig option away from nanoGPT's
ALL_OPTIONS = dict(pos_emb="rope", norm="rmsnorm", mlp="swiglu", qk_norm=True, tie_embeddings=False,
                   logit_softcap=15.0, zero_init=True, parametrization="mup", mup_base_width=8)


make = make_trainer  # conftest: a 1-layer model, 40 steps of 8, an evaluation every 10


@pytest.mark.parametrize("kw", [dict(learning_rate=0), dict(max_steps=0), dict(min_lr=1.0), dict(device="tpu"),
                                dict(warmup_steps=50, lr_decay_steps=10), dict(beta2=1.0),
                                dict(train_loss_from="test")])
def test_invalid_train_config_raises_value_error(kw):
    with pytest.raises(ValueError):
        TrainConfig(**kw)


def test_lr_schedule():
    cfg = TrainConfig(max_steps=1000, learning_rate=1e-3, warmup_steps=100)
    assert lr_at(0, cfg) < lr_at(50, cfg) < lr_at(99, cfg) <= 1e-3
    assert lr_at(100, cfg) == pytest.approx(1e-3)
    assert lr_at(1000, cfg) == pytest.approx(1e-4) and lr_at(5000, cfg) == pytest.approx(1e-4)
    assert lr_at(550, cfg) == pytest.approx((1e-3 + 1e-4) / 2)
    assert TrainConfig(max_steps=30).fixed_warmup == 3  # a short run still warms up


def test_train_config_is_frozen_and_saves_what_it_derives():
    cfg = TrainConfig(budget_unit="tokens", budget=1000, schedule="wsd", cooldown_rungs=[300, 100])
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.min_lr = 1e-4
    assert cfg.min_lr is None and cfg.cooldown_rungs == [300, 100]  # as given
    saved = cfg.to_dict()
    assert (saved["min_lr"], saved["eval_every"], saved["cooldown_rungs"]) == (1e-4, 100.0, [100.0, 300.0])
    assert TrainConfig(**saved).to_dict() == saved
    steps = TrainConfig(max_steps=500).to_dict()
    assert (steps["warmup_steps"], steps["lr_decay_steps"], steps["eval_every"]) == (50, 500, None)


def test_loop_reports_metrics_and_learns(data):
    seen = []
    history = make(data).run(lambda m, t: seen.append(m))
    assert [m["step"] for m in seen] == [10, 20, 30, 40] and seen == history
    assert all(METRICS <= set(m) for m in seen)
    assert seen[-1]["status"] == "finished" and seen[0]["status"] == "running"
    assert seen[-1]["val_loss"] < seen[0]["val_loss"]
    assert seen[0]["val_loss"] < math.log(data[1].vocab_size) + 0.5
    assert seen[-1]["tokens_seen"] == 40 * 8 * 16
    assert seen[-1]["val_bpc"] == pytest.approx(seen[-1]["val_loss"] / math.log(2) / data[0].val_chars_per_token)


def test_metrics_split_elapsed_into_training_evaluation_and_branches(data):
    """benchmarks/search_overhead.py decomposes a trial's seconds from these."""
    history = make(data, schedule="wsd", cooldown_rungs=[20.0]).run()
    last = history[-1]
    assert last["train_s"] > 0 and last["eval_s"] > 0 and last["branch_s"] > 0
    assert last["train_s"] + last["eval_s"] + last["branch_s"] <= last["elapsed_s"] + 1e-9
    assert [m["eval_s"] for m in history] == sorted(m["eval_s"] for m in history)


def test_train_loss_from_steps_evaluates_val_only(data):
    t = make(data, train_loss_from="steps")
    step_losses, asked = [], []
    forward, evaluate = t.model.forward, t.evaluate

    def recording_forward(idx, targets=None):
        logits, loss = forward(idx, targets)
        if t.model.training:
            step_losses.append(loss.item())
        return logits, loss

    t.model.forward = recording_forward
    t.evaluate = lambda splits=("train", "val"): asked.append(splits) or evaluate(splits)
    history = t.run()
    assert asked == [("val",)] * 4
    for i, m in enumerate(history):
        assert m["train_loss"] == pytest.approx(sum(step_losses[10 * i:10 * i + 10]) / 10)
    # the same training either way: only what train_loss means differs
    assert [m["val_loss"] for m in history] == [m["val_loss"] for m in make(data).run()]


@pytest.mark.parametrize("opts", [dict(train_loss_from="eval"), dict(train_loss_from="steps"),
                                  # every model option, under Muon and wsd with cooldown branches
                                  dict(model=ALL_OPTIONS, optimizer="muon", schedule="wsd", cooldown_rungs=[20.0]),
                                  dict(model=dict(parametrization="mup", mup_base_width=8), schedule="wsd",
                                       cooldown_rungs=[20.0])],
                         ids=["eval", "steps", "all-options", "mup-adamw"])
def test_resume_equals_uninterrupted(data, tmp_path, opts):
    opts = dict(dropout=0.1, **opts)
    # the process dies right after its step-20 checkpoint
    straight, _ = assert_resume_equals_uninterrupted(functools.partial(make, data, **opts), tmp_path / "ckpt", 20)
    assert len(straight.history) == (3 if "cooldown_rungs" in opts else 4)  # branches take their steps


def test_same_seed_same_run(data):
    a, b = make(data).run(), make(data).run()
    assert [m["val_loss"] for m in a] == [m["val_loss"] for m in b]
    c = make(data, seed=7).run()
    assert [m["val_loss"] for m in a] != [m["val_loss"] for m in c]


def test_divergence_ends_the_run_without_raising(data):
    history = make(data, learning_rate=1e30, grad_clip=0.0, max_steps=30).run()
    assert history[-1]["status"] == "diverged" and math.isinf(history[-1]["val_loss"])
    assert history[-1]["step"] < 30


def test_nonfinite_validation_loss_is_divergence(data, monkeypatch):
    t = make(data)
    monkeypatch.setattr(t, "evaluate", lambda: {"train": 1.0, "val": float("nan")})
    history = t.run()
    assert len(history) == 1 and history[0]["status"] == "diverged" and math.isinf(history[0]["val_loss"])


def test_corrupt_tokenizer_is_a_checkpoint_error(data, tmp_path):
    t = make(data, max_steps=10)
    t.run()
    d = t.save(tmp_path / "c")
    (d / "tokenizer.json").write_text('{"kind": "char"}')
    with pytest.raises(CheckpointError, match="corrupt tokenizer.json"):
        load_model(d)


def test_time_budget(data):
    history = make(data, max_steps=100000, eval_interval=100000, time_budget_s=0.5).run()
    assert history[-1]["status"] == "time_budget" and history[-1]["step"] < 100000


def test_checkpoint_files_and_errors(data, tmp_path):
    t = make(data)
    t.run()
    d = t.save(tmp_path / "c")
    assert {p.name for p in d.iterdir()} == {"model.pt", "config.json", "tokenizer.json"}
    model, tok, meta = load_model(d)
    assert meta["step"] == 40 and not model.training
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "nope")
    (tmp_path / "half").mkdir()
    with pytest.raises(CheckpointError, match="missing"):
        load_model(tmp_path / "half")


@pytest.mark.parametrize("option", [dict(pos_emb="rope"), dict(norm="rmsnorm"), dict(mlp="relu2"), dict(mlp="swiglu"),
                                    dict(qk_norm=True), dict(tie_embeddings=False), dict(logit_softcap=3.0),
                                    dict(zero_init=True), dict(parametrization="mup", mup_base_width=8)],
                         ids=lambda kw: "-".join(map(str, kw.values())))
def test_each_option_saves_and_loads(data, tmp_path, option):
    t = make(data, model=option, max_steps=10)
    t.run()
    model, _, meta = load_model(t.save(tmp_path / "c"))
    assert GPTConfig(**meta["model"]) == t.model_cfg and all(meta["model"][k] == v for k, v in option.items())
    x = torch.randint(0, data[1].vocab_size, (2, 16))
    t.model.eval()
    torch.testing.assert_close(model(x, x)[0], t.model(x, x)[0])
    if not option.get("tie_embeddings", True):  # loaded untied, not tied to whichever of the two came last
        assert model.lm_head.weight is not model.transformer.wte.weight
        torch.testing.assert_close(model.lm_head.weight, t.model.lm_head.weight)


def test_a_config_json_from_before_the_options_loads_and_resumes(data, tmp_path):
    import json

    t = make(data, max_steps=20)
    t.run(lambda m, tr: tr.save(tmp_path / "c") if m["step"] == 10 else None)
    meta = json.loads((tmp_path / "c" / "config.json").read_text())
    for key in ALL_OPTIONS | {"rope_theta": 0}:
        del meta["model"][key]
    (tmp_path / "c" / "config.json").write_text(json.dumps(meta))
    assert load_model(tmp_path / "c")[2]["model"].keys().isdisjoint(ALL_OPTIONS)
    resumed = make(data, max_steps=20)
    resumed.restore(tmp_path / "c")
    assert [m["val_loss"] for m in resumed.run()] == [m["val_loss"] for m in t.history]


# --- muP: learning rates per group --------------------------------------------------------------------------------


def _lrs(trainer) -> list[list[float]]:
    return [[g["lr"] for g in opt.param_groups] for opt in trainer.optimizers]


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_mup_at_its_base_width_trains_as_sp(data, optimizer):
    """Same seed, same init, same learning rates (AdamW's hidden matrices in a group of their own), same losses."""
    sp = make(data, optimizer=optimizer, max_steps=20)
    mup = make(data, model=dict(parametrization="mup", mup_base_width=16), optimizer=optimizer, max_steps=20)
    assert [m["val_loss"] for m in sp.run()] == [m["val_loss"] for m in mup.run()]
    assert {lr for opt in _lrs(sp) for lr in opt} == {lr for opt in _lrs(mup) for lr in opt} == {sp.plan.lr(19)}
    for a, b in zip(sp.model.state_dict().values(), mup.model.state_dict().values()):
        assert torch.equal(a, b)


def test_mup_scales_the_hidden_matrices_learning_rate_by_width():
    """n_embd 256 over a base of 128: AdamW gives the blocks' matrices lr / 2 (eps / 2 too), Muon lr / sqrt(2); the
    embeddings, norms and biases keep lr."""
    from nanogpt.model import GPT, hidden_matrices
    from nanogpt.train import configure_optimizer

    model = GPT(GPTConfig(block_size=16, vocab_size=23, n_layer=1, n_head=4, n_embd=256, parametrization="mup",
                          mup_base_width=128))
    hidden = {id(p) for p in hidden_matrices(model)}
    cpu = torch.device("cpu")
    (adamw,) = configure_optimizer(model, TrainConfig(learning_rate=1e-2), cpu)
    scales = {(g["lr_scale"], g["eps"], all(id(p) in hidden for p in g["params"])) for g in adamw.param_groups}
    assert scales == {(1.0, 5e-9, False), (0.5, 5e-9, True)}
    assert sum(len(g["params"]) for g in adamw.param_groups if g["lr_scale"] == 0.5) == 4
    adamw, muon = configure_optimizer(model, TrainConfig(learning_rate=1e-2, optimizer="muon"), cpu)
    assert {id(p) for p in muon.param_groups[0]["params"]} == hidden
    assert muon.param_groups[0]["lr_scale"] == pytest.approx(2 ** -0.5)
    assert {g["lr_scale"] for g in adamw.param_groups} == {1.0}


def test_a_rope_config_does_not_load_learned_weights(data, tmp_path):
    import json

    d = make(data, max_steps=10).save(tmp_path / "c")
    meta = json.loads((d / "config.json").read_text())
    meta["model"]["pos_emb"] = "rope"
    (d / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="pos_emb=rope but model.pt holds weights for pos_emb=learned"):
        load_model(d)


def test_train_cli_takes_the_model_options(tmp_path):
    out = tmp_path / "run"
    proc = run_cli("nanogpt.train", "--dataset", "counting", "--max-steps", "4", "--eval-interval", "4",
                   "--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "16", "--batch-size", "4",
                   "--eval-iters", "1", "--out", str(out), "--sample-tokens", "3", "--compile", "off",
                   "--pos-emb", "rope", "--norm", "rmsnorm", "--mlp", "relu2", "--qk-norm", "true",
                   "--tie-embeddings", "false", "--logit-softcap", "30", "--zero-init", "true", "--rope-theta", "500",
                   "--parametrization", "mup", "--mup-base-width", "8")
    assert proc.returncode == 0, proc.stderr
    _, _, meta = load_model(out)
    assert {k: meta["model"][k] for k in ALL_OPTIONS | {"rope_theta": 0}} == dict(
        pos_emb="rope", norm="rmsnorm", mlp="relu2", qk_norm=True, tie_embeddings=False, logit_softcap=30.0,
        zero_init=True, rope_theta=500.0, parametrization="mup", mup_base_width=8)
    assert_one_line_error(run_cli("nanogpt.train", "--dataset", "counting", "--pos-emb", "rope", "--n-head", "2",
                                  "--n-embd", "6", "--out", str(tmp_path / "odd")), "even")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    proc = run_cli("nanogpt.train", "--dataset", "counting", "--max-steps", "30", "--eval-interval", "15",
                   "--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "16", "--batch-size", "8",
                   "--eval-iters", "2", "--out", str(out), "--sample-tokens", "20")
    assert proc.returncode == 0, proc.stderr
    return out, proc


def test_train_cli(trained):
    out, proc = trained
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "samples before training" in proc.stdout and "samples after training" in proc.stdout
    assert "step     30" in proc.stdout


def test_train_cli_refuses_to_overwrite_and_resumes(trained):
    out, _ = trained
    before = (out / "model.pt").read_bytes()
    proc = run_cli("nanogpt.train", "--dataset", "counting", "--out", str(out))
    assert_one_line_error(proc, "--resume")
    assert (out / "model.pt").read_bytes() == before
    proc = run_cli("nanogpt.train", "--out", str(out), "--resume", "--sample-tokens", "5")
    assert proc.returncode == 0 and "resuming" in proc.stdout and "data: counting" in proc.stdout  # its own data
    assert_one_line_error(run_cli("nanogpt.train", "--dataset", "abc", "--out", str(out), "--resume"), "trained on counting")


def test_sample_cli_same_seed_same_text(trained):
    out, _ = trained
    args = ["--checkpoint", str(out), "--prompt", "Number 7", "--max-new-tokens", "20", "--seed", "3"]
    a, b = run_cli("nanogpt.sample", *args), run_cli("nanogpt.sample", *args)
    assert a.returncode == 0 and a.stdout.startswith("Number 7") and a.stdout == b.stdout
    c = run_cli("nanogpt.sample", "--checkpoint", str(out), "--prompt", "Number 7", "--num-samples", "2", "--seed", "3")
    assert c.stdout.count("Number 7") == 2


def test_attention_cli(trained, tmp_path):
    out, _ = trained
    png = tmp_path / "att.png"
    proc = run_cli("nanogpt.attention", "--checkpoint", str(out), "--text", "Number 7 comes", "--out", str(png))
    assert proc.returncode == 0 and png.read_bytes()[:4] == b"\x89PNG"
    assert_one_line_error(run_cli("nanogpt.attention", "--checkpoint", str(out), "--text", "x", "--layer", "5"), "layer")


def test_train_cli_bad_data(tmp_path):
    assert_one_line_error(run_cli("nanogpt.train", "--data-file", str(tmp_path / "none.txt"), "--out", str(tmp_path / "o")),
                          "does not exist")
    assert_one_line_error(run_cli("nanogpt.train", "--dataset", "nope", "--out", str(tmp_path / "o")), "unknown dataset")
    assert not (tmp_path / "o").exists()


def test_train_help_shows_each_fields_comment(capsys):
    """`python -m nanogpt.train --help` documents each flag with its field's comment, kept once in the source."""
    from nanogpt.cli import field_comments
    from nanogpt.train import main as train_main

    docs = field_comments(TrainConfig)
    assert docs["grad_clip"] == "max global gradient norm; 0 disables clipping"
    assert docs["budget_unit"].startswith("what the training budget counts")  # the block above the field
    assert docs["seed"].startswith("model initialisation, batches and dropout")

    @dataclasses.dataclass
    class Bare:
        documented: int = 1  # said once
        bare: int = 2

    assert field_comments(Bare) == {"documented": "said once"}  # no comment, no invented text
    with pytest.raises(SystemExit) as e:
        train_main(["--help"])
    assert e.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "max global gradient norm; 0 disables clipping (default: 1.0)" in out
    assert "longest context, in tokens (default: 64)" in out  # GPTConfig's, with the CLI's own default


def test_a_flops_budget_counts_muons_newton_schulz(data):
    """A FLOPs budget counts what a step costs: forward and backward, and Muon's Newton-Schulz (issue 26: at nanoGPT's
    recipe about 2.3 GFLOP a step against 3.9 for forward and backward, free in the search's eyes before)."""
    from nanogpt.model import GPT
    from nanogpt.muon import newton_schulz_flops
    from nanogpt.train import optimizer_flops

    assert newton_schulz_flops(torch.Size([384, 128])) == 5 * (4 * 128 * 128 * 384 + 2 * 128**3)
    with torch.device("meta"):
        recipe = GPT(GPTConfig(n_layer=4, n_head=4, n_embd=128, block_size=64, vocab_size=65))
    assert optimizer_flops(recipe, "muon") == pytest.approx(2.35e9, rel=0.01)
    assert optimizer_flops(recipe, "adamw") == 0
    budget = dict(budget_unit="flops", budget=200 * 8 * 16 * 60_000.0, eval_every=50 * 8 * 16 * 60_000.0)
    adamw, muon = make(data, optimizer="adamw", **budget), make(data, optimizer="muon", **budget)
    assert muon.optimizer_flops > 0
    assert muon.step_spend == pytest.approx(adamw.step_spend + muon.optimizer_flops)
    assert muon.planned_steps < adamw.planned_steps
    muon.run()
    assert muon.spend == pytest.approx(muon.step * muon.step_spend) and muon.spend <= budget["budget"]
