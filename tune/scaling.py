"""A scaling law fitted to a search's cooldown-rung losses, and which trial to train for the final budget.

Every cooldown rung (nanogpt.cooldown) is the loss of a copy decayed at that spend: an estimate of what the
configuration reaches when trained to exactly that spend. Over every rung of every trial this module fits
Chinchilla's form

    L(N, D) = E + A * N**-alpha + B * D**-beta

with N the model's non-embedding parameters (from its configuration) and D the tokens the decayed copy trained
on (its trial's tokens at the rung plus the branch's own). The fit is deterministic and needs numpy alone: a grid
over the two exponents, and for each pair a non-negative Huber fit of E, A, B (linear in them). A trial's
prediction at a larger budget is the law's plus the trial's own residual at its last rung, so configurations of
one size but different learning rates keep their order.

Whether to believe it is measured, not assumed: the same fit made on the rungs at half the trial budget or less
predicts the held-back later rungs, and `choose` lets the fit overrule the search's raw winner only when that
held-back error is smaller than the gap it predicts between the two at the final budget, no exponent of either
fit sits at the grid's bounds, and the same choice replayed on the held-back rungs (the early fit's pick against
the best at the last early rung, judged by their actual later losses) did no worse. Everything is read
from the trials' JSON results (tune.experiment), so it works on a results directory made elsewhere.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Iterable

import numpy as np

from nanogpt.model import swiglu_hidden

HUBER_DELTA = 0.01  # nats: residuals past this count linearly, so one noisy evaluation cannot bend the fit
EXPONENTS = (0.05, 2.0)  # the grid's bounds for alpha and beta
MIN_SIZES = 3  # distinct model sizes a fit needs (with two, alpha and A are not told apart)
MIN_SPENDS = 2  # distinct rung spends
MIN_POINTS = 6
MIN_HELD = 3  # held-back rungs for an error (and a rank correlation) worth stating
HOLD_BACK_ABOVE = 0.5  # the held-back check fits the rungs at this share of the largest spend or less


@dataclass(frozen=True)
class Point:
    """One cooldown rung of one trial."""

    trial_id: str
    n: float  # non-embedding parameters
    d: float  # tokens the decayed copy trained on
    spend: float  # the trial's training spend at the rung, in the search's budget unit (what ASHA compares)
    loss: float  # the decayed copy's val_loss
    per_spend: float  # the trial's tokens per unit of spend: a budget in that unit -> tokens


@dataclass(frozen=True)
class Law:
    """L(N, D) = e + a * N**-alpha + b * D**-beta, and how many rungs of how many sizes it was fitted to."""

    e: float
    a: float
    alpha: float
    b: float
    beta: float
    points: int
    sizes: int

    def loss(self, n, d):
        return self.e + self.a * np.power(n, -self.alpha) + self.b * np.power(d, -self.beta)

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def at_bound(self) -> bool:
        """Whether an exponent ran into the grid's bounds: the rungs then do not follow a power law the grid
        can hold (warm-up losses, a data set learnt by heart), and its extrapolation means nothing."""
        return any(math.isclose(x, bound, abs_tol=1e-9) for x in (self.alpha, self.beta) for bound in EXPONENTS)


def non_embedding_params(config: dict) -> int | None:
    """Parameters outside the embeddings of a trial's model (nanogpt.model.GPT without biases: per block the
    attention's 4 d^2 and the MLP's 8 d^2 (swiglu: 3 d times its hidden width) plus two LayerNorm weights, and
    the final LayerNorm; rmsnorm has none); None when the configuration does not say."""
    layers, heads, head_dim = (config.get(k) for k in ("n_layer", "n_head", "head_dim"))
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (layers, heads, head_dim)):
        return None
    d = heads * head_dim
    mlp = 3 * d * swiglu_hidden(d) if config.get("mlp") == "swiglu" else 8 * d * d
    norm = 0 if config.get("norm") == "rmsnorm" else d
    return layers * (4 * d * d + mlp + 2 * norm) + norm


def _number(v) -> float | None:
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    return float(v) if ok else None


def rung_points(trials: Iterable) -> list[Point]:
    """The cooldown rungs (results with cooldown_steps > 0 and a finite val_loss) of tune.experiment TrialRecords."""
    points = []
    for trial in trials:
        n = non_embedding_params(trial.config or {})
        if n is None:
            continue
        for r in trial.results:
            loss, step, tokens, spend, branch = (_number(r.get(k)) for k in
                                                 ("val_loss", "step", "tokens_seen", "spend", "cooldown_steps"))
            if None in (loss, step, tokens, spend, branch) or min(step, tokens, spend, branch) <= 0:
                continue
            d = tokens * (1 + branch / step)
            if math.isfinite(d) and n < 1e30:  # a result.json made elsewhere may hold anything
                points.append(Point(str(trial.trial_id), float(n), d, spend, loss, tokens / spend))
    return points


def too_few(points: list[Point]) -> str | None:
    """Why these points cannot carry a fit, or None when they can."""
    sizes, spends = len({p.n for p in points}), len({p.spend for p in points})
    if len(points) < MIN_POINTS or sizes < MIN_SIZES or spends < MIN_SPENDS:
        return (f"{len(points)} rung losses of {sizes} model sizes at {spends} spends: a fit needs at least "
                f"{MIN_POINTS} of {MIN_SIZES} sizes at {MIN_SPENDS} spends")
    return None


def _nonneg_ls(X: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Weighted least squares with coefficients >= 0, for a batch of designs: X (G, n, 3), y (n,), w (G, n) ->
    (G, 3). With three unknowns the optimum is the best feasible unconstrained fit over one of the 8 supports."""
    G, _, k = X.shape
    Xw = (X * w[..., None]).transpose(0, 2, 1)  # (G, 3, n)
    M, v = Xw @ X, Xw @ y
    best, best_sse = np.zeros((G, k)), w @ (y * y)
    for support in range(1, 2 ** k):
        m = np.array([(support >> i) & 1 for i in range(k)], dtype=float)
        Ms = M * np.outer(m, m) + np.diag(1 - m) + 1e-12 * np.eye(k)
        coef = np.linalg.solve(Ms, (v * m)[..., None])[..., 0]
        r = y[None, :] - (X @ coef[..., None])[..., 0]
        sse = (w * r * r).sum(axis=1)
        better = (coef >= 0).all(axis=1) & (sse < best_sse)
        best[better], best_sse[better] = coef[better], sse[better]
    return best


def _huber(r: np.ndarray) -> np.ndarray:
    a = np.abs(r)
    return np.where(a <= HUBER_DELTA, 0.5 * r * r, HUBER_DELTA * (a - 0.5 * HUBER_DELTA))


def _fit_grid(x: np.ndarray, z: np.ndarray, y: np.ndarray, alphas: np.ndarray, betas: np.ndarray):
    """For every (alpha, beta) of the grid, the Huber fit of E, A, B by reweighted least squares; (loss, coef,
    alpha, beta) of the best pair. x, z: N and D divided by their geometric means (so A and B are of order 1)."""
    al, be = (g.ravel() for g in np.meshgrid(alphas, betas, indexing="ij"))
    X = np.stack([np.ones((len(al), len(y))), x[None, :] ** -al[:, None], z[None, :] ** -be[:, None]], axis=2)
    w = np.ones((len(al), len(y)))
    for _ in range(20):  # iteratively reweighted: Huber's weights from the last fit's residuals
        coef = _nonneg_ls(X, y, w)
        r = y[None, :] - (X @ coef[..., None])[..., 0]
        w, before = np.minimum(1.0, HUBER_DELTA / np.maximum(np.abs(r), 1e-12)), w
        if np.abs(w - before).max() < 1e-6:
            break
    objective = _huber(r).sum(axis=1)
    i = int(np.argmin(objective))
    return objective[i], coef[i], al[i], be[i]


def fit_law(n, d, loss) -> Law:
    """The law fitted to rung losses `loss` of models of `n` non-embedding parameters after `d` tokens: exponents
    on a coarse grid within EXPONENTS, then a fine grid around the best pair."""
    n, d, y = (np.asarray(v, dtype=float) for v in (n, d, loss))
    n0, d0 = math.exp(np.log(n).mean()), math.exp(np.log(d).mean())
    lo, hi = EXPONENTS
    coarse = np.arange(lo, hi + 1e-9, 0.05)
    _, _, alpha, beta = _fit_grid(n / n0, d / d0, y, coarse, coarse)
    fine_a = np.clip(np.arange(alpha - 0.05, alpha + 0.0501, 0.005), lo, hi)
    fine_b = np.clip(np.arange(beta - 0.05, beta + 0.0501, 0.005), lo, hi)
    _, (e, a, b), alpha, beta = _fit_grid(n / n0, d / d0, y, fine_a, fine_b)
    return Law(e=float(e), a=float(a * n0 ** alpha), alpha=float(alpha), b=float(b * d0 ** beta), beta=float(beta),
               points=len(y), sizes=len(set(n.tolist())))


def fit_points(points: list[Point]) -> Law:
    return fit_law([p.n for p in points], [p.d for p in points], [p.loss for p in points])


def offsets(law: Law, points: list[Point]) -> dict[str, float]:
    """Each trial's residual (observed minus law) at its last rung: what its learning rate and batch add to its
    size's loss."""
    last: dict[str, Point] = {}
    for p in points:
        if p.trial_id not in last or p.d > last[p.trial_id].d:
            last[p.trial_id] = p
    return {t: p.loss - float(law.loss(p.n, p.d)) for t, p in last.items()}


def predict(law: Law, points: list[Point], trial_id: str, d: float) -> float:
    """The trial's loss after `d` tokens: the law's for its size plus its own offset."""
    mine = [p for p in points if p.trial_id == trial_id]
    return float(law.loss(mine[0].n, d)) + offsets(law, mine)[trial_id]


def spearman(x, y) -> float:
    """Spearman's rank correlation (ties averaged); nan when either side is constant."""
    def ranks(v):
        v = np.asarray(v, dtype=float)
        order = np.argsort(v, kind="stable")
        r = np.empty(len(v))
        r[order] = np.arange(len(v), dtype=float)
        for value in np.unique(v):  # ties share their mean rank
            r[v == value] = r[v == value].mean()
        return r

    rx, ry = ranks(x), ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def held_back(points: list[Point]) -> dict:
    """The fit made on the rungs at HOLD_BACK_ABOVE of the largest spend or less, scored on the later rungs of the
    same trials: {"cut", "fitted", "held", "mae", "max_error", "spearman"}, or {"reason"} when it cannot be made."""
    if not points:
        return {"reason": "no cooldown rungs"}
    cut = HOLD_BACK_ABOVE * max(p.spend for p in points)
    early = [p for p in points if p.spend <= cut]
    seen = {p.trial_id for p in early}
    late = [p for p in points if p.spend > cut and p.trial_id in seen]
    why = too_few(early) or (f"{len(late)} later rungs to hold back (at least {MIN_HELD})" if len(late) < MIN_HELD
                             else None)
    if why:
        return {"reason": f"no held-back check: {why}", "cut": cut}
    law = fit_points(early)
    shift = offsets(law, early)
    predicted = np.array([float(law.loss(p.n, p.d)) + shift[p.trial_id] for p in late])
    actual = np.array([p.loss for p in late])
    err = np.abs(predicted - actual)
    return {"cut": cut, "fitted": len(early), "held": len(late), "mae": float(err.mean()),
            "max_error": float(err.max()), "spearman": _or_none(spearman(predicted, actual)), "law": law.to_dict(),
            **_replay(early, late, dict(zip(range(len(late)), predicted)))}


def _or_none(x: float) -> float | None:
    """nan as None: what is recorded stays plain JSON."""
    return None if math.isnan(x) else x


def _replay(early: list[Point], late: list[Point], predicted: dict[int, float]) -> dict:
    """The choice replayed on the held-back rungs, among the trials that reached the largest spend: the one the
    early fit predicts best there, the one best at the last early rung (the raw winner of then), and how much
    each one's actual loss there is above the best actual one (regret)."""
    top = max(p.spend for p in late)
    end = {}  # trial -> index in late of its last rung, for trials that reached the top spend
    for i, p in enumerate(late):
        if p.spend >= 0.9 * top and (p.trial_id not in end or p.spend > late[end[p.trial_id]].spend):
            end[p.trial_id] = i
    if len(end) < 2:
        return {}
    last_early = {}
    for p in early:
        if p.trial_id in end and (p.trial_id not in last_early or p.spend > last_early[p.trial_id].spend):
            last_early[p.trial_id] = p
    actual = {t: late[i].loss for t, i in end.items()}
    fit_pick = min(end, key=lambda t: predicted[end[t]])
    raw_pick = min(last_early, key=lambda t: last_early[t].loss)
    best = min(actual.values())
    return {"replay_trials": len(end), "replay_fit": fit_pick, "replay_raw": raw_pick,
            "regret_fit": actual[fit_pick] - best, "regret_raw": actual[raw_pick] - best}


def _per_spend(points: list[Point], trial_id: str) -> float:
    return max((p for p in points if p.trial_id == trial_id), key=lambda p: p.spend).per_spend


def choose(points: list[Point], candidates: list[str], raw: str, final_budget: float) -> dict:
    """Which trial to train for `final_budget` (the search's budget unit): the raw winner `raw` (the best at the
    trial budget), or the candidate the law predicts lowest there. Candidates count only with a rung past the
    held-back cut (one stopped at an early rung would be extrapolated further than the check measured). The fit's
    pick replaces the raw
    winner only when the held-back mean absolute error is smaller than the gap it predicts between the two,
    neither the fit nor the held-back one has an exponent at the grid's bounds, and replayed on the held-back
    rungs the fit chose no worse than the raw winner of then."""
    out = {"raw_winner": raw, "chosen": raw, "trusted": False, "final_budget": final_budget}
    why = too_few(points)
    if why:
        return {**out, "reason": f"no scaling fit ({why}): the raw winner"}
    law, check = fit_points(points), held_back(points)
    cut = HOLD_BACK_ABOVE * max(p.spend for p in points)
    late = {p.trial_id for p in points if p.spend > cut}
    eligible = [t for t in dict.fromkeys([raw, *candidates]) if t in late]
    if raw not in late:
        return {**out, "law": law.to_dict(), "held_back": check, "reason": "the raw winner has no late rung: kept"}
    predicted = {t: predict(law, points, t, final_budget * _per_spend(points, t)) for t in eligible}
    pick = min(predicted, key=lambda t: (predicted[t], t != raw))
    gap = predicted[raw] - predicted[pick]
    out.update(law=law.to_dict(), held_back=check, pick=pick, gap=gap,
               predicted=dict(sorted(predicted.items(), key=lambda kv: kv[1])))
    if pick == raw:
        return {**out, "reason": "the fit predicts the raw winner best at the final budget too"}
    if "mae" not in check:
        return {**out, "reason": f"{check['reason']}: the fit is not trusted, the raw winner kept"}
    if law.at_bound or Law(**check["law"]).at_bound:
        return {**out, "reason": f"an exponent of the fit ran into its bounds {EXPONENTS}: the fit is not "
                                 f"trusted, the raw winner kept"}
    if check.get("regret_fit", 0.0) > check.get("regret_raw", 0.0):
        return {**out, "reason": f"replayed on the held-back rungs, the fit's pick ended {check['regret_fit']:.4f} "
                                 f"above the best, the raw winner of then {check['regret_raw']:.4f}: the fit is not "
                                 f"trusted, the raw winner kept"}
    if check["mae"] >= gap:
        return {**out, "reason": f"held-back error {check['mae']:.4f} >= the predicted gap {gap:.4f}: the fit is "
                                 f"not trusted, the raw winner kept"}
    return {**out, "chosen": pick, "trusted": True,
            "reason": f"held-back error {check['mae']:.4f} < the predicted gap {gap:.4f}: the fit's pick"}


def candidates(trials) -> tuple[str | None, list[str]]:
    """(the raw winner, the candidates) of a search's trials table (tune.results's, sorted by best val_loss): the
    best finished trial (None when none finished), and the trials that finished or were pruned and kept a
    checkpoint to continue from."""
    from tune.outcomes import Outcome, rankable

    ok = rankable(trials)
    finished = ok[ok["outcome"].eq(Outcome.FINISHED.value)]
    kept = ok[ok["outcome"].isin([Outcome.FINISHED.value, Outcome.PRUNED.value]) & ok["checkpoint"].notna()]
    return (None if finished.empty else str(finished.iloc[0]["trial_id"])), [str(t) for t in kept["trial_id"]]


def analyse(experiment, trials, final_budget: float, has_checkpoint=None) -> dict:
    """`choose` for a search: its rung losses read from the experiment directory's JSON (tune.experiment), the
    raw winner and the candidates from its trials table."""
    from tune.experiment import read_trials

    raw, kept = candidates(trials)
    if raw is None:
        return {"reason": "no trial finished its budget"}
    return choose(rung_points(read_trials(experiment, has_checkpoint=has_checkpoint)), kept, raw, final_budget)


def law_text(law: dict) -> str:
    return (f"L = {law['e']:.3f} + {law['a']:.4g} N^-{law['alpha']:.3f} + {law['b']:.4g} D^-{law['beta']:.3f} "
            f"({law['points']} rung losses, {law['sizes']} sizes)")


def check_text(check: dict, budget_text) -> str:
    if "mae" not in check:
        return check.get("reason", "no held-back check")
    rho = "n/a" if check["spearman"] is None else f"{check['spearman']:.2f}"
    text = (f"fitted on the {check['fitted']} rungs at {budget_text(check['cut'])} or less, it predicts the "
            f"{check['held']} later ones with mean absolute error {check['mae']:.4f} (largest {check['max_error']:.4f}), "
            f"rank correlation {rho}")
    if "replay_fit" in check:
        text += (f"; replayed among the {check['replay_trials']} trials that reached the largest spend, its pick "
                 f"{check['replay_fit']} ended {check['regret_fit']:.4f} above the best there, the best at the last "
                 f"early rung ({check['replay_raw']}) {check['regret_raw']:.4f}")
    return text


def describe(choice: dict, budget_text) -> str:
    """The terminal's lines on a `choose` result; `budget_text(amount)`: an amount in the search's unit, as text."""
    lines = []
    if "law" in choice:
        lines += [f"scaling law (N non-embedding parameters, D tokens): {law_text(choice['law'])}",
                  f"held-back check: {check_text(choice['held_back'], budget_text)}"]
    if "pick" in choice:
        p = choice["predicted"]
        lines.append(f"at {budget_text(choice['final_budget'])}: raw winner {choice['raw_winner']} predicted "
                     f"{p[choice['raw_winner']]:.4f}, the fit's pick {choice['pick']} {p[choice['pick']]:.4f}")
    chosen = choice.get("chosen")
    lines.append(f"final choice: {chosen} ({choice['reason']})" if chosen else f"no final choice: {choice['reason']}")
    return "\n".join(lines)
