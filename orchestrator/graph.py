"""The LangGraph state machine: route -> dispatch (Send fan-out) -> aggregate -> [act ->] route
... -> END. A step whose vote chose tool calls goes through ``act``, which executes them (or
ends the run on them, for a caller to execute). A step routed to one expert skips the fan-out:
``route`` makes the call itself, and without a checkpointer votes on it too (one superstep per
step; a checkpointed run goes route -> aggregate, so its routed call is saved before the vote).
``aggregate`` draws the extra samples an aggregator asks for itself, concurrently, so they cost
no graph supersteps.

The state is bounded: it keeps the run's last ``history_window`` steps (what the policy, the
aggregator and the prompts read), running totals and the current step, so a step costs the
same time and memory at step 10 as at step 1,000,000. Every step is in the trace.

This module is the wiring and the state types; the node bodies are in
:mod:`expertgraph.orchestrator._nodes`, each run's calls and trace in its
:class:`~expertgraph.orchestrator._recorder.RunRecorder`.
"""

from __future__ import annotations

import functools
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Annotated, Any, TypedDict

from langchain_core.runnables import Runnable, RunnableConfig
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph import END, START, StateGraph

from expertgraph.core.errors import CheckpointError
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
from expertgraph.orchestrator._recorder import RESULT_STEPS, RunRecorder
from expertgraph.orchestrator.tools import offer_tools
from expertgraph.traces.schema import CallRecord, ToolRecord, TraceRecord
from expertgraph.traces.store import TraceWriter, load_run

if TYPE_CHECKING:
    from expertgraph.orchestrator._nodes import Nodes
    from expertgraph.orchestrator.orchestrator import Orchestrator
    from expertgraph.orchestrator.tools import Tool


def _merge_candidates(
    left: list[Generation] | None, right: list[Generation] | None
) -> list[Generation]:
    """Reducer: parallel calls append; ``None`` clears the list (a step's end)."""
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
    """How many steps the run has finished (the index of the one in progress)."""
    steps: list[Step]
    """The run's last steps, at most its history window (older ones are in the trace)."""
    pinned: dict[int, str]
    """What older steps that later plan steps name as ``{stepN}`` answered (by index)."""
    acted: bool
    """Whether a step of the run has acted (its vote chose tool calls)."""
    decision: Decision | None
    instruction: str
    messages: list[Message]
    """The step's messages, built once when it is routed and sent to every call of the step."""
    tool_params: dict[str, Any]
    """What the step offers each call: ``tools``, ``tool_choice``, ``parallel_tool_calls``."""
    plan_step: PlanStep | None
    calls: list[CallPlan]
    candidates: Annotated[list[Generation], _merge_candidates]
    usage: Usage
    """What the run spent so far (its recorder's count, copied out after each node)."""
    answer: str | None
    stop_reason: str | None
    started_at: float
    tool_results: list[ToolRecord]
    """The tool calls of the steps in the window; the next steps' messages carry the results."""
    tool_calls: list[ToolCall]
    """The action the run ended on, for its caller to execute (``RunResult.tool_calls``)."""


class _Path(Runnable[Any, Any]):
    """A conditional edge's path function, called as it is.

    LangGraph wraps a bare path function in a traced runnable: a callback run, a new task and
    a shielded end event on every call, with no handler listening (about 0.2 ms each, half a
    millisecond of a one-step run). Ours only read the state to pick the next node; the
    nodes' own work is what a callback handler sees.
    """

    def __init__(self, afunc: Callable[[Any], Awaitable[Any]]) -> None:
        self.afunc = afunc
        self.name = afunc.__name__

    def invoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        raise TypeError(f"{self.name} is async: run the graph with ainvoke or astream")

    async def ainvoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        return await self.afunc(input)


class RunGraph:
    """Builds and runs the graph for an :class:`Orchestrator`."""

    def __init__(self, orch: Orchestrator, history_window: int | None = None) -> None:
        # Live runs by id. Entries are created on the first route of a run and removed when
        # the run ends, so the compiled graph can also run as a subgraph of a user's graph.
        self._runs: dict[str, RunRecorder] = {}
        # Imported here: the nodes' annotations name this module's state types, which
        # LangGraph resolves to infer each node's input.
        from expertgraph.orchestrator._nodes import Nodes

        self.nodes: Nodes = Nodes(orch, self._runs, history_window)
        self.compiled = self._build()

    def _build(self) -> Any:
        nodes = self.nodes
        graph = StateGraph(GraphState)
        graph.add_node("route", self._flushed(nodes.route))
        graph.add_node("call", self._flushed(nodes.call))
        graph.add_node("aggregate", self._flushed(nodes.aggregate))
        graph.add_node("act", self._flushed(nodes.act))
        graph.add_edge(START, "route")
        graph.add_conditional_edges(
            "route", _Path(nodes.after_route), ["call", "aggregate", "act", "route", END]
        )
        graph.add_edge("call", "aggregate")
        graph.add_conditional_edges("aggregate", _Path(nodes.after_aggregate), ["act", "route"])
        graph.add_conditional_edges("act", _Path(nodes.after_act), ["route", END])
        return graph.compile()

    def _flushed(self, node: Callable[[Any], Awaitable[dict[str, Any]]]) -> Any:
        """``node``, followed (when runs are checkpointed) by writing out its trace records.

        The trace writer buffers a step's records; a checkpointed run writes them before
        LangGraph saves the node's result, so a run resumed from that checkpoint has them.
        """

        @functools.wraps(node)
        async def run(state: Any) -> dict[str, Any]:
            update = await node(state)
            if self.nodes.orch.checkpointer is not None:
                recorder = self._runs.get((update or {}).get("run_id") or state.get("run_id"))
                if recorder is not None:
                    recorder.writer.flush()
            return update

        return run

    @staticmethod
    def recursion_limit(task: Task) -> int:
        return task.max_steps * 4 + 10  # route, call, aggregate, act

    def open_run(
        self, task: Task, run_id: str | None = None, tools: Mapping[str, Tool] | None = None
    ) -> RunRecorder:
        """Start a run's trace; its recorder lives until :meth:`close_run`."""
        return self.nodes.open_run(task, run_id, tools)

    def close_run(self, state: Mapping[str, Any], stop_reason: str) -> None:
        self.nodes.close_run(state, stop_reason)

    def with_checkpointer(self, saver: BaseCheckpointSaver) -> Any:
        """The compiled graph saving to ``saver`` (:attr:`compiled` itself has none, so it
        inherits its parent's when it runs as a subgraph)."""
        return self.compiled.copy({"checkpointer": saver})

    def reopen_run(
        self,
        state: Mapping[str, Any],
        tools: Mapping[str, Tool] | None = None,
        *,
        in_step: bool = False,
    ) -> RunRecorder:
        """The recorder of a run resumed from its checkpointed ``state``: its trace is appended
        to, and its spend and health are rebuilt from that trace. ``in_step``: the run stopped
        between a step's route and its vote, so ``state``'s candidates are that step's."""
        orch = self.nodes.orch
        run_id = state["run_id"]
        path = orch.trace_store.path_for(run_id)
        if not path.is_file():
            raise CheckpointError(
                f"run {run_id!r} has a checkpoint but no trace at {path} "
                "(resume with the trace directory the run was started with)"
            )
        trace = load_run(path)
        started_with = [e.name for e in trace.start.experts]
        if sorted(started_with) != sorted(orch.experts):
            raise CheckpointError(
                f"run {run_id!r} was started with experts {', '.join(started_with)}; "
                f"this configuration has {', '.join(orch.experts)}: resume it with the same ones"
            )
        task, runnable = offer_tools(state["task"], orch.tools if tools is None else tools)
        writer = orch.trace_store.writer(run_id)
        index = state["step_index"]
        steps: deque[Step] = deque(maxlen=RESULT_STEPS)
        current: list[TraceRecord] = []  # the candidate calls of the step in progress
        written: list[CallRecord] = []

        def replayed() -> Iterator[TraceRecord]:
            # One streamed pass over the trace (a million-step run is never in memory): its
            # records rebuild spend and health, its steps fill RunResult.steps.
            read: list[TraceRecord] = []
            for step in trace.iter_steps(read.append):
                if step.index < index:
                    steps.append(step)
                yield from self._noted(read, current, index)
            yield from self._noted(read, current, index)
            if in_step:
                written.extend(self._record_saved_candidates(state, current, writer))
                yield from written

        recorder = RunRecorder.reopen(
            replayed(),
            run_id=run_id,
            task=task,
            writer=writer,
            started_at=state["started_at"],
            tools=runnable,
            tool_timeout_s=orch.tool_timeout_s,
            experts=orch.experts,
        )
        recorder.forget_before(index)
        recovered = self._drawn_before_the_kill(state, [*current, *written]) if in_step else []
        if recovered:
            recorder.recovered[index] = recovered
        recorder.steps.extend(steps)
        self._runs[run_id] = recorder
        return recorder

    @staticmethod
    def _noted(
        read: list[TraceRecord], current: list[TraceRecord], index: int
    ) -> Iterator[TraceRecord]:
        """The records read so far (emptied), keeping the step in progress's candidate calls."""
        for record in read:
            if (
                isinstance(record, CallRecord)
                and record.role == "candidate"
                and record.step == index
            ):
                current.append(record)
        yield from read
        read.clear()

    @staticmethod
    def _drawn_before_the_kill(
        state: Mapping[str, Any], records: list[TraceRecord]
    ) -> list[Generation]:
        """Candidates of the step in progress that its trace has and its checkpoint lacks: the
        aggregate node's extra draws that finished before the kill."""
        step = state["step_index"]
        saved = {(g.expert, g.sample) for g in state.get("candidates") or []}
        return [
            r.generation
            for r in records
            if isinstance(r, CallRecord)
            and r.role == "candidate"
            and r.step == step
            and (r.generation.expert, r.generation.sample) not in saved
        ]

    @staticmethod
    def _record_saved_candidates(
        state: Mapping[str, Any], records: list[TraceRecord], writer: TraceWriter
    ) -> list[CallRecord]:
        """Write the call records of candidates the checkpoint saved but the trace lacks (a
        ``decisions`` trace holds a step's records until its vote), so the trace has every
        candidate of the step once and the rebuilt spend counts them."""
        step = state["step_index"]
        seen = {
            (r.generation.expert, r.generation.sample)
            for r in records
            if isinstance(r, CallRecord) and r.role == "candidate" and r.step == step
        }
        written: list[CallRecord] = []
        for generation in state.get("candidates") or []:
            if (generation.expert, generation.sample) in seen:
                continue
            record = CallRecord(
                run_id=state["run_id"],
                step=step,
                instruction=state.get("instruction") or "",
                generation=generation,
                role="candidate",
            )
            writer.write(record)
            written.append(record)
        return written
