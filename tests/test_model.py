"""GPT: shapes, init, nanoGPT compatibility (names, logits, loss, greedy generation), generation, attention."""

import math

import pytest
import torch
import torch.nn.functional as F

from nanogpt.model import GPT, GPTConfig, apply_rotary, swiglu_hidden


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
def test_invalid_gpt_config_raises_value_error(kw):
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


# --- today's options (GPTConfig after bias): each off by default ---------------------------------------------------

OPTIONS = {
    "rope": dict(pos_emb="rope"),
    "rmsnorm": dict(norm="rmsnorm"),
    "relu2": dict(mlp="relu2"),
    "swiglu": dict(mlp="swiglu"),
    "qk_norm": dict(qk_norm=True),
    "untied": dict(tie_embeddings=False),
    "softcap": dict(logit_softcap=5.0),
    "zero_init": dict(zero_init=True),
    "all": dict(pos_emb="rope", norm="rmsnorm", mlp="swiglu", qk_norm=True, tie_embeddings=False,
                logit_softcap=15.0, zero_init=True, bias=False),
    "mup": dict(parametrization="mup", mup_base_width=8),
}


@pytest.mark.parametrize("kw", OPTIONS.values(), ids=OPTIONS.keys())
def test_each_option_forward_shape_and_initial_loss(kw):
    torch.manual_seed(0)
    m = GPT(tiny(vocab_size=65, **kw))
    x = torch.randint(0, 65, (3, 16))
    logits, loss = m(x, torch.randint(0, 65, (3, 16)))
    assert logits.shape == (3, 16, 65)
    assert abs(loss.item() - math.log(65)) < 0.3
    logits, loss = m(x[:, :5])
    assert logits.shape == (3, 1, 65) and loss is None
    m(x, x)[1].backward()
    assert all(p.grad is not None for p in m.parameters())


def test_the_default_config_is_nanogpts():
    cfg = GPTConfig()
    assert (cfg.pos_emb, cfg.norm, cfg.mlp, cfg.qk_norm, cfg.tie_embeddings, cfg.logit_softcap, cfg.zero_init,
            cfg.parametrization) == ("learned", "layernorm", "gelu", False, True, 0.0, False, "sp")
    names = [n for n, _ in GPT(tiny()).named_modules()]
    assert "rotary" not in " ".join(names) and "transformer.h.0.mlp.gelu" in names


def test_option_module_trees_keep_nanogpts_names():
    rope = set(GPT(tiny(pos_emb="rope")).state_dict())
    assert rope == _nanogpt_keys(2, True) - {"transformer.wpe.weight"}  # no position table, no rotary buffer
    rms = set(GPT(tiny(norm="rmsnorm")).state_dict())
    assert rms == {k for k in _nanogpt_keys(2, True) if ".ln_" not in k and not k.startswith("transformer.ln_f")}
    m = GPT(tiny(mlp="swiglu"))
    assert m.transformer.h[0].mlp.c_fc.weight.shape == (2 * swiglu_hidden(16), 16)
    assert m.transformer.h[0].mlp.c_proj.weight.shape == (16, swiglu_hidden(16))
    untied = GPT(tiny(tie_embeddings=False))
    assert untied.lm_head.weight is not untied.transformer.wte.weight
    assert set(untied.state_dict()) == _nanogpt_keys(2, True)
    assert untied.lm_head.weight.std().item() == pytest.approx(0.02, rel=0.2)


def test_swiglu_hidden_is_eight_thirds_rounded_up_to_eight():
    assert [swiglu_hidden(c) for c in (16, 64, 96, 768)] == [48, 176, 256, 2048]
    assert all(swiglu_hidden(c) % 8 == 0 and swiglu_hidden(c) >= 8 * c / 3 - 1 for c in range(8, 400, 8))


@pytest.mark.parametrize("kw", OPTIONS.values(), ids=OPTIONS.keys())
def test_param_count_and_flops_follow_each_option(kw):
    cfg = tiny(**kw)
    m = GPT(cfg)
    total = sum(p.numel() for p in m.parameters())
    lookups = (0 if cfg.pos_emb == "rope" else 16 * 16) + (0 if cfg.tie_embeddings else 23 * 16)
    assert m.get_num_params() == total - lookups
    C, B = 16, int(cfg.bias)
    hidden = swiglu_hidden(C) if cfg.mlp == "swiglu" else 4 * C
    fc_out = 2 * hidden if cfg.mlp == "swiglu" else hidden
    norm = 0 if cfg.norm == "rmsnorm" else C * (1 + B)
    block = 2 * norm + C * 3 * C + 3 * C * B + C * C + C * B + C * fc_out + fc_out * B + hidden * C + C * B
    assert m.get_num_params() == 2 * block + norm + 23 * 16
    assert m.flops_per_token() == 6 * m.get_num_params() + 12 * 2 * 2 * 8 * 16


def test_zero_init_zeroes_the_output_projections_and_an_untied_head():
    m = GPT(tiny(zero_init=True, tie_embeddings=False, bias=False))
    zeros = [n for n, p in m.named_parameters() if not p.any()]
    assert sorted(zeros) == sorted([f"transformer.h.{i}.{s}.c_proj.weight" for i in range(2) for s in ("attn", "mlp")]
                                   + ["lm_head.weight"])
    x = torch.randint(0, 23, (2, 8))
    assert m(x, x)[1].item() == pytest.approx(math.log(23))  # uniform predictions
    tied = GPT(tiny(zero_init=True))
    assert tied.lm_head.weight.any()  # the tied head is the embedding: not zeroed


def test_logit_softcap_bounds_logits_in_training_and_sampling():
    torch.manual_seed(0)
    m = GPT(tiny(logit_softcap=0.5))
    with torch.no_grad():
        m.lm_head.weight.mul_(1000)
    x = torch.randint(0, 23, (2, 8))
    logits, _ = m(x, x)
    assert logits.abs().max() <= 0.5 and logits.abs().max() > 0.49
    assert m(x)[0].abs().max() <= 0.5
    plain = GPT(tiny())
    plain.load_state_dict(m.state_dict())
    torch.testing.assert_close(m(x, x)[0], 0.5 * torch.tanh(plain(x, x)[0] / 0.5))


@pytest.mark.parametrize("kw", [dict(pos_emb="alibi"), dict(norm="batchnorm"), dict(mlp="geglu"), dict(qk_norm=1),
                                dict(tie_embeddings="no"), dict(logit_softcap=-1.0), dict(rope_theta=0.0),
                                dict(pos_emb="rope", n_embd=6, n_head=2), dict(parametrization="mu-p"),
                                dict(mup_base_width=0), dict(mup_base_width=64.0)])
def test_option_errors(kw):
    with pytest.raises(ValueError, match=next(iter(kw)) if "n_embd" not in kw else "even"):
        tiny(**kw)


# --- muP (parametrization "mup"): at its base width it is sp ----------------------------------------------------------


@pytest.mark.parametrize("kw", [{}, OPTIONS["all"]], ids=["nanogpt", "all"])
def test_mup_at_its_base_width_is_sp_logit_for_logit(kw):
    x = torch.randint(0, 23, (3, 16), generator=torch.Generator().manual_seed(1))
    torch.manual_seed(0)
    sp = GPT(tiny(**kw))
    torch.manual_seed(0)
    mup = GPT(tiny(parametrization="mup", mup_base_width=16, **kw))
    assert torch.equal(sp(x, x)[0], mup(x, x)[0]) and torch.equal(sp(x)[0], mup(x)[0])
    assert torch.equal(sp.attention_maps(x[:1]), mup.attention_maps(x[:1]))


def test_mup_scales_hidden_init_attention_and_output_by_width():
    """n_embd 256 over a base of 128: width_mult 2; head size 64 against the base's 32."""
    cfg = tiny(n_embd=256, n_head=4, vocab_size=65, parametrization="mup", mup_base_width=128)
    assert cfg.width_mult == 2.0 and cfg.attn_scale == pytest.approx(math.sqrt(32) / 64)
    assert "muP (base width 128)" in cfg.architecture() and "muP" not in tiny().architecture()
    torch.manual_seed(0)
    sp = GPT(tiny(n_embd=256, n_head=4, vocab_size=65))
    torch.manual_seed(0)
    mup = GPT(cfg)
    ratio = {n: (p.std() / dict(sp.named_parameters())[n].std()).item() for n, p in mup.named_parameters()}
    for name in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"):
        assert ratio[f"transformer.h.0.{name}.weight"] == pytest.approx(1 / math.sqrt(2), rel=1e-5)
    assert ratio["transformer.wte.weight"] == 1.0 and ratio["transformer.wpe.weight"] == 1.0
    x = torch.randint(0, 65, (2, 16))
    mup.load_state_dict(sp.state_dict())  # the same weights: logits halved (ln_f's output enters lm_head / 2)
    sp.transformer.h, mup.transformer.h = torch.nn.ModuleList(), torch.nn.ModuleList()
    torch.testing.assert_close(mup(x, x)[0], sp(x, x)[0] / 2)
    torch.testing.assert_close(mup(x)[0], sp(x)[0] / 2)  # sampling sees the logits training did


def test_mup_attention_maps_use_its_scale():
    torch.manual_seed(0)
    m = GPT(tiny(parametrization="mup", mup_base_width=8)).eval()
    attn, x = m.transformer.h[0].attn, torch.randn(1, 7, 16)
    q, k, _ = attn._qkv(x)
    ref = ((q @ k.transpose(-2, -1)) * 0.25).masked_fill(~torch.ones(7, 7, dtype=torch.bool).tril(), float("-inf"))
    torch.testing.assert_close(attn.attention_weights(x), ref.softmax(-1))  # sqrt(8 / 2) / 8 = 0.25


def _rope_reference(x: torch.Tensor, theta: float) -> torch.Tensor:
    """RoFormer's rotation in complex form (x: (B, nh, T, hs)): channel i and i + hs/2 are one complex number,
    turned by the angle pos * theta^(-2i/hs), computed in float64."""
    hs, T = x.size(-1), x.size(-2)
    freqs = theta ** (-torch.arange(0, hs // 2, dtype=torch.float64) * 2 / hs)
    angles = torch.outer(torch.arange(T, dtype=torch.float64), freqs)  # (T, hs/2)
    z = torch.complex(x[..., : hs // 2].double(), x[..., hs // 2:].double()) * torch.polar(torch.ones_like(angles), angles)
    return torch.cat((z.real, z.imag), dim=-1).to(x.dtype)


@pytest.mark.parametrize("qk_norm", [False, True])
def test_rope_attention_equals_a_reference_rotary(qk_norm):
    torch.manual_seed(0)
    cfg = tiny(pos_emb="rope", rope_theta=500.0, qk_norm=qk_norm, n_embd=32, n_head=2, bias=False)
    m = GPT(cfg).eval()
    attn, B, T, C, H = m.transformer.h[0].attn, 2, 11, 32, 2
    x = torch.randn(B, T, C)
    q, k, v = (t.view(B, T, H, C // H).transpose(1, 2) for t in attn.c_attn(x).split(C, dim=2))
    if qk_norm:  # parameter-free RMSNorm per head, written out
        q, k = (t / t.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt() for t in (q, k))
    q, k = _rope_reference(q, 500.0), _rope_reference(k, 500.0)
    mask = torch.tril(torch.ones(T, T, dtype=torch.bool))
    att = ((q @ k.transpose(-2, -1)) / math.sqrt(C // H)).masked_fill(~mask, float("-inf")).softmax(-1)
    ref = attn.c_proj((att @ v).transpose(1, 2).reshape(B, T, C))
    torch.testing.assert_close(attn(x, m.rotary(T)), ref, atol=1e-5, rtol=1e-5)


def test_rope_scores_depend_on_the_offset_alone():
    m = GPT(tiny(pos_emb="rope"))
    cos, sin = m.rotary(16)
    q, k = torch.randn(1, 1, 1, 8).expand(1, 1, 16, 8), torch.randn(1, 1, 1, 8).expand(1, 1, 16, 8)
    scores = apply_rotary(q, cos, sin) @ apply_rotary(k, cos, sin).transpose(-2, -1)  # (1, 1, 16, 16)
    torch.testing.assert_close(scores[0, 0, 5, 2], scores[0, 0, 12, 9])
    torch.testing.assert_close(scores[0, 0, 3, 3], scores[0, 0, 15, 15])


@pytest.mark.parametrize("kw", [OPTIONS["all"], dict(pos_emb="rope", qk_norm=True)], ids=["all", "rope+qk_norm"])
def test_attention_maps_are_forwards_attention(kw):
    """Each layer's map, applied to that layer's values, gives what forward's (fused) attention gave."""
    torch.manual_seed(0)
    cfg = tiny(**kw)
    m = GPT(cfg).eval()
    for p in m.parameters():  # zero_init's zero projections would hide every layer past the first
        if p.dim() == 2:
            torch.nn.init.normal_(p, std=0.3)
    idx = torch.randint(0, 23, (1, 12))
    seen = []
    hooks = [b.attn.register_forward_hook(lambda mod, args, out: seen.append((args[0], out))) for b in m.transformer.h]
    m(idx)
    for h in hooks:
        h.remove()
    maps = m.attention_maps(idx)
    C, H, T = cfg.n_embd, cfg.n_head, 12
    for (x, out), att, block in zip(seen, maps, m.transformer.h):
        v = block.attn.c_attn(x).split(C, dim=2)[2].view(1, T, H, C // H).transpose(1, 2)
        y = (att.unsqueeze(0) @ v).transpose(1, 2).reshape(1, T, C)
        torch.testing.assert_close(block.attn.c_proj(y), out, atol=1e-5, rtol=1e-5)
