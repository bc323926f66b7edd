"""`python -m tune.search`: find a good small-GPT configuration for a text and a budget.

Ray Tune schedules the trials (function trainable, per-trial resources, ASHA, checkpoints, retries,
resume); Optuna's TPE samples them (define-by-run, study kept in SQLite) and is told how each ended.
Every trial gets the same budget (steps, tokens, FLOPs or seconds); with --final-budget the winner is
trained once more for the user's budget. Everything is checked before Ray starts; bad input is one
line and exit 2.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pickletools
import secrets
import shlex
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from nanogpt.amounts import format_seconds, number
from nanogpt.batches import TokenData
from nanogpt.checkpoint import MODEL_FILE, patch_meta
from nanogpt.dataset import default_prompts
from nanogpt.errors import UserError
from nanogpt.files import DISK_ERROR_TEXT, DISK_ERRNOS, WriteFailed, write_failed
from nanogpt.token_cache import prepare
from tune.config import SETTINGS_FILE, SearchConfig, config_from_args, format_amount
from tune import scaling
from tune.outcomes import CLOCK_FILE, OPTUNA_DB, OUTCOMES_FILE, Outcome, read_clock
from tune.space import largest, max_value

FINAL_DIR = "final"

log = logging.getLogger(__name__)


def prepare_data(config: SearchConfig) -> tuple[TokenData, object]:
    """Tokenize once (cached on disk, reused by later searches and --resume), in the driver; trials get the
    read-only token arrays through tune.with_parameters: one zero-copy copy per node in Ray's object store."""
    data, tokenizer = prepare(config.dataset, config.data_file, config.tokenizer, config.bpe_vocab_size)
    data.check_block_size(int(max_value(config.space_specs()["block_size"])))
    check_budget(config, tokenizer.vocab_size)
    return data, tokenizer


def largest_step_spend(config: SearchConfig, vocab_size: int) -> float | None:
    """What one training step of the space's largest model spends, in the budget's unit (None for seconds)."""
    import torch

    from nanogpt.model import GPT
    from nanogpt.train import optimizer_flops, step_spend

    hp = largest(config.space_specs())
    with torch.device("meta"):  # shapes only, no memory
        model = GPT(hp.model_config(vocab_size))
    return step_spend(config.budget_unit, hp.batch_size * hp.block_size, model.flops_per_token(),
                      optimizer_flops(model, hp.optimizer))


# more training steps than any trial could take: at a millisecond a step, 1e9 steps is over eleven days a trial
MAX_TRIAL_STEPS = 1e9


def check_budget(config: SearchConfig, vocab_size: int) -> None:
    """A trial budget smaller than one step of the space's largest model trains nothing, and one of more than
    MAX_TRIAL_STEPS steps of it never reaches its first evaluation: refuse both."""
    spend = largest_step_spend(config, vocab_size)
    unit = config.budget_unit
    if spend is not None and spend > config.trial_budget:
        raise UserError(f"--trial-budget {config.budget_text()} is less than one training step of the space's "
                        f"largest model ({format_amount(spend, unit)}); raise the budget or shrink the space")
    if spend is not None and config.trial_budget / spend > MAX_TRIAL_STEPS:
        raise UserError(f"--trial-budget {config.budget_text()} is {number(config.trial_budget / spend)} training "
                        f"steps of the space's largest model, more than {number(MAX_TRIAL_STEPS)}: no trial would ever finish "
                        f"or reach its first evaluation; lower it (or give it in seconds, e.g. 600s)")


def check_address(address: str, timeout: float = 3.0, grpc_timeout: float = 10.0) -> None:
    """Fail in seconds, not minutes, when a cluster address cannot be reached."""
    if address in ("auto", "local") or address.startswith("ray://"):
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"--address {address!r} is not HOST:PORT (e.g. 127.0.0.1:6379) or 'auto'")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as e:
        raise UserError(f"cannot reach a Ray cluster at {address} ({e.strerror or e}); start one with "
                        f"`ray start --head --port={port}` or leave out --address for a local Ray") from None
    if not _speaks_grpc(host, int(port), grpc_timeout):
        # ray.init would wait for the GCS there for minutes
        raise UserError(f"{address} is not a Ray cluster: the port is open but gives no gRPC answer (Ray's GCS "
                        f"speaks gRPC there); check the port `ray start --head` printed")


_HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # + empty SETTINGS


def _speaks_grpc(host: str, port: int, timeout: float) -> bool:
    """Whether the server answers an HTTP/2 connection preface with a SETTINGS frame, as Ray's GCS (gRPC) does.
    With RAY_USE_TLS the server first wants a TLS handshake: the TCP check is all that is done then."""
    if os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true"):
        return True
    deadline = time.monotonic() + timeout
    try:
        with socket.create_connection((host, port), timeout=timeout) as conn:
            conn.sendall(_HTTP2_PREFACE)
            head = b""
            while len(head) < 9:  # a frame header: length (3 bytes), type, flags, stream id (4)
                conn.settimeout(max(0.01, deadline - time.monotonic()))
                chunk = conn.recv(9 - len(head))
                if not chunk:
                    return False
                head += chunk
    except OSError:  # a timeout or a reset: not an HTTP/2 server
        return False
    return head[3] == 0x04


def _check_writable(results_dir: Path) -> None:
    try:
        results_dir.mkdir(parents=True, exist_ok=True)
        probe = results_dir / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise UserError(f"results directory {results_dir} is not writable ({e.strerror}); choose another with --results-dir") from None


# --- Ray ---------------------------------------------------------------------------------


def _quiet_ray() -> None:
    """Ray's chatter a user cannot act on stays off the terminal: its INFO/WARNING logs, the
    'Configuration for experiment' box and the TensorBoard hint into /tmp (both printed by the new
    output engine even at verbose=0; the classic one prints nothing at verbose=0). Errors still surface."""
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    for name in ("ray", "ray.tune", "ray.train"):
        logging.getLogger(name).setLevel(logging.ERROR)


_LOOPBACK_VAR = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
_loopback_set = False  # whether local_ray_on_loopback set it (not the user)


def local_ray_on_loopback() -> None:
    """A local search's Ray listens on 127.0.0.1 only. Ray takes its node address when it is imported: on Linux
    the machine's outward address, and its GCS, raylet and workers then listen on every interface; with
    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 it takes the loopback address, as it does on macOS and Windows, and they
    listen there (ray.init's _node_ip_address turns 127.0.0.1 back into the outward address). Call it before ray
    is imported; a value the user set is kept. `forget_loopback` takes it away once Ray is shut down."""
    global _loopback_set
    if _LOOPBACK_VAR not in os.environ:
        os.environ[_LOOPBACK_VAR], _loopback_set = "0", True


def forget_loopback() -> None:
    """After ray.shutdown: the variable must not reach this process's later children (a `ray start` of a
    multi-node cluster refuses to run with it)."""
    global _loopback_set
    if _loopback_set:
        os.environ.pop(_LOOPBACK_VAR, None)
        _loopback_set = False


def ensure_token() -> None:
    """The token a local cluster authenticates with, made once and agreed on. Ray writes ~/.ray/auth_token, where it
    is missing, with a plain open('w'): two clusters started at once on a new machine (two searches, or tests side
    by side) each write their own, and one's nodes then fail the other's check. Here the token is written to a
    private file first and linked into place, which fails where another process got there first: the first
    writer's token is everyone's, readable by its owner only."""
    if os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH"):
        return
    path = Path.home() / ".ray" / "auth_token"
    if path.is_file():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".auth_token.")  # 0600
    try:
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))  # what Ray's own generator writes: 64 hex digits
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
    finally:
        os.unlink(tmp)


def init_ray(config: SearchConfig, address: str | None, dashboard: bool) -> None:
    import ray

    if address:
        ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False)
    else:
        ensure_token()
        ray.init(
            address="local",
            include_dashboard=dashboard,
            dashboard_host="127.0.0.1",  # never exposed beyond this machine
            logging_level=logging.ERROR,
            # trial stdout/stderr stays in Ray's logs: trial errors reach the user through the
            # progress lines and each trial's error.txt, without worker shutdown chatter
            log_to_driver=False,
        )
    if config.gpus_per_trial > 0:
        gpus = ray.cluster_resources().get("GPU", 0)
        if gpus < config.gpus_per_trial:
            ray.shutdown()
            raise UserError(f"--gpus-per-trial {config.gpus_per_trial:g} but the Ray cluster has {gpus:g} GPUs; "
                            f"use --gpus-per-trial 0 on this machine")
    cpus = ray.cluster_resources().get("CPU", 0)
    if cpus < config.cpus_per_trial:
        ray.shutdown()
        raise UserError(f"--cpus-per-trial {config.cpus_per_trial:g} but the Ray cluster has {cpus:g} CPUs")


def trial_dirname(trial) -> str:
    return f"trial_{trial.trial_id}"  # short: long names break on some file systems


def make_tuner(config: SearchConfig, data_ref, tokenizer, restore: bool):
    import optuna
    from ray import tune

    from tune.checkpoints import CheckpointCheck
    from tune.progress import MirrorSync, OutcomeRecorder, Progress, TimeBudget
    from tune.ray_state import StateCopy
    from tune.searcher import ResumableOptunaSearch, StudyStorage, TruthfulOptunaSearch, bind_run, search_algorithm
    from tune.trainable import train_gpt

    # before Ray unpickles its state: a moved or copied search resumes where it is now (see tune.searcher)
    bind_run(config.experiment_dir, config.experiment_path, config.mirror)

    trainable = tune.with_resources(
        # the tokens by reference (in a list: Ray cannot put a ref itself): one copy in the object store,
        # for the trials and the final training
        tune.with_parameters(train_gpt, data=[data_ref], tokenizer=tokenizer.to_dict(), search=config),
        {"cpu": config.cpus_per_trial, "gpu": config.gpus_per_trial},
    )
    if restore:
        return tune.Tuner.restore(config.experiment_path, trainable=trainable, resume_unfinished=True,
                                  resume_errored=True)

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    exp = config.experiment_dir
    searcher_cls = TruthfulOptunaSearch if config.tell_optuna == "truth" else ResumableOptunaSearch
    searcher = searcher_cls(
        space=config.space_sampler(),
        metric=config.metric,
        mode=config.mode,
        sampler=config.make_sampler(),
        study_name=config.name,
        storage=StudyStorage(exp),
    )
    scheduler = config.make_scheduler()
    mirror = config.mirror
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            metric=config.metric, mode=config.mode, search_alg=search_algorithm(searcher, config.max_concurrent),
            scheduler=scheduler, num_samples=config.num_samples,
            reuse_actors=True, trial_dirname_creator=trial_dirname,
        ),
        run_config=tune.RunConfig(
            name=config.name,
            storage_path=config.results_dir,
            failure_config=tune.FailureConfig(max_failures=config.max_failures),
            checkpoint_config=tune.CheckpointConfig(
                num_to_keep=1, checkpoint_score_attribute=config.metric, checkpoint_score_order=config.mode
            ),  # the best checkpoint by val_loss; Ray always keeps the latest too (for retries; after a kill, see
            # tune.checkpoints)
            verbose=0,
            progress_reporter=tune.CLIReporter(),  # Ray's pick in a terminal; its notebook one clears tune.api's view
            stop=TimeBudget() if config.time_budget_s else None,
            # the recorder first: it writes each trial's outcome onto its result before Ray logs it
            callbacks=[OutcomeRecorder(exp, config.time_budget_s, searcher if config.tell_optuna == "truth" else None),
                       Progress(config), CheckpointCheck()]
            + ([MirrorSync(mirror, OPTUNA_DB, OUTCOMES_FILE, CLOCK_FILE)] if mirror else [StateCopy(exp)]),
        ),
    )


def auto_final_budget(config: SearchConfig, best, seconds_left: float) -> float | None:
    """--final-budget auto: the final training's first plan, from the seconds left and the winner's trial's own
    pace (its training spend over its whole run's seconds, evaluations and branches included), on top of the
    trial's spend when it is continued. The final training then plans its length from its own speed on the node's
    threads so that it ends within seconds_left (TrainConfig.fill_time_s); the first plan sets its evaluations'
    spacing. None: no time for one more of its steps."""
    pace = float(best["train_spend"]) / max(float(best["seconds"]), 1e-9)
    start = float(best["train_spend"]) if config.final_from == "continue" else 0.0
    budget = start + pace * seconds_left
    if config.budget_unit == "steps":
        budget = float(int(budget))
    step = float(best["train_spend"]) / max(int(best["steps"]), 1)  # one of its steps: the least a training adds
    return budget if budget >= start + step and seconds_left > 0 else None


def plan_final(config: SearchConfig, trials, seconds_left: float | None = None) -> tuple | None:
    """(the trial the final training starts from, the configuration with its final budget, the scaling choice
    (tune.scaling)): the raw winner (the best finished trial), or the scaling law's pick where its held-back error
    says it can be trusted. None (and one line) when there is nothing to train."""
    final = config.experiment_dir / FINAL_DIR
    finished = trials[trials["outcome"].eq(Outcome.FINISHED)]  # a diverged trial has that outcome (tune.report)
    asked = "auto" if config.final_auto else config.budget_text(config.final_budget)
    if finished.empty:
        print(f"\nno trial finished its budget: no final training (--final-budget {asked})")
        return None
    best = finished.iloc[0]
    if config.final_auto:
        budget = auto_final_budget(config, best, seconds_left or 0.0)
        if budget is None:
            print(f"\nno time left of the time budget for a final training ({seconds_left or 0:.0f} s)")
            return None
        config = dataclasses.replace(config, final_budget=budget)
    if (final / MODEL_FILE).is_file():
        print(f"\nfinal/ is already trained: {final}")
        return None
    choice = scaling.analyse(config.experiment_dir, trials, config.final_budget,
                             (lambda p: config.mirror.has(p / MODEL_FILE)) if config.mirror else None)
    print("\n" + scaling.describe(choice, config.budget_text))
    if choice.get("chosen", best["trial_id"]) != best["trial_id"]:
        pick = trials[trials["trial_id"].eq(choice["chosen"])].iloc[0]
        # under auto, the chosen trial's own pace sizes what fits in the seconds left
        budget = auto_final_budget(config, pick, seconds_left or 0.0) if config.final_auto else config.final_budget
        if budget is None:
            print(f"the scaling law's pick {pick['trial_id']} has no time left for one more of its steps: "
                  f"the raw winner {best['trial_id']} is trained")
            choice = {**choice, "chosen": best["trial_id"], "reason": "no time left for the pick's steps"}
        else:
            best, config = pick, dataclasses.replace(config, final_budget=budget)
    if config.final_auto:
        print(f"final budget (auto): the final training fills the {seconds_left:.0f} s left, its length planned "
              f"from its own speed (first plan {config.budget_text(config.final_budget)}, at {best['trial_id']}'s "
              f"trial pace)")
    return best, config, choice


def train_winner(config: SearchConfig, data_ref, tokenizer, trials, seconds_left: float | None = None,
                 grid=None) -> dict | None:
    """--final-budget: the trial plan_final picks, trained once more for that budget as a Ray task on a whole
    node; writes final/. None when there is nothing to train. `seconds_left`: what --final-budget auto may use.
    `grid`: what the search's `Tuner.fit()` returned (--final-from continue)."""
    import ray

    from tune.space import HPARAMS
    from tune.trainable import train_final

    plan = plan_final(config, trials, seconds_left)
    if plan is None:
        return None
    best, config, choice = plan
    exp = config.experiment_dir
    final = exp / FINAL_DIR
    hp = {k: best[k].item() if hasattr(best[k], "item") else best[k] for k in HPARAMS}
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    cpus = max(int(n["Resources"].get("CPU", 1)) for n in nodes)
    gpus = 1 if config.gpus_per_trial > 0 else 0
    start, how = _final_start(config, best, grid)
    print(f"\nfinal training: {how} to {config.budget_text(config.final_budget)} "
          f"on one node ({cpus} CPUs" + (", 1 GPU" if gpus else "") + ")", flush=True)
    task = ray.remote(num_cpus=cpus, num_gpus=gpus, max_retries=config.max_failures)(train_final)
    from ray.util.queue import Queue

    from tune.progress import follow_final

    queue = Queue(actor_options={"num_cpus": 0})  # a CPU-free actor: the task holds the node's CPUs
    ref = task.remote(hp, data_ref, tokenizer.to_dict(), config, str(exp / (FINAL_DIR + ".partial")), queue,
                      start, seconds_left if config.final_auto else None)
    out = follow_final(ref, queue, config.final_budget, config.budget_unit)
    queue.shutdown()
    tmp = exp / (FINAL_DIR + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    patch_meta(out["files"], chosen_by=choice)
    for name, blob in out["files"].items():
        (tmp / name).write_bytes(blob)
    tmp.rename(final)
    shutil.rmtree(exp / (FINAL_DIR + ".partial"), ignore_errors=True)
    m = out["metrics"]
    print(f"final model: val_loss {m.get('val_loss', float('nan')):.4f} after {format_amount(m.get('spend', 0), config.budget_unit)} "
          f"({m.get('step')} steps, {out['wall_s']:.0f} s on {out['threads']} threads); {final}")
    from tune.report import final_cut_short, final_or_best

    short = final_cut_short({"status": out.get("status"), "step": m.get("step")})
    if short:
        print(f"warning: the final training was cut short: {short}")
    use, why = final_or_best(exp)
    if why and use.name == "best":
        print(f"warning: {why}: the search's answer is best/")
    return out


def _final_start(config: SearchConfig, best, grid) -> tuple[dict | None, str]:
    """Where the final training starts, and the line that says so: the winner's stable checkpoint (--final-from
    continue), or nothing (scratch)."""
    if config.final_from != "continue":
        return None, f"{best['trial_id']}'s configuration retrained from scratch"
    return ({"trial_id": best["trial_id"], "files": stable_checkpoint(grid, best["trial_id"])},
            f"{best['trial_id']} continued from its stable checkpoint at {config.budget_text(best['train_spend'])}")


def stable_checkpoint(grid, trial_id: str) -> dict[str, bytes]:
    """The files of a trial's latest checkpoint (a finished trial's, or a pruned one's the scaling law picked), from
    the fit's ResultGrid: its stable weights (under wsd a trial never decays its own weights; its cooldowns are
    branches). Ray fetches it from where the search keeps it (a URI too)."""
    result = next(r for r in grid if r.metrics.get("trial_id") == trial_id)
    if result.checkpoint is None:
        raise UserError(f"trial {trial_id} kept no checkpoint to continue: use --final-from scratch")
    with result.checkpoint.as_directory() as path:
        return {f.name: f.read_bytes() for f in Path(path).iterdir() if f.is_file()}


def _refuse_taken(config: SearchConfig) -> None:
    """A new search never writes over a search of the same name."""
    mirror = config.mirror
    if mirror and mirror.exists():
        raise UserError(f"{mirror.uri} already exists: add --resume to continue it, or pick another --name")
    if not mirror and config.experiment_dir.exists():
        raise UserError(f"{config.experiment_dir} already exists: add --resume to continue it, or pick another --name")


@contextmanager
def hold(config: SearchConfig) -> Iterator[None]:
    """The results directory's lock for the search's name (tune.lock): one run at a time, new or resumed."""
    from tune.lock import hold_local, hold_uri

    mirror = config.mirror
    if mirror:
        with hold_uri(mirror.fs, mirror.sibling(f".{config.name}.lock"), f"{mirror.uri.rsplit('/', 1)[0]}/.{config.name}.lock",
                      config.name):
            yield
    else:
        with hold_local(Path(config.results_dir) / f".{config.name}.lock", config.name):
            yield


def export_models(config: SearchConfig) -> list[str]:
    """--export: best/ and final/ in that format, into best-FORMAT/ and final-FORMAT/, made again from them on
    every run (a resume may have changed best/). One line a model: where it is and how to load it."""
    from nanogpt.export import export, usage

    exp, lines = config.experiment_dir, []
    for name in ("best", FINAL_DIR):
        out = exp / f"{name}-{config.export}"
        if not (exp / name / MODEL_FILE).is_file():
            # one made from a best/ since removed (its trial diverged) goes too
            shutil.rmtree(out, ignore_errors=True)
            continue
        export(exp / name, out, config.export, replace=True)  # the previous run's, swapped once the new one is whole
        if config.mirror:
            config.mirror.push(out.name)
        lines.append(usage(out, config.export, exp / name))
    return lines


def run(config: SearchConfig, resume: bool, address: str | None = None, dashboard: bool = False,
        report: bool | None = None, top: int = 5) -> Path:
    """Run (or resume) a search; returns the experiment directory. Everything is checked before anything is
    written; the run holds the results directory's lock for the name from then on (tune.lock). `report`: write
    report.md and plots (default: the configuration's, False after --no-report)."""
    report = config.report if report is None else report
    if not address:
        local_ray_on_loopback()
    try:
        return _checked_run(config, resume, address, dashboard, report, top)
    finally:
        forget_loopback()


def preflight(config: SearchConfig, resume: bool, address: str | None, dry_run: bool = False):
    """What a run checks before anything is written (the cluster, the devices, the name, the data, the budget, the
    results directory): (the config, with the report's prompts for a new search; the data; the tokenizer). A bad
    value is a UserError. `dry_run`: the same checks (--dry-run), but a local results directory is checked without
    a probe file (its nearest existing folder must be writable) and a URI's is not written to; the data is tokenized
    into the token cache as a run would (the run reuses it)."""
    mirror = config.mirror
    if address:
        check_address(address)
    elif config.gpus_per_trial > 0 and config.device != "cpu":  # --device cpu: Ray's GPUs only schedule
        import torch

        if torch.cuda.device_count() < config.gpus_per_trial:
            raise UserError(f"--gpus-per-trial {config.gpus_per_trial:g} but this machine has "
                            f"{torch.cuda.device_count()} CUDA GPUs; use --gpus-per-trial 0 (or --device cpu with "
                            f"--address of a Ray started with logical GPUs)")
    if config.device == "mps" and not address:  # a local search: this machine must have the Apple GPU
        from nanogpt.model import resolve_device

        resolve_device("mps")
    if resume:
        from ray.tune import Tuner

        if not Tuner.can_restore(config.experiment_path):
            raise UserError(f"{config.experiment_path} cannot be resumed: Ray's experiment state is missing "
                            f"(the search never started)")
        _refuse_spent(config)
    else:
        _refuse_taken(config)  # at once, before tokenizing; again under the lock
    data, tokenizer = prepare_data(config)  # data errors surface before Ray starts, and before anything is written
    if not resume:  # the report's prompts travel with the results, not as a path to the data
        config = dataclasses.replace(config, prompts=default_prompts(data.dataset, data.head))
    if not resume and dry_run and not mirror:
        _check_writable_without_writing(Path(config.results_dir))
    elif not resume and mirror and not dry_run:
        mirror.check_writable()
    elif not resume and not dry_run:
        _check_writable(Path(config.results_dir))
    return config, data, tokenizer


def budget_spent(config: SearchConfig) -> bool:
    """Whether the search clock has reached --time-budget (as TimeBudget and OutcomeRecorder count it)."""
    return bool(config.time_budget_s) and read_clock(config.experiment_dir) >= config.time_budget_s - 0.5


def _refuse_spent(config: SearchConfig) -> None:
    """--resume of a search whose time budget is spent, its final training (if any) done: nothing would run, so
    refuse it (exit 2) with where its results are, instead of starting Ray to do nothing and asking for another
    --resume. A time budget is a search setting: --resume cannot change it."""
    exp = config.experiment_dir
    final_left = (config.final_budget or config.final_auto) and not (exp / FINAL_DIR / MODEL_FILE).is_file()
    if budget_spent(config) and not final_left:
        where = config.mirror.uri if config.mirror else exp
        raise UserError(f"{config.name} has spent its time budget ({read_clock(exp):.0f} s of "
                        f"{config.time_budget_s:g} s): --resume has nothing left to run; its results are in {where} "
                        f"(python -m tune.report {exp}); to search longer, start a new search with another --name "
                        f"and the --time-budget you want")


def _check_writable_without_writing(results_dir: Path) -> None:
    """--dry-run: the results directory, or the folder it would be made in, is a writable folder."""
    existing = results_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"results directory {results_dir} is not writable ({existing} is not a writable folder); "
                        f"choose another with --results-dir")


def _checked_run(config: SearchConfig, resume: bool, address: str | None, dashboard: bool, report: bool,
                 top: int) -> Path:
    """Pre-flight checks, then the search under the results directory's lock."""
    _quiet_ray()
    mirror = config.mirror
    t_command = time.time()  # --time-budget covers the command from here: the data and its tokenizer too
    config, data, tokenizer = preflight(config, resume, address)
    with hold(config):
        if not resume:
            _refuse_taken(config)  # another run of the name may have started and ended meanwhile
        else:
            if mirror:
                mirror.pull()  # the search's files and Ray's results; checkpoints stay at the URI
            check_ray_state(config.experiment_dir)
            _refuse_spent(config)  # a URI search's clock, as pulled
        try:
            return _search(config, resume, address, dashboard, report, top, data, tokenizer, t_command)
        except Exception as e:
            failed = disk_failure(e, config.experiment_dir)
            if failed is None:
                raise
            raise WriteFailed(f"{failed}; the search stopped: free space, then continue it with: python -m tune.search "
                              f"--resume --name {config.name} --results-dir {config.results_dir}") from None


# Ray's saved state, newest of each: what Tuner.restore reads (the trials, the searcher, the callbacks)
RAY_STATE = ("experiment_state-*.json", "search_gen_state-*.json", "searcher-state-*.pkl", "callback-states-*.pkl",
             "tuner.pkl")


def check_ray_state(exp: Path) -> None:
    """Refuse to resume from Ray state that was cut off mid-write (a full disk, a kill during Ray's copy), unless the
    search's own whole copy of it (tune.ray_state) can be put back. Ray would log the error and start the experiment
    over with the restored searcher: old trials rerun as new ones and Optuna trials left RUNNING."""
    try:
        _check_ray_files(exp)
    except UserError:
        from tune.ray_state import restore_state_copy

        copy = restore_state_copy(exp)
        if copy is None:
            raise
        log.warning("Ray's saved state in %s was cut off (the search was stopped while Ray wrote it): resuming from "
                    "the search's copy of Ray's last whole snapshot (%s)", exp, copy)
        _check_ray_files(exp)


def _check_ray_files(exp: Path) -> None:
    for pattern in RAY_STATE:
        files = sorted(exp.glob(pattern))
        if not files:
            continue
        try:
            data = files[-1].read_bytes()
            if data[:1] == b"\x80":  # a pickle (search_gen_state-*.json too), walked without unpickling
                if not any(op.name == "STOP" for op, _, _ in pickletools.genops(data)):
                    raise ValueError("no STOP opcode")
            else:
                json.loads(data)
        except (OSError, ValueError) as e:
            raise UserError(f"{files[-1]} is cut off or corrupt ({str(e).splitlines()[0][:80]}): Ray cannot resume "
                            f"{exp.name} from it without running trials twice; its finished trials are intact "
                            f"(python -m tune.report {exp}): continue with a new search under another --name") from None


def disk_failure(e: BaseException, exp: Path) -> str | None:
    """What could not be written, when `e` (or what caused it: Ray wraps errors) is a full or failing disk."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, WriteFailed):
            return str(e)
        if isinstance(e, OSError) and e.errno in DISK_ERRNOS:  # Ray's own writes: the file is often unnamed
            return str(write_failed(e.filename or f"a file under {exp} (or Ray's temp dir)", e))
        lines = [ln for ln in str(e).splitlines() if DISK_ERROR_TEXT.search(ln)]
        if lines:  # a Ray task's error (the final training) carries the remote one as text
            return f"a Ray task could not write ({lines[-1].strip()[:300]})"
        e = e.__cause__ or e.__context__
    return None


def _search(config: SearchConfig, resume: bool, address: str | None, dashboard: bool, report: bool, top: int,
            data: TokenData, tokenizer, t_start: float | None = None) -> Path:
    """The search itself, under the results directory's lock: Ray, the Tuner, the final training, the summary.
    `t_start`: when the command began (before its data and tokenizer): --final-budget auto's time runs from then."""
    from tune import report as report_mod

    t_start = time.time() if t_start is None else t_start
    exp, mirror = config.experiment_dir, config.mirror
    if address:
        _token_auth()
    import ray

    init_ray(config, address, dashboard)
    try:
        if not resume:
            _start(config)
        _announce(config, data, tokenizer, resume, time.time() - t_start)
        t0 = time.time()
        data_ref = ray.put(data)
        with stop_on_signals() as stop:
            grid = make_tuner(config, data_ref, tokenizer, restore=resume).fit()
        wall = time.time() - t0
        if stop.signum is not None:
            settle_interrupted(exp, config.name)
        if mirror:
            mirror.push(OPTUNA_DB, OUTCOMES_FILE, CLOCK_FILE)
            mirror.pull()  # Ray's results, for the report: they were written at the URI
        # trials.csv and best/ from the JSON reader `python -m tune.report` uses (not the grid): a report made
        # later, or by someone else, gives the same table
        df = report_mod.export(exp, mirror=mirror)
        if (config.final_budget or config.final_auto) and stop.signum is None:
            left = config.total_time_s - max(time.time() - t_start, read_clock(exp)) if config.final_auto else None
            if config.ladder == "on":  # the best trials climb to the final budget (tune.ladder)
                from tune import ladder

                done = ladder.run(config, data_ref, tokenizer, df, left, lambda t: stable_checkpoint(grid, t))
            else:
                done = train_winner(config, data_ref, tokenizer, df, left, grid)
            if done and mirror:
                mirror.push(FINAL_DIR)
    finally:
        ray.shutdown()
    _finish(config, df, wall, report and stop.signum is None, top)
    if stop.signum is not None:
        raise SearchStopped(stop.signum, config)
    return exp


class SearchStopped(Exception):
    """The search was stopped by a signal (Ctrl-C, SIGTERM) and saved its state: `main` ends with the resume line
    and exit 128 + the signal's number."""

    def __init__(self, signum: int, config: SearchConfig):
        super().__init__(signal.Signals(signum).name)
        self.signum, self.config = signum, config


class _Stop:
    signum: int | None = None


@contextmanager
def stop_on_signals() -> Iterator[_Stop]:
    """Ctrl-C and SIGTERM stop the search the way Ray Tune stops on Ctrl-C: the trials are stopped, Ray saves the
    experiment's state and fit() returns, so --resume continues it. Ray's own SIGINT handler is kept off
    (TUNE_DISABLE_SIGINT_HANDLER): ours records which signal came, then calls the handler Ray installs in fit() for
    SIGUSR1, which is its Ctrl-C handler. SIGTERM used to kill the driver mid-write (Ray's C++ abort, exit 134). A
    second signal, or one before Ray's handler is in place, stops at once (KeyboardInterrupt)."""
    stop = _Stop()

    def handler(signum, frame):
        ray_stop = signal.getsignal(signal.SIGUSR1)
        if stop.signum is not None or not callable(ray_stop):
            stop.signum = stop.signum or signum
            raise KeyboardInterrupt
        stop.signum = signum
        print(f"\n{signal.Signals(signum).name}: stopping the search; Ray saves its state for --resume "
              f"(again to stop at once)", file=sys.stderr, flush=True)
        ray_stop(signal.SIGUSR1, frame)

    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    env_before = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    for sig in before:
        signal.signal(sig, handler)
    try:
        yield stop
    except KeyboardInterrupt:
        raise SearchStopped(stop.signum or signal.SIGINT, None) from None
    finally:
        for sig, h in before.items():
            signal.signal(sig, h)
        if env_before is None:
            os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
        else:
            os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = env_before


def settle_interrupted(exp: Path, name: str) -> None:
    """After a signal: the study's trials Ray left running (stopped, or drawn and not started) are marked FAIL with
    the user attribute `interrupted`, so optuna.db holds no RUNNING trial while nothing runs. On --resume the searcher
    (tune.searcher) gives each of them a new RUNNING trial of the same parameters when Ray runs it again."""
    import optuna

    from tune.searcher import INTERRUPTED_ATTR

    storage = optuna.storages.RDBStorage(f"sqlite:///{(exp / OPTUNA_DB).resolve()}")
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:  # no study yet
        return
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        storage.set_trial_user_attr(t._trial_id, INTERRUPTED_ATTR, True)
        storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)


def _token_auth() -> None:
    """Ray 2.60 clusters use token authentication; a driver joining one must say so too (Ray only turns it on by
    itself for clusters it starts), and before ray is imported. The token stays where Ray keeps it
    (~/.ray/auth_token, RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH)."""
    if "RAY_AUTH_MODE" not in os.environ and (
        os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")
        or (Path.home() / ".ray" / "auth_token").is_file()
    ):
        os.environ["RAY_AUTH_MODE"] = "token"


def _start(config: SearchConfig) -> None:
    """A new search's directory and its search.json (and at the URI, for a URI search)."""
    exp, mirror = config.experiment_dir, config.mirror
    if mirror:
        shutil.rmtree(exp, ignore_errors=True)  # a stale local copy of an earlier search of that URI
    exp.mkdir(parents=True)
    config.save()
    if mirror:
        mirror.push(SETTINGS_FILE)


def _announce(config: SearchConfig, data: TokenData, tokenizer, resume: bool, ready_s: float = 0.0) -> None:
    print(f"data: {data.describe()}")
    print(f"search {config.name}: preset {config.preset}, data {data.dataset} "
          f"({len(data.train):,} train tokens, {tokenizer.kind} vocab {tokenizer.vocab_size}), "
          f"{config.num_samples} trials x {config.budget_text()} each, {config.searcher} + {config.scheduler}, "
          f"{config.cpus_per_trial:g} CPU" + (f" + {config.gpus_per_trial:g} GPU" if config.gpus_per_trial else "")
          + " per trial" + (" (resumed)" if resume else ""))
    print(f"space: {config.describe()}")
    if config.final_auto:
        print(f"time budget {format_seconds(config.total_time_s)} for the whole command from its start (the data and "
              f"tokenizer took {ready_s:.0f} s of it): {format_seconds(config.time_budget_s)} for the search, then "
              f"what is left for the final training of the winner; the report after it is not counted "
              f"(--no-report skips it)")
    elif config.time_budget_s:
        print(f"time budget {format_seconds(config.time_budget_s)} for the search's trials, on the search's clock "
              f"(over its resumes); the data and tokenizer before them ({ready_s:.0f} s) and the report after them "
              f"are not counted")
    if config.ladder == "on" and not resume:
        from tune.ladder import announce

        print(announce(config))


def _finish(config: SearchConfig, df, wall: float, report: bool, top: int) -> None:
    """The terminal's summary after the search: the top trials, outcomes, where things are, what the model learned."""
    from tune import report as report_mod

    exp, mirror = config.experiment_dir, config.mirror
    print(f"\n{len(df)} trials in {wall:.0f} s; top {min(top, len(df))} by val_loss:")
    print(report_mod.top_table(df, top))
    counts = df["outcome"].value_counts()
    print("outcomes: " + ", ".join(f"{n} {o}" for o, n in counts.items()))
    if counts.get(Outcome.OUT_OF_TIME.value) or budget_spent(config):
        # spent, the budget leaves --resume nothing to run: no line asking for one
        print(f"\nthe time budget ({config.time_budget_s:g} s) ended the search after {len(df)} trials")
    elif counts.get(Outcome.INTERRUPTED.value) or counts.get(Outcome.NOT_STARTED.value) or len(df) < config.num_samples:
        print(f"\nthe search stopped before all {config.num_samples} trials finished; continue it with:\n"
              f"  python -m tune.search --resume --name {config.name} --results-dir {config.results_dir}")
    if (exp / "best").is_dir():
        print(f"\nbest checkpoint: {exp / 'best'}  (python -m nanogpt.sample --checkpoint {exp / 'best'})")
    else:
        print("\nno trial produced a checkpoint: no best/ was written")
    if config.export:
        print("\n".join(export_models(config)))
    if report:
        print(f"report: {report_mod.write_report(exp, trials=df, mirror=mirror)}")
    print(f"trials table: {exp / 'trials.csv'}")
    if mirror:
        print(f"results uploaded to {mirror.uri} (local copy: {exp})")
    probes = report_mod.probe_lines(exp)
    if probes:  # what the model learned, last: one line a pattern
        print("\nwhat the best model learned (greedy):")
        print("\n".join(probes))


def execute(args, command: list[str]) -> Path | None:
    """What `python -m tune.search` does with its settings (an argparse Namespace of build_parser's flags): the
    command line and tune.api.search both come here. `command`: the flags, recorded in search.json. Returns the
    experiment directory; None after --dry-run."""
    config = config_from_args(args)
    if not args.resume:
        config = dataclasses.replace(config, command=shlex.join(["python", "-m", "tune.search", *command]))
    if args.dry_run:  # everything a run checks before it trains, then what it would do
        from tune.dry_run import dry_run

        _quiet_ray()
        if not args.address:
            local_ray_on_loopback()
        try:
            config, _, tokenizer = preflight(config, args.resume, args.address, dry_run=True)
        finally:
            forget_loopback()
        print(dry_run(config, tokenizer.vocab_size))
        return None
    if args.verbose:  # each evaluation (tune.progress) and ASHA's decisions (tune.asha), as they happen
        logging.getLogger("tune").setLevel(logging.DEBUG)
    try:
        return run(config, resume=args.resume, address=args.address, dashboard=args.dashboard, top=args.top)
    except SearchStopped as e:
        e.config = e.config or config  # stopped before run had its configuration: the one it was given
        raise


def main(argv: list[str] | None = None) -> int:
    from tune.options import attributed, from_command_line

    argv = sys.argv[1:] if argv is None else argv
    args, origin = from_command_line(argv)  # --config FILE: its settings, the flags over them
    try:
        execute(args, argv)
    except UserError as e:
        named = attributed(e, origin)
        if named is e:
            raise
        raise named from None
    except SearchStopped as e:  # Ctrl-C: 130, SIGTERM: 143, with the line that continues the search
        print(f"{signal.Signals(e.signum).name}: the search stopped; continue it with: python -m tune.search --resume "
              f"--name {e.config.name} --results-dir {e.config.results_dir}", file=sys.stderr, flush=True)
        return 128 + e.signum
    return 0


if __name__ == "__main__":
    from nanogpt.cli import run_main

    run_main(main)
