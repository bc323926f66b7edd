"""Bad input: one clear line on stderr, a non-zero exit, no traceback, nothing written or overwritten."""

import os
import subprocess
import time

import pytest
import torch

from conftest import assert_one_line_error, make_trainer, run_cli
from nanogpt.amounts import format_amount, parse_amount
from nanogpt.cli import run_main
from tune.search import main as search_main


def _search(argv, capsys):
    """Run `python -m tune.search argv` in-process (fast: these fail before Ray starts)."""
    with pytest.raises(SystemExit) as e:
        run_main(search_main, argv)
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    return e.value.code, lines


@pytest.fixture
def files(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    (d / "empty.txt").write_text("")
    (d / "binary.bin").write_bytes(b"\x00\x01\x02" * 100)
    (d / "latin1.txt").write_bytes("caf\u00e9 ".encode("latin-1") * 100)
    (d / "short.txt").write_text("to be or not to be")
    return d


CASES = [
    (["--dataset", "nope"], "unknown dataset"),
    (["--data-file", "{data}/missing.txt"], "does not exist"),
    (["--data-file", "{data}/empty.txt"], "empty"),
    (["--data-file", "{data}/binary.bin"], "binary"),
    (["--data-file", "{data}/latin1.txt"], "not UTF-8"),
    (["--data-file", "{data}/short.txt"], "too short"),
    (["--num-samples", "0"], "--num-samples"),
    (["--max-steps", "-5"], "--max-steps"),
    (["--n-layer", "6:2"], "empty"),
    (["--dropout", "0:1.5"], "dropout"),
    (["--lr", "0:1e-3"], "learning rate"),
    (["--n-head", "0,2"], "positive"),
    (["--head-dim", "abc"], "not a number"),
    (["--batch-size", "-8"], "positive"),
    (["--reduction-factor", "1"], "--reduction-factor"),
    (["--eval-every", "10", "--grace-period", "15"], "multiple of --eval-every"),
    (["--trial-budget", "3e11flops", "--eval-interval", "10"], "--eval-interval counts steps"),
    (["--trial-budget", "5parsecs"], "unit"),
    (["--trial-budget", "1e5flops"], "less than one training step"),
    (["--max-steps", "100", "--grace-period", "200"], "above the trial budget"),
    (["--trial-budget", "100s", "--eval-every", "200"], "never be evaluated"),
    (["--trial-budget", "1e12flops", "--final-budget", "100steps"], "one unit"),
    (["--cpus-per-trial", "0"], "--cpus-per-trial"),
    # limits of the libraries the flags reach (Optuna's and numpy's seeds, Ray's ASHA, float()) are checks too
    (["--seed", "-1"], "--seed"),
    (["--seed", str(2**32)], "--seed"),
    (["--reduction-factor", str(10**20)], "--reduction-factor"),
    (["--max-steps", "1" + "0" * 400], "--max-steps"),
    (["--num-samples", str(2**63)], "--num-samples"),
    (["--bpe-vocab-size", str(2**64), "--tokenizer", "bpe"], "--bpe-vocab-size"),
    (["--resume", "--name", "ghost"], "nothing to resume"),
    (["--resume"], "--name"),
    (["--name", "../escape"], "--name"),
    (["--results-dir", "foo://bucket/x"], "--results-dir"),
    (["--results-dir", "file:///nonexistent-ngt-root/x", "--resume", "--name", "ghost"], "nothing to resume"),
]


@pytest.mark.parametrize("argv,needle", CASES, ids=[" ".join(a) for a, _ in CASES])
def test_search_rejects_bad_input(argv, needle, files, tmp_path, capsys):
    results = tmp_path / "results"
    argv = [a.replace("{data}", str(files)) for a in argv]
    code, lines = _search([*argv, "--results-dir", str(results)] if "--results-dir" not in argv else argv, capsys)
    assert code == 2
    assert len(lines) == 1 and needle.lower() in lines[0].lower(), lines
    assert not results.exists(), "a failed search wrote something"


def test_existing_name_is_never_overwritten(tmp_path, capsys):
    exp = tmp_path / "results" / "taken"
    exp.mkdir(parents=True)
    (exp / "trials.csv").write_text("precious")
    code, lines = _search(["--dataset", "counting", "--results-dir", str(tmp_path / "results"), "--name", "taken"], capsys)
    assert code == 2 and "already exists" in lines[0] and "--resume" in lines[0]
    assert (exp / "trials.csv").read_text() == "precious" and sorted(os.listdir(exp)) == ["trials.csv"]


def test_resume_refuses_new_settings(tmp_path, capsys):
    from tune.config import build_parser, config_from_args

    results = str(tmp_path / "results")
    saved = config_from_args(build_parser().parse_args(["--name", "old", "--lr", "1e-4:1e-2", "--results-dir", results]))
    saved.experiment_dir.mkdir(parents=True)
    saved.save()
    code, lines = _search(["--resume", "--name", "old", "--lr", "1e-3", "--results-dir", results], capsys)
    assert code == 2 and lines[0].startswith("error: --lr: old was searched with 0.0001:0.01 (log)"), lines
    assert "says 0.001;" in lines[0]
    (saved.experiment_dir / "search.json").write_text("{}")
    code, lines = _search(["--resume", "--name", "old", "--results-dir", results], capsys)
    assert code == 2 and "not a search configuration" in lines[0], lines


def test_unwritable_results_dir(tmp_path, capsys):
    blocker = tmp_path / "file.txt"
    blocker.write_text("I am a file")
    code, lines = _search(["--dataset", "counting", "--results-dir", str(blocker / "results")], capsys)
    assert code == 2 and "not writable" in lines[0]
    assert blocker.read_text() == "I am a file"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_gpus_per_trial_without_gpu_fails_at_once(tmp_path, capsys):
    t0 = time.time()
    code, lines = _search(["--dataset", "counting", "--gpus-per-trial", "0.5", "--results-dir", str(tmp_path / "r")], capsys)
    assert code == 2 and "--gpus-per-trial" in lines[0] and time.time() - t0 < 30
    assert not (tmp_path / "r").exists()


def test_unreachable_address_fails_within_seconds(tmp_path, capsys):
    t0 = time.time()
    code, lines = _search(["--dataset", "counting", "--address", "127.0.0.1:9", "--results-dir", str(tmp_path / "r")], capsys)
    assert code == 2 and "cannot reach a Ray cluster" in lines[0]
    assert time.time() - t0 < 15
    assert not (tmp_path / "r").exists()


def test_cli_bad_input_has_no_traceback(tmp_path):
    """The real command line, end to end: one line, exit 2, no traceback."""
    proc = run_cli("tune.search", "--num-samples", "0", "--results-dir", str(tmp_path))
    assert proc.returncode == 2
    assert_one_line_error(proc, "--num-samples")
    proc = run_cli("tune.report", str(tmp_path / "nothing"))
    assert_one_line_error(proc, "not a directory")
    (tmp_path / "empty").mkdir()
    proc = run_cli("tune.report", str(tmp_path / "empty"))
    assert_one_line_error(proc, "no Ray Tune experiment")


def test_train_seed_outside_torchs_range_is_one_line(tmp_path):
    proc = run_cli("nanogpt.train", "--dataset", "counting", "--seed", str(2**64), "--out", str(tmp_path / "o"))
    assert proc.returncode == 2
    assert_one_line_error(proc, "seed")
    assert not (tmp_path / "o").exists()


def test_checkpoint_errors_for_sample(tmp_path, data):
    """Missing, corrupt and mismatched checkpoints: one line each."""
    from nanogpt.tokenizer import CharTokenizer, save_tokenizer

    proc = run_cli("nanogpt.sample", "--checkpoint", str(tmp_path / "missing"))
    assert_one_line_error(proc, "does not exist")

    # the counting corpus, char-tokenized (conftest's data)
    trainer = make_trainer(data, base={}, block_size=8, n_head=1, n_embd=8, max_steps=1, eval_interval=1, eval_iters=1)
    good = trainer.save(tmp_path / "good")
    proc = run_cli("nanogpt.sample", "--checkpoint", str(good), "--prompt", "Zürich ☃ 7", "--max-new-tokens", "5")
    assert proc.returncode == 0 and proc.stdout.startswith("Zürich ☃ 7")  # unseen characters go through <unk>

    corrupt = trainer.save(tmp_path / "corrupt")
    (corrupt / "model.pt").write_bytes(b"not a checkpoint")
    assert_one_line_error(run_cli("nanogpt.sample", "--checkpoint", str(corrupt)), "corrupt")

    foreign = trainer.save(tmp_path / "foreign")
    save_tokenizer(CharTokenizer.from_text("abc"), foreign / "tokenizer.json")
    assert_one_line_error(run_cli("nanogpt.sample", "--checkpoint", str(foreign)), "different runs")


@pytest.fixture(params=["silent", "http"])
def not_ray(request):
    """A TCP server on 127.0.0.1 that is not Ray: it accepts and says nothing, or answers HTTP garbage."""
    import socket
    import threading

    server = socket.create_server(("127.0.0.1", 0))
    conns, stop = [], threading.Event()

    def serve():
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            conns.append(conn)
            if request.param == "http":
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 5\r\n\r\nnope!")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join()
    for c in conns:
        c.close()
    server.close()


def test_address_of_a_port_that_is_not_ray_fails_within_30s(tmp_path, not_ray):
    t0 = time.time()
    try:
        proc = run_cli("tune.search", "--dataset", "counting", "--address", not_ray, "--results-dir", str(tmp_path / "r"),
                       timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("--address to a port that is not Ray hung for a minute")
    assert proc.returncode == 2 and time.time() - t0 < 30
    assert_one_line_error(proc, "not a Ray cluster", not_ray)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("budget", ["1e15steps", "1e25flops"])
def test_an_absurd_trial_budget_is_refused_before_the_search(budget, tmp_path, capsys):
    """More steps than any trial could take (1e15 steps used to pass, then each trial walked its plan step by step
    and never reported): one line naming the budget, before anything is written."""
    results = tmp_path / "results"
    code, lines = _search(["--dataset", "counting", "--trial-budget", budget, "--results-dir", str(results)], capsys)
    assert code == 2 and len(lines) == 1 and f"--trial-budget {format_amount(*parse_amount(budget, 'x'))}" in lines[0], lines
    assert "e+" not in lines[0]  # issue 30: amounts as people write them
    assert "training steps of the space's largest model" in lines[0] and "lower it" in lines[0]
    assert not results.exists()


@pytest.mark.parametrize("argv", [["--time-budget", "5x"], ["--time-budget", "-3"], ["--time-budget", "nan"],
                                  ["--num-samples", "x"], ["--scheduler", "nope"], ["--no-such-flag"]],
                         ids=lambda a: " ".join(a))
def test_a_bad_flag_value_is_one_line_not_the_usage(argv, tmp_path, capsys):
    """A value argparse refuses (a bad --time-budget printed its 31-line usage block): one line naming the flag and
    pointing at --help, exit 2."""
    code, lines = _search([*argv, "--results-dir", str(tmp_path / "r")], capsys)
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith("error: ") and argv[0] in lines[0] and "--help" in lines[0], lines
    if argv[0] == "--time-budget":
        assert f"'{argv[1]}': give a duration > 0" in lines[0] and "parse_duration" not in lines[0], lines
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("name", ["caf\u00e9", "\u5b9f\u9a13", "_lead", "a b"])
def test_name_message_says_what_the_rule_allows(name, tmp_path, capsys):
    """--name allows ASCII letters only (it names directories and Ray's experiment): the message said 'letters' and
    refused unicode ones; it says ASCII, and what the name may start with."""
    code, lines = _search(["--name", name, "--results-dir", str(tmp_path / "r")], capsys)
    assert code == 2 and len(lines) == 1 and "ASCII letters" in lines[0] and "starting with a letter or digit" in lines[0]
    assert not (tmp_path / "r").exists()
    code, lines = _search(["--name", "Ok.name_2-x", "--dry-run", "--dataset", "counting",
                           "--results-dir", str(tmp_path / "r")], capsys)
    assert code == 0


DRY_RUN_CASES = [
    (["--data-file", "{data}/missing.txt"], "does not exist"),
    (["--data-file", "{data}/binary.bin"], "binary"),
    (["--data-file", "{data}/short.txt"], "too short"),
    (["--dataset", "nope"], "unknown dataset"),
    (["--dataset", "counting", "--trial-budget", "1e5flops"], "less than one training step"),
    (["--dataset", "counting", "--name", "taken"], "already exists"),
]


@pytest.mark.parametrize("argv,needle", DRY_RUN_CASES, ids=[" ".join(a) for a, _ in DRY_RUN_CASES])
def test_dry_run_checks_what_a_run_checks(argv, needle, files, tmp_path, capsys):
    """--dry-run refuses what the run would refuse before training (it used to exit 0 for a missing data file,
    assuming a vocabulary of 256), with the run's own line, and writes nothing."""
    results = tmp_path / "results"
    (results / "taken").mkdir(parents=True)
    (results / "taken" / "trials.csv").write_text("precious")
    argv = [a.replace("{data}", str(files)) for a in argv]
    code, lines = _search([*argv, "--dry-run", "--results-dir", str(results)], capsys)
    assert code == 2 and len(lines) == 1 and needle.lower() in lines[0].lower(), lines
    assert sorted(p.name for p in results.rglob("*")) == ["taken", "trials.csv"]


def test_dry_run_of_a_data_file_gives_its_own_vocabulary(tmp_path, capsys):
    text = tmp_path / "text.txt"
    text.write_text("the quick brown fox jumps over the lazy dog, again and again. " * 400)
    with pytest.raises(SystemExit) as e:
        run_main(search_main, ["--data-file", str(text), "--max-steps", "40", "--dry-run",
                               "--results-dir", str(tmp_path / "results")])
    out = capsys.readouterr().out
    assert e.value.code == 0 and "assumed" not in out and '"prompts": [' in out
    assert "nothing was written to" in out and not (tmp_path / "results").exists()


def test_resume_of_a_spent_time_budget_says_so_and_exits_non_zero(tmp_path, capsys):
    """A search whose --time-budget is spent has nothing left for --resume: one line saying so, where its results
    are and how to search longer, exit 2, its files untouched (it used to start Ray, run nothing, exit 0 and ask for
    another --resume)."""
    from tune.config import build_parser, config_from_args

    results = str(tmp_path / "results")
    config = config_from_args(build_parser().parse_args(["--dataset", "counting", "--max-steps", "40", "--time-budget",
                                                         "45", "--name", "spent", "--results-dir", results]))
    exp = config.experiment_dir
    exp.mkdir(parents=True)
    config.save()
    (exp / "tuner.pkl").write_bytes(b"Ray's saved tuner")
    (exp / "search_clock.json").write_text('{"running_s": 45.2}')
    before = {p.name: p.read_bytes() for p in exp.iterdir()}
    code, lines = _search(["--resume", "--name", "spent", "--results-dir", results], capsys)
    assert code == 2 and len(lines) == 1, lines
    assert "spent its time budget (45 s of 45 s)" in lines[0] and "nothing left to run" in lines[0], lines
    assert "--time-budget" in lines[0] and "another --name" in lines[0] and "continue it with" not in lines[0]
    assert {p.name: p.read_bytes() for p in exp.iterdir()} == before
    # with time left, the check lets the resume go on (it fails later here: the tuner.pkl above is not Ray's)
    (exp / "search_clock.json").write_text('{"running_s": 30.0}')
    from tune.preflight import refuse_spent

    refuse_spent(config)
