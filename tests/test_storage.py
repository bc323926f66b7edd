"""Results directories given as URIs: the experiment at the URI, the project's files uploaded beside it."""

import shutil

import pandas as pd
import pytest

from conftest import TINY, assert_one_line_error, run_cli
from tune.storage import Mirror


@pytest.fixture
def cache(tmp_path, monkeypatch):
    d = tmp_path / "cache"
    monkeypatch.setenv("NANOGPT_TUNE_CACHE", str(d))
    return d


def test_mirror_pull_leaves_checkpoints_at_the_uri(tmp_path, cache):
    remote = tmp_path / "remote" / "exp"
    (remote / "trial_a" / "checkpoint_000001").mkdir(parents=True)
    (remote / "trial_a" / "checkpoint_000001" / "model.pt").write_bytes(b"weights")
    (remote / "trial_a" / "result.json").write_text("{}\n")
    (remote / "search.json").write_text("{}")
    m = Mirror(f"file://{remote}")
    assert m.exists() and m.exists("search.json") and not m.exists("nope")
    local = m.pull()
    assert local.is_relative_to(cache) and local.name == "exp"
    assert (local / "search.json").is_file() and (local / "trial_a" / "result.json").is_file()
    ckpt = local / "trial_a" / "checkpoint_000001"
    assert not ckpt.exists() and m.has(ckpt / "model.pt")
    assert (m.fetch(ckpt) / "model.pt").read_bytes() == b"weights"
    # uploads: a file, and a directory replaced as a whole
    (local / "best").mkdir()
    (local / "best" / "model.pt").write_text("new")
    (local / "trials.csv").write_text("a\n1\n")
    (remote / "best").mkdir()
    (remote / "best" / "stale.txt").write_text("old")
    m.push("trials.csv", "best", "not-there")
    assert (remote / "trials.csv").read_text() == "a\n1\n"
    assert sorted(p.name for p in (remote / "best").iterdir()) == ["model.pt"]


def test_unknown_scheme_is_one_clear_error(cache):
    with pytest.raises(ValueError, match="--results-dir"):
        Mirror("foo://bucket/x")


@pytest.mark.slow
def test_search_to_a_uri_and_report_back(tmp_path, cache):
    remote = tmp_path / "remote"
    uri = f"file://{remote}"
    env = {"NANOGPT_TUNE_CACHE": str(cache)}
    args = [*TINY, "--num-samples", "3", "--max-steps", "20", "--eval-interval", "10", "--scheduler", "fifo",
            "--results-dir", uri, "--name", "up", "--top", "2"]
    proc = run_cli("tune.search", *args, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"results uploaded to {uri}/up" in proc.stdout
    exp = remote / "up"
    for name in ["search.json", "optuna.db", "trials.csv", "report.md", "best/model.pt", "best/tokenizer.json",
                 "plots/learning_curves.png"]:
        assert (exp / name).is_file(), name
    assert len(list(exp.glob("trial_*/result.json"))) == 3  # Ray wrote the experiment at the URI
    assert len(pd.read_csv(exp / "trials.csv")) == 3
    # the best checkpoint samples text once downloaded (here: read in place)
    sample = run_cli("nanogpt.sample", "--checkpoint", str(exp / "best"), "--prompt", "Number 3", "--max-new-tokens", "5")
    assert sample.returncode == 0 and sample.stdout.startswith("Number 3"), sample.stderr

    # the same name again is refused, and nothing at the URI changes
    before = (exp / "trials.csv").read_bytes()
    again = run_cli("tune.search", *args, env=env)
    assert_one_line_error(again, "already exists")
    assert (exp / "trials.csv").read_bytes() == before

    # --resume from the URI alone (the local copy is gone): nothing left to run, the same 3 trials
    shutil.rmtree(cache)
    resumed = run_cli("tune.search", "--resume", "--name", "up", "--results-dir", uri, "--no-report", env=env)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert len(pd.read_csv(exp / "trials.csv")) == 3

    # a report rebuilt from the URI alone
    shutil.rmtree(cache)
    (exp / "report.md").unlink()
    rebuilt = run_cli("tune.report", f"{uri}/up", "--top", "1", "--prompt", "Number 9", env=env)
    assert rebuilt.returncode == 0, rebuilt.stdout + rebuilt.stderr
    text = (exp / "report.md").read_text()
    assert "Number 9" in text and "## Generations" in text


@pytest.mark.slow
def test_winner_continued_from_its_checkpoint_at_the_uri_after_a_resume(tmp_path, cache):
    """--final-from continue at a URI: the winner's stable checkpoint comes from the ResultGrid that fit() returns,
    on a resume too (the grid of a restored search, the local copy gone, final/ lost before it was written)."""
    import json

    remote = tmp_path / "remote"
    uri = f"file://{remote}"
    env = {"NANOGPT_TUNE_CACHE": str(cache)}
    args = [*TINY, "--num-samples", "2", "--max-steps", "20", "--eval-interval", "5", "--scheduler", "fifo",
            "--schedule", "wsd", "--final-budget", "40steps", "--results-dir", uri, "--name", "w", "--no-report"]
    proc = run_cli("tune.search", *args, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    exp = remote / "w"
    best = pd.read_csv(exp / "trials.csv").iloc[0]["trial_id"]
    assert json.loads((exp / "final" / "config.json").read_text())["continued_from"] == best

    shutil.rmtree(exp / "final")
    shutil.rmtree(cache)
    resumed = run_cli("tune.search", "--resume", "--name", "w", "--results-dir", uri, "--no-report", env=env)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"{best} continued from its stable checkpoint" in resumed.stdout
    meta = json.loads((exp / "final" / "config.json").read_text())
    assert meta["continued_from"] == best and meta["step"] == 40


def test_report_of_a_missing_uri_is_one_clear_error(tmp_path, cache):
    proc = run_cli("tune.report", f"file://{tmp_path}/nothing/here", env={"NANOGPT_TUNE_CACHE": str(cache)})
    assert_one_line_error(proc, "does not exist")
