"""Does TPE + ASHA find good configs faster than random search, and what is telling Optuna the truth worth?

    python -m benchmarks.search_efficiency [--budget 200] [--seeds 0 1 2] [--preset laptop]
                                           [--trial-budget 4e11flops] [--eval-every A] [--grace-period A]

Runs `python -m tune.search --time-budget BUDGET` for
- TPE + ASHA, Optuna told the truth (pruned trials PRUNED, with intermediate values by spend),
- TPE + ASHA, Optuna told what Ray's OptunaSearch tells it (every trial COMPLETE with its last val_loss),
- random + FIFO,
with the same seeds and the same per-trial budget (in FLOPs by default: equal compute per trial). Plots the
best validation loss found so far against wall-clock time (search_efficiency.png) and reports the share of
the budget TPE + ASHA needs to reach random + FIFO's median final best (goal <= 10%) and its best seed's
final best (goal <= 25%).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.common import ROOT, md_table, stamp, write_section
from tune import report

RAY_TELLING = "TPE + ASHA (Ray's COMPLETE)"
METHODS = {
    "TPE + ASHA (truth)": ("optuna", "asha", "truth"),
    RAY_TELLING: ("optuna", "asha", "ray"),
    "random + FIFO": ("random", "fifo", "truth"),
}
BASELINE = "random + FIFO"
GOALS = {"median": 0.10, "best seed": 0.25}


def best_so_far(exp: Path) -> list[tuple[float, float]]:
    """(seconds since the first trial began, best val_loss so far) at every evaluation."""
    curves = report.load_curves(exp)
    curves = curves[curves["val_loss"].apply(math.isfinite)].sort_values("wall_time")
    t0 = (curves["wall_time"] - curves["elapsed_s"]).min()  # when the first trial began training
    out, best = [], math.inf
    for t, v in zip(curves["wall_time"], curves["val_loss"]):
        best = min(best, v)
        out.append((float(t - t0), best))
    return out


def reach_time(curve: list[tuple[float, float]], target: float) -> float:
    return next((t for t, b in curve if b <= target), math.inf)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget", type=float, default=120, help="seconds per search")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--preset", default="laptop")
    p.add_argument("--trial-budget", default=None, help="every trial's budget (default: the preset's)")
    p.add_argument("--eval-every", help="spend between evaluations (default: a tenth of the trial budget)")
    p.add_argument("--grace-period", help="ASHA's first rung (default: about a quarter of the trial budget)")
    p.add_argument("--without-ray-telling", action="store_true",
                   help=f"leave out {RAY_TELLING!r}: a third fewer searches (it ran the very trials of the truth row "
                        "on every seed measured so far, RESULTS.md)")
    args = p.parse_args()
    methods = {m: v for m, v in METHODS.items() if not (args.without_ray_telling and m == RAY_TELLING)}
    shape = [x for flag in ("trial_budget", "eval_every", "grace_period") if getattr(args, flag) is not None
        for x in (f"--{flag.replace('_', '-')}", str(getattr(args, flag)))]

    curves: dict[str, list] = {m: [] for m in methods}
    counts: dict[str, list] = {m: [] for m in methods}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            for method, (searcher, scheduler, tell) in methods.items():
                name = f"{searcher}-{scheduler}-{tell}-{seed}"
                proc = subprocess.run([sys.executable, "-m", "tune.search", "--preset", args.preset, "--num-samples", "500",
                                       "--time-budget", str(args.budget), "--searcher", searcher, "--scheduler", scheduler,
                                       "--tell-optuna", tell, "--seed", str(seed), *shape, "--results-dir", tmp,
                                       "--name", name, "--no-report"], cwd=ROOT, capture_output=True, text=True)
                if proc.returncode != 0:
                    sys.exit(proc.stdout + proc.stderr)
                exp = Path(tmp) / name
                curves[method].append(best_so_far(exp))
                outcomes = report.load(exp)["outcome"].value_counts()
                counts[method].append((int(outcomes.sum()), int(outcomes.get("pruned", 0)), int(outcomes.get("finished", 0))))
                print(f"{method} seed {seed}: best {curves[method][-1][-1][1]:.4f}, trials/pruned/finished "
                      f"{counts[method][-1]}", flush=True)

    finals = {m: [c[-1][1] for c in cs] for m, cs in curves.items()}
    targets = {"median": statistics.median(finals[BASELINE]), "best seed": min(finals[BASELINE])}
    reach = {m: {k: [reach_time(c, t) for c in curves[m]] for k, t in targets.items()} for m in methods if m != BASELINE}

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for (method, cs), color in zip(curves.items(), ["C0", "C3", "C2"]):
        for i, c in enumerate(cs):
            ax.step([t for t, _ in c], [b for _, b in c], where="post", color=color, alpha=0.8,
                    label=method if i == 0 else None)
    ax.axhline(targets["median"], color="gray", ls="--", lw=1, label=f"{BASELINE} final best (median)")
    ax.set_xlabel("wall-clock seconds (2 CPU slots)")
    ax.set_ylabel("best validation loss so far")
    ax.set_title(f"search efficiency, preset {args.preset}, {args.trial_budget or 'its budget'} a trial, {len(args.seeds)} seeds each")
    lows, highs = min(min(f) for f in finals.values()), max(max(f) for f in finals.values())
    ax.set_ylim(lows - 0.1 * (highs - lows) - 0.01, highs + 0.5 * (highs - lows) + 0.05)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(ROOT / "benchmarks" / "search_efficiency.png", dpi=100)
    (ROOT / "benchmarks" / "search_efficiency.json").write_text(json.dumps(
        {"args": vars(args), "curves": curves, "counts": counts}, indent=1))

    def times(ts):
        return " / ".join("never" if math.isinf(t) else f"{t:.0f} s" for t in ts)

    def share(ts) -> float:
        return statistics.median(ts) / args.budget

    def pct(ts):
        return "never" if math.isinf(statistics.median(ts)) else f"{100 * share(ts):.0f}%"

    rows = [[m, " / ".join(f"{v:.4f}" for v in finals[m]), f"{statistics.median(finals[m]):.4f}",
             " / ".join(f"{t}/{pr}/{fi}" for t, pr, fi in counts[m])] for m in methods]
    reach_rows = [[m, f"{times(r['median'])} ({pct(r['median'])})", f"{times(r['best seed'])} ({pct(r['best seed'])})"]
                  for m, r in reach.items()]
    truth = reach["TPE + ASHA (truth)"]
    verdict = ", ".join(f"{k} {pct(truth[k])} (goal <= {100 * g:.0f}%: **{'met' if share(truth[k]) <= g else 'missed'}**)"
                        for k, g in GOALS.items())
    told = ("The two TPE + ASHA rows differ only in what Optuna is told (`--tell-optuna truth|ray`)."
            if RAY_TELLING in methods else "Optuna is told the truth (`--tell-optuna truth`).")
    flag = " --without-ray-telling" if args.without_ray_telling else ""
    body = f"""{stamp()}

`python -m benchmarks.search_efficiency --budget {args.budget:g} --seeds {' '.join(map(str, args.seeds))} --preset {args.preset} {' '.join(shape)}{flag}`:
each search gets the same {args.budget:g} s of wall-clock time on the same 2 CPU slots (`--time-budget`), and every
trial the same budget ({args.trial_budget or "the preset's"}), seeds {', '.join(map(str, args.seeds))}. {told}

{md_table(["method", "final best val_loss per seed", "median", "trials / pruned / finished per seed"], rows)}

Time for TPE + ASHA to reach {BASELINE}'s median final best ({targets['median']:.4f}) and its best seed's
({targets['best seed']:.4f}), per seed (median share of the budget):

{md_table(["method", f"to {BASELINE}'s median", f"to {BASELINE}'s best seed"], reach_rows)}

TPE + ASHA told the truth: {verdict}.

![best validation loss so far against time](search_efficiency.png)
"""
    print(body)
    write_section("Search efficiency (benchmarks/search_efficiency.py)", body)


if __name__ == "__main__":
    main()
