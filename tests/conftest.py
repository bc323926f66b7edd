import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
RAY = str(Path(sys.executable).parent / "ray")

# a tiny, fast search: 1-layer models on the counting corpus, a few steps each
# cosine: these searches check spend, rungs and steps as a cosine trial spends them (a wsd search has its own test)
TINY = ["--dataset", "counting", "--n-layer", "1", "--n-head", "2", "--head-dim", "8", "--block-size", "16",
        "--batch-size", "4,8", "--dropout", "0:0.1", "--schedule", "cosine"]


def run_cli(module: str, *args: str, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `python -m module args` from the repository root, as a user would."""
    full_env = {**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env=full_env)


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    """Bad input: non-zero exit, one line on stderr naming the problem, no traceback."""
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    for n in needles:
        assert n.lower() in lines[0].lower(), lines[0]


@pytest.fixture
def run():
    return run_cli


@pytest.fixture(scope="session")
def tiny_search(tmp_path_factory):
    """One TPE + ASHA search of 8 tiny trials on real local Ray, shared by the search and report tests.

    Tests that change the experiment work on a copy."""
    results = tmp_path_factory.mktemp("results")
    proc = run_cli("tune.search", *TINY, "--num-samples", "8", "--max-steps", "40", "--eval-interval", "5",
                   "--grace-period", "5", "--reduction-factor", "2", "--lr", "1e-4:3e-2", "--seed", "3",
                   "--results-dir", str(results), "--name", "e2e")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return results / "e2e", proc


def terminated_trials(exp: Path) -> dict[str, float]:
    """trial dir -> mtime of result.json, for trials Ray's saved experiment state records as TERMINATED.

    A trial can have logged its last step yet still be RUNNING in that state (Ctrl-C came before
    its final checkpoint was registered); Ray rightly reruns such a trial from its last registered
    checkpoint on resume, so only TERMINATED trials are promised to stay untouched."""
    from ray.tune import ExperimentAnalysis

    done = {}
    for trial in ExperimentAnalysis(str(exp)).trials:
        if trial.status == "TERMINATED":
            result = Path(trial.path) / "result.json"
            done[result.parent.name] = result.stat().st_mtime
    return done


@pytest.fixture(scope="session", autouse=True)
def ray_token():
    """One Ray token for every cluster the tests start, made before any of them: on a new machine, clusters started
    side by side (pytest -n) each wrote their own ~/.ray/auth_token, and a worker node joining its head then read
    the other's (a two-node test failed its setup in a fresh clone's CI)."""
    from tune.ray_env import ensure_token

    ensure_token()


# --- local Ray clusters that tests start themselves (they stop only what they started) --------------------


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def free_port() -> int:
    """A port nothing on 127.0.0.1 listens on now, for a test cluster's head: tests may run side by side
    (pytest -n), so no fixed or pid-derived port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pids_under(temp: Path, name: str | None = None) -> set[int]:
    """Processes whose command line names a cluster's temp dir (optionally only those called `name`)."""
    out = subprocess.run(["pgrep", "-f", str(temp)], capture_output=True, text=True).stdout
    pids = {int(p) for p in out.split()} - {os.getpid()}
    if name:
        pids = {p for p in pids if _comm(p) == name}
    return pids


def stop_processes_under(temp: Path) -> None:
    """SIGTERM, then SIGKILL, exactly the processes whose command line names this cluster's temp dir."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids_under(temp):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + 10
        while pids_under(temp) and time.time() < deadline:
            time.sleep(0.2)
    subprocess.run(["rm", "-rf", str(temp)])


@pytest.fixture(scope="module")
def data():
    """The counting corpus, char-tokenized: (TokenData, tokenizer), for tests that train a tiny model."""
    from nanogpt.batches import tokenize
    from nanogpt.dataset import load_dataset
    from nanogpt.tokenizer import CharTokenizer

    ds = load_dataset("counting")
    tok = CharTokenizer.from_text(ds.text)
    return tokenize(ds, tok), tok


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest on one thread, and far faster than on two on a loaded machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --- tiny Trainers, and the kill-restore-compare check of exact resume --------------------------------------

TINY_MODEL = dict(block_size=16, n_layer=1, n_head=2, n_embd=16)
TINY_TRAIN = dict(max_steps=40, batch_size=8, learning_rate=3e-3, eval_interval=10, eval_iters=2)


def make_trainer(data, model: dict | None = None, *, base: dict = TINY_TRAIN, **kw):
    """A Trainer of a tiny GPT on data ((TokenData, tokenizer); a tokenizer of None takes vocab_size from kw).

    The model is TINY_MODEL with any GPTConfig field in kw, then `model`, over it; the training is `base` (TINY_TRAIN
    unless given; {} for TrainConfig's own defaults) with the other fields in kw over it. A test file's own defaults
    are a functools.partial of this."""
    from nanogpt.model import GPTConfig
    from nanogpt.train import Trainer, TrainConfig

    td, tok = data
    model_fields = GPTConfig.__dataclass_fields__
    vocab = {} if tok is None else {"vocab_size": tok.vocab_size}
    model_cfg = GPTConfig(**{**TINY_MODEL, **vocab, **{k: v for k, v in kw.items() if k in model_fields},
                             **(model or {})})
    train_cfg = TrainConfig(**{**base, **{k: v for k, v in kw.items() if k not in model_fields}})
    return Trainer(model_cfg, train_cfg, td, tok)


class Killed(Exception):
    """The process dying, raised from a run's report right after it saved a checkpoint."""


def assert_resume_equals_uninterrupted(make, ckpt: Path, kill_at: int, compare=("train_loss", "val_loss"),
                                       atol: float = 1e-5):
    """Kill, restore, compare: a run killed right after its checkpoint at step kill_at, restored from it by a new
    trainer and run to its end, reports the same steps and `compare` metrics (within atol; atol=0: exactly) and ends
    with the same weights as a run never stopped. make() builds a trainer, the same each call. Returns the
    (uninterrupted, resumed) trainers for a test's own further checks."""
    import torch

    straight = make()
    expected = straight.run()

    def save_then_die(m, t):
        if m["step"] == kill_at:
            t.save(ckpt)
            raise Killed

    with pytest.raises(Killed):
        make().run(save_then_die)
    resumed = make()
    resumed.restore(ckpt)
    history = resumed.run()
    assert [m["step"] for m in history] == [m["step"] for m in expected]
    for a, b in zip(expected, history):
        for key in compare:
            if atol:
                assert a[key] == pytest.approx(b[key], abs=atol), (a["step"], key)
            else:
                assert a[key] == b[key], (a["step"], key)
    for (k, p), q in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        torch.testing.assert_close(p, q, atol=atol, rtol=0, msg=k)
    return straight, resumed
