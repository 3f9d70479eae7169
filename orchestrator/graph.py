"""The LangGraph state machine: route -> dispatch (Send fan-out) -> aggregate -> route ... -> END."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, TypedDict

from expertgraph.agents.base import Expert
from expertgraph.core import AggregationContext, ExpertHealth, ExpertView, RoutingState
from expertgraph.core.types import (
    Decision,
    Generation,
    Message,
    PlanStep,
    SampleRequest,
    Step,
    StepResult,
    Task,
    Usage,
)
from expertgraph.orchestrator._prompts import build_messages
from expertgraph.traces.schema import (
    AggregateRecord,
    CallRecord,
    ExpertInfo,
    RouteRecord,
    RunEnd,
    RunStart,
    StepEnd,
)
from expertgraph.traces.store import TraceWriter, new_run_id
from langgraph.graph import END, START, StateGraph
from langgraph.types import Send

if TYPE_CHECKING:
    from expertgraph.orchestrator.orchestrator import Orchestrator


def _merge_candidates(left: list[Generation] | None, right: list[Generation] | None) -> list[Generation]:
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
    plan_step: PlanStep | None
    calls: list[CallPlan]
    candidates: Annotated[list[Generation], _merge_candidates]
    round: int
    step_notes: list[str]
    usage: Usage
    answer: str | None
    stop_reason: str | None
    started_at: float


@dataclass
class RunContext:
    """Per-run objects that do not belong in graph state: the trace writer and health."""

    run_id: str
    writer: TraceWriter
    started_at: float
    health: dict[str, ExpertHealth] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)


def _estimate_tokens(messages: list[Message]) -> int:
    # About four characters a token for English; only used to stay inside a cost budget.
    return sum(len(m.content) for m in messages) // 4 + 4 * len(messages)


class RunGraph:
    """Builds and runs the graph for an :class:`Orchestrator`."""

    def __init__(self, orch: Orchestrator) -> None:
        self.orch = orch
        # Live runs by id. Entries are created on the first route of a run and removed when
        # the run ends, so the compiled graph can also run as a subgraph of a user's graph.
        self._runs: dict[str, RunContext] = {}
        self.compiled = self._build()

    # ---- graph ---------------------------------------------------------------------------

    def _build(self) -> Any:
        graph = StateGraph(GraphState)
        graph.add_node("route", self._route)
        graph.add_node("call", self._call)
        graph.add_node("aggregate", self._aggregate)
        graph.add_edge(START, "route")
        graph.add_conditional_edges("route", self._after_route, ["call", END])
        graph.add_edge("call", "aggregate")
        graph.add_conditional_edges("aggregate", self._after_aggregate, ["call", "route"])
        return graph.compile()

    def recursion_limit(self, task: Task) -> int:
        budget = task.budget
        per_step = 3 + 2 * budget.max_calls_per_step
        return task.max_steps * per_step + 10

    # ---- run context ---------------------------------------------------------------------

    def open_run(self, task: Task, run_id: str | None = None) -> RunContext:
        run_id = run_id or new_run_id()
        writer = self.orch.trace_store.writer(run_id)
        ctx = RunContext(run_id=run_id, writer=writer, started_at=time.time())
        self._runs[run_id] = ctx
        writer.write(
            RunStart(
                run_id=run_id,
                task=task,
                experts=[
                    ExpertInfo(
                        name=e.name,
                        kind=e.kind,
                        card=e.card,
                        model=getattr(e, "model_name", None),
                    )
                    for e in self.orch.experts.values()
                ],
                policy=self.orch.policy.name,
                aggregator=self.orch.aggregator.name,
                config=self.orch.config_snapshot,
            )
        )
        return ctx

    def context(self, run_id: str) -> RunContext:
        return self._runs[run_id]

    def close_run(self, state: Mapping[str, Any], stop_reason: str) -> None:
        ctx = self._runs.pop(state["run_id"], None)
        if ctx is None:
            return
        ctx.writer.write(
            RunEnd(
                run_id=ctx.run_id,
                answer=state.get("answer"),
                stop_reason=stop_reason,
                usage=state.get("usage") or Usage(),
                steps=len(state.get("steps") or []),
                latency_s=time.time() - ctx.started_at,
            )
        )
        ctx.writer.close()

    # ---- nodes ---------------------------------------------------------------------------

    def _views(self, ctx: RunContext) -> list[ExpertView]:
        return [
            ExpertView(
                name=e.name,
                card=e.card,
                kind=e.kind,
                health=ctx.health.setdefault(e.name, ExpertHealth()),
            )
            for e in self.orch.experts.values()
        ]

    def _stop(self, state: GraphState, reason: str, answer: str | None = None) -> dict[str, Any]:
        if answer is None:
            answer = state.get("answer")
            steps = state.get("steps") or []
            if answer is None and steps and steps[-1].result is not None:
                answer = steps[-1].result.text or steps[-1].result.answer
        return {"stop_reason": reason, "answer": answer, "decision": None, "calls": []}

    async def _route(self, state: GraphState) -> dict[str, Any]:
        task = state["task"]
        update: dict[str, Any] = {}
        if not state.get("run_id") or state["run_id"] not in self._runs:
            # A run started from a parent graph: always a new id, since a run_id the parent
            # kept from an earlier invocation names a finished trace that must not grow.
            ctx = self.open_run(task)
            update.update(
                run_id=ctx.run_id,
                step_index=0,
                steps=[],
                usage=Usage(),
                round=0,
                started_at=ctx.started_at,
                answer=None,
                stop_reason=None,
            )
            state = {**state, **update}  # type: ignore[typeddict-item]
        ctx = self._runs[state["run_id"]]
        budget = task.budget
        steps = state.get("steps") or []
        index = state.get("step_index", 0)
        spent = state.get("usage") or Usage()

        if task.plan is not None and index >= len(task.plan):
            return {**update, **self._stop(state, "plan complete")}
        if index >= task.max_steps:
            return {**update, **self._stop(state, f"max_steps reached ({task.max_steps})")}
        if budget.deadline_s is not None and time.time() - ctx.started_at >= budget.deadline_s:
            return {**update, **self._stop(state, f"deadline reached ({budget.deadline_s:g}s)")}

        plan_step = task.plan[index] if task.plan is not None else None
        routing_state = RoutingState(
            task=task,
            step_index=index,
            experts=self._views(ctx),
            steps=steps,
            plan_step=plan_step,
            top_k=self.orch.top_k,
            spent=spent,
        )
        try:
            decision = await self.orch.policy.adecide(routing_state)
        except Exception as exc:  # noqa: BLE001 - a broken policy stops the run, cleanly
            reason = f"policy {self.orch.policy.name!r} failed: {type(exc).__name__}: {exc}"
            decision = Decision(action="finish", policy=self.orch.policy.name, rationale=reason)
            ctx.writer.write(RouteRecord(run_id=ctx.run_id, step=index, decision=decision))
            return {**update, **self._stop(state, reason)}

        if decision.usage.calls or decision.usage.cost:
            # An LLM router's own call is part of the run's spend and budget.
            spent = spent + decision.usage
            update["usage"] = spent
        if decision.action == "finish":
            ctx.writer.write(RouteRecord(run_id=ctx.run_id, step=index, decision=decision))
            return {**update, **self._stop(state, f"policy finished: {decision.rationale}", decision.answer)}

        instruction = decision.instruction or (plan_step.instruction if plan_step else task.text)
        decision = self._checked_decision(decision, instruction, routing_state)
        messages = build_messages(task, steps, instruction)
        chosen, dropped = self._fit_cost(decision.experts, messages, spent, task)
        if dropped:
            decision.meta["dropped_for_cost"] = dropped
        if not chosen:
            decision = decision.model_copy(update={"instruction": instruction})
            ctx.writer.write(RouteRecord(run_id=ctx.run_id, step=index, decision=decision))
            reason = (
                f"cost budget: calling {', '.join(dropped)} would exceed max_cost "
                f"{budget.max_cost:g} (spent {spent.cost:.6g})"
            )
            return {**update, **self._stop(state, reason)}
        decision = decision.model_copy(update={"instruction": instruction, "experts": chosen})
        ctx.writer.write(RouteRecord(run_id=ctx.run_id, step=index, decision=decision))
        return {
            **update,
            "decision": decision,
            "instruction": instruction,
            "messages": messages,
            "plan_step": plan_step,
            "calls": [CallPlan(expert=name, sample=0, params={}) for name in chosen],
            "candidates": None,
            "round": 0,
            "step_notes": [],
        }

    def _checked_decision(
        self, decision: Decision, instruction: str, state: RoutingState
    ) -> Decision:
        """Drop experts the policy named that are unknown or not allowed, and say so."""
        allowed = {v.name for v in state.candidates}
        known = [n for n in decision.experts if n in allowed]
        unknown = [n for n in decision.experts if n not in allowed]
        if unknown:
            decision.meta["ignored_experts"] = unknown
        if not known:
            ranked = sorted(allowed, key=lambda n: decision.scores.get(n, -math.inf), reverse=True)
            known = ranked[:1]
            decision.meta["fallback"] = f"policy chose no usable expert; using {known}"
        return decision.model_copy(update={"experts": known})

    def _fit_cost(
        self, experts: list[str], messages: list[Message], spent: Usage, task: Task
    ) -> tuple[list[str], list[str]]:
        """Keep experts in order while their estimated cost fits the budget; drop the rest."""
        max_cost = task.budget.max_cost
        if max_cost is None:
            return list(experts), []
        input_tokens = _estimate_tokens(messages)
        max_tokens = int(task.params.get("max_tokens", self.orch.default_params.get("max_tokens", 256)))
        total = spent.cost
        chosen: list[str] = []
        dropped: list[str] = []
        for name in experts:
            est = self.orch.experts[name].card.estimate_cost(input_tokens, max_tokens)
            if total + est <= max_cost + 1e-12:
                chosen.append(name)
                total += est
            else:
                dropped.append(name)
        return chosen, dropped

    async def _after_route(self, state: GraphState) -> Any:
        # async: LangGraph runs a sync path function in a thread pool, ~1 ms a hop under load
        if state.get("stop_reason") is not None:
            # Cheap: one record and a close; the store indexes and exports in the background.
            self.close_run(state, state["stop_reason"] or "")
            return END
        return self._sends(state)

    def _sends(self, state: GraphState) -> list[Send]:
        messages = state["messages"]
        return [
            Send(
                "call",
                {
                    "run_id": state["run_id"],
                    "step_index": state["step_index"],
                    "instruction": state["instruction"],
                    "messages": messages,
                    "call": call,
                    "task_params": state["task"].params,
                    "deadline_left": self._time_left(state),
                },
            )
            for call in state["calls"]
        ]

    def _time_left(self, state: GraphState) -> float | None:
        deadline = state["task"].budget.deadline_s
        if deadline is None:
            return None
        return max(0.001, deadline - (time.time() - state["started_at"]))

    async def _call(self, payload: dict[str, Any]) -> dict[str, Any]:
        ctx = self._runs[payload["run_id"]]
        call: CallPlan = payload["call"]
        expert: Expert = self.orch.experts[call["expert"]]
        params = {
            **self.orch.default_params,
            **self.orch.expert_params.get(expert.name, {}),
            **payload.get("task_params", {}),
            **call["params"],
        }
        timeout = expert.card.timeout_s
        if payload["deadline_left"] is not None:
            timeout = min(timeout, payload["deadline_left"])
        generation = await expert.generate(
            payload["messages"], sample=call["sample"], timeout=timeout, **params
        )
        health = ctx.health.setdefault(expert.name, ExpertHealth())
        health.calls += 1
        if generation.error is not None:
            health.errors += 1
            health.last_error = generation.error.message
        ctx.writer.write(
            CallRecord(
                run_id=ctx.run_id,
                step=payload["step_index"],
                instruction=payload["instruction"],
                generation=generation,
            )
        )
        return {"candidates": [generation]}

    async def _aggregate(self, state: GraphState) -> dict[str, Any]:
        ctx = self._runs[state["run_id"]]
        task = state["task"]
        decision = state["decision"]
        assert decision is not None
        candidates = state.get("candidates") or []
        plan_step = state.get("plan_step")
        answer_format = (plan_step.answer_format if plan_step and plan_step.answer_format else task.answer_format)
        order = sorted(decision.scores, key=lambda n: decision.scores[n], reverse=True)
        spent = (state.get("usage") or Usage()) + sum((g.usage for g in candidates), Usage())
        calls_left = self._calls_left(task, candidates, spent, state)
        context = AggregationContext(
            task=task,
            instruction=state["instruction"],
            answer_format=answer_format,
            scores=dict(decision.scores),
            order=order,
            calls_left=calls_left,
            round=state.get("round", 0),
        )
        try:
            result = await self.orch.aggregator.acombine(candidates, context)
        except Exception as exc:  # noqa: BLE001 - a broken aggregator fails the step, not the run
            result = StepResult(
                aggregator=self.orch.aggregator.name,
                stop_reason=f"aggregator failed: {type(exc).__name__}: {exc}",
            )
        more = result.more
        if more is None and result.answer is None and not result.text:
            more = self._fallback_request(candidates, order, plan_step, ctx)
        if more is not None:
            extra = self._extra_calls(more, candidates, calls_left, spent, task, state)
            if extra:
                return {
                    "step_notes": [*(state.get("step_notes") or []), more.reason],
                    "calls": extra,
                    "round": state.get("round", 0) + 1,
                    "candidates": [],
                }
            result = result.model_copy(
                update={"more": None, "stop_reason": (result.stop_reason + "; no budget for more samples").lstrip("; ")}
            )
        result = result.model_copy(update={"more": None})
        if state.get("step_notes"):
            result.meta["requests"] = list(state["step_notes"])
        result.extra_calls = max(result.extra_calls, len(candidates) - len(decision.experts))
        step_usage = sum((g.usage for g in candidates), result.usage)
        step = Step(
            index=state["step_index"],
            instruction=state["instruction"],
            decision=decision,
            generations=list(candidates),
            result=result,
            usage=step_usage,
        )
        ctx.writer.write(AggregateRecord(run_id=ctx.run_id, step=step.index, result=result))
        ctx.writer.write(
            StepEnd(
                run_id=ctx.run_id,
                step=step.index,
                instruction=step.instruction,
                answer=result.answer if result.answer is not None else (result.text or None),
                usage=step_usage,
            )
        )
        return {
            "steps": [*(state.get("steps") or []), step],
            "step_index": state["step_index"] + 1,
            "usage": (state.get("usage") or Usage()) + step_usage,
            "calls": [],
            "round": 0,
        }

    def _calls_left(
        self, task: Task, candidates: list[Generation], spent: Usage, state: GraphState
    ) -> int:
        left = task.budget.max_calls_per_step - len(candidates)
        if task.budget.deadline_s is not None and self._time_left(state) <= 0.001:
            return 0
        return max(0, left)

    def _fallback_request(
        self,
        candidates: list[Generation],
        order: list[str],
        plan_step: PlanStep | None,
        ctx: RunContext,
    ) -> SampleRequest | None:
        """No usable answer: route around the failed experts to the next one in the router's order."""
        tried = {g.expert for g in candidates}
        allowed = set(plan_step.experts) if plan_step and plan_step.experts else set(self.orch.experts)
        for name in [*order, *self.orch.experts]:
            if name in tried or name not in allowed or name not in self.orch.experts:
                continue
            health = ctx.health.get(name)
            if health and health.calls and health.errors == health.calls:
                continue
            failed = ", ".join(sorted(tried))
            return SampleRequest(
                experts=[name], reason=f"no usable answer from {failed}; routing around to {name}"
            )
        return None

    def _extra_calls(
        self,
        more: SampleRequest,
        candidates: list[Generation],
        calls_left: int,
        spent: Usage,
        task: Task,
        state: GraphState,
    ) -> list[CallPlan]:
        next_sample: dict[str, int] = {}
        for g in candidates:
            next_sample[g.expert] = max(next_sample.get(g.expert, 0), g.sample + 1)
        names = [n for n in more.experts if n in self.orch.experts][:calls_left]
        fitting, _ = self._fit_cost(names, state["messages"], spent, task)
        plans: list[CallPlan] = []
        for name in fitting:
            sample = next_sample.get(name, 0)
            next_sample[name] = sample + 1
            plans.append(CallPlan(expert=name, sample=sample, params=dict(more.params)))
        return plans

    async def _after_aggregate(self, state: GraphState) -> Any:
        if state.get("round", 0) > 0 and state.get("calls"):
            return self._sends(state)
        return "route"

