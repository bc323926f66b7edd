"""The searchers after a crash: a trial whose end the study (SQLite, written at once) already holds, but that Ray's
older snapshot of the searcher does not, is rerun on --resume; neither searcher may tell or report to it again."""

from __future__ import annotations

import optuna
import pytest

from tune.searcher import ResumableOptunaSearch, TruthfulOptunaSearch


def _searcher(cls, db):
    return cls(space={"lr": optuna.distributions.FloatDistribution(1e-3, 1e-1, log=True)}, metric="val_loss",
               mode="min", sampler=optuna.samplers.RandomSampler(seed=0), study_name="s",
               storage=optuna.storages.RDBStorage(f"sqlite:///{db}"))


@pytest.mark.parametrize("cls", [TruthfulOptunaSearch, ResumableOptunaSearch])
def test_a_trial_rerun_after_a_crash_is_not_told_twice(tmp_path, cls):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    searcher = _searcher(cls, tmp_path / "optuna.db")
    assert searcher.suggest("t1") is not None
    searcher.on_trial_result("t1", {"val_loss": 2.0, "spend": 10, "training_iteration": 1})
    snapshot = tmp_path / "searcher-state.pkl"
    searcher.save(str(snapshot))  # Ray's last snapshot before the crash: t1 still running
    searcher.on_trial_complete("t1", {"val_loss": 1.5, "spend": 20, "training_iteration": 2, "outcome": "finished"})

    restored = _searcher(cls, tmp_path / "optuna.db")
    restored.restore(str(snapshot))  # what --resume does; the study on disk has t1 COMPLETE
    # the rerun from t1's last checkpoint reports its last evaluation again and ends
    restored.on_trial_result("t1", {"val_loss": 1.4, "spend": 30, "training_iteration": 3})
    restored.on_trial_complete("t1", {"val_loss": 1.4, "spend": 30, "training_iteration": 3, "outcome": "finished"})

    (trial,) = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'optuna.db'}").trials
    assert trial.state == optuna.trial.TrialState.COMPLETE
    assert trial.value == 1.5  # what the study held stays the record
    assert 30 not in trial.intermediate_values and 3 not in trial.intermediate_values
    # and new trials are sampled as before
    assert restored.suggest("t2") is not None


@pytest.mark.parametrize("cls", [TruthfulOptunaSearch, ResumableOptunaSearch])
def test_each_optuna_trial_records_its_ray_trial_id(tmp_path, cls):
    searcher = _searcher(cls, tmp_path / "optuna.db")
    searcher.suggest("a1b2_00000")
    searcher.suggest("a1b2_00001")
    trials = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'optuna.db'}").trials
    assert [t.user_attrs["ray_trial_id"] for t in trials] == ["a1b2_00000", "a1b2_00001"]
