"""Overhead of the default search: how much of the slot-time goes to training.

    python -m benchmarks.search_overhead [extra tune.search flags]

Runs `python -m tune.search` (the laptop preset unless flags say otherwise) and measures
- the share of slot-time spent training: sum of trial training time / (search wall time x slots);
- the per-trial start cost: on a worker Ray reuses (reuse_actors=True), the gap from the end of one
  trial to the first training step of the next (scheduling, the searcher's suggestion, model build).
Goal: >= 90% and <= 0.5 s.
"""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import ROOT, md_table, stamp, write_section
from tune.config import SearchConfig
from tune.experiment import read_trials


def main() -> None:
    extra = sys.argv[1:]
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.time()
        proc = subprocess.run([sys.executable, "-m", "tune.search", "--results-dir", tmp, "--name", "overhead",
                               "--no-report", *extra], cwd=ROOT, capture_output=True, text=True)
        total = time.time() - t0
        if proc.returncode != 0:
            sys.exit(proc.stdout + proc.stderr)
        exp = Path(tmp) / "overhead"
        wall = float(re.search(r"trials in (\d+) s", proc.stdout).group(1))
        config = SearchConfig.load(exp)
        slots = int((os.cpu_count() or 1) // config.cpus_per_trial)
        if config.max_concurrent:
            slots = min(slots, config.max_concurrent)
        train, setups, by_worker = [], [], {}
        for trial in read_trials(exp):
            rows = trial.results
            if not rows:
                continue
            train.append(rows[-1]["elapsed_s"])
            setups.append(rows[0]["setup_s"])
            # a retried trial reports from a second worker; its first worker's span ends at that worker's last result
            for pid in dict.fromkeys(r["pid"] for r in rows):
                mine = [r for r in rows if r["pid"] == pid]
                begin = mine[0]["started_at"] + mine[0]["setup_s"]
                end = mine[-1]["started_at"] + mine[-1]["time_total_s"]
                by_worker.setdefault(pid, []).append((begin, end))
    # the start cost of a trial, seen from its slot: from the end of the previous trial on the same (reused)
    # worker to this trial's first training step: Ray's scheduling, the searcher's suggestion, set-up
    starts = []
    for spans in by_worker.values():
        spans.sort()
        starts += [b[0] - a[1] for a, b in zip(spans, spans[1:])]
    starts = starts or [float("nan")]
    # where the idle slot-time is: before a worker's first trial, and after its last one while others still run
    first = min(sp[0][0] for sp in by_worker.values())
    last = max(sp[-1][1] for sp in by_worker.values())
    lead = sum(sp[0][0] - first for sp in by_worker.values())
    tail = sum(last - sp[-1][1] for sp in by_worker.values())
    inside = sum(e - b for sp in by_worker.values() for b, e in sp) - sum(train)
    share = sum(train) / (wall * slots)
    n = len(train)
    rows = [
        ["trials", n],
        ["search wall time (Tuner.fit)", f"{wall:.0f} s"],
        ["whole command (Ray start, data, fit, export)", f"{total:.0f} s"],
        ["slots (CPUs / CPUs per trial)", slots],
        ["training time summed over trials", f"{sum(train):.0f} s"],
        ["share of slot-time training", f"{100 * share:.1f}%"],
        ["workers (reused across trials)", len(by_worker)],
        ["per-trial start cost on a reused worker, median (mean, max)", f"{statistics.median(starts):.2f} s ({statistics.mean(starts):.2f}, {max(starts):.2f})"],
        ["  of which set-up inside the trial (model, restore)", f"{statistics.median(setups):.3f} s median"],
        ["start costs summed", f"{sum(starts):.0f} s = {100 * sum(starts) / (wall * slots):.1f}% of slot-time"],
        ["idle after a worker's last trial while another still trains (tail)", f"{tail:.0f} s = {100 * tail / (wall * slots):.1f}%"],
        ["a worker's wait for its first trial, after the first one began", f"{lead:.0f} s = {100 * lead / (wall * slots):.1f}%"],
        ["inside trials, outside the training loop (checkpoint hand-off to Ray)", f"{max(0.0, inside):.0f} s"],
        ["Ray start-up to the first trial, and fit's end", f"{wall * slots - sum(train) - sum(starts) - tail - lead - inside:.0f} s"],
    ]
    met = share >= 0.9 and statistics.median(starts) <= 0.5
    body = f"""{stamp()}

`python -m benchmarks.search_overhead {' '.join(extra)}` (the default search: `python -m tune.search`, preset laptop).

{md_table(["what", "value"], rows)}

Goal: >= 90% of slot-time training and <= 0.5 s start cost per trial: **{'met' if met else 'missed'}**.
Evaluations count as training time here (they are part of every trial).
"""
    print(body)
    write_section("Search overhead (benchmarks/search_overhead.py)", body)


if __name__ == "__main__":
    main()
