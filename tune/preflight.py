"""The checks a search makes before it starts, so that bad input is one line and exit 2 before Ray starts or anything
is written: the cluster address and the devices, the name (a new search never writes over one; a resumed one must
have Ray's state and time left), the data (tokenized once into the token cache) and the trial budget against the
space's largest model, and the results directory. --dry-run makes the same checks without writing to the results,
then says what the search would do (tune.dry_run).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from nanogpt.amounts import number
from nanogpt.batches import TokenData
from nanogpt.checkpoint import MODEL_FILE
from nanogpt.dataset import default_prompts
from nanogpt.errors import UserError
from nanogpt.token_cache import prepare
from tune.config import SearchConfig, format_amount
from tune.final import FINAL_DIR
from tune.outcomes import read_clock
from tune.ray_env import check_address, local_loopback, quiet_ray
from tune.space import largest, max_value


def preflight(config: SearchConfig, resume: bool, address: str | None, dry_run: bool = False):
    """What a run checks before anything is written (the cluster, the devices, the name, the data, the budget, the
    results directory): (the config, with the report's prompts for a new search; the data; the tokenizer). A bad
    value is a UserError. `dry_run`: the same checks (--dry-run), but a local results directory is checked without
    a probe file (its nearest existing folder must be writable) and a URI's is not written to; the data is tokenized
    into the token cache as a run would (the run reuses it)."""
    mirror = config.mirror
    if address:
        check_address(address)
    elif config.gpus_per_trial > 0 and config.device != "cpu":  # --device cpu: Ray's GPUs only schedule
        import torch

        if torch.cuda.device_count() < config.gpus_per_trial:
            raise UserError(f"--gpus-per-trial {config.gpus_per_trial:g} but this machine has "
                            f"{torch.cuda.device_count()} CUDA GPUs; use --gpus-per-trial 0 (or --device cpu with "
                            f"--address of a Ray started with logical GPUs)")
    if config.device == "mps" and not address:  # a local search: this machine must have the Apple GPU
        from nanogpt.model import resolve_device

        resolve_device("mps")
    if resume:
        from ray.tune import Tuner

        if not Tuner.can_restore(config.experiment_path):
            raise UserError(f"{config.experiment_path} cannot be resumed: Ray's experiment state is missing "
                            f"(the search never started)")
        refuse_spent(config)
    else:
        refuse_taken(config)  # at once, before tokenizing; again under the lock
    data, tokenizer = prepare_data(config)  # data errors surface before Ray starts, and before anything is written
    if not resume:  # the report's prompts travel with the results, not as a path to the data
        config = dataclasses.replace(config, prompts=default_prompts(data.dataset, data.head))
    if not resume and dry_run and not mirror:
        _check_writable_without_writing(Path(config.results_dir))
    elif not resume and mirror and not dry_run:
        mirror.check_writable()
    elif not resume and not dry_run:
        _check_writable(Path(config.results_dir))
    return config, data, tokenizer


def dry_run(config: SearchConfig, resume: bool, address: str | None) -> str:
    """--dry-run: everything a run checks before it trains, then what it would do (tune.dry_run)."""
    from tune.dry_run import dry_run as describe

    quiet_ray()
    with local_loopback(address):
        config, _, tokenizer = preflight(config, resume, address, dry_run=True)
    return describe(config, tokenizer.vocab_size)


def prepare_data(config: SearchConfig) -> tuple[TokenData, object]:
    """Tokenize once (cached on disk, reused by later searches and --resume), in the driver; trials get the
    read-only token arrays through tune.with_parameters: one zero-copy copy per node in Ray's object store."""
    data, tokenizer = prepare(config.dataset, config.data_file, config.tokenizer, config.bpe_vocab_size)
    data.check_block_size(int(max_value(config.space_specs()["block_size"])))
    check_budget(config, tokenizer.vocab_size)
    return data, tokenizer


def largest_step_spend(config: SearchConfig, vocab_size: int) -> float | None:
    """What one training step of the space's largest model spends, in the budget's unit (None for seconds)."""
    import torch

    from nanogpt.model import GPT
    from nanogpt.train import optimizer_flops, step_spend

    hp = largest(config.space_specs())
    with torch.device("meta"):  # shapes only, no memory
        model = GPT(hp.model_config(vocab_size))
    return step_spend(config.budget_unit, hp.batch_size * hp.block_size, model.flops_per_token(),
                      optimizer_flops(model, hp.optimizer))


# more training steps than any trial could take: at a millisecond a step, 1e9 steps is over eleven days a trial
MAX_TRIAL_STEPS = 1e9


def check_budget(config: SearchConfig, vocab_size: int) -> None:
    """A trial budget smaller than one step of the space's largest model trains nothing, and one of more than
    MAX_TRIAL_STEPS steps of it never reaches its first evaluation: refuse both."""
    spend = largest_step_spend(config, vocab_size)
    unit = config.budget_unit
    if spend is not None and spend > config.trial_budget:
        raise UserError(f"--trial-budget {config.budget_text()} is less than one training step of the space's "
                        f"largest model ({format_amount(spend, unit)}); raise the budget or shrink the space")
    if spend is not None and config.trial_budget / spend > MAX_TRIAL_STEPS:
        raise UserError(f"--trial-budget {config.budget_text()} is {number(config.trial_budget / spend)} training "
                        f"steps of the space's largest model, more than {number(MAX_TRIAL_STEPS)}: no trial would ever finish "
                        f"or reach its first evaluation; lower it (or give it in seconds, e.g. 600s)")


def refuse_taken(config: SearchConfig) -> None:
    """A new search never writes over a search of the same name."""
    mirror = config.mirror
    if mirror and mirror.exists():
        raise UserError(f"{mirror.uri} already exists: add --resume to continue it, or pick another --name")
    if not mirror and config.experiment_dir.exists():
        raise UserError(f"{config.experiment_dir} already exists: add --resume to continue it, or pick another --name")


def refuse_spent(config: SearchConfig) -> None:
    """--resume of a search whose time budget is spent, its final training (if any) done: nothing would run, so
    refuse it (exit 2) with where its results are, instead of starting Ray to do nothing and asking for another
    --resume. A time budget is a search setting: --resume cannot change it."""
    exp = config.experiment_dir
    final_left = (config.final_budget or config.final_auto) and not (exp / FINAL_DIR / MODEL_FILE).is_file()
    if budget_spent(config) and not final_left:
        where = config.mirror.uri if config.mirror else exp
        raise UserError(f"{config.name} has spent its time budget ({read_clock(exp):.0f} s of "
                        f"{config.time_budget_s:g} s): --resume has nothing left to run; its results are in {where} "
                        f"(python -m tune.report {exp}); to search longer, start a new search with another --name "
                        f"and the --time-budget you want")


def budget_spent(config: SearchConfig) -> bool:
    """Whether the search clock has reached --time-budget (as TimeBudget and OutcomeRecorder count it)."""
    return bool(config.time_budget_s) and read_clock(config.experiment_dir) >= config.time_budget_s - 0.5


def _check_writable(results_dir: Path) -> None:
    try:
        results_dir.mkdir(parents=True, exist_ok=True)
        probe = results_dir / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise UserError(f"results directory {results_dir} is not writable ({e.strerror}); choose another with --results-dir") from None


def _check_writable_without_writing(results_dir: Path) -> None:
    """--dry-run: the results directory, or the folder it would be made in, is a writable folder."""
    existing = results_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"results directory {results_dir} is not writable ({existing} is not a writable folder); "
                        f"choose another with --results-dir")
