"""nanogpt.muon.Muon: torch.optim.Muon's updates, batched, in the method measured fastest; its choice is saved."""

import pytest
import torch

from nanogpt import muon as M

SHAPES = [(48, 16), (16, 16), (16, 64), (64, 16), (16, 48)]  # qkv, proj, mlp in and out, and one more


def torch_ns_fp32(grad, ns_coefficients, ns_steps, eps):
    """torch.optim.Muon's Newton-Schulz in fp32 instead of bf16: the reference for the update rule."""
    a, b, c = ns_coefficients
    X = grad.float()
    if grad.size(0) > grad.size(1):
        X = X.T
    X = X / X.norm().clamp(min=eps)
    for _ in range(ns_steps):
        A = X @ X.T
        X = torch.addmm(X, torch.addmm(A, A, A, beta=b, alpha=c), X, beta=a)
    return X.T if grad.size(0) > grad.size(1) else X


def run(opt_cls, steps=4, **kw):
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(*s) * 0.1) for s in SHAPES]
    opt = opt_cls(params, lr=0.02, weight_decay=0.1, adjust_lr_fn=kw.pop("adjust_lr_fn", "match_rms_adamw"), **kw)
    for step in range(steps):
        g = torch.Generator().manual_seed(step)
        for p in params:
            p.grad = torch.randn(p.shape, generator=g)
        opt.step()
    return params, opt


@pytest.mark.parametrize("method", ["float32", "float32-gram"])
@pytest.mark.parametrize("adjust_lr_fn,nesterov", [("match_rms_adamw", True), ("original", False)])
def test_same_updates_as_torch_muon_in_fp32(monkeypatch, method, adjust_lr_fn, nesterov):
    monkeypatch.setattr(torch.optim._muon, "_zeropower_via_newtonschulz", torch_ns_fp32)
    ref, _ = run(torch.optim.Muon, adjust_lr_fn=adjust_lr_fn, nesterov=nesterov)
    ours, _ = run(M.Muon, adjust_lr_fn=adjust_lr_fn, nesterov=nesterov, ns_method=method)
    for p, q in zip(ref, ours):
        torch.testing.assert_close(q, p, atol=2e-5, rtol=1e-4)


def test_bf16_method_matches_torch_muon():
    ref, _ = run(torch.optim.Muon)
    ours, _ = run(M.Muon, ns_method="bfloat16")
    for p, q in zip(ref, ours):
        torch.testing.assert_close(q, p, atol=2e-3, rtol=0)


def test_methods_orthogonalize_alike():
    X = torch.randn(3, 16, 64, generator=torch.Generator().manual_seed(0))
    ref = M.orthogonalize(X.double(), "float32")
    torch.testing.assert_close(M.orthogonalize(X, "float32-gram"), ref, atol=1e-4, rtol=0)
    torch.testing.assert_close(M.orthogonalize(X, "bfloat16").float(), ref, atol=3e-2, rtol=0)
    # each matrix of the stack on its own, as torch.optim.Muon does it
    torch.testing.assert_close(ref[1], torch_ns_fp32(X[1], M.NS_COEFFICIENTS, M.NS_STEPS, M.EPS), atol=1e-5, rtol=0)


def test_measured_choice_is_saved_and_restored():
    params, opt = run(M.Muon, steps=1)
    chosen = opt.param_groups[0]["ns_methods"]
    assert set(chosen) == {"16x48", "16x16", "16x64"} and set(chosen.values()) <= set(M.METHODS)
    sd = opt.state_dict()
    assert torch.load(_roundtrip(sd), weights_only=True)["param_groups"][0]["ns_methods"] == chosen
    forced = {k: "float32" if v != "float32" else "float32-gram" for k, v in chosen.items()}
    sd["param_groups"][0]["ns_methods"] = forced
    other = M.Muon(params, lr=0.02)
    other.load_state_dict(sd)
    params[0].grad = torch.randn(params[0].shape)
    other.step()
    assert other.param_groups[0]["ns_methods"] == forced, "a resumed run keeps the saved methods"


def test_loads_a_torch_muon_checkpoint():
    params, ref = run(torch.optim.Muon, steps=1)
    ours = M.Muon(params, lr=0.02, adjust_lr_fn="match_rms_adamw")
    ours.load_state_dict(ref.state_dict())
    for p in params:
        p.grad = torch.ones_like(p)
    ours.step()
    assert ours.param_groups[0]["ns_methods"]


def _roundtrip(obj):
    import io

    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return buf
