"""The public entry point: an orchestrator built from experts and a policy, or from a config
file.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from expertgraph.agents.base import Expert
from expertgraph.core import Aggregator, Policy
from expertgraph.core._sync import run_sync
from expertgraph.core.errors import CheckpointError, ConfigError
from expertgraph.core.types import Budget, RunResult, Step, Task, Usage
from expertgraph.orchestrator._checkpoint import (
    Checkpointer,
    Durability,
    describe,
    inside_a_graph,
    is_postgres,
    open_saver,
    thread,
)
from expertgraph.orchestrator._recorder import RESULT_STEPS, RunRecorder
from expertgraph.orchestrator.config.schema import (
    ExpertGraphConfig,
    check_call_params,
    load_config,
)
from expertgraph.orchestrator.graph import GraphState, RunGraph
from expertgraph.orchestrator.tools import DEFAULT_TOOL_TIMEOUT_S, Tool, as_tools
from expertgraph.traces.store import TraceStore, load_run

if TYPE_CHECKING:
    from expertgraph.orchestrator._batch import BatchReport, BatchResult, BatchTask

TaskLike = Task | str | Mapping[str, Any]
ToolLike = Tool | Callable[..., Any]


@dataclass
class RunEvent:
    """One streamed event: a node finished (``route``, ``call``, ``aggregate``, ``act``) or the
    run ended."""

    node: str
    run_id: str
    step: int
    data: dict[str, Any]
    result: RunResult | None = None


@dataclass
class _Start:
    """A run ready to go: the graph to invoke, its input (None: resume from the checkpoint),
    its LangGraph config, the state so far, and whether the run already ended."""

    graph: Any
    input: GraphState | None
    config: dict[str, Any]
    state: dict[str, Any]
    run_id: str
    done: bool = False
    options: dict[str, Any] = field(default_factory=dict)
    """Keywords of ``ainvoke``/``astream`` (the durability mode when checkpointed)."""
    recorder: RunRecorder | None = None
    """The run's recorder (it keeps the steps for the result); None for a run that had ended."""


def _fused_step(node: str, update: Mapping[str, Any]) -> Step | None:
    """The step a ``route`` update finished (routed, called and voted in one node), if any."""
    if node != "route" or update.get("decision", "") is not None or "step_index" not in update:
        return None
    return update["steps"][-1] if update.get("steps") else None


# What a route node that ends the run writes (Nodes._stop): when it also finished the run's
# last step, the stop is reported as the route event a next superstep would have been.
_STOP_FIELDS = ("stop_reason", "answer", "decision", "calls", "usage")


class Orchestrator:
    """Runs tasks through the route -> dispatch -> aggregate graph.

    Build it from live objects (``Orchestrator([expert, ...], policy)``) or from a config
    file (:meth:`from_config`). The compiled LangGraph graph is :attr:`graph`.

    ``tools`` (:class:`~expertgraph.orchestrator.tools.Tool` objects or plain functions) make
    every run an agent loop: each step's experts are offered them, the vote chooses an action
    or a text answer, the chosen calls run (each within its timeout, ``tool_timeout_s`` by
    default) and the next step sees their results, until a text answer or a limit.
    ``arun(task, tools=...)`` gives one run other tools. A task that names its own ``tools``
    offers those; a call of one the run has no callable for ends the run with
    ``RunResult.tool_calls``, for the caller to execute.

    ``checkpointer`` makes runs durable: a LangGraph saver, a SQLite file path or a
    PostgreSQL DSN (``postgresql://...``). Each superstep (and each finished expert call) is
    saved to the run's thread (its run id), so ``arun(run_id=..., resume=True)`` continues a
    killed run without calling an expert again for work already answered. ``durability`` is
    LangGraph's mode; ``sync`` (the default) saves each superstep before the next starts.

    The graph's state keeps only the last ``history_window`` steps (default
    :data:`~expertgraph.orchestrator._prompts.HISTORY_WINDOW`, or more when the policy or the
    aggregator declares a larger ``history_window``), so long runs stay flat in time and
    memory; ``RunResult.steps`` holds up to the last 1,000 steps, the trace every step.
    """

    def __init__(
        self,
        experts: Sequence[Expert],
        policy: Policy | None = None,
        aggregator: Aggregator | None = None,
        *,
        top_k: int = 1,
        budget: Budget | None = None,
        trace_dir: str | Path = ".expertgraph/traces",
        fsync: bool = False,
        trace_options: Mapping[str, Any] | None = None,
        defaults: Mapping[str, Any] | None = None,
        expert_params: Mapping[str, Mapping[str, Any]] | None = None,
        name: str = "default",
        config_snapshot: dict[str, Any] | None = None,
        tools: Sequence[ToolLike] = (),
        tool_timeout_s: float = DEFAULT_TOOL_TIMEOUT_S,
        checkpointer: Checkpointer | None = None,
        durability: Durability = "sync",
        history_window: int | None = None,
    ) -> None:
        if not experts:
            raise ConfigError("an orchestrator needs at least one expert", field="experts")
        names = [e.name for e in experts]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ConfigError(f"duplicate expert names: {duplicates}", field="experts")
        self.experts: dict[str, Expert] = {e.name: e for e in experts}
        if policy is None:
            from expertgraph.policies.routing.embedding import EmbeddingRouter

            policy = EmbeddingRouter()
        if aggregator is None:
            aggregator = policy.paired_aggregator
        if aggregator is None:
            from expertgraph.policies.aggregation.voting import MajorityVote

            aggregator = MajorityVote()
        self.policy = policy
        self.aggregator = aggregator
        self.top_k = top_k
        self.budget = budget or Budget()
        self.name = name
        # Absolute, so a trace path printed or stored stays valid whatever the cwd later is.
        trace_dir = Path(trace_dir).expanduser().resolve()
        # trace_options: TraceStore keywords (capture_content, redact, index, otel_endpoint...).
        self.trace_store = TraceStore(trace_dir, fsync=fsync, **dict(trace_options or {}))
        self.default_params: dict[str, Any] = check_call_params(
            defaults or {"max_tokens": 128, "temperature": 0}, "defaults"
        )
        self.expert_params = {
            k: check_call_params(v, f"expert_params[{k!r}]")
            for k, v in (expert_params or {}).items()
        }
        unknown = sorted(set(self.expert_params) - set(self.experts))
        if unknown:
            raise ConfigError(f"params given for unknown experts {unknown}", field="expert_params")
        if not tool_timeout_s > 0:
            raise ConfigError("tool_timeout_s must be > 0", field="tool_timeout_s")
        self.tools: dict[str, Tool] = as_tools(tools)
        self.tool_timeout_s = float(tool_timeout_s)
        if isinstance(checkpointer, (str, Path)) and not is_postgres(str(checkpointer)):
            # Absolute, like the trace directory: a later cwd must not move the checkpoints.
            checkpointer = Path(checkpointer).expanduser().resolve()
        self.checkpointer = checkpointer
        self.durability: Durability = durability
        self.config_snapshot = config_snapshot or {
            "experts": names,
            "policy": policy.name,
            "aggregator": aggregator.name,
            "top_k": top_k,
        }
        if history_window is not None and history_window < 1:
            raise ConfigError("history_window must be >= 1", field="history_window")
        self._graph = RunGraph(self, history_window)

    # ---- construction ----------------------------------------------------------------------

    @classmethod
    def from_config(
        cls,
        config: str | Path | ExpertGraphConfig,
        *,
        base_dir: str | Path | None = None,
        experts: Mapping[str, Expert] | None = None,
    ) -> Orchestrator:
        """Build from a YAML/TOML file or a parsed :class:`ExpertGraphConfig`.

        Relative paths in the config (trace dir, home) resolve against ``base_dir``, default
        the current working directory. ``experts`` are live experts to use instead of building
        the configured experts of the same names (several orchestrators over one set).
        """
        from expertgraph.orchestrator.config.build import build_from_config

        cfg = load_config(config) if isinstance(config, (str, Path)) else config
        base = Path(base_dir) if base_dir else None
        return build_from_config(cfg, cls, base_dir=base, experts=experts)

    # ---- running ---------------------------------------------------------------------------

    @property
    def graph(self) -> Any:
        """The compiled LangGraph graph; add it as a node of your own graph if you like."""
        return self._graph.compiled

    def as_task(self, task: TaskLike) -> Task:
        """Coerce a prompt or mapping to a :class:`Task`, applying the default budget."""
        if isinstance(task, str):
            task = Task(prompt=task)
        elif not isinstance(task, Task):
            task = Task.model_validate(dict(task))
        if "budget" not in task.model_fields_set:
            task = task.model_copy(update={"budget": self.budget})
        return task

    def _initial_state(
        self, task: Task, run_id: str | None, tools: Sequence[ToolLike] | None
    ) -> tuple[GraphState, dict[str, Any], RunRecorder]:
        ctx = self._graph.open_run(task, run_id, None if tools is None else as_tools(tools))
        state: GraphState = {
            "task": ctx.task,
            "run_id": ctx.run_id,
            "step_index": 0,
            "steps": [],
            "pinned": {},
            "acted": False,
            "usage": Usage(),
            "started_at": ctx.started_at,
            "answer": None,
            "stop_reason": None,
            "tool_results": [],
            "tool_calls": [],
        }
        config = {"recursion_limit": self._graph.recursion_limit(task)}
        return state, config, ctx

    def _result(
        self, state: Mapping[str, Any], started: float, recorder: RunRecorder | None
    ) -> RunResult:
        """The run's result; its steps are the recorder's (the last ``RESULT_STEPS``), or,
        for a run that had ended before a resume, read back from its trace."""
        run_id = state["run_id"]
        if recorder is not None:
            steps = list(recorder.steps)
        else:
            trace = load_run(self.trace_store.path_for(run_id))
            steps = list(deque(trace.iter_steps(), maxlen=RESULT_STEPS))
        return RunResult(
            run_id=run_id,
            task=state["task"],
            answer=state.get("answer"),
            steps=steps,
            usage=state.get("usage") or Usage(),
            stop_reason=state.get("stop_reason") or "",
            trace_path=str(self.trace_store.path_for(run_id)),
            latency_s=time.perf_counter() - started,
            tool_calls=list(state.get("tool_calls") or []),
        )

    @asynccontextmanager
    async def _start(
        self,
        task: TaskLike | None,
        run_id: str | None,
        tools: Sequence[ToolLike] | None,
        resume: bool,
    ) -> AsyncIterator[_Start]:
        """Open the run's checkpointer (if any) and prepare a new or a resumed run."""
        if not resume and task is None:
            raise ConfigError("a run needs a task (or resume=True with the run_id)", field="task")
        if resume and (self.checkpointer is None or not run_id):
            raise CheckpointError(
                "resuming needs a checkpointer (config: checkpoint) and the run_id"
                if self.checkpointer is None
                else "resuming needs the run_id of the run to continue"
            )
        # Inside a parent graph's node the parent's checkpointer saves the run (a subgraph).
        checkpointer = self.checkpointer if resume or not inside_a_graph() else None
        opened = nullcontext(None) if checkpointer is None else open_saver(checkpointer)
        async with opened as saver:
            graph = self.graph if saver is None else self._graph.with_checkpointer(saver)
            options = {} if saver is None else {"durability": self.durability}
            if resume:
                assert run_id is not None
                yield await self._resumed(graph, saver, task, run_id, tools, options)
                return
            task = self.as_task(task)  # type: ignore[arg-type]
            if saver is not None and run_id and await saver.aget_tuple(thread(run_id)):
                raise CheckpointError(
                    f"run {run_id!r} already has a checkpoint in {describe(self.checkpointer)}: "
                    "resume it (resume=True, expertgraph run --resume) or use a new run id"
                )
            state, config, recorder = self._initial_state(task, run_id, tools)
            if saver is not None:
                config.update(thread(state["run_id"]))
            yield _Start(
                graph,
                state,
                config,
                dict(state),
                state["run_id"],
                options=options,
                recorder=recorder,
            )

    async def _resumed(
        self,
        graph: Any,
        saver: Any,
        task: TaskLike | None,
        run_id: str,
        tools: Sequence[ToolLike] | None,
        options: dict[str, Any],
    ) -> _Start:
        config: dict[str, Any] = thread(run_id)
        snapshot = await graph.aget_state(config)
        state = dict(snapshot.values or {})
        if not state.get("run_id") and snapshot.next:
            # Killed right after its input was saved: the input is not in the state yet.
            saved = await saver.aget_tuple(config)
            state = dict(saved.checkpoint["channel_values"].get("__start__") or {})
        if not state.get("run_id"):
            raise CheckpointError(
                f"no checkpoint of run {run_id!r} in {describe(self.checkpointer)}"
            )
        if task is not None:
            given = self.as_task(task).model_dump(include={"prompt", "messages", "plan"})
            if given != state["task"].model_dump(include={"prompt", "messages", "plan"}):
                raise CheckpointError(f"run {run_id!r} was started with another task")
        config["recursion_limit"] = self._graph.recursion_limit(state["task"])
        if not snapshot.next:  # the run had ended: nothing to do again
            return _Start(graph, None, config, state, run_id, done=True, options=options)
        in_step = bool({"call", "aggregate"} & set(snapshot.next))
        tools_ = None if tools is None else as_tools(tools)
        recorder = self._graph.reopen_run(state, tools_, in_step=in_step)
        return _Start(graph, None, config, state, run_id, options=options, recorder=recorder)

    async def arun(
        self,
        task: TaskLike | None = None,
        *,
        run_id: str | None = None,
        tools: Sequence[ToolLike] | None = None,
        resume: bool = False,
    ) -> RunResult:
        """Run a task to the end and return its result; the trace is written as it goes.

        ``tools``: this run's tools instead of the orchestrator's. ``resume=True`` continues
        the checkpointed run ``run_id`` where it stopped (``task`` may then be omitted),
        appending to its trace; a run that had ended returns its result again.
        """
        started = time.perf_counter()
        async with self._start(task, run_id, tools, resume) as start:
            if start.done:
                return self._result(start.state, started, None)
            try:
                final = await start.graph.ainvoke(start.input, config=start.config, **start.options)
            except BaseException as exc:
                reason = f"error: {type(exc).__name__}: {exc}"
                self._graph.close_run({**start.state, "stop_reason": reason}, reason)
                raise
        return self._result(final, started, start.recorder)

    def run(
        self,
        task: TaskLike | None = None,
        *,
        run_id: str | None = None,
        tools: Sequence[ToolLike] | None = None,
        resume: bool = False,
    ) -> RunResult:
        """Synchronous :meth:`arun`; inside a running event loop it runs on a worker thread."""
        return run_sync(self.arun(task, run_id=run_id, tools=tools, resume=resume))

    async def astream(
        self,
        task: TaskLike | None = None,
        *,
        run_id: str | None = None,
        tools: Sequence[ToolLike] | None = None,
        resume: bool = False,
    ) -> AsyncIterator[RunEvent]:
        """Run a task, yielding an event as each node finishes and a final ``end`` event.

        ``resume=True`` continues the checkpointed run ``run_id`` (see :meth:`arun`).
        """
        started = time.perf_counter()
        async with self._start(task, run_id, tools, resume) as start:
            current = start.state
            if not start.done:
                try:
                    async for event in self._events(start, current):
                        yield event
                except BaseException as exc:
                    reason = f"error: {type(exc).__name__}: {exc}"
                    self._graph.close_run({**current, "stop_reason": reason}, reason)
                    raise
        result = self._result(current, started, None if start.done else start.recorder)
        yield RunEvent(
            node="end",
            run_id=result.run_id,
            step=current.get("step_index", 0),
            data={},
            result=result,
        )

    @staticmethod
    async def _events(start: _Start, current: dict[str, Any]) -> AsyncIterator[RunEvent]:
        """The graph's node updates as events, folded into ``current`` as they come."""
        stream = start.graph.astream(
            start.input, config=start.config, stream_mode="updates", **start.options
        )
        async for chunk in stream:
            for node, update in chunk.items():
                update = update or {}
                step = _fused_step(node, update)
                stop: dict[str, Any] | None = None
                if step is not None:  # a one-expert step done in its route node: two events
                    data = {"decision": step.decision, "instruction": step.instruction}
                    yield RunEvent(node="route", run_id=start.run_id, step=step.index, data=data)
                    node = "aggregate"
                    if update.get("stop_reason") is not None:  # and the run's end: a third
                        stop = {k: update[k] for k in _STOP_FIELDS}
                        update = {
                            k: v for k, v in update.items() if k not in ("stop_reason", "answer")
                        }
                current.update({k: v for k, v in update.items() if k != "candidates"})
                if "candidates" in update:  # the channel's reducer: append, None clears
                    added = update["candidates"]
                    current["candidates"] = (
                        [] if added is None else [*(current.get("candidates") or []), *added]
                    )
                yield RunEvent(
                    node=node,
                    run_id=start.run_id,
                    step=current.get("step_index", 0),
                    data=update,
                )
                if stop is not None:
                    current.update(stop)
                    step_index = current.get("step_index", 0)
                    yield RunEvent(node="route", run_id=start.run_id, step=step_index, data=stop)

    async def abatch(
        self,
        tasks: Iterable[BatchTask | TaskLike],
        *,
        concurrency: int = 8,
        out: str | Path | None = None,
        retry_failed: bool = False,
        on_result: Callable[[BatchResult], None] | None = None,
    ) -> BatchReport:
        """Run many tasks, at most ``concurrency`` at a time; a failed task is a result with its
        error. ``out``: a results JSONL that a re-run resumes from (ids already there are
        skipped, failed ones too unless ``retry_failed``)."""
        from expertgraph.orchestrator._batch import abatch

        return await abatch(
            self,
            tasks,
            concurrency=concurrency,
            out=out,
            retry_failed=retry_failed,
            on_result=on_result,
        )

    async def aload(self) -> dict[str, str | None]:
        """Load every expert now (one at a time: loads compete for CPU and memory).

        Returns expert name -> None when loaded, or the error message; a failure is not
        raised, the run will route around that expert.
        """
        status: dict[str, str | None] = {}
        for expert in self.experts.values():
            try:
                await expert.load()
                status[expert.name] = None
            except Exception as exc:  # noqa: BLE001 - reported, then routed around
                status[expert.name] = f"{type(exc).__name__}: {exc}"
        return status

    async def aclose(self) -> None:
        """Release every expert's resources and finish background trace work (index, export)."""
        await asyncio.gather(*(e.aclose() for e in self.experts.values()), return_exceptions=True)
        await asyncio.to_thread(self.trace_store.flush)
