"""Numpy training helpers the scoring models share: Adam, minibatch fitting, standardisation."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np


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
