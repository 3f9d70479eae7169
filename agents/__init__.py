"""Experts: one async interface over local Hugging Face models, LiteLLM API models and Python callables.

Importing this package imports neither torch nor litellm; the concrete experts load them
when they are built.
"""

from expertgraph.agents.api import APIExpert, RetrySettings
from expertgraph.agents.base import Expert, ExpertCallError, RawOutput, to_messages
from expertgraph.agents.callable import CallableExpert
from expertgraph.agents.local import LocalHFExpert

__all__ = [
    "APIExpert",
    "CallableExpert",
    "Expert",
    "ExpertCallError",
    "LocalHFExpert",
    "RawOutput",
    "RetrySettings",
    "to_messages",
]
