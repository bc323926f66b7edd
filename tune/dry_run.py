"""`python -m tune.search --dry-run`: what a search would do, without doing it. tune.search first checks what a
run checks before it trains (the data, the budget, the name, the results directory: tune.preflight.preflight); this
prints the resolved search.json and the first trial the sampler draws (its model size and steps). Nothing is written
to the results; the data is tokenized into the token cache, as the run would, which reuses it."""

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


def describe_first_trial(config: SearchConfig, vocab: int) -> str:
    import torch

    from nanogpt.model import GPT
    from nanogpt.train import optimizer_flops, step_spend

    hp = first_trial(config)
    model_cfg = hp.model_config(vocab)
    with torch.device("meta"):  # shapes only
        model = GPT(model_cfg)
    tokens = hp.batch_size * hp.block_size
    per_step = step_spend(config.budget_unit, tokens, model.flops_per_token(), optimizer_flops(model, hp.optimizer))
    steps = (f"{math.floor(config.trial_budget / per_step + 1e-9):,} steps" if per_step
             else f"as many steps as fit in {config.trial_budget:g} s")
    return (f"first trial: n_layer={hp.n_layer} n_head={hp.n_head} n_embd={hp.n_embd} batch_size={hp.batch_size} "
            f"block_size={hp.block_size} learning_rate={hp.learning_rate:.3g} optimizer={hp.optimizer} "
            f"({model_cfg.architecture()}): "
            f"{model.get_num_params():,} parameters, {steps} of {tokens:,} tokens for {config.budget_text()}")


def dry_run(config: SearchConfig, vocab: int) -> str:
    """The resolved settings and the first trial, for a search whose checks passed (`vocab`: its data's vocabulary)."""
    return (f"{json.dumps(asdict(config), indent=2)}\n{describe_first_trial(config, vocab)}\n"
            f"nothing was written to {config.results_dir} (--dry-run)")
