"""report.md's sections: each a function of the reader's records (tune.results) that returns its markdown lines
and appends what it cannot show to `missing`, the report's last section."""

from __future__ import annotations

import logging
import math
import numbers
from pathlib import Path

import pandas as pd

from nanogpt.amounts import UNIT_NAMES, format_amount, number
from nanogpt.checkpoint import last_eval, last_val_loss
from nanogpt.errors import UserError
from tune import plots, scaling
from tune.algorithms import SCHEDULERS
from tune.config import SearchConfig
from tune.experiment import read_trials
from tune.outcomes import Outcome, rankable
from tune.probes import PROBE_EXAMPLES, probe_cells, probe_sets
from tune.results import Model, ReportError, as_number, final_cut_short, final_or_best
from tune.space import ARCHITECTURE, HPARAMS

log = logging.getLogger(__name__)


def summary_section(config: SearchConfig | None, df: pd.DataFrame, curves: pd.DataFrame, path: Path,
                    missing: list[str]) -> list[str]:
    """The search's settings, its outcomes and its best trial."""
    md = ["## Summary", ""]
    if config:
        res = f"{config.cpus_per_trial:g} CPU" + (f" + {config.gpus_per_trial:g} GPU" if config.gpus_per_trial else "")
        settings = SCHEDULERS[config.scheduler].describe(config) if config.scheduler in SCHEDULERS else ""
        asha = f" ({settings})" if settings else ""
        md += [f"- data set: `{config.data_file or config.dataset}`, {config.tokenizer} tokenizer",
               f"- preset `{config.preset}`, searcher {config.searcher} ({config.sampler}), scheduler {config.scheduler}{asha}",
               f"- budget: {config.num_samples} trials x {config.budget_text()} each (every trial the same), {res} per trial"
               + (f", search time budget {config.time_budget_s:g} s" if config.time_budget_s else "")
               + (f"; the winner trained for {config.budget_text(config.final_budget)}" if config.final_budget else "")]
    else:
        missing.append("search.json is missing or unreadable: data set and budget unknown")
    counts = df["outcome"].value_counts()
    md.append("- trials: " + ", ".join(f"{int(counts.get(o.value, 0))} {o.value}" for o in Outcome))
    if not curves.empty and "elapsed_s" in curves:
        md.append(f"- training time summed over trials: {curves.groupby('trial_id')['elapsed_s'].max().sum():.0f} s")
    gone = df[df["outcome"].eq(Outcome.DIVERGED.value)]
    if not gone.empty:
        md.append(f"- diverged, never the best (not best/, not exported, not trained for the final budget): "
                  + "; ".join(f"`{r.trial_id}` {r.status}" for r in gone.head(5).itertuples())
                  + (f"; and {len(gone) - 5} more (trials.csv)" if len(gone) > 5 else ""))
    fin = rankable(df)
    if fin.empty:
        missing.append("no trial reported a finite validation loss without diverging: no best trial")
        return md + [""]
    best = fin.iloc[0]
    finished = rankable(df[df["outcome"].eq(Outcome.FINISHED)])
    cfg_text = ", ".join(f"{k}={best[k]:.3g}" if isinstance(best[k], float) else f"{k}={best[k]}"
                         for k in HPARAMS if best[k] is not None and not (isinstance(best[k], float) and math.isnan(best[k])))
    md += [f"- **best trial `{best['trial_id']}`** ({best['outcome']}): val_loss **{best['best_val_loss']:.4f}** "
           f"({best['val_bpc']:.3f} bits/char) at step {best['best_step']}, {int(best['n_params']):,} parameters",
           f"- best config: {cfg_text}", f"- architecture: {_architecture(best)}"]
    if not finished.empty:
        median = float(finished["best_val_loss"].median())
        md.append(f"- median trial that finished its budget: val_loss {median:.4f}; the best is "
                  f"{median - best['best_val_loss']:.4f} nats/token lower")
    md += [f"- checkpoint: `best/` (`python -m nanogpt.sample --checkpoint {path / 'best'}`)", ""]
    return md


def _architecture(best: pd.Series) -> str:
    """The best trial's model options in words (nanogpt.model.GPTConfig.architecture)."""
    from nanogpt.model import GPTConfig

    options = {k: best[k].item() if hasattr(best[k], "item") else best[k] for k in ARCHITECTURE}
    try:
        return GPTConfig(**options).architecture()
    except (ValueError, TypeError):  # a trials table made elsewhere
        return "unknown"


def _final_origin(meta: dict) -> str:
    """Where the final model started: a trial continued from its stable checkpoint, or scratch."""
    trial = meta.get("continued_from")
    if not trial:
        return "- trained from scratch with the winner's configuration"
    train = meta.get("train", {})
    short = final_cut_short(meta)
    anchor = meta.get("decay_anchor")
    squeezed = (f", the rest of its decay squeezed from step {anchor[0]} to step {meta.get('step')} to end within "
                f"the time budget (its steps slowed)" if isinstance(anchor, list) and len(anchor) == 2 else "")
    decay = (f"then decayed over the last {train.get('cooldown_frac', 0):.0%} of the final budget ({train.get('schedule')})"
             f"{squeezed}" if short is None else f"then meant to decay over the last {train.get('cooldown_frac', 0):.0%} of the final "
                                   f"budget ({train.get('schedule')}), but {short}")
    h = meta.get("horizon_lr")
    lr = (f"; peak learning rate {h['lr']:.3g} for its horizon (the trial's {h['trial_lr']:.3g} x ("
          f"{format_amount(h['horizon'], train.get('budget_unit', ''))} / its spend)^-{h['beta']:g})"
          if isinstance(h, dict) and all(isinstance(h.get(k), numbers.Real) for k in ("lr", "trial_lr", "horizon", "beta"))
          else "")
    return (f"- continued trial `{trial}` from its stable checkpoint (its own spend counts in the final model's), {decay}"
            + lr)


def final_section(final: Model, df: pd.DataFrame, config: SearchConfig | None, unit: str, path: Path) -> list[str]:
    """The final model, trained for the user's budget."""
    m = last_eval(final.meta)
    best = (f" (the search's best trial: {rankable(df)['best_val_loss'].iloc[0]:.4f} at {config.budget_text()})"
            if config and not rankable(df).empty else "")
    return ["## Final model (the winner trained for the final budget)", "",
            f"- val_loss **{m.get('val_loss', float('nan')):.4f}** ({m.get('val_bpc', float('nan')):.3f} bits/char) "
            f"after {number(m.get('step') or 0)} steps ({format_amount(m.get('spend', 0), unit)})" + best,
            _final_origin(final.meta),
            *([f"- **cut short**: {final_cut_short(final.meta)}"]
              if final_cut_short(final.meta) and not final.meta.get("continued_from") else []),
            *([f"- **{why}**: the search's answer is `best/`"] if (why := final_or_best(path)[1])
              and final_or_best(path)[0].name == "best" else []),
            f"- checkpoint: `final/` (`python -m nanogpt.sample --checkpoint {path / 'final'}`)", ""]


def trials_section(df: pd.DataFrame, config: SearchConfig | None, unit: str) -> list[str]:
    """Every trial, best first (all_trials_view's columns)."""
    return ["## All trials, by validation loss", "", "Every column of every trial is in trials.csv.", "",
            _md_table(all_trials_view(df, config, unit)), ""]


def all_trials_view(df: pd.DataFrame, config: SearchConfig | None, unit: str) -> pd.DataFrame:
    """report.md's table of every trial: id, outcome, the hyperparameters searched (the model's width for head_dim),
    size, best val_loss and spend; trials.csv keeps the rest."""
    if config is not None:
        searched = [h for h in HPARAMS if isinstance(config.space.get(h), dict)]
    else:  # no search.json: what varies
        searched = [h for h in HPARAMS if h in df and df[h].nunique(dropna=True) > 1]
    cols = ["trial_id", "outcome", *[("n_embd" if h == "head_dim" else h) for h in searched], "n_params",
            "best_val_loss", "spend"]
    names = {"best_val_loss": "val_loss", "learning_rate": "lr", "batch_size": "batch",
             "spend": f"spend ({UNIT_NAMES.get(unit, unit)}, training + cooldown)"}
    return df[cols].rename(columns=names)


def _md_table(df: pd.DataFrame) -> str:
    def fmt(v):
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return ""
        if isinstance(v, bool):
            return str(v)
        if isinstance(v, numbers.Real) and math.isfinite(v) and (abs(v) >= 1e4 or float(v).is_integer()):
            return number(v)  # 228,000 parameters, 3e11 FLOPs
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(df.columns) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def choose_prompts(config: SearchConfig | None, given: list[str] | None) -> tuple[list[str], str | None]:
    """(the generations' prompts, a note when they are not the search's own). From the results directory alone:
    the prompts search.json records, else the data set's built-in ones; never a file that search.json names
    (on the reader's machine that path may be anyone's file)."""
    from nanogpt.dataset import default_prompts

    if given:
        return given, None
    if config and config.prompts:
        return list(config.prompts), None
    prompts = default_prompts((config.dataset if config else None) or "")
    return prompts, (f"search.json records no prompts (a search made before they were recorded): generations use "
                     f"the default {prompts}; pass --prompt, or --data-file with your own copy of the data")


def data_file_prompts(data_file: str) -> list[str]:
    """Prompts from the start of the user's own data file (given on the command line)."""
    from nanogpt.dataset import HEAD_CHARS, default_prompts

    try:
        with open(data_file, encoding="utf-8", errors="replace") as f:
            return default_prompts("", f.read(HEAD_CHARS))
    except OSError as e:
        raise ReportError(f"cannot read --data-file {data_file} ({e.strerror})") from None


def generations_section(models: list[Model], prompts: list[str], temperature: float, seed: int,
                        max_new_tokens: int) -> tuple:
    """(the untrained model, the section): each model's continuation of each prompt, the untrained one first."""
    import torch

    from nanogpt.model import GPT, GPTConfig
    from nanogpt.sample import generate_text

    md = ["## Generations", "",
          f"The final model (if trained) and the top {len(models)} trials, each from its best checkpoint; "
          f"temperature {temperature}, seed {seed}, {max_new_tokens} new tokens. The untrained model "
          f"(same shape as the best, random weights) is shown first.", ""]
    tok = models[0].tokenizer
    torch.manual_seed(seed)
    untrained = GPT(GPTConfig(**models[0].meta["model"])).eval()
    for prompt in prompts:
        md += [f"### Prompt {prompt!r}", "", "**untrained:**", "",
               _fence(generate_text(untrained, tok, prompt, max_new_tokens, temperature, seed=seed)), ""]
        for m in models:
            text = generate_text(m.model, m.tokenizer, prompt, max_new_tokens, temperature, seed=seed)
            md += [f"**{m.label}** ({m.note}):", "", _fence(text), ""]
    return untrained, md


def _fence(text: str) -> str:
    return "```\n" + text.replace("```", "` ` `") + "\n```"


def probes_section(untrained, models: list[Model], dataset_name: str) -> list[str]:
    """The pattern probes: the untrained model beside the trained ones (built-in corpora only)."""
    from nanogpt.sample import PROBES

    sets = probe_sets(dataset_name)
    if not sets:
        return []
    best, tok = models[0].model, models[0].tokenizer
    rows = [("untrained", probe_cells(untrained, tok, sets))]
    rows += [(m.label, probe_cells(m.model, m.tokenizer, sets)) for m in models[:4]]
    cols = list(rows[0][1])
    md = ["## Pattern probes", "",
          'Greedy continuations: "Number k comes before" should give k+1, "AkBk" should give "Ck". '
          "Seen: k's sentence is in the training split; held out: only in the validation split, so "
          "getting it right means the model learned the rule, not the sentence.", "",
          "| model | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    md += [f"| {label} | " + " | ".join(cells[c] for c in cols) + " |" for label, cells in rows]
    md += ["", "Examples, untrained -> best:", ""]
    for pattern, splits in sets.items():
        ks = [PROBE_EXAMPLES[pattern]] + splits["held out"][:1]
        for before, after in zip(PROBES[pattern](untrained, tok, ks), PROBES[pattern](best, tok, ks)):
            md.append(f"- {after['prompt']!r}: {before['output'].strip()!r} -> {after['output'].strip()!r} "
                      f"({'right' if after['correct'] else 'wrong'})")
    return md + [""]


def attention_section(best: Model, text: str, plot_dir: Path, missing: list[str]) -> list[str]:
    """The best model's attention (last layer, mean of heads) on the first prompt, as a heatmap and in words."""
    from nanogpt.attention import attention_matrix, focus_summary, plot_attention

    try:
        layer = best.model.config.n_layer - 1
        tokens, att = attention_matrix(best.model, best.tokenizer, text, layer=layer, head=-1)
        plot_attention(tokens, att, plot_dir / "attention.png", f"best model, layer {layer}, mean of heads: {text!r}")
    except ValueError as e:
        missing.append(f"attention heatmap: {e}")
        return []
    return (["### Attention of the best model", "", f"Last layer ({layer}), mean over heads, on {text!r}.", "",
             "![attention](plots/attention.png)", "", "What each token focuses on most:", ""]
            + [f"- {line}" for line in focus_summary(tokens, att)] + [""])


def plots_section(path: Path, config: SearchConfig | None, df: pd.DataFrame, curves: pd.DataFrame, unit: str,
                  plot_dir: Path, missing: list[str], final: list[dict] | None = None) -> list[str]:
    """The figures drawn into plot_dir (tune.plots); `final`: the final model's history, drawn beside the trials."""
    figures = [
        ("learning_curves.png", "Learning curves" + (" (and the final model's)" if final else ""),
         lambda p: plots.learning_curves(curves, df, p, unit, final)),
        ("val_loss_vs_params.png", "Validation loss against model size (Pareto front of trials at equal spend)",
         lambda p: plots.loss_vs_params(df, p)),
        ("val_loss_vs_hparams.png", "Validation loss against each hyperparameter (trials that finished their budget)",
         lambda p: plots.loss_vs_hparams(df, p)),
        ("importance.png", "Hyperparameter importance (Optuna, PED-ANOVA, over COMPLETE trials)",
         lambda p: plots.importance(path, config, p)),
        ("parallel_coordinates.png", "Parallel coordinates (trials that finished their budget)",
         lambda p: plots.parallel_coordinates(df, p)),
    ]
    md = ["## Plots", ""]
    for fname, title, draw in figures:
        try:
            draw(plot_dir / fname)
            md += [f"### {title}", "", f"![{title}](plots/{fname})", ""]
        except plots.PlotSkipped as e:
            missing.append(f"{title}: {e}")
        except UserError as e:  # a file it needs is corrupt (optuna.db): say which, draw the rest
            log.warning("%s", e)
            missing.append(f"{title}: {e}")
    return md


def scaling_section(path: Path, config: SearchConfig | None, df: pd.DataFrame, final: Model | None, plot_dir: Path,
                    missing: list[str]) -> list[str]:
    """The scaling law over every cooldown rung (tune.scaling), its held-back error, and which trial it would train
    for the final budget beside the raw winner; what the final training used, from final/'s record."""
    raw, kept = scaling.candidates(df)
    points = scaling.rung_points(read_trials(path)) if raw is not None else []
    if not points:
        return []  # a cosine search, or nothing finished: no rungs to fit
    unit = config.budget_unit if config else "spend"
    text = config.budget_text if config else (lambda a: f"{a:.4g}")
    meta = final.meta if final is not None else {}
    train = meta.get("train") if isinstance(meta.get("train"), dict) else {}
    last = last_eval(meta)
    # what the final training planned last (--final-budget auto re-plans it from its speed), else its budget
    budget = as_number(last.get("budget")) or as_number(train.get("budget")) or (config.final_budget if config else None)
    at = "the final budget"
    if not budget and config:
        budget, at = 4 * config.trial_budget, "4x the trial budget (no --final-budget)"
    if not budget:
        missing.append("scaling law: no final budget known (search.json unreadable): no prediction")
        return []
    choice = scaling.choose(points, kept, raw, float(budget))
    verdict = ("**The fit is trusted: its pick is the configuration for the final budget.**" if choice.get("trusted")
               else "**The fit is not trusted (a diagnostic only): the raw winner is the configuration for the final "
                    "budget.**")
    md = ["## Scaling law: which configuration for the final budget", "", verdict, "",
          "Every cooldown rung is the loss of a copy decayed at that spend. Fitted over all of them: "
          "L(N, D) = E + A N^-alpha + B D^-beta, with N the non-embedding parameters and D the tokens the decayed "
          "copy trained on; a trial's prediction adds its own offset from the law at its last rung. The fit's pick "
          "replaces the raw winner (the best at the trial budget) only when the held-back error is smaller than "
          "the gap it predicts between them, no exponent sits at the fit's bounds, and the choice replayed on the "
          "held-back rungs did no worse than the raw winner of then.", ""]
    if "law" in choice:
        md += [f"- fit: {scaling.law_text(choice['law'])}",
               f"- held-back check: {scaling.check_text(choice['held_back'], text)}"]
    md.append(f"- at {at} ({text(float(budget))}): {choice['reason']}")
    if "predicted" in choice:
        md += ["", _md_table(_predicted_view(df, choice, unit)), ""]
    if final is not None:
        chosen = meta.get("chosen_by") if isinstance(meta.get("chosen_by"), dict) else {}
        used = chosen.get("chosen") or meta.get("continued_from")
        md.append(f"- the final training used: `{used}`" if used else
                  "- final/ does not record which trial it trained (a search made before the fit)")
    try:
        measured = (as_number(last.get("spend")), last_val_loss(meta)) if final is not None else None
        plots.scaling_law(points, choice, plot_dir / "scaling_law.png", unit,
                          measured if measured and None not in measured else None)
        md += ["", "![scaling law](plots/scaling_law.png)"]
    except plots.PlotSkipped as e:
        missing.append(f"scaling law plot: {e}")
    return md + [""]


def _predicted_view(df: pd.DataFrame, choice: dict, unit: str) -> pd.DataFrame:
    """The candidates the law predicts best at the final budget, raw winner and pick marked."""
    rows = []
    for tid, loss in list(choice["predicted"].items())[:8]:
        row = df[df["trial_id"].eq(tid)].iloc[0]
        mark = " ".join(m for t, m in ((choice["raw_winner"], "raw winner"), (choice.get("pick"), "fit's pick"))
                        if t == tid)
        rows.append({"trial_id": tid, "role": mark, "n_embd": row["n_embd"], "n_layer": row["n_layer"],
                     "outcome": row["outcome"], "val_loss": row["best_val_loss"], "predicted": loss})
    return pd.DataFrame(rows).rename(columns={"val_loss": "val_loss (trial budget)",
                                              "predicted": "predicted (final budget)"})


def missing_section(missing: list[str]) -> list[str]:
    """What the report could not show, one line each; nothing when it showed everything."""
    return ["## Missing from this report", ""] + [f"- {m}" for m in missing] + [""] if missing else []
