"""Cost-aware selection: utility = predicted quality - lambda * cost, and its calibration.

Every scoring policy predicts a quality per expert; this module turns those predictions
into choices. ``lam`` trades quality for cost; :func:`calibrate_lambda` finds the lambda
that meets a target mean cost on held-back prompts, and :func:`calibrate_shares` finds one
offset per expert so that each expert gets a target share of the calls (RouteLLM's
threshold calibration, generalised from two experts to N). Calibration needs only the
predictions on prompts, never their labels.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from expertgraph.core.errors import PolicyError


def _costs_2d(costs: np.ndarray | Sequence[float], n: int, e: int) -> np.ndarray:
    arr = np.asarray(costs, dtype=float)
    if arr.ndim == 1:
        arr = np.broadcast_to(arr, (n, e))
    if arr.shape != (n, e):
        raise PolicyError(f"costs have shape {arr.shape}; expected ({e},) or ({n}, {e})")
    return arr


def utility(
    quality: np.ndarray,
    costs: np.ndarray | Sequence[float],
    lam: float,
    offsets: np.ndarray | None = None,
) -> np.ndarray:
    """``quality - lam * cost (+ offsets)``, shape ``(n, E)``; NaN quality stays NaN."""
    q = np.atleast_2d(np.asarray(quality, dtype=float))
    u = q - lam * _costs_2d(costs, *q.shape)
    if offsets is not None:
        u = u + np.asarray(offsets, dtype=float)
    return u


def choose(
    quality: np.ndarray,
    costs: np.ndarray | Sequence[float],
    lam: float = 0.0,
    k: int = 1,
    *,
    offsets: np.ndarray | None = None,
    allowed: np.ndarray | None = None,
) -> np.ndarray:
    """The top-``k`` experts by utility for each row: an ``(n, k)`` array of column indices.

    Ties go to the cheaper expert, then to the earlier column. NaN predictions (an expert the
    model does not know) and columns masked out by ``allowed`` (a boolean ``(E,)`` or
    ``(n, E)``) are never chosen while a known one is left.
    """
    q = np.atleast_2d(np.asarray(quality, dtype=float))
    n, e = q.shape
    c = _costs_2d(costs, n, e)
    u = utility(q, c, lam, offsets)
    u = np.where(np.isnan(u), -np.inf, u)
    if allowed is not None:
        mask = np.broadcast_to(np.asarray(allowed, dtype=bool), (n, e))
        u = np.where(mask, u, -np.inf)
    k = max(1, min(k, e))
    # lexsort: last key is primary. Sort by -utility, then cost, then column index.
    cols = np.broadcast_to(np.arange(e), (n, e))
    order = np.lexsort((cols, c, -u), axis=1)
    return order[:, :k]


def mean_cost(
    quality: np.ndarray,
    costs: np.ndarray | Sequence[float],
    lam: float,
    k: int = 1,
    offsets: np.ndarray | None = None,
) -> float:
    """The mean per-row cost of :func:`choose` (the sum over the ``k`` chosen experts)."""
    q = np.atleast_2d(np.asarray(quality, dtype=float))
    c = _costs_2d(costs, *q.shape)
    picked = choose(q, c, lam, k, offsets=offsets)
    return float(np.take_along_axis(c, picked, axis=1).sum(axis=1).mean())


@dataclass
class Calibration:
    """The result of a calibration: the lambda found and what it gives on the held-back rows."""

    lam: float
    mean_cost: float
    target: float
    met: bool
    """False when even the cheapest choice costs more than the target."""


def calibrate_lambda(
    quality: np.ndarray,
    costs: np.ndarray | Sequence[float],
    target_cost: float,
    k: int = 1,
    *,
    lam_max: float = 1e6,
    iterations: int = 80,
) -> Calibration:
    """The smallest lambda whose mean cost on these rows is at most ``target_cost``.

    Mean cost falls (weakly) as lambda grows, so a bisection finds the boundary; the
    smallest such lambda keeps as much predicted quality as the budget allows. When even a
    huge lambda cannot meet the target, the cheapest achievable point is returned with
    ``met=False``.
    """
    q = np.atleast_2d(np.asarray(quality, dtype=float))
    c = _costs_2d(costs, *q.shape)
    if mean_cost(q, c, 0.0, k) <= target_cost:
        return Calibration(0.0, mean_cost(q, c, 0.0, k), target_cost, True)
    # Scale lambda to the data: quality differences over cost differences.
    spread_q = float(np.nanmax(q) - np.nanmin(q)) if np.isfinite(q).any() else 1.0
    spread_c = float(np.max(c) - np.min(c)) or 1.0
    hi = max(spread_q / spread_c, 1e-6)
    while mean_cost(q, c, hi, k) > target_cost and hi < lam_max:
        hi *= 2.0
    if mean_cost(q, c, hi, k) > target_cost:
        return Calibration(hi, mean_cost(q, c, hi, k), target_cost, False)
    lo = 0.0
    for _ in range(iterations):
        mid = (lo + hi) / 2
        if mean_cost(q, c, mid, k) <= target_cost:
            hi = mid
        else:
            lo = mid
    return Calibration(hi, mean_cost(q, c, hi, k), target_cost, True)


def shares(picked: np.ndarray, n_experts: int) -> np.ndarray:
    """Share of calls that went to each expert, from :func:`choose`'s output."""
    flat = np.asarray(picked).ravel()
    counts = np.bincount(flat, minlength=n_experts).astype(float)
    return counts / max(len(flat), 1)


def calibrate_shares(
    quality: np.ndarray,
    target: Mapping[int, float] | Sequence[float],
    *,
    costs: np.ndarray | Sequence[float] | None = None,
    lam: float = 0.0,
    iterations: int = 2000,
    tol: float = 0.005,
) -> np.ndarray:
    """Offsets per expert so that top-1 choice gives each expert its target share of calls.

    With two experts this is RouteLLM's threshold: the offset is the quantile of the strong
    model's predicted advantage at which the target share of calls goes to it. With N experts
    the offsets are found by a price-adjustment (auction) iteration: an expert that gets more
    than its share has its offset lowered, one that gets less has it raised, with a shrinking
    step. ``target`` is a share per column (summing to 1).
    """
    q = np.atleast_2d(np.asarray(quality, dtype=float))
    n, e = q.shape
    t = np.zeros(e)
    if isinstance(target, Mapping):
        for j, s in target.items():
            t[int(j)] = float(s)
    else:
        t = np.asarray(target, dtype=float)
    if t.shape != (e,) or np.any(t < 0) or abs(t.sum() - 1.0) > 1e-6:
        raise PolicyError(
            f"target shares must be {e} non-negative numbers summing to 1; got {t.tolist()}"
        )
    c = np.zeros((n, e)) if costs is None else _costs_2d(costs, n, e)
    base = q - lam * c
    if e == 2:
        # Exact: rank rows by the advantage of column 0 and give it the top share.
        adv = base[:, 0] - base[:, 1]
        if t[0] <= 0:
            return np.array([-(np.nanmax(np.abs(adv)) + 1.0), 0.0])
        if t[0] >= 1:
            return np.array([np.nanmax(np.abs(adv)) + 1.0, 0.0])
        cut = float(np.quantile(adv, 1.0 - t[0]))
        return np.array([-cut, 0.0])
    offsets = np.zeros(e)
    scale = float(np.nanstd(base)) or 1.0
    step = scale
    best = offsets.copy()
    best_err = np.inf
    for it in range(iterations):
        got = shares(choose(base, np.zeros(e), 0.0, 1, offsets=offsets), e)
        err = float(np.abs(got - t).max())
        if err < best_err:
            best, best_err = offsets.copy(), err
        if err <= tol:
            break
        offsets = offsets + step * (t - got)
        offsets -= offsets.mean()
        step = scale / (1.0 + it / 20.0)
    return best
