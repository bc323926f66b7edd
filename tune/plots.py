"""The report's figures (matplotlib, headless PNG). Each takes tables in and writes one file."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.cm
import matplotlib.colors
import matplotlib.ticker
import pandas as pd
from matplotlib.figure import Figure  # figures without pyplot: no global backend to set, nothing to close

from nanogpt.amounts import UNIT_NAMES, number
from tune.outcomes import Outcome, rankable
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


# how each way a trial can end early is marked, wherever trials are drawn
ENDED = {Outcome.PRUNED.value: ("x", "pruned by ASHA"), Outcome.OUT_OF_TIME.value: ("s", "stopped by the time budget"),
         Outcome.INTERRUPTED.value: ("v", "interrupted")}


def learning_curves(curves: pd.DataFrame, trials: pd.DataFrame, path: Path, unit: str = "steps",
                    final: list[dict] | None = None) -> None:
    """val_loss against spend (the budget's unit, training and cooldown) for every trial; a trial that ended early
    ends in its outcome's marker (x pruned, square out of time, triangle interrupted), the best is bold, and the
    final model's training (`final`: final/'s history) is the red line. Diverged trials are thin red dotted lines,
    and the axis stops above the others' losses: a blown-up loss (thousands of nats) would flatten every other
    curve."""
    if curves.empty:
        raise PlotSkipped("no trial reported an evaluation")
    curves = curves[curves["val_loss"].apply(math.isfinite)]
    x = "spend" if "spend" in curves and curves["spend"].notna().all() else "step"
    best_id = rankable(trials)["trial_id"].iloc[0] if not rankable(trials).empty else None
    ended = dict(zip(trials["trial_id"], trials["outcome"]))
    gone = {t for t, o in ended.items() if o == Outcome.DIVERGED.value}
    fig, ax = _subplots(figsize=(8, 5))
    marked: set[str] = set()
    for tid, g in curves.groupby("trial_id"):
        if tid == best_id:
            continue
        if tid in gone:
            ax.plot(g[x], g["val_loss"], ":", color="tab:red", alpha=0.6, lw=1,
                    label=DIVERGED_LABEL if not any(h.get_label() == DIVERGED_LABEL for h in ax.get_lines()) else None)
            continue
        line, = ax.plot(g[x], g["val_loss"], alpha=0.45, lw=1)
        if ended.get(tid) in ENDED:
            marker, text = ENDED[ended[tid]]
            ax.plot(g[x].iloc[-1], g["val_loss"].iloc[-1], marker, color=line.get_color(), mfc="none", ms=7)
            if text not in marked:  # the legend's marker in black: the colour is the trial's, the shape the outcome's
                ax.plot([], [], marker, color="black", mfc="none", ms=7, ls="none", label=text)
            marked.add(text)
    if best_id is not None:
        g = curves[curves["trial_id"] == best_id]
        ax.plot(g[x], g["val_loss"], color="black", lw=2.5, label=f"best: {best_id}")
    history = [h for h in final or [] if isinstance(h, dict) and isinstance(h.get("val_loss"), (int, float))
               and math.isfinite(h["val_loss"]) and isinstance(h.get(x), (int, float))]
    if history:
        ax.plot([h[x] for h in history], [h["val_loss"] for h in history], color="tab:red", lw=2,
                label="final/ (the winner trained for the final budget)")
    kept = curves[~curves["trial_id"].isin(gone)]
    if gone and not kept.empty:
        low, high = kept["val_loss"].min(), kept["val_loss"].max()
        ax.set_ylim(low - 0.05 * (high - low + 1e-9), high + 0.1 * (high - low + 1e-9))
    if history and x == "spend":
        ax.set_xscale("log")  # the final budget is several times the trials': a log axis keeps both readable
        _plain_log_ticks(ax.xaxis)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    ax.set_xlabel(f"spend ({UNIT_NAMES.get(unit, unit)}, training + cooldown)" if x == "spend" else "step")
    ax.set_ylabel("validation loss (nats/token)")
    ax.set_title("learning curves of every trial" + (" and the final model" if history else ""))
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
    for outcome, (marker, text) in ENDED.items():
        o = others[others["outcome"].eq(outcome)]
        if not o.empty:
            ax.scatter(o["n_params"], o["best_val_loss"], marker=marker, color="grey", alpha=0.5,
                       facecolors="none" if marker != "x" else None,
                       label=f"{text} ({len(o)}; spent less, not on the front)")
    # the front: its trials ringed, and a step line carried to the largest model (one trial is a front too)
    xs = [*front["n_params"], d["n_params"].max()]
    ax.step(xs, [*front["best_val_loss"], front["best_val_loss"].iloc[-1]], where="post", color="black", lw=1.5)
    ax.scatter(front["n_params"], front["best_val_loss"], s=90, facecolors="none", edgecolors="black", lw=1.5,
               label=f"Pareto front at equal spend ({len(front)}: no smaller model beats them)")
    ax.set_xscale("log")
    _plain_log_ticks(ax.xaxis)
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
        _hparam_axis(ax, d[c], d["best_val_loss"], c)
        ax.set_xlabel(c)
        ax.set_ylabel("best val_loss")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle(f"{len(d)} trials that finished their budget (equal spend)")
    _save(fig, path)


def _hparam_axis(ax, values: pd.Series, loss: pd.Series, name: str) -> None:
    """One hyperparameter against the loss, on the axis its kind calls for: a choice (optimizer, true/false) or an
    integer with few values (n_layer, batch_size) one column of points per value, ticked with the values
    themselves; a continuous one on its own scale (log for a log-sampled one, ticks as plain numbers, no minor
    labels to overlap)."""
    from matplotlib.ticker import FuncFormatter

    integer = pd.api.types.is_integer_dtype(values) or (pd.api.types.is_numeric_dtype(values)
                                                        and values.dropna().map(float.is_integer).all())
    if not pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values) or (
            integer and values.nunique(dropna=True) <= 8):
        names = sorted(values.dropna().unique(), key=lambda v: (isinstance(v, str), v))
        ax.scatter(values.map({v: i for i, v in enumerate(names)}), loss, alpha=0.8)
        ax.set_xticks(range(len(names)), [_tick(v) for v in names])
        ax.set_xlim(-0.5, len(names) - 0.5)
        return
    ax.scatter(values.astype(float), loss, alpha=0.8)
    if is_log(name):
        ax.set_xscale("log")
        _plain_log_ticks(ax.xaxis)
    else:
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: _tick(v)))
    ax.tick_params(axis="x", labelrotation=30)


def _plain_log_ticks(axis) -> None:
    """A log axis ticked 1, 2, 5 per decade in plain numbers (2,000 and 0.005, not 2x10^3), minor ticks unlabelled;
    a range too narrow for three such ticks (0.007 to 0.013, 26,000 to 110,000 parameters) is ticked finer."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    axis.set_major_locator(_PlainLogLocator())
    axis.set_major_formatter(FuncFormatter(lambda v, _: _tick(v)))
    axis.set_minor_formatter(NullFormatter())


class _PlainLogLocator(matplotlib.ticker.LogLocator):
    """Ticks at 1, 2, 5 x 10^k; where fewer than three fall in view, at 1, 2, 3, 5, 7 x 10^k; then at every digit."""

    SUBS = ((1.0, 2.0, 5.0), (1.0, 2.0, 3.0, 5.0, 7.0), tuple(float(d) for d in range(1, 10)))

    def __init__(self):
        super().__init__(subs=self.SUBS[0], numticks=8)

    def tick_values(self, vmin, vmax):
        lo, hi = sorted((vmin, vmax))
        for subs in self.SUBS:
            self.set_params(subs=subs)
            ticks = super().tick_values(vmin, vmax)
            if sum(lo <= t <= hi for t in ticks) >= 3:
                break
        return ticks


def _tick(v) -> str:
    """A tick's label: 16, 0.003, 3e-05, True."""
    if isinstance(v, str) or "bool" in type(v).__name__:
        return str(v)
    try:
        v = float(v)
    except (TypeError, ValueError):
        return str(v)
    return number(v)


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
    fig, ax = _subplots(figsize=(7, 0.5 * len(names) + 1.8))
    ax.barh(names, [imp[n] for n in names])
    ax.set_xlabel("importance for val_loss (PED-ANOVA)")
    ax.set_title(f"hyperparameter importance\nover {len(done)} COMPLETE trials (finished their budget)", fontsize=11)
    _save(fig, path)


def scaling_law(points: list, choice: dict, path: Path, unit: str = "steps",
                measured: tuple[float, float] | None = None) -> None:
    """Cooldown-rung losses against the decayed copy's spend, coloured by model size, with the fitted law for each
    size (thin) and the predictions for the raw winner and the fit's pick out to the final budget: a trusted fit's
    choice solid; an untrusted fit's predictions dotted, and the title says it is not trusted. `measured`: final/'s
    (spend, val_loss), a star beside the prediction."""
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
    # a trusted fit: the configuration the final budget takes is the solid line, the other dashed. An untrusted fit
    # draws no solid line: its predictions are dotted (the raw winner's bold, as the one trained), the fit's pick
    # faint
    trusted = bool(choice.get("trusted"))
    raw, pick = choice["raw_winner"], choice.get("pick")
    curves = [(raw, dict(ls="--", lw=2, alpha=1.0) if trusted else dict(ls=":", lw=2, alpha=0.8),
               "raw winner" + ("" if trusted else ", kept (the fit's prediction, not trusted)"))]
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
    if measured is not None:  # what final/ really reached, beside what the fit predicted for it
        ax.plot([measured[0]], [measured[1]], marker="*", ms=12, color="tab:red", ls="none",
                label=f"final/: measured {measured[1]:.4f}")
    ax.set_xscale("log")
    _plain_log_ticks(ax.xaxis)
    ax.set_xlabel(f"spend of the decayed copy ({UNIT_NAMES.get(unit, unit)})")
    ax.set_ylabel("cooldown-rung validation loss (nats/token)")
    ax.set_title("scaling law fitted to every cooldown rung (colour: non-embedding parameters)"
                 + ("" if trusted else "\nthe fit is NOT trusted: the raw winner is kept"))
    fig.colorbar(matplotlib.cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, label="non-embedding parameters")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    _save(fig, path)
