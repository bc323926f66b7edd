"""`python -m tune.search`, with the moments its phases begin and end written to a JSON file, for
benchmarks/search_overhead.py:

    python -m benchmarks.timed_search MARKS_JSON [tune.search flags]

The search runs as `python -m tune.search` runs it (same entry point, same process); the phases are found by
wrapping the module-level functions the search calls, each in the module it is looked up in when it is called
(tune.search, tune.preflight, tune.final, tune.summary), so the search's own code is timed untouched. Each mark is
time.time(); the caller, which started this process, also knows when the interpreter began and ended.
"""

from __future__ import annotations

import atexit
import functools
import json
import sys
import time

T_IMPORT = time.time()


def _wrap(module, name: str, marks: dict, label: str | None = None):
    """Record when `module.name` is first called and first returns, as `label` (default: its name)."""
    fn = getattr(module, name)
    label = label or name

    @functools.wraps(fn)
    def timed(*args, **kwargs):
        marks.setdefault(f"{label}:start", time.time())
        try:
            return fn(*args, **kwargs)
        finally:
            marks.setdefault(f"{label}:end", time.time())

    setattr(module, name, timed)


def main() -> None:
    path, argv = sys.argv[1], sys.argv[2:]
    marks: dict[str, float] = {"python:imports-start": T_IMPORT}
    atexit.register(lambda: open(path, "w").write(json.dumps(marks)))

    import ray

    import tune.search as search
    from nanogpt.cli import run_main
    from tune import final, preflight, report, summary

    marks["python:imports-end"] = time.time()
    for module, name in ((preflight, "prepare_data"), (search, "init_ray"), (final, "train_winner"),
                         (summary, "export_models")):
        _wrap(module, name, marks)
    for name in ("export", "write_report", "probe_lines"):
        _wrap(report, name, marks)
    _wrap(ray, "shutdown", marks, "ray_shutdown")
    make_tuner = search.make_tuner

    def timed_make_tuner(*args, **kwargs):
        tuner = make_tuner(*args, **kwargs)
        _wrap(tuner, "fit", marks)
        return tuner

    search.make_tuner = timed_make_tuner
    run_main(search.main, argv)


if __name__ == "__main__":
    main()
