"""Equal total training FLOPs, the machine-independent headline (issue 26): everything our command trains against
nanoGPT's recipe trained for the same FLOPs.

    python -m benchmarks.equal_flops [--preset shakespeare-modern] [--ours "--ladder on" ...] [--smoke-test]

1. Ours: `python -m tune.search --preset P --data-file tinyshakespeare.txt SIZE_FLAGS FLAGS --seed 0` (SIZE_FLAGS:
   --num-samples, --trial-budget, its evaluations and --final-budget, sized so that the whole command trains about
   1.9e13 FLOPs, nanoGPT's 15-minute recipe run on the machine the issue was measured on). Its total is counted
   from what the runs themselves recorded, every FLOP that trained a model: each trial's steps and cooldown branches
   (its last result's total_spend, pruned trials too), each ladder run's steps and branches beyond the trial it
   continued, and the final training's beyond the run it continued (tune.checkpoints' histories), in the search's
   FLOPs (nanoGPT's formula per token, plus Muon's Newton-Schulz: the search counts what the user pays for).
2. nanoGPT's CPU recipe (4 x 4 x 128, block 64, batch 12, lr 1e-3, dropout 0) by nanoGPT's own train.py on a
   copy of ../shared/anchors/nanoGPT, for that total: max_iters = lr_decay_iters = the total over the FLOPs of one
   iteration (nanoGPT's formula, 12 x 64 tokens), rounded up to its evaluation interval (250), so it never trains
   less than ours.
3. Both scored by one evaluator (benchmarks.anchor.fixed_val_loss): the same 200 x 32 windows of 64 characters of
   tiny Shakespeare's validation split. Losses do not depend on the machine or its load (the order in which
   ASHA sees trials can).
Goal (issue 26): ours at least 0.10 nats below at 1.9e13.
"""

from __future__ import annotations

import argparse
import math
import os
import shlex
import time
from pathlib import Path

import torch

from benchmarks import anchor
from benchmarks.common import md_table, our_search, shakespeare_file, stamp, write_section

GOAL = 0.10
RECIPE_EVAL_INTERVAL = 250
TARGET = 1.9e13
# about 1.9e13 in all: 12 trials of at most 5e11 (most stopped by ASHA at 5e10 or 1.5e11), the winner continued to
# 1.4e13. The figure that counts is the one measured after the run.
SIZE = ["--num-samples", "12", "--trial-budget", "5e11flops", "--eval-every", "5e10flops", "--grace-period",
        "5e10flops", "--final-budget", "1.4e13flops"]
SMOKE = ["--num-samples", "2", "--trial-budget", "1e11flops", "--eval-every", "5e10flops", "--grace-period",
         "5e10flops", "--final-budget", "2e11flops"]


def added_spend(history: list[dict], parent_step: int | None) -> float:
    """What a run trained beyond the run it continued: its last total_spend less the total_spend of its history's
    last row at or before the parent's last step (those rows are the parent's, carried over by the restore).
    parent_step None: a run from scratch, all of it."""
    if not history:
        return 0.0
    base = 0.0
    if parent_step is not None:
        before = [r for r in history if r["step"] <= parent_step]
        base = float(before[-1]["total_spend"]) if before else 0.0
    return float(history[-1]["total_spend"]) - base


def total_flops(exp: Path) -> dict:
    """Every FLOP the search in `exp` trained: {"trials", "ladder", "final", "total"} in its budget unit (FLOPs)."""
    from nanogpt.checkpoint import raw_meta
    from tune.experiment import read_trials

    last = {t.trial_id: rows[-1] for t in read_trials(exp) if (rows := [r for r in t.results if "total_spend" in r])}
    trials = sum(float(r["total_spend"]) for r in last.values())
    ladder, ladder_last = 0.0, {}
    for d in sorted((exp / "ladder").glob("*")) if (exp / "ladder").is_dir() else []:
        if (d / "config.json").is_file() and d.name in last:
            hist = raw_meta(d).get("history") or []
            ladder += added_spend(hist, int(last[d.name]["step"]))
            ladder_last[d.name] = int(hist[-1]["step"]) if hist else None
    final = 0.0
    if (exp / "final" / "config.json").is_file():
        meta = raw_meta(exp / "final")
        parent = meta.get("continued_from")
        via_ladder = (meta.get("chosen_by") or {}).get("by") == "ladder" and parent in ladder_last
        parent_step = ladder_last[parent] if via_ladder else (int(last[parent]["step"]) if parent in last else None)
        final = added_spend(meta.get("history") or [], parent_step)
    return {"trials": trials, "ladder": ladder, "final": final, "total": trials + ladder + final}


def run_ours(flags: list[str], val) -> dict:
    from nanogpt.checkpoint import load_model, read_checkpoint
    from tune import report

    with our_search([*flags, "--seed", "0"], "eqf") as run:
        exp = run.exp
        trials = report.load(exp)
        meta, _ = read_checkpoint(exp / "final")
        model, _, _ = load_model(exp / "final")
        lines = [ln for ln in run.stdout.splitlines() if ln.startswith(("final model", "ladder", "horizon"))]
        return {"flops": total_flops(exp), "val": anchor.fixed_val_loss(model, val), "own": meta["history"][-1]["val_loss"],
                "params": model.get_num_params(), "steps": meta["history"][-1]["step"], "wall_s": run.wall_s,
                "continued_from": meta.get("continued_from"), "chosen_by": (meta.get("chosen_by") or {}).get("by"),
                "top": report.top_table(trials, 5), "outcomes": trials["outcome"].value_counts().to_dict(),
                "lines": lines, "n_trials": len(trials)}


def recipe_iters(total: float, flops_per_token: float, interval: int = RECIPE_EVAL_INTERVAL) -> int:
    """nanoGPT's iterations for `total` FLOPs, rounded up to its evaluation interval (it never trains less)."""
    r = anchor.CPU_RECIPE
    per_iter = r["batch_size"] * r["block_size"] * flops_per_token
    return max(interval, math.ceil(total / per_iter / interval) * interval)


def run_recipe(work: Path, threads: int, total: float, val, vocab_size: int, smoke: bool) -> dict:
    from nanogpt.model import GPT, GPTConfig

    r = anchor.CPU_RECIPE
    fpt = GPT(GPTConfig(n_layer=r["n_layer"], n_head=r["n_head"], n_embd=r["n_embd"], block_size=r["block_size"],
                        vocab_size=vocab_size, dropout=0.0)).flops_per_token()
    interval = 10 if smoke else RECIPE_EVAL_INTERVAL
    iters = recipe_iters(total, fpt, interval)
    t0 = time.time()
    run = anchor.train(work, threads, **{**r, "max_iters": iters, "lr_decay_iters": iters, "eval_interval": interval,
                                         "out_dir": f"out-equal-flops-{iters}"})
    wall = time.time() - t0
    model, kept = anchor.load_checkpoint(run.checkpoint)
    return {"iters": iters, "flops": iters * r["batch_size"] * r["block_size"] * model.flops_per_token(),
            "val": anchor.fixed_val_loss(model, val, id_offset=-1), "own": run.val_losses[-1][1], "kept": kept,
            "params": model.get_num_params(), "wall_s": wall}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="shakespeare-modern")
    p.add_argument("--ours", action="append", default=None, metavar="FLAGS",
                   help="flags added to our command (quoted, e.g. \"--ladder on\"); repeat for one run of ours each, "
                        "each against nanoGPT's recipe at its own total")
    p.add_argument("--size", default=shlex.join(SIZE), help="the flags that size our command (default: about 1.9e13)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--smoke-test", action="store_true", help="tiny sizes, every part runs; RESULTS.md untouched")
    args = p.parse_args()

    from nanogpt.batches import tokenize
    from nanogpt.dataset import load_dataset
    from nanogpt.tokenizer import CharTokenizer

    torch.set_num_threads(args.threads)
    src = shakespeare_file()
    ds = load_dataset(data_file=src)
    tok = CharTokenizer.from_text(ds.text)  # nanoGPT's shakespeare_char: the same sorted characters
    val = tokenize(ds, tok).val
    size = SMOKE if args.smoke_test else shlex.split(args.size)
    work = anchor.workdir()
    load0 = os.getloadavg()[0]
    pairs = []
    for extra in args.ours or [""]:
        flags = ["--preset", args.preset, "--data-file", str(src), *size, *shlex.split(extra)]
        ours = run_ours(flags, val)
        print(f"ours {extra or '(as is)'}: {ours['flops']['total']:.3g} FLOPs in all, val {ours['val']:.4f}", flush=True)
        recipe = run_recipe(work, args.threads, ours["flops"]["total"], val, tok.vocab_size, args.smoke_test)
        print(f"nanoGPT's recipe: {recipe['iters']} iterations, {recipe['flops']:.3g} FLOPs, val {recipe['val']:.4f}",
              flush=True)
        pairs.append((extra, flags, ours, recipe))
    body = section(args, pairs, load0, os.getloadavg()[0])
    print(body)
    if not args.smoke_test:
        title = "Equal total FLOPs" + (f", --preset {args.preset}" if args.preset != "shakespeare-modern" else "")
        if args.ours:
            title += ", ours with " + " / ".join(f"`{v}`" for v in args.ours)
        write_section(title + " (benchmarks/equal_flops.py)", body)


def section(args, pairs, load0: float, load1: float) -> str:
    rows, details = [], []
    for extra, flags, ours, recipe in pairs:
        f = ours["flops"]
        margin = recipe["val"] - ours["val"]
        rows.append([f"ours `{args.preset}`" + (f" `{extra}`" if extra else ""), f"{f['total']:.3g}",
                     f"{f['trials']:.3g} / {f['ladder']:.3g} / {f['final']:.3g}", f"{ours['params']:,}",
                     f"**{ours['val']:.4f}**", f"{ours['wall_s']:.0f} s", ""])
        rows.append([f"nanoGPT's recipe, nanoGPT's train.py ({recipe['iters']} iterations, kept {recipe['kept']})",
                     f"{recipe['flops']:.3g}", "", f"{recipe['params']:,}", f"**{recipe['val']:.4f}**",
                     f"{recipe['wall_s']:.0f} s",
                     f"{margin:+.4f} (goal {GOAL:+.2f}: **{'met' if margin >= GOAL else 'missed'}**)"])
        lines = "\n".join(f"    {ln}" for ln in ours["lines"])
        details.append(f"""Ours{f' with `{extra}`' if extra else ''}: {ours['n_trials']} trials ({', '.join(f'{n} {o}' for o, n in ours['outcomes'].items())}), final model
continued from trial {ours['continued_from']} (chosen by {ours['chosen_by'] or 'the trials'}):

    python -m tune.search {shlex.join(flags)} --seed 0
{lines}

```
{ours['top']}
```
""")
    return f"""{stamp()} Load average {load0:.1f} at the start, {load1:.1f} at the end (losses and FLOPs do not depend on it;
wall times do).

`python -m benchmarks.equal_flops --preset {args.preset}{''.join(f' --ours {shlex.quote(v)}' for v in (args.ours or []))}`.
Ours: everything the command trained, counted from its runs' own records (trials with their cooldown branches, pruned
ones too / the ladder's runs beyond their trials / the final training beyond the run it continued), in the search's
FLOPs (nanoGPT's formula per token, plus Muon's Newton-Schulz). nanoGPT's recipe: trained by its own train.py for at
least that total (its iterations rounded up to its evaluation interval), its checkpoint the one its train.py kept.
Both scored by one evaluator: the same 200 x 32 windows of 64 characters of tiny Shakespeare's validation split.
Margin: nanoGPT's loss minus ours (positive: ours lower); goal (issue 26): at least {GOAL:.2f} at {TARGET:.1e}.

{md_table(["model", "training FLOPs, all", "trials / ladder / final", "params", "val loss (one evaluator)", "wall", "margin"], rows)}

{chr(10).join(details)}"""


if __name__ == "__main__":
    main()
