"""benchmarks/regret.py's choices, without training: which trials the oracle continues and which searches it takes.
Its --smoke-test runs every part (a search, the oracle's runs, the evaluator)."""

from types import SimpleNamespace

import pandas as pd
import pytest

from benchmarks.regret import check_search, oracle_trials


def _trials() -> pd.DataFrame:
    """The report's table, sorted as report.load sorts it: pruned trials between finished ones."""
    return pd.DataFrame({"trial_id": ["a", "p", "b", "c", "d"],
                         "outcome": ["finished", "pruned", "finished", "finished", "finished"],
                         "best_val_loss": [1.0, 1.1, 1.2, 1.3, 1.4]})


def test_the_oracle_takes_the_top_finished_trials_and_the_search_pick():
    top = oracle_trials(_trials(), 2, "a")
    assert list(top["trial_id"]) == ["a", "b"] and list(top["rank"]) == [1, 2]  # ranked among finished trials
    assert list(oracle_trials(_trials(), 2, "d")["trial_id"]) == ["a", "b", "d"]  # the ladder's pick, rank 4
    assert list(oracle_trials(_trials(), 2, "d")["rank"]) == [1, 2, 4]
    unranked = oracle_trials(_trials(), 2, "p")  # a pruned trial the scaling law picked: added, no rank
    assert list(unranked["trial_id"]) == ["a", "b", "p"] and pd.isna(unranked["rank"].iloc[-1])


@pytest.mark.parametrize("change", [dict(schedule="cosine"), dict(final_from="scratch"), dict(final_auto=True),
                                    dict(final_budget=None)])
def test_the_oracle_needs_a_fixed_final_budget_continued_under_wsd(change):
    """check_search reads these fields of SearchConfig (a search.json)."""
    fields = dict(schedule="wsd", final_from="continue", final_auto=False, final_budget=8e12, experiment_dir="r/x")
    check_search(SimpleNamespace(**fields))
    with pytest.raises(SystemExit, match="--final-budget AMOUNT --schedule wsd --final-from continue"):
        check_search(SimpleNamespace(**{**fields, **change}))
