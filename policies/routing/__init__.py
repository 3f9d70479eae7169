"""Routing policies: who acts next. Each reads a ``RoutingState`` and returns a ``Decision``."""

from typing import TYPE_CHECKING

from expertgraph.core._lazy import lazy_exports

if TYPE_CHECKING:
    from expertgraph.policies.routing.baselines import OraclePolicy, RandomPolicy
    from expertgraph.policies.routing.cascade import CascadePolicy, LearnedCascade
    from expertgraph.policies.routing.embedding import EmbeddingRouter
    from expertgraph.policies.routing.fixed import AllExperts, FixedPolicy
    from expertgraph.policies.routing.learned import LearnedRouter
    from expertgraph.policies.routing.llm_router import LLMRouter
    from expertgraph.policies.routing.sticky import StickyPolicy

_EXPORTS = {
    "AllExperts": "expertgraph.policies.routing.fixed",
    "CascadePolicy": "expertgraph.policies.routing.cascade",
    "EmbeddingRouter": "expertgraph.policies.routing.embedding",
    "FixedPolicy": "expertgraph.policies.routing.fixed",
    "LLMRouter": "expertgraph.policies.routing.llm_router",
    "LearnedCascade": "expertgraph.policies.routing.cascade",
    "LearnedRouter": "expertgraph.policies.routing.learned",
    "OraclePolicy": "expertgraph.policies.routing.baselines",
    "RandomPolicy": "expertgraph.policies.routing.baselines",
    "StickyPolicy": "expertgraph.policies.routing.sticky",
}

__all__ = [
    "AllExperts",
    "CascadePolicy",
    "EmbeddingRouter",
    "FixedPolicy",
    "LLMRouter",
    "LearnedCascade",
    "LearnedRouter",
    "OraclePolicy",
    "RandomPolicy",
    "StickyPolicy",
]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
