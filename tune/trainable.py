"""The Ray Tune function trainable: trial config -> Hparams -> nanogpt's Trainer, and the final training
of the winner as a Ray task (train_final; train_on_node runs it from the driver and writes its directory).

Every evaluation becomes one `tune.report(metrics, checkpoint=...)`, so ASHA sees each evaluation and a
retried trial continues from its last checkpoint. The search's settings arrive once, as the frozen
SearchConfig (tune.with_parameters), with the data and the tokenizer.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import tempfile
import time
from pathlib import Path

import ray
import torch
from ray import tune

from nanogpt.checkpoint import MODEL_FILE, patch_meta, raw_meta
from nanogpt.files import write_json
from nanogpt.batches import TokenData
from nanogpt.tokenizer import tokenizer_from_dict
from nanogpt.train import Trainer
from tune.config import SearchConfig
from tune.space import Hparams

log = logging.getLogger(__name__)


def _trial_resources() -> tuple[float, float]:
    resources = tune.get_context().get_trial_resources().required_resources
    return resources.get("CPU", 1), resources.get("GPU", 0)


def trial_device(search: SearchConfig, gpus: float) -> str:
    """--device: auto = CUDA where the trial holds a GPU share; cpu and cuda as they say (search.json records it)."""
    return search.device if search.device != "auto" else ("cuda" if gpus > 0 else "cpu")


def train_gpt(config: dict, data: list, tokenizer: dict, search: SearchConfig) -> None:
    """Function trainable. `data` ([the ObjectRef of the TokenData], put once by the driver and shared with
    the final training), `tokenizer` and `search` arrive once through tune.with_parameters."""
    data: TokenData = ray.get(data[0])  # read-only arrays in the node's object store: zero-copy
    started_at = time.time()
    # Ray logs every persisted checkpoint at INFO; a search makes hundreds
    logging.getLogger("ray.train").setLevel(logging.WARNING)
    cpus, gpus = _trial_resources()
    # one thread per CPU of the trial's share, or concurrent trials fight over the cores
    torch.set_num_threads(max(1, int(cpus)))
    tok = tokenizer_from_dict(tokenizer)
    hp = Hparams.from_config(config)
    trainer = Trainer(hp.model_config(tok.vocab_size), search.trial_train_config(hp, trial_device(search, gpus)),
                      data, tok)
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            trainer.restore(d)

    node_id = ray.get_runtime_context().get_node_id()  # which machine: node_ip is the same for nodes on one host
    # start cost, for benchmarks/search_overhead.py: when this worker began and how long set-up took
    timing = {"started_at": started_at, "setup_s": time.time() - started_at}
    # the vocabulary: its uniform baseline ln(vocab_size) tells a diverged loss (tune.outcomes.diverged)
    extra = {"node_id": node_id, "vocab_size": tok.vocab_size, **timing}
    if trainer.status != "running" and trainer.history:
        # restored from a checkpoint taken as the trial ended (the search stopped before Ray's state recorded the
        # end): its last result once more, so that Ray, the scheduler and the outcome recorder see how it ended
        tune.report({**trainer.history[-1], **extra})
        return

    def report(metrics: dict, t: Trainer) -> None:
        with tempfile.TemporaryDirectory() as d:
            t.save(d)
            tune.report({**metrics, **extra}, checkpoint=tune.Checkpoint.from_directory(d))

    trainer.run(report)


PARTIAL_OWNER_FILE = "final_for.json"  # in final.partial: the configuration and trial it trains


def _partial_owner(partial_dir: Path) -> dict | None:
    """What an interrupted final training in `partial_dir` was training (None if it does not say: not reused)."""
    try:
        return json.loads((partial_dir / PARTIAL_OWNER_FILE).read_text())
    except (OSError, ValueError):
        return None


def _start_final(trainer: Trainer, partial_dir: Path, owner: dict, start: dict | None) -> None:
    """Continue an interrupted final training of this configuration and trial from `partial_dir`, else start
    from the trial's checkpoint (`start`) or from scratch. A partial left by another choice (a resumed search
    may pick another winner) is removed, never restored under this configuration."""
    if (partial_dir / MODEL_FILE).is_file() and _partial_owner(partial_dir) != owner:
        log.warning("%s was left by the final training of another configuration or trial: starting over",
                    partial_dir.name)
        shutil.rmtree(partial_dir)
    if (partial_dir / MODEL_FILE).is_file():
        trainer.restore(partial_dir)
    elif start:
        with tempfile.TemporaryDirectory() as d:
            for name, blob in start["files"].items():
                (Path(d) / name).write_bytes(blob)
            trainer.continue_from(d)


def train_final(config: dict, data: TokenData, tokenizer: dict, search: SearchConfig, partial: str,
                progress=None, start: dict | None = None, time_limit_s: float | None = None) -> dict:
    """Train one configuration for the search's final budget. Runs as a Ray task holding a whole node's
    CPUs (threads = those CPUs) or one GPU. Checkpoints at every evaluation into `partial`, so a rerun
    continues where it stopped; returns the finished checkpoint's files (name -> bytes) and its last metrics,
    so the driver writes final/ wherever the task ran. `progress` (a ray.util.queue.Queue): each evaluation's
    metrics are put there for the driver to show.
    `start` ({"trial_id", "files": name -> bytes}): the trial's stable checkpoint to continue (--final-from
    continue), with the trial's warmup, so the result equals a run trained straight to the final budget.
    `time_limit_s`: --final-budget auto's seconds: the training plans its length to end within them
    (TrainConfig.fill_time_s), so the command ends within its time budget."""
    resources = ray.get_runtime_context().get_assigned_resources()
    torch.set_num_threads(max(1, int(resources.get("CPU", 1))))
    tok = tokenizer_from_dict(tokenizer)
    hp = Hparams.from_config(config)
    device = trial_device(search, resources.get("GPU", 0))
    warmup = raw_meta(start["files"])["warmup_steps"] if start else None
    cfg = dataclasses.replace(search.final_train_config(hp, device, warmup), fill_time_s=time_limit_s)
    trainer = Trainer(hp.model_config(tok.vocab_size), cfg, data, tok)
    partial_dir = Path(partial)
    owner = {"config": config, "continued_from": start["trial_id"] if start else None}
    _start_final(trainer, partial_dir, owner, start)

    def save(metrics: dict, t: Trainer) -> None:
        tmp = partial_dir.with_name(partial_dir.name + ".saving")
        t.save(tmp)
        write_json(tmp / PARTIAL_OWNER_FILE, owner)
        partial_dir.mkdir(parents=True, exist_ok=True)
        for f in tmp.iterdir():
            f.replace(partial_dir / f.name)
        tmp.rmdir()
        if progress is not None:
            progress.put(metrics)

    t0 = time.time()
    trainer.run(save)
    with tempfile.TemporaryDirectory() as d:
        trainer.save(d)
        files = {f.name: f.read_bytes() for f in Path(d).iterdir()}
    if start:  # the report says which trial the final model continued
        patch_meta(files, continued_from=start["trial_id"])
    last = trainer.history[-1] if trainer.history else {}
    return {"files": files, "metrics": last, "threads": torch.get_num_threads(), "device": device,
            "status": trainer.status.value, "wall_s": time.time() - t0}


def node_cpus() -> int:
    """The CPUs of the cluster's largest live node: what the final training (one task on a whole node) holds."""
    return max(int(n["Resources"].get("CPU", 1)) for n in ray.nodes() if n.get("Alive"))


def final_speedup(config: SearchConfig) -> float:
    """The final training's pace over a trial's, for the first plan of its length: on CPUs, the node's CPUs over a
    trial's (its threads; measured on 2 cores, a run on both trained 1.85-1.87x a one-thread trial's FLOPs a
    second, benchmarks/RESULTS.md "Equal wall-clock"); on a GPU 1, a trial's GPU share saying little of its speed
    alone. Only the first plan: the final training plans its length again from its own speed (fill_time_s)."""
    if config.gpus_per_trial > 0 and config.device != "cpu":
        return 1.0
    return max(1.0, node_cpus() / config.cpus_per_trial)


def train_on_node(config: SearchConfig, data_ref, tokenizer, hp: dict, start: dict | None, dest: Path, say: str,
                  time_limit_s: float | None = None, **meta) -> dict:
    """`hp` trained to config.final_budget as one Ray task on a whole node (train_final), continued
    from a trial's stable checkpoint (`start`: {"trial_id", "files"}) or from scratch, each evaluation shown; `dest`
    written whole, `meta` patched into its config.json. DEST.partial holds its checkpoints meanwhile, so a rerun
    continues it. `say`: the line that opens it (the node's CPUs are added). Returns train_final's answer."""
    from ray.util.queue import Queue

    from tune.progress import follow_final

    cpus = node_cpus()
    gpus = 1 if config.gpus_per_trial > 0 else 0
    print(f"\n{say} on one node ({cpus} CPUs" + (", 1 GPU" if gpus else "") + ")", flush=True)
    task = ray.remote(num_cpus=cpus, num_gpus=gpus, max_retries=config.max_failures)(train_final)
    queue = Queue(actor_options={"num_cpus": 0})  # a CPU-free actor: the task holds the node's CPUs
    partial = dest.with_name(dest.name + ".partial")
    ref = task.remote(hp, data_ref, tokenizer.to_dict(), config, str(partial), queue, start, time_limit_s)
    out = follow_final(ref, queue, config.final_budget, config.budget_unit)
    queue.shutdown()
    patch_meta(out["files"], **meta)
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name, blob in out["files"].items():
        (tmp / name).write_bytes(blob)
    tmp.rename(dest)
    shutil.rmtree(partial, ignore_errors=True)
    return out

