"""benchmarks/equal_flops.py's count of what a search trained: trials, ladder runs and the final training, each
run's work counted once however runs continue one another. Its --smoke-test runs every part."""

import json

from benchmarks.equal_flops import added_spend, recipe_iters, total_flops


def _rows(steps_totals):
    return [{"step": s, "total_spend": t} for s, t in steps_totals]


def _trial(exp, tid, rows):
    d = exp / f"trial_{tid}"
    d.mkdir(parents=True)
    (d / "result.json").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 9, "tot')  # cut-off line


def _run(d, history, **meta):
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps({"history": history, **meta}))


def test_a_continued_run_counts_only_what_it_trained_past_its_parent():
    hist = _rows([(10, 100.0), (20, 250.0), (30, 400.0), (40, 600.0)])
    assert added_spend(hist, 20) == 350.0  # the parent's rows (to step 20) carried over by the restore
    assert added_spend(hist, 25) == 350.0  # the parent's last row between two of the run's
    assert added_spend(hist, None) == 600.0  # from scratch: all of it
    assert added_spend([], 20) == 0.0


def test_trials_ladder_and_final_each_counted_once(tmp_path):
    _trial(tmp_path, "a", _rows([(10, 100.0), (20, 260.0)]))  # its end branch in its last total
    _trial(tmp_path, "b", _rows([(10, 110.0)]))  # pruned
    _run(tmp_path / "ladder" / "a", _rows([(10, 100.0), (20, 240.0), (40, 700.0)]))  # from a's stable checkpoint
    _run(tmp_path / "ladder" / "b", _rows([(10, 110.0), (40, 650.0)]))
    _run(tmp_path / "final", _rows([(10, 100.0), (20, 240.0), (40, 700.0), (80, 1500.0)]), continued_from="a",
         chosen_by={"by": "ladder"})
    got = total_flops(tmp_path)
    assert got["trials"] == 370.0
    assert got["ladder"] == (700.0 - 240.0) + (650.0 - 110.0)  # a's end branch (260 - 240) is in the trials'
    assert got["final"] == 1500.0 - 700.0  # beyond the ladder run it continued
    assert got["total"] == got["trials"] + got["ladder"] + got["final"]


def test_without_a_ladder_the_final_counts_past_its_trial(tmp_path):
    _trial(tmp_path, "a", _rows([(10, 100.0), (20, 260.0)]))
    _run(tmp_path / "final", _rows([(10, 100.0), (20, 240.0), (80, 1000.0)]), continued_from="a",
         chosen_by={"by": "trials"})
    assert total_flops(tmp_path) == {"trials": 260.0, "ladder": 0.0, "final": 760.0, "total": 1020.0}


def test_nanogpt_never_trains_less_than_ours():
    per_iter = 12 * 64 * 1000.0
    assert recipe_iters(per_iter * 250, 1000.0) == 250
    assert recipe_iters(per_iter * 251, 1000.0) == 500
    assert recipe_iters(1.0, 1000.0) == 250
