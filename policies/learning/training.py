"""Training a learned router: cross-validation, the lambda sweep and :func:`train_router`.

:func:`train_router` fits a model on a :class:`~expertgraph.policies.data.dataset.RoutingDataset`,
measures its cost/quality curve on out-of-fold predictions (held-back data) and calibrates
lambda, or per-expert share offsets, on them; the result is a
:class:`~expertgraph.policies.routing.learned.LearnedRouter`.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from expertgraph.core.errors import PolicyError
from expertgraph.core.protocols import Embedder
from expertgraph.policies.learning.cost import calibrate_lambda, calibrate_shares, choose, shares
from expertgraph.policies.learning.features import Featurizer
from expertgraph.policies.learning.models.base import make_model
from expertgraph.policies.routing.learned import LearnedRouter


def sweep(
    quality: np.ndarray, scores: np.ndarray, costs: np.ndarray, points: int = 161
) -> list[dict[str, float]]:
    """Top-1 choice over a sweep of lambda: ``[{lam, cost, score}]`` from lam = 0 upwards.

    ``costs`` is per row ``(n, E)`` or per expert ``(E,)``. The lambdas run up to 1000 over
    the cost spread, far enough that the cheapest expert wins every row at the end.
    """
    c2 = np.broadcast_to(np.asarray(costs, dtype=float), quality.shape)
    spread = float(np.max(c2) - np.min(c2)) or 1.0
    lams = np.concatenate([[0.0], np.geomspace(1e-4, 1e3, points - 1) / spread])
    rows = np.arange(len(quality))
    out = []
    for lam in lams:
        picked = choose(quality, c2, float(lam))[:, 0]
        out.append(
            {
                "lam": float(lam),
                "cost": float(c2[rows, picked].mean()),
                "score": float(np.nanmean(scores[rows, picked])),
            }
        )
    return out


def fit_predict(
    kind: str,
    params: Mapping[str, Any] | None,
    X_train: np.ndarray,
    Y_train: np.ndarray,
    X_eval: np.ndarray,
    tasks: Sequence[str | None] | None = None,
) -> np.ndarray:
    """Fit a fresh model on one set of rows and predict another."""
    model = make_model(kind, params)
    model.fit(X_train, Y_train, tasks=tasks)
    return np.asarray(model.predict(X_eval), dtype=float)


def fold_indices(n: int, folds: int, seed: int = 0) -> list[np.ndarray]:
    """``folds`` disjoint index arrays covering ``range(n)``, shuffled with ``seed``."""
    if folds < 2 or folds > n:
        raise PolicyError(f"cannot split {n} rows into {folds} folds")
    order = np.random.default_rng(seed).permutation(n)
    return [np.sort(part) for part in np.array_split(order, folds)]


def out_of_fold(
    kind: str,
    params: Mapping[str, Any] | None,
    X: np.ndarray,
    Y: np.ndarray,
    folds: int = 5,
    *,
    tasks: Sequence[str | None] | None = None,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Cross-validated predictions: each row predicted by a model that did not see it."""
    out = np.zeros_like(Y, dtype=float)
    for f, held in enumerate(fold_indices(len(X), folds, seed)):
        train = np.setdiff1d(np.arange(len(X)), held)
        sub_tasks = [tasks[i] for i in train] if tasks is not None else None
        out[held] = fit_predict(kind, params, X[train], Y[train], X[held], sub_tasks)
        if progress is not None:
            progress(f)
    return out


def train_router(
    dataset: Any,
    kind: str,
    *,
    embedder: Embedder,
    params: Mapping[str, Any] | None = None,
    surface: bool | None = None,
    target_cost: float | None = None,
    lam: float | None = None,
    target_shares: Mapping[str, float] | None = None,
    folds: int = 5,
    seed: int = 0,
) -> LearnedRouter:
    """Train a router of ``kind`` on a :class:`RoutingDataset`.

    With ``folds`` >= 2 the cost/quality curve (and the lambda for ``target_cost``, or the
    per-expert offsets for ``target_shares``: expert -> share of calls, summing to 1) comes
    from out-of-fold predictions, so calibration never sees a row its model trained on.
    """
    if sum(x is not None for x in (target_cost, lam, target_shares)) > 1:
        raise PolicyError("give one of target_cost, lam, target_shares")
    if target_shares is not None:
        unknown = sorted(set(target_shares) - set(dataset.experts))
        if unknown:
            raise PolicyError(
                f"target_shares names experts the data does not have: {', '.join(unknown)}"
            )
    model = make_model(kind, params)
    use_surface = model.surface_default if surface is None else surface
    if kind == "ensemble" and not use_surface:
        raise PolicyError("ensemble: its members read the surface features; do not turn them off")
    featurizer = Featurizer(embedder)
    prompts = dataset.prompts
    X = Featurizer.combine(featurizer.embed(prompts), Featurizer.surface(prompts), use_surface)
    Y = dataset.scores()
    tasks = dataset.tasks
    if model.needs_tasks and not any(tasks):
        raise PolicyError(f"{kind}: the training rows carry no task labels")
    model.fit(X, Y, tasks=tasks)
    C = dataset.costs()
    cost_by_expert = {n: float(np.mean(C[:, j])) for j, n in enumerate(dataset.experts)}
    curve: list[list[float]] = []
    calibration: dict[str, Any] = {}
    offsets: dict[str, float] | None = None
    if folds and folds >= 2 and len(dataset) >= folds * 2:
        held = out_of_fold(kind, params, X, Y, folds, tasks=tasks, seed=seed)
        # The router prices each expert at its mean cost, so the curve does too.
        curve = [[p["lam"], p["cost"], p["score"]] for p in sweep(held, Y, C.mean(axis=0))]
        calibration = {"folds": folds, "source": "out-of-fold predictions on the training rows"}
        if target_cost is not None:
            cal = calibrate_lambda(held, C, target_cost)
            calibration.update(
                {"target_cost": target_cost, "met": cal.met, "mean_cost": cal.mean_cost}
            )
            lam = cal.lam
        if target_shares is not None:
            wanted = [float(target_shares.get(n, 0.0)) for n in dataset.experts]
            found = calibrate_shares(held, wanted)
            offsets = dict(zip(dataset.experts, found.tolist(), strict=True))
            got = shares(choose(held, np.zeros(len(wanted)), 0.0, offsets=found), len(wanted))
            calibration.update(
                {
                    "target_shares": dict(zip(dataset.experts, wanted, strict=True)),
                    "shares": dict(zip(dataset.experts, got.tolist(), strict=True)),
                }
            )
    elif target_cost is not None or target_shares is not None:
        raise PolicyError(
            "target_cost and target_shares need held-back data: train with folds >= 2"
        )
    return LearnedRouter(
        model,
        dataset.experts,
        featurizer,
        surface=use_surface,
        costs=cost_by_expert,
        lam=lam or 0.0,
        curve=curve,
        offsets=offsets,
        meta={
            "training": {
                "dataset": dataset.name,
                "split": dataset.split,
                "n": len(dataset),
                "sha256": dataset.sha256(),
                "cost_unit": dataset.cost_unit,
                "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
                "seed": seed,
            },
            "calibration": calibration,
        },
    )
