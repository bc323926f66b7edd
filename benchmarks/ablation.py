"""Today's GPT options, one at a time and together, at nanoGPT's CPU recipe shape (issue 27's ablation).

Tiny Shakespeare, char-level, 4 layers x 4 heads x 128, block 64, batch 12, dropout 0, cosine schedule (warmup
100 steps, to a tenth), AdamW (nanoGPT's: betas 0.9/0.99, weight decay 0.1, clip 1.0) and Muon (the blocks'
matrices), at equal training FLOPs (each row's own FLOPs per token, nanoGPT's formula): 2e12 and 8e12 (the recipe's
2,000 steps). Every model is scored by one evaluator (benchmarks.anchor.fixed_val_loss: the same 200 x 32 windows of
the validation split). The default row is nanoGPT's architecture, which matches nanoGPT's model.py logit for
logit (tests/test_model.py), so its figure is nanoGPT's own. Muon's rows are at equal model FLOPs too: its
Newton-Schulz is not counted here (the search's FLOPs budgets count it), so they compare architectures, not
optimizers.

Plan, per (row, optimizer):
1. 2e12: a learning-rate sweep (three values, a factor 2 apart; one more past the edge where the best is at an
   edge) at seed 0; the best then at seeds 1 and 2.
2. 8e12 (`--big-rows`: the default, the full set and the exportable set): the best 2e12 learning rate and the
   next lower one (the best learning rate falls as the horizon grows) at seed 0; the better at seeds 1 and 2.
Losses do not depend on the machine's load; seconds per step do, so each run's seconds per step are shown beside
the load, and `--speed` times every row's step alone, rows alternating, on one thread (take it on a quiet machine).

Results go to benchmarks/ablation.json as they come (a rerun skips what is there), and RESULTS.md's section.

    python -m benchmarks.ablation [--rows baseline,rope,...] [--budgets 2e12,8e12] [--workers 2] [--speed]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import multiprocessing as mp
import os
import statistics
import time
from pathlib import Path

from benchmarks.common import ROOT, shakespeare_chars, stamp, write_section

OUT = ROOT / "benchmarks" / "ablation.json"
SPEED_OUT = ROOT / "benchmarks" / "ablation_speed.json"  # the last --speed timing: {"measured": ..., "load": ..., "s": {row: s}}
SPEED_COMPILED_OUT = ROOT / "benchmarks" / "ablation_speed_compiled.json"  # the same, --speed --compile (torch.compile)
SHAPE = dict(n_layer=4, n_head=4, n_embd=128, block_size=64, dropout=0.0)
BATCH = 12
MODERN = dict(pos_emb="rope", norm="rmsnorm", mlp="relu2", qk_norm=True, tie_embeddings=False, zero_init=True)
ROWS = {
    "baseline": {},
    "rope": dict(pos_emb="rope"),
    "rmsnorm": dict(norm="rmsnorm"),
    "relu2": dict(mlp="relu2"),
    "swiglu": dict(mlp="swiglu"),
    "qk_norm": dict(qk_norm=True),
    "untied": dict(tie_embeddings=False),
    "softcap": dict(logit_softcap=15.0),
    "zero_init": dict(zero_init=True),
    "modern": MODERN,  # nanochat's choices
    "modern+softcap": {**MODERN, "logit_softcap": 15.0},
    "qwen3": {**MODERN, "mlp": "swiglu"},  # exports to transformers' Qwen3 exactly
}
LRS = {"adamw": [1e-3, 2e-3, 4e-3], "muon": [4e-3, 8e-3, 1.6e-2]}
SEEDS = (0, 1, 2)
# what a row's figures alone do not say, written under the table
NOTES = {"swiglu": "SwiGLU alone with AdamW at lr 8e-3 was unstable: one of its three seeds ended near 2.43 (the row's "
                   "sd 0.21)."}


def train_one(job: dict) -> dict:
    """One run in a worker process: train, then the fixed evaluator."""
    import torch

    from benchmarks.anchor import fixed_val_loss
    from nanogpt.model import GPTConfig
    from nanogpt.train import Trainer, TrainConfig

    torch.set_num_threads(1)
    data, tok = shakespeare_chars()
    model_cfg = GPTConfig(vocab_size=tok.vocab_size, **SHAPE, **ROWS[job["row"]])
    cfg = TrainConfig(budget_unit="flops", budget=job["budget"], eval_every=job["budget"], eval_iters=1,
                      batch_size=BATCH, learning_rate=job["lr"], optimizer=job["optimizer"], seed=job["seed"],
                      warmup_steps=100, compile="off", device="cpu", train_loss_from="steps")
    t = Trainer(model_cfg, cfg, data, tok)
    if job["optimizer"] == "muon":
        # equal model FLOPs (nanoGPT's formula) in every row: a FLOPs budget also counts Muon's Newton-Schulz now
        # (about 0.6x the steps at this shape), so Muon's rows train the steps the model FLOPs alone allow, as the
        # rows measured before that change did
        steps = int(job["budget"] // (cfg.batch_size * model_cfg.block_size * t.flops_per_token) + 1e-9)
        cfg = dataclasses.replace(cfg, budget_unit="steps", budget=None, eval_every=None, max_steps=steps,
                                  eval_interval=steps)
        t = Trainer(model_cfg, cfg, data, tok)
    load0 = os.getloadavg()[0]
    t.run()
    with torch.no_grad():
        val = fixed_val_loss(t.model, torch.as_tensor(data.val.astype("int64")))
    return {**job, "val_loss": val, "steps": t.step, "step_s": t.train_time / max(t.step, 1),
            "params": t.model.get_num_params(), "flops_per_token": t.flops_per_token, "load": load0}


def key(job: dict) -> str:
    return f"{job['row']}|{job['optimizer']}|{job['budget']:g}|{job['lr']:g}|{job['seed']}"


def load() -> dict:
    return json.loads(OUT.read_text()) if OUT.is_file() else {}


def run_jobs(jobs: list[dict], workers: int) -> None:
    done = load()
    todo = [j for j in jobs if key(j) not in done]
    if not todo:
        return
    ctx = mp.get_context("spawn")
    with ctx.Pool(workers) as pool:
        for res in pool.imap_unordered(train_one, todo):
            done = load()
            done[key(res)] = res
            OUT.write_text(json.dumps(done, indent=1, sort_keys=True))
            print(f"{res['row']:>15} {res['optimizer']:>5} {res['budget']:.0e} lr {res['lr']:.0e} seed {res['seed']}: "
                  f"val {res['val_loss']:.4f} ({res['steps']} steps, {res['step_s'] * 1e3:.1f} ms/step, "
                  f"load {res['load']:.1f})", flush=True)


def results(row: str, opt: str, budget: float) -> dict[float, list[float]]:
    """lr -> the val losses measured at (row, opt, budget)."""
    out: dict[float, list[float]] = {}
    for r in load().values():
        if r["row"] == row and r["optimizer"] == opt and r["budget"] == budget:
            out.setdefault(r["lr"], []).append(r["val_loss"])
    return out


def best_lr(row: str, opt: str, budget: float) -> float | None:
    """The learning rate whose seed-0 loss is lowest (the sweep is at seed 0)."""
    seed0 = {r["lr"]: r["val_loss"] for r in load().values()
             if r["row"] == row and r["optimizer"] == opt and r["budget"] == budget and r["seed"] == 0}
    return min(seed0, key=lambda lr: seed0[lr] if math.isfinite(seed0[lr]) else math.inf) if seed0 else None


def past_edge(row: str, opt: str, budget: float) -> float | None:
    """The learning rate one factor of 2 past the sweep's edge, where the best is at that edge."""
    tried = sorted(results(row, opt, budget))
    best = best_lr(row, opt, budget)
    if best is None or len(tried) < 2:
        return None
    return best * 2 if best == tried[-1] else best / 2 if best == tried[0] else None


def plan(rows: list[str], big_rows: list[str], opts: list[str], budgets: list[float], workers: int,
         seeds: tuple[int, ...] = SEEDS) -> None:
    small, big = min(budgets), max(budgets)
    job = lambda row, opt, budget, lr, seed: dict(row=row, optimizer=opt, budget=budget, lr=lr, seed=seed)
    run_jobs([job(r, o, small, lr, 0) for r in rows for o in opts for lr in LRS[o]], workers)
    # a best learning rate at the sweep's edge: one more step past it (twice, or half, the edge)
    run_jobs([job(r, o, small, x, 0) for r in rows for o in opts for x in [past_edge(r, o, small)] if x], workers)
    run_jobs([job(r, o, small, best_lr(r, o, small), s) for r in rows for o in opts for s in seeds[1:]], workers)
    if big == small:
        return
    jobs = []
    for r in big_rows:
        for o in opts:
            lr = best_lr(r, o, small)
            lower = [x for x in LRS[o] if x < lr]
            jobs += [job(r, o, big, x, 0) for x in [lr] + lower[-1:]]
    run_jobs(jobs, workers)
    run_jobs([job(r, o, big, best_lr(r, o, big), s) for r in big_rows for o in opts for s in seeds[1:]], workers)


def speed(rows: list[str], steps: int = 150, rounds: int = 3, compile: str = "off") -> dict[str, float]:
    """Seconds per training step of each row at the recipe shape, one thread, rows alternating (AdamW); with
    compile "on", the compiled step (the compilation itself is not in it: the Trainer counts it apart)."""
    import torch

    from nanogpt.model import GPTConfig
    from nanogpt.train import Trainer, TrainConfig

    torch.set_num_threads(1)
    data, tok = shakespeare_chars()
    per: dict[str, list[float]] = {r: [] for r in rows}
    for _ in range(rounds):
        for r in rows:
            cfg = TrainConfig(max_steps=steps + 10, eval_interval=10**6, eval_iters=1, batch_size=BATCH,
                              compile=compile, device="cpu", train_loss_from="steps")
            t = Trainer(GPTConfig(vocab_size=tok.vocab_size, **SHAPE, **ROWS[r]), cfg, data, tok)
            t.run()
            per[r].append(t.train_time / t.step)
    return {r: statistics.median(v) for r, v in per.items()}


def save_speed(speeds: dict[str, float], out: Path = SPEED_OUT) -> None:
    out.write_text(json.dumps({"measured": time.strftime("%Y-%m-%d %H:%M"), "load": os.getloadavg()[0],
                                     "s": speeds}, indent=1))


def _speed_table(path: Path, heading, default: str) -> str:
    """A stored `--speed` timing (`path`) as a paragraph and a table against the default row; "" when none."""
    if not path.is_file():
        return ""
    timed = json.loads(path.read_text())
    speeds = timed["s"]
    return (f"\n{heading(timed)}\n\n| row | ms/step | vs default{default} |\n|---|---|---|\n"
            + "\n".join(f"| {r} | {s * 1e3:.1f} | {s / speeds['baseline']:.2f}x |" for r, s in speeds.items()) + "\n")


def report(rows: list[str], opts: list[str], budgets: list[float]) -> None:
    """RESULTS.md's section from every row in ablation.json (rows run by an earlier command included) and the last
    `--speed` timing."""
    done = {r["row"] for r in load().values()}
    rows = [r for r in ROWS if r in done]
    lines = ["| row | optimizer | " + " | ".join(f"{b:.0e} lr | {b:.0e} val (mean ± sd, n) | vs default"
                                                    for b in budgets) + " |",
             "|---|---|" + "---|---|---|" * len(budgets)]
    for o in opts:
        base = {b: results("baseline", o, b).get(best_lr("baseline", o, b), []) for b in budgets}
        for r in rows:
            cells = []
            for b in budgets:
                lr = best_lr(r, o, b)
                vals = results(r, o, b).get(lr, []) if lr else []
                if not vals:
                    cells += ["", "", ""]
                    continue
                sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
                diff = statistics.mean(vals) - statistics.mean(base[b]) if base[b] else float("nan")
                cells += [f"{lr:g}", f"{statistics.mean(vals):.4f} ± {sd:.4f} ({len(vals)})", f"{diff:+.4f}"]
            lines.append(f"| {r} | {o} | " + " | ".join(cells) + " |")
    sweep = []
    for o in opts:
        for b in budgets:
            for r in rows:
                got = results(r, o, b)
                if got:
                    sweep.append(f"{r}/{o}/{b:.0e}: " + ", ".join(f"lr {lr:g} {statistics.mean(v):.4f}"
                                                                  for lr, v in sorted(got.items())))
    speed_txt = _speed_table(SPEED_OUT, lambda t: (
        f"Seconds per training step (measured {t['measured']} by `--speed`, load average {t['load']:.1f}) at the recipe "
        "shape (AdamW, 1 thread, rows alternating, median of 3 rounds of 150 steps), against the default row:"), "")
    speed_txt += _speed_table(SPEED_COMPILED_OUT, lambda t: (
        f"The same, compiled (`--speed --compile`, torch.compile's inductor, measured {t['measured']}, load average "
        f"{t['load']:.1f}; compilation not counted):"), " compiled")
    notes = "\n".join(NOTES[r] for r in rows if r in NOTES)
    body = f"""{stamp()}
{__doc__.split(chr(10) + chr(10))[1]}

Each cell: the best learning rate of the sweep, the val loss at it (mean ± sd over seeds, n runs), and its
difference from the default architecture's (nanoGPT's) at its own best learning rate.

{chr(10).join(lines)}

Every run (seed-0 sweep, mean over the seeds run): {"; ".join(sweep)}.
{speed_txt}
{notes}
"""
    write_section("Architecture ablation (benchmarks/ablation.py)", body)
    print(body)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", default=",".join(ROWS))
    p.add_argument("--optimizers", default="adamw,muon")
    p.add_argument("--budgets", default="2e12,8e12")
    p.add_argument("--big-rows", default="baseline,modern,qwen3", help="the rows also run at the larger budget")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seeds", type=int, default=len(SEEDS), help="seeds at the best learning rate (the sweep is seed 0)")
    p.add_argument("--speed", action="store_true", help="also time every row's step (needs a quiet machine)")
    p.add_argument("--compile", action="store_true", help="with --speed: time the compiled step (torch.compile)")
    p.add_argument("--report-only", action="store_true", help="write RESULTS.md from ablation.json, train nothing")
    args = p.parse_args()
    rows, opts = args.rows.split(","), args.optimizers.split(",")
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        raise SystemExit(f"unknown rows {unknown}; choose from {', '.join(ROWS)}")
    budgets = [float(b) for b in args.budgets.split(",")]
    if not args.report_only:
        plan(rows, args.big_rows.split(","), opts, budgets, args.workers, SEEDS[:args.seeds])
    if args.speed:
        save_speed(speed(rows, compile="on" if args.compile else "off"), SPEED_COMPILED_OUT if args.compile else SPEED_OUT)
    report(rows, opts, budgets)


if __name__ == "__main__":
    main()
