"""The public entry point: an orchestrator built from experts and a policy, or from a config
file.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from expertgraph.agents.base import Expert
from expertgraph.core import Aggregator, Policy
from expertgraph.core._sync import run_sync
from expertgraph.core.errors import ConfigError
from expertgraph.core.types import Budget, RunResult, Task, Usage
from expertgraph.orchestrator.config.schema import ExpertGraphConfig, load_config
from expertgraph.orchestrator.graph import GraphState, RunGraph
from expertgraph.orchestrator.tools import DEFAULT_TOOL_TIMEOUT_S, Tool, as_tools
from expertgraph.traces.store import TraceStore

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
        self.default_params: dict[str, Any] = dict(
            defaults or {"max_tokens": 128, "temperature": 0}
        )
        self.expert_params = {k: dict(v) for k, v in (expert_params or {}).items()}
        unknown = sorted(set(self.expert_params) - set(self.experts))
        if unknown:
            raise ConfigError(f"params given for unknown experts {unknown}", field="expert_params")
        if not tool_timeout_s > 0:
            raise ConfigError("tool_timeout_s must be > 0", field="tool_timeout_s")
        self.tools: dict[str, Tool] = as_tools(tools)
        self.tool_timeout_s = float(tool_timeout_s)
        self.config_snapshot = config_snapshot or {
            "experts": names,
            "policy": policy.name,
            "aggregator": aggregator.name,
            "top_k": top_k,
        }
        self._graph = RunGraph(self)

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
    ) -> tuple[GraphState, dict[str, Any]]:
        ctx = self._graph.open_run(task, run_id, None if tools is None else as_tools(tools))
        state: GraphState = {
            "task": ctx.task,
            "run_id": ctx.run_id,
            "step_index": 0,
            "steps": [],
            "usage": Usage(),
            "round": 0,
            "started_at": ctx.started_at,
            "answer": None,
            "stop_reason": None,
            "tool_results": [],
            "tool_calls": [],
        }
        config = {"recursion_limit": self._graph.recursion_limit(task)}
        return state, config

    def _result(self, state: Mapping[str, Any], started: float) -> RunResult:
        run_id = state["run_id"]
        return RunResult(
            run_id=run_id,
            task=state["task"],
            answer=state.get("answer"),
            steps=list(state.get("steps") or []),
            usage=state.get("usage") or Usage(),
            stop_reason=state.get("stop_reason") or "",
            trace_path=str(self.trace_store.path_for(run_id)),
            latency_s=time.perf_counter() - started,
            tool_calls=list(state.get("tool_calls") or []),
        )

    async def arun(
        self,
        task: TaskLike,
        *,
        run_id: str | None = None,
        tools: Sequence[ToolLike] | None = None,
    ) -> RunResult:
        """Run a task to the end and return its result; the trace is written as it goes.

        ``tools``: this run's tools instead of the orchestrator's.
        """
        task = self.as_task(task)
        started = time.perf_counter()
        state, config = self._initial_state(task, run_id, tools)
        try:
            final = await self.graph.ainvoke(state, config=config)
        except BaseException as exc:
            reason = f"error: {type(exc).__name__}: {exc}"
            self._graph.close_run({**state, "stop_reason": reason}, reason)
            raise
        return self._result(final, started)

    def run(
        self,
        task: TaskLike,
        *,
        run_id: str | None = None,
        tools: Sequence[ToolLike] | None = None,
    ) -> RunResult:
        """Synchronous :meth:`arun`; inside a running event loop it runs on a worker thread."""
        return run_sync(self.arun(task, run_id=run_id, tools=tools))

    async def astream(
        self,
        task: TaskLike,
        *,
        run_id: str | None = None,
        tools: Sequence[ToolLike] | None = None,
    ) -> AsyncIterator[RunEvent]:
        """Run a task, yielding an event as each node finishes and a final ``end`` event."""
        task = self.as_task(task)
        started = time.perf_counter()
        state, config = self._initial_state(task, run_id, tools)
        current: dict[str, Any] = dict(state)
        try:
            async for chunk in self.graph.astream(state, config=config, stream_mode="updates"):
                for node, update in chunk.items():
                    update = update or {}
                    if node == "call":
                        current["candidates"] = [
                            *(current.get("candidates") or []),
                            *update.get("candidates", []),
                        ]
                    else:
                        current.update({k: v for k, v in update.items() if k != "candidates"})
                        if "candidates" in update and update["candidates"] is None:
                            current["candidates"] = []
                    yield RunEvent(
                        node=node,
                        run_id=state["run_id"],
                        step=current.get("step_index", 0),
                        data=update,
                    )
        except BaseException as exc:
            reason = f"error: {type(exc).__name__}: {exc}"
            self._graph.close_run({**current, "stop_reason": reason}, reason)
            raise
        result = self._result(current, started)
        yield RunEvent(
            node="end", run_id=result.run_id, step=len(result.steps), data={}, result=result
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
