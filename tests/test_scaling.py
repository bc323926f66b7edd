"""tune.scaling: the law fitted to cooldown rungs, its held-back check, and the choice of the final trial."""

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest

from tune.scaling import Point, choose, fit_law, held_back, non_embedding_params, rung_points

E, A, ALPHA, B, BETA = 1.0, 30.0, 0.35, 400.0, 0.4
SIZES = {"s": (1, 16), "m": (2, 24), "l": (4, 32)}  # trial -> (n_layer, head_dim) with 2 heads
RUNGS = (0.1, 0.3, 0.9, 1.0)  # of the trial budget, as ASHA's rungs and the end branch fall
BUDGET = 5e11  # FLOPs a trial: the smallest model is the best there, a larger one at 4x


def _n(trial: str) -> int:
    layers, head_dim = SIZES[trial]
    return non_embedding_params({"n_layer": layers, "n_head": 2, "head_dim": head_dim})


def _law(n, d):
    return E + A * n ** -ALPHA + B * d ** -BETA


def _points(bump: float = 0.0) -> list[Point]:
    """Rungs of a FLOPs-budget search that follow the law exactly (6N FLOPs a token, branches of a fifth);
    `bump` is added to every trial's rung at 0.9 of the budget."""
    out = []
    for trial in SIZES:
        n = _n(trial)
        for frac in RUNGS:
            d = BUDGET * frac / (6 * n) * 1.2
            out.append(Point(trial, n, d, BUDGET * frac, _law(n, d) + (bump if frac == 0.9 else 0.0), 1 / (6 * n)))
    return out


def test_non_embedding_params_match_the_model():
    from nanogpt.model import GPT, GPTConfig

    model = GPT(GPTConfig(block_size=8, vocab_size=11, n_layer=2, n_head=2, n_embd=24, bias=False))
    embeddings = model.transformer.wte.weight.numel() + model.transformer.wpe.weight.numel()
    assert non_embedding_params({"n_layer": 2, "n_head": 2, "head_dim": 12}) == \
        sum(p.numel() for p in model.parameters()) - embeddings
    assert non_embedding_params({"n_layer": 2, "n_head": "2", "head_dim": 12}) is None
    for options in (dict(mlp="swiglu"), dict(mlp="relu2", norm="rmsnorm", pos_emb="rope", tie_embeddings=False)):
        model = GPT(GPTConfig(block_size=8, vocab_size=11, n_layer=2, n_head=2, n_embd=24, bias=False, **options))
        embeddings = sum(p.numel() for n, p in model.named_parameters() if n.endswith(("wte.weight", "wpe.weight")))
        head = 0 if model.config.tie_embeddings else model.lm_head.weight.numel()
        assert non_embedding_params({"n_layer": 2, "n_head": 2, "head_dim": 12, **options}) == \
            sum(p.numel() for p in model.parameters()) - embeddings - head


def test_fit_recovers_known_parameters():
    n = np.repeat([2e4, 5e4, 1e5, 2e5, 4e5], 4)
    d = np.tile([1e6, 3e6, 9e6, 2e7], 5)
    law = fit_law(n, d, _law(n, d))
    assert (law.e, law.a, law.alpha, law.b, law.beta) == pytest.approx((E, A, ALPHA, B, BETA), rel=1e-6)
    # small noise and one wild evaluation: Huber keeps the fit near the truth
    noisy = _law(n, d) + np.random.default_rng(0).normal(0, 0.003, n.shape)
    noisy[3] += 0.3
    law = fit_law(n, d, noisy)
    assert law.e == pytest.approx(E, abs=0.1) and law.alpha == pytest.approx(ALPHA, abs=0.05)
    assert law.beta == pytest.approx(BETA, abs=0.05)
    assert float(law.loss(1e5, 1e7)) == pytest.approx(_law(1e5, 1e7), abs=0.01)


def test_held_back_error_fits_early_rungs_and_scores_late_ones():
    exact = held_back(_points())
    assert exact["cut"] == 0.5 * BUDGET and (exact["fitted"], exact["held"]) == (6, 6)
    assert exact["mae"] < 1e-6 and exact["spearman"] == pytest.approx(1.0)
    bumped = held_back(_points(bump=0.3))  # half the held-back rungs are 0.3 off
    assert bumped["mae"] == pytest.approx(0.15, abs=1e-6) and bumped["max_error"] == pytest.approx(0.3, abs=1e-6)
    assert "reason" in held_back([p for p in _points() if p.spend > 0.5 * BUDGET])  # nothing early to fit


def test_choose_a_larger_model_for_a_larger_budget_when_trusted():
    points = _points()
    last = {p.trial_id: p.loss for p in points if p.spend == BUDGET}
    assert min(last, key=last.get) == "s"  # the smallest model wins at the trial budget
    choice = choose(points, list(SIZES), "s", 4 * BUDGET)
    assert choice["pick"] == choice["chosen"] == "m" and choice["trusted"]
    d = 4 * BUDGET / (6 * _n("m"))
    assert choice["predicted"]["m"] == pytest.approx(_law(_n("m"), d), abs=1e-6)
    assert choice["gap"] > 0 and "the fit's pick" in choice["reason"]
    json.dumps(choice, allow_nan=False)  # recorded in final/config.json: plain JSON


def test_choose_keeps_the_raw_winner_when_the_held_back_error_is_larger_than_the_gap():
    choice = choose(_points(bump=0.3), list(SIZES), "s", 4 * BUDGET)
    assert choice["pick"] == "m" and choice["held_back"]["mae"] >= choice["gap"]
    assert choice["chosen"] == "s" and not choice["trusted"] and "not trusted" in choice["reason"]


def test_too_few_sizes_no_prediction():
    two = [p for p in _points() if p.trial_id != "l"]
    choice = choose(two, ["s", "m"], "s", 4 * BUDGET)
    assert choice["chosen"] == "s" and "law" not in choice and "2 model sizes" in choice["reason"]


def test_rung_points_are_the_cooldown_branches():
    results = [
        {"step": 10, "spend": 10.0, "tokens_seen": 640, "val_loss": 2.5, "cooldown_steps": 2},
        {"step": 20, "spend": 20.0, "tokens_seen": 1280, "val_loss": 2.1, "cooldown_steps": 0},  # stable phase
        {"step": 30, "spend": 30.0, "tokens_seen": 1920, "val_loss": math.inf, "cooldown_steps": 6},  # diverged
        {"step": 40, "spend": 40.0, "tokens_seen": 2560, "val_loss": 2.2, "cooldown_steps": 10},
    ]
    config = {"n_layer": 1, "n_head": 2, "head_dim": 8}
    huge = [{**results[0], "tokens_seen": 1e308, "cooldown_steps": 1e308}]  # a results directory made elsewhere
    points = rung_points([SimpleNamespace(trial_id="a", config=config, results=results),
                          SimpleNamespace(trial_id="b", config={"n_layer": "x"}, results=results),
                          SimpleNamespace(trial_id="c", config={**config, "n_layer": 10 ** 400}, results=results),
                          SimpleNamespace(trial_id="d", config=config, results=huge)])
    assert [(p.spend, p.loss) for p in points] == [(10.0, 2.5), (40.0, 2.2)]
    assert [p.d for p in points] == [640 * 1.2, 2560 * 1.25]  # the branch's own tokens count
    assert points[0].per_spend == 64 and points[0].n == non_embedding_params(config)


# --- a synthetic results directory: the report's section and best_val_loss under wsd -------------------


def _results_dir(tmp_path):
    from tune.config import build_parser, config_from_args

    config = config_from_args(build_parser().parse_args(
        ["--results-dir", str(tmp_path), "--name", "syn", "--trial-budget", f"{BUDGET:g}flops",
         "--final-budget", f"{4 * BUDGET:g}flops", "--schedule", "wsd"]))
    exp = config.experiment_dir
    exp.mkdir(parents=True)
    config.save()
    for trial in SIZES:
        n, (layers, head_dim) = _n(trial), SIZES[trial]
        d = exp / f"trial_{trial}"
        (d / "checkpoint_000000").mkdir(parents=True)
        (d / "params.json").write_text(json.dumps({"n_layer": layers, "n_head": 2, "head_dim": head_dim,
                                                   "learning_rate": 1e-3, "batch_size": 8}))
        rows = []
        for i, frac in enumerate(RUNGS):
            tokens = BUDGET * frac / (6 * n)
            step = int(tokens // 512)
            rung = {"trial_id": trial, "step": step, "spend": BUDGET * frac, "tokens_seen": tokens,
                    "cooldown_steps": step / 5, "val_loss": _law(n, tokens * 1.2), "val_bpc": 3.0, "n_params": n}
            stable = {**rung, "step": step + 1, "cooldown_steps": 0, "val_loss": 0.5}  # lower, but at the peak lr
            rows += [rung, stable] if frac < 1 else [{**rung, "outcome": "finished", "checkpoint_dir_name":
                                                      "checkpoint_000000"}]
        (d / "result.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return exp


def test_best_val_loss_under_wsd_is_a_cooldown_rung_loss(tmp_path):
    from tune.report import load

    df = load(_results_dir(tmp_path))
    assert (df["best_val_loss"] > 1.0).all()  # not the stable phase's 0.5
    assert df["trial_id"].iloc[0] == "s"


def test_report_shows_the_scaling_section(tmp_path):
    from tune.report import write_report

    exp = _results_dir(tmp_path)
    text = write_report(exp).read_text()
    section = text.split("## Scaling law: which configuration for the final budget")[1].split("\n## ")[0]
    assert "fit: L = 1.000 + 30 N^-0.350 + 400 D^-0.400 (12 rung losses, 3 sizes)" in section
    assert "held-back check: fitted on the 6 rungs" in section and "the fit's pick" in section
    assert "| m | raw winner" not in section and "| s | raw winner |" in section and "| m | fit's pick |" in section
    assert (exp / "plots" / "scaling_law.png").stat().st_size > 1000


def test_choose_keeps_the_raw_winner_when_an_exponent_is_at_its_bound():
    from tune.scaling import EXPONENTS

    # losses that fall with tokens faster than the steepest exponent allowed: the fit runs into the bound
    points = [Point(p.trial_id, p.n, p.d, p.spend, E + A * p.n ** -ALPHA + 1e8 * p.d ** -3.0, p.per_spend)
              for p in _points()]
    choice = choose(points, list(SIZES), "s", 4 * BUDGET)
    assert any(x == pytest.approx(EXPONENTS[1]) for x in (choice["law"]["alpha"], choice["law"]["beta"]))
    assert choice["pick"] != "s" and choice["held_back"]["mae"] < choice["gap"]  # the bound alone keeps the winner
    assert choice["chosen"] == "s" and not choice["trusted"] and "bounds" in choice["reason"]


def test_replay_judges_the_early_fits_pick_by_the_actual_later_losses():
    from tune.scaling import _replay

    early = [Point("a", 1, 1, 1, 2.0, 1), Point("b", 2, 1, 1, 2.5, 1), Point("c", 3, 1, 1, 3.0, 1)]
    late = [Point("a", 1, 9, 9, 1.5, 1), Point("b", 2, 9, 9, 1.2, 1), Point("c", 3, 9, 5, 1.0, 1)]  # c stopped early
    replay = _replay(early, late, {0: 1.4, 1: 1.6, 2: 0.5})
    assert (replay["replay_trials"], replay["replay_fit"], replay["replay_raw"]) == (2, "a", "a")
    assert replay["regret_fit"] == replay["regret_raw"] == pytest.approx(0.3)


def test_choose_keeps_the_raw_winner_when_the_replayed_choice_did_worse(monkeypatch):
    import tune.scaling

    check = {**held_back(_points()), "replay_fit": "m", "replay_raw": "s", "regret_fit": 0.05, "regret_raw": 0.0}
    monkeypatch.setattr(tune.scaling, "held_back", lambda points: check)
    choice = choose(_points(), list(SIZES), "s", 4 * BUDGET)
    assert choice["pick"] == "m" and check["mae"] < choice["gap"]
    assert choice["chosen"] == "s" and not choice["trusted"] and "replayed" in choice["reason"]


def test_the_final_training_starts_from_the_trusted_pick(tmp_path, capsys):
    from tune.config import SearchConfig
    from tune.report import load
    from tune.final import plan_final

    exp = _results_dir(tmp_path)
    best, config, choice = plan_final(SearchConfig.load(exp), load(exp))
    assert best["trial_id"] == choice["chosen"] == "m" and choice["raw_winner"] == "s"
    assert config.final_budget == 4 * BUDGET
    assert "final choice: m (held-back error" in capsys.readouterr().out


def test_progress_best_so_far_under_wsd_counts_cooldown_rungs_only():
    from tune.config import build_parser, config_from_args
    from tune.progress import Progress

    config = config_from_args(build_parser().parse_args(["--schedule", "wsd"]))
    progress, trial = Progress(config), SimpleNamespace(trial_id="t")
    progress.on_trial_result(0, [], trial, {"val_loss": 2.0, "cooldown_steps": 3})
    progress.on_trial_result(0, [], trial, {"val_loss": 1.5, "cooldown_steps": 0})  # the stable phase's
    assert progress.best == (2.0, "t")


def test_auto_keeps_the_raw_winner_when_the_pick_has_no_time_for_a_step(tmp_path, monkeypatch, capsys):
    """--final-budget auto: the pick's own pace sizes its budget; where that leaves it no step (None), the raw
    winner is trained at its own budget (it was the pick's None replaced by the raw winner's budget)."""
    import dataclasses

    import tune.final
    from tune.config import SearchConfig
    from tune.report import load
    from tune.final import plan_final

    exp = _results_dir(tmp_path)
    config = dataclasses.replace(SearchConfig.load(exp), final_auto=True)
    monkeypatch.setattr(tune.final, "auto_final_budget",
                        lambda config, best, seconds_left, speedup: 4 * BUDGET if best["trial_id"] == "s" else None)
    best, config, choice = plan_final(config, load(exp), seconds_left=60.0)
    assert best["trial_id"] == choice["chosen"] == choice["raw_winner"] == "s" and config.final_budget == 4 * BUDGET
    assert "no time left for the pick's steps" in choice["reason"]
    assert "the scaling law's pick m has no time left" in capsys.readouterr().out
