"""The Ray Tune function trainable: trial config -> GPTConfig + TrainConfig -> nanogpt's loop.

Every evaluation becomes one `tune.report(metrics, checkpoint=...)`, so ASHA sees each
evaluation and a retried trial continues from its last checkpoint.
"""

from __future__ import annotations

import logging
import tempfile
import time

import ray
import torch
from ray import tune

from nanogpt.data import TokenData
from nanogpt.model import GPTConfig
from nanogpt.tokenizer import tokenizer_from_dict
from nanogpt.train import Trainer, TrainConfig

# trial-config keys that go straight into TrainConfig
TRAIN_KEYS = ("max_steps", "batch_size", "learning_rate", "warmup_steps", "weight_decay",
              "eval_interval", "eval_iters", "eval_batch_size", "train_loss_from", "seed")


def build_configs(config: dict, vocab_size: int, device: str = "cpu") -> tuple[GPTConfig, TrainConfig]:
    """The trial's model and training configs. n_embd is derived here: n_head * head_dim."""
    model_cfg = GPTConfig(
        block_size=config["block_size"],
        vocab_size=vocab_size,
        n_layer=config["n_layer"],
        n_head=config["n_head"],
        n_embd=config["n_head"] * config["head_dim"],
        dropout=config["dropout"],
        bias=False,  # nanoGPT: a little better and faster without biases
    )
    train_kwargs = {k: config[k] for k in TRAIN_KEYS if k in config}
    train_cfg = TrainConfig(
        **train_kwargs, min_lr=config["learning_rate"] * config.get("min_lr_ratio", 0.1), device=device
    )
    return model_cfg, train_cfg


def _trial_resources() -> tuple[float, float]:
    resources = tune.get_context().get_trial_resources().required_resources
    return resources.get("CPU", 1), resources.get("GPU", 0)


def train_gpt(config: dict, data: TokenData, tokenizer: dict) -> None:
    """Function trainable. `data` and `tokenizer` arrive once through tune.with_parameters."""
    started_at = time.time()
    # Ray logs every persisted checkpoint at INFO; a search makes hundreds
    logging.getLogger("ray.train").setLevel(logging.WARNING)
    cpus, gpus = _trial_resources()
    # one thread per CPU of the trial's share, or concurrent trials fight over the cores
    torch.set_num_threads(max(1, int(cpus)))
    tok = tokenizer_from_dict(tokenizer)
    model_cfg, train_cfg = build_configs(config, tok.vocab_size, device="cuda" if gpus > 0 else "cpu")
    trainer = Trainer(model_cfg, train_cfg, data, tok)
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            trainer.restore(d)

    node_id = ray.get_runtime_context().get_node_id()  # which machine: node_ip is the same for nodes on one host
    # start cost, for benchmarks/search_overhead.py: when this worker began and how long set-up took
    timing = {"started_at": started_at, "setup_s": time.time() - started_at}

    def report(metrics: dict, t: Trainer) -> None:
        with tempfile.TemporaryDirectory() as d:
            t.save(d)
            tune.report({**metrics, "node_id": node_id, **timing}, checkpoint=tune.Checkpoint.from_directory(d))

    trainer.run(report)
