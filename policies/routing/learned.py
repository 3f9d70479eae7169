"""The learned routing policy: a trained :class:`ScoringModel` behind ``quality - lam * cost``.

A learned router predicts each expert's quality on a prompt from the prompt's embedding
(plus a few surface features of the text, :mod:`~expertgraph.policies.learning.features`),
then picks by ``quality - lam * cost`` (:mod:`expertgraph.policies.learning.cost`). The models
live in :mod:`expertgraph.policies.learning.models`; training and calibration in
:mod:`expertgraph.policies.learning.training`. :class:`LearnedRouter` is the policy, usable at
every step of a run, and :meth:`LearnedRouter.load` refuses an artifact trained for other
experts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from expertgraph.core import (
    OPEN_TASK_ANSWERED,
    Policy,
    RoutingState,
    finish_decision,
    next_instruction,
)
from expertgraph.core.errors import PolicyError
from expertgraph.core.protocols import Embedder
from expertgraph.core.types import Decision
from expertgraph.policies.embeddings.embedder import BUNDLED_EMBEDDER
from expertgraph.policies.learning.artifacts import check_experts, load_artifact, save_artifact
from expertgraph.policies.learning.cost import choose, utility
from expertgraph.policies.learning.features import SURFACE_VERSION, Featurizer
from expertgraph.policies.learning.models.base import ScoringModel, make_model
from expertgraph.policies.routing._ranking import top_k_decision


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
                f"{self.name}: the artifact has no calibration curve; "
                "pass lam instead of target_cost"
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
            return finish_decision(state, self.name, OPEN_TASK_ANSWERED)
        views = state.candidates if self.avoid_failing else state.allowed
        known = [v.name for v in views if v.name in self.costs]
        if not known:
            raise PolicyError(
                f"{self.name}: none of the step's experts ({', '.join(v.name for v in views)}) is "
                f"known to this router ({', '.join(self.experts)})"
            )
        quality = self.predict_quality([instruction])[0]
        costs = self.cost_vector()
        offsets = self.offset_vector()
        allowed = np.array([n in known for n in self.experts])
        # choose() breaks ties to the cheaper expert: its order is the ranking.
        order = choose(
            quality[None, :], costs, self.lam, len(self.experts), allowed=allowed, offsets=offsets
        )[0]
        util = utility(quality[None, :], costs, self.lam, offsets)[0]
        scores = {n: float(util[j]) for j, n in enumerate(self.experts) if n in known}
        best = sorted(scores, key=lambda n: scores[n], reverse=True)[:4]
        detail = ", ".join(
            f"{n} q={quality[self.experts.index(n)]:.3f} c={self.costs[n]:.3g}" for n in best
        )
        rule = f"quality - {self.lam:.3g}*cost" + (" + share offset" if offsets is not None else "")
        unknown = [v.name for v in views if v.name not in self.costs]
        return top_k_decision(
            state,
            scores,
            self.top_k or state.k,
            self.name,
            f"{rule} ({detail})",
            prefix=f"{self.name}: ",
            ranking=[self.experts[j] for j in order if allowed[j]],
            routed_around=state.routed_around if self.avoid_failing else [],
            notes=[f"not scored (unknown to the router): {', '.join(unknown)}"] if unknown else [],
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
    """The recorded embedder, behind the disk cache of ``home`` when one is given."""
    from expertgraph.policies.embeddings.cache import cached_embedder
    from expertgraph.policies.embeddings.embedder import SentenceTransformerEmbedder

    return cached_embedder(name, home) if home is not None else SentenceTransformerEmbedder(name)
