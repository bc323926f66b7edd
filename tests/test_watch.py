"""A search you can watch: the final training's progress lines, -v's evaluations and ASHA's decisions, the report's
short table. No Ray needed."""

import logging

import pandas as pd
import pytest
from ray.tune.schedulers import TrialScheduler

from tune import plots, report
from tune.asha import ExplainedASHA
from tune.config import build_parser, config_from_args
from tune.progress import evaluation_line, final_progress_line


def test_final_progress_line_says_spend_loss_speed_and_time_left():
    line = final_progress_line({"step": 100, "spend": 2e12, "elapsed_s": 30.0, "val_loss": 1.91234,
                                "tokens_per_s": 14200.0}, budget=8e12, unit="flops")
    assert line == "final  step 100  spent 2e12 of 8e12 FLOPs ( 25%)  val_loss 1.9123  14.2k tok/s  ETA 1m30s"


def test_evaluation_line():
    line = evaluation_line("a1b2_00003", {"step": 40, "spend": 2e8, "val_loss": 2.1, "train_loss": 2.2,
                                          "tokens_per_s": 9000.0}, "flops")
    assert line == "a1b2_00003 eval    step 40 spent 2e8 FLOPs val_loss 2.1000 train_loss 2.2000 9.0k tok/s"


class _Trial:
    def __init__(self, trial_id):
        self.trial_id = trial_id


class _Messages(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture
def asha_log():
    """The messages tune.asha logs, whatever an entry point run in this process did to logging."""
    logger, handler = logging.getLogger("tune.asha"), _Messages()
    level = logger.level
    logger.addHandler(handler)
    yield logger, handler
    logger.removeHandler(handler)
    logger.setLevel(level)


def test_asha_says_why_it_stops_or_continues_a_trial(asha_log):
    logger, captured = asha_log
    logger.setLevel(logging.DEBUG)
    asha = ExplainedASHA(time_attr="spend", metric="val_loss", mode="min", max_t=8, grace_period=1, reduction_factor=2,
                         unit="steps")
    a, b, c = _Trial("a"), _Trial("b"), _Trial("c")
    for t in (a, b, c):
        asha.on_trial_add(None, t)
    assert asha.on_trial_result(None, a, {"spend": 1, "val_loss": 1.0}) == TrialScheduler.CONTINUE
    assert asha.on_trial_result(None, b, {"spend": 1, "val_loss": 2.0}) == TrialScheduler.STOP
    assert asha.on_trial_result(None, c, {"spend": 1, "val_loss": 0.5}) == TrialScheduler.CONTINUE
    assert asha.on_trial_result(None, c, {"spend": 1.5, "val_loss": 0.4}) == TrialScheduler.CONTINUE  # no new rung
    assert captured.messages == [
        "a ASHA rung at 1 step trained: val_loss 1.0000, first to reach it: continues",
        "b ASHA rung at 1 step trained: val_loss 2.0000 vs cutoff 1.0000 (the best 1/2 of 1 trials there): stopped",
        "c ASHA rung at 1 step trained: val_loss 0.5000 vs cutoff 1.5000 (the best 1/2 of 2 trials there): continues",
    ]


def test_asha_is_quiet_without_verbose(asha_log):
    logger, captured = asha_log
    logger.setLevel(logging.INFO)
    asha = ExplainedASHA(time_attr="spend", metric="val_loss", mode="min", max_t=8, grace_period=1, reduction_factor=2)
    asha.on_trial_add(None, _Trial("a"))
    asha.on_trial_result(None, _Trial("a"), {"spend": 1, "val_loss": 1.0})
    assert not captured.messages


def _trials() -> pd.DataFrame:
    rows = []
    for i, (lr, layers, opt, outcome) in enumerate([(1e-3, 2, "adamw", "finished"), (3e-3, 3, "muon", "finished"),
                                                     (1e-2, 2, "muon", "finished"), (2e-2, 4, "adamw", "pruned")]):
        row = {c: None for c in report.COLUMNS}
        row.update(trial_id=f"t{i}", outcome=outcome, status="x", n_layer=layers, n_head=2, head_dim=8, n_embd=16,
                   learning_rate=lr, optimizer=opt, dropout=0.0, batch_size=8, block_size=16, weight_decay=0.1,
                   n_params=1000 * layers, best_val_loss=2.0 - i / 10, spend=100.0, budget_unit="steps", error="")
        rows.append(row)
    return pd.DataFrame(rows, columns=report.COLUMNS)


def test_all_trials_table_keeps_about_nine_columns():
    df = _trials()
    view = report.all_trials_view(df, None, "steps")  # no search.json: the hyperparameters that vary
    assert list(view.columns) == ["trial_id", "outcome", "n_layer", "lr", "optimizer", "n_params", "val_loss",
                                  "spend (steps, training + cooldown)"]
    config = config_from_args(build_parser().parse_args(["--n-layer", "2:4", "--head-dim", "8,16", "--lr", "1e-3:1e-2",
                                                         "--batch-size", "8", "--results-dir", "/nonexistent"]))
    searched = report.all_trials_view(df, config, "steps").columns
    assert {"trial_id", "outcome", "n_layer", "n_embd", "lr", "n_params", "val_loss"} <= set(searched)
    assert "batch" not in searched and len(searched) <= 10


def test_parallel_coordinates_plot(tmp_path):
    plots.parallel_coordinates(_trials(), tmp_path / "pc.png")
    assert (tmp_path / "pc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(plots.PlotSkipped):
        plots.parallel_coordinates(_trials().head(1), tmp_path / "none.png")
