"""Generate text from a checkpoint: `python -m nanogpt.sample --checkpoint DIR --prompt TEXT`.

Also the notebook's probes: does "Number k comes before" continue with k+1, and "AkBk" with "Ck"?
`probe_numbers` picks the numbers to ask about from a split: seen in training, or held out.
"""

from __future__ import annotations

import argparse
import math
import random
import re

import torch

from nanogpt.cli import run_main
from nanogpt.errors import UserError
from nanogpt.model import GPT


def generate_text(
    model: GPT,
    tokenizer,
    prompt: str,
    max_new_tokens: int = 100,
    temperature: float = 0.8,
    top_k: int | None = None,
    seed: int = 1337,
) -> str:
    """The prompt followed by max_new_tokens generated tokens. Same seed, same text.

    Characters the tokenizer never saw still work: they enter the model as <unk>.
    """
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    device = next(model.parameters()).device
    ids = tokenizer.encode(prompt or "\n")  # nanoGPT starts from a newline when there is no prompt
    idx = torch.tensor([ids], dtype=torch.long, device=device)
    gen = torch.Generator(device=device).manual_seed(seed)
    was_training = model.training
    model.eval()
    out = model.generate(idx, max_new_tokens, temperature=temperature, top_k=top_k, generator=gen)
    model.train(was_training)
    return prompt + tokenizer.decode(out[0, len(ids) :].tolist())


def greedy_continuations(model: GPT, tokenizer, prompts: list[str], new_tokens: list[int]) -> list[str]:
    """Each prompt's greedy continuation, new_tokens[i] tokens of it: what generate_text(..., temperature=0) adds to
    the prompt. Prompts of one length in tokens are decoded together, as one batch (a probe asks 100 short
    questions: one at a time, a small model's step is mostly Python's overhead); greedy tokens do not depend on
    what follows them, so each row is cut to its own length."""
    device = next(model.parameters()).device
    encoded = [tokenizer.encode(p or "\n") for p in prompts]
    groups: dict[int, list[int]] = {}
    for i, ids in enumerate(encoded):
        groups.setdefault(len(ids), []).append(i)
    out = [""] * len(prompts)
    was_training = model.training
    model.eval()
    try:
        for length, rows in groups.items():
            idx = torch.tensor([encoded[i] for i in rows], dtype=torch.long, device=device)
            gen = model.generate(idx, max(new_tokens[i] for i in rows), temperature=0)
            for r, i in enumerate(rows):
                out[i] = tokenizer.decode(gen[r, length : length + new_tokens[i]].tolist())
    finally:
        model.train(was_training)
    return out


def counting_probe(model: GPT, tokenizer, numbers: list[int]) -> list[dict]:
    """Greedy continuation of "Number k comes before"; correct when the next number is k+1."""
    prompts = [f"Number {k} comes before" for k in numbers]
    outputs = greedy_continuations(model, tokenizer, prompts, [len(str(k + 1)) + 3 for k in numbers])
    rows = []
    for k, prompt, output in zip(numbers, prompts, outputs):
        m = re.match(r"\s*(\d+)", output)
        predicted = int(m.group(1)) if m else None
        rows.append({"k": k, "prompt": prompt, "output": output, "predicted": predicted, "correct": predicted == k + 1})
    return rows


def abc_probe(model: GPT, tokenizer, numbers: list[int]) -> list[dict]:
    """Greedy continuation of "AkBk"; correct when it goes on with "Ck" (and no more digits)."""
    prompts = [f"A{k}B{k}" for k in numbers]
    outputs = greedy_continuations(model, tokenizer, prompts, [len(str(k)) + 2 for k in numbers])
    rows = []
    for k, prompt, output in zip(numbers, prompts, outputs):
        m = re.match(r"C(\d+)", output)
        predicted = int(m.group(1)) if m else None
        rows.append({"k": k, "prompt": prompt, "output": output, "predicted": predicted, "correct": predicted == k})
    return rows


PROBES = {"counting": counting_probe, "abc": abc_probe}
# how each pattern's sentences look in a corpus; group 1 is the number a probe asks about
_PATTERNS = {"counting": re.compile(r"Number (\d+) comes before "), "abc": re.compile(r"(?<![A-Za-z0-9])A(\d+)B\1C")}


def _sample(values: list[int], n: int) -> list[int]:
    """n of the values (all when there are at most n), drawn at random with a fixed seed, sorted:
    a fair sample. Evenly spaced picks are not: they always ask about both ends (the last number's
    successor is the only carry of its kind), or with an even spacing never about a carry."""
    if len(values) <= n:
        return sorted(values)
    return sorted(random.Random(0).sample(sorted(values), n))


def probe_numbers(train_text: str, val_text: str, pattern: str = "counting", n: int = 25) -> tuple[list[int], list[int]]:
    """(seen, held_out): up to n numbers each, a fixed random sample, that `pattern`'s sentence
    ("Number k comes before ..." or "AkBkCk") holds in the training text, and in the validation
    text only. Held-out numbers test the rule, not memory. Empty lists when the text has none."""
    regex = _PATTERNS[pattern]
    train = {int(k) for k in regex.findall(train_text)}
    held_out = {int(k) for k in regex.findall(val_text)} - train
    return _sample(list(train), n), _sample(list(held_out), n)


SEED_MAX = 2**64 - 1  # torch.Generator.manual_seed takes at most 64 bits


def check_args(args) -> None:
    """Every flag in range before the checkpoint is read."""
    if args.num_samples < 1:
        raise UserError(f"--num-samples must be at least 1, got {args.num_samples}")
    if args.max_new_tokens < 0:
        raise UserError(f"--max-new-tokens must be >= 0, got {args.max_new_tokens}")
    if not (math.isfinite(args.temperature) and args.temperature >= 0):
        raise UserError(f"--temperature must be a finite number >= 0 (0 = greedy), got {args.temperature}")
    if args.top_k is not None and args.top_k < 1:
        raise UserError(f"--top-k must be at least 1 (leave it out to sample among all tokens), got {args.top_k}")
    if not 0 <= args.seed <= SEED_MAX - (args.num_samples - 1):
        raise UserError(f"--seed must be between 0 and {SEED_MAX - (args.num_samples - 1)} (sample i uses seed + i), "
                        f"got {args.seed}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m nanogpt.sample", description="Generate text from a checkpoint.")
    p.add_argument("--checkpoint", required=True, help="checkpoint directory (e.g. results/NAME/best)")
    p.add_argument("--prompt", default="\n", help="text to continue (default: a newline)")
    p.add_argument("--max-new-tokens", type=int, default=200, metavar="N",
                   help="tokens to generate after the prompt (default: 200)")
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy; higher = more random (default: 0.8)")
    p.add_argument("--top-k", type=int, default=None, help="sample only among the k likeliest tokens")
    p.add_argument("--num-samples", type=int, default=1, help="samples to generate, seeds SEED, SEED+1, ... (default: 1)")
    p.add_argument("--seed", type=int, default=1337, help="random seed: the same seed gives the same text (default: 1337)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda", "mps", "auto"],
                   help="where the model runs; auto = CUDA when available (default: cpu)")
    return p


def main(argv: list[str] | None = None) -> int:
    from nanogpt.checkpoint import load_model

    args = build_parser().parse_args(argv)
    check_args(args)
    model, tokenizer, _ = load_model(args.checkpoint, device=args.device)
    for i in range(args.num_samples):
        if i:
            print("\n---------------")
        print(generate_text(model, tokenizer, args.prompt, args.max_new_tokens, args.temperature, args.top_k, args.seed + i))
    return 0


if __name__ == "__main__":
    run_main(main)
