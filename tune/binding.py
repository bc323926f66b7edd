"""The search this driver process runs, for the objects Ray rebuilds itself and so cannot be handed it.

Ray's saved state (tuner.pkl, searcher-state-*.pkl) holds the searcher and our callbacks as they were made, paths
included, and Ray unpickles them with no way to pass them context. So that a results directory that was moved or
copied resumes against its own files, the driver binds its search here (`THIS_SEARCH.bind`) before Ray restores: the
study's storage, the search algorithm's experiment and our callbacks take their paths from it when unpickled.
The time budget's stopper (tune.progress.TimeBudget) is restored apart from the callbacks (from
experiment_state-*.json), so it cannot hold the recorder whose search clock it reads: it finds it here
(`THIS_SEARCH.clock`).
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple


class BoundRun(NamedTuple):
    dir: Path  # the search's local files (RESULTS_DIR/NAME, or a URI search's local copy)
    path: str  # where Ray keeps the experiment: the same directory, or a URI
    mirror: object  # a URI search's tune.storage.Mirror, else None


class ThisSearch:
    """The process-wide state of the search this process runs: one instance, THIS_SEARCH. Process-wide because
    what reads it is unpickled by Ray (see the module docstring)."""

    def __init__(self) -> None:
        self._run: BoundRun | None = None
        self.clock = None  # the tune.progress.OutcomeRecorder Ray set up in this process's latest run

    def bind(self, experiment_dir: str | Path, experiment_path: str, mirror=None) -> None:
        """Bind this process's search to where it is now, before Ray reads its saved state."""
        self._run = BoundRun(Path(experiment_dir), experiment_path, mirror)

    @property
    def run(self) -> BoundRun:
        if self._run is None:
            raise RuntimeError("no search is bound: tune.search binds one (THIS_SEARCH.bind) before Ray restores its "
                               "state")
        return self._run


THIS_SEARCH = ThisSearch()
