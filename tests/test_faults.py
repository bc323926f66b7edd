"""Faults that really happen: a trial's worker killed, the search killed, a node lost, a trial diverging."""

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest

from conftest import RAY, REPO, TINY, free_port, pids_under, run_cli, stop_processes_under, terminated_trials

pytestmark = pytest.mark.slow


def _results(trial_dir: Path) -> list[dict]:
    """The trial's result rows so far. Ray copies result.json from its staging directory into the
    results directory while the search runs, so a read can catch the file mid-copy: missing,
    empty or with a cut-off last line. Those reads give what was complete."""
    try:
        text = (trial_dir / "result.json").read_text()
    except FileNotFoundError:
        return []
    rows = []
    for line in text.splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return rows


def _wait_for(predicate, proc, timeout=180, what="condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            pytest.fail(f"search ended before {what}: {out}")
        time.sleep(0.3)
    pytest.fail(f"timed out waiting for {what}")


def _start(args, env=None):
    return subprocess.Popen([sys.executable, "-m", "tune.search", *args], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, **(env or {})})


def test_killed_worker_is_retried_from_its_checkpoint(tmp_path):
    max_steps, interval = 300, 20
    proc = _start([*TINY, "--num-samples", "1", "--max-steps", str(max_steps), "--eval-interval", str(interval),
                   "--scheduler", "fifo", "--results-dir", str(tmp_path), "--name", "kw", "--no-report"])
    exp = tmp_path / "kw"

    seen = {}

    def some_results():
        for d in exp.glob("trial_*"):
            rows = _results(d)
            if len(rows) >= 3:
                seen["trial"], seen["pid"] = d, rows[-1]["pid"]
                return True
        return False

    _wait_for(some_results, proc, what="three evaluations")
    trial, victim = seen["trial"], seen["pid"]
    os.kill(victim, signal.SIGKILL)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    assert "retrying from its last checkpoint" in out

    df = pd.read_csv(exp / "trials.csv")
    assert len(df) == 1 and df["outcome"][0] == "finished" and df["steps"][0] == max_steps
    rows = _results(trial)
    assert len({r["pid"] for r in rows}) >= 2, "the trial never ran in a second worker"
    steps = [r["step"] for r in rows]
    # the retry resumed from a checkpoint: it never started over from step 0, and ends at max_steps
    assert steps[-1] == max_steps and steps[0] == interval and steps.count(interval) == 1
    assert all(b - a <= interval for a, b in zip(steps, steps[1:]))
    batch = df["batch_size"][0]
    assert rows[-1]["tokens_seen"] == max_steps * batch * 16


def test_search_killed_then_resumed(tmp_path):
    args = [*TINY, "--num-samples", "6", "--max-steps", "150", "--eval-interval", "25", "--scheduler", "fifo",
            "--results-dir", str(tmp_path), "--name", "kill", "--no-report", "--seed", "2"]
    proc = _start(args, env={"TUNE_GLOBAL_CHECKPOINT_S": "1"})
    exp = tmp_path / "kill"

    def finished():
        return {d.name for d in exp.glob("trial_*") if (rows := _results(d)) and rows[-1]["status"] == "finished"}

    _wait_for(lambda: len(finished()) >= 2, proc, what="two finished trials")
    time.sleep(1.5)  # let Ray snapshot the experiment state once more
    os.killpg(os.getpgid(proc.pid), 0)  # still alive
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    # what --resume does first: a kill during Ray's own copy of its state leaves a file cut short, and the search's
    # whole copy of Ray's last snapshot is put back (tune.ray_state)
    from tune.ray_state import check_ray_state

    check_ray_state(exp)
    # the trials Ray's last saved state records as done; one that logged its last step after that
    # snapshot is RUNNING there and is rightly rerun from its last registered checkpoint
    done_before = terminated_trials(exp)
    assert done_before, "no trial was recorded as done before the kill"
    snapshot = {d: (exp / d / "result.json").read_bytes() for d in done_before}
    time.sleep(3)  # Ray's processes notice their driver is gone

    resumed = run_cli("tune.search", "--resume", "--name", "kill", "--results-dir", str(tmp_path), "--no-report")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    df = pd.read_csv(exp / "trials.csv")
    assert len(df) == 6, df[["trial_id", "status"]]
    assert set(df["outcome"]) == {"finished"}
    for d, content in snapshot.items():
        assert (exp / d / "result.json").read_bytes() == content, f"{d} was trained again"
    assert set(df["sampler"]) == {"TPESampler"}
    study = optuna.load_study(study_name="kill", storage=f"sqlite:///{exp / 'optuna.db'}")
    assert len([t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]) >= 6


def test_resume_when_the_named_checkpoint_is_gone(tmp_path):
    """Ray deletes a trial's older checkpoint as soon as it registers a newer one, and saves its experiment state
    after that: a search killed in between names a deleted checkpoint. Forced here on a search stopped by Ctrl-C
    (whose state Ray saves whole, naming both running trials' checkpoints): one trial's named checkpoint is moved to
    the next index (as if Ray had written that one and deleted the named one), the other's are all deleted. The
    first continues from the newer one, the second starts over; both end finished with exactly their budget spent."""
    from ray.tune import ExperimentAnalysis

    max_steps, interval = 3000, 50  # long enough that neither trial can end between the check and the Ctrl-C
    args = [*TINY, "--num-samples", "2", "--max-steps", str(max_steps), "--eval-interval", str(interval),
            "--scheduler", "fifo", "--results-dir", str(tmp_path), "--name", "gone",
            "--no-report", "--seed", "4"]
    proc = _start(args)
    exp = tmp_path / "gone"

    def two_running():
        running = [d for d in exp.glob("trial_*") if len(rows := _results(d)) >= 3 and rows[-1]["status"] == "running"]
        return len(running) >= 2

    _wait_for(two_running, proc, what="two trials three evaluations in")
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    named = {Path(t.path).name: Path(t.checkpoint.path) for t in ExperimentAnalysis(str(exp)).trials
             if t.status != "TERMINATED" and t.checkpoint is not None}
    assert len(named) == 2, (named, out)
    (moved, moved_ckpt), (wiped, _) = sorted(named.items())
    index = int(moved_ckpt.name.removeprefix("checkpoint_"))
    newer = moved_ckpt.with_name(f"checkpoint_{max(int(p.name[11:]) for p in moved_ckpt.parent.glob('checkpoint_*')) + 1:06d}")
    moved_ckpt.rename(newer)
    continued_from = json.loads((newer / "config.json").read_text())["step"]
    for d in (exp / wiped).glob("checkpoint_*"):
        shutil.rmtree(d)
    assert index >= 1 and 0 < continued_from < max_steps

    resumed = run_cli("tune.search", "--resume", "--name", "gone", "--results-dir", str(tmp_path), "--no-report")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"it continues from {newer.name} (step {continued_from})" in resumed.stderr, resumed.stderr
    assert f"trial {wiped.removeprefix('trial_')}: {named[wiped].name}" in resumed.stderr
    assert "it starts over" in resumed.stderr, resumed.stderr
    df = pd.read_csv(exp / "trials.csv")
    assert len(df) == 2 and set(df["outcome"]) == {"finished"}, df[["trial_id", "status"]]
    assert (df["steps"] == max_steps).all() and (df["tokens_seen"] == max_steps * df["batch_size"] * 16).all()
    rows = _results(exp / moved)
    first_resumed = next(r for r in rows if r["pid"] != rows[0]["pid"])
    assert first_resumed["step"] == continued_from + interval and rows[-1]["step"] == max_steps
    # started over: Ray logs its results afresh
    assert [r["step"] for r in _results(exp / wiped)] == list(range(interval, max_steps + 1, interval))


def test_diverging_trial_is_recorded_and_never_best(tmp_path):
    # lr 1e30 makes the weights overflow within two steps; the other learning rate trains normally
    proc = run_cli("tune.search", *TINY, "--lr", "3e-3,1e30", "--num-samples", "6", "--max-steps", "20",
                   "--eval-interval", "5", "--scheduler", "fifo", "--searcher", "random", "--seed", "0",
                   "--results-dir", str(tmp_path), "--name", "div")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    df = pd.read_csv(tmp_path / "div" / "trials.csv")
    assert len(df) == 6
    diverged = df[df["outcome"] == "diverged"]
    assert len(diverged) >= 1 and (diverged["learning_rate"] == 1e30).all()
    assert all(math.isinf(v) for v in diverged["best_val_loss"])
    assert (df["outcome"] == "finished").sum() >= 1
    best = json.loads((tmp_path / "div" / "best" / "trial.json").read_text())
    assert best["learning_rate"] == 3e-3 and math.isfinite(best["best_val_loss"])
    assert "diverged" in (tmp_path / "div" / "report.md").read_text()


@pytest.fixture
def two_node_cluster():
    """A head and a worker node, both on this machine, in a temp dir of their own so that the test
    stops exactly the processes it started (never `ray stop`, which would stop every Ray here)."""
    port = free_port()
    temp = Path(f"/tmp/ngt-ray-{os.getpid()}")  # short: Ray's socket paths live under it
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token"}
    try:
        head = subprocess.run([RAY, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=1",
                               "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp}"], env=env,
                              capture_output=True, text=True, timeout=120)
        assert head.returncode == 0, head.stdout + head.stderr
        before = _raylets(temp)
        worker = subprocess.run([RAY, "start", f"--address=127.0.0.1:{port}", "--node-ip-address=127.0.0.1",
                                 "--num-cpus=1"], env=env, capture_output=True, text=True, timeout=120)
        assert worker.returncode == 0, worker.stdout + worker.stderr
        new = _raylets(temp) - before
        assert len(new) == 1, "the worker node's raylet did not start under the cluster's temp dir"
        yield f"127.0.0.1:{port}", new.pop()
    finally:
        stop_processes_under(temp)


def _raylets(temp: Path) -> set[int]:
    return pids_under(temp, "raylet")


def test_cluster_uses_both_nodes_and_survives_losing_one(tmp_path, two_node_cluster):
    address, worker_raylet = two_node_cluster
    proc = _start([*TINY, "--num-samples", "4", "--max-steps", "3000", "--eval-interval", "100", "--scheduler", "fifo",
                   "--address", address, "--results-dir", str(tmp_path), "--name", "cl", "--no-report",
                   "--max-failures", "3"])
    exp = tmp_path / "cl"

    def nodes_seen():
        return {r["node_id"] for d in exp.glob("trial_*") for r in _results(d)}

    _wait_for(lambda: len(nodes_seen()) >= 2, proc, what="trials on both nodes")
    # kill the worker node: its raylet and, with it, the trial workers it started
    os.kill(worker_raylet, signal.SIGKILL)
    out, _ = proc.communicate(timeout=400)
    assert proc.returncode == 0, out
    df = pd.read_csv(exp / "trials.csv")
    assert len(df) == 4 and set(df["outcome"]) == {"finished"}, df[["trial_id", "status", "steps"]]
    assert df["node"].notna().all()
    assert len(nodes_seen()) == 2
