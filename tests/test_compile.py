"""--compile auto|on|off: compile time apart from training time, auto's break-even, the eager fallback, and
compiled steps that give eager's losses with checkpoints that move between the two (slow: a real compile)."""

import functools
import json
import logging
import time

import pytest
import torch

from conftest import Killed, make_trainer, run_cli
from nanogpt import compile as C
from nanogpt.model import GPTConfig
from nanogpt.train import TrainConfig


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NANOGPT_TUNE_CACHE", str(tmp_path / "cache"))


make = functools.partial(make_trainer, max_steps=20, batch_size=4)  # conftest's tiny trainer, shorter


def test_the_shape_key_holds_the_model_options():
    cpu = torch.device("cpu")
    plain = C.shape_key(GPTConfig(n_layer=1, n_head=2, n_embd=16), 4, cpu)
    assert "=" not in plain  # a default model keeps the key its records were measured under
    keys = {C.shape_key(GPTConfig(n_layer=1, n_head=2, n_embd=16, **kw), 4, cpu) for kw in
            [dict(pos_emb="rope"), dict(norm="rmsnorm"), dict(mlp="relu2"), dict(mlp="swiglu"), dict(qk_norm=True),
             dict(tie_embeddings=False), dict(logit_softcap=30.0), dict(zero_init=True), dict(rope_theta=500.0),
             dict(parametrization="mup")]}
    assert len(keys) == 10 and plain not in keys
    assert "mlp=swiglu" in C.shape_key(GPTConfig(n_layer=1, n_head=2, n_embd=16, mlp="swiglu"), 4, cpu)


def slow_identity_compile(seconds):
    """A stand-in for torch.compile that takes `seconds` and returns the model as it is."""
    def compile(model, **kw):
        time.sleep(seconds)
        return model
    return compile


def test_off_is_the_default_and_modes_are_checked():
    assert TrainConfig().compile == "off"
    with pytest.raises(ValueError, match="compile"):
        TrainConfig(compile="yes")


def test_compile_time_is_apart_from_training_time_and_in_a_seconds_budget(data, monkeypatch):
    monkeypatch.setattr(torch, "compile", slow_identity_compile(1.0))
    t = make(data, compile="on")
    history = t.run()
    assert t.compiler.compiled and history[-1]["compiled"]
    assert history[-1]["compile_s"] >= 1.0
    assert t.train_time + t.compiler.compile_s <= t.elapsed + 1e-6
    s = make(data, compile="on", max_steps=10**6, budget_unit="s", budget=1.5, eval_every=0.5)
    s.run()
    assert s.spend == pytest.approx(s.train_time + s.compiler.compile_s)
    assert s.spend >= 1.5 and s.train_time < 1.0, "the compile's second came out of the budget"


def test_auto_compiles_only_where_the_steps_left_repay_it(data, monkeypatch):
    monkeypatch.setattr(torch, "compile", slow_identity_compile(0.0))
    t = make(data, compile="auto")
    t.run()
    assert not t.compiler.compiled and t.compiler.decided, "no record: a cold compile never pays for 10 tiny steps"
    key = t.compiler.key
    # a compile that costs next to nothing: worth it for the 10 steps left however fast this machine runs them
    C.write_record(key, compile_s=1e-6, eager_step_s=0.01, compiled_step_s=0.005)
    assert C.worth_compiling(key, steps_left=10, eager_step_s=0.01)  # saves 0.05 s for 1e-6 s
    assert not C.worth_compiling(key, steps_left=0, eager_step_s=0.01)  # saves nothing
    t = make(data, compile="auto")
    t.run()
    assert t.compiler.compiled and t.compiler.compiled_from[0] == 10, "compiled after its eager probe steps"
    record = json.loads((C.cache_dir() / "compile" / C.RECORD_FILE).read_text())[key]
    assert record["eager_step_s"] > 0 and record["compiled_step_s"] > 0


def test_auto_never_compiles_blind_on_a_guess_from_another_machine(data):
    """A shape this machine never timed compiled: auto compiles only where even a slow cold compile is a few percent
    of the run. The old guess (30 s, 1.05x, measured on another CPU) compiled a 1,000 s run; on 2026-12-07 such a
    guess cost a tiny model 86 s of compiling and a 0.7x step."""
    key = make(data, compile="auto").compiler.key
    assert not C.worth_compiling(key, steps_left=100_000, eager_step_s=0.01)  # 1,000 s left: 120 s is 12%
    assert C.worth_compiling(key, steps_left=1_000_000, eager_step_s=0.01)  # 10,000 s left: at most 1.2%
    assert not C.worth_compiling(key, steps_left=1_000_000, eager_step_s=0.01, seconds_left=45)  # a time limit
    # the slowest compile this machine recorded (any shape) is what a cold compile may cost
    C.write_record(key.replace(" L1 ", " L9 "), compile_s=900.0)
    assert not C.worth_compiling(key, steps_left=1_000_000, eager_step_s=0.01)
    # another machine's record decides nothing here
    other = key.replace(C.machine_id("cpu"), "Some_Other_CPU")
    assert other != key
    C.write_record(other, compile_s=1e-6, eager_step_s=0.01, compiled_step_s=0.001)
    assert not C.worth_compiling(key, steps_left=100_000, eager_step_s=0.01)


def test_auto_goes_back_to_eager_where_the_compiled_step_is_slower(data, monkeypatch):
    """A compile auto tried is timed against the eager step it replaced: slower, and the run trains eager again, the
    record says so, and auto never compiles that shape on this machine again."""
    def slow_step_compile(model, **kw):
        def forward(*a, **k):
            time.sleep(0.05)  # slower than any eager step of this model, even on a loaded machine
            return model(*a, **k)
        return forward
    monkeypatch.setattr(torch, "compile", slow_step_compile)
    key = make(data, compile="auto").compiler.key
    C.write_record(key, compile_s=1e-6)  # compiled here before, never timed: a blind try, cheap enough
    t = make(data, compile="auto", max_steps=60, eval_interval=30)
    history = t.run()
    assert t.compiler.compiled_from is not None, "auto tried the compile"
    assert not t.compiler.compiled and not history[-1]["compiled"], "and went back to eager"
    record = json.loads((C.cache_dir() / "compile" / C.RECORD_FILE).read_text())[key]
    assert record["compiled_step_s"] > record["eager_step_s"]
    assert not C.worth_compiling(key, steps_left=10**9, eager_step_s=1.0)


def test_a_failing_compile_trains_eager_with_one_log_line(data, monkeypatch, caplog):
    def broken(model, **kw):
        def fail(*a, **k):
            raise RuntimeError("no C++ compiler\nmore detail")
        return fail
    monkeypatch.setattr(torch, "compile", broken)
    eager = make(data).run()
    with caplog.at_level(logging.WARNING, logger="nanogpt.compile"):
        t = make(data, compile="on")
        fell_back = t.run()
    assert [r.message for r in caplog.records] == [
        "compiling the training step failed, training eager instead: RuntimeError: no C++ compiler"]
    assert not t.compiler.compiled
    assert [m["val_loss"] for m in fell_back] == [m["val_loss"] for m in eager]


def test_search_and_train_take_compile(tmp_path):
    from tune.config import build_parser, config_from_args

    search = config_from_args(build_parser().parse_args(["--compile", "off", "--results-dir", str(tmp_path)]))
    assert search.compile == "off" and search.shared_train_fields()["compile"] == "off"
    assert config_from_args(build_parser().parse_args(["--results-dir", str(tmp_path)])).compile == "auto"
    out = tmp_path / "run"
    proc = run_cli("nanogpt.train", "--dataset", "counting", "--compile", "off", "--max-steps", "4",
                   "--eval-interval", "2", "--eval-iters", "1", "--n-layer", "1", "--n-embd", "16", "--n-head", "2",
                   "--block-size", "16", "--batch-size", "4", "--sample-tokens", "3", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert json.loads((out / "config.json").read_text())["train"]["compile"] == "off"


@pytest.mark.slow
def test_compiled_losses_equal_eager_and_checkpoints_move_between_them(data, tmp_path):
    eager_trainer = make(data)
    eager = eager_trainer.run()

    def save_then_die(m, t):
        if m["step"] == 10:
            t.save(tmp_path / "ckpt")
            raise Killed

    compiled_trainer = make(data, compile="on")
    with pytest.raises(Killed):
        compiled_trainer.run(save_then_die)
    assert compiled_trainer.compiler.compiled and compiled_trainer.compiler.compile_s > 0
    resumed_eager = make(data)  # a compiled run's checkpoint, resumed eager
    resumed_eager.restore(tmp_path / "ckpt")
    first_half = resumed_eager.history
    second_half = resumed_eager.run()[len(first_half):]
    for a, b in zip(eager, second_half and resumed_eager.history):
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-5)
        assert a["val_loss"] == pytest.approx(b["val_loss"], abs=1e-5)
    make(data).run(lambda m, t: t.save(tmp_path / "eager") if m["step"] == 10 else None)
    resumed_compiled = make(data, compile="on")  # and an eager run's, resumed compiled
    resumed_compiled.restore(tmp_path / "eager")
    resumed_compiled.run()
    assert resumed_compiled.compiler.compiled
    assert resumed_compiled.history[-1]["val_loss"] == pytest.approx(eager[-1]["val_loss"], abs=1e-5)
    for (k, p), q in zip(eager_trainer.model.state_dict().items(), resumed_compiled.model.state_dict().values()):
        torch.testing.assert_close(p, q, atol=1e-5, rtol=0, msg=k)


@pytest.mark.slow
def test_compiled_model_options_give_eager_losses(data):
    options = dict(pos_emb="rope", norm="rmsnorm", mlp="swiglu", qk_norm=True, tie_embeddings=False,
                   logit_softcap=15.0, zero_init=True, parametrization="mup", mup_base_width=8)
    eager = make(data, model=options).run()
    compiled_trainer = make(data, model=options, compile="on")
    compiled = compiled_trainer.run()
    assert compiled_trainer.compiler.compiled
    for a, b in zip(eager, compiled):
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-4)
        assert a["val_loss"] == pytest.approx(b["val_loss"], abs=1e-4)
