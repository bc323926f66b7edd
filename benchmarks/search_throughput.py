"""Total training tokens/s of a 2-slot CPU search against one 2-thread training run of the same config.

    python -m benchmarks.search_throughput [--trials 4] [--steps 600] [--device cuda]

Every trial trains nanoGPT's CPU recipe (4 layers, 4 heads, 128 embd, block 64, batch 12), so the
only difference is how the two cores are used: two 1-CPU trials side by side under Ray Tune, or
one process with 2 threads. Goal: the search >= 1.4x.
With --device cuda (a GPU lent for minutes): the gpu preset's packing instead. Every trial trains nanoGPT's baby
GPT (6 layers x 384, block 256, batch 64), `--trials` of them at once on one GPU (1/trials of it each, as the
preset's 0.25), against one run of the same model alone on that GPU. Goal (issue 16): the search >= 2x. Its own
section of RESULTS.md, so the CPU figures stay.
"""

from __future__ import annotations

import argparse
import time

import torch

from benchmarks.common import (NANOGPT_CPU, matmul_peak_gflops, md_table, our_search, require_cuda, shakespeare_file,
                               stamp, write_section)
from tune.experiment import read_trials
from tune.space import PRESETS

GOAL = 1.4
GPU_GOAL = 2.0
# every trial's shape, and the single run's: nanoGPT's CPU recipe on the CPU, its baby GPT (384 embd) on a GPU
SHAPES = {"cpu": dict(n_layer=NANOGPT_CPU["n_layer"], n_head=NANOGPT_CPU["n_head"],
                      head_dim=NANOGPT_CPU["n_embd"] // NANOGPT_CPU["n_head"], block_size=NANOGPT_CPU["block_size"],
                      batch_size=NANOGPT_CPU["batch_size"]),
          "cuda": dict(n_layer=6, n_head=6, head_dim=64, block_size=256, batch_size=64)}
PRESETS_BY_DEVICE = {"cpu": "shakespeare-cpu", "cuda": "gpu"}
EVAL_INTERVAL = 100  # steps, in the single run and in the search's trials


def single_run(steps: int, device: str = "cpu") -> tuple[float, int]:
    from nanogpt.batches import tokenize
    from nanogpt.dataset import load_dataset
    from nanogpt.model import GPTConfig
    from nanogpt.tokenizer import CharTokenizer
    from nanogpt.train import Trainer, TrainConfig

    p, b = PRESETS[PRESETS_BY_DEVICE[device]], SHAPES[device]
    torch.set_num_threads(2 if device == "cpu" else p.cpus_per_trial)
    ds = load_dataset(data_file=shakespeare_file())
    tok = CharTokenizer.from_text(ds.text)
    # evaluated exactly as the search's trials are (the preset's interval, batches and train_loss source),
    # bias-free like them; only the checkpoints are left out
    trainer = Trainer(GPTConfig(block_size=b["block_size"], vocab_size=tok.vocab_size, n_layer=b["n_layer"],
                                n_head=b["n_head"], n_embd=b["n_head"] * b["head_dim"], bias=False),
                      TrainConfig(max_steps=steps, batch_size=b["batch_size"], learning_rate=1e-3,
                                  eval_interval=EVAL_INTERVAL, eval_iters=p.eval_iters,
                                  eval_batch_size=p.eval_batch_size, train_loss_from=p.train_loss_from,
                                  device=device),
                      tokenize(ds, tok), tok)
    t0 = time.perf_counter()
    trainer.run()
    return trainer.tokens_seen / (time.perf_counter() - t0), trainer.model.flops_per_token()


def trials(device: str, num: int, steps: int, extra: list[str]) -> list[dict]:
    """A search of `num` trials of SHAPES[device] (the device's preset, fixed lr 1e-3, dropout 0, FIFO), each for
    `steps` steps: each trial's last result."""
    shape = [f for k, v in SHAPES[device].items() for f in (f"--{k.replace('_', '-')}", str(v))]
    with our_search(["--preset", PRESETS_BY_DEVICE[device], "--data-file", str(shakespeare_file()), *shape,
                     "--lr", "1e-3", "--dropout", "0", "--scheduler", "fifo", "--num-samples", str(num),
                     "--max-steps", str(steps), "--eval-interval", str(EVAL_INTERVAL), "--no-report", *extra],
                    f"tp-{device}", echo=False) as run:
        return [t.last_result for t in read_trials(run.exp) if t.results]


def search_tokens_per_s(rows: list[dict]) -> float:
    """All trials' training tokens over the span from the first trial's start to the last report."""
    begin = min(r["started_at"] for r in rows)
    end = max(r["started_at"] + r["time_total_s"] for r in rows)
    return sum(r["tokens_seen"] for r in rows) / (end - begin)


def gpu_packing(args) -> None:
    """--device cuda: `args.trials` baby GPTs at once on one GPU under Ray Tune against one alone."""
    require_cuda("benchmarks.search_throughput --device cuda")
    one, _ = single_run(args.steps, "cuda")
    share = 1 / args.trials
    rows = trials("cuda", args.trials, args.steps,
                  ["--device", "cuda", "--gpus-per-trial", f"{share:g}", "--max-concurrent", str(args.trials),
                   "--optimizer", "adamw",
                   "--schedule", "cosine"])  # as the single run: no cooldown branches, the same steps
    search = search_tokens_per_s(rows)
    ratio = search / one
    body = f"""{stamp()} GPU: {torch.cuda.get_device_name(0)}.

`python -m benchmarks.search_throughput --device cuda --trials {args.trials} --steps {args.steps}`: every trial is
nanoGPT's baby GPT (6 x 384, block 256, batch 64, AdamW, cosine, {args.steps} steps, evaluations every
{EVAL_INTERVAL}),
{args.trials} at once on one GPU ({share:g} of it each), against one run of the same model alone on it. The search's
figure counts all its trials' tokens from the first trial's start to the last report (start-up, evaluations and
checkpoints inside it); the single run's, its whole run with evaluations.

{md_table(["setup", "training tokens/s"], [["one run alone on the GPU", f"{one / 1e3:.1f}k"],
    [f"search, {len(rows)} trials at {share:g} GPU each", f"{search / 1e3:.1f}k"]])}

Search / single run: **{ratio:.2f}x**. Goal: >= {GPU_GOAL}x: **{'met' if ratio >= GPU_GOAL else 'missed'}**.
"""
    print(body)
    write_section("Search throughput on a GPU (benchmarks/search_throughput.py --device cuda)", body)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=4)
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                   help="cuda: trials packed on one GPU against one trial alone (its own section)")
    args = p.parse_args()
    if args.device == "cuda":
        return gpu_packing(args)
    one, fpt = single_run(args.steps)
    rows = trials("cpu", args.trials, args.steps, [])
    search = search_tokens_per_s(rows)
    peak2 = matmul_peak_gflops(2)
    ratio = search / one
    per_trial = sum(r["tokens_per_s"] for r in rows) / len(rows)
    train_share = sum(r["elapsed_s"] for r in rows) / sum(r["time_total_s"] for r in rows)
    step_time = sum(r["tokens_seen"] / r["tokens_per_s"] for r in rows)  # inside training steps
    eval_share = 1 - step_time / sum(r["elapsed_s"] for r in rows)  # rest of the loop: evaluations
    table = md_table(["setup", "training tokens/s", "CPU MFU"], [
        ["one run, 2 threads (evaluations included)", f"{one / 1e3:.1f}k", f"{100 * one * fpt / (peak2 * 1e9):.1f}%"],
        [f"search, {args.trials} trials on 2 slots of 1 CPU (first trial start to last report)", f"{search / 1e3:.1f}k",
         f"{100 * search * fpt / (peak2 * 1e9):.1f}%"],
    ])
    body = f"""{stamp()}

`python -m benchmarks.search_throughput --trials {args.trials} --steps {args.steps}`: every trial is nanoGPT's CPU recipe
({args.steps} steps, batch 12, block 64), so only the use of the two cores differs. The search's figure counts
all its trials' tokens over the span from the first trial's start to the last report, so trial start-up,
evaluations and checkpoints are inside it. MFU against the measured 2-thread fp32 matmul peak ({peak2:.0f} GFLOP/s).

{table}

Inside the search, a trial's own training steps ran at {per_trial / 1e3:.1f}k tokens/s on average (so {2 * per_trial / 1e3:.1f}k
for two side by side); evaluations (and the reports between them) took {100 * eval_share:.0f}% of its training loop, and the loop {100 * train_share:.0f}% of the
trial's time in Ray (the rest: start-up, reports, checkpoints).

Search / single run: **{ratio:.2f}x**. Goal: >= {GOAL}x: **{'met' if ratio >= GOAL else 'missed'}**.

Why: two 1-thread trials gain over one 2-thread run only what one thread per process gains over two threads in
one: here their training steps side by side make {2 * per_trial / 1e3:.1f}k tokens/s against the 2-thread run's
{one / 1e3:.1f}k (evaluations included), at most {2 * per_trial / one:.2f}x, before evaluations (a 1-thread
evaluation is no cheaper relative to its steps than a 2-thread one), trial start-up, and the CPU that Ray's own
processes (driver, raylet, GCS) take from the two cores the trials use. The 1.4x goal was set from nanoGPT's step,
which uses a second thread less well than ours (see the throughput section for this machine's figures).
"""
    print(body)
    write_section("Search throughput (benchmarks/search_throughput.py)", body)


if __name__ == "__main__":
    main()
