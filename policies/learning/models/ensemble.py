"""An ensemble router: the weighted mean of several models' predicted qualities.

Members are any other kinds (``{"kind": "knn", "params": {...}}``), each fitted on the same
rows. The ensemble's features always include the surface features; a member that does not
use them (kNN, k-means) gets the embedding columns only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from expertgraph.core.errors import PolicyError
from expertgraph.policies.learning.features import N_SURFACE
from expertgraph.policies.learning.models.base import ScoringModel, make_model, model_class

DEFAULT_MEMBERS: list[dict[str, Any]] = [{"kind": "knn"}, {"kind": "task"}, {"kind": "mlp"}]


class EnsembleModel(ScoringModel):
    """Weighted average of member models (weights default to equal)."""

    kind = "ensemble"
    surface_default = True

    def __init__(
        self,
        members: Sequence[Mapping[str, Any]] | None = None,
        weights: Sequence[float] | None = None,
    ) -> None:
        spec = [dict(m) for m in (members or DEFAULT_MEMBERS)]
        for m in spec:
            if m.get("kind") in (None, "ensemble"):
                raise PolicyError(
                    f"ensemble: bad member {m} (a member needs a kind other than ensemble)"
                )
            model_class(str(m["kind"]))
        w = [1.0] * len(spec) if weights is None else [float(x) for x in weights]
        if len(w) != len(spec) or min(w) < 0 or sum(w) <= 0:
            raise PolicyError(f"ensemble: weights {w} do not fit {len(spec)} members")
        super().__init__(members=spec, weights=w)
        self.models = [make_model(str(m["kind"]), m.get("params")) for m in spec]

    def _view(self, model: ScoringModel, X: np.ndarray) -> np.ndarray:
        return X if model.surface_default else X[:, :-N_SURFACE]

    @property
    def needs_tasks(self) -> bool:  # type: ignore[override]
        return any(m.needs_tasks for m in self.models)

    def fit(
        self, X: np.ndarray, Y: np.ndarray, *, tasks: Sequence[str | None] | None = None
    ) -> EnsembleModel:
        for model in self.models:
            model.fit(self._view(model, X), Y, tasks=tasks)
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        w = np.asarray(self.params["weights"], dtype=float)
        preds = [model.predict(self._view(model, X)) for model in self.models]
        return np.tensordot(w / w.sum(), np.stack(preds), axes=1)

    def arrays(self) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        for i, model in enumerate(self.models):
            for name, arr in model.arrays().items():
                out[f"m{i}.{name}"] = arr
        return out

    def restore(self, arrays: Mapping[str, np.ndarray]) -> None:
        for i, model in enumerate(self.models):
            prefix = f"m{i}."
            model.restore({k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)})

    def describe(self) -> dict[str, Any]:
        return {"members": [{"kind": m.kind, **m.describe()} for m in self.models]}
