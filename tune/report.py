"""What a search leaves behind, rebuilt from disk: `python -m tune.report RESULTS_DIR/NAME`.

Reads only JSON and weights-only checkpoints (the trials through tune.results; optuna.db for the plots). Nothing
is unpickled and no Ray is needed, so a results directory someone else made is safe to open. Writes trials.csv,
best/, report.md and plots/*.png. A search kept at a URI (`--results-dir s3://...`) is read through a local copy
and the files are uploaded back. For notebooks:

    from tune import report
    df = report.load("results/NAME")          # one row per trial
    curves = report.load_curves("results/NAME")  # every evaluation of every trial
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import numbers
import shutil
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

from nanogpt.amounts import UNIT_NAMES, format_amount, number
from nanogpt.checkpoint import CONFIG_FILE, MODEL_FILE, last_eval, last_val_loss
from nanogpt.errors import UserError
from nanogpt.files import DISK_ERROR_TEXT, WriteFailed, write_bytes
from tune.algorithms import SCHEDULERS
from tune.config import SearchConfig
from tune import plots, scaling
from tune.experiment import inside, read_trials
from tune.outcomes import Outcome, rankable
from tune.results import (COLUMNS, CURVE_COLS, Model, ReportError, as_number, final_cut_short, final_model,
                          final_or_best, load, load_curves, local, read, read_config, top_models)
from tune.space import ARCHITECTURE, HPARAMS, TABLE
from tune.storage import Mirror, is_uri

log = logging.getLogger(__name__)

# the reader's (tune.results) tables and answers are this module's too: `report.load` is what notebooks call
__all__ = ["COLUMNS", "CURVE_COLS", "ReportError", "all_trials_view", "export", "final_cut_short", "final_or_best",
           "load", "load_curves", "main", "probe_lines", "top_table", "write_report"]


def export(path: str | Path, mirror: Mirror | None = None) -> pd.DataFrame:
    """Write trials.csv and best/ (the best trial's best checkpoint); return the trials table.
    `mirror`: the local copy `path` is of, when the search lives at a URI."""
    path, mirror = local(path, mirror)
    return _write_exports(path, read(path, mirror).trials, mirror, lambda: read(path, mirror).trials)[0]


# what a report writes into a results directory; each is checked before writing (see _check_outputs)
OUTPUTS = ("trials.csv", "best", "best.tmp", "best.old", "report.md", "plots", "plots/learning_curves.png",
           "plots/val_loss_vs_params.png", "plots/val_loss_vs_hparams.png", "plots/importance.png",
           "plots/attention.png", "plots/scaling_law.png")
COPY_TRIES = 3  # reads of the trials for a best checkpoint that stays put while it is copied (see _write_exports)


def _check_outputs(path: Path) -> None:
    """A results directory made elsewhere may hold links where the report writes (trials.csv -> ~/.bashrc):
    refuse before anything is written."""
    for name in OUTPUTS:
        inside(path, name, "output")


class _Vanished(Exception):
    """The checkpoint being copied into best/ was deleted while it was copied."""


def _write_exports(path: Path, df: pd.DataFrame, mirror: Mirror | None, reread) -> tuple[pd.DataFrame, list[str]]:
    """best/ and trials.csv; returns (the table written, notes for the report).

    On a search that is running, Ray deletes a trial's best checkpoint as soon as it registers a better one, which
    may be while it is copied: then the trials are read again (`reread()`) and the then-best checkpoint copied, up to
    COPY_TRIES reads, each vanished checkpoint skipped with a note. best/ is replaced whole or not at all: the copy
    goes to best.tmp and is renamed into place once it is complete. trials.csv is the table best/ was chosen from."""
    _check_outputs(path)
    notes: list[str] = []
    for _ in range(COPY_TRIES):
        try:
            _write_best(path, df, mirror, notes)
            break
        except _Vanished as e:
            notes.append(str(e))
            log.warning("%s", e)
            df = reread()
    else:
        note = f"best/ was left as it was: the best checkpoint vanished while copied on each of {COPY_TRIES} tries"
        notes.append(note)
        log.warning("%s", note)
    write_bytes(path / "trials.csv", df.to_csv(index=False).encode())
    if mirror:
        mirror.push("trials.csv", "best")
    return df, notes


def _write_best(path: Path, df: pd.DataFrame, mirror: Mirror | None, notes: list[str]) -> None:
    """best/: a copy of the best trial's best checkpoint (tune.outcomes.rankable: never a diverged trial) with its
    row as trial.json. With no trial to copy, a best/ left by a trial that has since diverged is removed."""
    ok = rankable(df)
    ok = ok[ok["checkpoint"].notna()]
    if ok.empty:
        _drop_diverged_best(path, df, notes)
        return
    best = ok.iloc[0]
    tmp = path / "best.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    if not _copy_checkpoint(Path(best["checkpoint"]), tmp, mirror):
        raise _Vanished(f"trial {best['trial_id']}'s checkpoint {Path(best['checkpoint']).name} vanished while it was "
                        f"copied into best/ (Ray replaces a running trial's checkpoints): skipped, the trials read again")
    write_bytes(tmp / "trial.json", json.dumps(
        {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in best.to_dict().items()}, indent=2,
        default=str).encode())
    old = path / "best.old"
    shutil.rmtree(old, ignore_errors=True)
    if (path / "best").exists():
        (path / "best").rename(old)
    tmp.rename(path / "best")
    shutil.rmtree(old, ignore_errors=True)


def _copy_checkpoint(src: Path, dst: Path, mirror: Mirror | None) -> bool:
    """Copy a trial's checkpoint directory to `dst`; False (and nothing at `dst`) when it vanished, wholly or in
    part, while it was copied. A copy that fails with the checkpoint still there is an error (disk full: one line)."""
    from nanogpt.checkpoint import TOKENIZER_FILE

    needed = (MODEL_FILE, CONFIG_FILE, TOKENIZER_FILE)

    def present() -> bool:
        return mirror.has(src / MODEL_FILE) if mirror else all((src / f).is_file() for f in needed)

    try:
        shutil.copytree(mirror.fetch(src) if mirror else src, dst)
    except OSError as e:  # shutil.Error (a file of it failed) is one too
        shutil.rmtree(dst, ignore_errors=True)
        if present():
            if DISK_ERROR_TEXT.search(str(e)):
                first = e.args[0][0][2] if isinstance(e, shutil.Error) and e.args and e.args[0] else e.strerror
                raise WriteFailed(f"could not copy the best checkpoint {src} into {dst.parent / 'best'}: "
                                  f"{first or e}") from None
            raise
        return False
    if all((dst / f).is_file() for f in needed):  # deleted before the copy listed them: no error, files missing
        return True
    shutil.rmtree(dst, ignore_errors=True)
    return False


def _drop_diverged_best(path: Path, df: pd.DataFrame, notes: list[str]) -> None:
    """A best/ that an earlier report copied from a trial that has diverged since is no best: removed, with a note."""
    try:
        tid = json.loads(inside(path / "best", "trial.json", "file").read_text()).get("trial_id")
    except (OSError, ValueError, AttributeError):
        return
    if tid in set(df.loc[df["outcome"].eq(Outcome.DIVERGED.value), "trial_id"]):
        shutil.rmtree(path / "best")
        notes.append(f"best/ held trial {tid}, which has diverged since: removed, and no other trial has a checkpoint")


def top_table(df: pd.DataFrame, n: int = 5) -> str:
    cols = ["trial_id", *TABLE, "n_params", "best_val_loss", "val_bpc", "steps", "spend", "outcome"]
    view = df.head(n)[cols].rename(columns={"learning_rate": "lr", "batch_size": "batch", "best_val_loss": "val_loss"})
    return view.to_string(index=False, float_format=lambda v: f"{v:.4g}")


# --- probes -----------------------------------------------------------------------------------


PROBE_EXAMPLES = {"counting": 7, "abc": 12}  # the notebook's examples: "Number 7 comes before", "A12B12"


def _probe_sets(dataset_name: str) -> dict[str, dict[str, list[int]]]:
    """pattern -> {"seen": numbers whose sentence is in training, "held out": in validation only}, for the
    built-in corpora that hold the notebook's patterns; empty for other data."""
    from nanogpt.corpora import BUILTIN_CORPORA
    from nanogpt.dataset import load_dataset
    from nanogpt.sample import PROBES, probe_numbers

    if dataset_name not in BUILTIN_CORPORA:
        return {}
    ds = load_dataset(dataset_name)
    sets = {}
    for pattern in PROBES:
        seen, held_out = probe_numbers(ds.train_text, ds.val_text, pattern)
        if seen or held_out:
            sets[pattern] = {"seen": seen, "held out": held_out}
    return sets


def _probe_cells(model, tok, sets: dict) -> dict[str, str]:
    """"counting, seen" -> "24/25" for each pattern and split."""
    from nanogpt.sample import PROBES

    cells = {}
    for pattern, splits in sets.items():
        for split, ks in splits.items():
            if ks:
                rows = PROBES[pattern](model, tok, ks)
                cells[f"{pattern}, {split}"] = f"{sum(r['correct'] for r in rows)}/{len(rows)}"
    return cells


def probe_lines(path: str | Path) -> list[str]:
    """The terminal's last lines: the best model (final/ if there is one) on each pattern, one line a
    pattern, e.g. `Number 7 comes before -> 8 (right); seen 25/25, held out 23/25 [best/]`."""
    from nanogpt.checkpoint import CheckpointError, load_model

    path = Path(path)
    config = read_config(path)
    sets = _probe_sets(config.dataset or "") if config else {}
    ckpt, why = final_or_best(path)  # final/ unless cut short or worse than best/
    if not sets:
        return []
    try:
        model, tok, _ = load_model(ckpt)
    except CheckpointError:
        return []
    with _one_thread():
        return ([why + ": the probe uses best/"] if why and ckpt.name == "best" else []) + \
            _probe_summary(model, tok, sets, ckpt.name)


def _probe_summary(model, tok, sets: dict, label: str) -> list[str]:
    from nanogpt.sample import PROBES

    lines = []
    for pattern, splits in sets.items():
        r = PROBES[pattern](model, tok, [PROBE_EXAMPLES[pattern]])[0]
        scores = _probe_cells(model, tok, {pattern: splits})
        lines.append(f"{r['prompt']} -> {r['output'].strip() or repr(r['output'])} ({'right' if r['correct'] else 'wrong'}); "
                     + ", ".join(f"{k.split(', ')[1]} {v}" for k, v in scores.items()) + f" [{label}/]")
    return lines


# --- report.md ------------------------------------------------------------------------------


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


def _fence(text: str) -> str:
    return "```\n" + text.replace("```", "` ` `") + "\n```"


def _prompts(config: SearchConfig | None, given: list[str] | None) -> tuple[list[str], str | None]:
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


def _summary(config: SearchConfig | None, df: pd.DataFrame, curves: pd.DataFrame, path: Path,
             missing: list[str]) -> list[str]:
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


def write_report(path: str | Path, prompts: list[str] | None = None, top: int = 5, temperature: float = 0.8,
                 seed: int = 1337, max_new_tokens: int = 80, trials: pd.DataFrame | None = None,
                 mirror: Mirror | None = None) -> Path:
    """Rebuild trials.csv, best/, report.md and plots/ of a search from what it left on disk.

    `trials`: the table export() just returned, to skip exporting again. `mirror`: the local copy
    `path` is of, when the search lives at a URI (a URI `path` makes one)."""
    path, mirror = local(path, mirror)
    with _one_thread():
        return _write_report(path, mirror, prompts, top, temperature, seed, max_new_tokens, trials)


@contextmanager
def _one_thread():
    """Generation of small models: one thread beats two (per-token ops are tiny; a second thread only syncs, and
    on a busy core it waits many times the work: benchmarks/RESULTS.md, "Search overhead")."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _write_report(path: Path, mirror: Mirror | None, prompts: list[str] | None, top: int, temperature: float,
                  seed: int, max_new_tokens: int, trials: pd.DataFrame | None) -> Path:
    """report.md and plots/, section by section; whatever a section cannot show goes to "Missing"."""
    _check_outputs(path)
    config = read_config(path)
    missing: list[str] = []
    if trials is None:
        df, curves = read(path, mirror, config)
        df, notes = _write_exports(path, df, mirror, lambda: read(path, mirror, config).trials)
        missing += notes
    else:
        df, curves = trials, read(path, mirror, config).curves
    plot_dir = path / "plots"
    plot_dir.mkdir(exist_ok=True)
    unit = config.budget_unit if config else "steps"
    # what a reader reads first comes first: the results (the best trial, the final model, every trial), what the
    # models write, then the diagnostics (plots, the scaling law's fit)
    md: list[str] = [f"# Search report: {path.name}", ""] + _summary(config, df, curves, path, missing)
    final = final_model(path, missing)
    if final is not None:
        md += _final_section(final, df, config, unit, path)
    from tune.ladder import report_section  # --ladder on: how the final model was chosen (ladder.json)

    md += report_section(path, plot_dir, missing)
    md += ["## All trials, by validation loss", "", "Every column of every trial is in trials.csv.", "",
           _md_table(all_trials_view(df, config, unit)), ""]
    prompts, note = _prompts(config, prompts)
    if note:
        missing.append(note)
    models = top_models(df, top, mirror, final, missing)
    attention: list[str] = []
    if models:
        untrained, section = _generations_section(models, prompts, temperature, seed, max_new_tokens)
        md += section + _probes_section(untrained, models, (config.dataset if config else None) or "")
        attention = _attention_section(models[0], prompts[0], plot_dir, missing)
    else:
        missing.append("no checkpoint could be loaded: no generations, probe or attention heatmap")
    final_history = final.meta.get("history") if final is not None else None
    md += _plots_section(path, config, df, curves, unit, plot_dir, missing,
                         final_history if isinstance(final_history, list) else None) + attention
    md += _scaling_section(path, config, df, final, plot_dir, missing)
    if missing:
        md += ["## Missing from this report", ""] + [f"- {m}" for m in missing] + [""]
    out = path / "report.md"
    write_bytes(out, "\n".join(md).encode())
    if mirror:
        mirror.push("report.md", "plots")
    return out


def _plots_section(path: Path, config: SearchConfig | None, df: pd.DataFrame, curves: pd.DataFrame, unit: str,
                   plot_dir: Path, missing: list[str], final: list[dict] | None = None) -> list[str]:
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
    return f"- continued trial `{trial}` from its stable checkpoint (its own spend counts in the final model's), {decay}"


def _final_section(final: Model, df: pd.DataFrame, config: SearchConfig | None, unit: str, path: Path) -> list[str]:
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


def _scaling_section(path: Path, config: SearchConfig | None, df: pd.DataFrame, final: Model | None, plot_dir: Path,
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


def _generations_section(models: list[Model], prompts: list[str], temperature: float, seed: int,
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


def _probes_section(untrained, models: list[Model], dataset_name: str) -> list[str]:
    """The pattern probes: the untrained model beside the trained ones (built-in corpora only)."""
    from nanogpt.sample import PROBES

    sets = _probe_sets(dataset_name)
    if not sets:
        return []
    best, tok = models[0].model, models[0].tokenizer
    rows = [("untrained", _probe_cells(untrained, tok, sets))]
    rows += [(m.label, _probe_cells(m.model, m.tokenizer, sets)) for m in models[:4]]
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


def _attention_section(best: Model, text: str, plot_dir: Path, missing: list[str]) -> list[str]:
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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tune.report", description="Rebuild the report of a search.")
    p.add_argument("path", help="RESULTS_DIR/NAME of a search (a directory, or a URI such as s3://bucket/results/NAME)")
    p.add_argument("--prompt", action="append", help="prompt for the generations (repeatable; default: data-set prompts)")
    p.add_argument("--data-file", help="your own copy of the searched text: prompts from its start (default: the "
                                       "prompts search.json records; a path search.json names is never read)")
    p.add_argument("--top", type=int, default=5, help="trials whose generations are shown (default: 5)")
    p.add_argument("--temperature", type=float, default=0.8,
                   help="sampling temperature of the generations; 0 = greedy (default: 0.8)")
    p.add_argument("--seed", type=int, default=1337, help="the generations' random seed (default: 1337)")
    p.add_argument("--max-new-tokens", type=int, default=80, metavar="N",
                   help="tokens each generation adds to its prompt (default: 80)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not is_uri(args.path) and not Path(args.path).is_dir():
        raise ReportError(f"{args.path} is not a directory: pass RESULTS_DIR/NAME of a search")
    if args.top < 1 or args.temperature < 0 or args.max_new_tokens < 1:
        raise ReportError("--top and --max-new-tokens must be >= 1 and --temperature >= 0")
    prompts = args.prompt or (data_file_prompts(args.data_file) if args.data_file else None)
    out = write_report(args.path, prompts, args.top, args.temperature, args.seed, args.max_new_tokens)
    df = pd.read_csv(out.parent / "trials.csv")
    print(top_table(df, args.top))
    print(f"report: {out}" + (f" (uploaded to {args.path.rstrip('/')}/report.md)" if is_uri(args.path) else ""))
    return 0


if __name__ == "__main__":
    from nanogpt.cli import run_main

    run_main(main)
