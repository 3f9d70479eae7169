"""Experts: one async interface over local Hugging Face models, LiteLLM models and callables.

Importing this package imports neither torch nor litellm; the concrete experts load them
when they are built.

Modules: ``base`` (the Expert interface), ``local``, ``api`` and ``callable`` (one expert
each), ``tools`` (tool functions); the ``_``-prefixed modules are their implementation.
"""

from typing import TYPE_CHECKING

from expertgraph.core._lazy import lazy_exports

if TYPE_CHECKING:
    from expertgraph.agents._bundled import (
        BUNDLED_MODELS,
        bundled_model_available,
        model_cache_dir,
    )
    from expertgraph.agents._loading import clear_model_cache
    from expertgraph.agents._prompting import completion_prompt
    from expertgraph.agents._retry import RetrySettings
    from expertgraph.agents.api import APIExpert
    from expertgraph.agents.base import Expert, RawOutput, to_messages
    from expertgraph.agents.callable import CallableExpert
    from expertgraph.agents.local import LocalHFExpert

_EXPORTS = {
    "APIExpert": "expertgraph.agents.api",
    "BUNDLED_MODELS": "expertgraph.agents._bundled",
    "CallableExpert": "expertgraph.agents.callable",
    "Expert": "expertgraph.agents.base",
    "LocalHFExpert": "expertgraph.agents.local",
    "RawOutput": "expertgraph.agents.base",
    "RetrySettings": "expertgraph.agents._retry",
    "bundled_model_available": "expertgraph.agents._bundled",
    "clear_model_cache": "expertgraph.agents._loading",
    "completion_prompt": "expertgraph.agents._prompting",
    "model_cache_dir": "expertgraph.agents._bundled",
    "to_messages": "expertgraph.agents.base",
}

__all__ = [
    "APIExpert",
    "BUNDLED_MODELS",
    "CallableExpert",
    "Expert",
    "LocalHFExpert",
    "RawOutput",
    "RetrySettings",
    "bundled_model_available",
    "clear_model_cache",
    "completion_prompt",
    "model_cache_dir",
    "to_messages",
]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
