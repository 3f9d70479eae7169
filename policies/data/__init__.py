"""Routing data sets: JSONL rows of per-expert scores; LLMRouter, RouteLLM and ZeroEval loaders."""

from typing import TYPE_CHECKING

from expertgraph.core._lazy import lazy_exports

if TYPE_CHECKING:
    from expertgraph.policies.data.dataset import (
        RoutingDataset,
        detect_layout,
        from_examples,
        load_dataset,
        load_jsonl,
        save_jsonl,
        split_subset,
    )
    from expertgraph.policies.data.llmrouter import load_llmrouter_dc
    from expertgraph.policies.data.prices import Price, apply_prices, load_prices
    from expertgraph.policies.data.routellm import load_routellm
    from expertgraph.policies.data.zeroeval import (
        ZeroEvalSet,
        load_zeroeval,
        load_zeroeval_folder,
        score_answer,
    )

_EXPORTS = {
    "Price": "expertgraph.policies.data.prices",
    "RoutingDataset": "expertgraph.policies.data.dataset",
    "ZeroEvalSet": "expertgraph.policies.data.zeroeval",
    "apply_prices": "expertgraph.policies.data.prices",
    "detect_layout": "expertgraph.policies.data.dataset",
    "from_examples": "expertgraph.policies.data.dataset",
    "load_dataset": "expertgraph.policies.data.dataset",
    "load_jsonl": "expertgraph.policies.data.dataset",
    "load_llmrouter_dc": "expertgraph.policies.data.llmrouter",
    "load_prices": "expertgraph.policies.data.prices",
    "load_routellm": "expertgraph.policies.data.routellm",
    "load_zeroeval": "expertgraph.policies.data.zeroeval",
    "load_zeroeval_folder": "expertgraph.policies.data.zeroeval",
    "save_jsonl": "expertgraph.policies.data.dataset",
    "score_answer": "expertgraph.policies.data.zeroeval",
    "split_subset": "expertgraph.policies.data.dataset",
}

__all__ = [
    "Price",
    "RoutingDataset",
    "ZeroEvalSet",
    "apply_prices",
    "detect_layout",
    "from_examples",
    "load_dataset",
    "load_jsonl",
    "load_llmrouter_dc",
    "load_prices",
    "load_routellm",
    "load_zeroeval",
    "load_zeroeval_folder",
    "save_jsonl",
    "score_answer",
    "split_subset",
]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
