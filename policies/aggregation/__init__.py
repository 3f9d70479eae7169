"""Aggregation: how a step's candidate replies become one answer (votes, medoid, fusion, judge).

Votes count text answers and actions (tool calls, :mod:`.actions`) in one count.
"""

from typing import TYPE_CHECKING

from expertgraph.core._lazy import lazy_exports

if TYPE_CHECKING:
    from expertgraph.policies.aggregation.ahead_by_k import AheadByK
    from expertgraph.policies.aggregation.answers import Extracted, extract_answer
    from expertgraph.policies.aggregation.cascade import CascadeAggregator, StagedCascade
    from expertgraph.policies.aggregation.fusion import LLMFusion
    from expertgraph.policies.aggregation.judge import JudgeRanking
    from expertgraph.policies.aggregation.medoid import MedoidAggregator
    from expertgraph.policies.aggregation.redflags import RedFlags
    from expertgraph.policies.aggregation.replay import ReplayOutcome, replay_step
    from expertgraph.policies.aggregation.voting import MajorityVote, WeightedVote

_EXPORTS = {
    "AheadByK": "expertgraph.policies.aggregation.ahead_by_k",
    "CascadeAggregator": "expertgraph.policies.aggregation.cascade",
    "Extracted": "expertgraph.policies.aggregation.answers",
    "JudgeRanking": "expertgraph.policies.aggregation.judge",
    "LLMFusion": "expertgraph.policies.aggregation.fusion",
    "MajorityVote": "expertgraph.policies.aggregation.voting",
    "MedoidAggregator": "expertgraph.policies.aggregation.medoid",
    "RedFlags": "expertgraph.policies.aggregation.redflags",
    "ReplayOutcome": "expertgraph.policies.aggregation.replay",
    "StagedCascade": "expertgraph.policies.aggregation.cascade",
    "WeightedVote": "expertgraph.policies.aggregation.voting",
    "extract_answer": "expertgraph.policies.aggregation.answers",
    "replay_step": "expertgraph.policies.aggregation.replay",
}

__all__ = [
    "AheadByK",
    "CascadeAggregator",
    "Extracted",
    "JudgeRanking",
    "LLMFusion",
    "MajorityVote",
    "MedoidAggregator",
    "RedFlags",
    "ReplayOutcome",
    "StagedCascade",
    "WeightedVote",
    "extract_answer",
    "replay_step",
]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
