"""Searchers and schedulers by name: each is one table entry plus its class. The flags' choices and help
come from these tables; search.json records the name (and the sampler's options, every one explicit)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from nanogpt.errors import UserError
from tune.space import Preset

SearchConfig = Any  # tune.config.SearchConfig, which imports these tables


@dataclass(frozen=True)
class Searcher:
    help: str
    kind: str  # the "kind" saved with the sampler's options in search.json
    sampler_class: str  # its class in optuna.samplers
    options: Callable[[int, Preset], dict]  # (seed, preset) -> the sampler's keyword arguments, all explicit


def _tpe_options(seed: int, preset: Preset) -> dict:
    # every option explicit: Optuna 5 changed TPESampler's defaults (multivariate, constant_liar)
    return {"seed": seed, "n_startup_trials": preset.n_startup_trials, "multivariate": True, "constant_liar": True,
            "n_ei_candidates": 24}


SEARCHERS: dict[str, Searcher] = {
    "optuna": Searcher("Optuna's TPE", "tpe", "TPESampler", _tpe_options),
    "random": Searcher("random sampling", "random", "RandomSampler", lambda seed, preset: {"seed": seed}),
}


def sampler_options(searcher: str, seed: int, preset: Preset) -> dict:
    entry = SEARCHERS[searcher]
    return {"kind": entry.kind, **entry.options(seed, preset)}


def make_sampler(options: dict):
    """The Optuna sampler from its saved options alone."""
    import optuna

    opts = dict(options)
    kind = opts.pop("kind")
    entry = next((s for s in SEARCHERS.values() if s.kind == kind), None)
    if entry is None:
        raise UserError(f"search.json names the sampler {kind!r}, which this version does not know "
                        f"(known: {', '.join(s.kind for s in SEARCHERS.values())})")
    return getattr(optuna.samplers, entry.sampler_class)(**opts)


@dataclass(frozen=True)
class Scheduler:
    help: str
    make: Callable[[SearchConfig], Any]  # the Ray Tune scheduler for a search (imports Ray itself)
    describe: Callable[[SearchConfig], str]  # its settings, for the report ("" when it has none)


def _asha(config: SearchConfig):
    from tune.asha import ExplainedASHA  # Ray's ASHAScheduler, which logs its decisions (tune.search -v)

    # rungs in the budget's unit: trials are compared at equal spend, each rung on an evaluation
    return ExplainedASHA(time_attr="spend", max_t=config.trial_budget, grace_period=config.grace_period,
                         reduction_factor=config.reduction_factor, unit=config.budget_unit)


def _fifo(config: SearchConfig):
    from ray.tune.schedulers import FIFOScheduler

    return FIFOScheduler()


SCHEDULERS: dict[str, Scheduler] = {
    "asha": Scheduler("ASHA stops weak trials at rungs", _asha,
                      lambda c: f"grace {c.budget_text(c.grace_period)}, reduction factor {c.reduction_factor}, "
                                f"rungs in {c.budget_unit}"),
    "fifo": Scheduler("every trial runs its whole budget", _fifo, lambda c: ""),
}
