"""`python -m tune.search --dry-run`: what a search would do, without doing it. Prints the resolved search.json
and the first trial the sampler draws (its model size and steps); writes nothing, reads no data file."""

from __future__ import annotations

import json
import math
from dataclasses import asdict

from tune.config import SearchConfig


def first_trial(config: SearchConfig):
    """The hyperparameters of the search's first trial: its sampler, seeded as the search seeds it, on a new study."""
    import optuna

    from tune.space import Hparams

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    trial = optuna.create_study(sampler=config.make_sampler(), direction=config.mode + "imize").ask()
    fixed = config.space_sampler()(trial)
    return Hparams.from_config({**trial.params, **fixed})


def vocab_size(config: SearchConfig) -> tuple[int, bool]:
    """(vocabulary size, exact): exact for the corpora made in code; for a file or a download, which a dry run does
    not read, the tokenizer's expected size (BPE's as asked, 256 characters assumed)."""
    from nanogpt.corpora import BUILTIN_CORPORA
    from nanogpt.dataset import load_dataset
    from nanogpt.tokenizer import TOKENIZERS, TextInMemory

    cls = TOKENIZERS[config.tokenizer]
    settings = cls.settings(config.bpe_vocab_size)
    if config.dataset in BUILTIN_CORPORA:
        return cls.build(TextInMemory(load_dataset(config.dataset).text), **settings).vocab_size, True
    return cls.expected_vocab_size(**settings), False


def describe_first_trial(config: SearchConfig) -> str:
    import torch

    from nanogpt.model import GPT
    from nanogpt.train import step_spend

    hp = first_trial(config)
    vocab, exact = vocab_size(config)
    model_cfg = hp.model_config(vocab)
    with torch.device("meta"):  # shapes only
        model = GPT(model_cfg)
    tokens = hp.batch_size * hp.block_size
    per_step = step_spend(config.budget_unit, tokens, model.flops_per_token())
    steps = (f"{math.floor(config.trial_budget / per_step + 1e-9):,} steps" if per_step
             else f"as many steps as fit in {config.trial_budget:g} s")
    assumed = "" if exact else f" (a vocabulary of {vocab} assumed: a dry run reads no data)"
    return (f"first trial: n_layer={hp.n_layer} n_head={hp.n_head} n_embd={hp.n_embd} batch_size={hp.batch_size} "
            f"block_size={hp.block_size} learning_rate={hp.learning_rate:.3g} optimizer={hp.optimizer} "
            f"({model_cfg.architecture()}): "
            f"{model.get_num_params():,} parameters{assumed}, {steps} of {tokens:,} tokens for {config.budget_text()}")


def dry_run(config: SearchConfig) -> str:
    return f"{json.dumps(asdict(config), indent=2)}\n{describe_first_trial(config)}\nnothing was written (--dry-run)"
