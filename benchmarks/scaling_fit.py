"""Does the scaling law pick a better configuration for a 4x final budget than the raw winner? (tune/scaling.py)

Random configurations of a preset's space are each trained twice, in-process, two at a time with one thread
each (no Ray): once as a search's trial (the trial budget, wsd with cooldown rungs at ASHA's rungs, FIFO so every
trial runs to its end), and once from scratch for the final budget under the final training's schedule (what
--final-budget trains; continuing the trial equals it, tests/test_cooldown.py). The law is fitted to the trials'
rungs as the search would (tune.scaling.choose), and its predictions at the final budget are scored against the
final runs' actual losses: the raw winner's, the fit's pick's and the best one's.

Each configuration costs five trial budgets (a trial and a final run of four), two runs at a time.

    python -m benchmarks.scaling_fit                                   # the RESULTS.md run (shakespeare-muon)
    python -m benchmarks.scaling_fit --trials 6 --budget 2.5e11 --smoke  # a quick look
    python -m benchmarks.scaling_fit --summarize /tmp/scaling_fit.jsonl  # the tables of a run cut short
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import time
from types import SimpleNamespace

import numpy as np

from benchmarks.common import md_table, shakespeare_file, stamp, write_section
from benchmarks.rank_correlation import sample_configs
from tune.config import build_parser, config_from_args


def search_config(preset: str, budget: float, final: float):
    argv = ["--preset", preset, "--data-file", str(shakespeare_file()), "--trial-budget", f"{budget:g}flops",
            "--final-budget", f"{final:g}flops", "--final-from", "scratch", "--eval-every", f"{budget / 10:g}",
            "--grace-period", f"{budget / 10:g}", "--reduction-factor", "3", "--scheduler", "fifo",
            "--searcher", "random", "--schedule", "wsd", "--results-dir", "/tmp/scaling-fit-unused", "--name", "bench"]
    return config_from_args(build_parser().parse_args(argv))


def run_job(job: dict) -> dict:
    """One configuration trained as a trial (job["kind"] "trial") or for the final budget ("final")."""
    import torch

    from nanogpt.token_cache import prepare
    from nanogpt.train import Trainer
    from tune.space import Hparams

    torch.set_num_threads(1)
    config, hp = job["config"], Hparams.from_config(job["hp"])
    data, tok = prepare(config.dataset, config.data_file, "char")
    cfg = config.trial_train_config(hp) if job["kind"] == "trial" else config.final_train_config(hp)
    t0 = time.perf_counter()
    history = Trainer(hp.model_config(tok.vocab_size), cfg, data, tok).run()
    return {"i": job["i"], "kind": job["kind"], "hp": job["hp"], "history": history,
            "final_loss": history[-1]["val_loss"], "wall_s": time.perf_counter() - t0}


def score(results: list[dict], final_budget: float) -> tuple[dict, list[dict]]:
    """(the choice tune.scaling makes from the trials' rungs, one row a configuration with its predicted and
    actual loss at the final budget)."""
    from tune.scaling import Law, choose, predict, rung_points

    trials = {str(r["i"]): r for r in results if r["kind"] == "trial"}
    finals = {str(r["i"]): r["final_loss"] for r in results if r["kind"] == "final"}
    points = rung_points(SimpleNamespace(trial_id=i, config=r["hp"], results=r["history"]) for i, r in trials.items())
    done = {i: r["final_loss"] for i, r in trials.items() if math.isfinite(r["final_loss"]) and i in finals}
    raw = min(done, key=done.get)
    choice = choose(points, list(done), raw, final_budget)
    law = Law(**choice["law"]) if "law" in choice else None
    rows = []
    for i in sorted(done, key=done.get):
        mine = [p for p in points if p.trial_id == i]
        predicted = predict(law, mine, i, final_budget * mine[-1].per_spend) if law and mine else math.nan
        hp = trials[i]["hp"]
        rows.append({"i": i, "n_layer": hp["n_layer"], "n_embd": hp["n_head"] * hp["head_dim"],
                     "lr": hp["learning_rate"], "batch": hp["batch_size"], "trial": done[i],
                     "predicted": predicted, "actual": finals[i]})
    return choice, rows


def report(results: list[dict], final_budget: float, wall: float, load: float, argv, smoke: bool) -> None:
    choice, rows = score(results, final_budget)
    actual = {r["i"]: r["actual"] for r in rows}
    best = min(actual.values())
    pred = np.array([r["predicted"] for r in rows])
    act = np.array([r["actual"] for r in rows])
    ok = np.isfinite(pred) & np.isfinite(act)
    from tune.scaling import spearman

    table = md_table(["config", "layers x embd", "lr", "batch", "loss at trial budget", "predicted at final",
                      "actual at final"],
                     [[r["i"], f"{r['n_layer']}x{r['n_embd']}", f"{r['lr']:.2g}", r["batch"], f"{r['trial']:.4f}",
                       f"{r['predicted']:.4f}", f"{r['actual']:.4f}"] for r in rows])
    pick = choice.get("pick", choice["raw_winner"])
    summary = (f"- fit: {choice.get('law')}\n- decision: {choice['reason']}\n"
               f"- actual loss at the final budget: raw winner {choice['raw_winner']} {actual[choice['raw_winner']]:.4f}, "
               f"the fit's pick {pick} {actual[pick]:.4f}, what was trained ({choice['chosen']}) "
               f"{actual[choice['chosen']]:.4f}, the best {best:.4f}\n"
               f"- predictions at the final budget against the actual losses: mean absolute error "
               f"{np.abs(pred[ok] - act[ok]).mean():.4f}, Spearman {spearman(pred[ok], act[ok]):.2f}")
    print(table + "\n\n" + summary)
    print(f"{wall:.0f} s wall; load average {load:.1f} before, {os.getloadavg()[0]:.1f} after")
    if not smoke:
        write_section("Scaling law: the final budget's configuration (benchmarks/scaling_fit.py)",
                      f"{stamp()} Load average {load:.1f} before, {os.getloadavg()[0]:.1f} after (shared machine); "
                      f"{wall:.0f} s wall.\n\n`python -m benchmarks.scaling_fit {' '.join(argv or [])}`\n\n"
                      f"{table}\n\n{summary}\n")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="shakespeare-muon")
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--budget", type=float, default=2e12, help="FLOPs a trial")
    p.add_argument("--final", type=float, default=4.0, help="the final budget, in trial budgets")
    p.add_argument("--procs", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke", action="store_true", help="print, do not write RESULTS.md")
    p.add_argument("--out", default="/tmp/scaling_fit.jsonl", help="one JSON line a run, written as they finish")
    p.add_argument("--summarize", metavar="JSONL", help="no training: the tables of a run's --out file (configurations "
                                                         "with both runs done)")
    args = p.parse_args(argv)
    if args.summarize:
        with open(args.summarize) as f:
            results = [json.loads(line) for line in f if line.strip()]
        done = {r["i"] for r in results if r["kind"] == "final"} & {r["i"] for r in results if r["kind"] == "trial"}
        report([r for r in results if r["i"] in done], args.final * args.budget, 0.0, os.getloadavg()[0], argv, True)
        return
    config = search_config(args.preset, args.budget, args.final * args.budget)
    jobs = [{"config": config, "hp": hp, "i": i, "kind": kind}
            for i, hp in enumerate(sample_configs(config, args.trials, args.seed)) for kind in ("trial", "final")]
    load, t0, results = os.getloadavg()[0], time.time(), []
    with mp.get_context("spawn").Pool(args.procs) as pool, open(args.out, "w") as f:
        for r in pool.imap_unordered(run_job, jobs):
            results.append(r)
            f.write(json.dumps(r, default=str) + "\n")
            f.flush()
    report(results, config.final_budget, time.time() - t0, load, argv, args.smoke)


if __name__ == "__main__":
    main()
