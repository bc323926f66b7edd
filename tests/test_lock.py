"""One run per results directory: a second run of a name is refused with one line while the first runs;
a lock whose process is gone is taken over."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pandas as pd
import pyarrow.fs
import pytest

from conftest import REPO, TINY, assert_one_line_error, run_cli
from tune.lock import SearchInUse, hold_local, hold_uri


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_local_lock_refuses_a_second_holder_with_who_and_since(tmp_path):
    path = tmp_path / ".s.lock"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pathlib import Path; "
                               "from tune.lock import hold_local\n"
                               f"with hold_local(Path({str(path)!r}), 's'):\n print('held', flush=True); time.sleep(60)"],
                              cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(SearchInUse, match=rf"^s is in use by process {holder.pid} on {socket.gethostname()} since "
                                              r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC$"):
            with hold_local(path, "s"):
                pass
        holder.send_signal(signal.SIGKILL)  # gone without a word: its lock is free at once
        holder.wait()
        with hold_local(path, "s"):
            assert json.loads(path.read_text())["pid"] == os.getpid()
        assert not path.exists()
    finally:
        holder.kill()


def test_local_lock_file_of_a_dead_process_is_taken_over(tmp_path):
    path = tmp_path / ".s.lock"
    path.write_text(json.dumps({"pid": _dead_pid(), "host": socket.gethostname(), "since": "then"}))
    with hold_local(path, "s"):
        assert json.loads(path.read_text())["pid"] == os.getpid()


def test_uri_lock_refuses_a_live_holder_and_takes_over_a_dead_one(tmp_path):
    fs, path = pyarrow.fs.LocalFileSystem(), str(tmp_path / ".s.lock")
    live = {"pid": os.getppid(), "host": socket.gethostname(), "since": "2026-01-01 00:00:00 UTC"}
    (tmp_path / ".s.lock").write_text(json.dumps(live))
    with pytest.raises(SearchInUse, match=f"^s is in use by process {os.getppid()} on "):
        with hold_uri(fs, path, "file://x/.s.lock", "s"):
            pass
    other = {**live, "host": "elsewhere"}
    (tmp_path / ".s.lock").write_text(json.dumps(other))
    with pytest.raises(SearchInUse, match=r"on elsewhere since .*if that process is gone, delete file://x/\.s\.lock"):
        with hold_uri(fs, path, "file://x/.s.lock", "s"):
            pass
    (tmp_path / ".s.lock").write_text(json.dumps({**live, "pid": _dead_pid()}))
    with hold_uri(fs, path, "file://x/.s.lock", "s"):
        assert json.loads((tmp_path / ".s.lock").read_text())["pid"] == os.getpid()
    assert not (tmp_path / ".s.lock").exists()


def _start(args):
    return subprocess.Popen([sys.executable, "-m", "tune.search", *args], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})


@pytest.mark.slow
def test_two_runs_of_one_name_one_is_refused_and_a_dead_ones_lock_is_taken_over(tmp_path):
    args = [*TINY, "--num-samples", "3", "--max-steps", "400", "--eval-interval", "50", "--scheduler", "fifo",
            "--max-concurrent", "1", "--results-dir", str(tmp_path), "--name", "twice", "--no-report"]
    first, second = _start(args), _start(args)  # two new searches of one name at once
    exp = tmp_path / "twice"
    deadline = time.time() + 180
    while first.poll() is None and second.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    loser, winner = (first, second) if first.poll() is not None else (second, first)
    out, err = loser.communicate()
    assert loser.returncode == 2 and "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and ("in use by process" in lines[0] or "already exists" in lines[0]), err
    try:
        while not list(exp.glob("trial_*/result.json")) and winner.poll() is None and time.time() < deadline:
            time.sleep(0.3)
        assert winner.poll() is None, winner.communicate()
        resumed = run_cli("tune.search", "--resume", "--name", "twice", "--results-dir", str(tmp_path))
        assert resumed.returncode == 2
        assert_one_line_error(resumed, f"twice is in use by process {winner.pid} on {socket.gethostname()} since ")
    finally:
        winner.send_signal(signal.SIGKILL)
        winner.wait()
    time.sleep(3)  # Ray's processes notice their driver is gone
    resumed = run_cli("tune.search", "--resume", "--name", "twice", "--results-dir", str(tmp_path), "--no-report")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    df = pd.read_csv(exp / "trials.csv")
    assert len(df) == 3 and set(df["outcome"]) == {"finished"}
    assert not (tmp_path / ".twice.lock").exists()
