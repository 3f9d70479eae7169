"""Experts: one async interface over local Hugging Face models, LiteLLM API models and Python callables.

Importing this package imports neither torch nor litellm; the concrete experts load them
when they are built.
"""

from typing import TYPE_CHECKING

from expertgraph.core._lazy import lazy_exports

if TYPE_CHECKING:
    from expertgraph.agents.api import APIExpert, RetrySettings
    from expertgraph.agents.base import Expert, ExpertCallError, RawOutput, to_messages
    from expertgraph.agents.callable import CallableExpert
    from expertgraph.agents.local import LocalHFExpert, clear_model_cache

_EXPORTS = {
    "APIExpert": "expertgraph.agents.api",
    "CallableExpert": "expertgraph.agents.callable",
    "Expert": "expertgraph.agents.base",
    "ExpertCallError": "expertgraph.agents.base",
    "LocalHFExpert": "expertgraph.agents.local",
    "RawOutput": "expertgraph.agents.base",
    "RetrySettings": "expertgraph.agents.api",
    "clear_model_cache": "expertgraph.agents.local",
    "to_messages": "expertgraph.agents.base",
}

__all__ = [
    "APIExpert",
    "CallableExpert",
    "Expert",
    "ExpertCallError",
    "LocalHFExpert",
    "RawOutput",
    "RetrySettings",
    "clear_model_cache",
    "to_messages",
]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
