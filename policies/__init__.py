"""Routing policies (who acts next) and aggregators (how expert outputs combine).

Sub-packages: ``routing``, ``aggregation``, ``learning`` (routers learned from data),
``data`` (routing data sets) and ``embeddings``. The names most users need are here too;
importing this package imports none of them until used, nor torch.
"""

from typing import TYPE_CHECKING

from expertgraph.core._lazy import lazy_exports

if TYPE_CHECKING:
    from expertgraph.policies.aggregation.ahead_by_k import AheadByK
    from expertgraph.policies.aggregation.answers import Extracted, extract_answer
    from expertgraph.policies.aggregation.cascade import CascadeAggregator
    from expertgraph.policies.aggregation.fusion import LLMFusion
    from expertgraph.policies.aggregation.judge import JudgeRanking
    from expertgraph.policies.aggregation.medoid import MedoidAggregator
    from expertgraph.policies.aggregation.redflags import RedFlags
    from expertgraph.policies.aggregation.voting import MajorityVote, WeightedVote
    from expertgraph.policies.data.dataset import RoutingDataset, load_dataset
    from expertgraph.policies.embeddings.embedder import SentenceTransformerEmbedder
    from expertgraph.policies.learning.calibration import calibrate_threshold
    from expertgraph.policies.learning.cost import calibrate_lambda, calibrate_shares, choose
    from expertgraph.policies.learning.training import train_router
    from expertgraph.policies.registry import (
        AGGREGATORS,
        POLICIES,
        BuildContext,
        build_aggregator,
        build_policy,
    )
    from expertgraph.policies.routing.baselines import OraclePolicy, RandomPolicy
    from expertgraph.policies.routing.cascade import CascadePolicy
    from expertgraph.policies.routing.embedding import EmbeddingRouter
    from expertgraph.policies.routing.fixed import AllExperts, FixedPolicy
    from expertgraph.policies.routing.learned import LearnedRouter
    from expertgraph.policies.routing.llm_router import LLMRouter
    from expertgraph.policies.routing.sticky import StickyPolicy

_EXPORTS = {
    "AGGREGATORS": "expertgraph.policies.registry",
    "AheadByK": "expertgraph.policies.aggregation.ahead_by_k",
    "AllExperts": "expertgraph.policies.routing.fixed",
    "BuildContext": "expertgraph.policies.registry",
    "CascadeAggregator": "expertgraph.policies.aggregation.cascade",
    "CascadePolicy": "expertgraph.policies.routing.cascade",
    "EmbeddingRouter": "expertgraph.policies.routing.embedding",
    "Extracted": "expertgraph.policies.aggregation.answers",
    "FixedPolicy": "expertgraph.policies.routing.fixed",
    "JudgeRanking": "expertgraph.policies.aggregation.judge",
    "LLMFusion": "expertgraph.policies.aggregation.fusion",
    "LLMRouter": "expertgraph.policies.routing.llm_router",
    "LearnedRouter": "expertgraph.policies.routing.learned",
    "MajorityVote": "expertgraph.policies.aggregation.voting",
    "MedoidAggregator": "expertgraph.policies.aggregation.medoid",
    "OraclePolicy": "expertgraph.policies.routing.baselines",
    "POLICIES": "expertgraph.policies.registry",
    "RandomPolicy": "expertgraph.policies.routing.baselines",
    "RedFlags": "expertgraph.policies.aggregation.redflags",
    "RoutingDataset": "expertgraph.policies.data.dataset",
    "SentenceTransformerEmbedder": "expertgraph.policies.embeddings.embedder",
    "StickyPolicy": "expertgraph.policies.routing.sticky",
    "WeightedVote": "expertgraph.policies.aggregation.voting",
    "build_aggregator": "expertgraph.policies.registry",
    "build_policy": "expertgraph.policies.registry",
    "calibrate_lambda": "expertgraph.policies.learning.cost",
    "calibrate_shares": "expertgraph.policies.learning.cost",
    "calibrate_threshold": "expertgraph.policies.learning.calibration",
    "choose": "expertgraph.policies.learning.cost",
    "extract_answer": "expertgraph.policies.aggregation.answers",
    "load_dataset": "expertgraph.policies.data.dataset",
    "train_router": "expertgraph.policies.learning.training",
}

__all__ = [
    "AGGREGATORS",
    "AheadByK",
    "AllExperts",
    "BuildContext",
    "CascadeAggregator",
    "CascadePolicy",
    "EmbeddingRouter",
    "Extracted",
    "FixedPolicy",
    "JudgeRanking",
    "LLMFusion",
    "LLMRouter",
    "LearnedRouter",
    "MajorityVote",
    "MedoidAggregator",
    "OraclePolicy",
    "POLICIES",
    "RandomPolicy",
    "RedFlags",
    "RoutingDataset",
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

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
