"""torch.compile for the training step (forward, loss and backward; Inductor's C++ backend on CPU, Triton on CUDA):
`on`, `off`, or `auto`, which compiles only where this machine's own measurements say the run's remaining steps
repay the compile.

Compile time is measured apart from training time (the compiling warm-up runs before the step it precedes), and
Inductor's artefacts are kept under NANOGPT_TUNE_CACHE, so the trials of one shape compile once per machine; later
ones load the cache. What a compile cost and what it gained per step are written to NANOGPT_TUNE_CACHE/compile.json
per shape and machine (the key names the CPU): `auto` decides from that record. A shape this machine never measured
is compiled only where even a slow cold compile (the slowest this machine has recorded, else UNKNOWN_COMPILE_S) is
at most BLIND_SHARE of the run's remaining seconds, and that compile is then checked: a compiled step no faster than
the eager one goes back to eager and is recorded, so auto never compiles that shape here again. No guess made on
another CPU decides here: one such guess compiled a tiny model here for far longer than it expected, and the compiled
step ran slower than eager (benchmarks/RESULTS.md, "Compile auto on a fresh cache"). The optimizer step and gradient
clipping stay eager: fused AdamW is one kernel already, and Muon's Newton-Schulz is a few large matmuls.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import platform
import time
from pathlib import Path

import torch

from nanogpt.files import cache_dir, write_json
from nanogpt.plan import PROBE_STEPS

log = logging.getLogger(__name__)

COMPILE_MODES = ("auto", "on", "off")
# auto, for a shape this machine never measured: a cold compile is taken to cost the slowest compile this machine
# has recorded, or UNKNOWN_COMPILE_S where it has none (above the slowest compile seen on this project's machines:
# benchmarks/RESULTS.md, "Compile auto on a fresh cache"), and is tried only where that is at most BLIND_SHARE of the
# run's remaining seconds; the compiled step is then timed over VERIFY_STEPS steps and kept only if it beats eager
UNKNOWN_COMPILE_S = 120.0
BLIND_SHARE = 0.05
VERIFY_STEPS = 10
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


@functools.lru_cache(maxsize=None)
def machine_id(device_type: str) -> str:
    """The processor a record was measured on: a cache shared between machines (a network home) must not let one
    machine's speeds decide for another's."""
    if device_type == "cuda":
        return torch.cuda.get_device_name().replace(" ", "_")
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip().replace(" ", "_")
    except OSError:
        pass
    return (platform.processor() or platform.machine()).replace(" ", "_")


def shape_key(model_cfg, batch_size: int, device: torch.device) -> str:
    """What a compiled step depends on: the model's shape, the batch, the device, the machine and torch's version."""
    m = model_cfg
    # the options only where they differ from nanoGPT's, so a default model keeps the key measured before them
    options = "".join(f" {k}={v}" for k, v in _options(m).items())
    return (f"{device.type} {machine_id(device.type)} torch{torch.__version__} L{m.n_layer} H{m.n_head} C{m.n_embd} "
            f"T{m.block_size} V{m.vocab_size} B{batch_size} bias{int(m.bias)} drop{m.dropout:g}{options} "
            f"{torch.get_num_threads()}t")


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


def slowest_compile_s(key: str) -> float:
    """What a cold compile of a shape never compiled here may cost: the slowest compile recorded on this machine
    (same device, same processor), else UNKNOWN_COMPILE_S."""
    here = " ".join(key.split(" ", 2)[:2]) + " "
    seen = [r["compile_s"] for k, r in read_records().items()
            if k.startswith(here) and isinstance(r, dict) and isinstance(r.get("compile_s"), (int, float))]
    return max(seen, default=UNKNOWN_COMPILE_S)


def worth_compiling(key: str, steps_left: int, eager_step_s: float, seconds_left: float | None = None) -> bool:
    """auto: compile when this machine measured the shape and the seconds a compiled step saves over the steps left
    exceed the compile time; for a shape it never timed compiled, only where even a slow cold compile is at most
    BLIND_SHARE of the seconds left (the caller then times the compiled step and reverts where it is no faster).
    `seconds_left` caps the run's remaining seconds where a wall-clock limit ends it sooner."""
    rec = read_records().get(key, {})
    remaining_s = steps_left * eager_step_s
    if seconds_left is not None:
        remaining_s = min(remaining_s, max(0.0, seconds_left))
    if rec.get("eager_step_s") and rec.get("compiled_step_s"):
        speedup = rec["eager_step_s"] / rec["compiled_step_s"]
        compile_s = rec.get("compile_s", slowest_compile_s(key))
        saved = remaining_s * (1 - 1 / speedup)
        log.debug("compile %s? measured %.2fx: %.1f s left would save %.1f s for %.1f s of compiling",
                  key, speedup, remaining_s, saved, compile_s)
        return saved > compile_s
    compile_s = rec.get("compile_s", slowest_compile_s(key))
    log.debug("compile %s? never timed here: %.1f s of compiling against %.1f s left", key, compile_s, remaining_s)
    return compile_s <= BLIND_SHARE * remaining_s


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
        self.eager_step_s = None  # auto: the eager step's seconds it decided on
        self.compiled_from = None  # (step, train_time) where the compiled steps began
        self.speed_checked = False  # auto: the compiled step has been timed against the eager one

    def maybe_compile(self, x: torch.Tensor, y: torch.Tensor, step: int, train_time: float, steps_left: int,
                      seconds_left: float | None) -> None:
        """Compile before this step of the run (`step` steps trained in `train_time` seconds, `steps_left` planned,
        `seconds_left` where a time bounds them): at the first step with compile on; with auto, after PROBE_STEPS
        eager steps, where this machine's record says the steps left repay it (worth_compiling). The compile's
        seconds count in compile_s, not in train_time."""
        if self.mode == "auto":
            if step < PROBE_STEPS:
                return
            self.eager_step_s = train_time / step
            self.decided = True
            if not worth_compiling(self.key, steps_left, self.eager_step_s, seconds_left):
                return
        self.compiled_from = (step, train_time)
        self.compile(x, y)

    def check_speed(self, step: int, train_time: float) -> None:
        """auto: once VERIFY_STEPS compiled steps have run, keep the compiled step only if it beats the eager one
        measured before it; either way this machine's record gets both, so the next decision is measured."""
        step0, time0 = self.compiled_from
        if step - step0 < VERIFY_STEPS:
            return
        self.speed_checked = True
        compiled_step_s = (train_time - time0) / (step - step0)
        if compiled_step_s >= self.eager_step_s:
            log.info("the compiled step (%.2f ms) is no faster than eager (%.2f ms) on this machine: training eager",
                     compiled_step_s * 1e3, self.eager_step_s * 1e3)
            self.record_speed(self.eager_step_s, compiled_step_s)
            self.revert()

    def record_run_speed(self, step: int, train_time: float) -> None:
        """At the end of run(): the compiled steps' speed beside the eager one's, in this machine's record."""
        if self.compiled_from is not None and self.compiled and step > self.compiled_from[0]:
            step0, time0 = self.compiled_from
            self.record_speed(self.eager_step_s, (train_time - time0) / (step - step0))

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

    def revert(self) -> None:
        """Train eager from here on (auto found the compiled step no faster)."""
        self.forward, self.compiled = self.model, False

    def record_speed(self, eager_step_s: float | None, compiled_step_s: float | None) -> None:
        """Keep the measured step times of this shape, for auto's next decision."""
        fields = {k: round(v, 6) for k, v in (("eager_step_s", eager_step_s), ("compiled_step_s", compiled_step_s))
                  if v}
        if fields:
            write_record(self.key, **fields)
