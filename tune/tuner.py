"""The search's Ray Tune Tuner: the trainable with the tokens by reference and each trial's resources, Optuna's
searcher (told the truth, or resumable), the scheduler, the checkpoints kept, the time budget's stopper and the
callbacks that record outcomes, show progress, check checkpoints and keep Ray's state (or sync it to a URI); or, on
--resume, the Tuner restored from Ray's saved state where the search is now. Nothing here imports ray at module
level (tune.ray_env's loopback setting must come first).
"""

from __future__ import annotations

from tune.config import SearchConfig
from tune.outcomes import CLOCK_FILE, OPTUNA_DB, OUTCOMES_FILE


def trial_dirname(trial) -> str:
    return f"trial_{trial.trial_id}"  # short: long names break on some file systems


def _optuna_searcher(config: SearchConfig):
    """The search's Optuna searcher: told the truth (or Ray's way, --tell-optuna), its study in the experiment."""
    import optuna

    from tune.searcher import ResumableOptunaSearch, StudyStorage, TruthfulOptunaSearch

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    searcher_cls = TruthfulOptunaSearch if config.tell_optuna == "truth" else ResumableOptunaSearch
    return searcher_cls(space=config.space_sampler(), metric=config.metric, mode=config.mode,
                        sampler=config.make_sampler(), study_name=config.name,
                        storage=StudyStorage(config.experiment_dir))


def make_tuner(config: SearchConfig, data_ref, tokenizer, restore: bool):
    from ray import tune

    from tune.checkpoints import CheckpointCheck
    from tune.progress import MirrorSync, OutcomeRecorder, Progress, TimeBudget
    from tune.ray_state import StateCopy
    from tune.binding import THIS_SEARCH
    from tune.searcher import search_algorithm
    from tune.trainable import train_gpt

    # before Ray unpickles its state: a moved or copied search resumes where it is now (see tune.binding)
    THIS_SEARCH.bind(config.experiment_dir, config.experiment_path, config.mirror)

    trainable = tune.with_resources(
        # the tokens by reference (in a list: Ray cannot put a ref itself): one copy in the object store,
        # for the trials and the final training
        tune.with_parameters(train_gpt, data=[data_ref], tokenizer=tokenizer.to_dict(), search=config),
        {"cpu": config.cpus_per_trial, "gpu": config.gpus_per_trial},
    )
    if restore:
        return tune.Tuner.restore(config.experiment_path, trainable=trainable, resume_unfinished=True,
                                  resume_errored=True)

    exp = config.experiment_dir
    searcher = _optuna_searcher(config)
    scheduler = config.make_scheduler()
    mirror = config.mirror
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            metric=config.metric, mode=config.mode, search_alg=search_algorithm(searcher, config.max_concurrent),
            scheduler=scheduler, num_samples=config.num_samples,
            reuse_actors=True, trial_dirname_creator=trial_dirname,
        ),
        run_config=tune.RunConfig(
            name=config.name,
            storage_path=config.results_dir,
            failure_config=tune.FailureConfig(max_failures=config.max_failures),
            checkpoint_config=tune.CheckpointConfig(
                num_to_keep=1, checkpoint_score_attribute=config.metric, checkpoint_score_order=config.mode
            ),  # the best checkpoint by val_loss; Ray always keeps the latest too (for retries; after a kill, see
            # tune.checkpoints)
            verbose=0,
            progress_reporter=tune.CLIReporter(),  # Ray's pick in a terminal; its notebook one clears tune.api's view
            stop=TimeBudget() if config.time_budget_s else None,
            # the recorder first: it writes each trial's outcome onto its result before Ray logs it
            callbacks=[OutcomeRecorder(exp, config.time_budget_s, searcher if config.tell_optuna == "truth" else None),
                       Progress(config), CheckpointCheck()]
            + ([MirrorSync(mirror, OPTUNA_DB, OUTCOMES_FILE, CLOCK_FILE)] if mirror else [StateCopy(exp)]),
        ),
    )
