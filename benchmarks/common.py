"""Shared by the benchmark scripts: data, machine description, fp32 peak, our command run, RESULTS.md sections."""

from __future__ import annotations

import functools
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
SHARED_SHAKESPEARE = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"

# nanoGPT's recommended CPU recipe (README: "I only have a macbook")
NANOGPT_CPU = dict(n_layer=4, n_head=4, n_embd=128, block_size=64, batch_size=12, max_steps=2000,
                   learning_rate=1e-3, dropout=0.0)


def shakespeare_file() -> Path:
    """The local copy beside the project, else the project's own cached download."""
    if SHARED_SHAKESPEARE.is_file():
        return SHARED_SHAKESPEARE
    from nanogpt.shakespeare import shakespeare_path

    return shakespeare_path()


@functools.cache
def shakespeare_chars():
    """(TokenData, tokenizer) of shakespeare_file(), char-level, prepared once per process (functools.cache): the
    runs of one pool worker share them."""
    from nanogpt.token_cache import prepare

    return prepare(None, shakespeare_file(), "char")


def require_cuda(command: str) -> None:
    """A GPU benchmark on a machine without CUDA: one line and a non-zero exit, before anything is written (a GPU's
    figures in RESULTS.md stay)."""
    if not torch.cuda.is_available():
        sys.exit(f"{command}: torch sees no CUDA device on this machine; run it where one is "
                 f"(benchmarks/RESULTS.md left as it was)")


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{os.cpu_count()} cores ({cpu}), {platform.system()} {platform.machine()}, "
            f"Python {platform.python_version()}, torch {torch.__version__}")


def matmul_peak_gflops(threads: int, n: int = 1024, seconds: float = 3.0) -> float:
    """Measured fp32 matmul throughput: the denominator of CPU MFU."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        reps += 1
    dt = time.perf_counter() - t0
    torch.set_num_threads(old)
    return 2 * n**3 * reps / dt / 1e9


def write_section(name: str, body: str) -> None:
    """Replace (or append) the section `## name` of benchmarks/RESULTS.md."""
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n\nEach section is rewritten by the script named in it.\n"
    section = f"## {name}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^## {re.escape(name)}\n.*?(?=^## |\Z)", re.S | re.M)
    text = pattern.sub(section + "\n", text) if pattern.search(text) else text.rstrip() + "\n\n" + section
    RESULTS.write_text(text)


@dataclass
class OurRun:
    exp: Path  # RESULTS_DIR/NAME of the search (gone when the with-block ends)
    wall_s: float  # the whole command, Python's start included
    stdout: str


@contextmanager
def our_search(args: list[str], name: str = "run", echo: bool = True) -> Iterator[OurRun]:
    """`python -m tune.search ARGS` as a user runs it, into a temporary results directory, timed. Prints its output
    (echo); a failed command ends the benchmark with its output's tail."""
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.time()
        proc = subprocess.run([sys.executable, "-m", "tune.search", *args, "--results-dir", tmp, "--name", name],
                              cwd=ROOT, capture_output=True, text=True)
        wall = time.time() - t0
        if echo:
            print(proc.stdout, flush=True)
        if proc.returncode != 0:
            sys.exit(f"the search failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
        yield OurRun(Path(tmp) / name, wall, proc.stdout)


def stamp() -> str:
    return f"Measured {time.strftime('%Y-%m-%d %H:%M')} on {machine()}."


def md_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)
