"""Checkpoints on disk: model.pt (weights, optimizer, step, RNG; read with weights_only=True),
config.json (model and training configs, history) and tokenizer.json. Reading one never runs code.
A wsd trial's checkpoint taken at a cooldown rung also holds decayed.pt: the weights of the decayed branch whose
loss it reported. Training resumes from model.pt's stable weights; load_model (sampling) takes the decayed ones.

This module owns the layout: write_checkpoint writes one, read_meta / raw_meta read its config.json, patch_meta
adds the search's records to it (which trial a final model continued, how it was chosen), and last_eval,
last_val_loss and meta_vocab_size read the fields the search and its report use.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from nanogpt.errors import UserError
from nanogpt.files import replace_atomically, write_json
from nanogpt.model import GPT, GPTConfig, resolve_device
from nanogpt.tokenizer import load_tokenizer, save_tokenizer

MODEL_FILE = "model.pt"
CONFIG_FILE = "config.json"
TOKENIZER_FILE = "tokenizer.json"
DECAYED_FILE = "decayed.pt"


class CheckpointError(UserError):
    """A checkpoint that is missing, corrupt or does not fit. The message says what to do."""


def write_checkpoint(directory: str | Path, state: dict, meta: dict, decayed: dict | None = None,
                     tokenizer=None) -> Path:
    """Write model.pt (`state`: weights, optimizer, step, RNG), decayed.pt (`decayed`: the decayed branch's weights;
    without them an older decayed.pt is removed), config.json (`meta`) and, given one, tokenizer.json."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    with replace_atomically(d / MODEL_FILE) as f:  # a full disk leaves the previous checkpoint whole
        torch.save(state, f)
    if decayed is not None:  # what sampling uses: the weights whose val_loss was reported
        with replace_atomically(d / DECAYED_FILE) as f:
            torch.save({"model": decayed}, f)
    else:
        (d / DECAYED_FILE).unlink(missing_ok=True)
    write_json(d / CONFIG_FILE, meta, indent=2)
    if tokenizer is not None:
        save_tokenizer(tokenizer, d / TOKENIZER_FILE)
    return d


def run_meta(model_cfg: GPTConfig, train_cfg, data, step: int, status: str, warmup_steps: int,
             decay_anchor: tuple[int, float] | None, history: list[dict]) -> dict:
    """config.json of a run's checkpoint (Trainer.save): its model and training configs (train_cfg: a TrainConfig),
    its data (a TokenData), step, status (a Status's value), warmup (what a continuation must repeat), where a
    squeezed decay began (step, lr) and its evaluations."""
    return {
        "model": model_cfg.to_dict(),
        "train": train_cfg.to_dict(),
        "dataset": data.dataset,
        "val_chars_per_token": data.val_chars_per_token,
        "step": step,
        "status": status,
        "warmup_steps": warmup_steps,
        "decay_anchor": list(decay_anchor) if decay_anchor else None,
        "history": history,
    }


def optimizers_state(optimizers: list[torch.optim.Optimizer]) -> dict:
    """A run's optimizers in its checkpoint: AdamW's state under "optimizer", Muon's (None without) under "muon"."""
    return {"optimizer": optimizers[0].state_dict(),
            "muon": optimizers[1].state_dict() if len(optimizers) > 1 else None}


def load_optimizers_state(optimizers: list[torch.optim.Optimizer], sd: dict, optimizer: str) -> None:
    """Load optimizers_state's `sd` into a run's `optimizers` (of the optimizer named `optimizer`, adamw or muon);
    a CheckpointError where the checkpoint was trained with the other."""
    saved = "muon" if sd.get("muon") else "adamw"
    if saved != optimizer:
        raise CheckpointError(f"this checkpoint was trained with the optimizer {saved}, not {optimizer}"
                              + (": it holds no Muon state" if saved == "adamw" else "")
                              + f"; resume it with the optimizer {saved}")
    optimizers[0].load_state_dict(sd["optimizer"])
    if len(optimizers) > 1:
        optimizers[1].load_state_dict(sd["muon"])


def rng_state(batch_gen: torch.Generator, cuda: bool) -> dict:
    """A run's random streams in its checkpoint: torch's global one (dropout), its batches' and (`cuda`) CUDA's."""
    return {"rng_torch": torch.get_rng_state(), "rng_batch": batch_gen.get_state(),
            "rng_cuda": torch.cuda.get_rng_state_all() if cuda else []}


def load_rng_state(sd: dict, batch_gen: torch.Generator, cuda: bool) -> None:
    """Put back the random streams rng_state's `sd` holds."""
    torch.set_rng_state(sd["rng_torch"])
    batch_gen.set_state(sd["rng_batch"])
    if cuda and sd["rng_cuda"]:
        torch.cuda.set_rng_state_all(sd["rng_cuda"])


def read_checkpoint(directory: str | Path) -> tuple[dict, dict]:
    """(config.json contents, model.pt state) of a checkpoint directory, with clear errors."""
    d = Path(directory)
    if not d.is_dir():
        raise CheckpointError(f"checkpoint directory {d} does not exist: pass the folder that holds {MODEL_FILE}")
    for name in (MODEL_FILE, CONFIG_FILE):
        if not (d / name).is_file():
            raise CheckpointError(f"{d} is not a checkpoint: {name} is missing")
    meta = read_meta(d)
    # mapped, not read: the tensors' shapes cost no memory, and the config is checked against them before
    # anything the config asks for is allocated
    check_shapes(d, GPTConfig(**meta["model"]), _load(d, mmap=True))
    return meta, _load(d)


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _integer(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


# config.json's fields that are read besides "model" (exports, model cards, resuming), and the JSON each must be
# when present: a crafted file fails here, in one line, not deep in what reads it
_META_FIELDS = {"train": (dict, "an object"), "history": (list, "a list"), "dataset": (str, "a string"),
                "step": (_integer, "an integer")}
_TRAIN_FIELDS = {"max_steps": (_integer, "an integer"), "budget_unit": (str, "a string"),
                 "budget": (lambda x: x is None or _number(x), "a number or null")}
_HISTORY_FIELDS = {"step": (_integer, "an integer"), "val_loss": (_number, "a number"), "val_bpc": (_number, "a number")}


def _problem(obj: dict, fields: dict, where: str) -> str | None:
    for key, (kind, what) in fields.items():
        if key in obj and not (isinstance(obj[key], kind) if isinstance(kind, type) else kind(obj[key])):
            return f"{where}{key} must be {what}, not {json.dumps(obj[key])[:40]}"
    return None


def meta_problem(meta) -> str | None:
    """What is wrong with config.json's contents, or None: the model config GPTConfig takes, and the other
    fields' JSON types."""
    if not isinstance(meta, dict):
        return "it holds no JSON object"
    if not isinstance(meta.get("model"), dict):
        return '"model" must be an object (the model config)'
    try:
        GPTConfig(**meta["model"])
    except (ValueError, TypeError) as e:
        return f"model: {e}"
    problem = _problem(meta, _META_FIELDS, "")
    if problem is None and "train" in meta:
        problem = _problem(meta["train"], _TRAIN_FIELDS, "train.")
    for i, h in enumerate(meta.get("history", []) if problem is None else []):
        problem = f"history[{i}] must be an object" if not isinstance(h, dict) else _problem(h, _HISTORY_FIELDS,
                                                                                          f"history[{i}].")
        if problem:
            break
    return problem


def read_meta(directory: str | Path) -> dict:
    """config.json of a checkpoint directory, checked (meta_problem); a bad one is a CheckpointError naming it."""
    path = Path(directory) / CONFIG_FILE
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:  # UnicodeDecodeError is a ValueError
        raise CheckpointError(f"checkpoint {directory} has a corrupt {CONFIG_FILE} ({_first_line(e)}): "
                              f"retrain or pick another checkpoint") from None
    if problem := meta_problem(meta):
        raise CheckpointError(f"checkpoint {directory} has a corrupt {CONFIG_FILE} ({problem}): "
                              f"retrain or pick another checkpoint")
    return meta


def raw_meta(checkpoint: str | Path | dict[str, bytes]) -> dict:
    """config.json as written, unchecked (read_meta checks it): of a checkpoint directory, or of a checkpoint held
    as its files (name -> bytes). OSError or ValueError when it cannot be read or is not JSON."""
    if isinstance(checkpoint, dict):
        return json.loads(checkpoint[CONFIG_FILE])
    return json.loads((Path(checkpoint) / CONFIG_FILE).read_text())


def patch_meta(files: dict[str, bytes], **fields) -> None:
    """`fields` added to config.json of a checkpoint held as its files (name -> bytes), in place: what the search
    records beside the training's own (continued_from, chosen_by, ladder, horizon_lr)."""
    files[CONFIG_FILE] = json.dumps({**json.loads(files[CONFIG_FILE]), **fields}, indent=2).encode()


def last_eval(meta: dict) -> dict:
    """config.json's last evaluation (its history's last entry: step, spend, val_loss, ...); {} when it has none."""
    history = meta.get("history") if isinstance(meta.get("history"), list) else []
    return history[-1] if history and isinstance(history[-1], dict) else {}


def last_val_loss(meta: dict) -> float | None:
    """The last evaluation's val_loss, when it is a finite number; else None."""
    v = last_eval(meta).get("val_loss")
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


def meta_vocab_size(meta: dict):
    """The model's vocabulary size, as config.json says it (unchecked: a KeyError or TypeError where it does not)."""
    return meta["model"]["vocab_size"]


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0] if lines else ''}".rstrip(": ")


def _load(d: Path, mmap: bool = False) -> dict:
    try:
        sd = torch.load(d / MODEL_FILE, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:  # torch raises several types for truncated or foreign files
        raise CheckpointError(f"checkpoint {d} has a corrupt {MODEL_FILE} ({type(e).__name__}); retrain or pick another checkpoint") from None
    if not isinstance(sd, dict) or not isinstance(sd.get("model"), dict):
        raise CheckpointError(f"checkpoint {d}: {MODEL_FILE} holds no model weights")
    return sd


def check_shapes(d: Path, cfg: GPTConfig, sd: dict) -> None:
    """config.json must describe the weights in model.pt: the vocabulary, embedding, context and layers that fix
    every tensor's size. Then a model built from the config is no larger than the weights it loads, whatever a
    crafted config.json says."""
    shapes = {k: tuple(v.shape) for k, v in sd["model"].items() if isinstance(v, torch.Tensor)}
    layers = {k.split(".")[2] for k in shapes if k.startswith("transformer.h.")}
    wte, wpe = shapes.get("transformer.wte.weight"), shapes.get("transformer.wpe.weight")
    if wte is None or len(wte) != 2 or (wpe is not None and (len(wpe) != 2 or wpe[1] != wte[1])):
        raise CheckpointError(f"checkpoint {d}: {MODEL_FILE} holds no GPT weights this project reads")
    # rope has no position table: its block_size sizes nothing
    weights = {"vocab_size": wte[0], "n_embd": wte[1], "n_layer": len(layers),
               "pos_emb": "rope" if wpe is None else "learned"}
    if wpe is not None:
        weights["block_size"] = wpe[0]
    for field, size in weights.items():
        if getattr(cfg, field) != size:
            raise CheckpointError(f"checkpoint {d}: {CONFIG_FILE} says {field}={getattr(cfg, field)} but {MODEL_FILE} "
                                  f"holds weights for {field}={size}; the two files do not belong together")


def read_checkpoint_tokenizer(directory: str | Path):
    d = Path(directory)
    if not (d / TOKENIZER_FILE).is_file():
        raise CheckpointError(f"{d} is not a complete checkpoint: {TOKENIZER_FILE} is missing")
    try:
        return load_tokenizer(d / TOKENIZER_FILE)
    except Exception as e:  # JSON, key and tokenizers-library errors all mean the same to the user
        raise CheckpointError(f"checkpoint {d} has a corrupt {TOKENIZER_FILE} ({_first_line(e)}): "
                              f"retrain or pick another checkpoint") from None


def load_model(directory: str | Path, device: str = "cpu"):
    """(model in eval mode, tokenizer, config.json contents) from a checkpoint directory."""
    d = Path(directory)
    meta, sd = read_checkpoint(d)
    tokenizer = read_checkpoint_tokenizer(d)
    model_cfg = GPTConfig(**meta["model"])
    if tokenizer.vocab_size != model_cfg.vocab_size:
        raise CheckpointError(
            f"checkpoint {d}: the tokenizer has {tokenizer.vocab_size} tokens but the model expects "
            f"{model_cfg.vocab_size}; the two files come from different runs"
        )
    model = GPT(model_cfg)
    if (d / DECAYED_FILE).is_file():
        try:
            sd = torch.load(d / DECAYED_FILE, map_location="cpu", weights_only=True)
        except Exception as e:  # as for model.pt
            raise CheckpointError(f"checkpoint {d} has a corrupt {DECAYED_FILE} ({type(e).__name__})") from None
    try:
        model.load_state_dict(sd["model"])
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise CheckpointError(f"checkpoint {d}: weights do not fit its config ({first})") from None
    model.to(resolve_device(device)).eval()
    return model, tokenizer, meta
