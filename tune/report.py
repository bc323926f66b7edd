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
import shutil
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

from nanogpt.checkpoint import CONFIG_FILE, MODEL_FILE
from nanogpt.files import DISK_ERROR_TEXT, WriteFailed, write_bytes
from tune import sections
from tune.experiment import inside
from tune.outcomes import Outcome, rankable
from tune.probes import probe_sets, probe_summary
from tune.results import (COLUMNS, CURVE_COLS, ReportError, final_cut_short, final_model, final_or_best, load,
                          load_curves, local, read, read_config, top_models)
from tune.sections import all_trials_view
from tune.space import TABLE
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


def probe_lines(path: str | Path) -> list[str]:
    """The terminal's last lines: the best model (final/ if there is one) on each pattern, one line a
    pattern, e.g. `Number 7 comes before -> 8 (right); seen 25/25, held out 23/25 [best/]`."""
    from nanogpt.checkpoint import CheckpointError, load_model

    path = Path(path)
    config = read_config(path)
    sets = probe_sets(config.dataset or "") if config else {}
    ckpt, why = final_or_best(path)  # final/ unless cut short or worse than best/
    if not sets:
        return []
    try:
        model, tok, _ = load_model(ckpt)
    except CheckpointError:
        return []
    with _one_thread():
        return ([why + ": the probe uses best/"] if why and ckpt.name == "best" else []) + \
            probe_summary(model, tok, sets, ckpt.name)


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
    md: list[str] = [f"# Search report: {path.name}", ""] + sections.summary_section(config, df, curves, path, missing)
    final = final_model(path, missing)
    if final is not None:
        md += sections.final_section(final, df, config, unit, path)
    from tune.ladder import report_section  # --ladder on: how the final model was chosen (ladder.json)

    md += report_section(path, plot_dir, missing)
    md += sections.trials_section(df, config, unit)
    prompts, note = sections.choose_prompts(config, prompts)
    if note:
        missing.append(note)
    models = top_models(df, top, mirror, final, missing)
    attention: list[str] = []
    if models:
        untrained, section = sections.generations_section(models, prompts, temperature, seed, max_new_tokens)
        md += section + sections.probes_section(untrained, models, (config.dataset if config else None) or "")
        attention = sections.attention_section(models[0], prompts[0], plot_dir, missing)
    else:
        missing.append("no checkpoint could be loaded: no generations, probe or attention heatmap")
    final_history = final.meta.get("history") if final is not None else None
    md += sections.plots_section(path, config, df, curves, unit, plot_dir, missing,
                                 final_history if isinstance(final_history, list) else None) + attention
    md += sections.scaling_section(path, config, df, final, plot_dir, missing)
    md += sections.missing_section(missing)
    out = path / "report.md"
    write_bytes(out, "\n".join(md).encode())
    if mirror:
        mirror.push("report.md", "plots")
    return out


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
    prompts = args.prompt or (sections.data_file_prompts(args.data_file) if args.data_file else None)
    out = write_report(args.path, prompts, args.top, args.temperature, args.seed, args.max_new_tokens)
    df = pd.read_csv(out.parent / "trials.csv")
    print(top_table(df, args.top))
    print(f"report: {out}" + (f" (uploaded to {args.path.rstrip('/')}/report.md)" if is_uri(args.path) else ""))
    return 0


if __name__ == "__main__":
    from nanogpt.cli import run_main

    run_main(main)
