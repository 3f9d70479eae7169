"""The scoring-model contract and the registry of kinds (``knn``, ``mlp``, ...)."""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from expertgraph.core.errors import PolicyError


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


# Imported on use: a kind's module loads only when a model of that kind is made.
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
