"""kNN router: a prompt's quality per expert is the (distance-weighted) mean of its neighbours'."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from expertgraph.core.errors import PolicyError
from expertgraph.policies.learning._optim import masked_targets
from expertgraph.policies.learning.models.base import ScoringModel

_CHUNK = 1024
"""Query rows per similarity block: bounds memory at ``_CHUNK x n_train`` floats."""


def unit_rows(X: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (cosine similarity becomes a dot product)."""
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    return (X / np.maximum(norms, 1e-12)).astype(np.float32)


def neighbour_weights(sims: np.ndarray, weighting: str, temperature: float) -> np.ndarray:
    """Weights of the neighbours from their cosine similarities (rows: queries)."""
    if weighting == "uniform":
        return np.ones_like(sims)
    if weighting == "softmax":
        return np.exp((sims - sims.max(axis=1, keepdims=True)) / temperature)
    if weighting == "inverse":  # 1 / cosine distance, RouterBench-style
        return 1.0 / np.maximum(1.0 - sims, 1e-3)
    raise PolicyError(f"knn: unknown weighting {weighting!r} (uniform, softmax, inverse)")


class KNNModel(ScoringModel):
    """k nearest labelled prompts by cosine similarity of their embeddings.

    The predicted quality of an expert is the weighted mean of the neighbours' scores for it
    (neighbours without a score for that expert are left out; the expert's mean over all
    training rows fills in when none has one). Weights: ``softmax`` of similarity over
    ``temperature`` (default), ``inverse`` cosine distance, or ``uniform``.
    """

    kind = "knn"
    surface_default = False

    def __init__(self, k: int = 50, weighting: str = "softmax", temperature: float = 0.05) -> None:
        if k < 1:
            raise PolicyError(f"knn: k must be >= 1, got {k}")
        if temperature <= 0:
            raise PolicyError(f"knn: temperature must be > 0, got {temperature}")
        neighbour_weights(np.zeros((1, 1)), weighting, temperature)  # validates the name
        super().__init__(k=k, weighting=weighting, temperature=temperature)
        self.X: np.ndarray | None = None
        self.Y: np.ndarray | None = None

    def fit(
        self, X: np.ndarray, Y: np.ndarray, *, tasks: Sequence[str | None] | None = None
    ) -> KNNModel:
        self.X = unit_rows(X)
        self.Y = np.asarray(Y, dtype=np.float32)
        return self

    def neighbours(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Indices ``(n, k)`` of each query's neighbours, most similar first, and similarities."""
        assert self.X is not None
        k = min(int(self.params["k"]), len(self.X))
        Q = unit_rows(X)
        idx_out = np.empty((len(Q), k), dtype=np.int64)
        sim_out = np.empty((len(Q), k), dtype=np.float32)
        for start in range(0, len(Q), _CHUNK):
            sims = Q[start : start + _CHUNK] @ self.X.T
            idx = (
                np.argpartition(-sims, k - 1, axis=1)[:, :k]
                if k < sims.shape[1]
                else np.tile(np.arange(k), (len(sims), 1))
            )
            part = np.take_along_axis(sims, idx, axis=1)
            order = np.argsort(-part, axis=1, kind="stable")
            idx_out[start : start + len(sims)] = np.take_along_axis(idx, order, axis=1)
            sim_out[start : start + len(sims)] = np.take_along_axis(part, order, axis=1)
        return idx_out, sim_out

    def predict(self, X: np.ndarray) -> np.ndarray:
        if self.X is None or self.Y is None:
            raise PolicyError("knn: predict before fit")
        idx, sims = self.neighbours(X)
        w = neighbour_weights(
            sims.astype(np.float64), self.params["weighting"], float(self.params["temperature"])
        )
        values, mask = masked_targets(self.Y.astype(np.float64))
        num = np.einsum("nk,nke->ne", w, values[idx])
        den = np.einsum("nk,nke->ne", w, mask[idx])
        prior = np.nanmean(self.Y, axis=0)
        return np.where(den > 0, num / np.maximum(den, 1e-12), prior)

    def arrays(self) -> dict[str, np.ndarray]:
        assert self.X is not None and self.Y is not None
        return {"X": self.X, "Y": self.Y}

    def restore(self, arrays: Mapping[str, np.ndarray]) -> None:
        self.X = np.asarray(arrays["X"], dtype=np.float32)
        self.Y = np.asarray(arrays["Y"], dtype=np.float32)

    def describe(self) -> dict[str, Any]:
        return {"rows": 0 if self.X is None else int(len(self.X))}
