"""The orchestrator: a LangGraph graph that routes each step to experts, votes, and traces.

Importing this package imports neither torch nor litellm, and loads only this module:
names resolve on first use.
"""

from typing import TYPE_CHECKING

from expertgraph.core._lazy import lazy_exports

if TYPE_CHECKING:
    from expertgraph.orchestrator._batch import (
        BatchReport,
        BatchResult,
        BatchSummary,
        BatchTask,
        CollectReport,
        CollectSummary,
        acollect,
        read_tasks,
    )
    from expertgraph.orchestrator._ray import RayExecutor
    from expertgraph.orchestrator.config.build import build_from_config
    from expertgraph.orchestrator.config.schema import ExpertGraphConfig, load_config, parse_config
    from expertgraph.orchestrator.graph import RunGraph
    from expertgraph.orchestrator.orchestrator import Orchestrator, RunEvent
    from expertgraph.orchestrator.tools import Tool, ToolResult, tool

_EXPORTS = {
    "BatchReport": "expertgraph.orchestrator._batch",
    "BatchResult": "expertgraph.orchestrator._batch",
    "BatchSummary": "expertgraph.orchestrator._batch",
    "BatchTask": "expertgraph.orchestrator._batch",
    "CollectReport": "expertgraph.orchestrator._batch",
    "CollectSummary": "expertgraph.orchestrator._batch",
    "ExpertGraphConfig": "expertgraph.orchestrator.config.schema",
    "Orchestrator": "expertgraph.orchestrator.orchestrator",
    "RayExecutor": "expertgraph.orchestrator._ray",
    "RunEvent": "expertgraph.orchestrator.orchestrator",
    "RunGraph": "expertgraph.orchestrator.graph",
    "Tool": "expertgraph.orchestrator.tools",
    "ToolResult": "expertgraph.orchestrator.tools",
    "acollect": "expertgraph.orchestrator._batch",
    "build_from_config": "expertgraph.orchestrator.config.build",
    "load_config": "expertgraph.orchestrator.config.schema",
    "parse_config": "expertgraph.orchestrator.config.schema",
    "read_tasks": "expertgraph.orchestrator._batch",
    "tool": "expertgraph.orchestrator.tools",
}

__all__ = [
    "BatchReport",
    "BatchResult",
    "BatchSummary",
    "BatchTask",
    "CollectReport",
    "CollectSummary",
    "ExpertGraphConfig",
    "Orchestrator",
    "RayExecutor",
    "RunEvent",
    "RunGraph",
    "Tool",
    "ToolResult",
    "acollect",
    "build_from_config",
    "load_config",
    "parse_config",
    "read_tasks",
    "tool",
]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
