"""Matrix factorisation router (RouteLLM's ``mf``), generalised from two experts to N.

RouteLLM scores an expert ``m`` on a prompt ``q`` as ``delta(m, q) = w^T (v_m * (W q))`` and
trains ``sigmoid(delta(strong, q) - delta(weak, q))`` on which model won. Here every expert
has a latent vector ``u_m`` (``w * v_m`` folded together), the prompt is projected by
``W`` (with a bias) into the same ``dim``-dimensional space, and ``delta(m, q) = u_m . (W q + b)
+ c_m``. Training combines two losses over all N experts:

* pairwise (RouteLLM's): for every pair of experts with different scores on a row,
  ``-log sigmoid(delta(better) - delta(worse))``, weighted by ``pairwise``;
* pointwise: soft-target BCE of ``sigmoid(delta(m, q))`` against the score, so that the
  prediction is a quality on the scores' scale (needed for ``quality - lam * cost``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from expertgraph.core.errors import PolicyError
from expertgraph.policies.learning._optim import (
    Standardizer,
    fit_minibatch,
    masked_targets,
    sigmoid,
)
from expertgraph.policies.learning.models.base import ScoringModel
from expertgraph.policies.learning.models.linear import _logit_of_mean, soft_bce


def pairwise_loss(
    delta: np.ndarray, y: np.ndarray, mask: np.ndarray, margin: float
) -> tuple[float, np.ndarray]:
    """Bradley-Terry loss over the pairs (i better than j) of each row, and its gradient."""
    diff = delta[:, :, None] - delta[:, None, :]
    valid = (mask[:, :, None] * mask[:, None, :]) * ((y[:, :, None] - y[:, None, :]) > margin)
    total = max(float(valid.sum()), 1.0)
    loss = float((np.logaddexp(0.0, -diff) * valid).sum() / total)
    g_diff = -sigmoid(-diff) * valid / total
    grad = g_diff.sum(axis=2) - g_diff.sum(axis=1)
    return loss, grad


class MFModel(ScoringModel):
    """Bilinear expert x prompt model with a pairwise (RouteLLM) plus pointwise loss."""

    kind = "mf"

    def __init__(
        self,
        dim: int = 64,
        pairwise: float = 1.0,
        margin: float = 0.0,
        lr: float = 2e-3,
        weight_decay: float = 1e-2,
        epochs: int = 40,
        batch_size: int = 128,
        val_fraction: float = 0.1,
        patience: int = 5,
        seed: int = 0,
    ) -> None:
        if dim < 1:
            raise PolicyError(f"mf: dim must be >= 1, got {dim}")
        super().__init__(
            dim=dim,
            pairwise=pairwise,
            margin=margin,
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

    def _delta(self, Xs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        P = Xs @ self.weights["W"] + self.weights["b"]
        return P @ self.weights["U"].T + self.weights["c"], P

    def _loss_grad(
        self, Xs: np.ndarray, y: np.ndarray, mask: np.ndarray
    ) -> tuple[float, dict[str, np.ndarray]]:
        delta, P = self._delta(Xs)
        point, g = soft_bce(delta, y, mask)
        loss = point
        beta = float(self.params["pairwise"])
        if beta > 0:
            pair, gp = pairwise_loss(delta, y, mask, float(self.params["margin"]))
            loss += beta * pair
            g = g + beta * gp
        gP = g @ self.weights["U"]
        return loss, {"U": g.T @ P, "c": g.sum(axis=0), "W": Xs.T @ gP, "b": gP.sum(axis=0)}

    def fit(
        self, X: np.ndarray, Y: np.ndarray, *, tasks: Sequence[str | None] | None = None
    ) -> MFModel:
        rng = np.random.default_rng(int(self.params["seed"]))
        Xf = np.asarray(X, dtype=np.float64)
        Xs = self.scaler.fit(Xf)(Xf)
        y, mask = masked_targets(np.asarray(Y, dtype=np.float64))
        d, e, dim = Xs.shape[1], y.shape[1], int(self.params["dim"])
        self.weights = {
            "W": rng.normal(0, 1.0 / np.sqrt(d), (d, dim)),
            "b": np.zeros(dim),
            "U": rng.normal(0, 0.1, (e, dim)),
            "c": _logit_of_mean(Y),
        }
        fit_minibatch(
            self.weights,
            len(Xs),
            self.params,
            rng,
            grads=lambda rows: self._loss_grad(Xs[rows], y[rows], mask[rows])[1],
            val_loss=lambda rows: float(self._loss_grad(Xs[rows], y[rows], mask[rows])[0]),
            decay_keys=["W", "U"],
        )
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        if not self.weights:
            raise PolicyError("mf: predict before fit")
        delta, _ = self._delta(self.scaler(np.asarray(X, dtype=np.float64)))
        return sigmoid(delta)

    def arrays(self) -> dict[str, np.ndarray]:
        return {**self.weights, "mu": self.scaler.mu, "sd": self.scaler.sd}  # type: ignore[dict-item]

    def restore(self, arrays: Mapping[str, np.ndarray]) -> None:
        self.weights = {k: np.asarray(arrays[k]) for k in ("W", "b", "U", "c")}
        self.scaler.mu, self.scaler.sd = np.asarray(arrays["mu"]), np.asarray(arrays["sd"])
