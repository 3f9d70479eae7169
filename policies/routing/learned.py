"""Routers that learn from real results: features, the model contract, training and the policy.

A learned router predicts each expert's quality on a prompt from the prompt's embedding
(plus a few surface features of the text), then picks by ``quality - lam * cost``
(:mod:`expertgraph.policies.learning.cost`). The models live in :mod:`~expertgraph.policies.learning.models.knn`,
:mod:`~expertgraph.policies.learning.models.cluster`, :mod:`~expertgraph.policies.learning.models.linear`,
:mod:`~expertgraph.policies.learning.models.mf` and :mod:`~expertgraph.policies.learning.models.task`; each is plain
numpy, trains in seconds on thousands of rows, and saves as arrays (no pickle).

:func:`train_router` fits one on a :class:`~expertgraph.policies.data.dataset.RoutingDataset`,
measures its cost/quality curve on out-of-fold predictions (held-back data) and calibrates
lambda to a target mean cost; :class:`LearnedRouter` is the policy, usable at every step of
a run, and :meth:`LearnedRouter.load` refuses an artifact trained for other experts.
"""

from __future__ import annotations

import datetime as _dt
import importlib
import math
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from expertgraph.core import Policy, RoutingState, finish_decision, next_instruction
from expertgraph.core.errors import PolicyError
from expertgraph.core.protocols import Embedder
from expertgraph.core.types import Decision
from expertgraph.policies.embeddings.embedder import BUNDLED_EMBEDDER
from expertgraph.policies.learning.artifacts import check_experts, load_artifact, save_artifact
from expertgraph.policies.learning.cost import (
    calibrate_lambda,
    calibrate_shares,
    choose,
    shares,
    utility,
)

SURFACE_VERSION = 1
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_CODE = re.compile(r"\bdef |\breturn\b|```|\bimport ")
_OPTION = re.compile(r"(^|\n)\s*\(?[A-J][\).:]\s")


def surface_features(text: str) -> list[float]:
    """Twelve shape features of a prompt, roughly in [0, 1].

    Length, digits, capitals, question form, lines, code, LaTeX, lists, lettered options and
    numbers: the things an embedding of the first 256 tokens sees poorly, and that tell
    apart tasks which read alike (a short lower-case question vs. a capitalised quiz one).
    """
    n = max(len(text), 1)
    words = text.split()
    stripped = text.rstrip()
    return [
        math.log1p(len(text)) / 8.0,
        math.log1p(len(words)) / 6.0,
        5.0 * sum(c.isdigit() for c in text) / n,
        5.0 * sum(c.isupper() for c in text) / n,
        float(text[:1].islower()),
        float(stripped.endswith("?")),
        math.log1p(text.count("\n")) / 3.0,
        float(bool(_CODE.search(text))),
        float("$" in text or "\\" in text),
        text.count(",") / max(len(words), 1),
        float(bool(_OPTION.search(text))),
        math.log1p(len(_NUMBER.findall(text))) / 3.0,
    ]


N_SURFACE = len(surface_features("x"))


@dataclass
class Featurizer:
    """Prompt -> features: the embedding, optionally followed by the surface features."""

    embedder: Embedder

    def embed(self, prompts: Sequence[str]) -> np.ndarray:
        return np.asarray(self.embedder.encode(list(prompts)), dtype=np.float32)

    @staticmethod
    def surface(prompts: Sequence[str]) -> np.ndarray:
        return np.asarray([surface_features(p) for p in prompts], dtype=np.float32).reshape(
            -1, N_SURFACE
        )

    @staticmethod
    def combine(embeddings: np.ndarray, surface: np.ndarray, use_surface: bool) -> np.ndarray:
        return np.hstack([embeddings, surface]) if use_surface else embeddings


# ----------------------------------------------------------------------------- models


class ScoringModel(ABC):
    """Predicts a quality per expert from features. Subclasses are plain numpy.

    ``fit`` receives ``Y`` with NaN where an expert has no score for a row, and the rows'
    task labels (only the task router needs them). ``arrays``/``params`` are what the
    artifact stores; ``restore`` rebuilds the model from them.
    """

    kind: ClassVar[str] = "model"
    surface_default: ClassVar[bool] = True
    """Whether the model sees the surface features by default (kNN and k-means do not:
    they measure cosine similarity of embeddings)."""
    needs_tasks: ClassVar[bool] = False

    def __init__(self, **params: Any) -> None:
        self.params: dict[str, Any] = dict(params)

    @abstractmethod
    def fit(
        self, X: np.ndarray, Y: np.ndarray, *, tasks: Sequence[str | None] | None = None
    ) -> ScoringModel:
        """Learn from features ``X`` (n, d) and scores ``Y`` (n, E)."""

    @abstractmethod
    def predict(self, X: np.ndarray) -> np.ndarray:
        """Predicted quality ``(n, E)``."""

    @abstractmethod
    def arrays(self) -> dict[str, np.ndarray]:
        """The fitted state as named numeric arrays."""

    @abstractmethod
    def restore(self, arrays: Mapping[str, np.ndarray]) -> None:
        """Load the fitted state written by :meth:`arrays`."""

    def describe(self) -> dict[str, Any]:
        """Extra metadata worth keeping in the artifact (JSON-able)."""
        return {}


_MODEL_MODULES = {
    "knn": "expertgraph.policies.learning.models.knn:KNNModel",
    "cluster": "expertgraph.policies.learning.models.cluster:ClusterModel",
    "logreg": "expertgraph.policies.learning.models.linear:LogRegModel",
    "mlp": "expertgraph.policies.learning.models.linear:MLPModel",
    "mf": "expertgraph.policies.learning.models.mf:MFModel",
    "task": "expertgraph.policies.learning.models.task:TaskModel",
    "ensemble": "expertgraph.policies.learning.models.ensemble:EnsembleModel",
}
MODEL_KINDS = tuple(_MODEL_MODULES)


def model_class(kind: str) -> type[ScoringModel]:
    """The model class of a kind name (``knn``, ``mlp``, ...)."""
    target = _MODEL_MODULES.get(kind)
    if target is None:
        raise PolicyError(f"unknown router kind {kind!r}; known: {', '.join(MODEL_KINDS)}")
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)  # type: ignore[no-any-return]


def make_model(kind: str, params: Mapping[str, Any] | None = None) -> ScoringModel:
    """A fresh model of ``kind``; unknown hyper-parameters are a :class:`PolicyError`."""
    cls = model_class(kind)
    try:
        return cls(**dict(params or {}))
    except TypeError as exc:
        raise PolicyError(f"{kind}: bad hyper-parameters {dict(params or {})}: {exc}") from None


# ----------------------------------------------------------------------------- numpy helpers


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def masked_targets(Y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scores with NaN replaced by 0, and the mask of known entries (as float)."""
    mask = np.isfinite(Y).astype(np.float64)
    return np.where(mask > 0, Y, 0.0), mask


class Adam:
    """Adam (with decoupled weight decay) over a dict of numpy parameters."""

    def __init__(
        self,
        params: dict[str, np.ndarray],
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        decay_keys: Sequence[str] | None = None,
    ) -> None:
        self.params = params
        self.lr = lr
        self.wd = weight_decay
        self.b1, self.b2 = betas
        self.eps = eps
        self.t = 0
        self.m = {k: np.zeros_like(v) for k, v in params.items()}
        self.v = {k: np.zeros_like(v) for k, v in params.items()}
        self.decay = set(decay_keys if decay_keys is not None else params)

    def step(self, grads: Mapping[str, np.ndarray]) -> None:
        self.t += 1
        c1 = 1 - self.b1**self.t
        c2 = 1 - self.b2**self.t
        for k, g in grads.items():
            self.m[k] = self.b1 * self.m[k] + (1 - self.b1) * g
            self.v[k] = self.b2 * self.v[k] + (1 - self.b2) * g * g
            update = (self.m[k] / c1) / (np.sqrt(self.v[k] / c2) + self.eps)
            if self.wd and k in self.decay:
                self.params[k] -= self.lr * self.wd * self.params[k]
            self.params[k] -= self.lr * update



def fit_minibatch(
    weights: dict[str, np.ndarray],
    n: int,
    params: Mapping[str, Any],
    rng: np.random.Generator,
    *,
    grads: Callable[[np.ndarray], Mapping[str, np.ndarray]],
    val_loss: Callable[[np.ndarray], float],
    decay_keys: Sequence[str],
) -> None:
    """Adam over shuffled minibatches of ``n`` rows, early-stopped on a held-out share.

    ``grads(rows)`` returns the gradients on those rows, ``val_loss(rows)`` the loss. Uses
    ``params`` lr, weight_decay, epochs, batch_size, patience and val_fraction (no
    validation below 50 rows). The best weights on the held-out rows are restored in place.
    """
    order = rng.permutation(n)
    n_val = int(round(n * float(params["val_fraction"]))) if n >= 50 else 0
    val, train = order[:n_val], order[n_val:]
    opt = Adam(
        weights,
        lr=float(params["lr"]),
        weight_decay=float(params["weight_decay"]),
        decay_keys=decay_keys,
    )
    best = {k: v.copy() for k, v in weights.items()}
    best_loss, waited = np.inf, 0
    bs = int(params["batch_size"])
    for _ in range(int(params["epochs"])):
        perm = rng.permutation(train)
        for start in range(0, len(perm), bs):
            opt.step(grads(perm[start : start + bs]))
        if n_val:
            loss = val_loss(val)
            if loss < best_loss - 1e-5:
                best_loss, waited = loss, 0
                best = {k: v.copy() for k, v in weights.items()}
            else:
                waited += 1
                if waited >= int(params["patience"]):
                    break
    if n_val:
        weights.update(best)

class Standardizer:
    """Feature standardisation learned on the training rows (stored with the model)."""

    def __init__(self) -> None:
        self.mu: np.ndarray | None = None
        self.sd: np.ndarray | None = None

    def fit(self, X: np.ndarray) -> Standardizer:
        self.mu = X.mean(axis=0)
        self.sd = X.std(axis=0) + 1e-6
        return self

    def __call__(self, X: np.ndarray) -> np.ndarray:
        assert self.mu is not None and self.sd is not None
        return (X - self.mu) / self.sd


# ----------------------------------------------------------------------------- the policy


def _curve(
    quality: np.ndarray, Y: np.ndarray, costs: np.ndarray, points: int = 121
) -> list[list[float]]:
    """``[lam, mean cost, mean score]`` of top-1 choice over a sweep of lambda."""
    c2 = np.broadcast_to(costs, quality.shape)
    spread = float(np.max(costs) - np.min(costs)) or 1.0
    lams = np.concatenate([[0.0], np.geomspace(1e-4, 1e2, points - 1) / spread])
    out = []
    for lam in lams:
        picked = choose(quality, c2, float(lam))[:, 0]
        rows = np.arange(len(picked))
        score = Y[rows, picked]
        out.append([float(lam), float(c2[rows, picked].mean()), float(np.nanmean(score))])
    return out


class LearnedRouter(Policy):
    """A routing policy backed by a trained :class:`ScoringModel`.

    ``decide`` embeds the step instruction, predicts every expert's quality, and picks the
    top ``k`` by ``quality - lam * cost`` among the step's allowed experts (experts that
    failed every call so far are routed around). The decision's scores are those utilities;
    its meta holds the predicted quality and cost of each expert and the lambda used.

    It also serves other policies: ``experts`` and :meth:`predict_quality` are the
    :class:`~expertgraph.policies.routing.cascade.QualityPredictor` contract.
    """

    def __init__(
        self,
        model: ScoringModel,
        experts: Sequence[str],
        featurizer: Featurizer,
        *,
        surface: bool,
        costs: Mapping[str, float] | None = None,
        lam: float = 0.0,
        top_k: int | None = None,
        avoid_failing: bool = True,
        curve: list[list[float]] | None = None,
        meta: Mapping[str, Any] | None = None,
        offsets: Mapping[str, float] | None = None,
    ) -> None:
        self.model = model
        self.experts = list(experts)
        self.featurizer = featurizer
        self.surface = surface
        self.costs = {n: float((costs or {}).get(n, 0.0)) for n in self.experts}
        self.lam = float(lam)
        self.top_k = top_k
        self.avoid_failing = avoid_failing
        self.curve = curve or []
        self.meta = dict(meta or {})
        self.name = model.kind
        self.offsets = {n: float((offsets or {}).get(n, 0.0)) for n in self.experts}
        """Per-expert utility offsets from a share calibration (0 for none)."""

    # -- predictions ---------------------------------------------------------------------

    def features(self, prompts: Sequence[str]) -> np.ndarray:
        emb = self.featurizer.embed(prompts)
        return Featurizer.combine(emb, Featurizer.surface(prompts), self.surface)

    def predict_quality(self, prompts: list[str]) -> np.ndarray:
        """Predicted quality ``(n, len(experts))``, columns in :attr:`experts` order."""
        if not prompts:
            return np.zeros((0, len(self.experts)))
        return np.asarray(self.model.predict(self.features(prompts)), dtype=float)

    def cost_vector(self) -> np.ndarray:
        return np.array([self.costs[n] for n in self.experts], dtype=float)

    def offset_vector(self) -> np.ndarray | None:
        values = np.array([self.offsets[n] for n in self.experts], dtype=float)
        return values if np.any(values) else None

    def lam_for_cost(self, target_cost: float) -> float:
        """The lambda that met ``target_cost`` on held-back rows at training time."""
        if not self.curve:
            raise PolicyError(
                f"{self.name}: the artifact has no calibration curve; pass lam instead of target_cost"
            )
        ok = [p for p in self.curve if p[1] <= target_cost + 1e-12]
        if not ok:
            cheapest = min(self.curve, key=lambda p: p[1])
            raise PolicyError(
                f"{self.name}: target cost {target_cost} is below the cheapest calibrated point "
                f"({cheapest[1]:.4g} at lam={cheapest[0]:.4g})"
            )
        return float(min(ok, key=lambda p: p[0])[0])

    # -- the policy ----------------------------------------------------------------------

    def decide(self, state: RoutingState) -> Decision:
        instruction = next_instruction(state)
        if instruction is None:
            return finish_decision(state, self.name, "open task answered in one step")
        views = state.candidates
        known = [v for v in views if v.name in self.costs]
        if not known:
            raise PolicyError(
                f"{self.name}: none of the step's experts ({', '.join(v.name for v in views)}) is "
                f"known to this router ({', '.join(self.experts)})"
            )
        failing = {
            v.name
            for v in known
            if self.avoid_failing and v.health.calls and v.health.errors == v.health.calls
        }
        pool = [v.name for v in known if v.name not in failing] or [v.name for v in known]
        quality = self.predict_quality([instruction])[0]
        costs = self.cost_vector()
        allowed = np.array([n in pool for n in self.experts])
        k = max(1, self.top_k or state.k)
        offsets = self.offset_vector()
        picked = choose(quality[None, :], costs, self.lam, k, allowed=allowed, offsets=offsets)[0]
        chosen = [self.experts[j] for j in picked if allowed[j]][:k]
        util = utility(quality[None, :], costs, self.lam, offsets)[0]
        scores = {
            n: float(util[j]) for j, n in enumerate(self.experts) if n in {v.name for v in known}
        }
        ranked = sorted(scores, key=lambda n: scores[n], reverse=True)
        detail = ", ".join(
            f"{n} q={quality[self.experts.index(n)]:.3f} c={self.costs[n]:.3g}" for n in ranked[:4]
        )
        rule = f"quality - {self.lam:.3g}*cost" + (" + share offset" if offsets is not None else "")
        rationale = f"{self.name}: top-{len(chosen)} by {rule} ({detail})"
        if failing:
            rationale += f"; routed around failing experts: {', '.join(sorted(failing))}"
        unknown = [v.name for v in views if v.name not in self.costs]
        if unknown:
            rationale += f"; not scored (unknown to the router): {', '.join(unknown)}"
        return Decision(
            action="call",
            instruction=instruction,
            experts=chosen,
            scores=scores,
            mode="top1" if len(chosen) == 1 else "topk",
            rationale=rationale,
            policy=self.name,
            meta={
                "quality": {n: float(quality[j]) for j, n in enumerate(self.experts)},
                "cost": dict(self.costs),
                "lam": self.lam,
            },
        )

    # -- persistence ---------------------------------------------------------------------

    def save(self, folder: str | Path) -> Path:
        """Write the artifact (``weights.npz`` + ``meta.json``)."""
        meta = {
            "kind": self.model.kind,
            "experts": self.experts,
            "embedder": getattr(self.featurizer.embedder, "name", BUNDLED_EMBEDDER),
            "features": {
                "embedding": True,
                "surface": self.surface,
                "surface_version": SURFACE_VERSION,
            },
            "params": self.model.params,
            "model": self.model.describe(),
            "costs": self.costs,
            "lam": self.lam,
            "offsets": self.offsets,
            "training": self.meta.get("training", {}),
            "calibration": {
                **{k: v for k, v in self.meta.get("calibration", {}).items() if k != "curve"},
                "curve": [[round(float(x), 6) for x in point] for point in self.curve],
            },
        }
        return save_artifact(folder, meta, self.model.arrays())

    @classmethod
    def load(
        cls,
        folder: str | Path,
        *,
        experts: Sequence[str] | None = None,
        embedder: Embedder | None = None,
        home: str | Path | None = None,
        lam: float | None = None,
        target_cost: float | None = None,
        top_k: int | None = None,
        costs: Mapping[str, float] | None = None,
        kind: str | None = None,
    ) -> LearnedRouter:
        """Load an artifact; with ``experts``, refuse one trained for other experts.

        The embedder is the one recorded in the artifact (behind the disk cache of ``home``)
        unless ``embedder`` is given; a different embedder name is refused. ``target_cost``
        picks lambda from the artifact's calibration curve; ``lam`` sets it directly.
        """
        art = load_artifact(folder)
        if kind is not None and art.kind != kind:
            raise PolicyError(f"{folder}: is a {art.kind!r} router, not {kind!r}")
        if experts is not None:
            check_experts(art.experts, experts, where=f"router artifact {folder}")
        features = art.meta.get("features", {})
        if int(features.get("surface_version", SURFACE_VERSION)) != SURFACE_VERSION:
            raise PolicyError(
                f"{folder}: surface features v{features.get('surface_version')} are not supported"
            )
        recorded = str(art.meta.get("embedder", BUNDLED_EMBEDDER))
        if embedder is None:
            embedder = _default_embedder(recorded, home)
        elif getattr(embedder, "name", recorded) != recorded:
            raise PolicyError(
                f"{folder}: trained with embedder {recorded!r}, but {embedder.name!r} was given"
            )
        model = make_model(art.kind, art.meta.get("params", {}))
        model.restore(art.arrays)
        router = cls(
            model,
            art.experts,
            Featurizer(embedder),
            surface=bool(features.get("surface", model.surface_default)),
            costs={**art.meta.get("costs", {}), **dict(costs or {})},
            lam=float(art.meta.get("lam", 0.0)),
            top_k=top_k,
            curve=art.meta.get("calibration", {}).get("curve", []),
            meta={k: art.meta[k] for k in ("training", "calibration") if k in art.meta},
            offsets=art.meta.get("offsets"),
        )
        if lam is not None and target_cost is not None:
            raise PolicyError("give lam or target_cost, not both")
        if lam is not None or target_cost is not None:
            router.offsets = dict.fromkeys(router.experts, 0.0)  # a new cost rule replaces shares
        if lam is not None:
            router.lam = float(lam)
        elif target_cost is not None:
            router.lam = router.lam_for_cost(float(target_cost))
        return router


def _default_embedder(name: str, home: str | Path | None) -> Embedder:
    from expertgraph.policies.embeddings.cache import CachedEmbedder, default_cache_dir
    from expertgraph.policies.embeddings.embedder import SentenceTransformerEmbedder

    base = SentenceTransformerEmbedder(name)
    return CachedEmbedder(base, default_cache_dir(home)) if home is not None else base


# ----------------------------------------------------------------------------- training


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
        curve = _curve(held, Y, C.mean(axis=0))
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
    router = LearnedRouter(
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
    return router
