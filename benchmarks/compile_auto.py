"""`--compile auto` against the better of `on` and `off`, on a fresh cache, at a tiny size and the presets' sizes
(issue 29's goal: auto never more than 5% behind).

Each run is a whole `python -m nanogpt.train` process on one thread (a trial's CPU share), with a new, empty
NANOGPT_TUNE_CACHE (Inductor's cache and compile.json inside it), as a first search on a new machine has: what a
compile costs and gains is what this machine does, not what another one recorded. The three modes alternate within a
round, each round in a new order. Wall seconds of the whole process are compared (start-up, data, evaluations and
the compile included), so the figure is what a user waits.

    python -m benchmarks.compile_auto [--rounds 2] [--sizes tiny,laptop,muon,recipe]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from benchmarks.common import ROOT, shakespeare_file, stamp, write_section

# (data, model, run) as nanogpt.train flags; each a trial of its size's typical length
SIZES = {
    # the 1 x 16 model that compiled for 86 s on 2026-12-07 (the time-budget test's trials), 3,000 steps
    "tiny": ["--dataset", "counting", "--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "16",
             "--batch-size", "8", "--max-steps", "3000", "--eval-interval", "500", "--learning-rate", "3e-3",
             "--optimizer", "adamw"],
    # the laptop preset's largest trial (3 x 4 x 16, batch 32, Muon) for its 3e11 FLOPs
    "laptop": ["--dataset", "mixed", "--n-layer", "3", "--n-head", "4", "--n-embd", "64", "--block-size", "64",
               "--batch-size", "32", "--budget-unit", "flops", "--budget", "3e11", "--eval-every", "3e10",
               "--learning-rate", "8e-3", "--optimizer", "muon"],
    # shakespeare-muon's middle trial (3 x 4 x 32, batch 32, Muon) for its 2e12 FLOPs
    "muon": ["--data-file", "SHAKESPEARE", "--n-layer", "3", "--n-head", "4", "--n-embd", "128", "--block-size", "64",
             "--batch-size", "32", "--budget-unit", "flops", "--budget", "2e12", "--eval-every", "2e11",
             "--learning-rate", "1e-2", "--optimizer", "muon"],
    # nanoGPT's CPU recipe: 4 x 4 x 128, block 64, batch 12, AdamW, 2,000 steps
    "recipe": ["--data-file", "SHAKESPEARE", "--n-layer", "4", "--n-head", "4", "--n-embd", "128", "--block-size",
               "64", "--batch-size", "12", "--max-steps", "2000", "--eval-interval", "250", "--learning-rate", "1e-3",
               "--optimizer", "adamw"],
}
MODES = ("off", "on", "auto")
GOAL = 1.05
OUT = ROOT / "benchmarks" / "compile_auto.json"  # every size's latest measurement (a run of some sizes keeps the rest)
PAUSE_S = 5  # between runs, once every process a run started has ended
# after a compiling run the machine stays slower for a while (a run right after `on` measured 10-20% slower, with
# no process of it left: memory reclaimed behind it); so `on` runs last in each round, a longer pause follows it,
# and off and auto take turns going first: whatever is left of the slowdown falls on both alike
ORDERS = (("off", "auto", "on"), ("auto", "off", "on"))
PAUSE_AFTER_COMPILE_S = 30
LINGER_S = 120  # the longest a run's leftover processes are waited for


def _wait_for_group(pgid: int) -> None:
    """Until no process of the run's group is left (its compile workers), at most LINGER_S; then they are ended."""
    import signal

    deadline = time.monotonic() + LINGER_S
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.5)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def run_once(size: str, mode: str, work: str) -> float:
    args = [str(shakespeare_file()) if a == "SHAKESPEARE" else a for a in SIZES[size]]
    with tempfile.TemporaryDirectory(dir=work) as fresh:
        env = {**os.environ, "NANOGPT_TUNE_CACHE": os.path.join(fresh, "cache"), "PYTHONWARNINGS": "ignore"}
        env.pop("TORCHINDUCTOR_CACHE_DIR", None)
        t0 = time.perf_counter()
        # its own process group, waited for to the last process (Inductor's compile workers), so no run overlaps
        # what the one before it left running
        proc = subprocess.Popen([sys.executable, "-m", "nanogpt.train", *args, "--compile", mode, "--threads", "1",
                                 "--eval-iters", "5", "--max-new-tokens", "0", "--out", os.path.join(fresh, "out")],
                                cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        _, stderr = proc.communicate()
        seconds = time.perf_counter() - t0
        _wait_for_group(proc.pid)
    time.sleep(PAUSE_AFTER_COMPILE_S if mode == "on" else PAUSE_S)
    if proc.returncode != 0:
        sys.exit(f"{size} --compile {mode} failed:\n{stderr[-2000:]}")
    return seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=2, help="rounds of the three modes (even: off and auto first alike)")
    p.add_argument("--sizes", default=",".join(SIZES))
    args = p.parse_args()
    sizes = args.sizes.split(",")
    load0 = os.getloadavg()[0]
    times = {s: {m: [] for m in MODES} for s in sizes}
    with tempfile.TemporaryDirectory() as work:
        for r in range(args.rounds):
            for size in sizes:
                order = ORDERS[r % len(ORDERS)]
                for mode in order:
                    times[size][mode].append(run_once(size, mode, work))
                    print(f"round {r + 1} {size} {mode}: {times[size][mode][-1]:.1f} s", flush=True)
    load1 = os.getloadavg()[0]
    saved = json.loads(OUT.read_text()) if OUT.is_file() else {}
    for size in sizes:
        saved[size] = {"times": times[size], "when": time.strftime("%Y-%m-%d %H:%M"), "load": [load0, load1]}
    OUT.write_text(json.dumps(saved, indent=1))
    rows = []
    for size in SIZES:
        if size not in saved:
            continue
        med = {m: statistics.median(saved[size]["times"][m]) for m in MODES}
        ratio = med["auto"] / min(med["on"], med["off"])
        rows.append(f"| {size} | {len(saved[size]['times']['off'])} | {med['off']:.1f} | {med['on']:.1f} | "
                    f"{med['auto']:.1f} | {ratio:.3f} | {'met' if ratio <= GOAL else 'missed'} | "
                    f"{saved[size]['when']}, load {saved[size]['load'][0]:.1f}-{saved[size]['load'][1]:.1f} |")
    body = f"""{stamp()} Load average {load0:.1f} at the start, {load1:.1f} at the end.
Whole `python -m nanogpt.train` processes, 1 thread, each on a new empty NANOGPT_TUNE_CACHE, {PAUSE_S} s apart;
the median of each size's rounds; `on` last in each round, then {PAUSE_AFTER_COMPILE_S} s; off and auto first by turns. Goal (issue 29): auto at most
{GOAL:.2f}x the better of on and off. On this machine a compile never paid at these sizes: auto trains eager.
Before this order, every auto run followed an `on` run and measured 1.11-1.14x the eager one at the laptop and muon
sizes (2026-12-07 06:14); eager runs right after `on` are 10-20% slower on this machine, whatever their mode.
Why auto trusts only this machine's own record: its earlier guess for a shape never compiled here (30 s and 1.05x,
measured on another machine) compiled a 3,696-parameter model (1 x 16) for 86 s here on 2026-12-07, and the compiled
step ran at 0.7x eager. Those 86 s are the slowest compile seen on this project's machines; nanogpt.compile's
UNKNOWN_COMPILE_S (120 s) stands above them.

| size | rounds | off s | on s | auto s | auto / best | goal | measured |
|---|---|---|---|---|---|---|---|
{chr(10).join(rows)}
"""
    print(body)
    write_section("Compile auto on a fresh cache (benchmarks/compile_auto.py)", body)


if __name__ == "__main__":
    main()
