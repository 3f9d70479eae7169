"""Per-expert success predictors on prompt features: logistic regression and a small MLP.

Both predict every expert at once (one sigmoid output per expert) and learn from graded
scores directly: the loss is binary cross-entropy with the score in [0, 1] as a soft target,
masked where an expert has no score for a row. Features are standardised with statistics
kept in the artifact. Plain numpy with Adam; seeded, so a retrain gives the same weights.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from expertgraph.core.errors import PolicyError
from expertgraph.policies.learning._optim import (
    Adam,
    Standardizer,
    fit_minibatch,
    masked_targets,
    sigmoid,
)
from expertgraph.policies.learning.models.base import ScoringModel


def _logit_of_mean(Y: np.ndarray) -> np.ndarray:
    m = np.nanmean(np.where(np.isfinite(Y), Y, np.nan), axis=0)
    m = np.clip(np.where(np.isfinite(m), m, 0.5), 1e-3, 1 - 1e-3)
    return np.log(m / (1 - m))


def soft_bce(z: np.ndarray, y: np.ndarray, mask: np.ndarray) -> tuple[float, np.ndarray]:
    """Masked soft-target BCE on logits: (mean loss, gradient wrt the logits)."""
    total = max(float(mask.sum()), 1.0)
    # log(1 + exp(-|z|)) form keeps it finite for large logits
    loss = (np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z)))) * mask
    grad = (sigmoid(z) - y) * mask / total
    return float(loss.sum() / total), grad


class LogRegModel(ScoringModel):
    """One logistic regression per expert (a shared, standardised feature matrix)."""

    kind = "logreg"

    def __init__(self, l2: float = 1e-2, lr: float = 0.05, steps: int = 400) -> None:
        super().__init__(l2=l2, lr=lr, steps=steps)
        self.scaler = Standardizer()
        self.W: np.ndarray | None = None
        self.b: np.ndarray | None = None

    def fit(
        self, X: np.ndarray, Y: np.ndarray, *, tasks: Sequence[str | None] | None = None
    ) -> LogRegModel:
        Xs = self.scaler.fit(np.asarray(X, dtype=np.float64))(np.asarray(X, dtype=np.float64))
        y, mask = masked_targets(np.asarray(Y, dtype=np.float64))
        params = {"W": np.zeros((Xs.shape[1], y.shape[1])), "b": _logit_of_mean(Y)}
        opt = Adam(params, lr=float(self.params["lr"]), decay_keys=[])
        l2 = float(self.params["l2"])
        for _ in range(int(self.params["steps"])):
            z = Xs @ params["W"] + params["b"]
            _, g = soft_bce(z, y, mask)
            # loss = mean masked BCE + l2/2 * ||W||^2
            opt.step({"W": Xs.T @ g + l2 * params["W"], "b": g.sum(axis=0)})
        self.W, self.b = params["W"], params["b"]
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        if self.W is None or self.b is None:
            raise PolicyError("logreg: predict before fit")
        return sigmoid(self.scaler(np.asarray(X, dtype=np.float64)) @ self.W + self.b)

    def arrays(self) -> dict[str, np.ndarray]:
        assert self.W is not None and self.b is not None
        return {"W": self.W, "b": self.b, "mu": self.scaler.mu, "sd": self.scaler.sd}  # type: ignore[dict-item]

    def restore(self, arrays: Mapping[str, np.ndarray]) -> None:
        self.W, self.b = np.asarray(arrays["W"]), np.asarray(arrays["b"])
        self.scaler.mu, self.scaler.sd = np.asarray(arrays["mu"]), np.asarray(arrays["sd"])


class MLPModel(ScoringModel):
    """A small ReLU network with one sigmoid output per expert.

    ``hidden`` layer widths, inverted ``dropout`` in training, AdamW, mini-batches, and early
    stopping on a held-out ``val_fraction`` of the rows (the best epoch's weights are kept).
    """

    kind = "mlp"

    def __init__(
        self,
        hidden: Sequence[int] = (128,),
        dropout: float = 0.2,
        lr: float = 1e-3,
        weight_decay: float = 1e-2,
        epochs: int = 60,
        batch_size: int = 64,
        val_fraction: float = 0.1,
        patience: int = 6,
        seed: int = 0,
    ) -> None:
        if not 0 <= dropout < 1:
            raise PolicyError(f"mlp: dropout must be in [0, 1), got {dropout}")
        super().__init__(
            hidden=[int(h) for h in hidden],
            dropout=dropout,
            lr=lr,
            weight_decay=weight_decay,
            epochs=epochs,
            batch_size=batch_size,
            val_fraction=val_fraction,
            patience=patience,
            seed=seed,
        )
        self.scaler = Standardizer()
        self.weights: dict[str, np.ndarray] = {}

    @property
    def _depth(self) -> int:
        return len(self.params["hidden"]) + 1

    def _forward(
        self, X: np.ndarray, rng: np.random.Generator | None = None
    ) -> tuple[np.ndarray, list[Any]]:
        h = X
        cache: list[Any] = []
        p = float(self.params["dropout"])
        for i in range(self._depth - 1):
            a = h @ self.weights[f"W{i}"] + self.weights[f"b{i}"]
            out = np.maximum(a, 0.0)
            drop = None
            if rng is not None and p > 0:
                drop = (rng.random(out.shape) >= p) / (1.0 - p)
                out = out * drop
            cache.append((h, a, drop))
            h = out
        last = self._depth - 1
        z = h @ self.weights[f"W{last}"] + self.weights[f"b{last}"]
        cache.append((h, None, None))
        return z, cache

    def _backward(self, gz: np.ndarray, cache: list[Any]) -> dict[str, np.ndarray]:
        grads: dict[str, np.ndarray] = {}
        g = gz
        for i in range(self._depth - 1, -1, -1):
            h, a, drop = cache[i]
            grads[f"W{i}"] = h.T @ g
            grads[f"b{i}"] = g.sum(axis=0)
            if i > 0:
                g = g @ self.weights[f"W{i}"].T
                _, a_prev, drop_prev = cache[i - 1]
                if drop_prev is not None:
                    g = g * drop_prev
                g = g * (a_prev > 0)
        return grads

    def fit(
        self, X: np.ndarray, Y: np.ndarray, *, tasks: Sequence[str | None] | None = None
    ) -> MLPModel:
        rng = np.random.default_rng(int(self.params["seed"]))
        Xf = np.asarray(X, dtype=np.float64)
        Xs = self.scaler.fit(Xf)(Xf)
        y, mask = masked_targets(np.asarray(Y, dtype=np.float64))
        sizes = [Xs.shape[1], *self.params["hidden"], y.shape[1]]
        self.weights = {}
        for i in range(len(sizes) - 1):
            self.weights[f"W{i}"] = rng.normal(0, np.sqrt(2.0 / sizes[i]), (sizes[i], sizes[i + 1]))
            self.weights[f"b{i}"] = np.zeros(sizes[i + 1])
        self.weights[f"b{len(sizes) - 2}"] = _logit_of_mean(Y)

        def grads(rows: np.ndarray) -> dict[str, np.ndarray]:
            z, cache = self._forward(Xs[rows], rng)
            return self._backward(soft_bce(z, y[rows], mask[rows])[1], cache)

        def val_loss(rows: np.ndarray) -> float:
            return float(soft_bce(self._forward(Xs[rows])[0], y[rows], mask[rows])[0])

        decay = [k for k in self.weights if k.startswith("W")]
        fit_minibatch(
            self.weights,
            len(Xs),
            self.params,
            rng,
            grads=grads,
            val_loss=val_loss,
            decay_keys=decay,
        )
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        if not self.weights:
            raise PolicyError("mlp: predict before fit")
        z, _ = self._forward(self.scaler(np.asarray(X, dtype=np.float64)))
        return sigmoid(z)

    def arrays(self) -> dict[str, np.ndarray]:
        return {**self.weights, "mu": self.scaler.mu, "sd": self.scaler.sd}  # type: ignore[dict-item]

    def restore(self, arrays: Mapping[str, np.ndarray]) -> None:
        self.weights = {k: np.asarray(v) for k, v in arrays.items() if k[0] in "Wb"}
        self.scaler.mu, self.scaler.sd = np.asarray(arrays["mu"]), np.asarray(arrays["sd"])
