"""The LangGraph state machine: route -> dispatch (Send fan-out) -> aggregate -> [act ->] route
... -> END. A step whose vote chose tool calls goes through ``act``, which executes them (or
ends the run on them, for a caller to execute).

This module is the wiring and the state types; the node bodies are in
:mod:`expertgraph.orchestrator._nodes`, each run's calls and trace in its
:class:`~expertgraph.orchestrator._recorder.RunRecorder`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated, Any, TypedDict

from langgraph.graph import END, START, StateGraph

from expertgraph.core.tools import ToolCall
from expertgraph.core.types import (
    Decision,
    Generation,
    Message,
    PlanStep,
    Step,
    Task,
    Usage,
)
from expertgraph.orchestrator._recorder import RunRecorder
from expertgraph.traces.schema import ToolRecord

if TYPE_CHECKING:
    from expertgraph.orchestrator._nodes import Nodes
    from expertgraph.orchestrator.orchestrator import Orchestrator
    from expertgraph.orchestrator.tools import Tool


def _merge_candidates(
    left: list[Generation] | None, right: list[Generation] | None
) -> list[Generation]:
    """Reducer: parallel calls append; ``None`` clears the list for a new step."""
    if right is None:
        return []
    return [*(left or []), *right]


class CallPlan(TypedDict):
    expert: str
    sample: int
    params: dict[str, Any]


class GraphState(TypedDict, total=False):
    """The typed state of one run inside the graph."""

    task: Task
    run_id: str
    step_index: int
    steps: list[Step]
    decision: Decision | None
    instruction: str
    messages: list[Message]
    """The step's messages, built once when it is routed and sent to every call of the step."""
    tool_params: dict[str, Any]
    """What the step offers each call: ``tools``, ``tool_choice``, ``parallel_tool_calls``."""
    plan_step: PlanStep | None
    calls: list[CallPlan]
    candidates: Annotated[list[Generation], _merge_candidates]
    round: int
    step_notes: list[str]
    usage: Usage
    """What the run spent so far (its recorder's count, copied out after each node)."""
    answer: str | None
    stop_reason: str | None
    started_at: float
    tool_results: list[ToolRecord]
    """Every tool call the run executed so far; the next steps' messages carry the results."""
    tool_calls: list[ToolCall]
    """The action the run ended on, for its caller to execute (``RunResult.tool_calls``)."""


class RunGraph:
    """Builds and runs the graph for an :class:`Orchestrator`."""

    def __init__(self, orch: Orchestrator) -> None:
        # Live runs by id. Entries are created on the first route of a run and removed when
        # the run ends, so the compiled graph can also run as a subgraph of a user's graph.
        self._runs: dict[str, RunRecorder] = {}
        # Imported here: the nodes' annotations name this module's state types, which
        # LangGraph resolves to infer each node's input.
        from expertgraph.orchestrator._nodes import Nodes

        self.nodes: Nodes = Nodes(orch, self._runs)
        self.compiled = self._build()

    def _build(self) -> Any:
        nodes = self.nodes
        graph = StateGraph(GraphState)
        graph.add_node("route", nodes.route)
        graph.add_node("call", nodes.call)
        graph.add_node("aggregate", nodes.aggregate)
        graph.add_node("act", nodes.act)
        graph.add_edge(START, "route")
        graph.add_conditional_edges("route", nodes.after_route, ["call", END])
        graph.add_edge("call", "aggregate")
        graph.add_conditional_edges("aggregate", nodes.after_aggregate, ["call", "act", "route"])
        graph.add_conditional_edges("act", nodes.after_act, ["route", END])
        return graph.compile()

    @staticmethod
    def recursion_limit(task: Task) -> int:
        per_step = 4 + 2 * task.budget.max_calls_per_step
        return task.max_steps * per_step + 10

    def open_run(
        self, task: Task, run_id: str | None = None, tools: Mapping[str, Tool] | None = None
    ) -> RunRecorder:
        """Start a run's trace; its recorder lives until :meth:`close_run`."""
        return self.nodes.open_run(task, run_id, tools)

    def close_run(self, state: Mapping[str, Any], stop_reason: str) -> None:
        self.nodes.close_run(state, stop_reason)
