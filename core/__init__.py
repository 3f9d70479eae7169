"""Types, state, protocols and errors shared by every part of expertgraph.

Everything here is a contract: experts, policies, aggregators, traces and the orchestrator
all import it, and nothing in it imports them.
"""

from typing import TYPE_CHECKING

from expertgraph.core._lazy import lazy_exports

if TYPE_CHECKING:
    from expertgraph.core.errors import (
        ConfigError,
        ExpertGraphError,
        ExpertLoadError,
        MissingDependencyError,
        PolicyError,
        TraceCorruptionError,
        TraceError,
        UnknownExpertError,
    )
    from expertgraph.core.protocols import Aggregator, Embedder, Policy
    from expertgraph.core.state import (
        AggregationContext,
        ExpertHealth,
        ExpertView,
        RoutingState,
        finish_decision,
        next_instruction,
        step_answer_format,
    )
    from expertgraph.core.types import (
        AnswerFormat,
        Budget,
        Decision,
        Exclusion,
        ExpertCard,
        ExpertFailure,
        Generation,
        Message,
        PlanStep,
        RoutingExample,
        RunResult,
        SampleRequest,
        Step,
        StepResult,
        Task,
        Usage,
        candidate_key,
    )

_EXPORTS = {
    "AggregationContext": "expertgraph.core.state",
    "Aggregator": "expertgraph.core.protocols",
    "AnswerFormat": "expertgraph.core.types",
    "Budget": "expertgraph.core.types",
    "ConfigError": "expertgraph.core.errors",
    "Decision": "expertgraph.core.types",
    "Embedder": "expertgraph.core.protocols",
    "Exclusion": "expertgraph.core.types",
    "ExpertCard": "expertgraph.core.types",
    "ExpertFailure": "expertgraph.core.types",
    "ExpertGraphError": "expertgraph.core.errors",
    "ExpertHealth": "expertgraph.core.state",
    "ExpertLoadError": "expertgraph.core.errors",
    "ExpertView": "expertgraph.core.state",
    "Generation": "expertgraph.core.types",
    "Message": "expertgraph.core.types",
    "MissingDependencyError": "expertgraph.core.errors",
    "PlanStep": "expertgraph.core.types",
    "Policy": "expertgraph.core.protocols",
    "PolicyError": "expertgraph.core.errors",
    "RoutingExample": "expertgraph.core.types",
    "RoutingState": "expertgraph.core.state",
    "RunResult": "expertgraph.core.types",
    "SampleRequest": "expertgraph.core.types",
    "Step": "expertgraph.core.types",
    "StepResult": "expertgraph.core.types",
    "Task": "expertgraph.core.types",
    "TraceCorruptionError": "expertgraph.core.errors",
    "TraceError": "expertgraph.core.errors",
    "UnknownExpertError": "expertgraph.core.errors",
    "Usage": "expertgraph.core.types",
    "candidate_key": "expertgraph.core.types",
    "finish_decision": "expertgraph.core.state",
    "next_instruction": "expertgraph.core.state",
    "step_answer_format": "expertgraph.core.state",
}

__all__ = [
    "AggregationContext",
    "Aggregator",
    "AnswerFormat",
    "Budget",
    "ConfigError",
    "Decision",
    "Embedder",
    "Exclusion",
    "ExpertCard",
    "ExpertFailure",
    "ExpertGraphError",
    "ExpertHealth",
    "ExpertLoadError",
    "ExpertView",
    "Generation",
    "Message",
    "MissingDependencyError",
    "PlanStep",
    "Policy",
    "PolicyError",
    "RoutingExample",
    "RoutingState",
    "RunResult",
    "SampleRequest",
    "Step",
    "StepResult",
    "Task",
    "TraceCorruptionError",
    "TraceError",
    "UnknownExpertError",
    "Usage",
    "candidate_key",
    "finish_decision",
    "next_instruction",
    "step_answer_format",
]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
