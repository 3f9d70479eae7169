"""What the graph's nodes do: route a step, make one candidate call, aggregate the candidates,
act on the chosen tool calls.

Every expert call, tool call and trace write goes through the run's :class:`RunRecorder`;
the budget arithmetic lives in :mod:`expertgraph.orchestrator._budget`.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from langgraph.graph import END
from langgraph.types import Send

from expertgraph.core import AggregationContext, ExpertView, RoutingState, next_instruction
from expertgraph.core.protocols import refused
from expertgraph.core.tools import ToolCall
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
from expertgraph.orchestrator import _budget
from expertgraph.orchestrator._prompts import (
    HISTORY_WINDOW,
    build_messages,
    referenced_steps,
    seen,
)
from expertgraph.orchestrator._recorder import RunRecorder
from expertgraph.orchestrator.graph import CallPlan, GraphState
from expertgraph.orchestrator.tools import Tool, offer_tools
from expertgraph.traces.schema import (
    AggregateRecord,
    ExpertInfo,
    RouteRecord,
    RunStart,
    StepEnd,
    ToolRecord,
)
from expertgraph.traces.store import new_run_id

if TYPE_CHECKING:
    from expertgraph.orchestrator.orchestrator import Orchestrator


def no_answer_reason(step: Step) -> str:
    """Why a failed step has no answer: each candidate's error type, or why it did not vote."""
    errors = {(g.expert, g.sample): g.error.type for g in step.generations if g.error is not None}
    excluded = step.result.excluded if step.result is not None else []
    why = [f"{e.expert}: {errors.get((e.expert, e.sample), e.reason)}" for e in excluded]
    why = why or [f"{expert}: {kind}" for (expert, _), kind in errors.items()]
    return "no expert answered: " + (", ".join(dict.fromkeys(why)) or "no candidate")


FOR_CALLER = "tool calls for the caller"
"""Stop reason of a run that ends on an action it has no callable for (RunResult.tool_calls)."""


def acted(step: Step | None) -> bool:
    """Whether a step's vote chose an action (tool calls) rather than a text answer."""
    return step is not None and step.result is not None and bool(step.result.tool_calls)


def results_by_step(records: list[ToolRecord]) -> dict[int, list[str]]:
    """Each acting step's tool results, in call order: what the next steps' messages carry."""
    out: dict[int, list[str]] = {}
    for record in sorted(records, key=lambda r: (r.step, r.index)):
        out.setdefault(record.step, []).append(record.result)
    return out


def _note_health(meta: dict[str, Any], budget: list[str], cooling: Mapping[str, float]) -> None:
    """Record in a route's or aggregate's meta what the cost ceiling did to the phase's calls
    and which experts were cooling down (seconds left) when it was routed."""
    if budget:
        meta["budget"] = budget
    if cooling:
        meta["cooling"] = {name: round(s, 3) for name, s in cooling.items()}


class Nodes:
    """The node bodies of one :class:`~expertgraph.orchestrator.graph.RunGraph`."""

    def __init__(
        self, orch: Orchestrator, runs: dict[str, RunRecorder], window: int | None = None
    ) -> None:
        self.orch = orch
        self.runs = runs
        declared = (getattr(x, "history_window", 0) or 0 for x in (orch.policy, orch.aggregator))
        self.window: int = max(1, window or HISTORY_WINDOW, *declared)
        """How many recent steps the state keeps: the most the prompts (``window``, default
        :data:`HISTORY_WINDOW`), the policy and the aggregator (``history_window``) read."""

    # ---- runs ----------------------------------------------------------------------------

    def open_run(
        self, task: Task, run_id: str | None = None, tools: Mapping[str, Tool] | None = None
    ) -> RunRecorder:
        """Start a run; ``tools`` (default: the orchestrator's) are offered unless the task
        names its own, and executed when offered (see :func:`offer_tools`)."""
        run_id = run_id or new_run_id()
        task, runnable = offer_tools(task, self.orch.tools if tools is None else tools)
        recorder = RunRecorder(
            run_id=run_id,
            task=task,
            writer=self.orch.trace_store.writer(run_id),
            tools=runnable,
            tool_timeout_s=self.orch.tool_timeout_s,
            experts=self.orch.experts,
        )
        self.runs[run_id] = recorder
        recorder.write(
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
        return recorder

    def close_run(self, state: Mapping[str, Any], stop_reason: str) -> None:
        recorder = self.runs.pop(state["run_id"], None)
        if recorder is not None:
            recorder.close(
                answer=state.get("answer"),
                stop_reason=stop_reason,
                steps=state.get("step_index", 0),
                tool_calls=state.get("tool_calls") or [],
            )

    # ---- helpers -------------------------------------------------------------------------

    def _params(
        self, expert: str, task: Task, extra: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """A candidate call's params: defaults, then the expert's, the task's, the request's."""
        return {
            **self.orch.default_params,
            **self.orch.expert_params.get(expert, {}),
            **task.params,
            **(extra or {}),
        }

    @staticmethod
    def _tool_params(task: Task, has_acted: bool) -> dict[str, Any]:
        """What a step offers every expert it calls: the task's tools and ``tool_choice``.

        A ``required`` or named choice holds until the run has acted once, then it is
        ``auto``: forced to call again after every result, an agent could never answer.
        """
        if not task.tools or task.tool_choice == "none":
            return {}
        choice = task.tool_choice if not has_acted else "auto"
        return {
            "tools": list(task.tools),
            "tool_choice": choice,
            "parallel_tool_calls": bool(task.params.get("parallel_tool_calls", True)),
        }

    def _estimate(
        self, name: str, messages: list[Message], task: Task, extra: Mapping[str, Any] | None = None
    ) -> float:
        if task.budget.max_cost is None:
            return 0.0  # no ceiling: nothing to price (counting tokens is not free)
        # A call is counted at the least it may be admitted at (the recorder lowers
        # max_tokens to fit): a lowered call beats no call.
        params = self._params(name, task, extra)
        return _budget.least_cost(self.orch.experts[name], messages, params)

    def _fit_cost(
        self,
        names: list[str],
        messages: list[Message],
        recorder: RunRecorder,
        extra: Mapping[str, Any] | None = None,
    ) -> tuple[list[str], list[str]]:
        task = recorder.task
        estimates = [(n, self._estimate(n, messages, task, extra)) for n in names]
        return _budget.fit_cost(estimates, recorder.usage.cost, task.budget.max_cost)

    def _routing_state(
        self, recorder: RunRecorder, index: int, steps: list[Step], plan_step: PlanStep | None
    ) -> RoutingState:
        # Health as it was before this step: a copy, so the step's own calls do not show.
        views = [
            ExpertView(
                name=e.name, card=e.card, kind=e.kind, health=replace(recorder.health_of(e.name))
            )
            for e in self.orch.experts.values()
        ]
        return RoutingState(
            task=recorder.task,
            step_index=index,
            experts=views,
            steps=steps,
            plan_step=plan_step,
            top_k=self.orch.top_k,
            spent=recorder.usage,
        )

    def _stop(
        self, state: GraphState, recorder: RunRecorder, reason: str, answer: str | None = None
    ) -> dict[str, Any]:
        if answer is None:
            answer = state.get("answer")
            steps = state.get("steps") or []
            if answer is None and steps and steps[-1].result is not None:
                # A step that acted answers nothing: only its text, if any, is said.
                last = steps[-1].result
                answer = (last.text or None) if last.tool_calls else last.output
        return {
            "stop_reason": reason,
            "answer": answer,
            "decision": None,
            "calls": [],
            "usage": recorder.usage,
        }

    @classmethod
    def _counted_out(cls, task: Task, steps: list[Step], index: int) -> str | None:
        """Why the run stops before step ``index`` whatever the policy says: its plan is done
        or it has taken ``max_steps``; None when it goes on."""
        if task.plan is not None and index >= len(task.plan):
            return cls._finished(steps, "plan complete", None)
        if index >= task.max_steps:
            return f"max_steps reached ({task.max_steps})"
        return None

    @staticmethod
    def _finished(steps: list[Step], reason: str, answer: str | None) -> str:
        """The stop reason of a run that ends after its last step: why, when nobody answered."""
        last = steps[-1] if steps else None
        if answer is None and last is not None and last.result is not None and last.result.failed:
            return no_answer_reason(last)
        return reason

    # ---- route ---------------------------------------------------------------------------

    async def _decide(
        self, state: GraphState, recorder: RunRecorder
    ) -> dict[str, Any] | tuple[Decision, RoutingState]:
        """The decision for the state's next step, or the update that stops the run before
        it (limits, no usable expert, the policy finishing or failing). A decision made
        ahead, at the end of the step before (:meth:`route`'s one-expert path), is used
        as it is: the policy is asked once per step."""
        task = recorder.task  # with the tools the run offers
        budget = task.budget
        steps = state.get("steps") or []
        index = state.get("step_index", 0)

        counted_out = self._counted_out(task, steps, index)
        if counted_out is not None:
            return self._stop(state, recorder, counted_out)
        if _budget.past_deadline(task, recorder.started_at):
            reason = f"deadline reached ({budget.deadline_s:g}s)"
            return self._stop(state, recorder, reason)

        plan_step = task.plan[index] if task.plan is not None else None
        if recorder.overrun is not None:
            return self._stop(state, recorder, recorder.overrun)
        ahead, recorder.decided = recorder.decided, None
        if ahead is not None and ahead[0] == index:
            return ahead[1], ahead[2]
        routing_state = self._routing_state(recorder, index, steps, plan_step)
        if next_instruction(routing_state) is not None:
            routing_state.require_available()  # all cooling down: NoExpertAvailable, at once
        if routing_state.offers_tools and not routing_state.allowed:
            offered = ", ".join(s.name for s in task.tools or [])
            reason = f"no expert can call tools: the step offers {offered}"
            if routing_state.plan_step is not None and routing_state.plan_step.experts:
                reason += f" and allows only {', '.join(routing_state.plan_step.experts)}"
            reason += " (an expert card needs tools: true)"
            decision = Decision(action="finish", policy=self.orch.policy.name, rationale=reason)
            recorder.write(RouteRecord(run_id=recorder.run_id, step=index, decision=decision))
            return self._stop(state, recorder, reason)
        caller = recorder.caller(index, plan_step.instruction if plan_step else "")
        routing_state.call = caller
        try:
            decision = await self.orch.policy.adecide(routing_state)
        except Exception as exc:  # noqa: BLE001 - a broken policy stops the run, cleanly
            reason = f"policy {self.orch.policy.name!r} failed: {type(exc).__name__}: {exc}"
            decision = Decision(action="finish", policy=self.orch.policy.name, rationale=reason)
            recorder.write(RouteRecord(run_id=recorder.run_id, step=index, decision=decision))
            return self._stop(state, recorder, reason)
        # What deciding cost (an LLM router's call) is the run's spend and budget.
        recorder.count(_budget.uncounted(decision.usage, caller.usage))
        _note_health(decision.meta, recorder.take_notes(index), routing_state.cooling)

        if decision.action == "finish":
            recorder.write(RouteRecord(run_id=recorder.run_id, step=index, decision=decision))
            reason = self._finished(
                steps, f"policy finished: {decision.rationale}", decision.answer
            )
            return self._stop(state, recorder, reason, decision.answer)
        return decision, routing_state

    async def route(self, state: GraphState) -> dict[str, Any]:
        task = state["task"]
        update: dict[str, Any] = {}
        if not state.get("run_id") or state["run_id"] not in self.runs:
            # A run started from a parent graph: always a new id, since a run_id the parent
            # kept from an earlier invocation names a finished trace that must not grow.
            recorder = self.open_run(task)
            update.update(
                task=recorder.task,
                run_id=recorder.run_id,
                step_index=0,
                steps=[],
                pinned={},
                acted=False,
                usage=recorder.usage,
                started_at=recorder.started_at,
                answer=None,
                stop_reason=None,
                tool_results=[],
                tool_calls=[],
            )
            state = {**state, **update}  # type: ignore[typeddict-item]
        recorder = self.runs[state["run_id"]]
        decided = await self._decide(state, recorder)
        if isinstance(decided, dict):  # the run stops here
            return {**update, **decided}
        decision, routing_state = decided
        task = recorder.task
        budget = task.budget
        steps = state.get("steps") or []
        index = state.get("step_index", 0)
        plan_step = routing_state.plan_step

        instruction = decision.instruction or (plan_step.instruction if plan_step else task.text)
        routing_state.require_available()
        decision = self._checked_decision(decision, routing_state)
        tool_results = results_by_step(state.get("tool_results") or [])
        messages = build_messages(task, steps, instruction, tool_results, state.get("pinned"))
        tool_params = self._tool_params(task, bool(state.get("acted")))
        chosen, dropped = self._fit_cost(decision.experts, messages, recorder, tool_params)
        if dropped:
            decision.meta["dropped_for_cost"] = dropped
        if not chosen:
            decision = decision.model_copy(update={"instruction": instruction})
            recorder.write(RouteRecord(run_id=recorder.run_id, step=index, decision=decision))
            reason = (
                f"cost budget: calling {', '.join(dropped)} would exceed max_cost "
                f"{budget.max_cost:g} (spent {recorder.usage.cost:.6g})"
            )
            return {**update, **self._stop(state, recorder, reason)}
        decision = decision.model_copy(update={"instruction": instruction, "experts": chosen})
        # Built from already-valid objects: no validation on the hot path (also below).
        recorder.write(RouteRecord.built(run_id=recorder.run_id, step=index, decision=decision))
        calls: list[CallPlan] = [{"expert": name, "sample": 0, "params": {}} for name in chosen]
        update.update(
            decision=decision,
            instruction=instruction,
            messages=messages,
            tool_params=tool_params,
            plan_step=plan_step,
        )
        if len(calls) == 1:
            # The fast path: one call needs no fan-out; it is made here. Without a
            # checkpointer the step is aggregated here too: one superstep per step. A
            # checkpointed run saves the routed call before its vote (route -> aggregate).
            generation = await self._candidate(
                recorder, index, instruction, messages, tool_params, calls[0]
            )
            got = [generation] if generation else []
            if self.orch.checkpointer is None:
                done = await self._aggregate({**state, **update, "candidates": got})  # type: ignore[typeddict-item]
                # decision None: the step is over (after_route goes on to the next one)
                update = {**update, **done, "calls": [], "decision": None}
                if acted(update["steps"][-1]):
                    return update  # on to act
                # The next step is decided now. When that ends the run (its plan done, the
                # policy finishing), it ends in this superstep: one fewer per run. Else the
                # next route node takes the decision as it is.
                try:
                    ahead = await self._decide({**state, **update}, recorder)  # type: ignore[typeddict-item]
                except Exception:  # noqa: BLE001 - the next route node raises it, as it would
                    return update
                if isinstance(ahead, dict):
                    return {**update, **ahead}
                recorder.decided = (update["step_index"], *ahead)
                return update
            update.update(calls=[], candidates=got)
        else:
            update.update(calls=calls, candidates=None)
        update["usage"] = recorder.usage
        return update

    @staticmethod
    def _checked_decision(decision: Decision, state: RoutingState) -> Decision:
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

    async def after_route(self, state: GraphState) -> Any:
        # async: LangGraph runs a sync path function in a thread pool, ~1 ms a hop under load
        if state.get("stop_reason") is not None:
            # Cheap: one record and a close; the store indexes and exports in the background.
            self.close_run(state, state["stop_reason"] or "")
            return END
        if state.get("calls"):
            return self.sends(state)
        return "aggregate" if state.get("decision") is not None else self.after_step(state)

    @staticmethod
    def sends(state: GraphState) -> list[Send]:
        return [
            Send(
                "call",
                {
                    "run_id": state["run_id"],
                    "step_index": state["step_index"],
                    "instruction": state["instruction"],
                    "messages": state["messages"],
                    "tool_params": state.get("tool_params") or {},
                    "call": call,
                },
            )
            for call in state["calls"]
        ]

    # ---- call ----------------------------------------------------------------------------

    async def call(self, payload: dict[str, Any]) -> dict[str, Any]:
        generation = await self._candidate(
            self.runs[payload["run_id"]],
            payload["step_index"],
            payload["instruction"],
            payload["messages"],
            payload.get("tool_params") or {},
            payload["call"],
        )
        return {"candidates": [generation] if generation else []}

    async def _candidate(
        self,
        recorder: RunRecorder,
        step: int,
        instruction: str,
        messages: list[Message],
        tool_params: Mapping[str, Any],
        plan: CallPlan,
    ) -> Generation | None:
        """One candidate call of a step; None when the budget refused it."""
        expert = self.orch.experts[plan["expert"]]
        generation = await recorder.call(
            expert,
            messages,
            role="candidate",
            step=step,
            instruction=instruction,
            sample=plan["sample"],
            **self._params(expert.name, recorder.task, {**tool_params, **plan["params"]}),
        )
        # The call was fitted in the budget with the same estimate, so a refusal is an overrun
        # of calls in flight: the call was not made and is no candidate.
        return None if refused(generation) else generation

    # ---- aggregate -----------------------------------------------------------------------

    def _calls_left(
        self, recorder: RunRecorder, state: GraphState, candidates: list[Generation]
    ) -> int:
        """Calls the step may still make: its call limit, the deadline, and the cost budget
        paid at the price of the cheapest expert the step may use."""
        if recorder.task.budget.max_cost is None:  # no price to pay: only the call limit counts
            return _budget.calls_left(
                recorder.task, len(candidates), recorder.usage, None, recorder.started_at
            )
        steps = state.get("steps") or []
        routing = self._routing_state(recorder, state["step_index"], steps, state.get("plan_step"))
        extra = state.get("tool_params")
        estimates = [
            self._estimate(v.name, state["messages"], recorder.task, extra)
            for v in routing.candidates
        ]
        return _budget.calls_left(
            recorder.task,
            len(candidates),
            recorder.usage,
            min(estimates, default=None),
            recorder.started_at,
        )

    async def aggregate(self, state: GraphState) -> dict[str, Any]:
        return await self._aggregate(state)

    async def _aggregate(self, state: GraphState) -> dict[str, Any]:
        """Vote on the step's candidates, drawing what the aggregator asks for; end the step."""
        recorder = self.runs[state["run_id"]]
        task = recorder.task
        index = state["step_index"]
        decision = state["decision"]
        assert decision is not None
        candidates = [*(state.get("candidates") or []), *recorder.recovered.pop(index, [])]
        plan_step = state.get("plan_step")
        answer_format = (
            plan_step.answer_format if plan_step and plan_step.answer_format else task.answer_format
        )
        order = sorted(decision.scores, key=lambda n: decision.scores[n], reverse=True)
        caller = recorder.caller(index, state["instruction"])
        # The vote judges the step by the tool_choice its experts were given.
        choice = (state.get("tool_params") or {}).get("tool_choice", task.tool_choice)
        if choice != task.tool_choice:
            task = task.model_copy(update={"tool_choice": choice})
        notes: list[str] = []
        round_ = 0
        while True:
            context = AggregationContext(
                task=task,
                instruction=state["instruction"],
                answer_format=answer_format,
                scores=dict(decision.scores),
                order=order,
                calls_left=self._calls_left(recorder, state, candidates),
                round=round_,
                step=index,
                call=caller,
            )
            try:
                result = await self.orch.aggregator.acombine(candidates, context)
            except Exception as exc:  # noqa: BLE001 - a broken aggregator fails the step only
                result = StepResult(
                    aggregator=self.orch.aggregator.name,
                    stop_reason=f"aggregator failed: {type(exc).__name__}: {exc}",
                )
            recorder.count(_budget.uncounted(result.usage, caller.usage), index)
            caller.usage = Usage()
            more = result.more
            if more is None and result.failed:
                more = self._fallback_request(candidates, order, plan_step, recorder)
            if more is None:
                break
            drawn = await self._draw(more, candidates, recorder, state)
            if drawn is None:
                stop_reason = (result.stop_reason + "; no budget for more samples").lstrip("; ")
                result = result.model_copy(update={"stop_reason": stop_reason})
                break
            notes.append(more.reason)
            candidates = [*candidates, *drawn]
            round_ += 1
        if result.more is not None:
            result = result.model_copy(update={"more": None})
        if notes:
            result.meta["requests"] = notes
        result.extra_calls = max(result.extra_calls, len(candidates) - len(decision.experts))
        step = Step.model_construct(
            index=index,
            instruction=state["instruction"],
            decision=decision,
            generations=list(candidates),
            result=result,
            usage=recorder.end_step(index),
        )
        _note_health(result.meta, recorder.take_notes(index), {})
        recorder.write(AggregateRecord.built(run_id=recorder.run_id, step=index, result=result))
        recorder.write(
            StepEnd.built(
                run_id=recorder.run_id,
                step=index,
                instruction=step.instruction,
                answer=result.comparable,
                usage=step.usage,
            )
        )
        recorder.steps.append(step)
        return {
            **self._window(state, recorder, step),
            "step_index": index + 1,
            "usage": recorder.usage,
            "candidates": None,  # the step's are in its Step: a small checkpoint
        }

    def _window(self, state: GraphState, recorder: RunRecorder, step: Step) -> dict[str, Any]:
        """The state's history after ``step``: the last :attr:`window` steps, what older steps
        the plan names answered, whether the run has acted, the window's tool results."""
        kept = [*(state.get("steps") or []), step]
        update: dict[str, Any] = {}
        if len(kept) > self.window:
            gone, kept = kept[: -self.window], kept[-self.window :]
            if recorder.named is None:
                recorder.named = referenced_steps(recorder.task)
            pin = {s.index: seen(s) for s in gone if s.index in recorder.named}
            if pin:
                update["pinned"] = {**(state.get("pinned") or {}), **pin}
            results = state.get("tool_results")
            if results and results[0].step < kept[0].index:
                update["tool_results"] = [r for r in results if r.step >= kept[0].index]
        update["steps"] = kept
        if acted(step) and not state.get("acted"):
            update["acted"] = True
        return update

    def _allowed(self, recorder: RunRecorder, plan_step: PlanStep | None) -> set[str]:
        """Experts the step may use at all (the routing state's rule: plan step, tools; health
        plays no part in it, so the views need none)."""
        views = [
            ExpertView(name=e.name, card=e.card, kind=e.kind) for e in self.orch.experts.values()
        ]
        state = RoutingState(task=recorder.task, step_index=0, experts=views, plan_step=plan_step)
        return {v.name for v in state.allowed}

    def _fallback_request(
        self,
        candidates: list[Generation],
        order: list[str],
        plan_step: PlanStep | None,
        recorder: RunRecorder,
    ) -> SampleRequest | None:
        """No usable answer: route around the failed experts to the next in the router's order."""
        tried = {g.expert for g in candidates}
        allowed = self._allowed(recorder, plan_step)
        for name in [*order, *self.orch.experts]:
            if name in tried or name not in allowed or name not in self.orch.experts:
                continue
            if not recorder.health_of(name).usable:
                continue
            failed = ", ".join(sorted(tried))
            return SampleRequest(
                experts=[name], reason=f"no usable answer from {failed}; routing around to {name}"
            )
        return None

    async def _draw(
        self,
        more: SampleRequest,
        candidates: list[Generation],
        recorder: RunRecorder,
        state: GraphState,
    ) -> list[Generation] | None:
        """Make the extra calls ``more`` asks for, concurrently, within this node (no graph
        superstep); None when the step's limits allow none of them (or the budget refused
        every one). A checkpointed run writes each round's records out, so a kill while
        drawing redoes at most the draws in flight (see ``RunGraph.reopen_run``)."""
        plans = self._extra_calls(more, candidates, recorder, state)
        if not plans:
            return None
        args = (
            recorder,
            state["step_index"],
            state["instruction"],
            state["messages"],
            state.get("tool_params") or {},
        )
        if len(plans) == 1:
            drawn = [await self._candidate(*args, plans[0])]
        else:
            drawn = await asyncio.gather(*(self._candidate(*args, p) for p in plans))
        if self.orch.checkpointer is not None:
            recorder.writer.flush()
        made = [g for g in drawn if g is not None]
        return made or None

    def _extra_calls(
        self,
        more: SampleRequest,
        candidates: list[Generation],
        recorder: RunRecorder,
        state: GraphState,
    ) -> list[CallPlan]:
        next_sample: dict[str, int] = {}
        for g in candidates:
            next_sample[g.expert] = max(next_sample.get(g.expert, 0), g.sample + 1)
        # Counted again: the aggregator's own calls (a fuser's) may have spent since.
        left = self._calls_left(recorder, state, candidates)
        allowed = self._allowed(recorder, state.get("plan_step"))
        # An aggregator may ask any expert; one that cannot call tools never gets a tool step.
        names = [n for n in more.experts if n in self.orch.experts and n in allowed][:left]
        extra = {**(state.get("tool_params") or {}), **more.params}
        fitting, _ = self._fit_cost(names, state["messages"], recorder, extra)
        plans: list[CallPlan] = []
        for name in fitting:
            sample = next_sample.get(name, 0)
            next_sample[name] = sample + 1
            plans.append({"expert": name, "sample": sample, "params": dict(more.params)})
        return plans

    @staticmethod
    def after_step(state: GraphState) -> str:
        steps = state.get("steps") or []
        return "act" if steps and acted(steps[-1]) else "route"

    @staticmethod
    async def after_aggregate(state: GraphState) -> Any:
        return Nodes.after_step(state)

    # ---- act -----------------------------------------------------------------------------

    async def act(self, state: GraphState) -> dict[str, Any]:
        """Execute the action the step's vote chose, its calls in order; or, when the run has
        no callable for one of them, end the run on it for the caller to execute."""
        recorder = self.runs[state["run_id"]]
        step = (state.get("steps") or [])[-1]
        assert step.result is not None
        calls: list[ToolCall] = list(step.result.tool_calls)
        offered = {s.name for s in recorder.task.tools or []}
        if any(c.name in offered and c.name not in recorder.tools for c in calls):
            return {**self._stop(state, recorder, FOR_CALLER), "tool_calls": calls}
        records = [await recorder.act(c, step=step.index, index=i) for i, c in enumerate(calls)]
        # Only the window's steps' results: older steps are no longer in the messages.
        return {
            "tool_results": [*(state.get("tool_results") or []), *records],
            "usage": recorder.usage,
        }

    async def after_act(self, state: GraphState) -> Any:
        if state.get("stop_reason") is not None:
            self.close_run(state, state["stop_reason"] or "")
            return END
        return "route"
