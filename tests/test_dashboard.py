"""python -m tune.dashboard serves a search's Optuna study on loopback; its HTTP API gives the trials back."""

import json
import os
import re
import select
import subprocess
import sys
import time
import urllib.request

import optuna
import pytest

from conftest import REPO, assert_one_line_error, run_cli


@pytest.fixture
def search_dir(tmp_path):
    """What a search leaves for the dashboard: optuna.db (study named after the search) and search.json."""
    exp = tmp_path / "demo"
    exp.mkdir()
    (exp / "search.json").write_text(json.dumps({"name": "demo-search"}))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="demo-search", storage=f"sqlite:///{exp / 'optuna.db'}",
                                sampler=optuna.samplers.RandomSampler(seed=0))
    for i in range(4):
        trial = study.ask()
        n_layer = trial.suggest_int("n_layer", 1, 4)
        lr = trial.suggest_float("learning_rate", 1e-4, 1e-2, log=True)
        for step in (5, 10):
            trial.report(3.0 - 0.1 * step - 0.01 * n_layer, step)
        if i == 3:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            study.tell(trial, 2.0 + lr)
    return exp, study


def _get(url: str):
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def _start(*args: str) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "tune.dashboard", *args], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if select.select([proc.stdout], [], [], 1)[0]:
            m = re.search(r"http://127\.0\.0\.1:(\d+)/dashboard/studies/(\d+)", proc.stdout.readline())
            if m:
                return proc, m.group(0)
    proc.kill()
    pytest.fail(f"the dashboard printed no URL: {proc.communicate()}")


def test_dashboard_serves_the_study_on_loopback(search_dir):
    pytest.importorskip("optuna_dashboard", reason="optuna-dashboard is not installed (pip install -e '.[dashboard]')")
    exp, study = search_dir
    proc, url = _start(str(exp))
    try:
        base = url.split("/dashboard/")[0]
        [summary] = _get(f"{base}/api/studies")["study_summaries"]
        assert summary["study_name"] == "demo-search" and url.endswith(f"/studies/{summary['study_id']}")
        detail = _get(f"{base}/api/studies/{summary['study_id']}")
        assert detail["name"] == "demo-search"
        served = {t["number"]: t for t in detail["trials"]}
        assert sorted(served) == [t.number for t in study.trials]
        for t in study.trials:
            s = served[t.number]
            assert s["state"] == t.state.name.capitalize()
            assert {p["name"]: p["param_external_value"] for p in s["params"]} == {k: str(v) for k, v in t.params.items()}
            assert s["values"] == t.values
            assert [(v["step"], v["value"]) for v in s["intermediate_values"]] == sorted(t.intermediate_values.items())
        with urllib.request.urlopen(url, timeout=10) as r:  # the page itself
            assert r.status == 200
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_given_port_and_port_taken(search_dir):
    pytest.importorskip("optuna_dashboard", reason="optuna-dashboard is not installed (pip install -e '.[dashboard]')")
    exp, _ = search_dir
    proc, url = _start(str(exp))
    try:
        port = url.split(":")[2].split("/")[0]
        assert_one_line_error(run_cli("tune.dashboard", str(exp), "--port", port, timeout=60), f"127.0.0.1:{port}")
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_without_the_extra_says_how_to_install(search_dir):
    code = ("import sys; sys.modules['optuna_dashboard'] = None; "
            "from nanogpt.cli import run_main; from tune.dashboard import main; run_main(main, sys.argv[1:])")
    proc = subprocess.run([sys.executable, "-c", code, str(search_dir[0])], cwd=REPO, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2
    assert_one_line_error(proc, "pip install -e '.[dashboard]'")


def test_bad_paths_are_one_line(tmp_path, search_dir):
    assert_one_line_error(run_cli("tune.dashboard", str(tmp_path / "missing"), timeout=60), "not a directory")
    assert_one_line_error(run_cli("tune.dashboard", str(tmp_path), timeout=60), "no optuna.db")
    exp, _ = search_dir
    (exp / "search.json").write_text(json.dumps({"name": "other"}))
    assert_one_line_error(run_cli("tune.dashboard", str(exp), timeout=60), "no study 'other'", "demo-search")
