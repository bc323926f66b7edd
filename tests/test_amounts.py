"""Issue 30's third finding: amounts printed as `3e+11flops`, `6.29597e+11flops`, `30000000000.0` (in --help) and
`step 356.0`, and "spend" meaning training alone in the progress lines but training and cooldown in trials.csv. Now
amounts read as people write them (and are read back), and a trial's spend is one agreed total everywhere."""

import math
import re

import pandas as pd
import pytest

from nanogpt.amounts import format_amount, number, parse_amount, parse_duration
from nanogpt.errors import UserError


@pytest.mark.parametrize("amount, unit, text", [
    (3e11, "flops", "3e11 FLOPs"), (6.29597e11, "flops", "6.3e11 FLOPs"), (3e10, "flops", "3e10 FLOPs"),
    (2000, "steps", "2,000 steps"), (356.0, "steps", "356 steps"), (1, "steps", "1 step"),
    (512_000, "tokens", "512,000 tokens"), (5.12e6, "tokens", "5.12e6 tokens"),
    (900, "s", "15 min"), (45, "s", "45 s"), (150, "s", "2.5 min"), (9000, "s", "2.5 h"),
])
def test_amounts_for_people_and_back(amount, unit, text):
    assert format_amount(amount, unit) == text
    back, back_unit = parse_amount(text, "--trial-budget")
    assert back_unit == unit and math.isclose(back, float(f"{amount:.3g}"), rel_tol=1e-9)


def test_the_short_forms_still_parse_and_bad_ones_say_why():
    assert parse_amount("8e12flops", "--x") == (8e12, "flops")
    assert parse_amount("2000", "--x", "steps") == (2000, "steps")
    assert parse_amount("8e12 FLOPs", "--x", "flops") == (8e12, "flops")
    assert parse_duration("15m") == parse_duration("15 min") == 900 and parse_duration("1.5h") == 5400
    for bad, why in [("1,5steps", "comma only between thousands"), ("5parsecs", "unit"), ("3e11flops", "one unit")]:
        with pytest.raises(UserError, match=why):
            parse_amount(bad, "--x", "steps")
    assert number(3e11) == "3e11" and number(2e-5) == "2e-5" and number(0.003) == "0.003" and "e+" not in number(1e20)
    assert number(1e-4) == "0.0001" and number(0.00015) == "0.00015"  # was '0.0001e0' (a log axis's tick)


def test_help_shows_amounts_as_people_write_them():
    from tune.config import build_parser

    text = build_parser().format_help()
    assert "3e10 FLOPs" in text and "30000000000.0" not in text and not re.search(r"\de\+\d", text)


def test_spend_is_training_and_cooldown_everywhere():
    """The progress line said `spent 2.3e+11flops` (training alone) where trials.csv said 3e11 (with the cooldown
    branches) for the same trial: both now show the total the budget counts; train_spend is training alone."""
    from tune.progress import evaluation_line
    from tune.report import CURVE_COLS, all_trials_view

    r = {"step": 40, "spend": 2.3e11, "total_spend": 3e11, "val_loss": 2.1, "train_loss": 2.2, "tokens_per_s": 9e3}
    assert " spent 3e11 FLOPs " in evaluation_line("t", r, "flops")
    assert {"spend", "train_spend"} <= set(CURVE_COLS)
    df = pd.DataFrame([{"trial_id": "t", "outcome": "finished", "n_params": 228_000, "best_val_loss": 1.8, "spend": 3e11,
                        "n_layer": 2}])
    assert "spend (FLOPs, training + cooldown)" in all_trials_view(df, None, "flops").columns
