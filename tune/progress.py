"""Tune callbacks of a search: a compact progress display (one line per trial event, Ray's tables
stay off), and the upload of a URI search's own files as it goes."""

from __future__ import annotations

import time
from pathlib import Path

from ray.tune import Callback


def describe_config(config: dict) -> str:
    n_embd = config.get("n_head", 0) * config.get("head_dim", 0)
    return (f"L={config.get('n_layer')} H={config.get('n_head')} embd={n_embd} drop={config.get('dropout', 0):.2f} "
            f"lr={config.get('learning_rate', 0):.1e} B={config.get('batch_size')} T={config.get('block_size')}")


def last_error_line(error_file: str | None) -> str:
    """The exception line of a trial's error.txt (the traceback stays in the file)."""
    try:
        lines = [ln for ln in Path(error_file).read_text().splitlines() if ln.strip()]
    except (OSError, TypeError):
        return "unknown error"
    return lines[-1].strip()[:300] if lines else "unknown error"


class Progress(Callback):
    def __init__(self, num_samples: int):
        self.num_samples = num_samples
        self.t0 = None
        self.done = 0
        self.best: tuple[float, str] | None = None

    def _stamp(self) -> str:
        if self.t0 is None:
            self.t0 = time.time()
        return f"[{time.time() - self.t0:6.0f}s]"

    def on_trial_start(self, iteration, trials, trial, **info):
        print(f"{self._stamp()} {trial.trial_id} start   {describe_config(trial.config)}", flush=True)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        val = result.get("val_loss")
        if val is not None and (self.best is None or val < self.best[0]):
            self.best = (val, trial.trial_id)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.done += 1
        r = trial.last_result or {}
        status = r.get("status", "?")
        if status == "running":
            status = f"stopped at step {r.get('step')}"
        best = f" | best so far {self.best[0]:.4f} ({self.best[1]})" if self.best else ""
        print(f"{self._stamp()} {trial.trial_id} {status:<20} val_loss {r.get('val_loss', float('nan')):.4f} "
              f"step {r.get('step')} | {self.done}/{self.num_samples} done{best}", flush=True)

    def on_trial_error(self, iteration, trials, trial, **info):
        self.done += 1
        print(f"{self._stamp()} {trial.trial_id} ERROR: {last_error_line(trial.error_file)} (full text: {trial.error_file}) "
              f"| {self.done}/{self.num_samples} done", flush=True)

    def on_trial_recover(self, iteration, trials, trial, **info):
        print(f"{self._stamp()} {trial.trial_id} failed; retrying from its last checkpoint", flush=True)


class MirrorSync(Callback):
    """Uploads files of a URI search's local copy (tune.storage.Mirror) after every finished trial
    and at the end, so that an interrupted search keeps them at the URI too."""

    def __init__(self, mirror, *rels: str):
        self.mirror, self.rels = mirror, rels

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.mirror.push(*self.rels)

    def on_experiment_end(self, trials, **info):
        self.mirror.push(*self.rels)
