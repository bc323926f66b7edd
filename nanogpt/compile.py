"""torch.compile for the training step (forward, loss and backward; Inductor's C++ backend on CPU, Triton on CUDA):
`on`, `off`, or `auto`, which compiles only where the run's remaining steps repay the compile time.

Compile time is measured apart from training time (the compiling warm-up runs before the step it precedes), and
Inductor's artefacts are kept under NANOGPT_TUNE_CACHE, so the trials of one shape compile once per machine; later
ones load the cache. What a compile cost and what it gained per step are written to NANOGPT_TUNE_CACHE/compile.json
per shape: `auto` decides from that record, or, for a shape never compiled on this machine, from DEFAULT_COMPILE_S
and DEFAULT_SPEEDUP. The optimizer step and gradient clipping stay eager: fused AdamW is one kernel already, and
Muon's Newton-Schulz is a few large matmuls.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from pathlib import Path

import torch

from nanogpt.files import cache_dir, write_json

log = logging.getLogger(__name__)

COMPILE_MODES = ("auto", "on", "off")
# auto's guess for a shape this machine has never compiled: a cold compile on CPU and a compiled step's speedup,
# on the low side of what was measured at the preset sizes (benchmarks/RESULTS.md, "Fast trials")
DEFAULT_COMPILE_S = 30.0
DEFAULT_SPEEDUP = 1.05
RECORD_FILE = "compile.json"
# the user's own cache directories, read before torch sets its defaults into the environment (building an
# optimizer does), so that only a user's choice wins over NANOGPT_TUNE_CACHE
_USER_DIRS = {name: os.environ.get(name) for name in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR")}


def use_cache_dir() -> Path:
    """Point Inductor's (and Triton's) caches into NANOGPT_TUNE_CACHE, unless the user set them."""
    root = cache_dir() / "compile"
    for name, sub in (("TORCHINDUCTOR_CACHE_DIR", "inductor"), ("TRITON_CACHE_DIR", "triton")):
        os.environ[name] = _USER_DIRS[name] or str(root / sub)
    return root


def shape_key(model_cfg, batch_size: int, device: torch.device) -> str:
    """What a compiled step depends on: the model's shape, the batch, the device and torch's version."""
    m = model_cfg
    # the options only where they differ from nanoGPT's, so a default model keeps the key measured before them
    options = "".join(f" {k}={v}" for k, v in _options(m).items())
    return (f"{device.type} torch{torch.__version__} L{m.n_layer} H{m.n_head} C{m.n_embd} T{m.block_size} "
            f"V{m.vocab_size} B{batch_size} bias{int(m.bias)} drop{m.dropout:g}{options} {torch.get_num_threads()}t")


def _options(model_cfg) -> dict:
    """The architecture options (GPTConfig's fields after the shape) that differ from their defaults."""
    shape = {"block_size", "vocab_size", "n_layer", "n_head", "n_embd", "dropout", "bias"}
    return {f.name: getattr(model_cfg, f.name) for f in dataclasses.fields(model_cfg)
            if f.name not in shape and getattr(model_cfg, f.name) != f.default}


def read_records() -> dict:
    path = cache_dir() / "compile" / RECORD_FILE
    try:
        records = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return records if isinstance(records, dict) else {}


def write_record(key: str, **fields) -> None:
    """Keep what this shape's compile cost and gained (best effort: a cache that cannot be written is skipped)."""
    records = read_records()
    records[key] = {**records.get(key, {}), **fields}
    try:
        (cache_dir() / "compile").mkdir(parents=True, exist_ok=True)
        write_json(cache_dir() / "compile" / RECORD_FILE, records, indent=1)
    except OSError as e:
        log.debug("compile record not written: %s", e)


def expected(key: str) -> tuple[float, float]:
    """(compile seconds, speedup of a compiled step) for this shape: measured on this machine, else the defaults."""
    rec = read_records().get(key, {})
    speedup = DEFAULT_SPEEDUP
    if rec.get("eager_step_s") and rec.get("compiled_step_s"):
        speedup = rec["eager_step_s"] / rec["compiled_step_s"]
    return rec.get("compile_s", DEFAULT_COMPILE_S), speedup


def worth_compiling(key: str, steps_left: int, eager_step_s: float) -> bool:
    """auto: compile when the seconds a compiled step saves over the steps left exceed the compile time."""
    compile_s, speedup = expected(key)
    saved = steps_left * eager_step_s * (1 - 1 / speedup)
    log.debug("compile %s? %d steps left would save %.1f s for %.1f s of compiling", key, steps_left, saved, compile_s)
    return saved > compile_s


class StepCompiler:
    """The training forward of a Trainer, eager or compiled. `forward` is what the step calls."""

    def __init__(self, model: torch.nn.Module, mode: str, key: str):
        if mode not in COMPILE_MODES:
            raise ValueError(f"compile must be one of {', '.join(COMPILE_MODES)}, got {mode!r}")
        self.model, self.mode, self.key = model, mode, key
        self.forward = model
        self.compiled = False
        self.decided = mode == "off"
        self.compile_s = 0.0

    def compile(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """Compile, and run forward and backward once on (x, y) to build both graphs, outside the training
        step: the RNG is restored and the gradients dropped, so training goes on as if nothing ran. Returns the
        seconds it took; where compiling fails, says so in one log line and stays eager."""
        self.decided = True
        use_cache_dir()
        t0 = time.perf_counter()
        compiled = torch.compile(self.model, dynamic=False)
        try:
            with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
                _, loss = compiled(x, y)
                loss.backward()
        except Exception as e:  # Dynamo, Inductor or the C++ compiler: any of them fails as its own exception
            log.warning("compiling the training step failed, training eager instead: %s: %s", type(e).__name__,
                        str(e).strip().splitlines()[0] if str(e).strip() else "")
            return self._dropped(t0)
        finally:
            self.model.zero_grad(set_to_none=True)
        if x.device.type == "cuda":
            torch.cuda.synchronize(x.device)
        self.forward, self.compiled = compiled, True
        seconds = time.perf_counter() - t0
        self.compile_s += seconds
        write_record(self.key, compile_s=round(seconds, 3))
        log.info("compiled the training step in %.1f s", seconds)
        return seconds

    def _dropped(self, t0: float) -> float:
        seconds = time.perf_counter() - t0
        self.compile_s += seconds
        return seconds

    def record_speed(self, eager_step_s: float | None, compiled_step_s: float | None) -> None:
        """Keep the measured step times of this shape, for auto's next decision."""
        fields = {k: round(v, 6) for k, v in (("eager_step_s", eager_step_s), ("compiled_step_s", compiled_step_s))
                  if v}
        if fields:
            write_record(self.key, **fields)
