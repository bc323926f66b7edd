"""Where the default search's wall time goes: the whole command, phase by phase, and inside the trials.

    python -m benchmarks.search_overhead [--no-write] [extra tune.search flags]

Runs the default search as `make search` runs it (`python -m tune.search`, the laptop preset, report included)
through benchmarks.timed_search, which marks when each phase of the command begins and ends: Python and its
imports, the data, Ray's start, the Tuner's fit, the export of trials.csv, Ray's shutdown, the report (plots,
generations, probes), the terminal's probe lines, the interpreter's exit. Inside the fit, slot-time (fit's wall
time x slots) is split with each trial's own metrics: training steps, evaluations, cooldown branches (training
too: a copy decayed at a rung), compiling, the rest inside the trial (checkpoints handed to Ray), the start cost
between a worker's trials, and the idle slot-time before a worker's first trial and after its last one.
Shares are meaningful on a loaded machine; absolute seconds are not.
Goals (issue 16): at least 95% of slot-time training (steps, evaluations and branches; compile time counts as
overhead), a start cost of at most 0.5 s a trial.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import ROOT, md_table, stamp, write_section
from tune.config import SearchConfig
from tune.experiment import read_trials

# (label, start mark, end mark): the command's phases in the order they run
PHASES = [
    ("Python start-up and imports (torch, Ray, the project)", "launch", "python:imports-end"),
    ("data (tokens from the cache) and pre-flight checks", "python:imports-end", "init_ray:start"),
    ("Ray start (ray.init)", "init_ray:start", "init_ray:end"),
    ("search directory, Tuner set-up, to fit's start", "init_ray:end", "fit:start"),
    ("Tuner.fit: the trials (split below)", "fit:start", "fit:end"),
    ("trials.csv export", "export:start", "export:end"),
    ("final training of the winner (--final-budget)", "train_winner:start", "train_winner:end"),
    ("Ray shutdown", "ray_shutdown:start", "ray_shutdown:end"),
    ("model export (--export)", "export_models:start", "export_models:end"),
    ("report: plots, generations, probes, attention", "write_report:start", "write_report:end"),
    ("the terminal's probe lines (best model)", "probe_lines:start", "probe_lines:end"),
]


def run_search(extra: list[str]) -> tuple[Path, dict, float, str, tempfile.TemporaryDirectory]:
    """The timed search; (its experiment dir, the phase marks with launch and exit, wall seconds, its probe lines,
    the temp dir)."""
    tmp = tempfile.TemporaryDirectory()
    marks_file = Path(tmp.name) / "marks.json"
    launch = time.time()
    proc = subprocess.run([sys.executable, "-m", "benchmarks.timed_search", str(marks_file), "--results-dir", tmp.name,
                           "--name", "overhead", *extra], cwd=ROOT, capture_output=True, text=True)
    done = time.time()
    if proc.returncode != 0:
        sys.exit(proc.stdout[-3000:] + proc.stderr[-3000:])
    marks = {**json.loads(marks_file.read_text()), "launch": launch, "exit": done}
    probes = proc.stdout.partition("what the best model learned (greedy):")[2].strip()
    return Path(tmp.name) / "overhead", marks, done - launch, probes, tmp


def command_rows(marks: dict, total: float) -> list[list]:
    """The whole command, phase by phase; what no phase covers (Python's exit, the gaps) as one row."""
    rows, covered = [], 0.0
    for label, a, b in PHASES:
        if a in marks and b in marks:
            s = marks[b] - marks[a]
            covered += s
            rows.append([label, f"{s:.1f} s", f"{100 * s / total:.1f}%"])
    rest = total - covered
    rows.append(["the rest (the summary's printing, Python's exit)", f"{rest:.1f} s", f"{100 * rest / total:.1f}%"])
    rows.append(["**whole command**", f"**{total:.1f} s**", "100%"])
    return rows


def trial_spans(exp: Path) -> tuple[dict, dict, list]:
    """Per-trial sums of the metrics' seconds, per worker (pid) its trials' spans, and the set-up times."""
    sums = dict(train=0.0, eval=0.0, branch=0.0, compile=0.0, inside=0.0)
    by_worker, setups = {}, []
    for trial in read_trials(exp):
        rows = trial.results
        if not rows:
            continue
        last = rows[-1]
        sums["train"] += last["train_s"]
        sums["eval"] += last["eval_s"]
        sums["branch"] += last["branch_s"]
        sums["compile"] += last["compile_s"]
        setups.append(rows[0]["setup_s"])
        span = 0.0
        # a retried trial reports from a second worker; its first worker's span ends at that worker's last result
        for pid in dict.fromkeys(r["pid"] for r in rows):
            mine = [r for r in rows if r["pid"] == pid]
            begin = mine[0]["started_at"] + mine[0]["setup_s"]
            end = mine[-1]["started_at"] + mine[-1]["time_total_s"]
            by_worker.setdefault(pid, []).append((begin, end))
            span += end - begin
        sums["inside"] += span - (last["train_s"] + last["eval_s"] + last["branch_s"] + last["compile_s"])
    return sums, by_worker, setups


def slot_rows(exp: Path, fit_s: float) -> tuple[list[list], float, float, float]:
    """Slot-time of the fit, split; (rows, training share, compile share, median start cost)."""
    config = SearchConfig.load(exp)
    slots = int((os.cpu_count() or 1) // config.cpus_per_trial)
    if config.max_concurrent:
        slots = min(slots, config.max_concurrent)
    sums, by_worker, setups = trial_spans(exp)
    starts = []
    for spans in by_worker.values():
        spans.sort()
        starts += [b[0] - a[1] for a, b in zip(spans, spans[1:])]
    first = min(sp[0][0] for sp in by_worker.values())
    last = max(sp[-1][1] for sp in by_worker.values())
    lead = sum(sp[0][0] - first for sp in by_worker.values())
    tail = sum(last - sp[-1][1] for sp in by_worker.values())
    slot_time = fit_s * slots
    unused = max(0, slots - len(by_worker)) * fit_s  # a slot no trial ever ran on (fewer trials than slots)
    rest = slot_time - sum(sums.values()) - sum(starts) - lead - tail - unused

    def row(label, s):
        return [label, f"{s:.1f} s", f"{100 * s / slot_time:.1f}%"]

    rows = [row("training steps", sums["train"]), row("evaluations", sums["eval"]),
            row("cooldown branches (a decayed copy at each rung and at the end, with its evaluation)", sums["branch"]),
            row("compiling", sums["compile"]),
            row("inside trials, outside training (checkpoints handed to Ray)", max(0.0, sums["inside"])),
            row(f"start cost between a worker's trials ({len(starts)} starts, median "
                f"{statistics.median(starts or [0]):.2f} s; set-up inside the trial {statistics.median(setups):.3f} s)",
                sum(starts)),
            row("idle: a worker waiting for its first trial, after the first one began", lead),
            row("idle: after a worker's last trial while another still trains (the tail)", tail),
            row("idle: slots no trial ran on", unused),
            row("Ray: fit's start to the first trial, its last result to fit's end", rest),
            [f"**slot-time** ({slots} slots x fit's {fit_s:.1f} s; {len(setups)} trials on {len(by_worker)} workers)",
             f"**{slot_time:.1f} s**", "100%"]]
    share = (sums["train"] + sums["eval"] + sums["branch"]) / slot_time
    return rows, share, sums["compile"] / slot_time, statistics.median(starts or [0])


def main() -> None:
    args = sys.argv[1:]
    if "-h" in args or "--help" in args:  # the rest are tune.search's flags: its own --help would run no search
        print(__doc__)
        return
    write = "--no-write" not in args
    extra = [a for a in args if a != "--no-write"]
    load_before = os.getloadavg()[0]
    exp, marks, total, probes, tmp = run_search(extra)
    with tmp:
        rows, share, compile_share, start_cost = slot_rows(exp, marks["fit:end"] - marks["fit:start"])
    met = share >= 0.95 and start_cost <= 0.5
    body = f"""{stamp()} Load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after (the machine is shared).

`python -m benchmarks.search_overhead {' '.join(extra)}`: the default search (`python -m tune.search`, preset laptop,
report included), timed phase by phase (benchmarks/timed_search.py).

The whole command:

{md_table(["phase", "seconds", "share"], command_rows(marks, total))}

Inside Tuner.fit, slot-time:

{md_table(["where slot-time went", "seconds", "share of slot-time"], rows)}

Training (steps, evaluations and cooldown branches) {100 * share:.1f}% of slot-time, compiling {100 * compile_share:.1f}%;
start cost {start_cost:.2f} s a trial. Goal (>= 95% training, compile time counted as overhead, <= 0.5 s a start):
**{'met' if met else 'missed'}**. The search's answer, its probe lines:

""" + "\n".join(f"    {line}" for line in probes.splitlines()) + "\n"
    print(body)
    if write:
        write_section("Search overhead (benchmarks/search_overhead.py)", body)


if __name__ == "__main__":
    main()
