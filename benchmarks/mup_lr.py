"""Does the best learning rate hold across widths? Standard parametrization against muP (issue 26, item 3).

Tiny Shakespeare, char-level, 4 layers x 4 heads, block 64, batch 12, dropout 0, AdamW (nanoGPT's: betas 0.9/0.99,
weight decay 0.1, clip 1.0), cosine schedule (warmup 100 steps, to a tenth), at widths (n_embd) 64, 128 and 256
(head size 16, 32, 64), parametrization sp (nanoGPT's) and mup (base width 128: at 128 it is sp, init and logits and
learning rates, so those runs are sp's), every run the same number of steps, so the same tokens. Every model is
scored by one evaluator (benchmarks.anchor.fixed_val_loss: the same 200 x 32 windows of the validation split).

Plan, per (parametrization, width): a learning-rate sweep a factor 2 apart (1e-3 .. 3.2e-2, one more past the edge
where the best sits at an edge) at seed 0; the best then at seeds 1 and 2. The spread of a parametrization is its
largest best learning rate over its smallest, across the widths (1 = the best learning rate holds; the sweep's
resolution is a factor 2). Issue 26's rule: mup becomes a preset's default only where it narrows the spread
measurably (by at least one factor of 2) and loses no loss (at no width is its mean worse than sp's by more than the
larger of their seed sds).

Results go to benchmarks/mup_lr.json as they come (a rerun skips what is there), and RESULTS.md's section.

    python -m benchmarks.mup_lr [--steps 800] [--workers 2] [--report-only] [--smoke-test]
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import statistics
import tempfile
from pathlib import Path

from benchmarks.common import ROOT, shakespeare_chars, stamp, write_section

OUT = ROOT / "benchmarks" / "mup_lr.json"
SECTION = "muP: the best learning rate across widths (benchmarks/mup_lr.py)"
SHAPE = dict(n_layer=4, n_head=4, block_size=64, dropout=0.0)
BATCH = 12
WIDTHS = (64, 128, 256)
BASE_WIDTH = 128
PARAMETRIZATIONS = ("sp", "mup")
LRS = [1e-3 * 2**i for i in range(6)]  # 1e-3 .. 3.2e-2
SEEDS = (0, 1, 2)
STEPS = 800  # equal tokens at every width (614,400); about 30 minutes on 2 cores (45 runs, 1 thread each)
EVAL_ITERS = 200  # fixed_val_loss's windows (x 32)


def train_one(job: dict) -> dict:
    """One run in a worker process (one thread): train, then the fixed evaluator."""
    import torch

    from benchmarks.anchor import fixed_val_loss
    from nanogpt.model import GPTConfig
    from nanogpt.train import Trainer, TrainConfig

    torch.set_num_threads(1)
    data, tok = shakespeare_chars()
    model_cfg = GPTConfig(vocab_size=tok.vocab_size, n_embd=job["width"], parametrization=job["param"],
                          mup_base_width=BASE_WIDTH, **SHAPE)
    cfg = TrainConfig(max_steps=job["steps"], eval_interval=job["steps"], eval_iters=1, batch_size=BATCH,
                      learning_rate=job["lr"], seed=job["seed"], warmup_steps=min(100, job["steps"] // 4),
                      compile="off", device="cpu", train_loss_from="steps")
    t = Trainer(model_cfg, cfg, data, tok)
    load0 = os.getloadavg()[0]
    t.run()
    with torch.no_grad():
        val = fixed_val_loss(t.model, torch.as_tensor(data.val.astype("int64")), iters=job["eval_iters"])
    return {**job, "val_loss": val, "step_s": t.train_time / max(t.step, 1), "params": t.model.get_num_params(),
            "load": load0}


def canonical(param: str, width: int) -> str:
    """mup at its base width is sp (tests/test_train.py): its runs are sp's."""
    return "sp" if width == BASE_WIDTH else param


def key(job: dict) -> str:
    return f"{job['param']}|{job['width']}|{job['steps']}|{job['lr']:g}|{job['seed']}"


def load(out: Path) -> dict:
    return json.loads(out.read_text()) if out.is_file() else {}


def run_jobs(jobs: list[dict], workers: int, out: Path) -> None:
    done = load(out)
    todo = list({key(j): j for j in jobs if key(j) not in done}.values())
    if not todo:
        return
    with mp.get_context("spawn").Pool(workers) as pool:
        for res in pool.imap_unordered(train_one, todo):
            done = load(out)
            done[key(res)] = res
            out.write_text(json.dumps(done, indent=1, sort_keys=True))
            print(f"{res['param']:>3} width {res['width']:>3} lr {res['lr']:.1e} seed {res['seed']}: val "
                  f"{res['val_loss']:.4f} ({res['steps']} steps, {res['step_s'] * 1e3:.1f} ms/step, load "
                  f"{res['load']:.1f})", flush=True)


def results(param: str, width: int, steps: int, out: Path) -> dict[float, list[float]]:
    """lr -> the val losses measured at (param, width)."""
    param = canonical(param, width)
    got: dict[float, list[float]] = {}
    for r in load(out).values():
        if (r["param"], r["width"], r["steps"]) == (param, width, steps):
            got.setdefault(r["lr"], []).append(r["val_loss"])
    return got


def best_lr(param: str, width: int, steps: int, out: Path) -> float | None:
    """The learning rate whose seed-0 loss is lowest (the sweep is at seed 0)."""
    param = canonical(param, width)
    seed0 = {r["lr"]: r["val_loss"] for r in load(out).values()
             if (r["param"], r["width"], r["steps"], r["seed"]) == (param, width, steps, 0)}
    return min(seed0, key=lambda lr: seed0[lr] if math.isfinite(seed0[lr]) else math.inf) if seed0 else None


def past_edge(param: str, width: int, steps: int, out: Path) -> float | None:
    """The learning rate a factor 2 past the sweep's edge, where the best sits at that edge."""
    tried, best = sorted(results(param, width, steps, out)), best_lr(param, width, steps, out)
    if best is None or len(tried) < 2:
        return None
    return best * 2 if best == tried[-1] else best / 2 if best == tried[0] else None


def plan(widths: tuple[int, ...], lrs: list[float], seeds: tuple[int, ...], steps: int, eval_iters: int, workers: int,
         out: Path) -> None:
    cells = list(dict.fromkeys((canonical(p, w), w) for p in PARAMETRIZATIONS for w in widths))
    job = lambda p, w, lr, seed: dict(param=p, width=w, lr=lr, seed=seed, steps=steps, eval_iters=eval_iters)
    run_jobs([job(p, w, lr, 0) for p, w in cells for lr in lrs], workers, out)
    for _ in range(3):  # past an edge, until the best is inside the sweep (at most three steps)
        more = [job(p, w, x, 0) for p, w in cells for x in [past_edge(p, w, steps, out)] if x]
        if not more:
            break
        run_jobs(more, workers, out)
    run_jobs([job(p, w, best_lr(p, w, steps, out), s) for p, w in cells for s in seeds[1:]], workers, out)


def summary(widths: tuple[int, ...], steps: int, out: Path) -> dict:
    """Per parametrization: each width's best lr and its losses, the spread, and the rule's verdict."""
    rows = {p: {w: (lr, results(p, w, steps, out).get(lr, [])) for w in widths
                for lr in [best_lr(p, w, steps, out)] if lr} for p in PARAMETRIZATIONS}
    spread = {p: max(lr for lr, _ in r.values()) / min(lr for lr, _ in r.values()) if r else math.nan
              for p, r in rows.items()}
    sd = lambda v: statistics.stdev(v) if len(v) > 1 else 0.0
    no_loss = all(statistics.mean(rows["mup"][w][1]) <= statistics.mean(rows["sp"][w][1])
                  + max(sd(rows["mup"][w][1]), sd(rows["sp"][w][1]))
                  for w in widths if w in rows["sp"] and w in rows["mup"])
    narrower = spread["mup"] * 2 <= spread["sp"]
    return {"rows": rows, "spread": spread, "narrower": narrower, "no_loss": no_loss, "keep": narrower and no_loss}


def report(widths: tuple[int, ...], steps: int, out: Path, write: bool = True) -> str:
    s = summary(widths, steps, out)
    lines = ["| parametrization | width | best lr | val loss (mean ± sd, n) | ms/step |", "|---|---|---|---|---|"]
    speed = {}
    for r in load(out).values():
        speed.setdefault(r["width"], []).append(r["step_s"])
    for p in PARAMETRIZATIONS:
        for w in widths:
            if w not in s["rows"][p]:
                continue
            lr, vals = s["rows"][p][w]
            sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
            ms = statistics.median(speed[w]) * 1e3
            lines.append(f"| {p} | {w} | {lr:g} | {statistics.mean(vals):.4f} ± {sd:.4f} ({len(vals)}) | {ms:.0f} |")
    sweep = []
    for p in PARAMETRIZATIONS:
        for w in widths:
            got = results(p, w, steps, out)
            if got:
                sweep.append(f"{p}/{w}: " + ", ".join(f"lr {lr:g} {statistics.mean(v):.4f}" for lr, v in sorted(got.items())))
    verdict = ("keep mup as a preset default where these shapes are searched" if s["keep"] else
               "sp stays every preset's default: mup " + " and ".join(
                   what for what, bad in (("did not narrow the spread by a factor 2", not s["narrower"]),
                                          ("lost loss at some width", not s["no_loss"])) if bad))
    body = f"""{stamp()}
{__doc__.split(chr(10) + chr(10))[1]}

{steps} steps of {BATCH} x {SHAPE['block_size']} tokens at every width. Each row: the best learning rate of the
seed-0 sweep, the val loss at it (mean ± sd over seeds, n runs), the median seconds per step (one thread; the load
varies: a loss does not depend on it). mup at width {BASE_WIDTH} is sp at width {BASE_WIDTH}: the same runs.

{chr(10).join(lines)}

Spread of the best learning rate across widths (max / min): sp {s['spread']['sp']:g}, mup {s['spread']['mup']:g}.
**Verdict**: {verdict}.

Every run (seed-0 sweep, mean over the seeds run): {"; ".join(sweep)}.
"""
    if write:
        write_section(SECTION, body)
    return body


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=STEPS, help=f"training steps at every width (default {STEPS})")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--report-only", action="store_true", help="write RESULTS.md from mup_lr.json, train nothing")
    p.add_argument("--smoke-test", action="store_true",
                   help="a few steps at widths 64 and 128, two learning rates, into a temporary file: RESULTS.md and "
                        "mup_lr.json untouched")
    args = p.parse_args()
    if args.smoke_test:
        with tempfile.TemporaryDirectory() as tmp:
            out, widths = Path(tmp) / "mup_lr.json", (64, 128)
            plan(widths, LRS[2:4], SEEDS[:2], steps=10, eval_iters=2, workers=args.workers, out=out)
            print(report(widths, 10, out, write=False))
        return
    if not args.report_only:
        plan(WIDTHS, LRS, SEEDS, args.steps, EVAL_ITERS, args.workers, OUT)
    print(report(WIDTHS, args.steps, OUT))


if __name__ == "__main__":
    main()
