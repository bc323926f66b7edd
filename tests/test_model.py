"""GPT: shapes, init, nanoGPT compatibility (names, logits, loss, greedy generation), generation, attention."""

import math

import pytest
import torch
import torch.nn.functional as F

from nanogpt.model import GPT, GPTConfig


def tiny(**kw) -> GPTConfig:
    return GPTConfig(**{"block_size": 16, "vocab_size": 23, "n_layer": 2, "n_head": 2, "n_embd": 16, **kw})


def test_shapes_training_and_inference():
    torch.manual_seed(0)
    m = GPT(tiny())
    x = torch.randint(0, 23, (3, 10))
    logits, loss = m(x, x)
    assert logits.shape == (3, 10, 23) and loss.dim() == 0
    logits, loss = m(x)
    assert logits.shape == (3, 1, 23) and loss is None
    with pytest.raises(ValueError, match="block_size"):
        m(torch.zeros(1, 17, dtype=torch.long))


def test_initial_loss_near_uniform():
    torch.manual_seed(0)
    cfg = tiny(vocab_size=65)
    _, loss = GPT(cfg)(torch.randint(0, 65, (8, 16)), torch.randint(0, 65, (8, 16)))
    assert abs(loss.item() - math.log(65)) < 0.3


def test_loss_drops_on_a_fixed_batch():
    torch.manual_seed(0)
    m = GPT(tiny())
    x = torch.randint(0, 23, (4, 16))
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    first = None
    for _ in range(60):
        _, loss = m(x[:, :-1], x[:, 1:])
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first * 0.5


def test_weight_tying_and_param_count():
    m = GPT(tiny())
    assert m.lm_head.weight is m.transformer.wte.weight
    total = sum(p.numel() for p in m.parameters())  # tied weights counted once
    assert m.get_num_params() == total - m.transformer.wpe.weight.numel()
    assert m.get_num_params(non_embedding=False) == total


def _nanogpt_keys(n_layer: int, bias: bool) -> set[str]:
    keys = {"transformer.wte.weight", "transformer.wpe.weight", "transformer.ln_f.weight", "lm_head.weight"}
    for i in range(n_layer):
        for mod in ("ln_1", "attn.c_attn", "attn.c_proj", "ln_2", "mlp.c_fc", "mlp.c_proj"):
            keys.add(f"transformer.h.{i}.{mod}.weight")
            if bias:
                keys.add(f"transformer.h.{i}.{mod}.bias")
    if bias:
        keys.add("transformer.ln_f.bias")
    return keys


@pytest.mark.parametrize("bias", [True, False])
def test_state_dict_names_are_nanogpts(bias):
    assert set(GPT(tiny(bias=bias)).state_dict()) == _nanogpt_keys(2, bias)


def _reference_forward(sd: dict, cfg: GPTConfig, idx: torch.Tensor) -> torch.Tensor:
    """nanoGPT's math written out from a state_dict: explicit causal softmax attention, exact GELU."""
    B, T = idx.shape
    C, H = cfg.n_embd, cfg.n_head
    b = (lambda k: sd.get(k)) if cfg.bias else (lambda k: None)
    x = sd["transformer.wte.weight"][idx] + sd["transformer.wpe.weight"][:T]
    mask = torch.tril(torch.ones(T, T, dtype=torch.bool))
    for i in range(cfg.n_layer):
        p = f"transformer.h.{i}."
        h = F.layer_norm(x, (C,), sd[p + "ln_1.weight"], b(p + "ln_1.bias"), 1e-5)
        q, k, v = F.linear(h, sd[p + "attn.c_attn.weight"], b(p + "attn.c_attn.bias")).split(C, dim=2)
        q, k, v = (t.view(B, T, H, C // H).transpose(1, 2) for t in (q, k, v))
        att = (q @ k.transpose(-2, -1)) / math.sqrt(C // H)
        att = att.masked_fill(~mask, float("-inf")).softmax(-1)
        y = (att @ v).transpose(1, 2).reshape(B, T, C)
        x = x + F.linear(y, sd[p + "attn.c_proj.weight"], b(p + "attn.c_proj.bias"))
        h = F.layer_norm(x, (C,), sd[p + "ln_2.weight"], b(p + "ln_2.bias"), 1e-5)
        h = F.gelu(F.linear(h, sd[p + "mlp.c_fc.weight"], b(p + "mlp.c_fc.bias")))
        x = x + F.linear(h, sd[p + "mlp.c_proj.weight"], b(p + "mlp.c_proj.bias"))
    x = F.layer_norm(x, (C,), sd["transformer.ln_f.weight"], b("transformer.ln_f.bias"), 1e-5)
    return x @ sd["transformer.wte.weight"].T  # lm_head tied to wte


@pytest.mark.parametrize("bias", [True, False])
def test_nanogpt_state_dict_loads_strict_and_gives_same_logits_loss_and_generation(bias):
    cfg = tiny(bias=bias)
    g = torch.Generator().manual_seed(1)
    # a "nanoGPT checkpoint": every tensor random, lm_head tied to wte as nanoGPT saves it
    sd = {k: torch.randn(v.shape, generator=g) * 0.2 for k, v in GPT(cfg).state_dict().items()}
    sd["lm_head.weight"] = sd["transformer.wte.weight"]
    m = GPT(cfg)
    m.load_state_dict(sd, strict=True)
    m.eval()
    idx = torch.randint(0, cfg.vocab_size, (2, 12), generator=g)
    targets = torch.randint(0, cfg.vocab_size, (2, 12), generator=g)
    ref = _reference_forward(sd, cfg, idx)
    logits, loss = m(idx, targets)
    torch.testing.assert_close(logits, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(loss, F.cross_entropy(ref.view(-1, cfg.vocab_size), targets.view(-1)), atol=1e-5, rtol=1e-5)
    # greedy generation, beyond block_size so that the context is cropped
    out = m.generate(idx[:1, :4], 20, temperature=0)
    seq = idx[:1, :4]
    for _ in range(20):
        nxt = _reference_forward(sd, cfg, seq[:, -cfg.block_size:])[:, -1].argmax(-1, keepdim=True)
        seq = torch.cat([seq, nxt], 1)
    assert torch.equal(out, seq)


def test_scaled_residual_init():
    torch.manual_seed(0)
    m = GPT(GPTConfig(block_size=32, vocab_size=50, n_layer=4, n_head=4, n_embd=128))
    std = m.transformer.h[0].attn.c_proj.weight.std().item()
    assert std == pytest.approx(0.02 / math.sqrt(2 * 4), rel=0.1)
    assert m.transformer.h[0].attn.c_attn.weight.std().item() == pytest.approx(0.02, rel=0.1)


@pytest.mark.parametrize("kw", [dict(n_embd=15, n_head=2), dict(dropout=1.0), dict(dropout="0.1"), dict(n_layer=0),
                                dict(vocab_size=-1)])
def test_config_errors(kw):
    with pytest.raises(ValueError):
        tiny(**kw)


def test_generate_options():
    torch.manual_seed(0)
    m = GPT(tiny()).eval()
    idx = torch.zeros(1, 3, dtype=torch.long)
    assert m.generate(idx, 30).shape == (1, 33)  # 33 > block_size: the context is cropped
    with pytest.raises(ValueError):
        m.generate(idx, 1, temperature=-1)
    a = m.generate(idx, 10, generator=torch.Generator().manual_seed(5))
    b = m.generate(idx, 10, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    assert torch.equal(m.generate(idx, 10, temperature=0), m.generate(idx, 10, temperature=0.7, top_k=1))


def test_attention_maps():
    torch.manual_seed(0)
    m = GPT(tiny())
    maps = m.attention_maps(torch.randint(0, 23, (1, 9)))
    assert maps.shape == (2, 2, 9, 9)
    torch.testing.assert_close(maps.sum(-1), torch.ones(2, 2, 9))
    assert torch.all(maps.triu(1) == 0)


def test_flops_per_token_is_nanogpts_formula():
    m = GPT(tiny())
    assert m.flops_per_token() == 6 * m.get_num_params() + 12 * 2 * 2 * 8 * 16
