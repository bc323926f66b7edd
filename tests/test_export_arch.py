"""Export of the model options (issue 27): each combination a transformers architecture computes exactly is written
as that architecture (GPT-2, Llama, Qwen3) and gives our logits in transformers; every other is refused in one line
naming the option, before anything is written."""

import json
from pathlib import Path

import pytest
import torch

from conftest import assert_one_line_error, run_cli
from nanogpt.checkpoint import load_model
from nanogpt.export import architecture_problem, export
from nanogpt.model import GPT, GPTConfig
from nanogpt.tokenizer import CharTokenizer, save_tokenizer

CHARS = list("abcdefghij klmnop.\n")


def _checkpoint(d: Path, **options) -> Path:
    """A checkpoint of a random tiny model with these options: every parameter drawn at random (biases and
    LayerNorm weights too), so that a weight exported to the wrong place shows."""
    tok = CharTokenizer(CHARS)
    cfg = GPTConfig(block_size=24, vocab_size=tok.vocab_size, n_layer=2, n_head=2, n_embd=16, **options)
    torch.manual_seed(0)
    model = GPT(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    d.mkdir(parents=True)
    torch.save({"model": model.state_dict()}, d / "model.pt")
    (d / "config.json").write_text(json.dumps({"model": cfg.to_dict(), "dataset": "letters", "step": 0, "history": []}))
    save_tokenizer(tok, d / "tokenizer.json")
    return d


EXPORTABLE = {
    "gpt2": ("GPT2LMHeadModel", {}),
    "gpt2-untied-nobias": ("GPT2LMHeadModel", dict(tie_embeddings=False, bias=False)),
    "llama": ("LlamaForCausalLM", dict(pos_emb="rope", norm="rmsnorm", mlp="swiglu", rope_theta=500.0)),
    "llama-untied-nobias": ("LlamaForCausalLM", dict(pos_emb="rope", norm="rmsnorm", mlp="swiglu",
                                                     tie_embeddings=False, bias=False)),
    "qwen3": ("Qwen3ForCausalLM", dict(pos_emb="rope", norm="rmsnorm", mlp="swiglu", qk_norm=True, bias=False)),
    "qwen3-untied": ("Qwen3ForCausalLM", dict(pos_emb="rope", norm="rmsnorm", mlp="swiglu", qk_norm=True, bias=False,
                                              tie_embeddings=False, zero_init=True, rope_theta=1e6)),
    # muP at width_mult 2 (n_embd 16, base 8): its multipliers folded into q's projection (q_norm) and the final norm
    "gpt2-mup": ("GPT2LMHeadModel", dict(parametrization="mup", mup_base_width=8)),
    "gpt2-mup-untied-nobias": ("GPT2LMHeadModel", dict(parametrization="mup", mup_base_width=8, tie_embeddings=False,
                                                       bias=False)),
    "llama-mup": ("LlamaForCausalLM", dict(pos_emb="rope", norm="rmsnorm", mlp="swiglu", parametrization="mup",
                                           mup_base_width=8)),
    "qwen3-mup-untied": ("Qwen3ForCausalLM", dict(pos_emb="rope", norm="rmsnorm", mlp="swiglu", qk_norm=True,
                                                  bias=False, tie_embeddings=False, parametrization="mup",
                                                  mup_base_width=32)),
}


@pytest.mark.parametrize("name", EXPORTABLE)
def test_hf_export_of_each_architecture_gives_our_logits_in_transformers(name, tmp_path):
    from transformers import AutoModelForCausalLM

    cls, options = EXPORTABLE[name]
    ckpt = _checkpoint(tmp_path / "ckpt", **options)
    out = export(ckpt, tmp_path / "hf", "hf")
    ours, tok, _ = load_model(ckpt)
    hf, info = AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert type(hf).__name__ == cls
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    head, wte = hf.get_output_embeddings().weight, hf.get_input_embeddings().weight
    assert (head.data_ptr() == wte.data_ptr()) == options.get("tie_embeddings", True)
    x = torch.randint(0, tok.vocab_size, (3, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a, _ = ours(x, x)  # with targets: logits at every position
        b = hf(x).logits
    assert (a - b).abs().max().item() < 1e-5, (a - b).abs().max().item()
    assert cls.removesuffix("LMHeadModel").removesuffix("ForCausalLM").lower().replace("gpt2", "gpt-2") in \
        (out / "README.md").read_text().lower()


REFUSED = {  # options, format, what the line names
    "relu2": (dict(mlp="relu2"), "hf", "mlp=relu2"),
    "rope-relu2": (dict(pos_emb="rope", norm="rmsnorm", mlp="relu2"), "hf", "mlp=relu2"),
    "learned-rmsnorm": (dict(norm="rmsnorm"), "hf", "norm=rmsnorm"),
    "learned-swiglu": (dict(mlp="swiglu"), "hf", "mlp=swiglu"),
    "learned-qk-norm": (dict(qk_norm=True), "hf", "qk_norm=true"),
    "rope-layernorm": (dict(pos_emb="rope", mlp="swiglu"), "hf", "norm=layernorm"),
    "rope-gelu": (dict(pos_emb="rope", norm="rmsnorm"), "hf", "mlp=gelu"),
    "qwen3-bias": (dict(pos_emb="rope", norm="rmsnorm", mlp="swiglu", qk_norm=True), "hf", "bias=true"),
    "softcap": (dict(logit_softcap=30.0), "hf", "logit_softcap=30.0"),
    "nanogpt-rope": (dict(pos_emb="rope", norm="rmsnorm", mlp="swiglu"), "nanogpt", "pos_emb=rope"),
    "nanogpt-untied": (dict(tie_embeddings=False), "nanogpt", "tie_embeddings=false"),
    "nanogpt-softcap": (dict(logit_softcap=15.0), "nanogpt", "logit_softcap=15.0"),
    "nanogpt-swiglu": (dict(mlp="swiglu"), "nanogpt", "mlp=swiglu"),
}


@pytest.mark.parametrize("name", REFUSED)
def test_export_refuses_an_option_without_an_equivalent_in_one_line_writing_nothing(name, tmp_path):
    options, fmt, needle = REFUSED[name]
    ckpt = _checkpoint(tmp_path / "ckpt", **options)
    assert_one_line_error(run_cli("nanogpt.export", str(ckpt), str(tmp_path / "out"), "--format", fmt), needle, "train with")
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_nanogpt_export_of_rope_points_at_hf_only_where_hf_takes_it():
    assert "--format hf" in architecture_problem(dict(pos_emb="rope", norm="rmsnorm", mlp="swiglu"), "nanogpt")
    assert "--format hf" not in architecture_problem(dict(mlp="relu2"), "nanogpt")


@pytest.mark.parametrize("bias", [True, False])
def test_nanogpt_export_of_mup_folds_it_into_nanogpts_model_with_our_logits(bias, tmp_path):
    """nanoGPT has no muP: its attention scale and output multiplier go into c_attn's q rows and ln_f, and
    nanoGPT's model (ours at its defaults) computes the muP model's logits."""
    ckpt = _checkpoint(tmp_path / "ckpt", parametrization="mup", mup_base_width=8, bias=bias)
    out = export(ckpt, tmp_path / "ng", "nanogpt")
    saved = torch.load(out / "ckpt.pt", weights_only=True)
    theirs = GPT(GPTConfig(**saved["model_args"]))
    theirs.load_state_dict(saved["model"])
    ours, tok, _ = load_model(ckpt)
    x = torch.randint(0, tok.vocab_size, (3, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (ours(x, x)[0] - theirs.eval()(x, x)[0]).abs().max().item() < 1e-5
    assert architecture_problem(dict(parametrization="mup"), "hf") is None


def test_nanogpt_format_holds_nanogpts_config_fields_alone(tmp_path):
    """nanoGPT's GPTConfig(**model_args) takes its seven fields: ours (pos_emb, norm, ...) would fail there."""
    ckpt = _checkpoint(tmp_path / "ckpt", zero_init=True)
    out = export(ckpt, tmp_path / "ng", "nanogpt")
    args = torch.load(out / "ckpt.pt", weights_only=True)["model_args"]
    assert set(args) == {"block_size", "vocab_size", "n_layer", "n_head", "n_embd", "dropout", "bias"}


# --- tune.search --export ------------------------------------------------------------------------


def test_search_export_refuses_a_space_that_can_draw_an_option_without_an_equivalent():
    """Before the search: every combination of the space's values for the model options is checked (any may win);
    the search's own models (nanoGPT's architecture, no biases) export both ways."""
    from optuna.distributions import CategoricalDistribution

    from nanogpt.errors import UserError
    from tune.config import _check_export

    for fmt in ("hf", "nanogpt"):
        _check_export(fmt, "char", {"n_layer": CategoricalDistribution([2, 4])})
    with pytest.raises(UserError, match="--export hf: mlp=relu2 has no Hugging Face architecture"):
        _check_export("hf", "char", {"mlp": CategoricalDistribution(["gelu", "relu2"])})
    rope = {"pos_emb": "rope", "norm": "rmsnorm", "mlp": "swiglu"}
    _check_export("hf", "char", {**rope, "qk_norm": CategoricalDistribution([False, True])})  # Llama or Qwen3
    with pytest.raises(UserError, match="--export nanogpt: pos_emb=rope has no nanoGPT equivalent"):
        _check_export("nanogpt", "char", rope)


def test_search_export_hf_of_a_space_with_relu2_is_refused_before_the_search():
    """A search that fixes --mlp relu2: --export hf is refused when the search is set up, not after it; the
    shakespeare-modern preset (a Qwen3) exports."""
    from nanogpt.errors import UserError
    from tune.config import build_parser, config_from_args

    args = build_parser().parse_args(["--preset", "shakespeare-modern", "--mlp", "relu2", "--export", "hf",
                                      "--results-dir", "/nonexistent/x"])
    with pytest.raises(UserError, match="--export hf: mlp=relu2 has no Hugging Face architecture"):
        config_from_args(args)
    args = build_parser().parse_args(["--preset", "shakespeare-modern", "--export", "hf", "--results-dir", "/nonexistent/x"])
    config_from_args(args)  # rope, rmsnorm, swiglu, qk_norm, no biases: a Qwen3
