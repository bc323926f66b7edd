"""The final training, after the search, for --final-budget: what is trained and where it starts. `plan_final`
picks the trial (the raw winner, or the scaling law's pick where its held-back error says it can be trusted,
tune.scaling) and, under --final-budget auto, its budget from the seconds left and the trial's own pace;
`train_winner` trains it once more as a Ray task on a whole node, from scratch or continued from its stable
checkpoint (`stable_checkpoint`, from the fit's ResultGrid), and writes final/ whole. With --ladder on the best
trials climb to the final budget instead (tune.ladder): `final_training` chooses between the two.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from nanogpt.checkpoint import MODEL_FILE
from nanogpt.errors import UserError
from tune import scaling
from tune.config import SearchConfig, format_amount
from tune.outcomes import Outcome

FINAL_DIR = "final"


def final_training(config: SearchConfig, data_ref, tokenizer, trials, seconds_left: float | None, grid):
    """--final-budget: the best trials climb to the final budget (--ladder on, tune.ladder), or the winner is trained
    once more (train_winner). What they return: None when nothing was trained. `grid`: the search's `Tuner.fit()`."""
    if config.ladder == "on":
        from tune import ladder

        return ladder.run(config, data_ref, tokenizer, trials, seconds_left, lambda t: stable_checkpoint(grid, t))
    return train_winner(config, data_ref, tokenizer, trials, seconds_left, grid)


def auto_final_budget(config: SearchConfig, best, seconds_left: float, speedup: float = 1.0) -> float | None:
    """--final-budget auto: the final training's first plan, from the seconds left and the winner's trial's own
    pace (its training spend over its whole run's seconds, evaluations and branches included) x `speedup` (the
    final training's pace over a trial's: tune.trainable.final_speedup, the node's threads), on top of the trial's
    spend when it is continued. The final training then plans its length from its own speed on the node's threads
    so that it ends within seconds_left (TrainConfig.fill_time_s); the first plan sets its evaluations' spacing and
    the horizon of its learning rate (continued_lr). None: no time for one more of its steps."""
    pace = float(best["train_spend"]) / max(float(best["seconds"]), 1e-9) * speedup
    start = float(best["train_spend"]) if config.final_from == "continue" else 0.0
    budget = start + pace * seconds_left
    if config.budget_unit == "steps":
        budget = float(int(budget))
    step = float(best["train_spend"]) / max(int(best["steps"]), 1)  # one of its steps: the least a training adds
    return budget if budget >= start + step and seconds_left > 0 else None


def plan_final(config: SearchConfig, trials, seconds_left: float | None = None, speedup: float = 1.0) -> tuple | None:
    """(the trial the final training starts from, the configuration with its final budget, the scaling choice
    (tune.scaling)): the raw winner (the best finished trial), or the scaling law's pick where its held-back error
    says it can be trusted. None (and one line) when there is nothing to train. `speedup`: auto_final_budget's."""
    final = config.experiment_dir / FINAL_DIR
    finished = trials[trials["outcome"].eq(Outcome.FINISHED)]  # a diverged trial has that outcome (tune.results)
    asked = "auto" if config.final_auto else config.budget_text(config.final_budget)
    if finished.empty:
        print(f"\nno trial finished its budget: no final training (--final-budget {asked})")
        return None
    best = finished.iloc[0]
    if config.final_auto:
        budget = auto_final_budget(config, best, seconds_left or 0.0, speedup)
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
        budget = (auto_final_budget(config, pick, seconds_left or 0.0, speedup) if config.final_auto
                  else config.final_budget)
        if budget is None:
            print(f"the scaling law's pick {pick['trial_id']} has no time left for one more of its steps: "
                  f"the raw winner {best['trial_id']} is trained")
            choice = {**choice, "chosen": best["trial_id"], "reason": "no time left for the pick's steps"}
        else:
            best, config = pick, dataclasses.replace(config, final_budget=budget)
    if config.final_auto:
        print(f"final budget (auto): the final training fills the {seconds_left:.0f} s left, its length planned "
              f"from its own speed (first plan {config.budget_text(config.final_budget)}, at {best['trial_id']}'s "
              f"trial pace x {speedup:g}: the node's threads over a trial's)")
    return best, config, choice


def train_winner(config: SearchConfig, data_ref, tokenizer, trials, seconds_left: float | None = None,
                 grid=None) -> dict | None:
    """--final-budget: the trial plan_final picks, trained once more for that budget as a Ray task on a whole
    node; writes final/. None when there is nothing to train. `seconds_left`: what --final-budget auto may use.
    `grid`: what the search's `Tuner.fit()` returned (--final-from continue)."""
    from tune.space import HPARAMS
    from tune.trainable import final_speedup, train_on_node

    # the node's pace is asked of Ray only where a plan needs it (--final-budget auto)
    plan = plan_final(config, trials, seconds_left, final_speedup(config) if config.final_auto else 1.0)
    if plan is None:
        return None
    best, config, choice = plan
    exp = config.experiment_dir
    final = exp / FINAL_DIR
    hp = {k: best[k].item() if hasattr(best[k], "item") else best[k] for k in HPARAMS}
    start, how = _final_start(config, best, grid)
    meta = {"chosen_by": choice}
    if start is not None:  # a continued trial's peak learning rate follows its new horizon, as the ladder's runs do
        meta["horizon_lr"] = horizon = continued_lr(config, float(hp["learning_rate"]), float(best["train_spend"]))
        hp["learning_rate"] = horizon["lr"]
        how += f" at lr {horizon['lr']:.2e} (the trial's {horizon['trial_lr']:.2e} x (horizon / its spend)^-{horizon['beta']:g})"
    out = train_on_node(config, data_ref, tokenizer, hp, start, final,
                        f"final training: {how} to {config.budget_text(config.final_budget)}",
                        seconds_left if config.final_auto else None, **meta)
    m = out["metrics"]
    print(f"final model: val_loss {m.get('val_loss', float('nan')):.4f} after {format_amount(m.get('spend', 0), config.budget_unit)} "
          f"({m.get('step')} steps, {out['wall_s']:.0f} s on {out['threads']} threads); {final}")
    from tune.results import final_cut_short, final_or_best

    short = final_cut_short({"status": out.get("status"), "step": m.get("step")})
    if short:
        print(f"warning: the final training was cut short: {short}")
    use, why = final_or_best(exp)
    if why and use.name == "best":
        print(f"warning: {why}: the search's answer is best/")
    return out


def continued_lr(config: SearchConfig, trial_lr: float, trial_spend: float) -> dict:
    """The peak learning rate of the winner continued from `trial_spend` to the final budget (its first plan under
    auto): lr x (final / trial spend)^-beta, --horizon-lr-beta (tune.ladder.horizon_lr). Measured here: beta 0.125
    against 0 was lower in 4 of 5 continuations at a 4x horizon, and the ladder's final run (the same configuration
    and steps at the horizon's lr) 0.006 nats lower than the winner continued at its trial's at 28x
    (benchmarks/RESULTS.md, "Selection regret ... at beta 0", "Equal total FLOPs"). What final/config.json records
    under `horizon_lr`."""
    from tune.ladder import horizon_record

    return horizon_record(trial_lr, trial_spend, float(config.final_budget), config.horizon_lr_beta)


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
