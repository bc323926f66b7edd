"""Models leave the project: `python -m nanogpt.export CHECKPOINT_DIR OUT_DIR --format hf|nanogpt`.

hf: a Hugging Face directory (GPT-2's config, model.safetensors, tokenizer.json, a model card) that
`transformers.AutoModelForCausalLM` and `AutoTokenizer` load with no custom code. Our model is GPT-2's
architecture with exact GELU, so only names and layouts change: GPT-2's Conv1D keeps its weight as
(in, out), the transpose of a Linear's, and a model trained with bias=False gets zero biases.
nanogpt: ckpt.pt and meta.pkl in nanoGPT's own format, which its sample.py reads.

Both hold weights only: model.pt's optimizer state and RNG stay behind. Writing needs torch, `tokenizers`
and `safetensors`, not transformers.
"""

from __future__ import annotations

import argparse
import json
import math
import pickle
import re
import shlex
import shutil
import sys
from pathlib import Path

import torch

from nanogpt.checkpoint import load_model
from nanogpt.cli import run_main
from nanogpt.errors import UserError
from nanogpt.model import GPT, GPTConfig
from nanogpt.tokenizer import UNK

FORMATS = ("hf", "nanogpt")
# GPT-2's Conv1D layers: their weight is (in_features, out_features)
_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
_SEARCH_FILE = "search.json"  # tune's settings file, beside best/ and final/ (read for the model card only)


class ExportError(UserError):
    """An export that cannot be made as asked; the message says what to do instead."""


# --- Hugging Face ------------------------------------------------------------------------------


def hf_config(cfg: GPTConfig) -> dict:
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
        "tie_word_embeddings": True,
        # GPT-2's defaults (50256) lie outside our vocabulary; our corpora have no end-of-text token
        "bos_token_id": None,
        "eos_token_id": None,
        "pad_token_id": None,
        "dtype": "float32",
    }


def hf_state_dict(model: GPT) -> dict[str, torch.Tensor]:
    """The weights under GPT2LMHeadModel's names, each a tensor of its own (safetensors refuses shared memory):
    lm_head.weight is left out (tied to transformer.wte.weight, which transformers reties on load)."""
    cfg, out = model.config, {}
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight":
            continue
        tensor = tensor.t() if name.endswith(_CONV1D) else tensor
        out[name] = tensor.detach().to("cpu", torch.float32).contiguous().clone()
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
    (out / "tokenizer.json").write_text(tokenizer.hf_tokenizer_json())
    (out / "tokenizer_config.json").write_text(json.dumps(hf_tokenizer_config(model.config), indent=2))
    (out / "README.md").write_text(card)


# --- nanoGPT -----------------------------------------------------------------------------------


def nanogpt_dataset_name(meta: dict) -> str:
    """The name nanoGPT's sample.py looks up meta.pkl by (data/NAME/meta.pkl): ours, made distinct from
    nanoGPT's own data sets (its shakespeare_char has another vocabulary)."""
    return "nanogpt_tune_" + re.sub(r"[^A-Za-z0-9_.-]+", "_", str(meta.get("dataset") or "data")).strip("_")


def write_nanogpt(model: GPT, tokenizer, meta: dict, out: Path) -> None:
    if "nanogpt" not in tokenizer.exports:
        raise ExportError(f"nanoGPT's format cannot hold a {tokenizer.kind} tokenizer (its meta.pkl maps characters): "
                          f"use --format hf")
    ckpt = {
        "model": model.state_dict(),
        "model_args": model.config.to_dict(),
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
        saved = json.loads(settings.read_text())
    except (OSError, ValueError):
        return f"a nanogpt-tune checkpoint ({checkpoint})"
    role = {"best": "the best trial of", "final": "the final training of"}.get(checkpoint.resolve().name, "")
    command = saved.get("command") or f"python -m tune.search --preset {saved.get('preset')} --name {saved.get('name')}"
    return f"{role} the search `{command}`".replace("  ", " ")


def model_card(model: GPT, tokenizer, meta: dict, checkpoint: Path, fmt_command: str) -> str:
    cfg, train = model.config, meta.get("train", {})
    history = meta.get("history", [])
    best = min(history, key=lambda h: h["val_loss"]) if history else {}
    unit = train.get("budget_unit", "steps")
    budget = f"{train.get('max_steps')} steps" if unit == "steps" else f"{train.get('budget', math.nan):g} {unit}"
    n_params = model.get_num_params()
    return f"""---
library_name: transformers
pipeline_tag: text-generation
tags: [nanogpt, nanogpt-tune, gpt2]
---
# {checkpoint.resolve().name}: a small GPT from nanogpt-tune

A GPT with nanoGPT's architecture ({cfg.n_layer} layers, {cfg.n_head} heads, {cfg.n_embd} embedding, context
{cfg.block_size} tokens, {n_params:,} parameters), stored as a GPT-2 with exact GELU.

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


def export(checkpoint: str | Path, out: str | Path, fmt: str, command: str | None = None) -> Path:
    """Write the checkpoint's model in format `fmt` into `out` (a new directory; an existing non-empty one is refused).
    Written into a temporary directory first: an export that fails leaves nothing behind."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}: choose one of {', '.join(FORMATS)}")
    checkpoint, out = Path(checkpoint), Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"{out} already exists and is not empty: choose a new output directory")
    model, tokenizer, meta = load_model(checkpoint, device="cpu")
    command = command or f"python -m nanogpt.export {shlex.quote(str(checkpoint))} {shlex.quote(str(out))} --format {fmt}"
    tmp = out.with_name(out.name + ".export-tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        if fmt == "hf":
            write_hf(model, tokenizer, meta, tmp, model_card(model, tokenizer, meta, checkpoint, command))
        else:
            write_nanogpt(model, tokenizer, meta, tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        out.rmdir()  # empty (checked above)
    tmp.rename(out)
    return out


def usage(out: Path, fmt: str, checkpoint: Path | None = None) -> str:
    """How to use what was written, for the terminal."""
    if fmt == "hf":
        return (f"Hugging Face model in {out}: AutoModelForCausalLM.from_pretrained({str(out)!r}) and "
                f"AutoTokenizer.from_pretrained({str(out)!r})")
    meta = json.loads((checkpoint / "config.json").read_text()) if checkpoint else {}
    name = nanogpt_dataset_name(meta)
    return (f"nanoGPT checkpoint in {out}; from nanoGPT's folder: mkdir -p data/{name} && cp {out}/meta.pkl "
            f"data/{name}/ && python sample.py --out_dir={out}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m nanogpt.export",
        description="Export a checkpoint (weights and tokenizer) for Hugging Face transformers or nanoGPT.")
    p.add_argument("checkpoint", metavar="CHECKPOINT_DIR", help="a checkpoint directory (e.g. results/NAME/best)")
    p.add_argument("out", metavar="OUT_DIR", help="where to write the export (a new directory)")
    p.add_argument("--format", default="hf", choices=FORMATS,
                   help="hf: transformers (GPT-2 config, model.safetensors, tokenizer.json, model card); "
                        "nanogpt: ckpt.pt and meta.pkl for nanoGPT's sample.py (character tokenizers only) (default: hf)")
    args = p.parse_args(argv)
    command = "python -m nanogpt.export " + shlex.join(sys.argv[1:] if argv is None else argv)
    out = export(args.checkpoint, args.out, args.format, command)
    print(usage(out, args.format, Path(args.checkpoint)))
    return 0


if __name__ == "__main__":
    run_main(main)
