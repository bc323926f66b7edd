"""Our training step against nanoGPT's own train.py step, eager and compiled, and Muon's step against AdamW's,
measured alternately in one run, as ratios.

    python -m benchmarks.throughput [--steps 100] [--rounds 2] [--threads 1] [--search] [--device cuda]
    python -m benchmarks.throughput --search-only [--search-rounds 3] [--ours FLAGS ...]

Three sizes: the laptop sizes (2 layers x 32 embd at batch 16, 3 x 64 at batch 32) and nanoGPT's CPU recipe (4 x 128,
batch 12), all block 64. Each round runs, per size: our Trainer eager (AdamW), our Trainer compiled (--compile on),
our Trainer with Muon, then nanoGPT's train.py (a subprocess on a copy of ../shared/anchors/nanoGPT) with
--compile=False and --compile=True, the same number of steps after the same warmup, on the same threads and tiny
Shakespeare. Compile times are reported apart: ours as the trainer measures it (compile_s, first compile of the
run; later rounds reuse it), nanoGPT's as its first iteration's time. Absolute tokens/s move between machines and
with their load; the ratios, from the same run, are the figures. Each round also profiles our eager step for its
kernel floor: the time in the matmul and attention kernels that nanoGPT's model calls too, which bounds the ratio
any step on these shapes can reach.
With --device cuda (a GPU lent for minutes): nanoGPT's baby GPT (6 layers x 384, block 256, batch 64) instead,
both sides in bf16 autocast as each does on CUDA, no kernel floor; goal: ours at least 1.0x nanoGPT's compiled step.
Its own section of RESULTS.md, so the CPU figures stay.
With --search: the default search (`python -m tune.search`) against nanoGPT's CPU recipe (2000 iterations, 2
threads), wall time, in the same run.
Goals: ours / nanoGPT eager >= 1.5x at the laptop sizes and >= 1.3x at the recipe; Muon / AdamW >= 1/1.15 at 2 x 32
and 4 x 128; the default search <= 0.7x the recipe's wall time.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import time

import torch

from benchmarks import anchor
from benchmarks.common import md_table, our_search, require_cuda, shakespeare_file, stamp, write_section

WARMUP = 10
SIZES = {  # name -> (model, batch, goal of ours / nanoGPT eager)
    "2L x 32, batch 16": (dict(n_layer=2, n_head=2, n_embd=32, block_size=64), 16, 1.5),
    "3L x 64, batch 32": (dict(n_layer=3, n_head=4, n_embd=64, block_size=64), 32, 1.5),
    "4L x 128, batch 12 (nanoGPT's CPU recipe)": (dict(n_layer=4, n_head=4, n_embd=128, block_size=64), 12, 1.3),
}
# on a GPU (--device cuda): nanoGPT's baby GPT; goal: ours / nanoGPT compiled
GPU_SIZES = {"6L x 384, block 256, batch 64 (nanoGPT's baby GPT)":
             (dict(n_layer=6, n_head=6, n_embd=384, block_size=256), 64, 1.0)}
MUON_GOAL = 1 / 1.15
SEARCH_GOAL = 0.7


def trainer_for(model: dict, batch: int, steps: int, data, tok, **cfg):
    """Our Trainer for WARMUP + `steps` steps of `model` at `batch` (dropout 0, no bias, evaluations every WARMUP);
    `cfg`: the rest of its TrainConfig (compile, optimizer, device)."""
    from nanogpt.model import GPTConfig
    from nanogpt.train import Trainer, TrainConfig

    return Trainer(GPTConfig(vocab_size=tok.vocab_size, dropout=0.0, bias=False, **model),
                   TrainConfig(max_steps=WARMUP + steps, batch_size=batch, learning_rate=1e-3, lr_decay_steps=2000,
                               warmup_steps=100, eval_interval=WARMUP, eval_iters=1, seed=1337, **cfg), data, tok)


def ours(model: dict, batch: int, steps: int, data, tok, compile: str = "off", optimizer: str = "adamw",
         device: str = "cpu"):
    """Our Trainer's training tokens/s over `steps` steps after WARMUP (evaluations and compiling not counted),
    and its compile seconds."""
    trainer = trainer_for(model, batch, steps, data, tok, compile=compile, optimizer=optimizer, device=device)
    marks = {}
    trainer.run(lambda m, t: marks.setdefault(t.step, (t.tokens_seen, t.train_time)))
    (tok0, t0), (tok1, t1) = marks[WARMUP], marks[WARMUP + steps]
    return (tok1 - tok0) / (t1 - t0), trainer.compiler.compile_s


def nanogpt(work, model: dict, batch: int, steps: int, threads: int, compile: bool,
            device: str = "cpu") -> tuple[float, float]:
    """nanoGPT's train.py: tokens/s from its printed per-iteration times for the same steps after WARMUP, and
    its first iteration's time (its compile, when compiling)."""
    run = anchor.train(work, threads, device=device, compile=compile, eval_iters=1, eval_interval=10**6,
                       log_interval=1, always_save_checkpoint=False, batch_size=batch, max_iters=WARMUP + steps,
                       lr_decay_iters=2000, dropout=0.0, out_dir="out-throughput", **model)
    measured = run.step_ms[WARMUP + 1:WARMUP + 1 + steps]  # iter 0's time includes its evaluation
    return batch * model["block_size"] * len(measured) / (sum(measured) / 1000), run.step_ms[0] / 1000


# the kernels nanoGPT's model and ours both call, eager and compiled alike (Inductor calls them as extern kernels):
# matmuls and attention, forward and backward
KERNELS = ("aten::mm", "aten::bmm", "aten::addmm", "aten::_scaled_dot_product_flash_attention_for_cpu",
           "aten::_scaled_dot_product_flash_attention_for_cpu_backward")


def kernel_floor(model: dict, batch: int, data, tok, steps: int = 20) -> float:
    """Seconds a training step spends in matmul and attention kernels alone (torch.profiler's self CPU time of
    KERNELS, our eager step, after WARMUP steps): no step that calls these kernels on these shapes can be faster,
    however little else it does."""
    from torch.profiler import ProfilerActivity, profile

    trainer = trainer_for(model, batch, steps, data, tok)
    step = lambda: trainer.train_step(trainer.model, trainer.optimizers, 1e-3, trainer.batch_gen)  # noqa: E731
    for _ in range(WARMUP):
        step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    return sum(e.self_cpu_time_total for e in prof.key_averages() if e.key in KERNELS) / 1e6 / steps


def measure_size(name: str, model: dict, batch: int, work, data, tok, args) -> dict:
    dev = args.device
    m = {k: [] for k in ("eager", "compiled", "muon", "ng", "ng_compiled", "floor_s")}
    compile_s = ng_compile_s = None
    for r in range(args.rounds):  # alternate, so a change in the machine's load hits all of them
        m["eager"].append(ours(model, batch, args.steps, data, tok, device=dev)[0])
        tps, cs = ours(model, batch, args.steps, data, tok, compile="on", device=dev)
        m["compiled"].append(tps)
        compile_s = cs if compile_s is None else compile_s
        m["muon"].append(ours(model, batch, args.steps, data, tok, optimizer="muon", device=dev)[0])
        m["ng"].append(nanogpt(work, model, batch, args.steps, args.threads, compile=False, device=dev)[0])
        tps, cs = nanogpt(work, model, batch, args.steps, args.threads, compile=True, device=dev)
        m["ng_compiled"].append(tps)
        ng_compile_s = cs if ng_compile_s is None else ng_compile_s
        if dev == "cpu":  # profiled CPU time: on a GPU the kernels run elsewhere
            m["floor_s"].append(kernel_floor(model, batch, data, tok))
        print(f"{name} round {r + 1}: " + ", ".join(f"{k} {v[-1] / 1e3:.1f}k" for k, v in m.items() if k != "floor_s")
              + " tok/s" + (f"; kernel floor {m['floor_s'][-1] * 1e3:.1f} ms a step" if m["floor_s"] else ""),
              flush=True)
    return {**m, "compile_s": compile_s, "ng_compile_s": ng_compile_s}


def ratio(a: list[float], b: list[float]) -> float:
    return statistics.median(x / y for x, y in zip(a, b))


def default_search_vs_recipe(work, rounds: int = 1) -> tuple[list[tuple[float, float]], str]:
    """Wall seconds of `python -m tune.search` (the default search as `make search` runs it, report included, 2
    cores) and of nanoGPT's CPU recipe (2000 iterations, 2 threads), one after the other, `rounds` times: the
    (search, recipe) pairs, and the first search's probe lines."""
    pairs, first = [], None
    for _ in range(rounds):
        search_s, probes = default_search()
        first = probes if first is None else first
        t0 = time.time()
        anchor.train(work, 2, **anchor.CPU_RECIPE)
        pairs.append((search_s, time.time() - t0))
    return pairs, first


def default_search(flags: tuple[str, ...] = ()) -> tuple[float, str]:
    """Wall seconds of the default search with FLAGS added, and its probes' lines."""
    with our_search(list(flags), "bench", echo=False) as run:
        search_s = run.wall_s
    return search_s, run.stdout.partition("what the best model learned (greedy):")[2].strip()


def search_only(variants: list[str] | None = None, rounds: int = 1) -> None:
    """The default search against nanoGPT's recipe, `rounds` pairs one after the other (the figure: the median of
    the pairs' ratios); with variants (flags added to the default search, e.g. "--pos-emb rope"), each of them too,
    one after the other, against the recipe's median time."""
    load_before = os.getloadavg()
    work = anchor.workdir()
    pairs, probes = default_search_vs_recipe(work, rounds)
    ratios = [s / r for s, r in pairs]
    ratio, recipe_s = statistics.median(ratios), statistics.median(r for _, r in pairs)
    runs = [(flags, *default_search(tuple(shlex.split(flags)))) for flags in variants or []]
    load_after = os.getloadavg()
    flags_text = (f" --search-rounds {rounds}" if rounds > 1 else "") + "".join(
        f" --ours {shlex.quote(v)}" for v in variants or [])
    if rounds == 1:
        timed = f"took {pairs[0][0]:.0f} s; nanoGPT's CPU recipe (2000 iterations of its train.py, 2 threads) {recipe_s:.0f} s, one after the other"
    else:
        timed = (f"and nanoGPT's CPU recipe (2000 iterations of its train.py, 2 threads), one after the other, "
                 f"{rounds} times: " + ", ".join(f"{s:.0f} s against {r:.0f} s ({s / r:.2f}x)" for s, r in pairs)
                 + "; the median of the ratios")
    body = (f"{stamp()} Load average {load_before[0]:.1f} before, {load_after[0]:.1f} after.\n\n"
            f"`python -m benchmarks.throughput --search-only{flags_text}`: "
            f"the default search (`python -m tune.search` as `make search` "
            f"runs it: Ray's start, the trials, the report and its probes; 2 cores) {timed}: **{ratio:.2f}x** (goal <= {SEARCH_GOAL}x: "
            f"{'met' if ratio <= SEARCH_GOAL else 'missed'}). The search's probes (the goal: counting "
            f"90% seen and 70% held out, A/B/C 90%):\n\n" + "\n".join(f"    {line}" for line in probes.splitlines()) + "\n")
    for flags, s, pr in runs:
        body += (f"\nWith `{flags}` (right after): {s:.0f} s, **{s / recipe_s:.2f}x** the recipe's (goal <= {SEARCH_GOAL}x: "
                 f"{'met' if s / recipe_s <= SEARCH_GOAL else 'missed'}); its probes:\n\n"
                 + "\n".join(f"    {line}" for line in pr.splitlines()) + "\n")
    print(body)
    title = "Default search against nanoGPT's recipe (benchmarks/throughput.py --search-only)"
    if variants:
        title += ", with " + " / ".join(f"`{v}`" for v in variants)
    write_section(title, body)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--sizes", default=None,
                   help="which sizes, by index (0: 2L x 32, 1: 3L x 64, 2: the recipe; with --device cuda 0: the "
                        "baby GPT); default: all")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                   help="cuda: nanoGPT's baby GPT on the GPU against nanoGPT compiled (its own section)")
    p.add_argument("--search", action="store_true", help="also the default search against nanoGPT's recipe")
    p.add_argument("--search-only", action="store_true",
                   help="only the default search against nanoGPT's recipe (its own section of RESULTS.md)")
    p.add_argument("--ours", action="append", default=None, metavar="FLAGS",
                   help="with --search-only: the default search with these flags added, too (repeatable; e.g. "
                        "\"--pos-emb rope\"), in a section of its own")
    p.add_argument("--search-rounds", type=int, default=1, metavar="N",
                   help="with --search-only: N pairs of the default search and the recipe, one after the other (the "
                        "figure: the median of the pairs' ratios; a search's wall time moves 20-30%% with ASHA's order)")
    args = p.parse_args()
    if args.search_rounds < 1:
        sys.exit("benchmarks.throughput: --search-rounds must be at least 1")
    if args.search_only:
        return search_only(args.ours, args.search_rounds)
    gpu = args.device == "cuda"
    if gpu and args.search:
        sys.exit("benchmarks.throughput: --search is the CPU search against nanoGPT's CPU recipe; leave out --device")
    if gpu:
        require_cuda("benchmarks.throughput --device cuda")
    table = GPU_SIZES if gpu else SIZES

    from nanogpt.batches import tokenize
    from nanogpt.dataset import load_dataset
    from nanogpt.tokenizer import CharTokenizer

    torch.set_num_threads(args.threads)
    ds = load_dataset(data_file=shakespeare_file())
    tok = CharTokenizer.from_text(ds.text)
    data = tokenize(ds, tok)
    work = anchor.workdir()
    load_before = os.getloadavg()
    t_start = time.time()
    names = [list(table)[int(i)] for i in args.sizes.split(",")] if args.sizes else list(table)
    rows, verdicts = [], []
    for name in names:
        model, batch, goal = table[name]
        m = measure_size(name, model, batch, work, data, tok, args)
        best = [max(e, c) for e, c in zip(m["eager"], m["compiled"])]
        vs_ng, vs_ngc, muon = ratio(best, m["ng"]), ratio(best, m["ng_compiled"]), ratio(m["muon"], m["eager"])
        # the most any step calling these kernels could reach against nanoGPT's: nanoGPT's step over the floor (a
        # floor: load only adds to it, so the least of the rounds)
        ceiling = batch * model["block_size"] / statistics.median(m["ng"]) / min(m["floor_s"]) if m["floor_s"] else None
        rows.append([name, f"{statistics.median(m['eager']) / 1e3:.1f}k",
                     f"{statistics.median(m['compiled']) / 1e3:.1f}k ({m['compile_s']:.0f} s)",
                     f"{statistics.median(m['muon']) / 1e3:.1f}k", f"{statistics.median(m['ng']) / 1e3:.1f}k",
                     f"{statistics.median(m['ng_compiled']) / 1e3:.1f}k ({m['ng_compile_s']:.0f} s)",
                     f"{ratio(m['eager'], m['ng']):.2f}x", f"**{vs_ng:.2f}x**", f"{vs_ngc:.2f}x", f"**{muon:.2f}x**",
                     f"{min(m['floor_s']) * 1e3:.1f} ms, {ceiling:.2f}x" if ceiling else "not measured (GPU)"])
        if gpu:
            verdict = f"ours / nanoGPT compiled {vs_ngc:.2f}x (goal {goal}x: {'met' if vs_ngc >= goal else 'missed'})"
        else:
            verdict = (f"ours / nanoGPT {vs_ng:.2f}x (goal {goal}x: {'met' if vs_ng >= goal else 'missed'}; "
                       f"the kernel floor allows at most {ceiling:.2f}x)")
        verdicts.append(f"{name}: {verdict}"
                        + ("" if name.startswith("3L") else
                           f"; Muon / AdamW {muon:.2f}x (goal {MUON_GOAL:.2f}x: {'met' if muon >= MUON_GOAL else 'missed'})"))
    search_text = ""
    if args.search:
        ((search_s, recipe_s),), _ = default_search_vs_recipe(work)
        search_text = (f"\nThe default search (`python -m tune.search`, 2 cores) took {search_s:.0f} s; nanoGPT's CPU recipe "
                       f"(2000 iterations, 2 threads) {recipe_s:.0f} s: **{search_s / recipe_s:.2f}x** (goal <= "
                       f"{SEARCH_GOAL}x: {'met' if search_s / recipe_s <= SEARCH_GOAL else 'missed'}).\n")
    load_after = os.getloadavg()
    where = (f"GPU: {torch.cuda.get_device_name(0)}, bf16 autocast on both sides" if gpu else
             f"fp32, {args.threads} thread(s)")
    floor_text = ("" if gpu else f""" The kernel floor: the seconds a step of ours spends in matmul and attention
kernels alone (torch.profiler, self time of {", ".join(k.removeprefix("aten::") for k in KERNELS[:3])} and SDPA's
flash kernels, forward and backward; the least over the rounds), the kernels nanoGPT's model calls too, eager or
compiled; "the most it allows" is nanoGPT's step time (median) over that floor, the ratio a step would reach if
everything else in it took no time.""")
    body = f"""{stamp()} Load average {load_before[0]:.1f} before, {load_after[0]:.1f} after (the machine is shared);
{anchor.wait_policy_note()}.

`python -m benchmarks.throughput --steps {args.steps} --rounds {args.rounds} --threads {args.threads}{" --device cuda" if gpu else ""}`: tokens/s of
training steps (after {WARMUP} warmup steps; evaluations and compiling not counted), {where},
tiny Shakespeare, dropout 0, no bias; medians over rounds, ratios per round then median. "ours" in the ratios is the
faster of our eager and compiled step in each round. Compile seconds in brackets: ours the first compile of the run
(Inductor's cache under NANOGPT_TUNE_CACHE may be warm from an earlier run), nanoGPT's its first iteration's time;
{time.time() - t_start:.0f} s in all.{floor_text}

{md_table(["model", "ours eager", "ours compiled (compile)", "ours Muon eager", "nanoGPT", "nanoGPT compiled (compile)",
           "ours eager / nanoGPT", "ours / nanoGPT", "ours / nanoGPT compiled", "Muon / AdamW",
           "kernel floor, the most it allows"], rows)}

{chr(10).join("- " + v for v in verdicts)}
{search_text}"""
    print(body)
    write_section("Throughput on a GPU (benchmarks/throughput.py --device cuda)" if gpu else
                  "Throughput (benchmarks/throughput.py)", body)


if __name__ == "__main__":
    main()
