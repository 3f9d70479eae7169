"""The orchestrator end to end with callable experts: routing, voting, budgets, traces."""

from __future__ import annotations

import asyncio
import operator
import subprocess
import sys
from pathlib import Path
from typing import Annotated, TypedDict

import pytest

from expertgraph.agents import CallableExpert
from expertgraph.agents.tools import calculator
from expertgraph.core import (
    AggregationContext,
    Aggregator,
    AnswerFormat,
    Budget,
    ExpertCard,
    Generation,
    PlanStep,
    SampleRequest,
    StepResult,
    Task,
)
from expertgraph.orchestrator import Orchestrator
from expertgraph.policies import AllExperts, EmbeddingRouter, FixedPolicy, MajorityVote
from expertgraph.traces import AggregateRecord, CallRecord, RouteRecord, RunEnd, RunStart, load_run

CAPITALS = {"france": "Paris", "japan": "Tokyo", "italy": "Rome", "peru": "Lima"}


def capital_lookup(prompt: str) -> str:
    for country, city in CAPITALS.items():
        if country in prompt.lower():
            return city
    raise LookupError(f"no country in {prompt!r}")


def reverse_word(prompt: str) -> str:
    word = prompt.rstrip("?.! ").split()[-1]
    return word[::-1]


def sloppy_calculator(prompt: str) -> str:
    """A second arithmetic expert that is off by one: outvoted when two others agree."""
    return str(int(calculator(prompt)) + 1)


def _card(description: str, skills: list[str], examples: list[str], **costs: float) -> ExpertCard:
    return ExpertCard(description=description, skills=skills, examples=examples, **costs)


def _experts() -> list[CallableExpert]:
    arithmetic = (
        ["arithmetic", "addition", "multiplication"],
        ["What is 17 + 25?", "Compute 12 * 7"],
    )
    return [
        CallableExpert("calc", calculator, _card("exact calculator for arithmetic", *arithmetic)),
        CallableExpert(
            "calc_b", calculator, _card("second calculator for arithmetic sums", *arithmetic)
        ),
        CallableExpert(
            "calc_sloppy", sloppy_calculator, _card("approximate arithmetic", *arithmetic)
        ),
        CallableExpert(
            "atlas",
            capital_lookup,
            _card(
                "knows the capital city of every country",
                ["capital cities", "geography"],
                ["What is the capital of Spain?", "Which city is the capital of Chile?"],
            ),
        ),
        CallableExpert(
            "speller",
            reverse_word,
            _card(
                "spells words backwards, letter by letter",
                ["reverse a word", "spelling"],
                ["Spell the word house backwards", "Reverse the letters of apple"],
            ),
        ),
    ]


@pytest.fixture(scope="module")
def router() -> EmbeddingRouter:
    return EmbeddingRouter()


def test_three_step_plan_is_routed_voted_and_traced(
    tmp_path: Path, router: EmbeddingRouter
) -> None:
    orch = Orchestrator(_experts(), router, MajorityVote(), trace_dir=tmp_path)
    task = Task(
        plan=[
            PlanStep(
                instruction="What is 17 + 25?", answer_format=AnswerFormat(kind="number"), top_k=3
            ),
            PlanStep(instruction="What is the capital of Japan?"),
            PlanStep(instruction="Reverse the letters of {step2}"),
        ]
    )
    result = orch.run(task)

    assert result.stop_reason == "plan complete"
    assert [s.decision.experts for s in result.steps][1:] == [["atlas"], ["speller"]]
    first = result.steps[0]
    assert set(first.decision.experts) == {"calc", "calc_b", "calc_sloppy"}
    assert first.result is not None and first.result.answer == "42"
    assert first.result.votes == {"42": 2.0, "43": 1.0}
    assert sorted(first.result.supporters["42"]) == ["calc#0", "calc_b#0"]
    assert result.steps[1].result.text == "Tokyo"
    assert result.answer == "oykoT"
    for step in result.steps:  # every expert scored at every step
        assert set(step.decision.scores) == {"calc", "calc_b", "calc_sloppy", "atlas", "speller"}

    trace = load_run(result.trace_path)
    kinds = [r.type for r in trace.records]
    assert kinds[0] == "run_start" and kinds[-1] == "run_end"
    assert [r.seq for r in trace.records] == list(range(len(trace.records)))
    routes = [r for r in trace.records if isinstance(r, RouteRecord)]
    calls = [r for r in trace.records if isinstance(r, CallRecord)]
    aggregates = [r for r in trace.records if isinstance(r, AggregateRecord)]
    assert [r.decision.experts for r in routes] == [s.decision.experts for s in result.steps]
    assert len(calls) == 5 and {c.generation.expert for c in calls if c.step == 0} == set(
        first.decision.experts
    )
    assert aggregates[0].result.votes == first.result.votes
    end = trace.end
    assert isinstance(end, RunEnd) and end.answer == "oykoT" and end.steps == 3
    assert isinstance(trace.start, RunStart) and len(trace.start.experts) == 5
    # The reader rebuilds the same objects the orchestrator returned.
    replayed = trace.result()
    assert replayed.answer == result.answer
    assert [s.model_dump() for s in replayed.steps] == [s.model_dump() for s in result.steps]


def test_failing_expert_is_recorded_and_routed_around(tmp_path: Path) -> None:
    def broken(prompt: str) -> str:
        raise ConnectionError("upstream down")

    experts = [
        CallableExpert("broken", broken, _card("arithmetic", ["arithmetic"], [])),
        CallableExpert("calc", calculator, _card("arithmetic", ["arithmetic"], [])),
    ]
    orch = Orchestrator(experts, FixedPolicy(["broken"]), trace_dir=tmp_path)
    result = orch.run(
        Task(plan=[PlanStep(instruction="What is 2 + 3?"), PlanStep(instruction="What is 4 * 5?")])
    )
    assert [s.result.answer for s in result.steps] == ["5", "20"]
    first = result.steps[0]
    assert [g.expert for g in first.generations] == ["broken", "calc"]
    assert (
        first.generations[0].error is not None
        and "upstream down" in first.generations[0].error.message
    )
    assert first.result.excluded[0].expert == "broken"
    assert "routing around to calc" in first.result.meta["requests"][0]
    # Step 2 routes around the expert that failed every call: it is not called again.
    assert [g.expert for g in result.steps[1].generations] == ["calc"]
    assert result.steps[1].decision.experts == ["calc"]
    trace = load_run(result.trace_path)
    errors = [r for r in trace.records if isinstance(r, CallRecord) and r.generation.error]
    assert len(errors) == 1


def test_all_experts_failing_ends_the_step_without_crashing(tmp_path: Path) -> None:
    def broken(prompt: str) -> str:
        raise RuntimeError("no")

    orch = Orchestrator(
        [CallableExpert("a", broken), CallableExpert("b", broken)], AllExperts(), trace_dir=tmp_path
    )
    result = orch.run("anything")
    assert result.answer is None
    assert result.steps[0].result is not None and result.steps[0].result.answer is None
    assert {e.expert for e in result.steps[0].result.excluded} == {"a", "b"}
    assert load_run(result.trace_path).end is not None


def test_cost_budget_stops_before_the_call_that_would_exceed_it(tmp_path: Path) -> None:
    def pricey(prompt: str, **params: object) -> dict[str, object]:
        return {"text": "ok", "input_tokens": 1, "output_tokens": params["max_tokens"]}

    card = ExpertCard(cost_per_1k_output=0.02)
    orch = Orchestrator(
        [CallableExpert("pricey", pricey, card)],
        FixedPolicy(["pricey"]),
        trace_dir=tmp_path,
        defaults={"max_tokens": 1000},
    )
    plan = [PlanStep(instruction=f"step {i}") for i in range(5)]
    result = orch.run(Task(plan=plan, budget=Budget(max_cost=0.05)))
    # Two calls at 0.02 each; the third only fits with max_tokens lowered to 500; then nothing.
    assert len(result.steps) == 3
    assert result.usage.cost == pytest.approx(0.05) and result.usage.cost <= 0.05 + 1e-12
    assert result.stop_reason.startswith("cost budget: calling pricey would exceed max_cost 0.05")
    calls = [r for r in load_run(result.trace_path).records if isinstance(r, CallRecord)]
    assert [c.generation.params["max_tokens"] for c in calls] == [1000, 1000, 500]


def test_max_steps_and_deadline(tmp_path: Path) -> None:
    orch = Orchestrator(
        [CallableExpert("echo", lambda p: p)], FixedPolicy(["echo"]), trace_dir=tmp_path
    )
    plan = [PlanStep(instruction=f"say {i}") for i in range(4)]
    result = orch.run(Task(plan=plan, budget=Budget(max_steps=2)))
    assert len(result.steps) == 2 and result.stop_reason == "max_steps reached (2)"

    async def slow(prompt: str) -> str:
        await asyncio.sleep(0.3)
        return "late"

    orch = Orchestrator([CallableExpert("slow", slow)], FixedPolicy(["slow"]), trace_dir=tmp_path)
    result = orch.run(Task(plan=plan, budget=Budget(deadline_s=0.5)))
    assert result.stop_reason.startswith("deadline reached")
    assert len(result.steps) <= 2
    timed_out = [g for s in result.steps for g in s.generations if g.error is not None]
    assert all(g.error.type == "timeout" for g in timed_out)


def test_experts_of_one_step_run_concurrently(tmp_path: Path) -> None:
    async def sleepy(prompt: str) -> str:
        await asyncio.sleep(0.3)
        return "z"

    experts = [CallableExpert(f"e{i}", sleepy) for i in range(4)]
    orch = Orchestrator(experts, AllExperts(), trace_dir=tmp_path)
    result = orch.run("go")
    assert result.steps[0].result.votes == {"z": 4.0}
    assert result.latency_s < 0.9  # 4 x 0.3 s sequentially would be 1.2 s


class _UntilTwoAgree(Aggregator):
    """Asks for more samples of the first expert until two candidates agree."""

    name = "until-two-agree"

    def combine(self, candidates: list[Generation], context: AggregationContext) -> StepResult:
        texts = [g.text for g in candidates if g.ok]
        for text in texts:
            if texts.count(text) >= 2:
                return StepResult(
                    aggregator=self.name, text=text, answer=text, stop_reason="two agree"
                )
        if context.calls_left:
            return StepResult(
                aggregator=self.name,
                more=SampleRequest(
                    experts=[context.order[0]], params={"temperature": 0.7}, reason="no agreement"
                ),
            )
        return StepResult(aggregator=self.name, text=texts[-1], answer=texts[-1], stop_reason="cap")


def test_aggregator_can_ask_for_more_samples_within_the_step_budget(tmp_path: Path) -> None:
    seen: list[dict[str, object]] = []

    def noisy(prompt: str, **params: object) -> str:
        seen.append(dict(params))
        return ["a", "b", "c", "b"][len(seen) - 1] if len(seen) <= 4 else "d"

    orch = Orchestrator(
        [CallableExpert("noisy", noisy)],
        FixedPolicy(["noisy"]),
        _UntilTwoAgree(),
        trace_dir=tmp_path,
    )
    result = orch.run("question")
    step = result.steps[0]
    assert step.result.answer == "b" and step.result.extra_calls == 3
    assert [g.sample for g in step.generations] == [0, 1, 2, 3]
    assert all(p.get("temperature") == 0.7 for p in seen[1:])

    seen.clear()
    capped = orch.run(Task(prompt="question", budget=Budget(max_calls_per_step=2)))
    assert len(capped.steps[0].generations) == 2 and capped.steps[0].result.stop_reason == "cap"


def test_astream_yields_an_event_per_node_and_the_result(tmp_path: Path) -> None:
    orch = Orchestrator(
        [CallableExpert("calc", calculator)], FixedPolicy(["calc"]), trace_dir=tmp_path
    )

    async def collect() -> list[object]:
        return [event async for event in orch.astream("What is 2 + 2?")]

    events = asyncio.run(collect())
    # One expert: route makes the call itself (no Send fan-out, no call superstep).
    assert [e.node for e in events] == ["route", "aggregate", "route", "end"]
    assert events[-1].result is not None and events[-1].result.answer == "4"
    assert [g.expert for g in events[1].data["steps"][-1].generations] == ["calc"]


def test_astream_fans_out_a_step_with_several_experts(tmp_path: Path) -> None:
    orch = Orchestrator(
        [CallableExpert("a", calculator), CallableExpert("b", calculator)],
        FixedPolicy(["a", "b"]),
        trace_dir=tmp_path,
    )

    async def collect() -> list[object]:
        return [event async for event in orch.astream("What is 2 + 2?")]

    events = asyncio.run(collect())
    assert [e.node for e in events] == ["route", "call", "call", "aggregate", "route", "end"]
    assert events[-1].result is not None and events[-1].result.answer == "4"
    assert len(events[-1].result.steps[0].generations) == 2


def test_run_inside_an_event_loop_runs_on_a_worker_thread(tmp_path: Path) -> None:
    orch = Orchestrator(
        [CallableExpert("calc", calculator)], FixedPolicy(["calc"]), trace_dir=tmp_path
    )

    async def inside() -> None:
        assert orch.run("What is 1 + 1?").answer == "2"  # the caller's loop is not re-entered
        assert (await orch.arun("What is 1 + 1?")).answer == "2"

    asyncio.run(inside())


class Outer(TypedDict, total=False):
    """A user's own graph state that shares the orchestrator's ``task`` and ``answer`` keys."""

    question: str
    task: Task
    answer: str | None
    log: Annotated[list[str], operator.add]


def test_compiled_graph_runs_inside_a_users_graph(tmp_path: Path) -> None:
    from langgraph.graph import END, START, StateGraph

    orch = Orchestrator(
        [CallableExpert("calc", calculator)], FixedPolicy(["calc"]), trace_dir=tmp_path
    )

    def prepare(state: Outer) -> dict[str, object]:
        return {"task": Task(prompt=state["question"]), "log": ["prepared"]}

    def report(state: Outer) -> dict[str, object]:
        return {"log": [f"answer={state['answer']}"]}

    parent = StateGraph(Outer)
    parent.add_node("prepare", prepare)
    parent.add_node("experts", orch.graph)
    parent.add_node("report", report)
    parent.add_edge(START, "prepare")
    parent.add_edge("prepare", "experts")
    parent.add_edge("experts", "report")
    parent.add_edge("report", END)
    out = asyncio.run(parent.compile().ainvoke({"question": "What is 6 * 7?"}))
    assert out["answer"] == "42" and out["log"] == ["prepared", "answer=42"]
    assert len(list(tmp_path.glob("*.jsonl"))) == 1


def test_a_langchain_callback_handler_sees_the_graph_and_each_node_run(tmp_path: Path) -> None:
    from langchain_core.callbacks import AsyncCallbackHandler

    class Names(AsyncCallbackHandler):
        def __init__(self) -> None:
            self.started: list[str] = []

        async def on_chain_start(self, serialized, inputs, **kwargs):  # type: ignore[no-untyped-def]
            self.started.append(kwargs.get("name") or "")

    orch = Orchestrator(
        [CallableExpert("calc", calculator)], FixedPolicy(["calc"]), trace_dir=tmp_path
    )

    def started(task: Task) -> list[str]:
        handler = Names()
        out = asyncio.run(orch.graph.ainvoke({"task": task}, config={"callbacks": [handler]}))
        assert out["answer"] == "42"
        return handler.started

    # The graph and its nodes; the routing functions between nodes are plain calls, not
    # runs of their own. A one-expert step decides the next one in its node: when that
    # ends the run (the policy finishing, the plan done), the run ends there too.
    assert started(Task(prompt="What is 6 * 7?")) == ["LangGraph", "route"]
    plan = [PlanStep(instruction="What is 6 * 7?"), PlanStep(instruction="{step0}")]
    assert started(Task(plan=plan)) == ["LangGraph", "route", "route"]


def test_importing_the_orchestrator_loads_neither_torch_nor_litellm() -> None:
    code = (
        "import sys, expertgraph.orchestrator, expertgraph.agents, expertgraph.policies, "
        "expertgraph.traces;"
        "bad=[m for m in ('torch','litellm','transformers','sentence_transformers') "
        "if m in sys.modules];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_a_policys_own_cost_counts_against_the_budget(tmp_path: Path) -> None:
    from expertgraph.core import (
        Decision,
        Policy,
        RoutingState,
        Usage,
        finish_decision,
        next_instruction,
    )

    class PricyRouter(Policy):
        name = "pricy-router"
        blocking = False

        def decide(self, state: RoutingState) -> Decision:
            instruction = next_instruction(state)
            if instruction is None:
                return finish_decision(state, self.name, "done")
            return Decision(
                instruction=instruction,
                experts=["calc"],
                policy=self.name,
                usage=Usage(input_tokens=10, output_tokens=5, cost=0.02, calls=1),
            )

    orch = Orchestrator([CallableExpert("calc", calculator)], PricyRouter(), trace_dir=tmp_path)
    plan = [PlanStep(instruction=f"What is {i} + 1?") for i in range(5)]
    result = orch.run(Task(plan=plan, budget=Budget(max_cost=0.05)))
    # Two routed steps (0.02 each), then a third routing call that brings the spend to 0.06:
    # a policy's own cost is only known after it decided, so no expert is called after it.
    assert result.usage.cost == pytest.approx(0.06) and result.usage.calls == 5
    assert len(result.steps) == 2
    assert result.stop_reason.startswith("cost budget")


def test_a_fusers_own_call_counts_in_the_step_and_run_usage(tmp_path: Path) -> None:
    from expertgraph.policies.aggregation.fusion import LLMFusion

    def priced(text: str) -> object:
        return lambda prompt: {"text": text, "input_tokens": 100, "output_tokens": 10}

    card = ExpertCard(cost_per_1k_input=0.01, cost_per_1k_output=0.01)
    experts = [CallableExpert("a", priced("12"), card), CallableExpert("b", priced("13"), card)]
    fuser = CallableExpert("fuser", priced("12"), card)
    orch = Orchestrator(experts, AllExperts(), LLMFusion(fuser), trace_dir=tmp_path)
    result = orch.run(Task(prompt="What is 3 * 4?", answer_format=AnswerFormat(kind="number")))
    step = result.steps[0]
    assert step.result.answer == "12" and step.result.usage.calls == 1
    assert step.usage.calls == 3 and result.usage.cost == pytest.approx(3 * 0.0011)


def test_a_plan_longer_than_the_open_task_limit_runs_whole(tmp_path: Path) -> None:
    orch = Orchestrator(
        [CallableExpert("calc", calculator)], FixedPolicy(["calc"]), trace_dir=tmp_path
    )
    plan = [PlanStep(instruction=f"What is {i} + 1?") for i in range(12)]
    result = orch.run(Task(plan=plan))
    assert (
        len(result.steps) == 12 and result.answer == "12" and result.stop_reason == "plan complete"
    )
    open_task = orch.as_task("What is 1 + 1?")
    assert open_task.max_steps == 8


def test_a_policy_brings_its_paired_aggregator_unless_one_is_given(tmp_path: Path) -> None:
    class Paired(FixedPolicy):
        paired_aggregator = MajorityVote()

    experts = [CallableExpert("a", lambda p: "1"), CallableExpert("b", lambda p: "2")]
    policy = Paired(["a", "b"])
    assert Orchestrator(experts, policy, trace_dir=tmp_path).aggregator is policy.paired_aggregator
    given = MajorityVote()
    assert Orchestrator(experts, policy, given, trace_dir=tmp_path).aggregator is given
    plain = Orchestrator(experts, FixedPolicy(["a"]), trace_dir=tmp_path).aggregator
    assert isinstance(plain, MajorityVote) and plain is not policy.paired_aggregator
