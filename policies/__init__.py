"""Routing policies (who acts next) and aggregators (how expert outputs combine).

Importing this package imports neither torch nor sentence-transformers; the embedder loads
them on first use.
"""

from expertgraph.policies.base import (
    AggregationContext,
    Aggregator,
    ExpertHealth,
    ExpertView,
    Policy,
    RoutingState,
)
from expertgraph.policies.embedder import Embedder, SentenceTransformerEmbedder
from expertgraph.policies.embedding import EmbeddingRouter
from expertgraph.policies.extract import Extracted, extract_answer
from expertgraph.policies.fixed import AllExperts, FixedPolicy
from expertgraph.policies.registry import AGGREGATORS, POLICIES, BuildContext, build_aggregator, build_policy
from expertgraph.policies.voting import MajorityVote

__all__ = [
    "AGGREGATORS",
    "POLICIES",
    "AggregationContext",
    "Aggregator",
    "AllExperts",
    "BuildContext",
    "Embedder",
    "EmbeddingRouter",
    "ExpertHealth",
    "ExpertView",
    "Extracted",
    "FixedPolicy",
    "MajorityVote",
    "Policy",
    "RoutingState",
    "SentenceTransformerEmbedder",
    "build_aggregator",
    "build_policy",
    "extract_answer",
]
