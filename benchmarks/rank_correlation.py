"""Does an early rung predict the final loss? Spearman between each trial's loss at a tenth of its budget and its
final loss, over a FIFO search's trials (every trial runs to its end), cosine against wsd with cooldown rungs.

The same randomly sampled configurations (Optuna's RandomSampler, the search's own space and TrainConfig from
SearchConfig.trial_train_config) are trained under both schedules on each data set, in-process, two at a time
with one thread each (no Ray: a FIFO search trains every trial to its end, so the scheduler changes nothing).

    python -m benchmarks.rank_correlation                        # the RESULTS.md run
    python -m benchmarks.rank_correlation --trials 4 --smoke      # a quick look
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import sys
import time

import optuna
import pandas as pd

from benchmarks.common import md_table, shakespeare_file, stamp, write_section
from tune.config import build_parser, config_from_args

# AdamW only: torch.optim.Muon orthogonalizes in bf16, which is slow on CPUs without bf16 hardware (DESIGN.md)
SPACE = ["--n-layer", "2:3", "--n-head", "2,4", "--head-dim", "16,32", "--batch-size", "16,32", "--lr", "2e-3:2e-2",
         "--dropout", "0", "--block-size", "64", "--optimizer", "adamw"]


def search_config(data_args: list[str], budget: float, schedule: str, cooldown_frac: float):
    """The search's configuration of a FIFO search: ten evaluations a trial, ASHA's rungs at a tenth (rf 3)."""
    argv = [*data_args, *SPACE, "--trial-budget", f"{budget:g}flops", "--eval-every", f"{budget / 10:g}",
            "--grace-period", f"{budget / 10:g}", "--reduction-factor", "3", "--scheduler", "fifo",
            "--searcher", "random", "--schedule", schedule, "--cooldown-frac", str(cooldown_frac),
            "--results-dir", "/tmp/rank-correlation-unused", "--name", "bench"]
    return config_from_args(build_parser().parse_args(argv))


def sample_configs(config, n: int, seed: int) -> list[dict]:
    """n configurations, as a random search of this space draws them."""
    from tune.space import SpaceSampler

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    out = []
    for _ in range(n):
        trial = study.ask()
        fixed = SpaceSampler(config.space)(trial)
        fixed.pop("sampler", None)
        out.append({**trial.params, **fixed})
    return out


def run_trial(job: dict) -> dict:
    import torch

    from nanogpt.token_cache import prepare
    from nanogpt.train import Trainer
    from tune.space import Hparams

    torch.set_num_threads(1)
    config = job["config"]
    data, tok = prepare(config.dataset, config.data_file, "char")
    hp = Hparams.from_config(job["hp"])
    t0 = time.perf_counter()
    trainer = Trainer(hp.model_config(tok.vocab_size), config.trial_train_config(hp), data, tok)
    history = trainer.run()
    rung = next(m for m in history if m["spend"] >= config.grace_period * (1 - 1e-9))
    return {**{k: job[k] for k in ("data", "schedule", "cooldown_frac", "i")}, "rung_loss": rung["val_loss"],
            "final_loss": history[-1]["val_loss"], "status": trainer.status, "steps": trainer.step,
            "branch_steps": trainer.branch_steps, "train_s": trainer.train_time, "branch_s": trainer.branch_time,
            "wall_s": time.perf_counter() - t0, "hp": job["hp"]}


def spearman(a: pd.Series, b: pd.Series) -> float:
    """Pearson's r of the ranks (ties averaged): Spearman's rho without scipy."""
    return a.rank().corr(b.rank())


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for (data, schedule, frac), g in df.groupby(["data", "schedule", "cooldown_frac"], sort=False):
        g = g[g["final_loss"].map(math.isfinite) & g["rung_loss"].map(math.isfinite)]
        pick = g.loc[g["rung_loss"].idxmin()]
        rows.append({"data": data, "schedule": schedule if schedule == "cosine" else f"wsd {frac:g} + cooldown rungs",
                     "trials": len(g), "spearman": spearman(g["rung_loss"], g["final_loss"]),
                     "pick_gap": pick["final_loss"] - g["final_loss"].min(),
                     "best_final": g["final_loss"].min(), "median_final": g["final_loss"].median(),
                     "branch_share": g["branch_steps"].sum() / (g["steps"] + g["branch_steps"]).sum(),
                     "branch_time_share": g["branch_s"].sum() / (g["train_s"] + g["branch_s"]).sum(),
                     "wall_s": g["wall_s"].sum()})
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=10)
    p.add_argument("--budget-mixed", type=float, default=2e11, help="FLOPs a trial on the built-in mixed corpus")
    p.add_argument("--budget-shakespeare", type=float, default=3e11, help="FLOPs a trial on tiny Shakespeare")
    p.add_argument("--fracs", default="0.2", help="cooldown fractions to measure under wsd, comma-separated")
    p.add_argument("--procs", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke", action="store_true", help="print, do not write RESULTS.md")
    p.add_argument("--out", default="/tmp/rank_correlation.jsonl", help="one JSON line a trial, written as they finish")
    p.add_argument("--summarize", metavar="JSONL", help="no training: the tables of a run's --out file (a cut-short run too)")
    argv = sys.argv[1:] if argv is None else argv  # the section shows the flags it ran with
    args = p.parse_args(argv)
    if args.summarize:
        with open(args.summarize) as f:
            df = pd.DataFrame([json.loads(line) for line in f if line.strip()])
        report(df, df["wall_s"].sum() / args.procs, os.getloadavg()[0], argv, args.smoke)
        return
    fracs = [float(f) for f in args.fracs.split(",")]
    datasets = {"mixed": (["--dataset", "mixed"], args.budget_mixed),
                "shakespeare": (["--data-file", str(shakespeare_file())], args.budget_shakespeare)}
    jobs = []
    for data, (data_args, budget) in datasets.items():
        configs = sample_configs(search_config(data_args, budget, "cosine", 0.2), args.trials, args.seed)
        for schedule, frac in [("cosine", 0.2)] + [("wsd", f) for f in fracs]:
            config = search_config(data_args, budget, schedule, frac)
            jobs += [{"config": config, "hp": hp, "data": data, "schedule": schedule, "cooldown_frac": frac, "i": i}
                     for i, hp in enumerate(configs)]
    # a configuration's runs side by side, data sets alternating: a run cut short still compares like with like
    jobs.sort(key=lambda j: (j["i"], j["data"], j["schedule"], j["cooldown_frac"]))
    load_before = os.getloadavg()[0]
    t0 = time.time()
    results = []
    with mp.get_context("spawn").Pool(args.procs) as pool, open(args.out, "w") as f:
        for r in pool.imap_unordered(run_trial, jobs):
            results.append(r)
            f.write(json.dumps(r) + "\n")  # one line a trial, as they finish
            f.flush()
    wall = time.time() - t0
    report(pd.DataFrame(results), wall, load_before, argv, args.smoke)


def report(df: pd.DataFrame, wall: float, load_before: float, argv: list[str] | None, smoke: bool) -> None:
    summary = summarize(df)
    table = md_table(["data", "schedule", "trials", "Spearman(rung at 10%, final)", "early pick's final - best",
                      "best final", "median final", "branch steps / all steps", "branch time / all time"],
                     [[r.data, r.schedule, r.trials, f"**{r.spearman:.2f}**", f"{r.pick_gap:+.3f}", f"{r.best_final:.3f}",
                       f"{r.median_final:.3f}", f"{r.branch_share:.0%}", f"{r.branch_time_share:.0%}"]
                      for r in summary.itertuples()])
    print(table)
    print(f"{wall:.0f} s wall; load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after")
    if not smoke:
        write_section("Rank correlation: early rungs against the final loss (benchmarks/rank_correlation.py)",
                      f"{stamp()} Load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after (shared "
                      f"machine); {wall:.0f} s wall.\n\n`python -m benchmarks.rank_correlation "
                      f"{' '.join(argv) if argv else ''}`\n\n{table}\n")


if __name__ == "__main__":
    main()
