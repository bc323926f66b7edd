"""Attention heatmaps: which earlier tokens each token looks at.

`python -m nanogpt.attention --checkpoint DIR --text "Number 7 comes before" --layer 0 --head 0 --out att.png`
(--head -1 averages the heads of the layer).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from nanogpt.cli import run_main
from nanogpt.errors import UserError
from nanogpt.model import GPT


def attention_matrix(model: GPT, tokenizer, text: str, layer: int = 0, head: int = 0) -> tuple[list[str], torch.Tensor]:
    """(token strings, (t, t) attention probabilities) of one layer and head; head=-1 averages heads."""
    if not text:
        raise UserError("attention needs a non-empty text")
    L, H = model.config.n_layer, model.config.n_head
    if not -L <= layer < L:
        raise UserError(f"layer {layer} does not exist: the model has {L} layers (0..{L - 1})")
    if not -1 <= head < H:
        raise UserError(f"head {head} does not exist: the model has {H} heads (0..{H - 1}, or -1 for their mean)")
    ids = tokenizer.encode(text)[-model.config.block_size :]
    device = next(model.parameters()).device
    maps = model.attention_maps(torch.tensor([ids], device=device))  # (n_layer, nh, t, t)
    att = maps[layer].mean(0) if head == -1 else maps[layer, head]
    return tokenizer.token_strings(ids), att.cpu()


def focus_summary(tokens: list[str], att: torch.Tensor, threshold: float = 0.2) -> list[str]:
    """The notebook's reading of a heatmap: what each token focuses on most."""
    lines = []
    for i, tok in enumerate(tokens):
        j = int(att[i].argmax())
        w = float(att[i, j])
        if w > threshold:
            lines.append(f"{tok!r} focuses most on {tokens[j]!r} (position {j}, weight {w:.2f})")
    return lines


def plot_attention(tokens: list[str], att: torch.Tensor, path: str | Path, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = len(tokens)
    labels = [repr(s)[1:-1] for s in tokens]  # make spaces and newlines visible
    size = min(14, 3 + 0.35 * t)
    fig, ax = plt.subplots(figsize=(size, size * 0.85))
    im = ax.imshow(att.numpy(), cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(t), labels, rotation=90, fontsize=8)
    ax.set_yticks(range(t), labels, fontsize=8)
    ax.set_xlabel("attended-to token (key)")
    ax.set_ylabel("attending token (query)")
    ax.set_title(title or "attention")
    fig.colorbar(im, ax=ax, label="attention weight", shrink=0.8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m nanogpt.attention", description="Attention heatmap of a checkpoint.")
    p.add_argument("--checkpoint", required=True, help="checkpoint directory (e.g. results/NAME/best)")
    p.add_argument("--text", required=True, help="the text whose attention is drawn (one row and column a token)")
    p.add_argument("--layer", type=int, default=0, help="transformer block, from 0 (default: 0)")
    p.add_argument("--head", type=int, default=0, help="attention head, from 0; -1 = mean over the heads (default: 0)")
    p.add_argument("--out", default="attention.png", help="where the heatmap PNG goes (default: attention.png)")
    return p


def main(argv: list[str] | None = None) -> int:
    from nanogpt.checkpoint import load_model

    args = build_parser().parse_args(argv)
    model, tokenizer, _ = load_model(args.checkpoint)
    tokens, att = attention_matrix(model, tokenizer, args.text, args.layer, args.head)
    head = "mean of heads" if args.head == -1 else f"head {args.head}"
    plot_attention(tokens, att, args.out, f"layer {args.layer}, {head}: {args.text[:40]!r}")
    print("\n".join(focus_summary(tokens, att)))
    print(f"heatmap written to {args.out}")
    return 0


if __name__ == "__main__":
    run_main(main)
