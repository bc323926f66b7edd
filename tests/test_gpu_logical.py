"""GPU-ready without a GPU: a Ray instance started with one *logical* GPU on this CPU machine schedules
trials by their GPU share (--gpus-per-trial 0.25: four at once) while --device cpu keeps them on the CPU."""

import json
import os
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from conftest import RAY, TINY, free_port, run_cli, stop_processes_under

pytestmark = pytest.mark.slow


@pytest.fixture
def ray_with_one_logical_gpu():
    """A head node on 127.0.0.1 with 8 logical CPUs (so CPUs never limit) and 1 logical GPU, in a temp dir
    of its own: the test stops exactly the processes it started."""
    port = free_port()
    temp = Path(f"/tmp/ngt-gpu-{os.getpid()}")  # short: Ray's socket paths live under it
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token"}
    try:
        head = subprocess.run([RAY, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=8",
                               "--num-gpus=1", "--include-dashboard=false", "--disable-usage-stats",
                               f"--temp-dir={temp}"], env=env, capture_output=True, text=True, timeout=120)
        assert head.returncode == 0, head.stdout + head.stderr
        yield f"127.0.0.1:{port}"
    finally:
        stop_processes_under(temp)


def _intervals(exp: Path) -> list[tuple[float, float]]:
    """(start, end) wall time of each trial: its worker's start and its last report."""
    out = []
    for d in exp.glob("trial_*"):
        rows = [json.loads(line) for line in (d / "result.json").read_text().splitlines() if line.strip()]
        out.append((rows[0]["started_at"], rows[-1]["timestamp"]))
    return out


def _most_at_once(intervals: list[tuple[float, float]]) -> int:
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    now = most = 0
    for _, d in events:
        now += d
        most = max(most, now)
    return most


def test_four_quarter_gpu_trials_run_at_once_on_cpu(tmp_path, ray_with_one_logical_gpu):
    # --max-concurrent 8: with a searcher and no limit, Ray Tune keeps one trial pending at a time, so trials
    # shorter than a worker's start would never overlap; 8 leaves the GPU share as the only limit
    proc = run_cli("tune.search", *TINY, "--num-samples", "5", "--trial-budget", "15s", "--scheduler", "fifo",
                   "--gpus-per-trial", "0.25", "--cpus-per-trial", "1", "--max-concurrent", "8", "--device", "cpu",
                   "--address", ray_with_one_logical_gpu, "--results-dir", str(tmp_path), "--name", "g",
                   "--no-report", timeout=400, env={"RAY_AUTH_MODE": "token"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    exp = tmp_path / "g"
    saved = json.loads((exp / "search.json").read_text())
    assert saved["device"] == "cpu" and saved["gpus_per_trial"] == 0.25
    df = pd.read_csv(exp / "trials.csv")
    # a trial put on "cuda" would fail here (no CUDA): finished trials trained on the CPU
    assert len(df) == 5 and set(df["outcome"]) == {"finished"}, df[["trial_id", "status"]]
    # the logical GPU, not the 8 CPUs, limits concurrency: exactly four 0.25-GPU trials at once
    assert _most_at_once(_intervals(exp)) == 4


def test_gpu_share_without_gpus_or_device_cpu_is_refused(tmp_path):
    proc = run_cli("tune.search", *TINY, "--gpus-per-trial", "0.25", "--results-dir", str(tmp_path), "--name", "n")
    assert proc.returncode == 2 and "--device cpu" in proc.stderr, proc.stderr
    proc = run_cli("tune.search", *TINY, "--device", "cuda", "--results-dir", str(tmp_path), "--name", "n")
    assert proc.returncode == 2 and "GPU share" in proc.stderr, proc.stderr
