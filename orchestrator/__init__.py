"""The orchestrator: a LangGraph graph that routes each step to experts, votes, and traces.

Importing this package imports neither torch nor litellm, and loads only this module:
names resolve on first use.
"""

from typing import TYPE_CHECKING

from expertgraph.core._lazy import lazy_exports

if TYPE_CHECKING:
    from expertgraph.orchestrator.config.build import build_from_config
    from expertgraph.orchestrator.config.schema import ExpertGraphConfig, load_config, parse_config
    from expertgraph.orchestrator.graph import RunGraph
    from expertgraph.orchestrator.orchestrator import Orchestrator, RunEvent
    from expertgraph.orchestrator.tools import Tool, ToolResult, tool

_EXPORTS = {
    "ExpertGraphConfig": "expertgraph.orchestrator.config.schema",
    "Orchestrator": "expertgraph.orchestrator.orchestrator",
    "RunEvent": "expertgraph.orchestrator.orchestrator",
    "RunGraph": "expertgraph.orchestrator.graph",
    "Tool": "expertgraph.orchestrator.tools",
    "ToolResult": "expertgraph.orchestrator.tools",
    "build_from_config": "expertgraph.orchestrator.config.build",
    "load_config": "expertgraph.orchestrator.config.schema",
    "parse_config": "expertgraph.orchestrator.config.schema",
    "tool": "expertgraph.orchestrator.tools",
}

__all__ = [
    "ExpertGraphConfig",
    "Orchestrator",
    "RunEvent",
    "RunGraph",
    "Tool",
    "ToolResult",
    "build_from_config",
    "load_config",
    "parse_config",
    "tool",
]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
