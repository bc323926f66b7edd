"""Issue 30's fifth finding: plots a reader trusts. Integer hyperparameters were drawn with fractional ticks
(n_layer 2.0, 2.2, ...; batch_size 20/25/30 where the choices are 16 and 32), log-scale labels overlapped, the
importance title was clipped, the Pareto front's legend entry had no visible line, pruned and out-of-time trials
shared one marker, and final/ was missing from the learning curves."""

import pandas as pd
import pytest

from tune import plots


@pytest.fixture
def figures(monkeypatch):
    figs = []
    def save(fig, path):
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        FigureCanvasAgg(fig)
        fig.tight_layout()  # as plots._save does
        fig.canvas.draw()
        figs.append(fig)

    monkeypatch.setattr(plots, "_save", save)
    return figs


def _labels(ax) -> list[str]:
    return [t.get_text() for t in ax.get_xticklabels() if t.get_text()]


def _trials() -> pd.DataFrame:
    rows = [(2, 16, 3e-3, "adamw", "finished", 1.9), (3, 32, 5e-3, "muon", "finished", 1.8),
            (2, 32, 8e-3, "muon", "finished", 1.85), (3, 16, 1.2e-2, "adamw", "finished", 2.0),
            (2, 16, 4e-3, "muon", "pruned", 2.2), (3, 32, 6e-3, "adamw", "out_of_time", 2.1)]
    return pd.DataFrame([{"trial_id": f"t{i}", "n_layer": n, "batch_size": b, "learning_rate": lr, "optimizer": o,
                          "outcome": out, "best_val_loss": v, "n_params": 1000 * n * (b // 16), "spend": 100.0}
                         for i, (n, b, lr, o, out, v) in enumerate(rows)])


def test_integer_and_choice_axes_tick_their_own_values(figures, tmp_path):
    plots.loss_vs_hparams(_trials(), tmp_path / "hp.png")
    axes = {ax.get_xlabel(): ax for ax in figures[0].axes if ax.get_xlabel()}
    assert _labels(axes["n_layer"]) == ["2", "3"]
    assert _labels(axes["batch_size"]) == ["16", "32"]
    assert _labels(axes["optimizer"]) == ["adamw", "muon"]
    lr = axes["learning_rate"]
    assert lr.get_xscale() == "log" and not [t for t in lr.get_xticklabels(minor=True) if t.get_text()]
    assert all("e+" not in t and "$" not in t for t in _labels(lr)), _labels(lr)


def test_learning_curves_mark_each_early_end_and_draw_the_final_model(figures, tmp_path):
    trials = _trials()
    curves = pd.DataFrame([{"trial_id": t, "spend": s, "step": s, "val_loss": 3.0 - s / 100 - i / 20}
                           for i, t in enumerate(trials["trial_id"]) for s in (25, 50, 100)])
    final = [{"step": s, "spend": s, "val_loss": 1.7 - s / 1000} for s in (100, 400, 900)]
    plots.learning_curves(curves, trials, tmp_path / "lc.png", "steps", final)
    ax = figures[0].axes[0]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "pruned by ASHA" in legend and "stopped by the time budget" in legend
    assert any(t.startswith("final/") for t in legend) and any(t.startswith("best: ") for t in legend)
    markers = {ln.get_marker() for ln in ax.get_lines() if ln.get_label() in ("pruned by ASHA", "stopped by the time budget")}
    assert markers == {"x", "s"}
    assert "training + cooldown" in ax.get_xlabel()


def test_the_pareto_front_is_visible_even_of_one_trial(figures, tmp_path):
    one = _trials().iloc[[0, 4]]  # one finished trial (the front) and one pruned
    plots.loss_vs_params(one, tmp_path / "front.png")
    ax = figures[0].axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any(t.startswith("Pareto front") for t in labels)
    front = [c for c in ax.collections if c.get_label().startswith("Pareto front")]
    assert front and len(front[0].get_offsets()) == 1


def test_the_importance_title_fits_its_figure(figures, tmp_path):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="s", storage=f"sqlite:///{tmp_path / 'optuna.db'}",
                                sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(lambda t: t.suggest_float("dropout", 0, 0.2) + t.suggest_int("n_layer", 1, 4), n_trials=8)
    import types
    plots.importance(tmp_path, types.SimpleNamespace(name="s"), tmp_path / "imp.png")
    fig = figures[0]
    title = fig.axes[0].title
    box = title.get_window_extent(fig.canvas.get_renderer())  # drawn at the figure's own size, as saved
    assert box.x0 >= 0 and box.x1 <= fig.bbox.width, (box, fig.bbox.width)


def test_plots_take_the_categorical_optimizer(tmp_path):
    """loss_vs_hparams draws a string column; the importance plot ranks the optimizer beside numbers."""
    import types

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="s", storage=f"sqlite:///{tmp_path / 'optuna.db'}",
                                sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(lambda t: (t.suggest_categorical("optimizer", ["adamw", "muon"]) == "adamw")
                   + 0.1 * t.suggest_float("dropout", 0, 0.2), n_trials=12)
    plots.importance(tmp_path, types.SimpleNamespace(name="s"), tmp_path / "imp.png")
    assert (tmp_path / "imp.png").stat().st_size > 0
    rows = [{"outcome": "finished", "optimizer": t.params["optimizer"], "dropout": t.params["dropout"],
             "best_val_loss": t.value, "spend": 10.0, "n_params": 1000} for t in study.trials]
    plots.loss_vs_hparams(pd.DataFrame(rows), tmp_path / "hp.png")
    assert (tmp_path / "hp.png").stat().st_size > 0


@pytest.mark.parametrize("lo, hi, expect", [(0.0065, 0.014, ["0.007", "0.008", "0.009", "0.01"]),
                                            (26_000, 110_000, ["30,000", "50,000", "70,000", "100,000"]),
                                            (0.001, 0.1, ["0.001", "0.002", "0.005", "0.01", "0.02", "0.05", "0.1"])])
def test_a_narrow_log_range_still_gets_three_labelled_ticks(lo, hi, expect):
    """A log axis spanning less than a decade had one or two labels (lr 0.007-0.013: only '0.01'; the parameters
    of a search 26,000-110,000: only 50,000 and 100,000, the smallest model unlabelled)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4, 3))
    ax = fig.add_subplot()
    ax.set_xscale("log")
    ax.set_xlim(lo, hi)
    plots._plain_log_ticks(ax.xaxis)
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig).draw()
    shown = [t.get_text() for t in ax.get_xticklabels() if t.get_text() and lo <= t.get_position()[0] <= hi]
    assert shown == expect
