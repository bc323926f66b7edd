"""A final training cut short (--final-budget auto stopped by the time budget mid-decay) never silently wins: the
terminal, report.md and the closing probe say so, and the search answers with best/ where final/ is worse or undecayed."""

import json

from tune.results import final_cut_short, final_or_best
from tune.sections import _final_origin


def _checkpoint(d, status, step, val_loss, **meta):
    d.mkdir(parents=True)
    (d / "model.pt").write_bytes(b"weights")
    (d / "config.json").write_text(json.dumps({"status": status, "step": step, "history": [{"val_loss": val_loss}],
                                               "train": {"cooldown_frac": 0.2, "schedule": "wsd"}, **meta}))


def test_a_final_training_cut_short_and_worse_than_best_never_wins(tmp_path):
    """The issue's case: final/ stopped at step 270 of its plan, mid-decay, scoring 0.5668 against best/'s 0.5385:
    the closing probe and the report used final/ with no word. Now final/ is not the answer, and the lines say why."""
    _checkpoint(tmp_path / "best", "finished", 217, 0.5385)
    _checkpoint(tmp_path / "final", "time_budget", 270, 0.5668, continued_from="abc")
    use, why = final_or_best(tmp_path)
    assert use == tmp_path / "best"
    assert why.startswith("final/ is not used: the time budget stopped it at step 270") and "0.5668" in why
    assert "best/'s 0.5385" in why
    meta = json.loads((tmp_path / "final" / "config.json").read_text())
    origin = _final_origin(meta)
    assert "then decayed over the last 20%" not in origin and "had not finished decaying" in origin


def test_a_finished_final_training_better_than_best_is_the_answer(tmp_path):
    _checkpoint(tmp_path / "best", "finished", 217, 0.5385)
    _checkpoint(tmp_path / "final", "finished", 714, 0.51, continued_from="abc")
    assert final_or_best(tmp_path) == (tmp_path / "final", None)
    meta = json.loads((tmp_path / "final" / "config.json").read_text())
    assert final_cut_short(meta) is None and "then decayed over the last 20% of the final budget" in _final_origin(meta)


def test_a_final_training_cut_short_says_so_even_when_it_scores_better(tmp_path):
    _checkpoint(tmp_path / "best", "finished", 217, 0.60)
    _checkpoint(tmp_path / "final", "time_budget", 270, 0.55)
    use, why = final_or_best(tmp_path)
    assert use == tmp_path / "final" and "before its planned end" in why


def test_a_squeezed_decay_is_said_in_the_report(tmp_path):
    """A final training whose steps slowed in its decay ends decayed (nanogpt.train squeezes the rest of the decay):
    it is the answer, and the report says where its decay was squeezed rather than 'the last 20%' alone."""
    _checkpoint(tmp_path / "best", "finished", 217, 0.5385)
    _checkpoint(tmp_path / "final", "finished", 290, 0.52, continued_from="abc")
    meta = json.loads((tmp_path / "final" / "config.json").read_text())
    (tmp_path / "final" / "config.json").write_text(json.dumps({**meta, "decay_anchor": [260, 0.004]}))
    assert final_or_best(tmp_path) == (tmp_path / "final", None)
    origin = _final_origin(json.loads((tmp_path / "final" / "config.json").read_text()))
    assert "squeezed from step 260 to step 290 to end within the time budget" in origin
