"""The training loop: config checks, schedule, metrics, exact resume, divergence, time budget, checkpoints."""

import math
import shutil

import pytest
import torch

from nanogpt.data import load_dataset, tokenize
from nanogpt.model import GPTConfig
from nanogpt.tokenizer import CharTokenizer, save_tokenizer
from nanogpt.train import CheckpointError, Trainer, TrainConfig, load_model, lr_at

METRICS = {"step", "train_loss", "val_loss", "val_bpc", "tokens_seen", "tokens_per_s", "n_params", "elapsed_s"}


@pytest.fixture(scope="module")
def data():
    ds = load_dataset("counting")
    tok = CharTokenizer.from_text(ds.text)
    return tokenize(ds, tok), tok


def trainer(data, dropout: float = 0.0, **kw) -> Trainer:
    td, tok = data
    cfg = TrainConfig(**{"max_steps": 40, "batch_size": 8, "learning_rate": 1e-2, "eval_interval": 10,
                         "eval_iters": 2, "device": "cpu", **kw})
    model_cfg = GPTConfig(block_size=16, vocab_size=tok.vocab_size, n_layer=1, n_head=2, n_embd=16, dropout=dropout)
    return Trainer(model_cfg, cfg, td, tok)


@pytest.fixture(scope="module")
def finished(data, tmp_path_factory):
    """One finished 40-step run and its checkpoint."""
    t = trainer(data)
    seen = []
    t.run(lambda m, tr: seen.append(dict(m)))
    return t, seen, t.save(tmp_path_factory.mktemp("ckpt") / "run")


# --- configuration and schedule -----------------------------------------------------------------


@pytest.mark.parametrize("kw", [
    dict(learning_rate=0.0), dict(learning_rate=-1e-3), dict(learning_rate=float("nan")),
    dict(max_steps=0), dict(max_steps=-3), dict(learning_rate=1e-3, min_lr=2e-3), dict(device="tpu"),
    dict(batch_size=0), dict(eval_interval=0), dict(warmup_steps=-1), dict(beta1=1.0), dict(time_budget_s=0),
])
def test_train_config_errors(kw):
    with pytest.raises(ValueError):
        TrainConfig(**kw)


def test_train_config_defaults_resolve():
    cfg = TrainConfig(max_steps=300, learning_rate=2e-3)
    assert cfg.min_lr == pytest.approx(2e-4) and cfg.warmup_steps == 30 and cfg.lr_decay_steps == 300


def test_lr_schedule_warmup_peak_and_floor():
    cfg = TrainConfig(max_steps=1000, learning_rate=1e-3, min_lr=1e-4, warmup_steps=100, lr_decay_steps=800)
    lrs = [lr_at(s, cfg) for s in range(1200)]
    warm = lrs[:100]
    assert all(a < b for a, b in zip(warm, warm[1:]))  # warmup rises
    assert 0 < lrs[0] < 0.05 * 1e-3
    assert max(lrs) == pytest.approx(1e-3) and lrs.index(max(lrs)) == 100
    decay = lrs[100:801]
    assert all(a >= b for a, b in zip(decay, decay[1:]))  # then falls, monotonically
    assert lrs[450] == pytest.approx((1e-3 + 1e-4) / 2)  # half way down the cosine
    assert lrs[800] == pytest.approx(1e-4)
    assert all(lr == pytest.approx(1e-4) for lr in lrs[800:])  # and stays at min_lr


# --- the loop ----------------------------------------------------------------------------------


def test_tiny_run_learns_and_reports_design_metrics(data, finished):
    t, seen, _ = finished
    td, tok = data
    assert [m["step"] for m in seen] == [10, 20, 30, 40]
    assert all(METRICS <= set(m) for m in seen)
    assert [m["status"] for m in seen] == ["running"] * 3 + ["finished"]
    assert seen == t.history
    assert seen[-1]["val_loss"] < seen[0]["val_loss"] - 0.1
    assert seen[-1]["val_loss"] < math.log(tok.vocab_size) - 0.5
    assert seen[-1]["tokens_seen"] == 40 * 8 * 16
    assert seen[-1]["n_params"] == t.model.get_num_params()
    assert seen[-1]["val_bpc"] == pytest.approx(seen[-1]["val_loss"] / math.log(2) / td.val_chars_per_token)
    assert all(m["tokens_per_s"] > 0 and m["elapsed_s"] > 0 for m in seen)
    assert all(a["elapsed_s"] <= b["elapsed_s"] for a, b in zip(seen, seen[1:]))


def test_eval_at_interval_and_at_max_steps(data):
    seen = []
    trainer(data, max_steps=25, eval_interval=10).run(lambda m, t: seen.append((m["step"], m["status"])))
    assert seen == [(10, "running"), (20, "running"), (25, "finished")]


def test_resume_continues_exactly(data, tmp_path):
    """With dropout, 20 straight steps equal 10 steps, a checkpoint, a new process's Trainer and 10 more."""

    class Killed(Exception):
        pass

    kw = dict(dropout=0.1, max_steps=20, eval_interval=5)
    straight = trainer(data, **kw)
    straight_history = straight.run()

    def save_then_die(m, t):
        if m["step"] == 10:
            t.save(tmp_path / "ckpt")
            raise Killed

    with pytest.raises(Killed):
        trainer(data, **kw).run(save_then_die)
    torch.manual_seed(999)  # a new process starts with other global RNG state
    resumed = trainer(data, **kw)
    resumed.restore(tmp_path / "ckpt")
    assert resumed.step == 10
    history = resumed.run()

    assert [m["step"] for m in history] == [m["step"] for m in straight_history] == [5, 10, 15, 20]
    for a, b in zip(straight_history, history):
        assert b["train_loss"] == pytest.approx(a["train_loss"], abs=1e-5)
        assert b["val_loss"] == pytest.approx(a["val_loss"], abs=1e-5)
        assert b["tokens_seen"] == a["tokens_seen"]
    assert history[-1]["status"] == "finished"
    for (k, p), q in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        torch.testing.assert_close(q, p, atol=1e-5, rtol=0, msg=k)


def test_same_seed_same_losses(data):
    a = trainer(data, max_steps=20, dropout=0.1).run()
    b = trainer(data, max_steps=20, dropout=0.1).run()
    c = trainer(data, max_steps=20, dropout=0.1, seed=7).run()
    assert [(m["train_loss"], m["val_loss"]) for m in a] == [(m["train_loss"], m["val_loss"]) for m in b]
    assert [m["val_loss"] for m in a] != [m["val_loss"] for m in c]


def test_divergence_is_a_status_not_an_exception(data):
    seen = []
    t = trainer(data, learning_rate=1e6, warmup_steps=0, grad_clip=0.0, max_steps=200, eval_interval=5)
    history = t.run(lambda m, tr: seen.append(m))
    assert history[-1]["status"] == "diverged" and t.status == "diverged"
    assert history[-1]["val_loss"] == math.inf
    assert history[-1]["step"] < 200  # it stopped at once
    assert seen == history


def test_nan_loss_is_diverged(data, monkeypatch):
    """A NaN in the training loss (here injected) ends the run as diverged, reported once, without raising."""
    t = trainer(data, max_steps=20, eval_interval=10)
    forward = t.model.forward
    calls = {"n": 0}

    def poisoned(idx, targets=None):
        logits, loss = forward(idx, targets)
        if t.model.training:
            calls["n"] += 1
            if calls["n"] == 3:
                loss = loss * float("nan")
        return logits, loss

    monkeypatch.setattr(t.model, "forward", poisoned)
    history = t.run()
    assert [m["step"] for m in history] == [3]
    assert history[0]["status"] == "diverged" and math.isinf(history[0]["val_loss"])
    assert math.isnan(history[0]["train_loss"])


def test_time_budget_stops_early(data):
    t = trainer(data, max_steps=100_000, eval_interval=100_000, time_budget_s=0.2)
    history = t.run()
    assert len(history) == 1 and history[0]["status"] == "time_budget" == t.status
    assert 0 < history[0]["step"] < 100_000
    assert history[0]["elapsed_s"] >= 0.2
    assert math.isfinite(history[0]["val_loss"])


# --- checkpoints ---------------------------------------------------------------------------------


def test_checkpoint_files_and_load_model(finished):
    t, seen, d = finished
    assert {"model.pt", "config.json", "tokenizer.json"} <= {p.name for p in d.iterdir()}
    model, tok, meta = load_model(d)
    assert not model.training and meta["step"] == 40 and meta["status"] == "finished"
    assert meta["history"] == seen
    assert tok.vocab_size == model.config.vocab_size == t.model_cfg.vocab_size
    x = torch.randint(0, tok.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    t.model.eval()
    torch.testing.assert_close(model(x, x)[0], t.model(x, x)[0], atol=0, rtol=0)


def test_load_model_missing_dir(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "nope")


def test_load_model_missing_model_file(finished, tmp_path):
    d = shutil.copytree(finished[2], tmp_path / "c")
    (d / "model.pt").unlink()
    with pytest.raises(CheckpointError, match="model.pt is missing"):
        load_model(d)


@pytest.mark.parametrize("garbage", [b"\x00garbage" * 100, b"", b"PK\x03\x04 not really a zip"])
def test_load_model_corrupt_model_file(finished, tmp_path, garbage):
    d = shutil.copytree(finished[2], tmp_path / "c")
    (d / "model.pt").write_bytes(garbage)
    with pytest.raises(CheckpointError, match="corrupt model.pt"):
        load_model(d)


def test_load_model_tokenizer_from_another_run(finished, tmp_path):
    d = shutil.copytree(finished[2], tmp_path / "c")
    save_tokenizer(CharTokenizer.from_text("abc"), d / "tokenizer.json")
    with pytest.raises(CheckpointError, match="tokenizer has 4 tokens"):
        load_model(d)


def test_restore_refuses_another_model(finished, data):
    other = Trainer(GPTConfig(block_size=16, vocab_size=data[1].vocab_size, n_layer=1, n_head=4, n_embd=16),
                    TrainConfig(max_steps=40, batch_size=8, eval_iters=2, device="cpu"), data[0], data[1])
    with pytest.raises(CheckpointError, match="different model config"):
        other.restore(finished[2])
