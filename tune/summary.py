"""What a search prints on the terminal around its trials: `announce`, before them, the data, the search's plan
(trials, budget, searcher and scheduler, resources), its space and its time budget; `finish`, after them, the top
trials, their outcomes, whether the search can be continued, where best/, the report and trials.csv are, the models
exported for --export (`export_models`, made again from best/ and final/ on every run) and what the best model learned.
"""

from __future__ import annotations

import shutil

from nanogpt.amounts import format_seconds
from nanogpt.batches import TokenData
from nanogpt.checkpoint import MODEL_FILE
from tune.config import SearchConfig
from tune.final import FINAL_DIR
from tune.outcomes import Outcome
from tune.preflight import budget_spent


def announce(config: SearchConfig, data: TokenData, tokenizer, resume: bool, ready_s: float = 0.0) -> None:
    print(f"data: {data.describe()}")
    print(f"search {config.name}: preset {config.preset}, data {data.dataset} "
          f"({len(data.train):,} train tokens, {tokenizer.kind} vocab {tokenizer.vocab_size}), "
          f"{config.num_samples} trials x {config.budget_text()} each, {config.searcher} + {config.scheduler}, "
          f"{config.cpus_per_trial:g} CPU" + (f" + {config.gpus_per_trial:g} GPU" if config.gpus_per_trial else "")
          + " per trial" + (" (resumed)" if resume else ""))
    print(f"space: {config.describe()}")
    if config.final_auto:
        print(f"time budget {format_seconds(config.total_time_s)} for the whole command from its start (the data and "
              f"tokenizer took {ready_s:.0f} s of it): {format_seconds(config.time_budget_s)} for the search, then "
              f"what is left for the final training of the winner; the report after it is not counted "
              f"(--no-report skips it)")
    elif config.time_budget_s:
        print(f"time budget {format_seconds(config.time_budget_s)} for the search's trials, on the search's clock "
              f"(over its resumes); the data and tokenizer before them ({ready_s:.0f} s) and the report after them "
              f"are not counted")
    if config.ladder == "on" and not resume:
        from tune.ladder import announce

        print(announce(config))


def finish(config: SearchConfig, df, wall: float, report: bool, top: int) -> None:
    """The terminal's summary after the search: the top trials, outcomes, where things are, what the model learned."""
    from tune import report as report_mod

    exp, mirror = config.experiment_dir, config.mirror
    print(f"\n{len(df)} trials in {wall:.0f} s; top {min(top, len(df))} by val_loss:")
    print(report_mod.top_table(df, top))
    counts = df["outcome"].value_counts()
    print("outcomes: " + ", ".join(f"{n} {o}" for o, n in counts.items()))
    if counts.get(Outcome.OUT_OF_TIME.value) or budget_spent(config):
        # spent, the budget leaves --resume nothing to run: no line asking for one
        print(f"\nthe time budget ({config.time_budget_s:g} s) ended the search after {len(df)} trials")
    elif counts.get(Outcome.INTERRUPTED.value) or counts.get(Outcome.NOT_STARTED.value) or len(df) < config.num_samples:
        print(f"\nthe search stopped before all {config.num_samples} trials finished; continue it with:\n"
              f"  python -m tune.search --resume --name {config.name} --results-dir {config.results_dir}")
    if (exp / "best").is_dir():
        print(f"\nbest checkpoint: {exp / 'best'}  (python -m nanogpt.sample --checkpoint {exp / 'best'})")
    else:
        print("\nno trial produced a checkpoint: no best/ was written")
    if config.export:
        print("\n".join(export_models(config)))
    if report:
        print(f"report: {report_mod.write_report(exp, trials=df, mirror=mirror)}")
    print(f"trials table: {exp / 'trials.csv'}")
    if mirror:
        print(f"results uploaded to {mirror.uri} (local copy: {exp})")
    probes = report_mod.probe_lines(exp)
    if probes:  # what the model learned, last: one line a pattern
        print("\nwhat the best model learned (greedy):")
        print("\n".join(probes))


def export_models(config: SearchConfig) -> list[str]:
    """--export: best/ and final/ in that format, into best-FORMAT/ and final-FORMAT/, made again from them on
    every run (a resume may have changed best/). One line a model: where it is and how to load it."""
    from nanogpt.export import export, usage

    exp, lines = config.experiment_dir, []
    for name in ("best", FINAL_DIR):
        out = exp / f"{name}-{config.export}"
        if not (exp / name / MODEL_FILE).is_file():
            # one made from a best/ since removed (its trial diverged) goes too
            shutil.rmtree(out, ignore_errors=True)
            continue
        export(exp / name, out, config.export, replace=True)  # the previous run's, swapped once the new one is whole
        if config.mirror:
            config.mirror.push(out.name)
        lines.append(usage(out, config.export, exp / name))
    return lines
