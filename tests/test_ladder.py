"""The ladder (tune.ladder, --ladder on): its plan, its choice near the final budget, the horizon learning rate, exact
resume mid-ladder, a time budget met, and its record in final/config.json and report.md."""

import json
import time

import pandas as pd
import pytest

from conftest import TINY, assert_one_line_error, run_cli
from nanogpt.errors import UserError
from tune import ladder
from tune.config import build_parser, config_from_args


def test_levels_are_a_factor_apart_the_last_at_the_final_budget_over_rf():
    # as many levels as the finished trials fill, the highest ones: the last comparison at final / rf
    assert ladder.levels(200, 14, 2, 4, "steps") == [(50.0, 4), (100.0, 2)]
    assert ladder.levels(9e9, 1e8, 3, 9, "flops") == [(1e9, 9), (3e9, 3)]
    assert ladder.levels(9e9, 1e8, 3, 5, "flops") == [(1e9, 5), (3e9, 3)]  # fewer finished: fewer at the bottom
    assert ladder.levels(30, 14, 3, 9, "steps") == []  # final / rf is below the trials' spend: no comparison left
    assert ladder.levels(100, 14, 3, 1, "steps") == []  # one finished trial: nothing to compare
    assert ladder.levels(130, 14, 3, 9, "steps") == [(44.0, 3)]  # whole steps, never below final / rf
    # the first level a factor rf above the trials: at 34 steps (2.4x their 14) it would repeat their comparison
    assert ladder.levels(100, 14, 3, 9, "steps") == [] and ladder.levels(126, 14, 3, 9, "steps") == [(42.0, 3)]


def test_horizon_learning_rate():
    assert ladder.horizon_lr(1e-3, 1e8, 1e9, 0.125) == pytest.approx(1e-3 * 10 ** -0.125)  # x0.75 per 10x
    assert ladder.horizon_lr(1e-3, 1e8, 1e9, 0.0) == 1e-3


def test_auto_final_budget_is_the_largest_that_fits():
    ents = [{"spend": 14, "pace": p, "step": 1} for p in (10, 8, 12, 9)]
    final = ladder.auto_final(60, ents, 2, 0.2, 2, "steps")
    assert ladder.plan_seconds(final, ents, 2, 0.2, 2, "steps") <= 60 * (1 - ladder.PLAN_MARGIN)
    assert ladder.plan_seconds(final + 1, ents, 2, 0.2, 2, "steps") > 60 * (1 - ladder.PLAN_MARGIN)
    assert ladder.auto_final(5, ents, 2, 0.2, 2, "steps") is None  # not even one more step


def test_the_last_run_is_planned_at_the_nodes_pace():
    """The ladder's last run trains on a whole node: priced at its trial's pace, the final budget was planned 2.7x
    short of what it reached (5.43e12 FLOPs against 1.48e13, benchmarks/RESULTS.md), and every level sat too low."""
    ents = [{"spend": 14, "pace": p, "step": 1} for p in (10, 8, 12, 9)]
    one, two = (ladder.plan_seconds(400, ents, 2, 0.2, 2, "steps", x) for x in (1.0, 2.0))
    levels = one - (400 - 200) / 10 - ladder.LEVEL_OVERHEAD_S  # the levels (to 100 and 200) at the trials' pace
    assert two == pytest.approx(levels + (400 - 200) / 20 + ladder.LEVEL_OVERHEAD_S)  # the last run at twice it
    slow, fast = ladder.auto_final(60, ents, 2, 0.2, 2, "steps"), ladder.auto_final(60, ents, 2, 0.2, 2, "steps", 2.0)
    assert fast > slow and ladder.plan_seconds(fast, ents, 2, 0.2, 2, "steps", 2.0) <= 60 * (1 - ladder.PLAN_MARGIN)


def test_ladder_flags_are_checked_before_anything(tmp_path):
    def config(*args):
        return config_from_args(build_parser().parse_args([*TINY, "--max-steps", "20", "--results-dir",
                                                           str(tmp_path), *args]))
    with pytest.raises(UserError, match="--schedule wsd"):
        config("--ladder", "on", "--final-budget", "100steps")  # TINY is cosine
    with pytest.raises(UserError, match="--final-budget"):
        config("--ladder", "on", "--schedule", "wsd")
    c = config("--ladder", "on", "--schedule", "wsd", "--final-budget", "300steps", "--horizon-lr-beta", "0.2")
    assert c.ladder == "on" and c.horizon_lr_beta == 0.2
    assert ladder.announce(c).startswith("ladder: the best 3 to 100 steps, then the best to 300 steps")


def _state(losses_at_trial: dict[str, float]) -> dict:
    trials = pd.DataFrame([{"trial_id": t, "outcome": "finished", "train_spend": 14.0, "seconds": 1.0, "steps": 14,
                            "last_val_loss": v, "n_layer": 1, "n_head": 2, "head_dim": 8, "dropout": 0.0,
                            "learning_rate": 1e-3, "batch_size": 4, "block_size": 16, "weight_decay": 0.1,
                            "optimizer": "adamw"} for t, v in sorted(losses_at_trial.items(), key=lambda kv: kv[1])])
    return trials


def _fake_levels(curves: dict[str, dict[float, float]], calls: list, stop_after: int | None = None):
    """run_level with made-up branch losses: trial -> spend -> loss; raises after `stop_after` runs."""
    class Stop(Exception):
        pass

    def run_level(state, step, todo, on_result):
        for t in todo:
            if stop_after is not None and len(calls) >= stop_after:
                raise Stop
            calls.append((t, step["spend"]))
            on_result(t, curves[t][step["spend"]])
    return run_level, Stop


@pytest.fixture
def planned(tmp_path):
    from tune.config import SearchConfig

    config = config_from_args(build_parser().parse_args(
        [*TINY, "--max-steps", "20", "--schedule", "wsd", "--ladder", "on", "--final-budget", "200steps",
         "--reduction-factor", "2", "--results-dir", str(tmp_path), "--name", "l"]))
    assert isinstance(config, SearchConfig)
    trials = _state({"a": 1.0, "b": 1.1, "c": 1.2, "d": 1.3, "e": 1.4})
    exp = tmp_path / "l"
    exp.mkdir()
    return exp, ladder.new_state(config, trials, None, 2)


# the small model "a" leads at the trial budget; "c", larger, leads from 50 steps on
CURVES = {"a": {50.0: 0.9, 100.0: 0.85}, "b": {50.0: 0.95, 100.0: 0.9}, "c": {50.0: 0.8, 100.0: 0.7},
          "d": {50.0: 1.0, 100.0: 0.95}}


def test_ladder_picks_the_trial_the_later_spend_favours(planned):
    exp, state = planned
    assert list(state["entrants"]) == ["a", "b", "c", "d"] and state["raw_winner"] == "a"  # the best 4 of 5
    assert [(s["spend"], s["n"]) for s in state["steps"]] == [(50.0, 4), (100.0, 2)]
    calls = []
    winner = ladder.climb(exp, state, _fake_levels(CURVES, calls)[0])
    assert winner == "c" != state["raw_winner"]
    assert [s["kept"] for s in state["steps"]] == [["c", "a"], ["c"]]
    assert calls == [(t, 50.0) for t in "abcd"] + [("c", 100.0), ("a", 100.0)]
    rec = ladder.record(state)
    assert rec[0]["spend"] == 50.0 and rec[0]["losses"]["c"] == 0.8 and rec[1]["kept"] == ["c"]
    # the peak learning rate for the horizon: (200 / 14)^-0.125 of the trial's
    assert state["entrants"]["c"]["lr"] == pytest.approx(1e-3 * (200 / 14) ** -0.125)


def test_the_ladder_takes_the_best_of_each_model_before_a_second_of_any(tmp_path):
    """Entrants: the best trial of each model first (ranks swap between sizes, not between one model's learning
    rates), then the rest by loss; the trial winner stays the best trial."""
    config = config_from_args(build_parser().parse_args(
        [*TINY, "--max-steps", "20", "--schedule", "wsd", "--ladder", "on", "--final-budget", "200steps",
         "--reduction-factor", "2", "--results-dir", str(tmp_path), "--name", "l"]))
    trials = _state({"a": 1.0, "b": 1.1, "c": 1.2, "d": 1.3, "e": 1.4})
    trials.loc[trials["trial_id"].eq("d"), "n_layer"] = 2  # another model, fourth at the trial budget
    state = ladder.new_state(config, trials, None, 2)
    assert list(state["entrants"]) == ["a", "d", "b", "c"] and state["raw_winner"] == "a"
    assert ladder.entrant_order([{"hp": {"n_layer": 1}}])[0] == {"hp": {"n_layer": 1}}


def test_a_ladder_stopped_midway_continues_exactly(planned):
    exp, state = planned
    calls = []
    run_level, Stop = _fake_levels(CURVES, calls, stop_after=5)  # stopped inside the second level
    with pytest.raises(Stop):
        ladder.climb(exp, state, run_level)
    resumed = ladder.load_state(exp)  # what --resume reads
    more = []
    assert ladder.climb(exp, resumed, _fake_levels(CURVES, more)[0]) == "c"
    assert more == [("a", 100.0)]  # nothing trained twice
    whole = []
    fresh = ladder.new_state(*_planned_args(exp))
    ladder.climb(exp, fresh, _fake_levels(CURVES, whole)[0])
    assert calls + more == whole and ladder.record(resumed) == ladder.record(fresh)


def _planned_args(exp):
    from tune.config import SearchConfig

    config = config_from_args(build_parser().parse_args(
        [*TINY, "--max-steps", "20", "--schedule", "wsd", "--ladder", "on", "--final-budget", "200steps",
         "--reduction-factor", "2", "--results-dir", str(exp.parent), "--name", "l2"]))
    assert isinstance(config, SearchConfig)
    return config, _state({"a": 1.0, "b": 1.1, "c": 1.2, "d": 1.3, "e": 1.4}), None, 2


def test_a_ladder_run_stopped_midway_ends_where_an_unstopped_one_does(tmp_path, data, one_thread, monkeypatch):
    """ladder_entry checkpoints at its evaluations: stopped and run again it continues from there, and two levels
    run one after the other end exactly where one run straight to the second level's spend ends (a branch leaves
    the run as it was)."""
    from nanogpt.train import Trainer
    from tune.space import Hparams

    d, tok = data
    config = config_from_args(build_parser().parse_args(
        [*TINY, "--max-steps", "12", "--eval-interval", "4", "--grace-period", "4", "--schedule", "wsd",
         "--results-dir", str(tmp_path), "--name", "x"]))
    hp = Hparams(n_layer=1, n_head=2, head_dim=8, dropout=0.0, learning_rate=3e-3, batch_size=4, block_size=16,
                 weight_decay=0.1, **({"optimizer": "adamw"} if "optimizer" in Hparams.__dataclass_fields__ else {}))
    hp_dict = {k: getattr(hp, k) for k in Hparams.__dataclass_fields__}
    trial = Trainer(hp.model_config(tok.vocab_size), config.trial_train_config(hp), d, tok)
    trial.run()
    trial.save(tmp_path / "trial")
    start = {f.name: f.read_bytes() for f in (tmp_path / "trial").iterdir() if f.is_file()}
    warmup = json.loads(start["config.json"])["warmup_steps"]
    lr = dict(hp_dict, learning_rate=2e-3)  # the horizon's

    def entry(out, spend):
        return ladder.ladder_entry(lr, d, tok.to_dict(), config, start, str(tmp_path / out), spend, warmup)

    straight = entry("straight", 40)
    first, second = entry("two", 20), entry("two", 40)
    assert first["step"] == 20 and second["step"] == 40
    assert second["val_loss"] == pytest.approx(straight["val_loss"], rel=1e-6)
    assert entry("two", 40) == second  # done already: its record, nothing trained

    class Stop(Exception):
        pass

    real, saves = ladder._save_progress, []

    def stop_on_third(out, trainer, record=None):
        real(out, trainer, record)
        saves.append(trainer.step)
        if len(saves) == 3:
            raise Stop

    monkeypatch.setattr(ladder, "_save_progress", stop_on_third)
    with pytest.raises(Stop):
        entry("stopped", 40)
    monkeypatch.setattr(ladder, "_save_progress", real)
    again = entry("stopped", 40)
    assert again["val_loss"] == pytest.approx(straight["val_loss"], rel=1e-6) and again["step"] == 40


LADDER_SEARCH = [*TINY, "--num-samples", "4", "--max-steps", "20", "--eval-interval", "4", "--grace-period", "4",
                 "--reduction-factor", "2", "--scheduler", "fifo", "--schedule", "wsd", "--ladder", "on",
                 "--lr", "1e-3:3e-2", "--seed", "2"]


def test_search_with_a_ladder_records_it_in_final_and_the_report(tmp_path):
    proc = run_cli("tune.search", *LADDER_SEARCH, "--final-budget", "200steps", "--results-dir", str(tmp_path),
                   "--name", "lad")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    exp = tmp_path / "lad"
    assert "ladder: the best 4 to 50 steps, then the best 2 to 100 steps, then the best to 200 steps" in proc.stdout
    state = json.loads((exp / "ladder.json").read_text())
    meta = json.loads((exp / "final" / "config.json").read_text())
    assert [s["spend"] for s in meta["ladder"]] == [50.0, 100.0]
    assert len(meta["ladder"][0]["losses"]) == 4 and len(meta["ladder"][0]["kept"]) == 2
    assert meta["ladder"][1]["kept"] == [state["winner"]] == [meta["continued_from"]]
    assert meta["step"] == 200 and meta["chosen_by"]["by"] == "ladder"
    assert meta["train"]["learning_rate"] == pytest.approx(meta["horizon_lr"]["lr"])
    assert meta["horizon_lr"]["lr"] < meta["horizon_lr"]["trial_lr"]
    # every ladder level's losses are the branch losses the runs recorded
    winner_step = json.loads((exp / "ladder" / state["winner"] / "ladder_step.json").read_text())
    assert winner_step["spend"] == 100.0 and meta["ladder"][1]["losses"][state["winner"]] == winner_step["val_loss"]
    report = (exp / "report.md").read_text()
    assert "## Ladder" in report and "plots/ladder.png" in report and (exp / "plots" / "ladder.png").is_file()

    # --resume with the last level's record taken away (a stop before it was saved): it is not trained again
    del state["steps"][1]["losses"][state["winner"]]
    state["steps"][1]["kept"], state["winner"] = None, None
    (exp / "ladder.json").write_text(json.dumps(state))
    final_before = (exp / "final" / "model.pt").read_bytes()
    import shutil

    shutil.rmtree(exp / "final")
    mtime = (exp / "ladder" / meta["continued_from"] / "model.pt").stat().st_mtime
    proc = run_cli("tune.search", "--resume", "--name", "lad", "--results-dir", str(tmp_path), "--no-report")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ladder resumed" in proc.stdout
    assert (exp / "ladder" / meta["continued_from"] / "model.pt").stat().st_mtime == mtime
    again = json.loads((exp / "final" / "config.json").read_text())
    assert again["ladder"] == meta["ladder"] and (exp / "final" / "model.pt").read_bytes() != b""
    assert len(final_before) > 0


def test_a_ladder_under_a_time_budget_meets_it(tmp_path):
    """--time-budget T --final-budget auto: the trials get half of T; the ladder, planned from their pace, and its last
    run fit what is left (on the search's clock: Ray's start and end and the report are the command's own)."""
    budget = 150  # the trials half, the ladder what is left: at 100 s a loaded machine (load 5) finished no trial
    proc = run_cli("tune.search", *LADDER_SEARCH, "--num-samples", "6", "--time-budget", str(budget),
                   "--final-budget", "auto", "--no-report", "--results-dir", str(tmp_path), "--name", "t")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    exp = tmp_path / "t"
    assert (exp / "final" / "model.pt").is_file(), proc.stdout
    meta = json.loads((exp / "final" / "config.json").read_text())
    assert meta["chosen_by"]["by"] == "ladder" and "horizon_lr" in meta
    state = json.loads((exp / "ladder.json").read_text())
    (run,) = state["runs"]
    # the ladder gets what the search left: at least the final share (half), more where the trials ended early
    assert 0 < run["given_s"] <= budget and run["took_s"] <= run["given_s"] + 5, proc.stdout
    assert "ladder: the best" in proc.stdout
    # issue 30: what the time budget covers is said before the search starts: the command from its start (the
    # tokenizer too), and the report outside it
    assert "for the whole command from its start (the data and tokenizer took" in proc.stdout
    assert "the report after it is not counted" in proc.stdout
