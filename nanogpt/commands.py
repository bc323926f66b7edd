"""The model side's installed commands (pyproject's [project.scripts]): each runs its module's `main` as
`python -m MODULE` does, and imports that module only when its command runs."""

from __future__ import annotations

from importlib import import_module

from nanogpt.cli import run_main


def run_module(module: str) -> None:
    run_main(import_module(module).main)


def train() -> None:  # nanogpt-train
    run_module("nanogpt.train")


def sample() -> None:  # nanogpt-sample
    run_module("nanogpt.sample")


def export() -> None:  # nanogpt-export
    run_module("nanogpt.export")


def attention() -> None:  # nanogpt-attention
    run_module("nanogpt.attention")


def cache() -> None:  # nanogpt-cache
    run_module("nanogpt.cache")
