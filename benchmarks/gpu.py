"""The `gpu` preset against nanoGPT's baby GPT (train.py with config/train_shakespeare_char.py), at equal FLOPs.

    python -m benchmarks.gpu [--time-budget 1800] [--iters 5000] [--num-samples N]

1. nanoGPT's own train.py with its baby-GPT config (6 layers, 6 heads, 384 embd, block 256, batch 64, 5000
   iterations, dropout 0.2) on one GPU, on a copy of ../shared/anchors/nanoGPT; its training FLOPs by nanoGPT's
   formula (5000 x 64 x 256 tokens x FLOPs per token). `--iters` shortens it (max_iters = lr_decay_iters), for
   a GPU lent for minutes.
2. `python -m tune.search --preset gpu --trial-budget F --final-budget F` with F those FLOPs: four trials
   per GPU (0.25 each), the winner trained once more for F into final/.
3. Both scored by one evaluator: the same 200 x 32 windows of 256 characters of the validation split.
On a machine without CUDA it says so in one line and exits non-zero, leaving RESULTS.md as it was (a GPU's figures are
not overwritten by a run that measured nothing).
"""

from __future__ import annotations

import argparse
import json
import shlex
import time

import torch

from benchmarks import anchor
from benchmarks.common import md_table, our_search, require_cuda, shakespeare_file, stamp, write_section

SECTION = "GPU: the gpu preset against nanoGPT's baby GPT (benchmarks/gpu.py)"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--time-budget", type=float, default=1800, help="the search's --time-budget, seconds")
    p.add_argument("--iters", type=int, default=5000, help="nanoGPT's max_iters and lr_decay_iters (its config: 5000)")
    p.add_argument("--num-samples", type=int, default=None, help="the search's trials (default: the preset's)")
    args = p.parse_args()
    require_cuda("benchmarks.gpu")

    from nanogpt.checkpoint import load_model
    from nanogpt.batches import tokenize
    from nanogpt.dataset import load_dataset
    from nanogpt.tokenizer import CharTokenizer
    from tune import report

    src = shakespeare_file()
    ds = load_dataset(data_file=src)
    val = tokenize(ds, CharTokenizer.from_text(ds.text)).val
    gpu = torch.cuda.get_device_name(0)

    work = anchor.workdir()
    t0 = time.time()
    run = anchor.train(work, threads=4, device="cuda", out_dir="out-baby", max_iters=args.iters,
                       lr_decay_iters=args.iters)  # the config's own settings otherwise
    baby_wall = time.time() - t0
    baby, iters = anchor.load_checkpoint(run.checkpoint)
    flops = iters * 64 * 256 * baby.flops_per_token()
    baby_val = anchor.fixed_val_loss(baby, val, id_offset=-1, block_size=256)
    budget = f"{flops:.4g}flops"

    cmd = ["python", "-m", "tune.search", "--preset", "gpu", "--data-file", str(src), "--trial-budget", budget,
           "--final-budget", budget, "--time-budget", f"{args.time_budget:g}"]
    if args.num_samples:
        cmd += ["--num-samples", str(args.num_samples)]
    with our_search([*cmd[3:], "--seed", "0"], "gpu") as run:
        search_wall, exp = run.wall_s, run.exp
        trials = report.load(exp)
        final, _, meta = load_model(exp / "final")
        final_val = anchor.fixed_val_loss(final, val, block_size=256)
        last = meta["history"][-1]
        top = report.top_table(trials, 5)
        settings = json.loads((exp / "search.json").read_text())

    rows = [["nanoGPT's baby GPT, nanoGPT's train.py", iters, f"{flops:.3g}", f"{baby_wall:.0f} s",
             f"{baby.get_num_params():,}", f"**{baby_val:.4f}**"],
            ["the gpu preset's final model", last["step"], f"{last['spend']:.3g}", f"{last['elapsed_s']:.0f} s",
             f"{final.get_num_params():,}", f"**{final_val:.4f}**"]]
    body = f"""{stamp()} GPU: {gpu}.

{md_table(["model", "steps", "training FLOPs", "wall", "params", "val loss (one evaluator, 256-char windows)"], rows)}

The command ({search_wall / 60:.1f} minutes, {len(trials)} trials at {settings['gpus_per_trial']:g} GPU each):

    {shlex.join(cmd)}

```
{top}
```
"""
    print(body)
    write_section(SECTION, body)


if __name__ == "__main__":
    main()
