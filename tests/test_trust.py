"""Results from anywhere are safe to open (issue 18): names read from a results directory never reach
outside it, a report never reads the reader's files, a crafted checkpoint is refused before it allocates,
corrupt files give one line each, and bad sample flags one line. Fast: a results directory made by hand,
no Ray."""

import json
import os
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pytest
import torch

from conftest import assert_one_line_error, run_cli
from nanogpt.errors import UserError
from nanogpt.model import GPT, GPTConfig
from nanogpt.tokenizer import CharTokenizer, save_tokenizer

CORPUS = "Number 1 comes before 2. Number 2 comes before 3. A1B1C1.\n"
TINY_MODEL = GPTConfig(block_size=16, vocab_size=len(set(CORPUS)) + 1, n_layer=1, n_head=2, n_embd=8)


def make_checkpoint(d: Path, cfg: GPTConfig = TINY_MODEL, model_cfg: dict | None = None) -> Path:
    """A checkpoint as Trainer.save writes it (model.pt, config.json, tokenizer.json), untrained."""
    d.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    torch.save({"model": GPT(cfg).state_dict()}, d / "model.pt")
    (d / "config.json").write_text(json.dumps({"model": model_cfg or cfg.to_dict(), "history": []}))
    save_tokenizer(CharTokenizer.from_text(CORPUS), d / "tokenizer.json")
    return d


def make_search(results: Path, name: str = "s", data_file: str | None = None) -> Path:
    """A finished two-trial search as tune.search leaves it, without Ray: search.json, outcomes.json, each trial's
    params.json, result.json and checkpoint."""
    from tune.config import build_parser, config_from_args

    argv = ["--results-dir", str(results), "--name", name] + (["--data-file", data_file] if data_file else
                                                               ["--dataset", "counting"])
    config = config_from_args(build_parser().parse_args(argv))
    exp = results / name
    exp.mkdir(parents=True)
    config.save()
    outcomes = {}
    for i, tid in enumerate(["a0001", "b0002"]):
        trial = exp / f"trial_{tid}"
        make_checkpoint(trial / "checkpoint_000000")
        (trial / "params.json").write_text(json.dumps({"n_layer": 1, "n_head": 2, "head_dim": 4, "dropout": 0.0,
                                                       "learning_rate": 1e-3, "batch_size": 4, "block_size": 16,
                                                       "weight_decay": 0.1, "optimizer": "adamw"}))
        row = {"trial_id": tid, "step": 5, "spend": 5.0, "val_loss": 2.0 + i, "val_bpc": 3.0 + i, "n_params": 500,
               "tokens_seen": 320, "elapsed_s": 1.0, "tokens_per_s": 320.0, "status": "finished", "outcome": "finished",
               "checkpoint_dir_name": "checkpoint_000000"}
        (trial / "result.json").write_text(json.dumps(row) + "\n")
        outcomes[tid] = {"outcome": "finished", "spend": 5.0, "step": 5}
    (exp / "outcomes.json").write_text(json.dumps(outcomes))
    return exp


# --- 1. names from a results directory stay inside it ----------------------------------------------------


class _Bucket(pafs.FileSystemHandler):
    """An object store whose keys are arbitrary strings, as S3's are."""

    def __init__(self, files: dict[str, bytes]):
        self.files = files

    def get_type_name(self):
        return "bucket"

    def normalize_path(self, path):
        return path

    def _info(self, p):
        if p in self.files:
            return pafs.FileInfo(p, pafs.FileType.File, size=len(self.files[p]))
        if any(k.startswith(p.rstrip("/") + "/") for k in self.files):
            return pafs.FileInfo(p, pafs.FileType.Directory)
        return pafs.FileInfo(p, pafs.FileType.NotFound)

    def get_file_info(self, paths):
        return [self._info(p) for p in paths]

    def get_file_info_selector(self, selector):
        return [pafs.FileInfo(k, pafs.FileType.File, size=len(v)) for k, v in self.files.items()
                if k.startswith(selector.base_dir + "/")]

    def open_input_stream(self, path):
        return pa.BufferReader(self.files[path])

    open_input_file = open_input_stream

    def _read_only(self, *args):
        raise NotImplementedError("read-only bucket")

    copy_file = create_dir = delete_dir = delete_dir_contents = delete_file = _read_only
    delete_root_dir_contents = move = open_append_stream = open_output_stream = _read_only


@pytest.fixture
def cache(tmp_path, monkeypatch):
    d = tmp_path / "cache"
    monkeypatch.setenv("NANOGPT_TUNE_CACHE", str(d))
    return d


@pytest.mark.parametrize("key", ["../../../escaped.txt", "trial_a/../../../../escaped.txt", "/../escaped.txt"])
def test_uri_key_outside_the_local_copy_is_refused(tmp_path, cache, key):
    from tune.storage import Mirror

    m = Mirror(f"file://{tmp_path}/bucket/results/exp")  # then its file system swapped for the bucket
    m.fs, m.root = pafs.PyFileSystem(_Bucket({"bucket/results/exp/search.json": b"{}",
                                              f"bucket/results/exp/{key.lstrip('/')}": b"pwned"})), "bucket/results/exp"
    with pytest.raises(UserError, match="outside") as e:
        m.pull()
    assert key.lstrip("/") in str(e.value) and len(str(e.value).splitlines()) == 1
    assert not [p for p in tmp_path.rglob("escaped.txt")], "a key wrote outside the local copy"


def test_report_never_writes_through_a_link_out_of_the_results_dir(tmp_path):
    exp = make_search(tmp_path / "results")
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (exp / "trials.csv").symlink_to(victim)
    proc = run_cli("tune.report", str(exp))
    assert_one_line_error(proc, "trials.csv", "outside")
    assert victim.read_text() == "precious"


@pytest.mark.parametrize("rel", ["trial_a0001/error.txt", "trial_a0001/params.json", "optuna.db", "search.json"])
def test_report_never_reads_through_a_link_out_of_the_results_dir(tmp_path, rel):
    """A results directory unpacked from someone else's archive may hold links to the reader's files."""
    exp = make_search(tmp_path / "results")
    _add_study(exp)
    private = tmp_path / "private.txt"
    private.write_text('{"n_layer": "SECRET-42"}\nSECRET-42 last line\n')
    (exp / rel).unlink(missing_ok=True)
    (exp / rel).symlink_to(private)
    proc = run_cli("tune.report", str(exp), "--max-new-tokens", "2")
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert "Traceback" not in proc.stderr and len(lines) == 1, proc.stderr
    assert rel.split("/")[-1] in lines[0] and "outside" in lines[0], lines[0]
    if proc.returncode == 0:  # optuna.db: only the importance plot needs it, and the rest is written
        assert rel == "optuna.db" and "SECRET" not in (exp / "report.md").read_text()


def test_resume_ignores_paths_in_search_json(tmp_path):
    """search.json's local_copy or a name other than the directory's would move a local search's files elsewhere."""
    from tune.config import build_parser, config_from_args

    exp = make_search(tmp_path / "results")
    settings = json.loads((exp / "search.json").read_text())
    (exp / "search.json").write_text(json.dumps({**settings, "local_copy": str(tmp_path / "elsewhere")}))
    args = build_parser().parse_args(["--resume", "--name", "s", "--results-dir", str(tmp_path / "results")])
    assert config_from_args(args).experiment_dir == exp
    (exp / "search.json").write_text(json.dumps({**settings, "name": "../../elsewhere"}))
    with pytest.raises(UserError, match="elsewhere"):
        config_from_args(args)


# --- 2. a report takes its prompts from the results directory alone ---------------------------------------


def _generation_prompts(report_md: str) -> list[str]:
    return [line[len("### Prompt "):] for line in report_md.splitlines() if line.startswith("### Prompt ")]


def test_report_never_reads_the_data_file_search_json_names(tmp_path):
    """A search.json made elsewhere names a path that, on the reader's machine, is a private file."""
    from tune.report import write_report

    private = tmp_path / "private.txt"
    private.write_text("SECRET-42 the reader's own notes\n")
    exp = make_search(tmp_path / "results", data_file=str(private))
    settings = json.loads((exp / "search.json").read_text())
    settings.pop("prompts", None)  # a search.json of before prompts were recorded, or a crafted one
    (exp / "search.json").write_text(json.dumps(settings))
    text = write_report(exp, max_new_tokens=4).read_text()
    assert "SECRET" not in text and "reader's own" not in text
    assert _generation_prompts(text) == ["'\\n'"] and "search.json records no prompts" in text


def test_report_uses_the_prompts_search_json_records(tmp_path):
    from tune.config import SearchConfig
    from tune.report import write_report

    exp = make_search(tmp_path / "results")
    config = SearchConfig.load(exp)
    import dataclasses

    dataclasses.replace(config, prompts=["Number 1 comes"]).save(exp)
    assert _generation_prompts(write_report(exp, max_new_tokens=4).read_text()) == ["'Number 1 comes'"]
    # the user's own data file, passed on the command line, is theirs to read
    own = tmp_path / "own.txt"
    own.write_text("A1B1 mine\nmore\n")
    proc = run_cli("tune.report", str(exp), "--data-file", str(own), "--max-new-tokens", "4")
    assert proc.returncode == 0, proc.stderr
    assert _generation_prompts((exp / "report.md").read_text()) == ["'A1B1 mine'"]


# --- 3. a checkpoint's config.json must describe its weights before any model is built --------------------


@pytest.mark.parametrize("field, value", [("n_layer", 4096), ("n_embd", 1 << 16), ("block_size", 1 << 24)])
def test_config_far_larger_than_its_weights_is_refused_before_allocating(tmp_path, monkeypatch, field, value):
    import nanogpt.checkpoint as checkpoint

    ckpt = make_checkpoint(tmp_path / "ckpt", model_cfg={**TINY_MODEL.to_dict(), field: value})
    built = []

    def guarded_gpt(cfg):  # building the crafted model would take gigabytes: record it instead
        built.append(cfg)
        raise AssertionError(f"a model was built from the crafted config: {cfg}")

    monkeypatch.setattr(checkpoint, "GPT", guarded_gpt)
    with pytest.raises(checkpoint.CheckpointError, match="model.pt") as e:
        checkpoint.load_model(ckpt)
    assert not built and len(str(e.value).splitlines()) == 1 and field in str(e.value)


def test_sample_refuses_a_crafted_config_in_one_line(tmp_path):
    ckpt = make_checkpoint(tmp_path / "ckpt", model_cfg={**TINY_MODEL.to_dict(), "n_layer": 100_000, "n_embd": 4096})
    # before the check, this tried to allocate 2e13 parameters: bounded so that it fails rather than hangs
    assert_one_line_error(run_cli("nanogpt.sample", "--checkpoint", str(ckpt), timeout=60), "config.json", "model.pt")


# --- 11. nanogpt.sample's flags -------------------------------------------------------------------------


@pytest.mark.parametrize("flag, value", [("--max-new-tokens", "-1"), ("--top-k", "0"), ("--top-k", "-1"),
                                         ("--temperature", "nan"), ("--temperature", "inf"),
                                         ("--seed", "99999999999999999999"), ("--seed", "-1")])
def test_sample_flag_out_of_range_is_one_line(tmp_path, flag, value):
    from nanogpt.sample import main

    ckpt = make_checkpoint(tmp_path / "ckpt")
    with pytest.raises(UserError, match=flag) as e:
        main(["--checkpoint", str(ckpt), "--max-new-tokens", "2", flag, value])
    assert len(str(e.value).splitlines()) == 1


def test_sample_flag_checked_before_the_checkpoint_is_read(tmp_path):
    assert_one_line_error(run_cli("nanogpt.sample", "--checkpoint", str(tmp_path / "nowhere"), "--top-k", "0"),
                          "--top-k")


# --- 10. corrupt files: one line naming the file, and every section that does not need it -----------------


def _add_study(exp: Path, name: str = "s") -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=name, storage=f"sqlite:///{exp / 'optuna.db'}")
    for lr in (1e-3, 2e-3, 3e-3, 4e-3):
        trial = study.ask()
        study.tell(trial, 2.0 + trial.suggest_float("learning_rate", 1e-4, 1e-2, log=True) + lr)


def _truncate(f: Path) -> None:
    f.write_bytes(f.read_bytes()[:3000])


def _rename_study(f: Path) -> None:
    import sqlite3

    with sqlite3.connect(f) as db:
        db.execute("UPDATE studies SET study_name = 'renamed'")


def _patch_json(f: Path, **changes) -> None:
    f.write_text(json.dumps({**json.loads(f.read_text()), **changes}))


def _patch_result(f: Path, **changes) -> None:
    f.write_text(json.dumps({**json.loads(f.read_text().splitlines()[0]), **changes}) + "\n")


CORRUPTIONS = {
    "optuna.db truncated": ("optuna.db", _truncate),
    "optuna.db random": ("optuna.db", lambda f: f.write_bytes(os.urandom(8192))),
    "optuna.db study renamed": ("optuna.db", _rename_study),
    "search.json wrong type": ("search.json", lambda f: _patch_json(f, cpus_per_trial="x")),
    "outcomes.json not UTF-8": ("outcomes.json", lambda f: f.write_bytes(b'{"a0001": "\xff\xfe"}')),
    "outcomes.json string values": ("outcomes.json", lambda f: f.write_text('{"a0001": "finished", "b0002": 3}')),
    "outcomes.json unknown outcome": ("outcomes.json", lambda f: _patch_json(f, a0001={"outcome": "exploded"})),
    "result.json string val_loss": ("trial_a0001/result.json", lambda f: _patch_result(f, val_loss="low")),
}


@pytest.mark.parametrize("case", CORRUPTIONS)
def test_report_on_a_corrupt_file_names_it_and_writes_the_rest(tmp_path, caplog, case):
    from tune import report

    exp = make_search(tmp_path / "results")
    _add_study(exp)
    rel, corrupt = CORRUPTIONS[case]
    corrupt(exp / rel)
    with caplog.at_level("WARNING", logger="tune"):
        assert report.main([str(exp), "--max-new-tokens", "2"]) == 0
    lines = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(lines) == 1 and rel.split("/")[-1] in lines[0] and "\n" not in lines[0], lines
    text = (exp / "report.md").read_text()
    for section in ("## Summary", "## All trials", "## Generations", "learning_curves.png", "## Missing"):
        assert section in text, section
    assert "a0001" in text and "b0002" in text


@pytest.mark.parametrize("case", [c for c in CORRUPTIONS if c.startswith(("optuna.db", "search.json"))])
def test_dashboard_on_a_corrupt_file_is_one_line(tmp_path, case):
    from tune.dashboard import make_dashboard

    exp = make_search(tmp_path / "results")
    _add_study(exp)
    rel, corrupt = CORRUPTIONS[case]
    corrupt(exp / rel)
    try:
        server, _ = make_dashboard(exp)
    except UserError as e:
        assert rel in str(e) and len(str(e).splitlines()) == 1
    else:  # search.json's name is all the dashboard reads from it
        server.server_close()
        assert rel == "search.json"


# --- 7. a results directory is relocatable: it resumes against its own optuna.db --------------------------


def _digest(f: Path) -> str:
    import hashlib

    return hashlib.sha256(f.read_bytes()).hexdigest()


@pytest.mark.slow
def test_copied_or_moved_search_resumes_against_its_own_study(tmp_path):
    import shutil
    import signal
    import subprocess
    import time

    import optuna

    from conftest import REPO, TINY

    args = [*TINY, "--num-samples", "4", "--max-steps", "150", "--eval-interval", "25", "--scheduler", "fifo",
            "--name", "rel", "--no-report", "--seed", "2"]
    original = tmp_path / "a" / "rel"
    proc = subprocess.Popen([sys.executable, "-m", "tune.search", *args, "--results-dir", str(tmp_path / "a")],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None and not (original / "outcomes.json").is_file():
        time.sleep(0.5)
    assert proc.poll() is None, "the search ended before it could be interrupted: make trials longer"
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert "--resume" in out, out

    copy = tmp_path / "b" / "rel"
    shutil.copytree(original, copy)
    def files(d: Path) -> dict[str, str]:
        return {str(f.relative_to(d)): _digest(f) for f in sorted(d.rglob("*")) if f.is_file()}

    kept = files(original)
    assert {"optuna.db", "outcomes.json", "search_clock.json"} <= set(kept)
    resumed = run_cli("tune.search", *args, "--results-dir", str(tmp_path / "b"), "--resume")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert files(original) == kept, "the copy wrote into the original"
    study = optuna.load_study(study_name="rel", storage=f"sqlite:///{copy / 'optuna.db'}")
    assert len([t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]) == 4

    moved = tmp_path / "c" / "rel"
    moved.parent.mkdir()
    original.rename(moved)
    resumed = run_cli("tune.search", *args, "--results-dir", str(tmp_path / "c"), "--resume")
    assert resumed.returncode == 0 and "Traceback" not in resumed.stderr, resumed.stdout + resumed.stderr
    study = optuna.load_study(study_name="rel", storage=f"sqlite:///{moved / 'optuna.db'}")
    assert len([t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]) == 4
    assert not original.exists()


def test_restored_searcher_opens_the_study_where_the_directory_is_now(tmp_path):
    """What Tuner.restore unpickles (tuner.pkl, searcher-state-*.pkl) holds the searcher as it was made; its study
    must be the copy's, not the original's."""
    import pickle
    import shutil

    import optuna

    from tune.binding import THIS_SEARCH
    from tune.searcher import StudyStorage, TruthfulOptunaSearch

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    original, copy = tmp_path / "a" / "s", tmp_path / "b" / "s"
    original.mkdir(parents=True)
    THIS_SEARCH.bind(original, str(original))
    searcher = TruthfulOptunaSearch(space={"lr": optuna.distributions.FloatDistribution(1e-3, 1e-1, log=True)},
                                    metric="val_loss", mode="min", sampler=optuna.samplers.RandomSampler(seed=0),
                                    study_name="s", storage=StudyStorage(original))
    searcher.suggest("t1")
    saved = pickle.dumps(searcher)
    shutil.copytree(original, copy)
    shutil.rmtree(original)  # moved: the old path is gone
    THIS_SEARCH.bind(copy, str(copy))
    restored = pickle.loads(saved)
    restored.on_trial_complete("t1", {"val_loss": 1.0, "spend": 5, "outcome": "finished"})
    assert restored.suggest("t2") is not None
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{copy / 'optuna.db'}")
    assert [t.state.name for t in study.trials] == ["COMPLETE", "RUNNING"]
    assert not original.exists()


# --- 4. a local search's Ray listens on loopback only ----------------------------------------------------

LISTENERS = """
import logging, os, subprocess, sys
from tune.config import build_parser, config_from_args
from tune.ray_env import init_ray, local_loopback

with local_loopback(None):
    import ray

    init_ray(config_from_args(build_parser().parse_args(["--results-dir", sys.argv[1]])), address=None, dashboard=False)
    ray.get(ray.remote(lambda: 1).remote())  # a worker up, as in a search
    rows = [line.split() for line in subprocess.run(["ps", "-eo", "pid=,ppid="], capture_output=True,
                                                    text=True).stdout.splitlines()]
    tree, grew = {str(os.getpid())}, True
    while grew:
        new = {pid for pid, ppid in rows if ppid in tree} - tree
        tree, grew = tree | new, bool(new)
    for line in subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True).stdout.splitlines():
        if any(f"pid={pid}," in line for pid in tree):
            print("LISTEN", line.split()[3], line.split()[-1])
    ray.shutdown()
"""


@pytest.mark.slow
def test_local_search_ray_listens_on_loopback_only(tmp_path):
    import shutil

    if not shutil.which("ss"):
        pytest.skip("needs ss (iproute2) to list listening sockets")
    import subprocess

    from conftest import REPO

    proc = subprocess.run([sys.executable, "-c", LISTENERS, str(tmp_path)], cwd=REPO, capture_output=True, text=True,
                          timeout=180, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert proc.returncode == 0, proc.stderr
    listening = [line.split()[1] for line in proc.stdout.splitlines() if line.startswith("LISTEN")]
    assert len(listening) >= 3, proc.stdout  # gcs_server, raylet, the driver and workers
    assert all(addr.rsplit(":", 1)[0] in ("127.0.0.1", "[::ffff:127.0.0.1]", "[::1]") for addr in listening), proc.stdout


def test_the_loopback_setting_does_not_outlive_the_search(tmp_path, monkeypatch):
    """A local search binds Ray to 127.0.0.1 through RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0; once it ends (here: bad
    data, after the setting was made) the variable is gone again, or a later `ray start` of a multi-node cluster
    from this process's children refuses to run."""
    from nanogpt.errors import UserError
    from tune import search
    from tune.config import build_parser, config_from_args

    monkeypatch.delenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", raising=False)
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    config = config_from_args(build_parser().parse_args(["--data-file", str(empty), "--results-dir", str(tmp_path)]))
    with pytest.raises(UserError):
        search.run(config, resume=False)
    assert "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER" not in os.environ
