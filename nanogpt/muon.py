"""Muon with torch.optim.Muon's update rule, at AdamW's cost: Newton-Schulz batched over same-shape matrices, in
the dtype and form measured fastest for each shape on the device at hand.

torch.optim.Muon orthogonalizes every matrix on its own, in bfloat16. bf16 matmuls are fast on GPUs and on CPUs
with avx512_bf16 or AMX, but many times slower than fp32 on AVX2-only CPUs, and on every CPU slower for small
matrices; one Newton-Schulz loop per matrix also pays the per-op overhead once per matrix. Here the matrices of
one (oriented) shape are stacked and orthogonalized together with torch.bmm, by whichever of three equivalent
methods measured fastest for that stack:

- "bfloat16": torch's own iteration in bf16;
- "float32": the same iteration in fp32;
- "float32-gram": the same polynomial carried out on the small m x m Gram matrix (fp32 only: the Gram form loses
  accuracy in bf16). With X (m x n, m <= n) and A = X X^T, each step is X <- P(A) X with P(A) = aI + bA + cA^2,
  and the next Gram matrix is P(A) A P(A) = A P(A)^2 (polynomials in A commute), so the whole loop runs on m x m
  matrices and X is touched twice: cheaper when n >= 2m (the MLP and qkv matrices).

The choice is measured once per process and shape and kept in the optimizer's param group (so in checkpoints:
a resumed run orthogonalizes exactly as before).
"""

from __future__ import annotations

import logging
import math
import time

import torch
from torch import Tensor

log = logging.getLogger(__name__)

# torch.optim.Muon's defaults (Keller Jordan's coefficients)
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
NS_STEPS = 5
EPS = 1e-7
METHODS = ("float32", "bfloat16", "float32-gram")


def newton_schulz_flops(shape: torch.Size, steps: int = NS_STEPS) -> int:
    """FLOPs of one Newton-Schulz orthogonalization of a matrix of `shape`, as torch.optim.Muon runs it (m <= n):
    each step X X^T (2 m^2 n), A A (2 m^3) and B X (2 m^2 n). What a budget counts is the method's, whichever of
    the equivalent forms this machine runs fastest (the Gram form does fewer), so a budget means the same on every
    machine."""
    m, n = sorted(int(d) for d in shape[:2])
    return steps * (4 * m * m * n + 2 * m**3)


def adjusted_lr(lr: float, adjust_lr_fn: str | None, shape: torch.Size) -> float:
    """torch.optim.Muon's learning-rate adjustment for a matrix of `shape`."""
    A, B = shape[:2]
    if adjust_lr_fn is None or adjust_lr_fn == "original":
        return lr * math.sqrt(max(1, A / B))
    if adjust_lr_fn == "match_rms_adamw":
        return lr * 0.2 * math.sqrt(max(A, B))
    return lr


def orthogonalize(X: Tensor, method: str, coefficients=NS_COEFFICIENTS, steps: int = NS_STEPS,
                  eps: float = EPS) -> Tensor:
    """Newton-Schulz orthogonalization of a stack X (k, m, n) of wide matrices (m <= n), each on its own.
    Returns fp32 for the fp32 methods, bf16 for "bfloat16" (as torch.optim.Muon's update)."""
    a, b, c = coefficients
    X = X.to(torch.bfloat16 if method == "bfloat16" else torch.float32)
    X = X / X.norm(dim=(1, 2), keepdim=True).clamp(min=eps)  # spectral norm at most 1
    if method == "float32-gram":
        return _gram_newton_schulz(X, a, b, c, steps)
    for _ in range(steps):
        A = torch.bmm(X, X.mT)
        B = torch.baddbmm(A, A, A, beta=b, alpha=c)  # bA + cA^2
        X = torch.baddbmm(X, B, X, beta=a)  # aX + BX
    return X


def _gram_newton_schulz(X: Tensor, a: float, b: float, c: float, steps: int) -> Tensor:
    """The Newton-Schulz polynomial on the Gram matrix: Q = P_{k-1} ... P_0, then Q X (see the module doc)."""
    A = torch.bmm(X, X.mT)  # (k, m, m)
    eye = torch.eye(A.size(-1), dtype=A.dtype, device=A.device)
    Q = None
    for i in range(steps):
        P = torch.baddbmm(torch.add(eye, A, alpha=b / a), A, A, alpha=c / a).mul_(a)  # aI + bA + cA^2
        Q = P if Q is None else torch.bmm(P, Q)
        if i < steps - 1:
            A = torch.bmm(torch.bmm(A, P), P)
    return torch.bmm(Q, X)


def _time(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


class MethodChoices:
    """The method that orthogonalizes each stack shape fastest here, measured once per process: every Muon the
    process makes (a worker's trials, one after another) takes the first measurement of a shape, rather than each
    measuring again and perhaps choosing otherwise. One instance, METHOD_CHOICES."""

    def __init__(self) -> None:
        self.measured: dict[tuple, str] = {}  # (device type, k, m, n) -> fastest method

    def fastest(self, k: int, m: int, n: int, device: torch.device, rounds: int = 3) -> str:
        """The method that orthogonalizes a (k, m, n) stack fastest here: measured once per process, alternating
        rounds, best of each. bf16 only where the device has it fast, which is what the measurement finds out."""
        key = (device.type, k, m, n)
        if key not in self.measured:
            candidates = [meth for meth in METHODS if meth != "float32-gram" or n >= 2 * m]
            # its own generator: measuring must not move the global RNG that dropout and sampling draw from
            X = torch.randn(k, m, n, device=device, generator=torch.Generator(device=device).manual_seed(0))
            best = {meth: math.inf for meth in candidates}
            for _ in range(rounds + 1):  # the first round warms up
                for meth in candidates:
                    best[meth] = min(best[meth], _time(lambda: orthogonalize(X, meth), device))
            self.measured[key] = min(candidates, key=best.get)
            log.debug("Newton-Schulz on %s for %dx%dx%d: %s (%s)", device.type, k, m, n, self.measured[key],
                      ", ".join(f"{meth} {s * 1e3:.2f} ms" for meth, s in best.items()))
        return self.measured[key]


METHOD_CHOICES = MethodChoices()


class Muon(torch.optim.Optimizer):
    """torch.optim.Muon's algorithm and arguments (nesterov momentum, decoupled weight decay, adjust_lr_fn), with
    the same state ("momentum_buffer") and group keys, plus "ns_methods": the method chosen per shape."""

    def __init__(self, params, lr: float = 1e-3, weight_decay: float = 0.1, momentum: float = 0.95,
                 nesterov: bool = True, ns_coefficients: tuple[float, float, float] = NS_COEFFICIENTS,
                 eps: float = EPS, ns_steps: int = NS_STEPS, adjust_lr_fn: str | None = None,
                 ns_method: str | None = None):
        if not 0.0 <= lr or not 0.0 <= momentum or not 0.0 <= weight_decay:
            raise ValueError(f"lr, momentum and weight_decay must be >= 0, got {lr}, {momentum}, {weight_decay}")
        if adjust_lr_fn not in (None, "original", "match_rms_adamw"):
            raise ValueError(f"adjust_lr_fn must be None, 'original' or 'match_rms_adamw', got {adjust_lr_fn!r}")
        if ns_method is not None and ns_method not in METHODS:
            raise ValueError(f"ns_method must be None (measure) or one of {', '.join(METHODS)}, got {ns_method!r}")
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov,
                        ns_coefficients=ns_coefficients, eps=eps, ns_steps=ns_steps, adjust_lr_fn=adjust_lr_fn)
        super().__init__(params, defaults)
        self.ns_method = ns_method  # None: measured per shape
        for group in self.param_groups:
            group["ns_methods"] = {}
            for p in group["params"]:
                if p.ndim != 2:
                    raise ValueError(f"Muon only takes 2-D parameters, got one of shape {tuple(p.shape)}")

    def _method(self, group: dict, X: Tensor) -> str:
        """This shape's method: the one saved in the group (a resumed run keeps it), else the fastest here."""
        methods = group.setdefault("ns_methods", {})  # a torch.optim.Muon checkpoint has none
        k, m, n = X.shape
        key = f"{m}x{n}"
        if key not in methods:
            methods[key] = self.ns_method or METHOD_CHOICES.fastest(k, m, n, X.device)
        return methods[key]

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if params:
                self._step_group(group, params)
        return loss

    def _step_group(self, group: dict, params: list[Tensor]) -> None:
        lr, wd, mu = group["lr"], group["weight_decay"], group["momentum"]
        grads = [p.grad for p in params]
        bufs = []
        for p in params:
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(p.grad, memory_format=torch.preserve_format)
            bufs.append(state["momentum_buffer"])
        torch._foreach_lerp_(bufs, grads, 1 - mu)
        updates = torch._foreach_lerp(grads, bufs, mu) if group["nesterov"] else bufs
        # stacks of the same wide shape (a tall matrix is orthogonalized as its transpose, as torch does)
        stacks: dict[tuple, list[int]] = {}
        for i, u in enumerate(updates):
            stacks.setdefault((min(u.shape), max(u.shape)), []).append(i)
        ortho: list[Tensor] = [None] * len(params)
        for idx in stacks.values():
            X = torch.stack([updates[i].mT if updates[i].size(0) > updates[i].size(1) else updates[i] for i in idx])
            O = orthogonalize(X, self._method(group, X), group["ns_coefficients"], group["ns_steps"], group["eps"])
            for j, i in enumerate(idx):
                ortho[i] = O[j].mT if updates[i].size(0) > updates[i].size(1) else O[j]
        if wd != 0:
            torch._foreach_mul_(params, 1 - lr * wd)
        by_lr: dict[float, list[int]] = {}
        for i, p in enumerate(params):
            by_lr.setdefault(adjusted_lr(lr, group["adjust_lr_fn"], p.shape), []).append(i)
        for alr, idx in by_lr.items():
            torch._foreach_add_([params[i] for i in idx], [ortho[i].to(params[i].dtype) for i in idx], alpha=-alr)
