"""The search side's installed commands (pyproject's [project.scripts]), named so that none clashes with Ray's
own `tune`: nanogpt-tune runs `python -m tune.search`."""

from __future__ import annotations

from nanogpt.commands import run_module


def search() -> None:  # nanogpt-tune
    run_module("tune.search")


def report() -> None:  # nanogpt-report
    run_module("tune.report")


def dashboard() -> None:  # nanogpt-dashboard
    run_module("tune.dashboard")
