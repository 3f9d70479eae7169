"""Routing policies (who acts next) and aggregators (how expert outputs combine).

Importing this package imports neither torch nor sentence-transformers; embedders load them
on first use.
"""

from expertgraph.policies.ahead_by_k import AheadByK
from expertgraph.policies.base import (
    AggregationContext,
    Aggregator,
    ExpertHealth,
    ExpertView,
    Policy,
    RoutingState,
)
from expertgraph.policies.baselines import OraclePolicy, RandomPolicy
from expertgraph.policies.cascade import CascadeAggregator, CascadePolicy, calibrate_threshold
from expertgraph.policies.cost import calibrate_lambda, calibrate_shares, choose
from expertgraph.policies.dataset import RoutingDataset, load_dataset
from expertgraph.policies.embedder import Embedder, SentenceTransformerEmbedder
from expertgraph.policies.embedding import EmbeddingRouter
from expertgraph.policies.extract import Extracted, extract_answer
from expertgraph.policies.fixed import AllExperts, FixedPolicy
from expertgraph.policies.fusion import JudgeRanking, LLMFusion
from expertgraph.policies.learned import LearnedRouter, train_router
from expertgraph.policies.llm_router import LLMRouter
from expertgraph.policies.medoid import MedoidAggregator
from expertgraph.policies.registry import (
    AGGREGATORS,
    POLICIES,
    BuildContext,
    build_aggregator,
    build_policy,
)
from expertgraph.policies.sticky import StickyPolicy
from expertgraph.policies.voting import MajorityVote, WeightedVote

__all__ = [
    "AGGREGATORS",
    "POLICIES",
    "AggregationContext",
    "Aggregator",
    "AheadByK",
    "AllExperts",
    "BuildContext",
    "CascadeAggregator",
    "CascadePolicy",
    "Embedder",
    "EmbeddingRouter",
    "ExpertHealth",
    "ExpertView",
    "Extracted",
    "FixedPolicy",
    "JudgeRanking",
    "LLMFusion",
    "LLMRouter",
    "LearnedRouter",
    "MajorityVote",
    "MedoidAggregator",
    "OraclePolicy",
    "Policy",
    "RandomPolicy",
    "RoutingDataset",
    "RoutingState",
    "SentenceTransformerEmbedder",
    "StickyPolicy",
    "WeightedVote",
    "build_aggregator",
    "build_policy",
    "calibrate_lambda",
    "calibrate_shares",
    "calibrate_threshold",
    "choose",
    "extract_answer",
    "load_dataset",
    "train_router",
]
