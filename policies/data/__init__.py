"""Routing data sets: JSONL rows of per-expert scores, and loaders for LLMRouter, RouteLLM and ZeroEval."""

from typing import TYPE_CHECKING

from expertgraph.core._lazy import lazy_exports

if TYPE_CHECKING:
    from expertgraph.policies.data.dataset import (
        DatasetError,
        RoutingDataset,
        detect_layout,
        from_examples,
        load_dataset,
        load_jsonl,
        load_llmrouter_dc,
        load_routellm,
        load_zeroeval_folder,
        save_jsonl,
    )
    from expertgraph.policies.data.zeroeval import (
        ZeroEvalError,
        ZeroEvalSet,
        load_zeroeval,
        score_answer,
    )

_EXPORTS = {
    "DatasetError": "expertgraph.policies.data.dataset",
    "RoutingDataset": "expertgraph.policies.data.dataset",
    "ZeroEvalError": "expertgraph.policies.data.zeroeval",
    "ZeroEvalSet": "expertgraph.policies.data.zeroeval",
    "detect_layout": "expertgraph.policies.data.dataset",
    "from_examples": "expertgraph.policies.data.dataset",
    "load_dataset": "expertgraph.policies.data.dataset",
    "load_jsonl": "expertgraph.policies.data.dataset",
    "load_llmrouter_dc": "expertgraph.policies.data.dataset",
    "load_routellm": "expertgraph.policies.data.dataset",
    "load_zeroeval": "expertgraph.policies.data.zeroeval",
    "load_zeroeval_folder": "expertgraph.policies.data.dataset",
    "save_jsonl": "expertgraph.policies.data.dataset",
    "score_answer": "expertgraph.policies.data.zeroeval",
}

__all__ = [
    "DatasetError",
    "RoutingDataset",
    "ZeroEvalError",
    "ZeroEvalSet",
    "detect_layout",
    "from_examples",
    "load_dataset",
    "load_jsonl",
    "load_llmrouter_dc",
    "load_routellm",
    "load_zeroeval",
    "load_zeroeval_folder",
    "save_jsonl",
    "score_answer",
]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
