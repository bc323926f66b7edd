"""tune.ray_state: each new snapshot of Ray's state copied whole from the staging directory, the newest copy put
back over files cut short. No Ray is started."""

import os

from tune.ray_state import STATE_COPY, copy_state, restore_state_copy


def _snapshot(staging, text: str) -> None:
    staging.mkdir(exist_ok=True)
    (staging / "experiment_state-2026-01-01_00-00-00.json").write_text(text)
    (staging / "searcher-state-2026-01-01_00-00-00.pkl").write_bytes(b"\x80\x04N." + text.encode())


def test_a_new_snapshot_is_copied_once_and_replaces_the_older_copy(tmp_path):
    staging, exp = tmp_path / "staging", tmp_path / "exp"
    exp.mkdir()
    _snapshot(staging, '{"n": 1}')
    seen = copy_state(staging, exp, None)
    assert sorted(p.name for p in (exp / STATE_COPY).iterdir()) == ["1"]
    assert copy_state(staging, exp, seen) == seen and sorted(p.name for p in (exp / STATE_COPY).iterdir()) == ["1"]
    _snapshot(staging, '{"n": 22}')
    copy_state(staging, exp, seen)
    assert sorted(p.name for p in (exp / STATE_COPY).iterdir()) == ["2"]
    assert (exp / STATE_COPY / "2" / "experiment_state-2026-01-01_00-00-00.json").read_text() == '{"n": 22}'


def test_the_newest_copy_is_put_back_over_a_cut_file(tmp_path):
    staging, exp = tmp_path / "staging", tmp_path / "exp"
    exp.mkdir()
    assert restore_state_copy(exp) is None
    _snapshot(staging, '{"n": 1}')
    copy_state(staging, exp, None)
    (exp / "experiment_state-2026-01-01_00-00-00.json").write_text('{"n"')  # a kill during Ray's own copy
    assert restore_state_copy(exp) == exp / STATE_COPY / "1"
    assert (exp / "experiment_state-2026-01-01_00-00-00.json").read_text() == '{"n": 1}'
    assert (exp / "searcher-state-2026-01-01_00-00-00.pkl").is_file()
    assert not [p for p in os.listdir(exp) if p.endswith(".restoring")]


def test_a_later_runs_cut_files_are_set_aside(tmp_path):
    """A resumed run killed during Ray's first copy of its own state: its files (named by its start) are cut, and the
    copy holds the first run's snapshot; Ray must read that set whole, not the later run's newest names."""
    staging, exp = tmp_path / "staging", tmp_path / "exp"
    exp.mkdir()
    _snapshot(staging, '{"n": 1}')
    copy_state(staging, exp, None)
    later = exp / "experiment_state-2026-01-02_00-00-00.json"
    later.write_text("")
    restore_state_copy(exp)
    assert not later.exists() and later.with_name(later.name + ".cut").is_file()
    assert sorted(p.name for p in exp.glob("experiment_state-*.json")) == ["experiment_state-2026-01-01_00-00-00.json"]
