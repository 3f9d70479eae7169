"""Task-level routing learned from labelled rows: which task is this prompt, and who is best at it.

The MoErging taxonomy's task-specific router: a softmax regression on the prompt features
predicts the task label (the rows' ``task``), and each task keeps its mean score per expert
(shrunk towards the overall mean by ``prior`` pseudo-rows). A prompt's predicted quality is
the task probabilities times that table, so an ambiguous prompt blends the tasks it may be.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from expertgraph.core.errors import PolicyError
from expertgraph.policies.learning._optim import Adam, Standardizer, masked_targets
from expertgraph.policies.learning.models.base import ScoringModel


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


class TaskModel(ScoringModel):
    """Task classifier x per-task expert quality table."""

    kind = "task"
    needs_tasks = True

    def __init__(
        self, l2: float = 1e-2, lr: float = 0.05, steps: int = 400, prior: float = 5.0
    ) -> None:
        super().__init__(l2=l2, lr=lr, steps=steps, prior=prior)
        self.scaler = Standardizer()
        self.W: np.ndarray | None = None
        self.b: np.ndarray | None = None
        self.table: np.ndarray | None = None
        self.classes: list[str] = []

    def fit(
        self, X: np.ndarray, Y: np.ndarray, *, tasks: Sequence[str | None] | None = None
    ) -> TaskModel:
        if tasks is None or not any(t for t in tasks):
            raise PolicyError("task: the training rows carry no task labels")
        labelled = np.array([t is not None and t != "" for t in tasks])
        self.classes = sorted({str(t) for t in tasks if t})
        index = {c: i for i, c in enumerate(self.classes)}
        Xf = np.asarray(X, dtype=np.float64)
        Xs = self.scaler.fit(Xf)(Xf)
        y_idx = np.array([index[str(t)] for t, ok in zip(tasks, labelled, strict=True) if ok])
        Xl = Xs[labelled]
        k = len(self.classes)
        onehot = np.eye(k)[y_idx]
        params = {"W": np.zeros((Xs.shape[1], k)), "b": np.log(onehot.mean(axis=0) + 1e-9)}
        opt = Adam(params, lr=float(self.params["lr"]), decay_keys=[])
        l2 = float(self.params["l2"])
        for _ in range(int(self.params["steps"]) if k > 1 else 0):
            p = softmax(Xl @ params["W"] + params["b"])
            g = (p - onehot) / len(Xl)
            opt.step({"W": Xl.T @ g + l2 * params["W"], "b": g.sum(axis=0)})
        self.W, self.b = params["W"], params["b"]
        values, mask = masked_targets(np.asarray(Y, dtype=np.float64))
        overall = (values * mask).sum(axis=0) / np.maximum(mask.sum(axis=0), 1.0)
        sums = np.zeros((k, values.shape[1]))
        counts = np.zeros((k, values.shape[1]))
        np.add.at(sums, y_idx, (values * mask)[labelled])
        np.add.at(counts, y_idx, mask[labelled])
        prior = float(self.params["prior"])
        self.table = (sums + prior * overall) / (counts + prior)
        return self

    def task_probabilities(self, X: np.ndarray) -> np.ndarray:
        """``(n, n_tasks)`` probabilities, columns in :attr:`classes` order."""
        if self.W is None or self.b is None:
            raise PolicyError("task: predict before fit")
        return softmax(self.scaler(np.asarray(X, dtype=np.float64)) @ self.W + self.b)

    def predict(self, X: np.ndarray) -> np.ndarray:
        assert self.table is not None
        return self.task_probabilities(X) @ self.table

    def arrays(self) -> dict[str, np.ndarray]:
        assert self.W is not None and self.b is not None and self.table is not None
        return {
            "W": self.W,
            "b": self.b,
            "table": self.table,
            "mu": self.scaler.mu,
            "sd": self.scaler.sd,
        }  # type: ignore[dict-item]

    def restore(self, arrays: Mapping[str, np.ndarray]) -> None:
        self.W, self.b, self.table = (np.asarray(arrays[k]) for k in ("W", "b", "table"))
        self.scaler.mu, self.scaler.sd = np.asarray(arrays["mu"]), np.asarray(arrays["sd"])

    def describe(self) -> dict[str, Any]:
        return {"tasks": self.classes}
