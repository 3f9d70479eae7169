"""The run's recorder: every trace write and every expert call of a run goes through it.

One per run. It owns the run's trace writer, the health of each expert as the run saw it and
the run's spend. :meth:`RunRecorder.call` is the one path of an expert call, whoever makes
it (the graph's candidates, a router, a fuser, a judge): it checks the call against the cost
budget before making it, bounds it by the deadline, then counts it in health and spend and
writes its :class:`CallRecord`. :meth:`RunRecorder.act` is the one path of a tool call: it
runs the call within its timeout and the deadline and writes its :class:`ToolRecord`.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from expertgraph.core.protocols import BUDGET_REFUSED, CallRole, ExpertLike, refused
from expertgraph.core.state import ExpertHealth
from expertgraph.core.tools import ToolCall
from expertgraph.core.types import ExpertFailure, Generation, Message, Task, Usage
from expertgraph.orchestrator._budget import estimate_cost, fits, time_left
from expertgraph.orchestrator.tools import DEFAULT_TOOL_TIMEOUT_S, Tool, execute
from expertgraph.traces.schema import CallRecord, RunEnd, ToolRecord, TraceRecord
from expertgraph.traces.store import TraceWriter


@dataclass
class RunRecorder:
    """The per-run object that makes every trace write and every expert call of one run."""

    run_id: str
    task: Task
    writer: TraceWriter
    started_at: float = field(default_factory=time.time)
    tools: dict[str, Tool] = field(default_factory=dict)
    """The tools this run executes, by name (those of the task's offered tools it can run)."""
    tool_timeout_s: float = DEFAULT_TOOL_TIMEOUT_S
    """A tool call's timeout when its tool sets none."""
    health: dict[str, ExpertHealth] = field(default_factory=dict)
    """Expert name -> its calls and failures so far in this run (every role counts)."""
    usage: Usage = field(default_factory=Usage)
    """What the run spent so far: its calls, and what policies and aggregators reported
    spending beyond them (:meth:`count`)."""
    _steps: dict[int, Usage] = field(default_factory=dict, init=False, repr=False)
    _reserved: float = field(default=0.0, init=False, repr=False)
    """Estimated cost of the calls in flight, so concurrent calls cannot overrun the budget."""
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    # A blocking policy may call from a worker thread (its own loop): bookkeeping is locked.

    # ---- trace -----------------------------------------------------------------------------

    def write(self, record: TraceRecord) -> None:
        self.writer.write(record)

    def close(
        self,
        *,
        answer: str | None,
        stop_reason: str,
        steps: int,
        tool_calls: list[ToolCall] | None = None,
    ) -> None:
        """Write the run's end and close its trace."""
        self.write(
            RunEnd(
                run_id=self.run_id,
                answer=answer,
                stop_reason=stop_reason,
                usage=self.usage,
                steps=steps,
                latency_s=time.time() - self.started_at,
                tool_calls=list(tool_calls or []),
            )
        )
        self.writer.close()

    # ---- spend and health ------------------------------------------------------------------

    def health_of(self, expert: str) -> ExpertHealth:
        with self._lock:
            return self.health.setdefault(expert, ExpertHealth())

    def count(self, usage: Usage, step: int | None = None) -> None:
        """Add spend to the run, and to ``step``'s when it is part of a step's cost."""
        if not (usage.calls or usage.cost or usage.total_tokens):
            return
        with self._lock:
            self.usage = self.usage + usage
            if step is not None:
                self._steps[step] = self._steps.get(step, Usage()) + usage

    def step_usage(self, step: int) -> Usage:
        """What a step cost: its candidates and its aggregation (routing is the run's)."""
        with self._lock:
            return self._steps.get(step, Usage())

    # ---- the one call path -----------------------------------------------------------------

    async def call(
        self,
        expert: ExpertLike,
        messages: list[Message],
        *,
        role: CallRole,
        step: int,
        instruction: str,
        **params: Any,
    ) -> Generation:
        """Make one expert call of the run; a call the cost budget does not allow is refused.

        A refused call is not made, counted or written: it comes back as a generation whose
        error has type :data:`~expertgraph.core.protocols.BUDGET_REFUSED`.
        """
        estimate = estimate_cost(expert.card, messages, params)
        max_cost = self.task.budget.max_cost
        with self._lock:
            spent = self.usage.cost
            admitted = fits(max_cost, spent + self._reserved, estimate)
            if admitted:
                self._reserved += estimate
        if not admitted:
            message = (
                f"calling {expert.name} (estimated {estimate:.6g}) would exceed max_cost "
                f"{max_cost:g} (spent {spent:.6g})"
            )
            return Generation(
                expert=expert.name,
                sample=int(params.get("sample", 0)),
                attempts=0,
                error=ExpertFailure(type=BUDGET_REFUSED, message=message),
            )
        left = time_left(self.task, self.started_at)
        if left is not None:
            params["timeout"] = min(float(params.get("timeout", expert.card.timeout_s)), left)
        try:
            generation = await expert.generate(messages, **params)
        finally:
            with self._lock:
                self._reserved -= estimate
        health = self.health_of(expert.name)
        with self._lock:
            health.calls += 1
            if generation.error is not None:
                health.errors += 1
                health.last_error = generation.error.message
        # Routing is the run's cost; candidates and a fuser's or judge's calls are the step's.
        self.count(generation.usage, None if role == "router" else step)
        self.write(
            CallRecord(
                run_id=self.run_id,
                step=step,
                instruction=instruction,
                generation=generation,
                role=role,
            )
        )
        return generation

    # ---- the one tool path ------------------------------------------------------------------

    async def act(self, call: ToolCall, *, step: int, index: int) -> ToolRecord:
        """Execute one call of a step's chosen action and write its :class:`ToolRecord`.

        Never raises: an unknown tool, bad arguments, an exception or a timeout (the tool's,
        else the run's tool timeout, cut short by the deadline) become the result's text.
        """
        tool = self.tools.get(call.name)
        timeout = (tool.timeout_s if tool and tool.timeout_s else None) or self.tool_timeout_s
        left = time_left(self.task, self.started_at)
        if left is not None:
            timeout = min(timeout, left)
        result = await execute(call, tool, timeout, [s.name for s in self.task.tools or []])
        record = ToolRecord(
            run_id=self.run_id,
            step=step,
            index=index,
            call_id=call.id,
            name=call.name,
            arguments=dict(call.arguments),
            result=result.content,
            latency_s=result.latency_s,
            error=result.error,
        )
        self.write(record)
        return record

    def caller(self, step: int, instruction: str) -> PhaseCall:
        """The :class:`~expertgraph.core.protocols.ExpertCall` a policy or aggregator gets."""
        return PhaseCall(self, step, instruction)


@dataclass
class PhaseCall:
    """The run's expert call as one routing or aggregation phase gets it; sums its spend.

    The sum lets the graph count a policy's or aggregator's reported usage only beyond what
    its calls through here already counted.
    """

    recorder: RunRecorder
    step: int
    instruction: str
    usage: Usage = field(default_factory=Usage)

    async def __call__(
        self, expert: ExpertLike, messages: list[Message], /, *, role: CallRole, **params: Any
    ) -> Generation:
        if role == "candidate":
            # A step's candidates are the graph's calls (ask with StepResult.more): a trace
            # rebuilds a step from them, so nothing else may add one.
            raise ValueError("candidate calls are made by the graph; use role router/fuser/judge")
        generation = await self.recorder.call(
            expert, messages, role=role, step=self.step, instruction=self.instruction, **params
        )
        if not refused(generation):
            self.usage = self.usage + generation.usage
        return generation
