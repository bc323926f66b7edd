"""Selection regret (issue 26): how much worse is the model a search picks than the best it could have picked?

    python -m benchmarks.regret --results results/NAME
    python -m benchmarks.regret --run-search -- --preset shakespeare-modern \\
        --data-file ../shared/data/tinyshakespeare.txt --final-budget 8e12flops --time-budget 780 --ladder on --seed 0

The search is one run with --final-budget AMOUNT, --schedule wsd and --final-from continue (--ladder on or off);
--run-search runs it first, into results/regret-DATE (kept). The oracle knows the future: the top 5 finished trials
by their trial-budget val_loss (tune.report.load: the table the report ranks), each continued from its stable
checkpoint to the final budget as the final training continues a winner (tune.trainable.train_on_node, with the
search's learning rate for the horizon, from search.json), each into regret/<trial_id>/ of the results directory; a
rerun skips those done and continues one cut off. The trial of the search's final/ is added when the ladder picked
one outside the top 5. Every model is scored by one evaluator (benchmarks.anchor.fixed_val_loss on tiny
Shakespeare's validation split, as beat_nanogpt scores). Regret: a pick's final-budget loss less the best of the
oracle's, in nats (goal: the search's pick at most 0.01).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import anchor
from benchmarks.common import ROOT, md_table, shakespeare_file, stamp, write_section

GOAL = 0.01  # nats: the search's pick against the oracle's best (issue 26)
REGRET_DIR = "regret"
SECTION = "Selection regret (benchmarks/regret.py)"
SMOKE_FLAGS = ["--preset", "shakespeare-muon", "--trial-budget", "2e11flops", "--eval-every", "1e11flops",
               "--grace-period", "1e11flops", "--num-samples", "2", "--final-budget", "6e11flops", "--ladder", "on",
               "--schedule", "wsd", "--final-from", "continue", "--seed", "0"]


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    own, flags = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", type=Path, help="RESULTS_DIR/NAME of a finished search")
    p.add_argument("--run-search", action="store_true", help="run `tune.search FLAGS` (given after --) first, kept")
    p.add_argument("--results-dir", type=Path, default=ROOT / "results", help="where --run-search keeps its search")
    p.add_argument("--top", type=int, default=5, help="the oracle's trials: the best N at the trial budget")
    p.add_argument("--beta", type=float, default=None,
                   help="the oracle's horizon rule lr x (final / trial spend)^-BETA in place of the search's (issue 26 "
                        "item 2: which rule serves better); its runs go to regret-betaB/, its section is its own")
    p.add_argument("--smoke-test", action="store_true",
                   help="every part in a minute or two (a 2-trial search with the ladder, top 2, tiny budgets, in a "
                        "temporary directory); RESULTS.md untouched")
    args = p.parse_args(own)
    if args.smoke_test:
        with tempfile.TemporaryDirectory() as tmp:
            exp = run_search([*SMOKE_FLAGS, "--data-file", str(shakespeare_file())], Path(tmp), "smoke")
            measure(exp, top=2, write=False, beta=args.beta)
        return
    if bool(args.results) == args.run_search:
        p.error("give --results DIR or --run-search -- FLAGS...")
    if args.run_search:
        exp = run_search(flags, args.results_dir, time.strftime("regret-%Y%m%d-%H%M%S"))
    else:
        exp = args.results
    measure(exp, args.top, write=True, beta=args.beta)


def run_search(flags: list[str], results_dir: Path, name: str) -> Path:
    """`python -m tune.search FLAGS` into results_dir/name, its output shown as it comes; the experiment directory."""
    import subprocess

    if not flags:
        sys.exit("--run-search: give the search's flags after --")
    cmd = [sys.executable, "-m", "tune.search", *flags, "--results-dir", str(results_dir), "--name", name]
    print(f"running: {' '.join(cmd[1:])}", flush=True)
    if subprocess.run(cmd, cwd=ROOT).returncode != 0:
        sys.exit(f"the search failed (its output above); its results: {results_dir / name}")
    return results_dir / name


def check_search(config) -> None:
    """The oracle continues stable checkpoints to one fixed final budget: refuse a search that has neither."""
    problems = [f"--schedule {config.schedule} (need wsd)" if config.schedule != "wsd" else None,
                f"--final-from {config.final_from} (need continue)" if config.final_from != "continue" else None,
                "--final-budget auto (need an amount)" if config.final_auto else None,
                "no --final-budget" if not config.final_budget and not config.final_auto else None]
    problems = [q for q in problems if q]
    if problems:
        sys.exit(f"{config.experiment_dir}: the oracle needs a search with --final-budget AMOUNT --schedule wsd "
                 f"--final-from continue; this one has {', '.join(problems)}")


def oracle_trials(trials, top: int, pick: str | None):
    """The finished trials ranked by trial-budget val_loss (rank from 1, as the report and the final training rank
    them): the best `top`, and the search's pick when it is not among them (a pick that did not finish, which the
    scaling law can make, has no rank)."""
    import pandas as pd

    from tune.outcomes import Outcome

    finished = trials[trials["outcome"].eq(Outcome.FINISHED)].reset_index(drop=True)
    finished.insert(0, "rank", range(1, len(finished) + 1))
    chosen = finished.head(top)
    if pick is not None and pick not in set(chosen["trial_id"]):
        extra = finished[finished["trial_id"].eq(pick)]
        if extra.empty:
            extra = trials[trials["trial_id"].eq(pick)].assign(rank=None)
        chosen = pd.concat([chosen, extra], ignore_index=True)
    return chosen


def _rank(row) -> int | None:
    import pandas as pd

    return None if pd.isna(row["rank"]) else int(row["rank"])


def oracle_dir(beta: float | None) -> str:
    """Where the oracle's runs go: regret/ at the search's own horizon rule, regret-betaB/ at another."""
    return REGRET_DIR if beta is None else f"{REGRET_DIR}-beta{beta:g}"


def search_beta(config) -> float:
    """The horizon rule's beta the search's own final training used: the ladder's; without it, the trial's lr."""
    return config.horizon_lr_beta if config.ladder == "on" else 0.0


def continue_trials(exp: Path, config, rows, beta: float | None = None) -> None:
    """Each row's trial continued to the final budget into regret/<trial_id>/ (tune.trainable.train_on_node: one Ray
    task on the whole node at a time), the done ones skipped."""
    import ray

    from nanogpt.checkpoint import MODEL_FILE
    from tune.experiment import latest_checkpoint, read_trials
    from tune.ladder import horizon_lr
    from tune.preflight import prepare_data
    from tune.ray_env import init_ray, quiet_ray
    from tune.space import HPARAMS
    from tune.trainable import train_on_node

    out = exp / oracle_dir(beta)
    todo = [r for _, r in rows.iterrows() if not (out / r["trial_id"] / MODEL_FILE).is_file()]
    if not todo:
        return
    records = {t.trial_id: t for t in read_trials(exp)}
    data, tokenizer = prepare_data(config)  # the search's own tokens (its cache)
    beta = search_beta(config) if beta is None else beta
    quiet_ray()
    init_ray(config, None, False)
    try:
        data_ref = ray.put(data)
        for i, r in enumerate(todo, 1):
            src = latest_checkpoint(records[r["trial_id"]])
            if src is None:
                sys.exit(f"trial {r['trial_id']} kept no checkpoint in {exp}: it cannot be continued")
            hp = {k: r[k].item() if hasattr(r[k], "item") else r[k] for k in HPARAMS if k in r}
            lr = horizon_lr(float(hp["learning_rate"]), float(r["train_spend"]), config.final_budget, beta)
            start = {"trial_id": r["trial_id"], "files": {f.name: f.read_bytes() for f in src.iterdir() if f.is_file()}}
            train_on_node(config, data_ref, tokenizer, {**hp, "learning_rate": lr}, start,
                          out / r["trial_id"],
                          f"oracle {i}/{len(todo)}: {r['trial_id']} (rank {_rank(r) or '-'}) continued from "
                          f"{config.budget_text(r['train_spend'])} to {config.budget_text(config.final_budget)} at "
                          f"lr {lr:.2e}",
                          oracle={"rank": _rank(r), "trial_lr": float(hp["learning_rate"]), "lr": lr,
                                  "beta": beta, "trial_spend": float(r["train_spend"])})
    finally:
        ray.shutdown()


def score(dirs: dict[str, Path]) -> dict[str, tuple[float, float]]:
    """name -> (the one evaluator's loss, the run's own last val_loss), every model on the same windows of tiny
    Shakespeare's validation split (their block size, 64 at most: the evaluator's)."""
    from nanogpt.batches import tokenize
    from nanogpt.checkpoint import last_val_loss, load_model
    from nanogpt.dataset import load_dataset

    models = {name: load_model(d) for name, d in dirs.items()}
    block = min([64, *(m.config.block_size for m, _, _ in models.values())])
    ds = load_dataset(data_file=shakespeare_file())
    val = tokenize(ds, next(iter(models.values()))[1]).val  # one tokenizer for every model of a search
    return {name: (anchor.fixed_val_loss(m, val, block_size=block), last_val_loss(meta))
            for name, (m, _, meta) in models.items()}


def measure(exp: Path, top: int, write: bool, beta: float | None = None) -> None:
    """The oracle's runs (trained where missing), every model scored, the table printed (and written: `write`)."""
    from nanogpt.checkpoint import MODEL_FILE, raw_meta
    from tune import report
    from tune.config import SearchConfig

    exp = exp.resolve()
    config = SearchConfig.load(exp)
    check_search(config)
    if not (exp / "final" / MODEL_FILE).is_file():
        sys.exit(f"{exp} has no final/ model: the search's pick is what the oracle is measured against")
    final_meta = raw_meta(exp / "final")
    pick = final_meta.get("continued_from")
    trials = report.load(exp)
    rows = oracle_trials(trials, top, pick)
    if rows.empty:
        sys.exit(f"{exp}: no trial finished its budget")
    t0 = time.time()
    continue_trials(exp, config, rows, beta)
    train_s = time.time() - t0
    out = oracle_dir(beta)
    losses = score({"final": exp / "final", **{t: exp / out / t for t in rows["trial_id"]}})
    body = section(exp, config, rows, losses, pick, final_meta, train_s, top, beta)
    print(body)
    if write:
        write_section(SECTION + ("" if beta is None else f", the oracle at beta {beta:g}"), body)


def section(exp: Path, config, rows, losses: dict, pick: str | None, final_meta: dict, train_s: float,
            top: int, beta: float | None = None) -> str:
    """RESULTS.md's section: the oracle's table, the search's final model, the two regrets."""
    best_id = min(rows["trial_id"], key=lambda t: losses[t][0])
    best, winner = losses[best_id][0], rows.iloc[0]["trial_id"]
    final_loss, final_own = losses["final"]
    # rounded first: a pick that is the oracle's best reads +0.0000, not -0.0000
    regret_pick, regret_winner = round(final_loss - best, 4) + 0.0, round(losses[winner][0] - best, 4) + 0.0
    used = search_beta(config) if beta is None else beta
    rule = (f"lr x (final / trial spend)^-{used:g}" if used else "the trial's own learning rate")
    rule = (f"the search's: {rule}" if beta is None else f"{rule}, in place of the search's beta "
            f"{search_beta(config):g}")
    return f"""{stamp()} Losses do not depend on the machine's load (only the wall times do).

`python -m benchmarks.regret --results {exp}{'' if beta is None else f' --beta {beta:g}'}`, on the search

    {config.command or 'python -m tune.search (its command line was not recorded)'}

The search used the ladder: **{'yes' if config.ladder == 'on' else 'no'}**. The oracle: the top {top} finished
trials by their trial-budget val_loss ({config.budget_text(config.trial_budget)} a trial), each continued from its
stable checkpoint to the final budget {config.budget_text(config.final_budget)} by the final training's own code
(tune.trainable.train_on_node), at a learning rate for the horizon ({rule}), into
`{oracle_dir(beta)}/<trial_id>/` ({train_s:.0f} s of training this run). One evaluator: the same 200 x 32 windows of tiny
Shakespeare's validation split (benchmarks.anchor.fixed_val_loss); "own" is each run's last val_loss.

{md_table(["trial", "rank", "n_layer", "n_embd", "lr (trial -> horizon)", "batch", "optimizer",
           "trial-budget val_loss", "final-budget loss (one evaluator)", "own val_loss"],
          _rows(exp / oracle_dir(beta), rows, losses,
                [(winner, "trial winner"), (pick, "search's pick"), (best_id, "oracle's best")]))}

{_final_line(config, final_meta, pick, losses, beta)}

- Regret of the search's pick: {final_loss:.4f} - {best:.4f} = **{regret_pick:+.4f} nats** (goal <= {GOAL}:
  **{'met' if regret_pick <= GOAL else 'missed'}**).
- Regret of the trial-budget winner `{winner}` (what `--ladder off` continues): {losses[winner][0]:.4f} - {best:.4f}
  = **{regret_winner:+.4f} nats**.
"""


def _rows(runs: Path, rows, losses: dict, marks: list[tuple]) -> list[list]:
    """The oracle's table: each trial's configuration, trial-budget loss and rank, final-budget losses."""
    from nanogpt.checkpoint import raw_meta

    out = []
    for _, r in rows.iterrows():
        tid, lr = r["trial_id"], raw_meta(runs / r["trial_id"])["oracle"]["lr"]
        said = [m for t, m in marks if t == tid]
        moved = f" -> {lr:.2e}" if abs(lr - r["learning_rate"]) > 1e-12 else ""
        out.append([f"`{tid}`" + (f" ({', '.join(said)})" if said else ""), _rank(r) or f"- ({r['outcome']})",
                    r["n_layer"], r["n_embd"], f"{r['learning_rate']:.2e}{moved}", r["batch_size"], r["optimizer"],
                    f"{r['best_val_loss']:.4f}", f"**{losses[tid][0]:.4f}**", f"{losses[tid][1]:.4f}"])
    return out


def _final_line(config, final_meta: dict, pick: str | None, losses: dict, beta: float | None = None) -> str:
    """The search's final/ model, and how far the oracle's run of the same trial is from it."""
    final_loss, final_own = losses["final"]
    chosen = final_meta.get("chosen_by") or {}
    how = "the ladder" if chosen.get("by") == "ladder" else (
        "the scaling law" if chosen.get("trusted") else "the trial-budget ranking")
    line = f"The search's final/ model: `{pick}` (chosen by {how}), **{final_loss:.4f}** (own {final_own:.4f})"
    if pick not in losses:
        return line + "."
    why = ("the ladder's stable phase in steps against one run to the final budget" if config.ladder == "on"
           else "the same code path from the same checkpoint")
    if beta is not None and beta != search_beta(config):
        why += f", and the oracle's beta {beta:g} against the search's {search_beta(config):g}"
    gap = round(losses[pick][0] - final_loss, 4) + 0.0
    return line + f"; the oracle's run of that trial: {losses[pick][0]:.4f} ({gap:+.4f}: {why})."

if __name__ == "__main__":
    main()
