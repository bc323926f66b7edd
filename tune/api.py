"""The search from Python, for notebooks and scripts:

    from tune.api import search, load

    result = search(dataset="counting", num_samples=4, max_steps=60, n_layer="1:2", compile="off")
    result.trials          # trials.csv: one row per trial, the best first
    result.curves          # every evaluation of every trial (long format)
    model, tokenizer = result.load_best()   # for nanogpt.sample.generate_text
    result = load("results/NAME")           # a finished search, read-only

`search`'s keywords are `python -m tune.search`'s flags with underscores, their values what the flags take
(`config=` a search file under them, `report=False` for --no-report); it runs the command's own code path
(tune.search.execute). Bad input raises nanogpt.errors.UserError, naming the keyword. In a notebook the
progress is one output that updates in place; elsewhere it is the command's lines.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import re
from contextlib import contextmanager, redirect_stdout
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Iterator

import pandas as pd

from nanogpt.errors import UserError
from tune.config import SETTINGS_FILE, SearchConfig
from tune.outcomes import OPTUNA_DB

__all__ = ["SearchResult", "load", "search"]


@dataclass(frozen=True, eq=False)
class SearchResult:
    """A search's results directory, read from its JSON files (nothing is unpickled)."""

    path: Path  # RESULTS_DIR/NAME
    config: SearchConfig  # search.json: the resolved settings
    trials: pd.DataFrame  # one row per trial, trials.csv's columns, sorted by best val_loss
    curves: pd.DataFrame  # every evaluation of every trial: trial_id, step, spend, train_loss, val_loss, ...
    best: Path | None  # best/: the best trial's best checkpoint (None when no trial made one)
    final: Path | None  # final/: the winner trained for --final-budget (None without one)
    log: str = field(default="", repr=False)  # what the search printed, when search() showed it in a notebook

    @cached_property
    def study(self):
        """The search's Optuna study (optuna.db), opened without writing to it."""
        from tune.experiment import inside, open_study

        db = inside(self.path, OPTUNA_DB, "file")
        if not db.is_file():
            raise UserError(f"{self.path} has no {OPTUNA_DB}: the search kept no Optuna study")
        return open_study(db, self.config.name)

    def load_best(self, device: str = "cpu"):
        """(model, tokenizer) of best/, the model in eval mode: `nanogpt.sample.generate_text(model, tokenizer,
        "prompt")` continues a prompt."""
        return _load_model(self.best, "best", self.path, device)

    def load_final(self, device: str = "cpu"):
        """(model, tokenizer) of final/ (a search with --final-budget)."""
        return _load_model(self.final, "final", self.path, device)

    def __repr__(self) -> str:
        top = self.trials.iloc[0] if len(self.trials) else None
        best = f", best val_loss {top['best_val_loss']:.4f} ({top['trial_id']})" if top is not None else ""
        return f"SearchResult({str(self.path)!r}: {len(self.trials)} trials{best})"

    def _repr_html_(self) -> str:  # a notebook shows the search's top trials
        from tune.report import top_table

        head = f"<p><b>{self.config.name}</b>: {len(self.trials)} trials, best/ {self.best or 'none'}</p>"
        return head + f"<pre>{_escape(top_table(self.trials)) if len(self.trials) else ''}</pre>"


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _load_model(directory: Path | None, name: str, path: Path, device: str):
    from nanogpt.checkpoint import load_model

    if directory is None:
        raise UserError(f"{path} has no {name}/ checkpoint" + (": no trial produced one" if name == "best" else
                                                                 ": the search had no --final-budget"))
    model, tokenizer, _ = load_model(directory, device=device)
    return model, tokenizer


def load(path: str | Path) -> SearchResult:
    """A search's results directory (RESULTS_DIR/NAME), read-only: search.json, each trial's JSON files, optuna.db."""
    from nanogpt.checkpoint import MODEL_FILE
    from tune import report
    from tune.experiment import inside

    path = Path(path).expanduser()
    if not path.is_dir():
        raise UserError(f"{path} is not a directory: pass RESULTS_DIR/NAME of a search")
    if not inside(path, SETTINGS_FILE, "file").is_file():
        raise UserError(f"{path} holds no search ({SETTINGS_FILE} is missing)")
    config = SearchConfig.load(path)
    checkpoint = {name: (path / name if inside(path, f"{name}/{MODEL_FILE}", "file").is_file() else None)
                  for name in ("best", "final")}
    return SearchResult(path=path, config=config, trials=report.load(path), curves=report.load_curves(path),
                        best=checkpoint["best"], final=checkpoint["final"])


def search(config: str | Path | None = None, **settings: Any) -> SearchResult | None:
    """Run a search (or --resume one: `resume=True`, with its `name`) and return its results.

    `config`: a search file (.yaml, .toml, .json) whose settings the keywords override. Keywords: the flags of
    `python -m tune.search` with underscores (`num_samples=8`, `max_steps=60`, `n_layer="1:4"`,
    `batch_size=[8, 16]`, `time_budget="3m"`, `results_dir=...`, `name=...`, `preset=...`), and `report=False`
    for --no-report. `dry_run=True` prints what the search would do and returns None."""
    from tune.options import attributed, command_line, from_keywords
    from tune.search import execute

    args, origin = from_keywords(settings, config)
    if args.verbose and not logging.getLogger("tune").handlers:  # the command's -v lines, on stderr as it shows them
        from nanogpt.cli import configure_logging

        configure_logging()
    with _progress() as shown:
        try:
            path = execute(args, command_line(args, settings))
        except UserError as e:
            named = attributed(e, origin)
            if named is e:
                raise
            raise named from None
    if path is None:
        return None
    result = load(path)
    return dataclasses.replace(result, log=shown.getvalue()) if shown else result


# --- progress in a notebook -------------------------------------------------------------------------------


def _in_notebook() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


class LiveOutput(io.TextIOBase):
    """Stands in for stdout while a search runs in a notebook: the search's header and its latest line in one
    output that updates in place, then its summary; every line is kept (SearchResult.log)."""

    def __init__(self):
        from IPython.display import display

        self.lines: list[str] = []
        self._partial = ""
        self._handle = display({"text/plain": "starting the search..."}, raw=True, display_id=True)

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self._partial += text
        *done, self._partial = self._partial.split("\n")
        if done:
            self.lines += done
            self._show(self._status())
        return len(text)

    def getvalue(self) -> str:
        return "\n".join(self.lines + ([self._partial] if self._partial else []))

    def _header(self) -> list[str]:
        return [ln for ln in self.lines if ln.startswith("search ")][:1]

    def _status(self) -> str:
        latest = [ln for ln in self.lines if ln.strip()][-1:]
        return "\n".join(self._header() + latest)

    def _show(self, text: str) -> None:
        self._handle.update({"text/plain": text}, raw=True)

    def close_view(self) -> None:
        """The search's summary (from its trial count line on), or its last lines if it stopped before one."""
        if self._partial:
            self.write("\n")
        starts = [i for i, ln in enumerate(self.lines) if re.match(r"\d+ trials in \d+ s", ln)]
        tail = self.lines[starts[-1]:] if starts else self.lines[-20:]
        self._show("\n".join(self._header() + tail))


@contextmanager
def _progress() -> Iterator[LiveOutput | None]:
    if not _in_notebook():
        yield None
        return
    out = LiveOutput()
    try:
        with redirect_stdout(out):
            yield out
    finally:
        out.close_view()
