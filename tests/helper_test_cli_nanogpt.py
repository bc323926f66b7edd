"""The nanogpt command lines, run as a user runs them: train, resume, sample, attention, and their bad input."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PNG = b"\x89PNG\r\n\x1a\n"
TRAIN_ARGS = ["--dataset", "counting", "--max-steps", "30", "--eval-interval", "15", "--n-layer", "1", "--n-head", "2",
              "--n-embd", "16", "--block-size", "16", "--batch-size", "8", "--eval-iters", "2",
              "--sample-tokens", "20"]  # short samples: the test is about the command, not the text


def run(module: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=REPO, capture_output=True,
                          encoding="utf-8", timeout=300, env=env)


def assert_one_line_error(proc: subprocess.CompletedProcess, needle: str, code: int | None = None) -> None:
    assert proc.returncode != 0, proc.stdout + proc.stderr
    if code is not None:
        assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert needle.lower() in lines[0].lower(), lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny training run through the command line, shared by the tests below."""
    out = tmp_path_factory.mktemp("cli") / "run"
    proc = run("nanogpt.train", *TRAIN_ARGS, "--out", out)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out, proc


def test_train_writes_checkpoint_plot_and_samples(trained):
    out, proc = trained
    assert {"model.pt", "config.json", "tokenizer.json", "loss.png"} <= {p.name for p in out.iterdir()}
    assert (out / "loss.png").read_bytes()[:8] == PNG
    before, after = proc.stdout.find("samples before training"), proc.stdout.find("samples after training")
    assert 0 <= before < after, proc.stdout
    assert "step     15" in proc.stdout and "step     30" in proc.stdout and "finished" in proc.stdout
    assert "Traceback" not in proc.stderr


def test_train_refuses_to_overwrite_a_checkpoint(trained):
    out, _ = trained
    weights = (out / "model.pt").read_bytes()
    proc = run("nanogpt.train", *TRAIN_ARGS, "--out", out)
    assert_one_line_error(proc, "--resume")
    assert (out / "model.pt").read_bytes() == weights


def test_train_resume_with_unchanged_steps_just_works(trained):
    out, _ = trained
    weights = (out / "model.pt").read_bytes()
    proc = run("nanogpt.train", *TRAIN_ARGS, "--out", out, "--resume")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "resuming" in proc.stdout and "samples after training" in proc.stdout
    assert (out / "model.pt").read_bytes() == weights  # finished already: nothing more to train
    assert (out / "loss.png").read_bytes()[:8] == PNG


def test_train_resume_continues_on_its_own_data(trained, capsys):
    """Without --dataset, a resumed run keeps its data set (not the default `mixed`); other data is refused."""
    from nanogpt.train import main

    out, _ = trained
    assert main(["--out", str(out), "--resume", "--sample-tokens", "2"]) == 0
    assert "data: counting," in capsys.readouterr().out
    with pytest.raises(ValueError, match="trained on counting, not abc"):
        main(["--out", str(out), "--resume", "--dataset", "abc"])


def test_sample_starts_with_the_prompt_and_repeats_with_the_seed(trained):
    out, _ = trained
    args = ["--checkpoint", out, "--prompt", "Number 7", "--max-new-tokens", "20", "--seed", "3"]
    a, b = run("nanogpt.sample", *args), run("nanogpt.sample", *args)
    assert a.returncode == 0, a.stderr
    assert a.stdout.startswith("Number 7") and len(a.stdout) > len("Number 7\n")
    assert a.stdout == b.stdout


def test_sample_with_unseen_characters(trained):
    out, _ = trained
    proc = run("nanogpt.sample", "--checkpoint", out, "--prompt", "Zß€", "--max-new-tokens", "10", "--seed", "1")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("Zß€")


def test_sample_missing_checkpoint(tmp_path):
    proc = run("nanogpt.sample", "--checkpoint", tmp_path / "nope", "--prompt", "x")
    assert_one_line_error(proc, "does not exist", code=2)


def test_attention_writes_a_heatmap(trained, tmp_path):
    out, _ = trained
    png = tmp_path / "att.png"
    proc = run("nanogpt.attention", "--checkpoint", out, "--text", "Number 7 comes", "--out", png)
    assert proc.returncode == 0, proc.stderr
    assert png.read_bytes()[:8] == PNG


def test_attention_layer_out_of_range(trained, tmp_path):
    out, _ = trained
    proc = run("nanogpt.attention", "--checkpoint", out, "--text", "Number 7", "--layer", "5", "--out", tmp_path / "a.png")
    assert_one_line_error(proc, "layer 5", code=2)
    assert not (tmp_path / "a.png").exists()


def test_train_missing_data_file(tmp_path):
    proc = run("nanogpt.train", "--data-file", tmp_path / "missing.txt", "--out", tmp_path / "o")
    assert_one_line_error(proc, "does not exist", code=2)
    assert not (tmp_path / "o").exists()


def test_train_unknown_dataset(tmp_path):
    proc = run("nanogpt.train", "--dataset", "nope", "--out", tmp_path / "o")
    assert_one_line_error(proc, "unknown dataset", code=2)
    assert not (tmp_path / "o").exists()
