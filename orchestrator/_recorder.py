"""The run's recorder: every trace write and every expert call of a run goes through it.

One per run. It owns the run's trace writer, the health of each expert as the run saw it and
the run's spend. :meth:`RunRecorder.call` is the one path of an expert call, whoever makes
it (the graph's candidates, a router, a fuser, a judge), so it is the one place of the hard
cost ceiling and of the process-wide cooldowns: it skips an expert that is cooling down
(:mod:`expertgraph.core.health`), admits the call only when its worst case fits the budget
left (lowering ``max_tokens`` to fit, else skipping it), bounds it by the deadline, then
counts it in health and spend, stops the run after an upstream that reported more than the
worst case, and writes its :class:`CallRecord`. :meth:`RunRecorder.act` is the one path of a
tool call: it runs the call within its timeout and the deadline and writes its
:class:`ToolRecord`.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from expertgraph.core.health import COOLING, HEALTH
from expertgraph.core.protocols import BUDGET_REFUSED, CallRole, ExpertLike, refused
from expertgraph.core.state import ExpertHealth, RoutingState
from expertgraph.core.tools import ToolCall
from expertgraph.core.types import (
    Decision,
    ExpertFailure,
    Generation,
    Message,
    Step,
    Task,
    Usage,
)
from expertgraph.orchestrator._budget import (
    MIN_FIT_TOKENS,
    fit_tokens,
    fits,
    max_tokens_of,
    time_left,
)
from expertgraph.orchestrator.tools import DEFAULT_TOOL_TIMEOUT_S, Tool, execute
from expertgraph.traces.schema import CallRecord, RunEnd, ToolRecord, TraceRecord
from expertgraph.traces.store import TraceWriter

RESULT_STEPS = 1000
"""``RunResult.steps`` holds a run's steps up to this many, else its last this many: a longer
run's steps are read back from its trace (``load_run(path).iter_steps()``)."""


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
    experts: Mapping[str, ExpertLike] = field(default_factory=dict)
    """The run's experts by name: their process-wide health joins the run's (health_of)."""
    overrun: str | None = None
    """Set when an upstream reported more usage than its call's worst case: the run makes no
    further call and stops with this as its reason (``budget_overrun: ...``)."""
    decided: tuple[int, Decision, RoutingState] | None = None
    """The next step's decision, made at the end of the step before (a one-expert step
    decides its successor in the same node); its route node takes it instead of asking the
    policy again."""
    steps: deque[Step] = field(default_factory=lambda: deque(maxlen=RESULT_STEPS))
    """The run's last :data:`RESULT_STEPS` steps, for ``RunResult.steps`` (the graph's state
    keeps only its history window; every step is in the trace)."""
    named: frozenset[int] | None = None
    """The steps the plan's instructions name as ``{stepN}`` (computed once, when needed)."""
    recovered: dict[int, list[Generation]] = field(default_factory=dict)
    """Step -> candidates a resumed run found in its trace but not in its checkpoint (extra
    draws finished before the kill): the step's aggregation counts them, not draws them again."""
    _steps: dict[int, Usage] = field(default_factory=dict, init=False, repr=False)
    _reserved: float = field(default=0.0, init=False, repr=False)
    """Worst-case cost of the calls in flight, so concurrent calls cannot overrun the budget."""
    _loaded: set[str] = field(default_factory=set, init=False, repr=False)
    _notes: dict[int, list[str]] = field(default_factory=dict, init=False, repr=False)
    """Step -> what the cost ceiling did to its calls (lowered, skipped), for its records."""
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    # A blocking policy may call from a worker thread (its own loop): bookkeeping is locked.

    # ---- resume (a run reopened from its checkpoint) ----------------------------------------

    @classmethod
    def reopen(
        cls,
        records: Iterable[TraceRecord],
        *,
        run_id: str,
        task: Task,
        writer: TraceWriter,
        **kw: Any,
    ) -> RunRecorder:
        """A resumed run's recorder: spend, each step's spend and health rebuilt from the calls
        its trace records (every call made is paid, also one made again after a kill), plus
        what routing and aggregation reported beyond their calls (:func:`uncounted`)."""
        from expertgraph.orchestrator._budget import uncounted
        from expertgraph.traces.schema import AggregateRecord, RouteRecord

        recorder = cls(run_id=run_id, task=task, writer=writer, **kw)
        own: dict[tuple[str, int], Usage] = {}  # (phase, step) -> what its calls cost
        reported: dict[tuple[str, int], Usage] = {}  # (phase, step) -> what the phase reported
        latest = 0

        def settle(before: int) -> None:
            # A phase's records all come within its step (a resume repeats only the step in
            # progress), so the phases of steps well behind the latest are final: counted
            # and dropped, and a million-step trace replays in bounded memory.
            for key in [k for k in reported if k[1] < before]:
                phase, step = key
                extra = uncounted(reported.pop(key), own.pop(key, Usage()))
                recorder.count(extra, None if phase == "route" else step)
            for key in [k for k in own if k[1] < before]:
                del own[key]

        for record in records:
            step_of = getattr(record, "step", None)
            if isinstance(step_of, int) and step_of > latest + 8:
                latest = step_of
                settle(latest - 4)
            if isinstance(record, CallRecord) and not refused(record.generation):
                generation = record.generation
                recorder._count_health(generation.expert, generation)
                step = None if record.role == "router" else record.step
                recorder.count(generation.usage, step)
                if record.role != "candidate":
                    key = ("route" if step is None else "aggregate", record.step)
                    own[key] = own.get(key, Usage()) + generation.usage
            elif isinstance(record, RouteRecord):
                reported[("route", record.step)] = record.decision.usage
            elif isinstance(record, AggregateRecord):
                reported[("aggregate", record.step)] = record.result.usage
        settle(sys.maxsize)  # the rest
        max_cost = task.budget.max_cost
        if max_cost is not None and recorder.usage.cost > max_cost:
            # Over the ceiling already (the overrun that stopped it, before it was killed).
            recorder.overrun = (
                f"budget_overrun: the run had spent {recorder.usage.cost:.6g}, over max_cost "
                f"{max_cost:g}, when it was resumed"
            )
        return recorder

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
        """This run's health of an expert, with its process-wide cooldown as of now."""
        live = self.experts.get(expert)
        cooling = HEALTH.blocked_for(live) if live is not None else None
        with self._lock:
            health = self.health.setdefault(expert, ExpertHealth())
            health.cooling_s = cooling
            return health

    def take_notes(self, step: int) -> list[str]:
        """What the cost ceiling did to ``step``'s calls since last asked (for its record)."""
        with self._lock:
            return self._notes.pop(step, [])

    def _note(self, step: int, note: str) -> None:
        with self._lock:
            self._notes.setdefault(step, []).append(note)

    def count(self, usage: Usage, step: int | None = None) -> None:
        """Add spend to the run, and to ``step``'s when it is part of a step's cost."""
        if not (usage.calls or usage.cost or usage.total_tokens):
            return
        with self._lock:
            self.usage = self.usage + usage
            if step is not None:
                self._steps[step] = self._steps.get(step, Usage()) + usage

    def forget_before(self, step: int) -> None:
        """Drop the spend of steps before ``step`` (a resumed run's finished steps)."""
        with self._lock:
            for index in [i for i in self._steps if i < step]:
                del self._steps[index]

    def end_step(self, step: int) -> Usage:
        """What a step cost (its candidates and its aggregation; routing is the run's), once
        it is over: forgotten here, so the recorder does not grow with the run."""
        with self._lock:
            return self._steps.pop(step, Usage())

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
        """Make one expert call of the run, within the process's cooldowns and the cost ceiling.

        An expert cooling down is not called: the call comes back (and is written) as a
        failure of type :data:`~expertgraph.core.health.COOLING` with no attempt. A call whose
        worst case does not fit the budget left gets ``max_tokens`` lowered to fit, or, when
        not even :data:`~expertgraph.orchestrator._budget.MIN_FIT_TOKENS` fit, is refused:
        not made, counted or written (the step's records note it), it comes back as a
        generation whose error has type :data:`~expertgraph.core.protocols.BUDGET_REFUSED`.
        """
        sample = int(params.get("sample", 0))
        if self.overrun is not None:
            return _not_made(expert.name, sample, BUDGET_REFUSED, f"not called: {self.overrun}")
        ticket = HEALTH.begin(expert)
        if ticket.refused is not None:
            generation = _not_made(
                expert.name, sample, COOLING, f"{expert.name} not called: {ticket.refused}"
            )
            self._count_health(expert.name, generation)  # as a replay of the trace counts it
            self._write_call(step, instruction, generation, role)
            return generation
        max_cost = self.task.budget.max_cost
        estimate = 0.0
        if max_cost is not None:
            admitted = await self._admit(expert, messages, params, step, max_cost)
            if isinstance(admitted, str):
                HEALTH.cancel(expert, ticket)
                self._note(step, admitted)
                return _not_made(expert.name, sample, BUDGET_REFUSED, admitted)
            estimate = admitted
        left = time_left(self.task, self.started_at)
        if left is not None:
            params["timeout"] = min(float(params.get("timeout", expert.card.timeout_s)), left)
        try:
            generation = await expert.generate(messages, **params)
        except BaseException:
            HEALTH.cancel(expert, ticket)  # cancelled: neither a success nor a failure
            raise
        finally:
            with self._lock:
                self._reserved -= estimate
        HEALTH.end(expert, ticket, generation.error)
        self._count_health(expert.name, generation)
        # Routing is the run's cost; candidates and a fuser's or judge's calls are the step's.
        self.count(generation.usage, None if role == "router" else step)
        if max_cost is not None and generation.cost > estimate * (1 + 1e-9) + 1e-12:
            self.overrun = (
                f"budget_overrun: {expert.name} reported usage costing {generation.cost:.6g} "
                f"({generation.input_tokens} tokens in, {generation.output_tokens} out), more "
                f"than its worst case {estimate:.6g}; spent {self.usage.cost:.6g} of max_cost "
                f"{max_cost:g}"
            )
        self._write_call(step, instruction, generation, role)
        return generation

    def _write_call(
        self, step: int, instruction: str, generation: Generation, role: CallRole
    ) -> None:
        self.write(
            CallRecord.built(  # from valid objects: no validation on the hot path
                run_id=self.run_id,
                step=step,
                instruction=instruction,
                generation=generation,
                role=role,
            )
        )

    def _count_health(self, name: str, generation: Generation) -> None:
        health = self.health_of(name)
        with self._lock:
            health.calls += 1
            if generation.error is not None:
                health.errors += 1
                health.last_error = generation.error.message

    async def _admit(
        self,
        expert: ExpertLike,
        messages: list[Message],
        params: dict[str, Any],
        step: int,
        max_cost: float,
    ) -> float | str:
        """Reserve the call's worst case in the budget left, lowering ``params["max_tokens"]``
        so that it fits; the reserved cost, or why the call is refused."""
        load = getattr(expert, "load", None)
        if load is not None and expert.name not in self._loaded:
            # The worst case needs what loading brings (LiteLLM's price map, the tokenizer);
            # a load that fails is the call's failure, reported by generate.
            with contextlib.suppress(Exception):
                await load()
            self._loaded.add(expert.name)
        limit = max_tokens_of(expert, params)
        for _ in range(3):  # calls in flight may reserve between the fit and the check
            with self._lock:
                spent, reserved = self.usage.cost, self._reserved
            try:
                tokens, cost = fit_tokens(expert, messages, params, max_cost - spent - reserved)
            except Exception as exc:  # noqa: BLE001 - an unpriceable call is not made
                return f"{expert.name}: cannot price the call's worst case: {exc}"
            if tokens is None:
                return (
                    f"calling {expert.name} (estimated {cost:.6g} at its worst, with "
                    f"{min(limit, MIN_FIT_TOKENS)} output tokens) would exceed max_cost "
                    f"{max_cost:g} (spent {spent:.6g}, {reserved:.6g} reserved by calls in flight)"
                )
            with self._lock:
                if fits(max_cost, self.usage.cost + self._reserved, cost):
                    self._reserved += cost
                    break
        else:
            return f"calling {expert.name}: calls in flight reserved the budget left"
        params["max_tokens"] = tokens
        if tokens < limit:
            self._note(
                step,
                f"{expert.name}: max_tokens lowered from {limit} to {tokens} so that its worst "
                f"case ({cost:.6g}) fits max_cost {max_cost:g} (spent {spent:.6g})",
            )
        return cost

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


def _not_made(expert: str, sample: int, kind: str, message: str) -> Generation:
    return Generation(
        expert=expert,
        sample=sample,
        attempts=0,
        error=ExpertFailure(type=kind, message=message),
    )


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
