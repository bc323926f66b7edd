"""Models leave the project: `python -m nanogpt.export CHECKPOINT_DIR OUT_DIR --format hf|nanogpt`.

hf: a Hugging Face directory (config.json, model.safetensors, tokenizer.json, a model card) that
`transformers.AutoModelForCausalLM` and `AutoTokenizer` load with no custom code, computing the same logits.
It is written wherever a transformers architecture computes our model's function, and refused (one line naming the
option) elsewhere (`architecture_problem`):
- nanoGPT's architecture (learned positions, LayerNorm, GELU MLP) -> GPT-2 with exact GELU: GPT-2's Conv1D keeps
  its weight as (in, out), the transpose of a Linear's, and a model trained with bias=False gets zero biases;
- rope + rmsnorm + swiglu -> Llama (attention_bias and mlp_bias from bias), and with qk_norm -> Qwen3 (bias=False
  only: Qwen3's MLP has none). c_attn is cut into q_proj, k_proj, v_proj, c_fc into gate_proj and up_proj; our
  RMSNorms have no parameters, so theirs get weights of ones.
tie_embeddings=False keeps lm_head's own weight in all three. logit_softcap and relu2 have no architecture.
nanogpt: ckpt.pt and meta.pkl in nanoGPT's own format, which its sample.py reads: nanoGPT's architecture only.

parametrization=mup exports in both formats, its two multipliers folded into weights every architecture has
(`fold_mup`): the attention scale into q's rows of c_attn (Qwen3: into q_norm's weight, as q is normalised after
its projection), the output multiplier 1/width_mult into the final norm's weight (and bias), which feeds lm_head
alone, tied or not. The exported model is then a standard-parametrization model with the same logits; trained on
elsewhere, it trains as one.

Both hold weights only: model.pt's optimizer state and RNG stay behind. Writing needs torch, `tokenizers`
and `safetensors`, not transformers.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pickle
import re
import shlex
import shutil
import itertools
import sys
import tempfile
from pathlib import Path

import torch

from nanogpt.checkpoint import load_model, read_meta
from nanogpt.cli import run_main
from nanogpt.errors import UserError
from nanogpt.files import DISK_ERRNOS, write_failed
from nanogpt.model import GPT, NORM_EPS, GPTConfig, swiglu_hidden
from nanogpt.tokenizer import UNK

FORMATS = ("hf", "nanogpt")
# GPT-2's Conv1D layers: their weight is (in_features, out_features)
_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
# every file an export writes, in either format
EXPORT_FILES = {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                "README.md", "ckpt.pt", "meta.pkl"}
_SEARCH_FILE = "search.json"  # tune's settings file, beside best/ and final/ (read for the model card only)


def fmt_name(fmt: str) -> str:
    return {"hf": "Hugging Face's format", "nanogpt": "nanoGPT's format"}[fmt]


class ExportError(UserError):
    """An export that cannot be made as asked; the message says what to do instead."""


# --- which architecture -------------------------------------------------------------------------

# GPTConfig's architecture options and nanoGPT's value of each (zero_init is an initialisation: any value exports)
NANOGPT_ARCH = {"pos_emb": "learned", "norm": "layernorm", "mlp": "gelu", "qk_norm": False, "tie_embeddings": True,
                "logit_softcap": 0.0}
# nanoGPT's GPTConfig fields: all its model_args may hold
NANOGPT_FIELDS = ("block_size", "vocab_size", "n_layer", "n_head", "n_embd", "dropout", "bias")
HF_ARCHITECTURES = {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM", "qwen3": "Qwen3ForCausalLM"}


def _show(option: str, value) -> str:
    return f"{option}={str(value).lower() if isinstance(value, bool) else value}"


def _flag(option: str, value) -> str:
    return f"--{option.replace('_', '-')} {str(value).lower() if isinstance(value, bool) else value}"


def hf_architecture(options: dict) -> tuple[str | None, str | None]:
    """(transformers model_type, None) for a model of these GPTConfig options (missing ones at their defaults), or
    (None, what has no equivalent and what to train with instead)."""
    o = {**NANOGPT_ARCH, "bias": True, **options}
    none = "has no Hugging Face architecture"
    if o["logit_softcap"]:
        return None, f"{_show('logit_softcap', o['logit_softcap'])} {none}: train with --logit-softcap 0"
    if o["mlp"] not in ("gelu", "swiglu"):
        return None, (f"{_show('mlp', o['mlp'])} {none}: train with --mlp gelu (GPT-2) or --mlp swiglu with "
                      f"--pos-emb rope --norm rmsnorm (Llama, Qwen3)")
    if o["pos_emb"] == "learned":  # GPT-2
        to_rope = "--pos-emb rope --norm rmsnorm --mlp swiglu"
        for option, want, instead in (("norm", "layernorm", f"{to_rope} (Llama, Qwen3)"),
                                      ("mlp", "gelu", f"{to_rope} (Llama, Qwen3)"),
                                      ("qk_norm", False, f"{to_rope} (Qwen3)")):
            if o[option] != want:
                return None, (f"{_show(option, o[option])} {none} with pos_emb=learned: train with "
                              f"{_flag(option, want)} (GPT-2) or {instead}")
        return "gpt2", None
    for option, want in (("norm", "rmsnorm"), ("mlp", "swiglu")):  # rope: Llama or Qwen3
        if o[option] != want:
            return None, (f"{_show(option, o[option])} {none} with pos_emb=rope: train with {_flag(option, want)} "
                          f"(Llama, Qwen3) or --pos-emb learned --norm layernorm --mlp gelu (GPT-2)")
    if not o["qk_norm"]:
        return "llama", None
    if o["bias"]:
        return None, (f"bias=true {none} with qk_norm=true (Qwen3's MLP has no biases): train with --bias false, "
                      f"or --qk-norm false (Llama)")
    return "qwen3", None


def architecture_problem(options: dict, fmt: str) -> str | None:
    """Why a model of these GPTConfig options cannot be exported in `fmt`, in one line, or None."""
    if fmt == "hf":
        return hf_architecture(options)[1]
    for option, want in NANOGPT_ARCH.items():
        if option in options and options[option] != want:
            instead = "export with --format hf or " if hf_architecture(options)[0] else ""
            return (f"{_show(option, options[option])} has no nanoGPT equivalent (its model.py is nanoGPT's "
                    f"architecture alone): {instead}train with {_flag(option, want)}")
    return None


def choices_problem(choices: dict[str, list], fmt: str) -> str | None:
    """architecture_problem for every combination of candidate values (a search's space): the first found."""
    names = list(choices)
    for values in itertools.product(*(choices[n] for n in names)):
        if problem := architecture_problem(dict(zip(names, values)), fmt):
            return problem
    return None


# --- Hugging Face ------------------------------------------------------------------------------


def hf_config(cfg: GPTConfig) -> dict:
    """transformers' config for our model, as config.json holds it: GPT-2's, Llama's or Qwen3's."""
    arch, problem = hf_architecture(cfg.to_dict())
    if problem:
        raise ExportError(problem)
    return gpt2_config(cfg) if arch == "gpt2" else rope_config(cfg, arch)


def rope_config(cfg: GPTConfig, arch: str) -> dict:
    """LlamaConfig or Qwen3Config: full multi-head attention, rotary positions at cfg.rope_theta without scaling,
    RMSNorm at our epsilon, SiLU-gated MLP of our width."""
    hs = cfg.n_embd // cfg.n_head
    out = {
        "architectures": [HF_ARCHITECTURES[arch]],
        "model_type": arch,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.n_embd,
        "intermediate_size": swiglu_hidden(cfg.n_embd),
        "num_hidden_layers": cfg.n_layer,
        "num_attention_heads": cfg.n_head,
        "num_key_value_heads": cfg.n_head,
        "head_dim": hs,  # attention scaled by 1/sqrt(head_dim), as F.scaled_dot_product_attention
        "hidden_act": "silu",
        "max_position_embeddings": cfg.block_size,
        "rms_norm_eps": NORM_EPS,
        # transformers 5 reads rope_parameters; 4.x reads rope_theta and rope_scaling
        "rope_parameters": {"rope_type": "default", "rope_theta": float(cfg.rope_theta)},
        "rope_theta": float(cfg.rope_theta),
        "rope_scaling": None,
        "attention_bias": cfg.bias,
        "attention_dropout": cfg.dropout,
        "initializer_range": 0.02,
        "tie_word_embeddings": cfg.tie_embeddings,
        "use_cache": True,
        # our corpora have no special tokens: Llama's defaults (1, 2) would name ordinary characters
        "bos_token_id": None,
        "eos_token_id": None,
        "pad_token_id": None,
        "dtype": "float32",
    }
    if arch == "llama":
        out.update(mlp_bias=cfg.bias, pretraining_tp=1)
    else:  # every layer full attention
        out.update(use_sliding_window=False, sliding_window=None, max_window_layers=cfg.n_layer,
                   layer_types=["full_attention"] * cfg.n_layer)
    return out


def gpt2_config(cfg: GPTConfig) -> dict:
    """transformers' GPT2Config for our model, as config.json holds it."""
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": cfg.vocab_size,
        "n_positions": cfg.block_size,
        "n_embd": cfg.n_embd,
        "n_layer": cfg.n_layer,
        "n_head": cfg.n_head,
        "n_inner": 4 * cfg.n_embd,
        "activation_function": "gelu",  # nn.GELU(): exact, not GPT-2's tanh approximation (gelu_new)
        "layer_norm_epsilon": 1e-5,
        "resid_pdrop": cfg.dropout,
        "embd_pdrop": cfg.dropout,
        "attn_pdrop": cfg.dropout,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "tie_word_embeddings": cfg.tie_embeddings,
        # GPT-2's defaults (50256) lie outside our vocabulary; our corpora have no end-of-text token
        "bos_token_id": None,
        "eos_token_id": None,
        "pad_token_id": None,
        "dtype": "float32",
    }


def _own(tensor: torch.Tensor) -> torch.Tensor:
    """A float32 CPU tensor of its own (safetensors refuses tensors that share memory)."""
    return tensor.detach().to("cpu", torch.float32).contiguous().clone()


def fold_mup(model: GPT) -> dict[str, torch.Tensor]:
    """The model's state_dict with muP's attention scale and output multiplier folded into the weights (the
    module doc); a standard model's own state_dict."""
    cfg, sd = model.config, dict(model.state_dict())
    if cfg.parametrization == "sp":
        return sd
    q_scale = cfg.attn_scale * math.sqrt(cfg.n_embd // cfg.n_head)  # what SP's 1/sqrt(head_dim) lacks
    names = [f"transformer.h.{i}.attn.c_attn.{kind}" for i in range(cfg.n_layer) for kind in ("weight", "bias")]
    for name in names if not cfg.qk_norm else ():  # qk_norm: q_norm's weight (rope_state_dict)
        if name in sd:
            sd[name] = sd[name].clone()
            sd[name][: cfg.n_embd] *= q_scale  # q's rows: c_attn's output splits as q, k, v
    for name in ("transformer.ln_f.weight", "transformer.ln_f.bias"):  # rmsnorm: model.norm (rope_state_dict)
        if name in sd:
            sd[name] = sd[name] / cfg.width_mult
    return sd


def hf_state_dict(model: GPT) -> dict[str, torch.Tensor]:
    """The weights under the names of the architecture hf_config picks. A tied lm_head.weight is left out
    (transformers ties it to the token embedding again on load)."""
    arch, problem = hf_architecture(model.config.to_dict())
    if problem:
        raise ExportError(problem)
    return gpt2_state_dict(model) if arch == "gpt2" else rope_state_dict(model, arch)


def rope_state_dict(model: GPT, arch: str) -> dict[str, torch.Tensor]:
    """LlamaForCausalLM's or Qwen3ForCausalLM's weights: c_attn's rows cut into q, k and v, c_fc's into gate and up
    (swiglu's chunk order), and weights of ones for their RMSNorms, where ours have none."""
    cfg, sd = model.config, fold_mup(model)
    C, hs = cfg.n_embd, cfg.n_embd // cfg.n_head
    q_norm = cfg.attn_scale * math.sqrt(hs)  # muP's attention scale where qk_norm takes it (fold_mup); sp: 1
    out = {"model.embed_tokens.weight": _own(sd["transformer.wte.weight"]),
           "model.norm.weight": torch.full((C,), 1.0 / cfg.width_mult)}  # muP's output multiplier; sp: ones
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = _own(sd["lm_head.weight"])
    kinds = ("weight", "bias") if cfg.bias else ("weight",)
    for i in range(cfg.n_layer):
        ours, theirs = f"transformer.h.{i}.", f"model.layers.{i}."
        for kind in kinds:
            for name, part in zip(("q_proj", "k_proj", "v_proj"), sd[f"{ours}attn.c_attn.{kind}"].split(C, dim=0)):
                out[f"{theirs}self_attn.{name}.{kind}"] = _own(part)
            out[f"{theirs}self_attn.o_proj.{kind}"] = _own(sd[f"{ours}attn.c_proj.{kind}"])
            gate, up = sd[f"{ours}mlp.c_fc.{kind}"].chunk(2, dim=0)
            out[f"{theirs}mlp.gate_proj.{kind}"], out[f"{theirs}mlp.up_proj.{kind}"] = _own(gate), _own(up)
            out[f"{theirs}mlp.down_proj.{kind}"] = _own(sd[f"{ours}mlp.c_proj.{kind}"])
        out[f"{theirs}input_layernorm.weight"] = torch.ones(C)
        out[f"{theirs}post_attention_layernorm.weight"] = torch.ones(C)
        if arch == "qwen3":
            out[f"{theirs}self_attn.q_norm.weight"] = torch.full((hs,), q_norm)
            out[f"{theirs}self_attn.k_norm.weight"] = torch.ones(hs)
    return out


def gpt2_state_dict(model: GPT) -> dict[str, torch.Tensor]:
    """The weights under GPT2LMHeadModel's names."""
    cfg, out = model.config, {}
    for name, tensor in fold_mup(model).items():
        if name == "lm_head.weight" and cfg.tie_embeddings:
            continue
        out[name] = _own(tensor.t() if name.endswith(_CONV1D) else tensor)
    if not cfg.bias:  # GPT-2 always has biases: zeros compute what bias=False computes
        widths = {"ln_1": cfg.n_embd, "ln_2": cfg.n_embd, "attn.c_attn": 3 * cfg.n_embd, "attn.c_proj": cfg.n_embd,
                  "mlp.c_fc": 4 * cfg.n_embd, "mlp.c_proj": cfg.n_embd}
        for i in range(cfg.n_layer):
            for module, width in widths.items():
                out[f"transformer.h.{i}.{module}.bias"] = torch.zeros(width)
        out["transformer.ln_f.bias"] = torch.zeros(cfg.n_embd)
    return out


def hf_tokenizer_config(cfg: GPTConfig) -> dict:
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",  # tokenizer.json alone, not GPT-2's vocab.json/merges.txt
        "model_max_length": cfg.block_size,
        "clean_up_tokenization_spaces": False,  # " ." must stay " ."
        "unk_token": UNK,
    }


def write_hf(model: GPT, tokenizer, meta: dict, out: Path, card: str) -> None:
    from safetensors.torch import save_file

    save_file(hf_state_dict(model), str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(hf_config(model.config), indent=2))
    (out / "generation_config.json").write_text(json.dumps({"bos_token_id": None, "eos_token_id": None}, indent=2))
    (out / "tokenizer.json").write_text(tokenizer.hf_tokenizer_json(), encoding="utf-8")
    (out / "tokenizer_config.json").write_text(json.dumps(hf_tokenizer_config(model.config), indent=2))
    (out / "README.md").write_text(card, encoding="utf-8")


# --- nanoGPT -----------------------------------------------------------------------------------


def nanogpt_dataset_name(meta: dict) -> str:
    """The name nanoGPT's sample.py looks up meta.pkl by (data/NAME/meta.pkl): ours, made distinct from
    nanoGPT's own data sets (its shakespeare_char has another vocabulary)."""
    return "nanogpt_tune_" + re.sub(r"[^A-Za-z0-9_.-]+", "_", str(meta.get("dataset") or "data")).strip("_")


def write_nanogpt(model: GPT, tokenizer, meta: dict, out: Path) -> None:
    ckpt = {
        "model": fold_mup(model),
        # nanoGPT's GPTConfig takes its own fields alone (architecture_problem: ours are at nanoGPT's values)
        "model_args": {k: v for k, v in model.config.to_dict().items() if k in NANOGPT_FIELDS},
        "config": {**meta.get("train", {}), "dataset": nanogpt_dataset_name(meta)},
        "iter_num": int(meta.get("step", 0)),
        "best_val_loss": best_val_loss(meta),
    }
    torch.save(ckpt, out / "ckpt.pt")
    itos = dict(enumerate(tokenizer.itos))
    with open(out / "meta.pkl", "wb") as f:  # nanoGPT's own format is a pickle
        pickle.dump({"vocab_size": tokenizer.vocab_size, "itos": itos, "stoi": {s: i for i, s in itos.items()}}, f)


# --- the model card ------------------------------------------------------------------------------


def best_val_loss(meta: dict) -> float:
    losses = [h["val_loss"] for h in meta.get("history", []) if math.isfinite(h.get("val_loss", math.nan))]
    return float(min(losses)) if losses else math.nan


def _made_by(checkpoint: Path) -> str:
    """The command that made the checkpoint, when it is a search's best/ or final/ (search.json beside it)."""
    settings = checkpoint.resolve().parent / _SEARCH_FILE
    try:
        saved = json.loads(settings.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        saved = None
    if not isinstance(saved, dict):  # none, or not tune's
        return f"a nanogpt-tune checkpoint ({checkpoint})"
    role = {"best": "the best trial of", "final": "the final training of"}.get(checkpoint.resolve().name, "")
    command = saved.get("command") if isinstance(saved.get("command"), str) else None
    command = command or f"python -m tune.search --preset {saved.get('preset')} --name {saved.get('name')}"
    return f"{role} the search `{command}`".replace("  ", " ")


def _stored_as(cfg: GPTConfig, arch: str) -> str:
    untied = "" if cfg.tie_embeddings else ", with an lm_head of its own"
    untied += ", trained with muP (its multipliers folded into the weights)" * (cfg.parametrization == "mup")
    if arch == "gpt2":
        return f"with nanoGPT's architecture{untied}, stored as a GPT-2 with exact GELU"
    parts = "rotary positions, RMSNorm without parameters (weights of ones here), a SwiGLU MLP"
    if arch == "qwen3":
        return f"with {parts} and QK-norm{untied}, stored as a Qwen3"
    return f"with {parts}{untied}, stored as a Llama"


def model_card(model: GPT, tokenizer, meta: dict, checkpoint: Path, fmt_command: str) -> str:
    cfg, train = model.config, meta.get("train", {})
    history = [h for h in meta.get("history", []) if "val_loss" in h]  # config.json's types: checkpoint.read_meta
    best = min(history, key=lambda h: h["val_loss"]) if history else {}
    unit = train.get("budget_unit", "steps")
    budget = f"{train.get('max_steps')} steps" if unit == "steps" else f"{train.get('budget') or math.nan:g} {unit}"
    n_params = model.get_num_params()
    arch = hf_architecture(cfg.to_dict())[0]
    return f"""---
library_name: transformers
pipeline_tag: text-generation
tags: [nanogpt, nanogpt-tune, {arch}]
---
# {checkpoint.resolve().name}: a small GPT from nanogpt-tune

A GPT ({cfg.n_layer} layers, {cfg.n_head} heads, {cfg.n_embd} embedding, context {cfg.block_size} tokens, \
{n_params:,} parameters) {_stored_as(cfg, arch)}.

- **Data**: {meta.get('dataset', 'unknown')}, {tokenizer.kind} tokenizer, {tokenizer.vocab_size} tokens
- **Budget**: {budget}; trained {meta.get('step', '?')} steps
- **Validation loss**: {best.get('val_loss', math.nan):.4f} nats/token at step {best.get('step', '?')} \
({best.get('val_bpc', math.nan):.4f} bits/character)
- **Made by**: {_made_by(checkpoint)}
- **Exported by**: `{fmt_command}`

```python
from transformers import pipeline
generate = pipeline("text-generation", model="PATH/TO/THIS/FOLDER")
print(generate("Number 7 comes before", max_new_tokens=20, do_sample=False)[0]["generated_text"])
```

The model has seen at most {cfg.block_size} tokens of context: prompt plus generated text must fit in that.
"""


# --- the export ---------------------------------------------------------------------------------


def _destination(out: Path, replace: bool) -> Path:
    """The directory the export becomes: OUT, or the directory a symbolic link OUT points to.
    It must not exist yet, or be an empty directory; with `replace`, it may hold a previous export (files of
    ours alone, see _ours), which is swapped for the new one. Anything else is refused before the checkpoint is read."""
    try:
        if out.is_symlink():
            target = out.resolve()
            if not target.exists():
                raise ExportError(f"{out} is a symbolic link to {target}, which does not exist: create that directory "
                                  f"or choose a new output directory")
            out = target
        if not out.exists() or (out.is_dir() and not any(out.iterdir())):
            return out
        if replace and out.is_dir() and _ours(out):
            return out
    except (OSError, RuntimeError) as e:  # unreadable, or a loop of links (RuntimeError before Python 3.13)
        raise ExportError(f"cannot use {out} as the output directory ({getattr(e, 'strerror', None) or e}): "
                          f"choose another") from None
    raise ExportError(f"{out} already exists and is not empty: choose a new output directory")


def _ours(d: Path) -> bool:
    """d holds only files an export writes (a previous export, made again by tune.search --export)."""
    return all(p.is_file() and not p.is_symlink() and p.name in EXPORT_FILES for p in d.iterdir())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomically(dest: Path, write, replace: bool = False) -> None:
    """Call write(tmp) on a new directory of our own beside `dest` (tempfile.mkdtemp: unique, never one that was
    there), then rename it to `dest`. Whatever fails, the directory is removed again, with any parent made for it:
    nothing is left behind. With `replace`, a previous export at `dest` is removed only once the new one is in place."""
    made = [p for p in (dest.parent, *dest.parent.parents) if not p.exists()]
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.export-", dir=dest.parent))
    except OSError as e:
        _remove_empty(made)
        raise ExportError(f"cannot write beside {dest} ({e.strerror or e}): choose another output directory") from None
    old = None
    try:
        try:
            write(tmp)
        except OSError as e:
            if e.errno in DISK_ERRNOS:
                raise write_failed(e.filename or dest, e) from None
            raise
        mask = _umask()
        tmp.chmod(0o777 & ~mask)  # mkdtemp's directory is private; the export gets a new directory's mode
        for f in tmp.iterdir():  # and its files a new file's (safetensors writes 0600)
            if f.is_file() and not f.is_symlink():
                f.chmod(0o666 & ~mask)
        if replace and dest.is_dir() and any(dest.iterdir()):
            holder = Path(tempfile.mkdtemp(prefix=f".{dest.name}.previous-", dir=dest.parent))
            try:
                os.rename(dest, holder)  # over holder, an empty directory of ours
            except OSError:
                holder.rmdir()
                raise
            old = holder
        try:
            os.rename(tmp, dest)  # over an empty directory, if dest is one
        except OSError as e:
            raise ExportError(f"{dest} appeared while exporting ({e.strerror}): choose a new output directory") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            os.rename(old, dest)
        _remove_empty(made)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _remove_empty(dirs: list[Path]) -> None:
    for d in dirs:  # innermost first
        try:
            d.rmdir()
        except OSError:
            return


def export(checkpoint: str | Path, out: str | Path, fmt: str, command: str | None = None, replace: bool = False) -> Path:
    """Write the checkpoint's model in format `fmt` into `out` (a new or empty directory, or a symbolic link to one;
    `replace`: or a previous export, which is swapped for the new one). Written into a new temporary directory first:
    an export that fails leaves nothing behind."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}: choose one of {', '.join(FORMATS)}")
    checkpoint, out = Path(checkpoint), Path(out)
    dest = _destination(out, replace)
    model, tokenizer, meta = load_model(checkpoint, device="cpu")
    if problem := architecture_problem(model.config.to_dict(), fmt):
        raise ExportError(problem)
    if fmt not in tokenizer.exports:
        raise ExportError(f"{fmt_name(fmt)} cannot hold a {tokenizer.kind} tokenizer"
                          f"{' (its meta.pkl maps characters)' if fmt == 'nanogpt' else ''}: "
                          f"use --format {' or '.join(tokenizer.exports)}")
    command = command or f"python -m nanogpt.export {shlex.quote(str(checkpoint))} {shlex.quote(str(out))} --format {fmt}"
    if fmt == "hf":
        card = model_card(model, tokenizer, meta, checkpoint, command)
        write_atomically(dest, lambda tmp: write_hf(model, tokenizer, meta, tmp, card), replace)
    else:
        write_atomically(dest, lambda tmp: write_nanogpt(model, tokenizer, meta, tmp), replace)
    return out


def usage(out: Path, fmt: str, checkpoint: Path | None = None) -> str:
    """How to use what was written, for the terminal."""
    if fmt == "hf":
        return (f"Hugging Face model in {out}: AutoModelForCausalLM.from_pretrained({str(out)!r}) and "
                f"AutoTokenizer.from_pretrained({str(out)!r})")
    meta = read_meta(checkpoint) if checkpoint else {}
    name = nanogpt_dataset_name(meta)
    return (f"nanoGPT checkpoint in {out}; from nanoGPT's folder: mkdir -p data/{name} && cp {out}/meta.pkl "
            f"data/{name}/ && python sample.py --out_dir={out}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m nanogpt.export",
        description="Export a checkpoint (weights and tokenizer) for Hugging Face transformers or nanoGPT.")
    p.add_argument("checkpoint", metavar="CHECKPOINT_DIR", help="a checkpoint directory (e.g. results/NAME/best)")
    p.add_argument("out", metavar="OUT_DIR", help="where to write the export (a new directory)")
    p.add_argument("--format", default="hf", choices=FORMATS,
                   help="hf: transformers (GPT-2 config, model.safetensors, tokenizer.json, model card); "
                        "nanogpt: ckpt.pt and meta.pkl for nanoGPT's sample.py (character tokenizers only) (default: hf)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command = "python -m nanogpt.export " + shlex.join(sys.argv[1:] if argv is None else argv)
    out = export(args.checkpoint, args.out, args.format, command)
    print(usage(out, args.format, Path(args.checkpoint)))
    return 0


if __name__ == "__main__":
    run_main(main)
