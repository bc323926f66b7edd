"""The optimizer choice: Muon on the blocks' matrices beside AdamW, its state in checkpoints, exact resume."""

import functools

import pytest
import torch

from conftest import assert_resume_equals_uninterrupted, make_trainer, run_cli
from nanogpt.errors import UserError
from nanogpt.train import TrainConfig

# conftest's tiny trainer with two layers, dropout and Muon
make = functools.partial(make_trainer, n_layer=2, dropout=0.1, optimizer="muon")


def test_muon_takes_the_block_matrices_adamw_the_rest(data):
    t = make(data)
    adamw, muon = t.optimizers
    names = {id(p): n for n, p in t.model.named_parameters()}
    in_muon = {names[id(p)] for g in muon.param_groups for p in g["params"]}
    in_adamw = {names[id(p)] for g in adamw.param_groups for p in g["params"]}
    assert in_muon == {n for n, p in t.model.named_parameters() if n.startswith("transformer.h.") and p.dim() == 2}
    assert not in_muon & in_adamw and in_muon | in_adamw == set(names.values())
    assert {"transformer.wte.weight", "transformer.wpe.weight", "transformer.ln_f.weight"} <= in_adamw
    assert muon.param_groups[0]["adjust_lr_fn"] == "match_rms_adamw"
    assert type(muon).__module__ == "nanogpt.muon"
    assert len(make(data, optimizer="adamw").optimizers) == 1


def test_muon_with_the_model_options_keeps_embeddings_and_an_untied_head_in_adamw(data):
    t = make(data, model=dict(pos_emb="rope", norm="rmsnorm", mlp="swiglu", tie_embeddings=False, bias=False))
    adamw, muon = t.optimizers
    names = {id(p): n for n, p in t.model.named_parameters()}
    in_muon = {names[id(p)] for g in muon.param_groups for p in g["params"]}
    in_adamw = {names[id(p)] for g in adamw.param_groups for p in g["params"]}
    assert in_adamw == {"transformer.wte.weight", "lm_head.weight"}  # no wpe, no norm weights, no biases
    assert in_muon == {f"transformer.h.{i}.{m}.weight" for i in range(2)
                       for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")}
    assert t.model.transformer.h[0].mlp.c_fc.weight.shape == (96, 16)  # gate and up: one matrix to Muon


def test_muon_learns_and_differs_from_adamw(data):
    muon = make(data).run()
    adamw = make(data, optimizer="adamw").run()
    assert muon[-1]["val_loss"] < muon[0]["val_loss"] - 0.3
    assert muon[-1]["val_loss"] != pytest.approx(adamw[-1]["val_loss"], abs=1e-4)


def test_muon_resume_equals_uninterrupted(data, tmp_path):
    # the process dies right after its step-20 checkpoint
    straight, _ = assert_resume_equals_uninterrupted(functools.partial(make, data), tmp_path / "ckpt", 20)
    saved = torch.load(tmp_path / "ckpt" / "model.pt", weights_only=True)
    assert saved["muon"]["state"], "Muon's momentum buffers are in the checkpoint"
    assert [m["step"] for m in straight.history] == [10, 20, 30, 40]


def test_adamw_checkpoint_cannot_resume_as_muon(data, tmp_path):
    make(data, optimizer="adamw", max_steps=10).run(lambda m, t: t.save(tmp_path / "ckpt"))
    with pytest.raises(UserError, match="holds no Muon state"):
        make(data).restore(tmp_path / "ckpt")


def test_muon_is_ours_and_needs_no_torch_muon(monkeypatch, data):
    from nanogpt.muon import Muon

    monkeypatch.delattr(torch.optim, "Muon")
    assert isinstance(make(data, max_steps=2).optimizers[1], Muon)
    TrainConfig(optimizer="adamw")
    with pytest.raises(ValueError, match="optimizer"):
        TrainConfig(optimizer="sgd")


def test_train_cli_optimizer_muon(tmp_path):
    out = tmp_path / "run"
    proc = run_cli("nanogpt.train", "--dataset", "counting", "--optimizer", "muon", "--max-steps", "6",
                   "--eval-interval", "3", "--eval-iters", "1", "--n-layer", "1", "--n-embd", "16", "--n-head", "2",
                   "--block-size", "16", "--batch-size", "4", "--sample-tokens", "3", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert torch.load(out / "model.pt", weights_only=True)["muon"]["state"]


def test_muon_checkpoint_cannot_resume_as_adamw(data, tmp_path):
    make(data, max_steps=10).run(lambda m, t: t.save(tmp_path / "ckpt"))
    with pytest.raises(UserError, match="trained with the optimizer muon"):
        make(data, optimizer="adamw").restore(tmp_path / "ckpt")


def test_measuring_a_method_leaves_the_global_rng_alone():
    """The per-shape measurement ran on torch.randn: the first run in a process drew other dropout masks than the
    next one (a resumed run then differed from a straight one run first in its process)."""
    from nanogpt import muon

    muon.METHOD_CHOICES.measured.pop(("cpu", 3, 8, 24), None)
    torch.manual_seed(0)
    muon.METHOD_CHOICES.fastest(3, 8, 24, torch.device("cpu"), rounds=1)
    after = torch.rand(3)
    torch.manual_seed(0)
    assert torch.equal(after, torch.rand(3))
