"""tune.checkpoints: a trial whose checkpoint Ray's saved state names is gone continues from its newest complete one
on storage (a cut-off one is passed over), or starts over; checkpoints that are all there are left as Ray has them.
No Ray is started: the trial is a stand-in with Ray's own checkpoint manager and a local pyarrow file system."""

import logging
from pathlib import Path
from types import SimpleNamespace

import pyarrow.fs
from ray import tune
from ray.tune import CheckpointConfig
from ray.train._internal.checkpoint_manager import _CheckpointManager
from ray.train._internal.session import _TrainingResult

from conftest import make_trainer
from nanogpt.train import Trainer
from tune.checkpoints import match_storage


def _trial(trial_dir: Path, data, max_steps: int):
    """A trial that saved a checkpoint at every evaluation (ten steps apart) as the trainable does, each registered
    with Ray's checkpoint manager as the search configures it (it keeps the best by val_loss and the latest)."""
    trainer = make_trainer(data, base={}, max_steps=max_steps, batch_size=4, eval_interval=10, eval_iters=1)
    manager = _CheckpointManager(CheckpointConfig(num_to_keep=1, checkpoint_score_attribute="val_loss"))
    fs = pyarrow.fs.LocalFileSystem()
    reports = []

    def report(metrics: dict, t: Trainer) -> None:
        index = len(reports)
        reports.append(metrics)
        path = trial_dir / f"checkpoint_{index:06d}"
        t.save(path)
        manager.register_checkpoint(_TrainingResult(tune.Checkpoint(str(path), filesystem=fs),
                                                    {**metrics, "training_iteration": index + 1}))

    trainer.run(report)
    storage = SimpleNamespace(storage_filesystem=fs, trial_fs_path=str(trial_dir),
                              current_checkpoint_index=max_steps // 10 - 1)
    return SimpleNamespace(trial_id="t1", run_metadata=SimpleNamespace(checkpoint_manager=manager), storage=storage,
                           invalidate_json_state=lambda: None)


def test_named_checkpoint_gone_continues_from_newest_complete(tmp_path, data, caplog):
    import shutil

    trial = _trial(tmp_path, data, 30)
    named = trial.run_metadata.checkpoint_manager.latest_checkpoint_result.checkpoint.path
    assert named.endswith("checkpoint_000002")
    # Ray registered two more and deleted the named one, then the search was killed while the last was copied in
    shutil.copytree(named, tmp_path / "checkpoint_000003")
    shutil.copytree(named, tmp_path / "checkpoint_000004")
    (tmp_path / "checkpoint_000004" / "model.pt").write_bytes(b"cut")
    shutil.rmtree(named)
    with caplog.at_level(logging.WARNING, logger="tune.checkpoints"):
        match_storage(trial)
    latest = trial.run_metadata.checkpoint_manager.latest_checkpoint_result
    assert latest.checkpoint.path == str(tmp_path / "checkpoint_000003")
    assert latest.metrics["step"] == 30 and latest.metrics["checkpoint_dir_name"] == "checkpoint_000003"
    assert all(Path(r.checkpoint.path).is_dir() for r in trial.run_metadata.checkpoint_manager.best_checkpoint_results)
    assert trial.storage.current_checkpoint_index == 4  # the next one is checkpoint_000005: none is written over
    assert "checkpoint_000002, which Ray's saved state names" in caplog.text
    assert "continues from checkpoint_000003 (step 30)" in caplog.text


def test_no_complete_checkpoint_left_starts_over(tmp_path, data, caplog):
    import shutil

    trial = _trial(tmp_path, data, 20)
    for d in tmp_path.glob("checkpoint_*"):
        shutil.rmtree(d)
    with caplog.at_level(logging.WARNING, logger="tune.checkpoints"):
        match_storage(trial)
    assert trial.run_metadata.checkpoint_manager.latest_checkpoint_result is None
    assert "it starts over" in caplog.text


def test_checkpoints_all_there_are_left_alone(tmp_path, data):
    trial = _trial(tmp_path, data, 20)
    manager = trial.run_metadata.checkpoint_manager
    match_storage(trial)
    assert trial.run_metadata.checkpoint_manager is manager and trial.storage.current_checkpoint_index == 1
