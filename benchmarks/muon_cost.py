"""Muon's training step against AdamW's, and our Muon against torch.optim.Muon, interleaved in one process.

    python -m benchmarks.muon_cost [--chunks 30] [--chunk-steps 5] [--threads 1]

For each size (2 layers x 32 embd at batch 16, nanoGPT's CPU recipe 4 x 128 at batch 12; block 64, tiny
Shakespeare, dropout 0), three Trainers (what `python -m nanogpt.train --optimizer adamw|muon` runs) take turns,
`--chunk-steps` training steps each, `--chunks` times: AdamW, our Muon (nanogpt.muon) and torch.optim.Muon in its
place. Turns this short see the same machine load, which on a shared machine moves by several times within a
minute; the figure is the median over turns of each one's time against AdamW's in the same turn. Beside it, each
run's validation loss after the same steps (same seed and batches): our Muon must learn as torch's does.
Goal: Muon's tokens/s at least 1/1.15 of AdamW's at both sizes.
"""

from __future__ import annotations

import argparse
import os
import statistics

import torch

from benchmarks.common import md_table, shakespeare_file, stamp, write_section

SIZES = {"2L x 32, batch 16": (dict(n_layer=2, n_head=2, n_embd=32, block_size=64), 16),
         "4L x 128, batch 12 (nanoGPT's CPU recipe)": (dict(n_layer=4, n_head=4, n_embd=128, block_size=64), 12)}
GOAL = 1 / 1.15


def trainers(model: dict, batch: int, steps: int, data, tok) -> dict:
    from nanogpt.model import GPTConfig
    from nanogpt.train import Trainer, TrainConfig

    def make(optimizer: str):
        return Trainer(GPTConfig(vocab_size=tok.vocab_size, dropout=0.0, bias=False, **model),
                       TrainConfig(max_steps=steps, batch_size=batch, learning_rate=3e-3, eval_interval=steps,
                                   eval_iters=20, train_loss_from="steps", seed=1337,
                                   optimizer=optimizer), data, tok)

    runs = {"AdamW": make("adamw"), "Muon (ours)": make("muon"), "torch.optim.Muon": make("muon")}
    ours = runs["torch.optim.Muon"].optimizers[1]
    runs["torch.optim.Muon"].optimizers[1] = torch.optim.Muon(ours.param_groups[0]["params"], lr=3e-3,
                                                              weight_decay=0.1, adjust_lr_fn="match_rms_adamw")
    return runs


def interleave(runs: dict, chunks: int, chunk_steps: int) -> dict[str, list[float]]:
    """Seconds of training per turn for each run (Trainer.train_time: steps only)."""
    from nanogpt.train import Status

    times = {name: [] for name in runs}
    for k in range(1, chunks + 1):
        for name, t in runs.items():
            before = t.train_time
            t.planned_steps = k * chunk_steps  # run() trains until this step, then stops as finished
            t.status = Status.RUNNING
            t.run()
            times[name].append(t.train_time - before)
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--chunks", type=int, default=30)
    p.add_argument("--chunk-steps", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()

    from nanogpt.batches import tokenize
    from nanogpt.dataset import load_dataset
    from nanogpt.tokenizer import CharTokenizer

    torch.set_num_threads(args.threads)
    ds = load_dataset(data_file=shakespeare_file())
    tok = CharTokenizer.from_text(ds.text)
    data = tokenize(ds, tok)
    load_before = os.getloadavg()
    steps = args.chunks * args.chunk_steps
    rows, verdicts = [], []
    for name, (model, batch) in SIZES.items():
        runs = trainers(model, batch, steps, data, tok)
        times = interleave(runs, args.chunks, args.chunk_steps)
        base = times["AdamW"]
        for run, trainer in runs.items():
            t = times[run]
            rel = statistics.median(b / x for b, x in zip(base, t))  # tokens/s against AdamW's, per turn
            rows.append([name, run, f"{statistics.median(t) / args.chunk_steps * 1e3:.1f} ms",
                         f"**{rel:.2f}x**", f"{trainer.history[-1]['val_loss']:.4f}"])
            if run == "Muon (ours)":
                verdicts.append(f"{name}: Muon / AdamW {rel:.2f}x (goal >= {GOAL:.2f}x: "
                                f"{'met' if rel >= GOAL else 'missed'})")
        print("\n".join(" | ".join(map(str, r)) for r in rows[-3:]), flush=True)
    load_after = os.getloadavg()
    body = f"""{stamp()} Load average {load_before[0]:.1f} before, {load_after[0]:.1f} after (the machine is shared).

`python -m benchmarks.muon_cost --chunks {args.chunks} --chunk-steps {args.chunk_steps} --threads {args.threads}`:
three Trainers of one size take turns of {args.chunk_steps} steps, {args.chunks} turns ({steps} steps each), lr 3e-3,
same seed and batches; step time is the median over turns; tokens/s against AdamW's is the median of the per-turn
ratios; val loss after the {steps} steps (20 fixed batches).

{md_table(["model", "optimizer", "step (median)", "tokens/s vs AdamW", f"val loss at step {steps}"], rows)}

{chr(10).join("- " + v for v in verdicts)}
"""
    print(body)
    write_section("Muon's cost (benchmarks/muon_cost.py)", body)


if __name__ == "__main__":
    main()
