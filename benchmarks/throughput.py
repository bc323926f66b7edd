"""Our training step against nanoGPT's own train.py step, measured alternately in one run, as a ratio.

    python -m benchmarks.throughput [--steps 100] [--rounds 3] [--threads 2]

Two sizes: nanoGPT's CPU recipe (4 layers, 4 heads, 128 embd, block 64, batch 12) and a laptop-preset model
(2 layers, 4 heads x 16 = 64 embd, block 64, batch 32), where per-step overhead weighs most. Each round runs
our Trainer, then nanoGPT's train.py (a subprocess on a copy of ../shared/anchors/nanoGPT), the same number
of steps after the same warmup, on the same threads and tiny Shakespeare. Absolute tokens/s move between
machines and with their load; the ratio, from the same run, is the figure. Also measured, not adopted unless it
pays: our step under bf16 autocast (CPUs with avx512_bf16 or AMX).
Goal: ratio >= 1.0 at both sizes (our step no slower than nanoGPT's).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from benchmarks import anchor
from benchmarks.common import md_table, shakespeare_file, stamp, write_section

WARMUP = 10
SIZES = {  # name -> (model, batch)
    "nanoGPT's CPU recipe": (dict(n_layer=4, n_head=4, n_embd=128, block_size=64), 12),
    "laptop preset (2L, 64 embd)": (dict(n_layer=2, n_head=4, n_embd=64, block_size=64), 32),
}


def ours(model: dict, batch: int, steps: int, data, tok, bf16: bool = False) -> float:
    """Our Trainer's training tokens/s over `steps` steps after WARMUP (evaluations not counted)."""
    from nanogpt.model import GPTConfig
    from nanogpt.train import Trainer, TrainConfig

    trainer = Trainer(GPTConfig(vocab_size=tok.vocab_size, dropout=0.0, bias=False, **model),
                      TrainConfig(max_steps=WARMUP + steps, batch_size=batch, learning_rate=1e-3, lr_decay_steps=2000,
                                  warmup_steps=100, eval_interval=WARMUP, eval_iters=1, seed=1337), data, tok)
    if bf16:
        trainer.autocast = lambda: torch.autocast("cpu", dtype=torch.bfloat16)
    marks = {}
    trainer.run(lambda m, t: marks.setdefault(t.step, (t.tokens_seen, t.train_time)))
    (tok0, t0), (tok1, t1) = marks[WARMUP], marks[WARMUP + steps]
    return (tok1 - tok0) / (t1 - t0)


def nanogpt(work, model: dict, batch: int, steps: int, threads: int) -> float:
    """nanoGPT's train.py: its printed per-iteration times for the same steps after WARMUP."""
    run = anchor.train(work, threads, device="cpu", compile=False, eval_iters=1, eval_interval=10**6,
                       log_interval=1, always_save_checkpoint=False, batch_size=batch, max_iters=WARMUP + steps,
                       lr_decay_iters=2000, dropout=0.0, out_dir="out-throughput", **model)
    measured = run.step_ms[WARMUP + 1:WARMUP + 1 + steps]  # iter 0's time includes its evaluation
    return batch * model["block_size"] * len(measured) / (sum(measured) / 1000)


def bf16_capable() -> bool:
    try:
        flags = next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()

    from nanogpt.data import load_dataset, tokenize
    from nanogpt.tokenizer import CharTokenizer

    torch.set_num_threads(args.threads)
    ds = load_dataset(data_file=shakespeare_file())
    tok = CharTokenizer.from_text(ds.text)
    data = tokenize(ds, tok)
    work = anchor.workdir()
    load_before = os.getloadavg()
    bf16 = bf16_capable()
    rows, summary = [], []
    t_start = time.time()
    for name, (model, batch) in SIZES.items():
        a, b, c = [], [], []
        for r in range(args.rounds):  # alternate, so a change in the machine's load hits both
            a.append(ours(model, batch, args.steps, data, tok))
            b.append(nanogpt(work, model, batch, args.steps, args.threads))
            if bf16:
                c.append(ours(model, batch, args.steps, data, tok, bf16=True))
            print(f"{name} round {r + 1}: ours {a[-1] / 1e3:.1f}k, nanoGPT {b[-1] / 1e3:.1f}k tok/s"
                  + (f", ours bf16 {c[-1] / 1e3:.1f}k" if bf16 else ""), flush=True)
        ratio = statistics.median(x / y for x, y in zip(a, b))
        summary.append((name, ratio))
        rows.append([name, f"{statistics.median(a) / 1e3:.1f}k", f"{statistics.median(b) / 1e3:.1f}k",
                     f"**{ratio:.2f}x**", " ".join(f"{x / y:.2f}" for x, y in zip(a, b)),
                     f"{statistics.median(x / y for x, y in zip(c, a)):.2f}x" if bf16 else "no bf16 on this CPU"])
    load_after = os.getloadavg()
    met = all(r >= 1.0 for _, r in summary)
    body = f"""{stamp()} Load average {load_before[0]:.1f} before, {load_after[0]:.1f} after (the machine is shared);
{anchor.wait_policy_note()}.

`python -m benchmarks.throughput --steps {args.steps} --rounds {args.rounds} --threads {args.threads}`: tokens/s of
training steps (after {WARMUP} warmup steps; evaluations not counted), fp32, {args.threads} threads, tiny Shakespeare,
dropout 0, no bias. Each round runs our Trainer, then nanoGPT's own train.py (`anchors/nanoGPT`, a subprocess on a
copy, its printed per-iteration times), so both see the same machine state; {time.time() - t_start:.0f} s in all.

{md_table(["model", "ours (median)", "nanoGPT's train.py (median)", "ours / nanoGPT", "per round", "ours bf16 autocast / fp32"], rows)}

Goal: our step no slower than nanoGPT's at both sizes (ratio >= 1.0): **{'met' if met else 'missed'}**.
bf16 autocast is measured beside, not used: the trainer stays fp32 on CPU unless it pays for the models the
searches train (see the last column).
"""
    print(body)
    write_section("Throughput (benchmarks/throughput.py)", body)


if __name__ == "__main__":
    main()
