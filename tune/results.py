"""The reader of a search's results directory: the trials table, the learning curves and the trained models,
as named records.

Reads only JSON and weights-only checkpoints: search.json, outcomes.json, each trial's params.json and result.json
(tune.experiment). Nothing is unpickled and no Ray is needed, so a results directory someone else made is safe to
open. A search kept at a URI (`--results-dir s3://...`) is read through a local copy (tune.storage.Mirror).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import pandas as pd

from nanogpt.checkpoint import CONFIG_FILE, MODEL_FILE, last_val_loss, meta_vocab_size, raw_meta
from nanogpt.errors import UserError
from tune.config import SearchConfig
from tune.experiment import best_checkpoint, inside, read_trials
from tune.outcomes import Outcome, diverged, diverged_text, error_line, rankable, read_outcomes
from tune.outcomes import describe as describe_outcome
from tune.space import HPARAM_DEFAULTS, HPARAMS, derived
from tune.storage import Mirror, is_uri

if TYPE_CHECKING:
    from nanogpt.model import GPT
    from nanogpt.tokenizer import Tokenizer

log = logging.getLogger(__name__)

# spend: what the budget counts, training and cooldown branches together (trials.csv's `spend`); train_spend:
# training alone (ASHA's rungs count it); wall_time: when the evaluation was reported (unix seconds)
CURVE_COLS = ["step", "spend", "train_spend", "train_loss", "val_loss", "val_bpc", "tokens_seen", "tokens_per_s",
              "elapsed_s", "wall_time"]
COLUMNS = ["trial_id", "outcome", "status", "node", *HPARAMS, "n_embd", "n_params", "best_val_loss", "best_step",
           "val_bpc", "last_val_loss", "steps", "spend", "train_spend", "budget_unit", "tokens_seen", "seconds", "tokens_per_s",
           "compile_s", "sampler", "error", "checkpoint"]


class ReportError(UserError):
    pass


class Results(NamedTuple):
    """One read of a search's trials."""
    trials: pd.DataFrame  # one row per trial (COLUMNS), sorted by best val_loss, diverged trials last
    curves: pd.DataFrame  # every evaluation of every trial, long format: trial_id plus CURVE_COLS


@dataclass(frozen=True)
class Model:
    """A trained model the report shows: final/, or a top trial's best checkpoint."""
    label: str  # "final", or the trial's id
    note: str  # its val_loss, as the generations name it
    model: GPT  # in eval mode
    tokenizer: Tokenizer
    meta: dict  # its config.json


def final_cut_short(meta: dict) -> str | None:
    """Why a final training (final/config.json's record) did not reach its planned end, or None when it did."""
    status = meta.get("status")
    if status in (None, "finished"):
        return None
    why = "the time budget stopped it" if status == "time_budget" else f"it ended {status}"
    return (f"{why} at step {meta.get('step')}, before its planned end: its learning rate had not finished "
            f"decaying")


def final_or_best(path: str | Path) -> tuple[Path, str | None]:
    """The model the search answers with: final/, unless its training was cut short or it scored worse than best/
    (then best/); and why final/ is not used (None when it is, or there is none)."""
    path = Path(path)
    final, best = path / "final", path / "best"
    if not (final / MODEL_FILE).is_file():
        return best, None
    try:
        meta = raw_meta(final)
    except (OSError, ValueError):
        return final, None
    short = final_cut_short(meta)
    try:
        best_val = last_val_loss(raw_meta(best)) if (best / MODEL_FILE).is_file() else None
    except (OSError, ValueError):
        best_val = None
    final_val = last_val_loss(meta)
    worse = best_val is not None and (final_val is None or final_val > best_val)
    if not worse:  # the better one, cut short or not (said)
        return final, short
    scores = f"final/ {final_val:.4f} against best/'s {best_val:.4f}" if final_val is not None else "final/ has no loss"
    return best, f"final/ is not used: {short + '; ' if short else ''}{scores}"


def read_config(path: Path) -> SearchConfig | None:
    """The search's configuration; None when search.json is missing or unreadable (a warning naming what is
    wrong with it; the report says so)."""
    if not inside(path, "search.json", "file").exists():  # a link to one of the reader's files is refused, not read
        return None  # the report says so; not a warning: the directory may hold no search at all
    try:
        return SearchConfig.load(path)
    except UserError as e:
        log.warning("%s", e)
        return None


def as_number(value) -> float | None:
    """A metric as a float; None for anything else (a result.json made elsewhere may hold strings)."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _evaluations(trial) -> list[dict]:
    """The trial's results that are evaluations; one warning names a result.json whose val_loss or step is not
    a number."""
    evals = [r for r in trial.results if r.get("val_loss") is not None and r.get("step") is not None]
    good = [r for r in evals if as_number(r["val_loss"]) is not None and as_number(r["step"]) is not None]
    if len(good) < len(evals):
        log.warning("%s: %d results whose val_loss or step is not a number ignored", trial.path / "result.json",
                    len(evals) - len(good))
    return good


def local(path: str | Path, mirror: Mirror | None = None) -> tuple[Path, Mirror | None]:
    """(local directory, mirror): a URI is first downloaded into its local copy, checkpoints left at the URI."""
    if mirror is None and is_uri(path):
        mirror = Mirror(str(path))
        mirror.pull()
        return mirror.local, mirror
    return Path(path), mirror


def _outcome(trial, recorded: dict) -> str:
    """The outcome recorded when the trial ended; a trial that never ended was interrupted or never started."""
    if trial.trial_id in recorded:
        return recorded[trial.trial_id]["outcome"]
    last = trial.last_result or {}
    if trial.status == "ERROR":
        return Outcome.ERRORED.value
    if last.get("outcome") in {o.value for o in Outcome}:  # written onto the result as it ended (outcomes.json lost or older)
        return last["outcome"]
    # Ray saves a trial it had started as RUNNING (or PAUSED), whether or not it had reported yet
    started = last.get("step") or trial.status in ("RUNNING", "PAUSED")
    return Outcome.INTERRUPTED.value if started else Outcome.NOT_STARTED.value


_UNREAD = object()  # read()'s `config` when the caller has not read search.json


def vocab_size(trials) -> int | None:
    """The search's vocabulary size (one tokenizer for every trial): from the trials' results (`vocab_size`, which
    the trainable reports), else from a checkpoint's config.json on this disk; None when neither says."""

    for trial in trials:
        for r in reversed(trial.results):
            v = r.get("vocab_size")
            if isinstance(v, int) and not isinstance(v, bool) and v > 1:
                return v
    for trial in trials:  # a search made before results carried it
        for name in trial.checkpoints:
            try:
                inside(trial.path / name, CONFIG_FILE, "file")  # refused when it leads out of the results
                v = meta_vocab_size(raw_meta(trial.path / name))
            except (OSError, ValueError, KeyError, TypeError, UserError):
                continue
            if isinstance(v, int) and not isinstance(v, bool) and v > 1:
                return v
    return None


def read(path: str | Path, mirror: Mirror | None = None, config=_UNREAD) -> Results:
    """The trials table and the long learning-curve table, from one read of the experiment.
    `config`: search.json's contents when the caller has read them already."""
    path, mirror = local(path, mirror)
    if not path.is_dir():
        raise ReportError(f"{path} is not a directory: pass RESULTS_DIR/NAME of a search")
    try:
        trials = read_trials(path, has_checkpoint=(lambda p: mirror.has(p / MODEL_FILE)) if mirror else None)
    except UserError as e:
        raise ReportError(f"{e}; pass RESULTS_DIR/NAME of a search") from None
    config = read_config(path) if config is _UNREAD else config
    recorded = read_outcomes(path)
    vocab = vocab_size(trials)
    rows, frames = [], []
    for trial in trials:
        row, part = _trial_row(trial, config, recorded, vocab)
        if part is not None:
            frames.append(part)
        rows.append(row)
    df = pd.DataFrame(rows, columns=COLUMNS)
    df = df.sort_values("best_val_loss", na_position="last", kind="stable")
    # the trials that can be the best first (tune.outcomes.rankable), diverged ones after them
    df = df.sort_values("outcome", key=lambda o: o.eq(Outcome.DIVERGED.value), kind="stable").reset_index(drop=True)
    curves = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["trial_id", *CURVE_COLS])
    return Results(df, curves)


def _trial_row(trial, config: SearchConfig | None, recorded: dict,
               vocab: int | None) -> tuple[dict, pd.DataFrame | None]:
    """(the trial's row of the trials table, its evaluations as learning-curve rows; None when it has none)."""
    cfg = trial.config or {}
    row = {c: None for c in COLUMNS}
    row["trial_id"] = trial.trial_id
    row.update(HPARAM_DEFAULTS)  # a trial of a search made before a field was added ran with its default
    row.update({k: cfg.get(k) for k in HPARAMS if k in cfg})
    row.update(derived(cfg))
    row["sampler"] = cfg.get("sampler")
    row["budget_unit"] = config.budget_unit if config else None
    evals = _evaluations(trial)
    part = None
    if evals:
        last = evals[-1]
        # under wsd only the cooldown rungs are comparable (a loss at the end of a decay); the stable-phase
        # evaluations between them are taken at the peak learning rate
        rungs = [r for r in evals if (as_number(r.get("cooldown_steps")) or 0) > 0]
        best = min(rungs or evals, key=lambda r: r["val_loss"] if math.isfinite(r["val_loss"]) else math.inf)
        row.update(best_val_loss=float(best["val_loss"]), best_step=int(best["step"]), val_bpc=as_number(best.get("val_bpc")),
                   last_val_loss=float(last["val_loss"]), steps=int(last["step"]),
                   # spend: what the budget counts (training and cooldown branches); train_spend: training alone
                   spend=as_number(last.get("total_spend", last.get("spend"))), train_spend=as_number(last.get("spend")),
                   n_params=as_number(last.get("n_params")), tokens_seen=as_number(last.get("tokens_seen")),
                   seconds=as_number(last.get("elapsed_s")), tokens_per_s=as_number(last.get("tokens_per_s")),
                   compile_s=as_number(last.get("compile_s", 0.0)), node=last.get("node_id") or last.get("node_ip"))
        row.update({k: int(row[k]) for k in ("n_params", "tokens_seen") if row[k] is not None})
        part = pd.DataFrame([{**{c: as_number(r.get(c)) for c in CURVE_COLS},
                              "spend": as_number(r.get("total_spend", r.get("spend"))), "train_spend": as_number(r.get("spend")),
                              "wall_time": (as_number(r.get("started_at")) or math.nan) + (as_number(r.get("time_total_s")) or math.nan)}
                             for r in evals])
        part.insert(0, "trial_id", trial.trial_id)
    row["outcome"] = _outcome(trial, recorded)
    row["status"] = describe_outcome(row["outcome"], row, config.scheduler if config else None)
    if evals and row["outcome"] != Outcome.ERRORED.value and diverged(row["outcome"], row["best_val_loss"], vocab):
        if row["outcome"] != Outcome.DIVERGED.value:  # it ended (or runs) above the uniform baseline
            row["status"] = f"diverged ({diverged_text(row['best_val_loss'], vocab)}); {row['status']}"
        row["outcome"] = Outcome.DIVERGED.value
    if trial.error:
        row["error"] = error_line(trial.error)
    ckpt = best_checkpoint(trial)
    row["checkpoint"] = str(ckpt) if ckpt else None
    return row, part


def load(path: str | Path) -> pd.DataFrame:
    """One row per trial (the trials.csv columns), sorted by best val_loss."""
    return read(path).trials


def load_curves(path: str | Path) -> pd.DataFrame:
    """Every evaluation of every trial, long format: trial_id plus CURVE_COLS."""
    return read(path).curves


def final_model(path: Path, missing: list[str]) -> Model | None:
    """final/, or None when there is none (or it cannot be read: said in `missing`)."""
    from nanogpt.checkpoint import CheckpointError, load_model

    if not (path / "final" / MODEL_FILE).is_file():
        return None
    try:
        model, tok, meta = load_model(path / "final")
    except CheckpointError as e:
        missing.append(f"final/: {e}")
        return None
    return Model("final", f"val_loss {(meta.get('history') or [{}])[-1].get('val_loss', float('nan')):.4f}",
                 model, tok, meta)


def top_models(df: pd.DataFrame, top: int, mirror: Mirror | None, final: Model | None,
               missing: list[str]) -> list[Model]:
    """The final model (if any), then the top trials' best checkpoints; what cannot be loaded is said in
    `missing`."""
    from nanogpt.checkpoint import CheckpointError, load_model

    models = []
    for _, row in rankable(df).head(top).iterrows():  # diverged trials have nothing to say
        if pd.isna(row["checkpoint"]):
            missing.append(f"trial {row['trial_id']} has no checkpoint on disk: no generations")
            continue
        try:
            model, tok, meta = load_model(mirror.fetch(row["checkpoint"]) if mirror else row["checkpoint"])
            models.append(Model(str(row["trial_id"]), f"val_loss {row['best_val_loss']:.4f}", model, tok, meta))
        except CheckpointError as e:
            missing.append(f"trial {row['trial_id']}: {e}")
    return ([final] if final is not None else []) + models
