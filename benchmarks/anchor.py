"""nanoGPT's own code, run side by side with ours: a working copy of ../shared/anchors/nanoGPT with tiny
Shakespeare prepared, its train.py run as a subprocess, its step times parsed, its checkpoint loaded into
nanogpt.model.GPT. Nothing of nanoGPT is copied into the project: it is called where it lies (on a copy).
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from benchmarks.common import ROOT, shakespeare_file

ANCHOR = ROOT.parent / "shared" / "anchors" / "nanoGPT"
_ITER = re.compile(r"^iter (\d+): loss ([0-9.]+), time ([0-9.]+)ms", re.M)
_VAL = re.compile(r"^step (\d+): train loss ([0-9.]+), val loss ([0-9.]+)", re.M)

# README's CPU recipe ("I only have a macbook"), as train.py flags
CPU_RECIPE = dict(device="cpu", compile=False, eval_iters=20, log_interval=1, block_size=64, batch_size=12, n_layer=4,
                  n_head=4, n_embd=128, max_iters=2000, lr_decay_iters=2000, dropout=0.0)


def workdir() -> Path:
    """A fresh copy of nanoGPT with tiny Shakespeare prepared (train.bin, val.bin, meta.pkl); removed at exit."""
    if not (ANCHOR / "train.py").is_file():
        sys.exit(f"nanoGPT's code is not at {ANCHOR}: these benchmarks run it side by side with ours")
    root = Path(tempfile.mkdtemp(prefix="nanogpt-anchor-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    work = root / "nanoGPT"
    shutil.copytree(ANCHOR, work)
    data = work / "data" / "shakespeare_char"
    shutil.copy(shakespeare_file(), data / "input.txt")
    subprocess.run([sys.executable, "prepare.py"], cwd=data, check=True, capture_output=True)
    return work


@dataclass
class Run:
    stdout: str
    step_ms: list[float]  # per iteration, as train.py prints it
    val_losses: list[tuple[int, float]]  # (iter, val loss) at its evaluations
    checkpoint: Path

    def tokens_per_s(self, tokens_per_step: int, skip: int = 10) -> float:
        """Median step time after `skip` settling steps, as tokens/s."""
        return tokens_per_step / (statistics.median(self.step_ms[skip:]) / 1000)


def train(work: Path, threads: int, config: str | None = "config/train_shakespeare_char.py", **flags) -> Run:
    """Run nanoGPT's train.py in `work` with `flags` (--key=value), on `threads` torch threads."""
    out_dir = flags.setdefault("out_dir", "out-" + "-".join(f"{k}{v}" for k, v in sorted(flags.items()) if k != "out_dir")[:80])
    cmd = [sys.executable, "train.py", *([config] if config else []), *(f"--{k}={v}" for k, v in flags.items())]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"nanoGPT's train.py failed ({' '.join(cmd)}):\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return Run(proc.stdout, [float(m.group(3)) for m in _ITER.finditer(proc.stdout)],
               [(int(m.group(1)), float(m.group(3))) for m in _VAL.finditer(proc.stdout)],
               work / out_dir / "ckpt.pt")


def load_checkpoint(path: Path):
    """nanoGPT's ckpt.pt -> (our GPT with its weights, its iter_num). Its pickle holds only tensors and plain
    values (weights, optimizer state, model_args, config), so weights_only=True reads it without running code."""
    from nanogpt.model import GPT, GPTConfig

    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    args = ckpt["model_args"]
    model = GPT(GPTConfig(**{k: args[k] for k in ("n_layer", "n_head", "n_embd", "block_size", "bias", "vocab_size",
                                                   "dropout")}))
    sd = {k.removeprefix("_orig_mod."): v for k, v in ckpt["model"].items()}
    model.load_state_dict(sd, strict=True)
    return model.eval(), ckpt["iter_num"]


@torch.no_grad()
def fixed_val_loss(model, val_ids, id_offset: int = 0, block_size: int = 64, iters: int = 200, batch: int = 32) -> float:
    """The one evaluator for every model: mean cross-entropy over the same iters x batch windows of
    `block_size` characters of the validation split (generator seeded 10_001). Both tokenizers are
    characters in sorted order, ours with <unk> at id 0: nanoGPT's id = ours - 1 (`id_offset=-1`)."""
    from nanogpt.batches import get_batch

    model.eval()
    gen = torch.Generator().manual_seed(10_001)
    total = 0.0
    for _ in range(iters):
        x, y = get_batch(val_ids, block_size, batch, gen)
        if id_offset:
            assert int(x.min()) + id_offset >= 0, "a character outside nanoGPT's vocabulary"
        _, loss = model(x + id_offset, y + id_offset)
        total += loss.item()
    return total / iters


def wait_policy_note() -> str:
    """OMP_WAIT_POLICY as the run had it (inherited by nanoGPT's train.py and by Ray's workers alike). On a
    machine shared with other busy processes, OpenMP's default spinning wait made 2-thread steps several times
    slower than 1-thread ones (2026-11-25, load 8 on 2 cores: 545 vs 3,930 tokens/s); PASSIVE avoids that."""
    policy = os.environ.get("OMP_WAIT_POLICY")
    return (f"OMP_WAIT_POLICY={policy} for every process of the run (ours and nanoGPT's alike)" if policy
            else "OpenMP's default wait policy")
