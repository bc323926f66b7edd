"""The ladder (`--ladder on`, issue 26): which trial becomes the final model is decided near the final budget,
not at the trial budget.

After `Tuner.fit`, the best rf^m finished trials (rf = --reduction-factor; the best of each model first:
entrant_order) continue their stable phases (wsd: the
peak learning rate) to the spend F / rf^m, F the final budget; each takes a cooldown branch there (nanogpt.cooldown)
and the best 1/rf by that branch's val_loss continue to F / rf^(m-1), and so on; the one left after the comparison
at F / rf is continued to F and decays: that run is final/. m is the most levels above the trials' own spend that
the finished trials can fill (at most ceil(log_rf(finished))), so every comparison that chooses the final model is
at F / rf or above. Ray's ASHA stops trials, it never pauses them (ray#44256): the ladder is a stage after the fit,
its runs Ray tasks with a trial's resources (the last one, to F, is the final training: one task on a whole node).

The learning rate for the horizon (`--horizon-lr-beta` beta): a trial continued in the ladder trains on at
lr x (F / its trial spend)^-beta from its first ladder step to F (DeepSeek LLM's fit, lr ~ C^-0.125, at a fixed
size, C ~ D): every ladder run heads to F, so the winner's continuation is the final run's own schedule.

State: `ladder.json` in the experiment directory (the plan, each level's spend, entrants, branch losses and those
kept), written after every run; each entrant's stable checkpoint in `ladder/<trial_id>/`, saved at every
evaluation. `--resume` continues exactly: a run whose loss is recorded is never trained again, one cut off
continues from its last checkpoint (its random streams in it), and a run that ended without its loss recorded
only takes its branch again (a branch leaves the run's state as it was).

Under `--final-budget auto` the plan fits the seconds the search leaves: F is the largest final budget whose
levels (entrants x spend at the trials' own pace, as many at once as the cluster holds trials) and last run (on a
whole node: the trial's pace x the node's threads over a trial's, tune.trainable.final_speedup) fit,
printed before the ladder starts and planned again after every level from the levels' measured pace; the last run
fills what is left (TrainConfig.fill_time_s), as the final training does without the ladder.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tempfile
import time
from pathlib import Path
from typing import Callable

from nanogpt.checkpoint import MODEL_FILE, last_eval, raw_meta
from nanogpt.errors import UserError
from nanogpt.files import write_json
from tune.config import SearchConfig, format_amount

LADDER_FILE = "ladder.json"
LADDER_DIR = "ladder"
STEP_FILE = "ladder_step.json"  # in ladder/<trial_id>/: the level its checkpoint finished, with its branch loss
LEVEL_OVERHEAD_S = 5.0  # a level's fixed seconds in the plan: Ray tasks starting, the last evaluation, checkpoints
PLAN_MARGIN = 0.1  # the share of the seconds left a plan keeps for the speed to vary


# --- the plan: pure functions -----------------------------------------------------------


def horizon_lr(lr: float, trial_spend: float, horizon: float, beta: float) -> float:
    """The peak learning rate of a trial continued from `trial_spend` to `horizon`: lr x (horizon/trial_spend)^-beta."""
    return lr * (horizon / trial_spend) ** -beta if beta and horizon > trial_spend > 0 else lr


def horizon_record(trial_lr: float, trial_spend: float, horizon: float, beta: float) -> dict:
    """What final/config.json records under `horizon_lr` for a continued trial: the rule and both learning rates."""
    return {"beta": beta, "horizon": horizon, "trial_lr": trial_lr,
            "lr": horizon_lr(trial_lr, trial_spend, horizon, beta), "trial_spend": trial_spend}


def levels(final: float, start: float, rf: int, n: int, unit: str) -> list[tuple[float, int]]:
    """The ladder's comparisons, lowest spend first: (spend, entrants). Spends are final / rf^j, at least rf x
    `start` (the entrants' largest trial spend; whole steps for a steps budget), entrants min(n, rf^j); as many
    levels as the `n` finished trials fill (ceil(log_rf n)), the highest ones, so the last comparison is at
    final / rf. The first level sits a factor rf above the trials, as ASHA's rungs sit a factor rf apart: one
    closer repeats the trials' own end-branch comparison at almost their spend and only costs time (measured at 5
    minutes, one at 1.27x the trials' spend: benchmarks/RESULTS.md, "Equal wall-clock, 5m ... `--ladder on`")."""
    m = 0
    while final / rf ** (m + 1) >= start * rf * (1 - 1e-9):
        m += 1
    m = min(m, math.ceil(math.log(n) / math.log(rf) - 1e-9)) if n > 1 else 0
    out = []
    for j in range(m, 0, -1):
        spend = final / rf ** j
        out.append((float(math.ceil(spend - 1e-9)) if unit == "steps" else spend, min(n, rf ** j)))
    return out


def plan_seconds(final: float, entrants: list[dict], rf: int, frac: float, slots: int, unit: str,
                 speedup: float = 1.0) -> float:
    """Seconds the ladder to `final` takes: `entrants` (best first) each {"spend": trial spend, "pace": spend a
    second}; each level runs its entrants `slots` at a time (a round as long as its slowest), each training to the
    level's spend and branching `frac` of it, at its trial's pace (a trial's resources); then the best trains on to
    `final` on a whole node, at its pace x `speedup` (tune.trainable.final_speedup). Survivors are taken to be the
    best-ranked entrants."""
    plan = levels(final, max(e["spend"] for e in entrants), rf, len(entrants), unit)
    at = [e["spend"] for e in entrants]
    total = 0.0
    for spend, n in plan:
        work = sorted(((spend - at[i] + frac * spend) / entrants[i]["pace"] for i in range(n)), reverse=True)
        total += sum(work[k] for k in range(0, n, max(1, slots))) + LEVEL_OVERHEAD_S
        at[:n] = [spend] * n
    return total + (final - at[0]) / (entrants[0]["pace"] * speedup) + LEVEL_OVERHEAD_S


def auto_final(seconds: float, entrants: list[dict], rf: int, frac: float, slots: int, unit: str,
               speedup: float = 1.0) -> float | None:
    """--final-budget auto: the largest final budget whose ladder fits `seconds` (less PLAN_MARGIN), its last run at
    `speedup` x the trial's pace (plan_seconds); None when not even one more step of the best trial's fits."""
    budget = seconds * (1 - PLAN_MARGIN)
    lo = entrants[0]["spend"] + entrants[0].get("step", 0.0)
    if plan_seconds(lo, entrants[:1], rf, frac, slots, unit, speedup) > budget:
        return None
    hi = lo * 2
    while plan_seconds(hi, entrants, rf, frac, slots, unit, speedup) <= budget and hi < lo * 1e9:
        lo, hi = hi, hi * 2
    for _ in range(60):  # the seconds jump where a level is added: bisection finds the last F that fits
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if plan_seconds(mid, entrants, rf, frac, slots, unit, speedup) <= budget else (lo, mid)
    return float(int(lo)) if unit == "steps" else lo


def describe_plan(steps: list[dict], final: float, unit: str, rf: int) -> str:
    """One line: how many trials continue to which spend."""
    parts = [f"the best {len(s['entrants']) if s.get('entrants') else s['n']} to {format_amount(s['spend'], unit)}"
             for s in steps]
    head = ", then ".join(parts)
    keep = f" (keeping the best 1/{rf} by cooldown-branch loss at each)" if steps else ""
    return (f"ladder: {head + ', then ' if head else ''}the best to {format_amount(final, unit)} (final/){keep}")


def announce(config: SearchConfig) -> str:
    """The plan printed before the search starts, from the settings alone: the trials' spend is taken as their
    budget less its end branch, every trial as finishing; it is planned again from the trials when they end."""
    rf = config.reduction_factor
    start = config.trial_budget / (1 + config.cooldown_frac)
    if config.final_auto:
        return (f"ladder: after the search, the best {rf}^m finished trials climb to a final budget that fits the "
                f"{config.total_time_s - config.time_budget_s:.0f} s left, a factor {rf} apart, the best 1/{rf} kept "
                f"at each (planned from the trials' pace when the search ends)")
    plan = levels(config.final_budget, start, rf, config.num_samples, config.budget_unit)
    return describe_plan([{"spend": s, "n": n} for s, n in plan], config.final_budget, config.budget_unit, rf) + \
        " (planned again from the finished trials when the search ends)"


# --- the state: ladder.json ---------------------------------------------------------------


def load_state(exp: Path) -> dict | None:
    try:
        return json.loads((exp / LADDER_FILE).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise UserError(f"{exp / LADDER_FILE} is unreadable ({e}): delete it and ladder/ to climb the ladder again") from None


def save_state(exp: Path, state: dict) -> None:
    write_json(exp / LADDER_FILE, state, indent=2)


def new_state(config: SearchConfig, trials, seconds_left: float | None, slots: int,
              speedup: float = 1.0) -> dict | None:
    """The plan from the finished trials (best first): entrants, levels, the final budget (auto: what fits the
    seconds left, the last run at `speedup` x its trial's pace) and each entrant's learning rate for that horizon.
    None (and one line) when nothing can climb."""
    from tune.outcomes import Outcome
    from tune.space import HPARAMS

    finished = trials[trials["outcome"].eq(Outcome.FINISHED)]
    if finished.empty:
        asked = "auto" if config.final_auto else config.budget_text(config.final_budget)
        print(f"\nno trial finished its budget: no ladder and no final training (--final-budget {asked})")
        return None
    rf, unit, frac = config.reduction_factor, config.budget_unit, config.cooldown_frac
    pool = [{"trial_id": r["trial_id"], "spend": float(r["train_spend"]),
             "pace": float(r["train_spend"]) / max(float(r["seconds"]), 1e-9),
             "step": float(r["train_spend"]) / max(int(r["steps"]), 1), "val_loss": float(r["last_val_loss"]),
             # a column trials.csv lacks (a field added after the search) takes its default in Hparams.from_config
             "hp": {k: r[k].item() if hasattr(r[k], "item") else r[k] for k in HPARAMS if k in r}}
            for _, r in finished.iterrows()]
    if config.final_auto:
        final = auto_final(seconds_left or 0.0, pool, rf, frac, slots, unit, speedup)
        if final is None:
            print(f"\nno time left of the time budget for the ladder or a final training ({seconds_left or 0:.0f} s)")
            return None
    else:
        final = float(config.final_budget)
    plan = levels(final, max(e["spend"] for e in pool), rf, len(pool), unit)
    entrants = entrant_order(pool)[:plan[0][1] if plan else 1]
    beta = config.horizon_lr_beta
    for e in entrants:
        e["trial_lr"] = float(e["hp"]["learning_rate"])
        e["lr"] = horizon_lr(e["trial_lr"], e["spend"], final, beta)
    ids = [e.pop("trial_id") for e in entrants]
    return {"unit": unit, "reduction_factor": rf, "horizon_lr_beta": beta, "horizon": final, "final_budget": final,
            "raw_winner": ids[0], "entrants": dict(zip(ids, entrants)), "steps": _steps(plan, ids),
            "winner": None if plan else ids[0], "seconds": 0.0, "seconds_left": seconds_left, "slots": slots,
            "speedup": speedup}


def entrant_order(pool: list[dict]) -> list[dict]:
    """The finished trials (best first) in the order the ladder takes them: the best trial of each model (its shape
    and architecture) first, best first, then the others by their loss. Ranks swap between sizes as the spend grows
    (benchmarks/RESULTS.md, "Rank correlation"), not between learning rates of one model, whose best falls slowly
    with the horizon: a ladder whose entrants are one model's runs (the top trials of a 15-minute search were all
    2 x 96, "Equal wall-clock, 15m") compares learning rates only, and ends where the trial winner would."""
    from tune.space import ARCHITECTURE

    seen: set = set()
    first, rest = [], []
    for e in pool:
        model = tuple(e["hp"].get(k) for k in ("n_layer", "n_head", "head_dim", *ARCHITECTURE))
        (rest if model in seen else first).append(e)
        seen.add(model)
    return first + rest


def _steps(plan: list[tuple[float, int]], entrants: list[str]) -> list[dict]:
    """ladder.json's levels for a plan: the first one's entrants known, the others' chosen as the climb goes."""
    return [{"spend": s, "n": n, "entrants": list(entrants) if i == 0 else None, "losses": {}, "kept": None}
            for i, (s, n) in enumerate(plan)]


# --- climbing: one level after another ----------------------------------------------------


# run_level(state, step, trial_ids, on_result) trains each of trial_ids to step["spend"] and calls
# on_result(trial_id, loss) as each ends
RunLevel = Callable[[dict, dict, list[str], Callable[[str, float], None]], None]


def climb(exp: Path, state: dict, run_level: RunLevel, replan: Callable[[dict, float], None] | None = None) -> str:
    """Every level of the plan not yet done, in order; returns the trial that goes on to the final budget. State is
    saved after every run, so a stopped climb continues with what is left (runs with a loss are not run again)."""
    unit = state["unit"]
    i = -1
    while i + 1 < len(state["steps"]):  # `replan` may change the levels after i
        i += 1
        step = state["steps"][i]
        if step["kept"] is not None:
            continue
        todo = [t for t in step["entrants"] if t not in step["losses"]]
        t0 = time.time()

        def on_result(trial_id: str, loss: float, i=i, step=step) -> None:
            step["losses"][trial_id] = float(loss)
            save_state(exp, state)
            print(f"ladder {i + 1}/{len(state['steps'])} at {format_amount(step['spend'], unit)}: {trial_id} "
                  f"val_loss {loss:.4f} ({len(step['losses'])}/{len(step['entrants'])})", flush=True)

        if todo:
            run_level(state, step, todo, on_result)
        seconds = time.time() - t0
        nxt = state["steps"][i + 1]["n"] if i + 1 < len(state["steps"]) else 1
        step["kept"] = sorted(step["losses"], key=lambda t: (step["losses"][t], step["entrants"].index(t)))[:nxt]
        if i + 1 < len(state["steps"]):
            state["steps"][i + 1]["entrants"] = list(step["kept"])
        state["seconds"] += seconds
        step["seconds"] = seconds
        print(f"ladder {i + 1}/{len(state['steps'])}: kept {', '.join(step['kept'])} of {len(step['entrants'])} "
              f"({seconds:.0f} s)", flush=True)
        if replan is not None and i + 1 < len(state["steps"]):
            replan(state, seconds)
        save_state(exp, state)
    if state["winner"] is None:
        state["winner"] = state["steps"][-1]["kept"][0]
        save_state(exp, state)
    return state["winner"]


# --- the runs: one ladder entrant to one spend --------------------------------------------


def _save_progress(out: Path, trainer, step_record: dict | None = None) -> None:
    """The entrant's stable checkpoint into out/, atomically per file; its level record (STEP_FILE) last."""
    tmp = out.with_name(out.name + ".saving")
    trainer.save(tmp)
    out.mkdir(parents=True, exist_ok=True)
    for f in tmp.iterdir():
        f.replace(out / f.name)
    tmp.rmdir()
    if step_record is not None:
        write_json(out / STEP_FILE, step_record)


def ladder_entry(config: dict, data, tokenizer: dict, search: SearchConfig, start: dict[str, bytes] | None,
                 out: str, spend: float, warmup: int, threads: int | None = None, device: str = "cpu") -> dict:
    """Continue one entrant's stable phase (its peak learning rate: `config`'s, the horizon's) to `spend`, then take
    a cooldown branch there; returns {"val_loss": the branch's, "stable_val_loss", "spend", "step"}. Starts from
    out/ when it holds this entrant's checkpoint (a level before, or this one cut off), else from `start` (the
    trial's stable checkpoint files). Checkpoints into out/ at every evaluation."""
    import torch

    from nanogpt.cooldown import branch_steps
    from nanogpt.tokenizer import tokenizer_from_dict
    from nanogpt.train import Status, Trainer
    from tune.space import Hparams

    if threads:
        torch.set_num_threads(threads)
    out_dir = Path(out)
    try:
        done = json.loads((out_dir / STEP_FILE).read_text())
    except (OSError, ValueError):
        done = None
    if done and done.get("spend") == spend:
        return done  # finished before a stop, its loss not yet in ladder.json
    hp = Hparams.from_config(config)
    tok = tokenizer_from_dict(tokenizer)
    cfg = hp.train_config(budget_unit=search.budget_unit, budget=spend, eval_every=_eval_every(spend, search),
                          device=device, warmup_steps=warmup, cooldown_rungs=[], **search.shared_train_fields())
    trainer = Trainer(hp.model_config(tok.vocab_size), cfg, data, tok)
    if (out_dir / MODEL_FILE).is_file():
        trainer.restore(out_dir)
    else:
        with tempfile.TemporaryDirectory() as d:
            for name, blob in start.items():
                (Path(d) / name).write_bytes(blob)
            trainer.restore(d)
    # hold the peak to `spend` (cooldown_rungs=[]: no decay of its own), then branch: the level's estimate
    trainer.planned_steps = int(spend // trainer.step_spend + 1e-9)
    trainer.total_steps, trainer.budget, trainer.rungs = None, spend, []
    record = {"spend": spend}
    if trainer.step >= trainer.planned_steps:  # trained to it before a stop, the branch not taken: take it now
        trainer.status = Status.FINISHED
        stable = trainer.evaluate(("val",))["val"]
        loss = trainer._branch(branch_steps(trainer.step, search.cooldown_frac))
        record.update(val_loss=loss, stable_val_loss=stable, step=trainer.step, actual_spend=trainer.spend)
        _save_progress(out_dir, trainer, record)
        return record
    trainer.status = Status.RUNNING

    def save(metrics: dict, t) -> None:
        if metrics["status"] == Status.RUNNING.value:
            _save_progress(out_dir, t)
            return
        record.update(val_loss=metrics["val_loss"], stable_val_loss=metrics.get("stable_val_loss"),
                      step=metrics["step"], actual_spend=metrics["spend"], status=metrics["status"])
        _save_progress(out_dir, t, record)

    trainer.run(save)
    if "val_loss" not in record:  # nothing ran (cannot happen: planned above the step), or diverged without a report
        record.update(val_loss=float("inf"), step=trainer.step, actual_spend=trainer.spend)
    return record


def _eval_every(spend: float, search: SearchConfig) -> float:
    """A level's evaluations (checkpoints): ten to its spend, as a trial's."""
    from nanogpt.train import default_eval_every

    return default_eval_every(spend, search.budget_unit)


def _entry_task(config, data, tokenizer, search, start, out, spend, warmup):
    """ladder_entry as a Ray task: threads and device from the task's resources."""
    import ray

    from tune.trainable import trial_device

    res = ray.get_runtime_context().get_assigned_resources()
    return ladder_entry(config, data, tokenizer, search, start, out, spend, warmup, max(1, int(res.get("CPU", 1))),
                        trial_device(search, res.get("GPU", 0)))


# --- the stage after Tuner.fit ------------------------------------------------------------


def _level_runner(config: SearchConfig, data_ref, tokenizer, trial_files: Callable[[str], dict[str, bytes]]):
    """climb's run_level: each entrant of a level trained to its spend as a Ray task with a trial's resources,
    from its own ladder checkpoint or (the first time) its trial's stable checkpoint, its loss reported as it ends."""
    import ray

    exp = config.experiment_dir
    first_files: dict[str, dict] = {}

    def start_files(trial_id: str) -> dict | None:
        if (exp / LADDER_DIR / trial_id / MODEL_FILE).is_file():
            return None  # it goes on from its own ladder checkpoint
        if trial_id not in first_files:
            first_files[trial_id] = trial_files(trial_id)
        return first_files[trial_id]

    def run_level(state: dict, step: dict, todo: list[str], on_result) -> None:
        task = ray.remote(num_cpus=config.cpus_per_trial, num_gpus=config.gpus_per_trial,
                          max_retries=config.max_failures)(_entry_task)
        refs = {}
        for tid in todo:
            e, start, own = state["entrants"][tid], start_files(tid), exp / LADDER_DIR / tid
            refs[task.remote({**e["hp"], "learning_rate": e["lr"]}, data_ref, tokenizer.to_dict(), config, start,
                             str(own), step["spend"], _warmup(start, own))] = tid
        pending = list(refs)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            out = ray.get(ready[0])
            on_result(refs[ready[0]], out["val_loss"])
    return run_level


def run(config: SearchConfig, data_ref, tokenizer, trials, seconds_left: float | None,
        trial_files: Callable[[str], dict[str, bytes]]) -> dict | None:
    """--ladder on: plan (or continue) the ladder, climb it, and train its winner to the final budget into final/.
    `trial_files(trial_id)`: a finished trial's stable checkpoint files. None when nothing was trained."""
    exp = config.experiment_dir
    if (exp / "final" / MODEL_FILE).is_file():
        print(f"\nfinal/ is already trained: {exp / 'final'}")
        return None
    slots = _slots(config)
    given, t_given = seconds_left, time.time()
    state = load_state(exp)
    if state is None or any(s["kept"] is None for s in state["steps"]):
        warm = _warm_workers(config, slots)  # measured before planning: the plan counts from after it
        seconds_left = seconds_left - warm if seconds_left is not None else None
    if state is None:
        from tune.trainable import final_speedup

        state = new_state(config, trials, seconds_left, slots, final_speedup(config) if config.final_auto else 1.0)
        if state is None:
            return None
        save_state(exp, state)
        print("\n" + describe_plan(state["steps"], state["final_budget"], state["unit"], state["reduction_factor"]))
    else:
        print(f"\nladder resumed: {sum(len(s['losses']) for s in state['steps'])} runs done, "
              f"{state['seconds']:.0f} s spent")
    if seconds_left is not None:  # a resumed ladder's earlier levels are not on the search's clock
        seconds_left -= state["seconds"]
    _print_lrs(state)
    run_level = _level_runner(config, data_ref, tokenizer, trial_files)

    def replan(state: dict, seconds: float) -> None:
        if not config.final_auto:
            return
        _replan(state, seconds_left - (time.time() - start_t), config.cooldown_frac)

    start_t = time.time()
    winner = climb(exp, state, run_level, replan)
    left = seconds_left - (time.time() - start_t) if seconds_left is not None else None
    out = _train_final(config, data_ref, tokenizer, state, winner, left, trial_files)
    # what this run of the ladder was given and took, start-up, levels and last run together (--final-budget auto)
    state["runs"] = state.get("runs", []) + [{"given_s": given, "took_s": time.time() - t_given}]
    save_state(exp, state)
    if config.mirror:  # the record at the URI too (ladder/'s checkpoints stay local: a URI resume climbs again)
        config.mirror.push(LADDER_FILE)
    return out


def _warm(seconds: float) -> int:
    """A no-op run that imports what a ladder run imports, holding its worker a moment so that each lands on its
    own worker."""
    import os

    import tune.trainable  # noqa: F401  torch, Ray Tune, nanogpt: a Ray worker's start-up

    time.sleep(seconds)
    return os.getpid()


def _warm_workers(config: SearchConfig, slots: int) -> float:
    """Start the Ray workers the ladder's runs will use (Tune's trial actors went with their trials): a worker's
    start-up (seconds on a loaded machine) is paid here, measured, not inside the first level's plan. Seconds."""
    import ray

    t0 = time.time()
    task = ray.remote(num_cpus=config.cpus_per_trial, num_gpus=config.gpus_per_trial)(_warm)
    pids = ray.get([task.remote(0.5) for _ in range(slots)])
    seconds = time.time() - t0
    print(f"\nladder: {len(set(pids))} Ray workers started in {seconds:.0f} s", flush=True)
    return seconds


def _warmup(start: dict | None, own: Path) -> int:
    """The trial's warmup, from its checkpoint (or the entrant's ladder checkpoint, which repeats it)."""

    return int(raw_meta(start or own)["warmup_steps"])


def _slots(config: SearchConfig) -> int:
    """How many ladder runs the cluster holds at once: trials' shares of its CPUs (and GPUs), --max-concurrent."""
    import ray

    res = ray.cluster_resources()
    slots = int(res.get("CPU", 1) // config.cpus_per_trial)
    if config.gpus_per_trial > 0:
        slots = min(slots, int(res.get("GPU", 0) // config.gpus_per_trial))
    return max(1, min(slots, config.max_concurrent or slots))


def _replan(state: dict, seconds_left: float, frac: float) -> None:
    """--final-budget auto after a level: the levels left and the final budget planned again for the seconds left,
    from the pace the level measured (the survivors' trial paces scaled by its planned / measured seconds). Fewer
    levels fit: fewer survivors are kept. The entrants' learning rates stay as first planned (`horizon`)."""
    i = max(k for k, s in enumerate(state["steps"]) if s["kept"] is not None)
    last = state["steps"][i]
    measured, planned = last.get("seconds", 0.0), _planned_seconds(state, i, frac)
    scale = min(max(planned / measured, 0.25), 4.0) if measured > 0 else 1.0
    ranked = sorted(last["losses"], key=lambda t: (last["losses"][t], last["entrants"].index(t)))
    alive = last["kept"]
    ents = [{"spend": last["spend"], "pace": state["entrants"][t]["pace"] * scale,
             "step": state["entrants"][t]["step"]} for t in alive]
    rf, unit = state["reduction_factor"], state["unit"]
    final = auto_final(max(seconds_left, 0.0), ents, rf, frac, state["slots"], unit, state.get("speedup", 1.0))
    final = final if final is not None else last["spend"] + ents[0]["step"]
    plan = levels(final, last["spend"], rf, len(alive), unit)
    last["kept"] = ranked[:plan[0][1] if plan else 1]  # never more than first kept: the plan's counts only shrink
    state["steps"][i + 1:] = _steps(plan, last["kept"])
    state["final_budget"] = final
    print("ladder re-planned from its measured pace (x" + f"{scale:.2f} the trials'): "
          + describe_plan(state["steps"][i + 1:], final, unit, rf), flush=True)


def _planned_seconds(state: dict, i: int, frac: float) -> float:
    """The seconds level i was planned to take at its entrants' trial pace."""
    step = state["steps"][i]
    prev = {t: e["spend"] for t, e in state["entrants"].items()}
    for s in state["steps"][:i]:
        for t in s["entrants"] or []:
            prev[t] = s["spend"]
    work = sorted(((step["spend"] - prev[t] + frac * step["spend"]) / state["entrants"][t]["pace"]
                   for t in step["entrants"]), reverse=True)
    return sum(work[k] for k in range(0, len(work), max(1, state["slots"]))) + LEVEL_OVERHEAD_S


def _print_lrs(state: dict) -> None:
    beta = state["horizon_lr_beta"]
    rows = [f"{t} {e['trial_lr']:.2e} -> {e['lr']:.2e}" for t, e in state["entrants"].items()]
    print(f"horizon learning rate: lr x ({format_amount(state['horizon'], state['unit'])} / trial spend)^-{beta:g}: "
          + ", ".join(rows), flush=True)


def _train_final(config: SearchConfig, data_ref, tokenizer, state: dict, winner: str, seconds_left: float | None,
                 trial_files: Callable[[str], dict[str, bytes]]) -> dict | None:
    """The winner's ladder run continued to the final budget (then decayed) into final/, as a Ray task on a whole
    node, as tune.final's train_winner; final/config.json records the ladder and the learning rate."""
    from tune.trainable import train_on_node

    exp = config.experiment_dir
    if seconds_left is not None and seconds_left <= 0:
        print(f"\nno time left of the time budget for the ladder's last run ({seconds_left:.0f} s)")
        return None
    e = state["entrants"][winner]
    own = exp / LADDER_DIR / winner
    files = ({f.name: f.read_bytes() for f in own.iterdir() if f.is_file() and f.name != STEP_FILE}
             if (own / MODEL_FILE).is_file() else trial_files(winner))
    final_cfg = dataclasses.replace(config, final_budget=state["final_budget"])
    hp = {**e["hp"], "learning_rate": e["lr"]}
    at = last_eval(raw_meta(files)).get("spend", e["spend"])
    final = exp / "final"
    out = train_on_node(
        final_cfg, data_ref, tokenizer, hp, {"trial_id": winner, "files": files}, final,
        f"final training: ladder winner {winner} (trial winner {state['raw_winner']}) continued from "
        f"{config.budget_text(at)} to {config.budget_text(state['final_budget'])} at lr {e['lr']:.2e}"
        + (f", filling the {seconds_left:.0f} s left" if seconds_left is not None else ""), seconds_left,
        chosen_by={"by": "ladder", "chosen": winner, "raw_winner": state["raw_winner"],
                   "reason": "best cooldown-branch loss at the ladder's last level" if state["steps"] else
                   "no ladder level above the trials' spend below the final budget: the trial winner"},
        ladder=record(state), horizon_lr={**horizon_record(e["trial_lr"], e["spend"], state["horizon"],
                                                           state["horizon_lr_beta"]), "lr": e["lr"]})
    m = out["metrics"]
    print(f"final model: val_loss {m.get('val_loss', float('nan')):.4f} after "
          f"{format_amount(m.get('spend', 0), config.budget_unit)} ({m.get('step')} steps, {out['wall_s']:.0f} s on "
          f"{out['threads']} threads); {final}")
    return out


def record(state: dict) -> list[dict]:
    """final/config.json's `ladder`: each level's spend, branch losses (trial id -> val_loss) and those kept."""
    return [{"spend": s["spend"], "losses": dict(s["losses"]), "kept": list(s["kept"] or []),
             "lr": {t: state["entrants"][t]["lr"] for t in s["entrants"] or []}} for s in state["steps"]]


# --- the report: ## Ladder and plots/ladder.png (JSON only) -------------------------------


def report_section(exp: Path, plot_dir: Path, missing: list[str]) -> list[str]:
    """report.md's `## Ladder`: each level (spend, the trials compared with their branch losses, those kept, the
    learning rates), and plots/ladder.png. Nothing when the search had no ladder."""
    try:
        state = load_state(exp)
    except UserError as e:
        missing.append(str(e))
        return []
    if state is None:
        return []
    unit = state["unit"]
    meta = _final_meta(exp)
    md = ["## Ladder", "",
          f"The best {len(state['entrants'])} finished trials continued their stable phases toward "
          f"{format_amount(state['final_budget'], unit)}, keeping the best 1/{state['reduction_factor']} by "
          f"cooldown-branch val_loss at each level. Peak learning rate for the horizon: the trial's x "
          f"({format_amount(state['horizon'], unit)} / its trial spend)^-{state['horizon_lr_beta']:g}. "
          f"Trial-budget winner: `{state['raw_winner']}`; ladder winner: `{state.get('winner') or '(not yet)'}`.", ""]
    rows = ["| level | spend | trial | trial val_loss | branch val_loss | lr (trial -> horizon) | kept |",
            "|---|---|---|---|---|---|---|"]
    for i, s in enumerate(state["steps"], 1):
        for t in s["entrants"] or []:
            e = state["entrants"][t]
            loss = s["losses"].get(t)
            rows.append(f"| {i} | {format_amount(s['spend'], unit)} | `{t}` | {e['val_loss']:.4f} | "
                        f"{'' if loss is None else f'{loss:.4f}'} | {e['trial_lr']:.2e} -> {e['lr']:.2e} | "
                        f"{'yes' if t in (s['kept'] or []) else ('' if s['kept'] is None else 'no')} |")
    if state["steps"]:
        md += rows + [""]
    else:
        md += ["No level fit between the trials' spend and the final budget: the trial winner was continued.", ""]
    if meta:
        last = last_eval(meta)
        md += [f"- final/: `{meta.get('continued_from')}` at {format_amount(last.get('spend', 0), unit)}, "
               f"val_loss {last.get('val_loss', float('nan')):.4f}, lr {meta.get('train', {}).get('learning_rate', 0):.2e}", ""]
    try:
        plot(state, meta, plot_dir / "ladder.png")
        md += ["![ladder](plots/ladder.png)", ""]
    except Exception as e:  # a plot never costs the report
        missing.append(f"ladder plot: {e}")
    return md


def _final_meta(exp: Path) -> dict | None:
    try:
        return raw_meta(exp / "final")
    except (OSError, ValueError):
        return None


def plot(state: dict, meta: dict | None, path: Path) -> None:
    """Every ladder run's loss against spend (its trial's end, then its branch at each level it ran), final marked."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    for t, e in state["entrants"].items():
        xs, ys = [e["spend"]], [e["val_loss"]]
        for s in state["steps"]:
            if t in s["losses"]:
                xs.append(s["spend"])
                ys.append(s["losses"][t])
        ax.plot(xs, ys, marker="o", label=t, alpha=0.8)
    if meta:
        last = last_eval(meta)
        won = meta.get("continued_from")
        if "spend" in last and won in state["entrants"]:  # the winner's last ladder point to final/
            at = [(s["spend"], s["losses"][won]) for s in state["steps"] if won in s["losses"]]
            x0, y0 = at[-1] if at else (state["entrants"][won]["spend"], state["entrants"][won]["val_loss"])
            ax.plot([x0, last["spend"]], [y0, last["val_loss"]], ls="--", color="black", alpha=0.6)
        if "spend" in last:
            ax.scatter([last["spend"]], [last["val_loss"]], marker="*", s=250, color="black", zorder=5,
                       label=f"final/ ({meta.get('continued_from')})")
    ax.set_xscale("log")
    ax.set_xlabel(f"spend ({state['unit']})")
    ax.set_ylabel("val_loss (cooldown branch; final: decayed)")
    ax.set_title("ladder: each run's loss against spend")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
