"""Cluster ranking (Avengers-Pro style): k-means on prompt embeddings, experts ranked per cluster.

Training clusters the prompts (spherical k-means, k-means++ start, seeded) and keeps each
cluster's mean score per expert, shrunk towards the expert's overall mean by ``prior``
pseudo-rows so that a small cluster does not trust a handful of rows. A new prompt takes the
quality table of its nearest cluster(s) (``top_p``, similarity-weighted). The cost side is
the shared ``quality - lam * cost`` rule; :meth:`ClusterModel.ranking` gives Avengers-Pro's
own per-cluster ranking with a performance/cost weight ``alpha`` over min-max normalised
scores and costs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from expertgraph.core.errors import PolicyError
from expertgraph.policies.learning._optim import masked_targets
from expertgraph.policies.learning.models.base import ScoringModel
from expertgraph.policies.learning.models.knn import unit_rows


def kmeans(
    X: np.ndarray, k: int, *, iterations: int = 50, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Spherical k-means on unit rows: ``(centroids (k, d), labels (n,))``."""
    rng = np.random.default_rng(seed)
    n = len(X)
    k = min(k, n)
    # k-means++ seeding on cosine distance.
    centres = [int(rng.integers(n))]
    dist = 1.0 - X @ X[centres[0]]
    for _ in range(1, k):
        p = np.maximum(dist, 0.0) ** 2
        total = p.sum()
        nxt = int(rng.integers(n)) if total <= 0 else int(rng.choice(n, p=p / total))
        centres.append(nxt)
        dist = np.minimum(dist, 1.0 - X @ X[nxt])
    C = X[centres].copy()
    labels = np.full(n, -1)
    for _ in range(iterations):
        new = np.argmax(X @ C.T, axis=1)
        if np.array_equal(new, labels):
            break
        labels = new
        for c in range(k):
            members = X[labels == c]
            if len(members):
                C[c] = members.sum(axis=0)
            else:  # an empty cluster restarts at the row worst served by its centre
                far = int(np.argmin(np.max(X @ C.T, axis=1)))
                C[c] = X[far]
        C = unit_rows(C)
    return C, labels


class ClusterModel(ScoringModel):
    """Per-cluster expert quality over k-means clusters of the prompt embeddings."""

    kind = "cluster"
    surface_default = False

    def __init__(
        self,
        n_clusters: int = 24,
        top_p: int = 1,
        temperature: float = 0.05,
        prior: float = 5.0,
        iterations: int = 50,
        seed: int = 0,
    ) -> None:
        if n_clusters < 1 or top_p < 1:
            raise PolicyError("cluster: n_clusters and top_p must be >= 1")
        super().__init__(
            n_clusters=n_clusters,
            top_p=top_p,
            temperature=temperature,
            prior=prior,
            iterations=iterations,
            seed=seed,
        )
        self.centroids: np.ndarray | None = None
        self.quality: np.ndarray | None = None
        self.counts: np.ndarray | None = None

    def fit(
        self, X: np.ndarray, Y: np.ndarray, *, tasks: Sequence[str | None] | None = None
    ) -> ClusterModel:
        U = unit_rows(X)
        C, labels = kmeans(
            U,
            int(self.params["n_clusters"]),
            iterations=int(self.params["iterations"]),
            seed=int(self.params["seed"]),
        )
        values, mask = masked_targets(np.asarray(Y, dtype=float))
        overall = np.nanmean(np.where(mask > 0, values, np.nan), axis=0)
        overall = np.where(np.isfinite(overall), overall, 0.0)
        prior = float(self.params["prior"])
        k = len(C)
        sums = np.zeros((k, Y.shape[1]))
        counts = np.zeros((k, Y.shape[1]))
        np.add.at(sums, labels, values * mask)
        np.add.at(counts, labels, mask)
        self.centroids = C
        self.quality = (sums + prior * overall) / (counts + prior)
        self.counts = np.bincount(labels, minlength=k).astype(np.float64)
        return self

    def assign(self, X: np.ndarray) -> np.ndarray:
        """The nearest cluster of each row."""
        assert self.centroids is not None
        return np.argmax(unit_rows(X) @ self.centroids.T, axis=1)

    def predict(self, X: np.ndarray) -> np.ndarray:
        if self.centroids is None or self.quality is None:
            raise PolicyError("cluster: predict before fit")
        sims = unit_rows(X) @ self.centroids.T
        p = min(int(self.params["top_p"]), len(self.centroids))
        idx = np.argsort(-sims, axis=1)[:, :p]
        s = np.take_along_axis(sims, idx, axis=1)
        w = np.exp((s - s[:, :1]) / float(self.params["temperature"]))
        w /= w.sum(axis=1, keepdims=True)
        return np.einsum("np,npe->ne", w, self.quality[idx])

    def ranking(self, costs: Sequence[float], alpha: float = 0.7) -> np.ndarray:
        """Avengers-Pro's per-cluster ranking: ``alpha * perf + (1 - alpha) * (1 - cost)``.

        Performance and cost are min-max normalised within each cluster; returns the expert
        columns of each cluster, best first, ``(n_clusters, E)``.
        """
        assert self.quality is not None
        q = self.quality
        span = q.max(axis=1, keepdims=True) - q.min(axis=1, keepdims=True)
        perf = (q - q.min(axis=1, keepdims=True)) / np.where(span > 0, span, 1.0)
        c = np.asarray(costs, dtype=float)
        cspan = c.max() - c.min()
        cost = (c - c.min()) / (cspan if cspan > 0 else 1.0)
        score = alpha * perf + (1 - alpha) * (1 - cost)
        return np.argsort(-score, axis=1, kind="stable")

    def arrays(self) -> dict[str, np.ndarray]:
        assert self.centroids is not None and self.quality is not None and self.counts is not None
        return {"centroids": self.centroids, "quality": self.quality, "counts": self.counts}

    def restore(self, arrays: Mapping[str, np.ndarray]) -> None:
        self.centroids = np.asarray(arrays["centroids"], dtype=np.float32)
        self.quality = np.asarray(arrays["quality"], dtype=float)
        self.counts = np.asarray(arrays["counts"], dtype=float)

    def describe(self) -> dict[str, Any]:
        return {"cluster_sizes": [] if self.counts is None else [int(c) for c in self.counts]}
