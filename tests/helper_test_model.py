"""GPT: shapes, init, nanoGPT compatibility (names, logits, loss, greedy generation), generation, attention maps."""

import math

import pytest
import torch
import torch.nn.functional as F

from nanogpt.model import GPT, GPTConfig

V = 23  # a vocabulary size that is no power of two, so a wrong dimension shows up


def tiny(**kw) -> GPTConfig:
    return GPTConfig(**{"block_size": 16, "vocab_size": V, "n_layer": 2, "n_head": 2, "n_embd": 32, **kw})


def model(seed: int = 0, **kw) -> GPT:
    torch.manual_seed(seed)
    return GPT(tiny(**kw))


# --- an independent, functional nanoGPT --------------------------------------------------


def nanogpt_keys(n_layer: int, bias: bool) -> list[str]:
    """nanoGPT's state_dict keys, in its order (PyTorch >= 2: no causal-mask buffer)."""
    keys = ["transformer.wte.weight", "transformer.wpe.weight"]
    for i in range(n_layer):
        for mod in ("ln_1", "attn.c_attn", "attn.c_proj", "ln_2", "mlp.c_fc", "mlp.c_proj"):
            keys.append(f"transformer.h.{i}.{mod}.weight")
            if bias:
                keys.append(f"transformer.h.{i}.{mod}.bias")
    keys.append("transformer.ln_f.weight")
    if bias:
        keys.append("transformer.ln_f.bias")
    keys.append("lm_head.weight")
    return keys


def reference_state_dict(cfg: GPTConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random "nanoGPT checkpoint": shapes written out by hand, lm_head tied to wte as nanoGPT saves it."""
    g = torch.Generator().manual_seed(seed)
    C, V_, T = cfg.n_embd, cfg.vocab_size, cfg.block_size
    shapes = {"wte": (V_, C), "wpe": (T, C), "ln_1": (C,), "ln_2": (C,), "ln_f": (C,),
              "attn.c_attn": (3 * C, C), "attn.c_proj": (C, C), "mlp.c_fc": (4 * C, C), "mlp.c_proj": (C, 4 * C)}
    sd = {}
    for key in nanogpt_keys(cfg.n_layer, cfg.bias):
        if key == "lm_head.weight":
            sd[key] = sd["transformer.wte.weight"]
            continue
        mod = key.split(".h.")[-1].split(".", 1)[-1].rsplit(".", 1)[0] if ".h." in key else key.split(".")[1]
        shape = shapes[mod]
        if key.endswith(".bias"):
            shape = (shape[0],)
        w = torch.randn(shape, generator=g)
        if mod.startswith("ln_") and key.endswith(".weight"):
            sd[key] = 1.0 + 0.1 * w  # LayerNorm gains around 1
        else:
            sd[key] = 0.1 * w if key.endswith(".bias") else w / math.sqrt(shape[-1])
    return sd


def reference_forward(sd: dict, cfg: GPTConfig, idx: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """nanoGPT's math from a state_dict: (logits (B, T, V), attention probabilities per layer (B, nh, T, T))."""
    B, T = idx.shape
    C, H = cfg.n_embd, cfg.n_head
    hs = C // H

    def b(key):
        return sd[key] if cfg.bias else None

    x = sd["transformer.wte.weight"][idx] + sd["transformer.wpe.weight"][torch.arange(T)]
    causal = torch.tril(torch.ones(T, T, dtype=torch.bool))
    atts = []
    for i in range(cfg.n_layer):
        p = f"transformer.h.{i}."
        h = F.layer_norm(x, (C,), sd[p + "ln_1.weight"], b(p + "ln_1.bias"), eps=1e-5)
        qkv = h @ sd[p + "attn.c_attn.weight"].T
        if cfg.bias:
            qkv = qkv + sd[p + "attn.c_attn.bias"]
        q, k, v = qkv[..., :C], qkv[..., C : 2 * C], qkv[..., 2 * C :]
        q, k, v = (t.reshape(B, T, H, hs).permute(0, 2, 1, 3) for t in (q, k, v))  # (B, nh, T, hs)
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(hs)
        scores = scores.masked_fill(~causal, float("-inf"))
        att = torch.exp(scores - scores.amax(-1, keepdim=True))
        att = att / att.sum(-1, keepdim=True)  # softmax, written out
        atts.append(att)
        y = (att @ v).permute(0, 2, 1, 3).reshape(B, T, C)
        y = y @ sd[p + "attn.c_proj.weight"].T
        x = x + (y + sd[p + "attn.c_proj.bias"] if cfg.bias else y)
        h = F.layer_norm(x, (C,), sd[p + "ln_2.weight"], b(p + "ln_2.bias"), eps=1e-5)
        h = h @ sd[p + "mlp.c_fc.weight"].T
        if cfg.bias:
            h = h + sd[p + "mlp.c_fc.bias"]
        h = 0.5 * h * (1.0 + torch.erf(h / math.sqrt(2.0)))  # exact GELU
        h = h @ sd[p + "mlp.c_proj.weight"].T
        x = x + (h + sd[p + "mlp.c_proj.bias"] if cfg.bias else h)
    x = F.layer_norm(x, (C,), sd["transformer.ln_f.weight"], b("transformer.ln_f.bias"), eps=1e-5)
    return x @ sd["transformer.wte.weight"].T, atts  # lm_head is tied to wte


def reference_greedy(sd: dict, cfg: GPTConfig, idx: torch.Tensor, n: int) -> torch.Tensor:
    for _ in range(n):
        logits, _ = reference_forward(sd, cfg, idx[:, -cfg.block_size :])
        idx = torch.cat([idx, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return idx


# --- shapes and learning ------------------------------------------------------------------


def test_forward_shapes_training_and_inference():
    m = model()
    x = torch.randint(0, V, (3, 10))
    logits, loss = m(x, x)
    assert logits.shape == (3, 10, V)
    assert loss.shape == () and torch.isfinite(loss)
    logits, loss = m(x)
    assert logits.shape == (3, 1, V) and loss is None
    with pytest.raises(ValueError, match="block_size"):
        m(torch.zeros(1, 17, dtype=torch.long))


def test_initial_loss_is_near_uniform():
    m = model(vocab_size=65)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randint(0, 65, (8, 16), generator=g), torch.randint(0, 65, (8, 16), generator=g)
    _, loss = m(x, y)
    assert loss.item() == pytest.approx(math.log(65), abs=0.3)


def test_loss_drops_when_overfitting_one_batch():
    m = model()
    g = torch.Generator().manual_seed(0)
    batch = torch.randint(0, V, (4, 17), generator=g)
    x, y = batch[:, :-1], batch[:, 1:]
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    losses = []
    for _ in range(50):
        _, loss = m(x, y)
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert losses[-1] < 0.5 * losses[0], losses[::10]


def test_weight_tying():
    m = model()
    assert m.lm_head.weight is m.transformer.wte.weight
    with torch.no_grad():
        m.transformer.wte.weight[0, 0] = 123.0
    assert m.lm_head.weight[0, 0].item() == 123.0


# --- nanoGPT compatibility ----------------------------------------------------------------


@pytest.mark.parametrize("bias", [True, False])
def test_state_dict_keys_are_nanogpts(bias):
    expected = nanogpt_keys(2, bias)
    if bias:  # written out once by hand, so the helper above is checked too
        assert expected[:16] == [
            "transformer.wte.weight", "transformer.wpe.weight",
            "transformer.h.0.ln_1.weight", "transformer.h.0.ln_1.bias",
            "transformer.h.0.attn.c_attn.weight", "transformer.h.0.attn.c_attn.bias",
            "transformer.h.0.attn.c_proj.weight", "transformer.h.0.attn.c_proj.bias",
            "transformer.h.0.ln_2.weight", "transformer.h.0.ln_2.bias",
            "transformer.h.0.mlp.c_fc.weight", "transformer.h.0.mlp.c_fc.bias",
            "transformer.h.0.mlp.c_proj.weight", "transformer.h.0.mlp.c_proj.bias",
            "transformer.h.1.ln_1.weight", "transformer.h.1.ln_1.bias",
        ]
        assert expected[-3:] == ["transformer.ln_f.weight", "transformer.ln_f.bias", "lm_head.weight"]
        assert len(expected) == 2 + 2 * 12 + 2 + 1
    else:
        assert not any(k.endswith(".bias") for k in expected) and len(expected) == 2 + 2 * 6 + 1 + 1
    assert list(model(bias=bias).state_dict()) == expected


@pytest.mark.parametrize("bias", [True, False])
def test_nanogpt_state_dict_gives_nanogpts_logits_loss_and_greedy_text(bias):
    cfg = tiny(bias=bias)
    sd = reference_state_dict(cfg, seed=1)
    m = GPT(cfg)
    m.load_state_dict(sd, strict=True)
    m.eval()
    g = torch.Generator().manual_seed(2)
    idx = torch.randint(0, V, (2, 12), generator=g)
    targets = torch.randint(0, V, (2, 12), generator=g)

    ref_logits, _ = reference_forward(sd, cfg, idx)
    logits, loss = m(idx, targets)
    torch.testing.assert_close(logits, ref_logits, atol=1e-5, rtol=1e-5)
    ref_loss = F.cross_entropy(ref_logits.reshape(-1, V), targets.reshape(-1))
    torch.testing.assert_close(loss, ref_loss, atol=1e-5, rtol=1e-5)
    last, _ = m(idx)  # the inference path forwards lm_head on the last position only
    torch.testing.assert_close(last, ref_logits[:, [-1]], atol=1e-5, rtol=1e-5)

    # greedy: 20 new tokens after a 5-token prompt runs past block_size, so cropping is compared too
    prompt = idx[:, :5]
    torch.testing.assert_close(m.generate(prompt, 20, temperature=0), reference_greedy(sd, cfg, prompt, 20), rtol=0, atol=0)


def test_attention_maps_are_nanogpts_softmax():
    cfg = tiny()
    sd = reference_state_dict(cfg, seed=3)
    m = GPT(cfg)
    m.load_state_dict(sd, strict=True)
    idx = torch.randint(0, V, (1, 9), generator=torch.Generator().manual_seed(4))
    _, atts = reference_forward(sd, cfg, idx)
    torch.testing.assert_close(m.attention_maps(idx), torch.stack([a[0] for a in atts]), atol=1e-5, rtol=1e-5)


def test_residual_projections_use_scaled_init():
    torch.manual_seed(0)
    m = GPT(GPTConfig(block_size=16, vocab_size=64, n_layer=4, n_head=4, n_embd=128))
    sd = m.state_dict()
    c_proj = torch.cat([v.flatten() for k, v in sd.items() if k.endswith("c_proj.weight")])
    assert c_proj.std().item() == pytest.approx(0.02 / math.sqrt(2 * 4), rel=0.1)
    others = torch.cat([v.flatten() for k, v in sd.items() if k.endswith(("c_attn.weight", "c_fc.weight"))])
    assert others.std().item() == pytest.approx(0.02, rel=0.1)
    assert all(torch.all(v == 0) for k, v in sd.items() if k.endswith(".bias") and ".ln_" not in k)
    assert all(torch.all(v == 1) for k, v in sd.items() if ".ln_" in k and k.endswith(".weight"))


@pytest.mark.parametrize("kw", [dict(n_embd=30, n_head=4), dict(dropout=1.0), dict(n_layer=0), dict(dropout=-0.1),
                                dict(vocab_size=0), dict(n_head=2.0)])
def test_gpt_config_errors(kw):
    with pytest.raises(ValueError):
        tiny(**kw)


# --- generation -----------------------------------------------------------------------------


def test_generate_length_and_context_cropping():
    m = model().eval()
    idx = torch.randint(0, V, (2, 5), generator=torch.Generator().manual_seed(0))
    out = m.generate(idx, 7)
    assert out.shape == (2, 12) and torch.equal(out[:, :5], idx)
    assert int(out.min()) >= 0 and int(out.max()) < V
    long = torch.randint(0, V, (1, 40), generator=torch.Generator().manual_seed(1))  # > block_size 16
    out = m.generate(long, 6, temperature=0)
    assert out.shape == (1, 46)
    # cropping keeps the last block_size tokens: the continuation depends on them only
    cropped = m.generate(long[:, -16:], 6, temperature=0)
    assert torch.equal(out[:, 40:], cropped[:, 16:])


def test_generate_temperature_seed_and_top_k():
    m = model().eval()
    idx = torch.zeros(1, 3, dtype=torch.long)
    with pytest.raises(ValueError, match="temperature"):
        m.generate(idx, 1, temperature=-0.5)
    torch.manual_seed(1)
    greedy = m.generate(idx, 15, temperature=0)
    torch.manual_seed(2)
    assert torch.equal(m.generate(idx, 15, temperature=0), greedy)

    def sample(seed, **kw):
        return m.generate(idx, 15, generator=torch.Generator().manual_seed(seed), **kw)

    assert torch.equal(sample(5), sample(5))
    assert not torch.equal(sample(5), sample(6))
    assert not torch.equal(sample(5), greedy)
    assert torch.equal(sample(7, top_k=1), greedy)
    assert torch.equal(sample(8, temperature=2.0, top_k=1), greedy)


def test_attention_maps_shape_rows_and_causality():
    m = model(n_layer=2, n_head=4)
    m.train()
    maps = m.attention_maps(torch.randint(0, V, (1, 9), generator=torch.Generator().manual_seed(0)))
    assert maps.shape == (2, 4, 9, 9)
    torch.testing.assert_close(maps.sum(-1), torch.ones(2, 4, 9))
    assert torch.all(maps.triu(diagonal=1) == 0)
    assert torch.all(maps[..., torch.ones(9, 9, dtype=torch.bool).tril()] > 0)  # softmax: every earlier position
    assert m.training  # the mode is restored


# --- counting -------------------------------------------------------------------------------


def _hand_count(cfg: GPTConfig) -> tuple[int, int]:
    """(all parameters, parameters without wpe), counted from nanoGPT's shapes."""
    C, b = cfg.n_embd, int(cfg.bias)
    per_layer = 2 * (C + b * C) + (3 * C * C + b * 3 * C) + (C * C + b * C) + (4 * C * C + b * 4 * C) + (4 * C * C + b * C)
    total = cfg.vocab_size * C + cfg.block_size * C + cfg.n_layer * per_layer + (C + b * C)  # lm_head is wte
    return total, total - cfg.block_size * C


@pytest.mark.parametrize("bias", [True, False])
def test_get_num_params_excludes_wpe_by_default(bias):
    m = model(bias=bias)
    total, non_embedding = _hand_count(m.config)
    assert m.get_num_params() == non_embedding
    assert m.get_num_params(non_embedding=False) == total
    assert total - non_embedding == 16 * 32


def test_flops_per_token_is_palm_formula():
    m = model()
    _, n = _hand_count(m.config)
    L, H, Q, T = 2, 2, 16, 16
    assert m.flops_per_token() == 6 * n + 12 * L * H * Q * T
