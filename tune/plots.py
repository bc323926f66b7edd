"""The report's figures (matplotlib, headless PNG). Each takes tables in and writes one file."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.cm
import matplotlib.colors
import pandas as pd
from matplotlib.figure import Figure  # figures without pyplot: no global backend to set, nothing to close

from tune.outcomes import STOPPED_EARLY, Outcome, rankable
from tune.space import SHOWN, is_log



class PlotSkipped(Exception):
    """Not enough data for this figure; the message says why."""


def _subplots(nrows: int = 1, ncols: int = 1, *, figsize: tuple, **kw):
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(nrows, ncols, **kw)


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=100)


DIVERGED_LABEL = "diverged (the axis stops above the other trials)"


def learning_curves(curves: pd.DataFrame, trials: pd.DataFrame, path: Path, unit: str = "steps") -> None:
    """val_loss against spend (the budget's unit) for every trial; pruned and out-of-time ones end where they
    were stopped (marked x), the best is bold. Diverged trials are thin red dotted lines, and the axis stops above
    the others' losses: a blown-up loss (thousands of nats) would flatten every other curve."""
    if curves.empty:
        raise PlotSkipped("no trial reported an evaluation")
    curves = curves[curves["val_loss"].apply(math.isfinite)]
    x = "spend" if "spend" in curves and curves["spend"].notna().all() else "step"
    best_id = rankable(trials)["trial_id"].iloc[0] if not rankable(trials).empty else None
    stopped = set(trials.loc[trials["outcome"].isin(STOPPED_EARLY), "trial_id"])
    gone = set(trials.loc[trials["outcome"].eq(Outcome.DIVERGED.value), "trial_id"])
    fig, ax = _subplots(figsize=(8, 5))
    for tid, g in curves.groupby("trial_id"):
        if tid == best_id:
            continue
        if tid in gone:
            ax.plot(g[x], g["val_loss"], ":", color="tab:red", alpha=0.6, lw=1,
                    label=DIVERGED_LABEL if not any(h.get_label() == DIVERGED_LABEL for h in ax.get_lines()) else None)
            continue
        line, = ax.plot(g[x], g["val_loss"], alpha=0.45, lw=1)
        if tid in stopped:
            ax.plot(g[x].iloc[-1], g["val_loss"].iloc[-1], "x", color=line.get_color())
    if best_id is not None:
        g = curves[curves["trial_id"] == best_id]
        ax.plot(g[x], g["val_loss"], color="black", lw=2.5, label=f"best: {best_id}")
    kept = curves[~curves["trial_id"].isin(gone)]
    if gone and not kept.empty:
        low, high = kept["val_loss"].min(), kept["val_loss"].max()
        ax.set_ylim(low - 0.05 * (high - low + 1e-9), high + 0.1 * (high - low + 1e-9))
    if best_id is not None or gone:
        ax.legend()
    ax.set_xlabel(f"spend ({unit})" if x == "spend" else "step")
    ax.set_ylabel("validation loss (nats/token)")
    ax.set_title("learning curves (x = pruned or out of time)")
    ax.grid(alpha=0.3)
    _save(fig, path)


def pareto_front(df: pd.DataFrame) -> pd.DataFrame:
    """Trials that no smaller model beats: sorted by size, each lower in loss than all before it."""
    d = rankable(df).dropna(subset=["n_params"]).sort_values(["n_params", "best_val_loss"])
    keep, best = [], math.inf
    for idx, row in d.iterrows():
        if row["best_val_loss"] < best:
            keep.append(idx)
            best = row["best_val_loss"]
    return d.loc[keep]


def _at_equal_spend(df: pd.DataFrame) -> pd.DataFrame:
    """Trials that spent their whole budget (the same for all): the only fair comparison."""
    return rankable(df[df["outcome"].eq(Outcome.FINISHED)]).dropna(subset=["n_params"])


def loss_vs_params(df: pd.DataFrame, path: Path) -> None:
    """Loss against size for the trials that finished their budget, with their Pareto front; stopped trials
    are drawn faintly for context, outside the front (they spent less)."""
    d = _at_equal_spend(df)
    if d.empty:
        raise PlotSkipped("no trial finished its budget: no comparison at equal spend")
    front = pareto_front(d)
    others = rankable(df[~df["outcome"].eq(Outcome.FINISHED)]).dropna(subset=["n_params"])
    fig, ax = _subplots(figsize=(7, 5))
    ax.scatter(d["n_params"], d["best_val_loss"], label=f"finished its budget ({len(d)})", alpha=0.8)
    if not others.empty:
        ax.scatter(others["n_params"], others["best_val_loss"], marker="x", color="grey", alpha=0.4,
                   label=f"stopped early ({len(others)}; spent less, not on the front)")
    ax.step(front["n_params"], front["best_val_loss"], where="post", color="black", lw=1.5, label="Pareto front (equal spend)")
    ax.set_xscale("log")
    ax.set_xlabel("parameters")
    ax.set_ylabel("best validation loss")
    ax.set_title("validation loss against model size, at equal spend")
    ax.grid(alpha=0.3)
    ax.legend()
    _save(fig, path)


def loss_vs_hparams(df: pd.DataFrame, path: Path) -> None:
    d = _at_equal_spend(df)
    cols = [c for c in SHOWN if c in d and d[c].nunique(dropna=True) > 1]
    if d.empty or not cols:
        raise PlotSkipped("no hyperparameter varied across the trials that finished their budget")
    n = len(cols)
    ncols = min(3, n)
    nrows = math.ceil(n / ncols)
    fig, axes = _subplots(nrows, ncols, figsize=(4 * ncols, 3.2 * nrows), squeeze=False)
    for ax, c in zip(axes.flat, cols):
        if not pd.api.types.is_numeric_dtype(d[c]):  # a categorical choice (optimizer): one column of points per value
            names = sorted(d[c].dropna().unique())
            ax.scatter(d[c].map({v: i for i, v in enumerate(names)}), d["best_val_loss"], alpha=0.8)
            ax.set_xticks(range(len(names)), names)
        else:
            ax.scatter(d[c].astype(float), d["best_val_loss"], alpha=0.8)
        if is_log(c):
            ax.set_xscale("log")
        ax.set_xlabel(c)
        ax.set_ylabel("best val_loss")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle(f"{len(d)} trials that finished their budget (equal spend)")
    _save(fig, path)


def _unit_axis(values: pd.Series, log: bool) -> tuple[pd.Series, str, str]:
    """(values scaled to [0, 1], label of 0, label of 1); a categorical column by its sorted choices."""
    if not pd.api.types.is_numeric_dtype(values):
        names = sorted(values.dropna().unique())
        return values.map({v: i / max(1, len(names) - 1) for i, v in enumerate(names)}), str(names[0]), str(names[-1])
    v = values.astype(float)
    x = v.map(math.log10) if log else v
    lo, hi = x.min(), x.max()
    return (x - lo) / ((hi - lo) or 1.0), f"{v.min():.3g}", f"{v.max():.3g}"


def parallel_coordinates(df: pd.DataFrame, path: Path) -> None:
    """One line per trial that finished its budget, across each varied hyperparameter and its val_loss, coloured
    by val_loss (darkest = best)."""
    d = _at_equal_spend(df)
    cols = [c for c in SHOWN if c in d and d[c].nunique(dropna=True) > 1]
    if len(d) < 2 or not cols:
        raise PlotSkipped("fewer than two trials finished their budget, or no hyperparameter varied among them")
    axes_cols = cols + ["best_val_loss"]
    scaled = {c: _unit_axis(d[c], log=is_log(c)) for c in axes_cols}
    fig, ax = _subplots(figsize=(1.7 * len(axes_cols) + 2, 4.5))
    cmap, loss = matplotlib.colormaps["viridis"], d["best_val_loss"].astype(float)
    shade = scaled["best_val_loss"][0]
    for i in d.sort_values("best_val_loss", ascending=False).index:  # the best drawn last, on top
        ax.plot(range(len(axes_cols)), [scaled[c][0][i] for c in axes_cols], color=cmap(shade[i]), alpha=0.8, lw=1.5)
    for k, c in enumerate(axes_cols):
        ax.axvline(k, color="black", lw=0.8)
        ax.text(k, -0.06, scaled[c][1], ha="center", va="top", fontsize=8)
        ax.text(k, 1.06, scaled[c][2], ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(axes_cols)), [c.replace("best_val_loss", "val_loss") for c in axes_cols])
    ax.set_yticks([])
    ax.set_ylim(-0.15, 1.15)
    sm = matplotlib.cm.ScalarMappable(cmap=cmap, norm=matplotlib.colors.Normalize(loss.min(), loss.max()))
    fig.colorbar(sm, ax=ax, label="best val_loss")
    ax.set_title(f"{len(d)} trials that finished their budget (log-scale hyperparameters on log axes)")
    _save(fig, path)


def importance(experiment: Path, config, path: Path) -> None:
    """PED-ANOVA importance of each sampled hyperparameter for val_loss, from the Optuna study.

    PED-ANOVA needs no scikit-learn (Optuna's default, fANOVA, does)."""
    import optuna

    from tune.experiment import inside, open_study

    db = inside(experiment, "optuna.db", "file")
    if not db.is_file() or config is None:
        raise PlotSkipped("no Optuna study (optuna.db) beside the experiment")
    study = open_study(db, config.name)  # a corrupt file: UserError, which the report shows
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE and t.value is not None
            and math.isfinite(t.value)]
    if len(done) < 3:
        raise PlotSkipped(f"only {len(done)} COMPLETE trials (finished their budget) with finite loss in the study; importance needs 3 or more")
    try:
        imp = optuna.importance.get_param_importances(study, evaluator=optuna.importance.PedAnovaImportanceEvaluator())
    except (RuntimeError, ValueError, ImportError) as e:
        raise PlotSkipped(f"Optuna could not compute importances ({e})") from None
    if not imp:
        raise PlotSkipped("no sampled hyperparameter varied")
    names = list(imp)[::-1]
    fig, ax = _subplots(figsize=(6, 0.5 * len(names) + 1.5))
    ax.barh(names, [imp[n] for n in names])
    ax.set_xlabel("importance for val_loss (PED-ANOVA)")
    ax.set_title(f"hyperparameter importance ({len(done)} COMPLETE trials: finished their budget)")
    _save(fig, path)


def scaling_law(points: list, choice: dict, path: Path, unit: str = "steps") -> None:
    """Cooldown-rung losses against the decayed copy's spend, coloured by model size, with the fitted law for each
    size (thin) and the predictions for the raw winner and the fit's pick out to the final budget: the one the
    final budget takes solid; an untrusted fit's pick faint and dotted, and the title says it is not trusted."""
    import numpy as np

    from tune.scaling import Law, predict

    if "law" not in choice:
        raise PlotSkipped(choice.get("reason", "no scaling fit"))
    law = Law(**choice["law"])
    sizes = sorted({p.n for p in points})
    norm = matplotlib.colors.LogNorm(min(sizes), max(sizes) * 1.0001)
    cmap = matplotlib.colormaps["viridis"]
    fig, ax = _subplots(figsize=(8, 5))
    x = np.array([p.d / p.per_spend for p in points])
    ax.scatter(x, [p.loss for p in points], c=[cmap(norm(p.n)) for p in points], s=14, alpha=0.8)
    end = max(choice["final_budget"], x.max())
    grid = np.geomspace(x.min(), end, 60)
    for n in sizes:
        per_spend = float(np.median([p.per_spend for p in points if p.n == n]))
        ax.plot(grid, law.loss(n, grid * per_spend), color=cmap(norm(n)), lw=0.8, alpha=0.6)
    # the configuration the final budget takes is the solid line; the other is dashed. An untrusted fit's pick is
    # drawn faint and dotted: the fit's prediction, not a choice
    trusted = bool(choice.get("trusted"))
    raw, pick = choice["raw_winner"], choice.get("pick")
    curves = [(raw, dict(ls="--" if trusted else "-", lw=2, alpha=1.0), "raw winner" + ("" if trusted else ", kept"))]
    if pick != raw:
        curves.append((pick, dict(ls="-", lw=2, alpha=1.0) if trusted else dict(ls=":", lw=1.5, alpha=0.6),
                       "fit's pick" if trusted else "fit's pick, not trusted: not trained"))
    for tid, style, label in curves:
        if tid is None or tid not in choice.get("predicted", {}):
            continue
        mine = [p for p in points if p.trial_id == tid]
        ax.plot(grid, [predict(law, mine, tid, g * mine[0].per_spend) for g in grid], color="black", **style,
                label=f"{label}: {tid} ({int(mine[0].n):,} params)")
    ax.axvline(choice["final_budget"], color="grey", ls=":", label="final budget")
    ax.set_xscale("log")
    ax.set_xlabel(f"spend of the decayed copy ({unit})")
    ax.set_ylabel("cooldown-rung validation loss (nats/token)")
    ax.set_title("scaling law fitted to every cooldown rung (colour: non-embedding parameters)"
                 + ("" if trusted else "\nthe fit is NOT trusted: the raw winner is kept"))
    fig.colorbar(matplotlib.cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, label="non-embedding parameters")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    _save(fig, path)
