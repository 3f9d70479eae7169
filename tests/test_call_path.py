"""One call path: the router's, fuser's and judge's calls are recorded, counted and budgeted.

Callable experts play the models by rule (no network). Each run writes a real trace; the
checks read it back, and the trace summary runs through the real command line.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from expertgraph.agents import CallableExpert
from expertgraph.core import (
    AggregationContext,
    Aggregator,
    AnswerFormat,
    Budget,
    ExpertCard,
    Generation,
    Message,
    PlanStep,
    StepResult,
    Task,
)
from expertgraph.orchestrator import Orchestrator
from expertgraph.orchestrator.cli import main
from expertgraph.policies import AllExperts, FixedPolicy
from expertgraph.policies.aggregation.fusion import LLMFusion
from expertgraph.policies.aggregation.judge import JudgeRanking
from expertgraph.policies.routing.llm_router import LLMRouter
from expertgraph.traces import CallRecord, RouteRecord, load_run
from expertgraph.traces.replay import routing_states
from expertgraph.traces.schema import record_adapter

NUMBER = AnswerFormat(kind="number")
PRICED = ExpertCard(cost_per_1k_input=0.01, cost_per_1k_output=0.02)


class Counted:
    """A model played by rule: answers with ``reply(prompt)`` and counts its calls."""

    def __init__(self, reply: Callable[[str], str]) -> None:
        self.reply = reply
        self.calls = 0
        self._lock = threading.Lock()

    def __call__(self, messages: list[Message]) -> dict[str, Any]:
        with self._lock:
            self.calls += 1
        return {"text": self.reply(messages[-1].content), "input_tokens": 50, "output_tokens": 5}


def _solver(answer: str) -> Callable[[str], str]:
    return lambda prompt: f"I worked it out. Final answer: {answer}"


def _router_rule(prompt: str) -> str:
    if "No step has run yet" in prompt:
        return json.dumps({"action": "call", "experts": ["a", "b"], "rationale": "both"})
    return json.dumps({"action": "finish", "rationale": "answered"})


def _judge_rule(prompt: str) -> str:
    ids = dict(re.findall(r'<candidate id="(\d+)">\n(.*?)\n</candidate>', prompt, flags=re.S))
    best = next(cid for cid, body in ids.items() if "12" in body)
    return json.dumps({"ranking": [best, *(c for c in ids if c != best)]})


def _calls(path: str | None) -> list[CallRecord]:
    assert path is not None
    return [r for r in load_run(path).records if isinstance(r, CallRecord)]


def _summary(directory: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, dict[str, Any]]:
    capsys.readouterr()
    assert main(["traces", "summary", str(directory), "--json"]) == 0
    payload = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    return {row["expert"]: row for row in payload["experts"]}


def test_router_fuser_and_judge_calls_are_traced_counted_and_summarised(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    router = Counted(_router_rule)
    fuser = Counted(lambda prompt: "3 boxes of 4 make 12.\nFinal answer: 12")
    experts = [
        CallableExpert("a", Counted(_solver("12")), PRICED),
        CallableExpert("b", Counted(_solver("13")), PRICED),
    ]
    policy = LLMRouter(CallableExpert("router", router, PRICED), FixedPolicy(["a"]), top_k=2)
    orch = Orchestrator(
        experts, policy, LLMFusion(CallableExpert("fuser", fuser, PRICED)), trace_dir=tmp_path
    )
    result = orch.run(Task(prompt="What is 3 * 4?", answer_format=NUMBER))
    assert result.answer is not None and "12" in result.answer
    assert result.stop_reason == "policy finished: router: answered"

    calls = _calls(result.trace_path)
    roles = [(c.role, c.generation.expert, c.step) for c in calls]
    assert sorted(roles) == sorted(
        [
            ("router", "router", 0),
            ("candidate", "a", 0),
            ("candidate", "b", 0),
            ("fuser", "fuser", 0),
            ("router", "router", 1),  # the call that decided to finish
        ]
    )
    assert router.calls == 2 and fuser.calls == 1
    # The run's usage counts every call once (the router's and fuser's reported usage is
    # the same calls the recorder counted, not extra ones).
    assert result.usage.calls == 5
    assert result.usage.cost == pytest.approx(sum(c.generation.cost for c in calls))
    assert result.usage.cost > 0
    step = result.steps[0]
    assert step.usage.calls == 3  # two candidates and the fuser; routing is the run's
    # A trace's steps hold only the candidates; the rebuilt run equals the live one.
    trace = load_run(result.trace_path or "")
    assert sorted(g.expert for g in trace.steps()[0].generations) == ["a", "b"]
    assert [s.model_dump() for s in trace.result().steps] == [s.model_dump() for s in result.steps]
    assert trace.end is not None and trace.end.usage == result.usage

    judge = Counted(_judge_rule)
    judged = Orchestrator(
        experts,
        AllExperts(),
        JudgeRanking(CallableExpert("judge", judge, PRICED)),
        trace_dir=tmp_path,
    ).run(Task(prompt="What is 3 * 4?", answer_format=NUMBER))
    assert judged.steps[0].result is not None and judged.steps[0].result.answer == "12"
    judge_calls = [c for c in _calls(judged.trace_path) if c.role == "judge"]
    assert len(judge_calls) == 1 and judge.calls == 1
    assert judged.usage.calls == 3 and judged.steps[0].usage.calls == 3

    summary = _summary(tmp_path, capsys)
    assert summary["router"]["calls"] == 2
    assert summary["fuser"]["calls"] == 1
    assert summary["judge"]["calls"] == 1
    assert summary["a"]["calls"] == 2 and summary["b"]["calls"] == 2
    fused = [c.generation.cost for c in calls if c.role == "fuser"]
    assert summary["fuser"]["cost"] == pytest.approx(sum(fused)) and sum(fused) > 0


def test_calls_over_the_cost_budget_are_refused_before_they_are_made(tmp_path: Path) -> None:
    free = ExpertCard()
    # Even lowered to the 16-token floor a call costs 0.016: over a 0.01 ceiling.
    pricey = ExpertCard(cost_per_1k_output=1.0)
    router = Counted(_router_rule)
    policy = LLMRouter(CallableExpert("router", router, pricey), FixedPolicy(["a"]))
    experts = [
        CallableExpert("a", Counted(_solver("12")), free),
        CallableExpert("b", Counted(_solver("13")), free),
    ]
    orch = Orchestrator(experts, policy, trace_dir=tmp_path)
    result = orch.run(Task(prompt="What is 3 * 4?", budget=Budget(max_cost=0.01)))
    assert router.calls == 0  # refused before it was made
    routes = [r for r in load_run(result.trace_path or "").records if isinstance(r, RouteRecord)]
    fallback = routes[0].decision.meta["router_fallback"]
    assert fallback["reason"].startswith("router call refused: calling router (estimated 0.016")
    assert "would exceed max_cost 0.01" in fallback["reason"]
    assert result.steps[0].decision.experts == ["a"] and result.answer is not None
    assert {c.role for c in _calls(result.trace_path)} == {"candidate"}
    assert result.usage.calls == 1 and result.usage.cost == 0.0

    fuser = Counted(lambda prompt: "Final answer: 12")
    cheap = ExpertCard(cost_per_1k_output=0.01)
    experts = [
        CallableExpert("a", Counted(_solver("12")), cheap),
        CallableExpert("b", Counted(_solver("13")), cheap),
    ]
    aggregator = LLMFusion(CallableExpert("fuser", fuser, pricey), max_tokens=256)
    orch = Orchestrator(experts, AllExperts(), aggregator, trace_dir=tmp_path)
    result = orch.run(
        Task(prompt="What is 3 * 4?", answer_format=NUMBER, budget=Budget(max_cost=0.01))
    )
    step = result.steps[0]
    assert fuser.calls == 0 and step.result is not None
    assert "budget refused the fuser call" in step.result.meta["fallback"]
    assert step.result.answer in {"12", "13"} and step.result.usage.calls == 0
    assert {c.role for c in _calls(result.trace_path)} == {"candidate"}
    assert result.usage.calls == 2 and step.usage.calls == 2


def test_a_failing_router_is_a_failing_expert_in_health_and_replay(tmp_path: Path) -> None:
    def down(messages: list[Message]) -> str:
        raise ConnectionError("router endpoint down")

    seen: list[dict[str, tuple[int, int]]] = []

    class Watching(FixedPolicy):
        def decide(self, state: Any) -> Any:
            seen.append({v.name: (v.health.calls, v.health.errors) for v in state.experts})
            return super().decide(state)

    router = CallableExpert("router", down)
    experts = [CallableExpert("calc", _solver("5")), router]
    orch = Orchestrator(experts, LLMRouter(router, Watching(["calc"])), trace_dir=tmp_path)
    plan = [PlanStep(instruction="What is 2 + 3?"), PlanStep(instruction="And 1 + 4?")]
    result = orch.run(Task(plan=plan, answer_format=NUMBER))
    assert [s.result.answer for s in result.steps if s.result] == ["5", "5"]
    # Live: the second step was routed knowing the router failed its one call.
    assert seen[0]["router"] == (0, 0) and seen[1]["router"] == (1, 1)
    states = routing_states(load_run(result.trace_path or ""))
    replayed = {v.name: (v.health.calls, v.health.errors) for v in states[1].experts}
    assert replayed == seen[1]
    assert "router" not in [v.name for v in states[1].candidates]


def test_replayed_spend_includes_the_routers_calls(tmp_path: Path) -> None:
    spent: list[float] = []

    class Watching(FixedPolicy):
        def decide(self, state: Any) -> Any:
            spent.append(state.spent.cost)
            return super().decide(state)

    rambler = CallableExpert("router", Counted(lambda prompt: "let me think..."), PRICED)
    experts = [CallableExpert("calc", Counted(_solver("5")), PRICED)]
    orch = Orchestrator(experts, LLMRouter(rambler, Watching(["calc"])), trace_dir=tmp_path)
    plan = [PlanStep(instruction="What is 2 + 3?"), PlanStep(instruction="And 1 + 4?")]
    result = orch.run(Task(plan=plan, answer_format=NUMBER))
    # Step 2 was routed having spent step 1's call and the router's first call (not its second).
    assert spent[1] == pytest.approx(2 * 0.0006) and result.usage.cost == pytest.approx(4 * 0.0006)
    states = routing_states(load_run(result.trace_path or ""))
    assert states[1].spent.cost == pytest.approx(spent[1])


def test_a_call_record_without_a_role_reads_as_a_candidate() -> None:
    old = {
        "v": 2,
        "run_id": "r",
        "type": "call",
        "step": 0,
        "instruction": "x",
        "generation": {"expert": "a", "text": "1"},
    }
    record = record_adapter.validate_python(old)
    assert isinstance(record, CallRecord) and record.role == "candidate"


class _Probe(Aggregator):
    """Remembers the calls_left it was given, answers with the first candidate."""

    name = "probe"

    def __init__(self) -> None:
        self.calls_left: list[int] = []

    def combine(self, candidates: list[Generation], context: AggregationContext) -> StepResult:
        self.calls_left.append(context.calls_left)
        return StepResult(aggregator=self.name, text=candidates[0].text, answer=candidates[0].text)


def test_calls_left_counts_what_the_cost_budget_still_pays(tmp_path: Path) -> None:
    def priced(prompt: str) -> dict[str, Any]:
        return {"text": "7", "output_tokens": 10}

    cheap = ExpertCard(cost_per_1k_output=100.0)  # 10 tokens: 1.0 a call, estimated and spent
    dear = ExpertCard(cost_per_1k_output=1000.0)  # 10.0 a call
    experts = [CallableExpert("cheap", priced, cheap), CallableExpert("dear", priced, dear)]
    probe = _Probe()
    orch = Orchestrator(
        experts, FixedPolicy(["cheap"]), probe, trace_dir=tmp_path, defaults={"max_tokens": 10}
    )
    # 4.5 - 1.0 spent leaves 3.5: three more calls of the cheapest expert, not 15.
    orch.run(Task(prompt="q", budget=Budget(max_cost=4.5)))
    # A step restricted to the dear expert: 14.5 - 10.0 leaves no call of 10.0.
    plan = [PlanStep(instruction="q", experts=["dear"])]
    orch.run(Task(plan=plan, budget=Budget(max_cost=14.5)))
    # Without a cost budget, only the step's call limit counts.
    orch.run(Task(prompt="q", budget=Budget(max_calls_per_step=4)))
    assert probe.calls_left == [3, 0, 3]


def test_a_run_whose_experts_all_failed_says_no_expert_answered(tmp_path: Path) -> None:
    async def slow(prompt: str) -> str:
        import asyncio

        await asyncio.sleep(1.0)
        return "late"

    solo = Orchestrator(
        [CallableExpert("slow", slow, ExpertCard(timeout_s=0.05))],
        FixedPolicy(["slow"]),
        trace_dir=tmp_path,
    )
    result = solo.run("anything?")
    assert result.answer is None
    assert result.stop_reason == "no expert answered: slow: timeout"
    assert load_run(result.trace_path or "").end.stop_reason == result.stop_reason  # type: ignore[union-attr]

    def broken(prompt: str) -> str:
        raise RuntimeError("no")

    pair = Orchestrator(
        [CallableExpert("a", broken), CallableExpert("b", lambda p: "")],
        AllExperts(),
        trace_dir=tmp_path,
    )
    result = pair.run(Task(prompt="anything?", answer_format=NUMBER))
    assert result.answer is None
    assert result.stop_reason.startswith("no expert answered: a: RuntimeError, b: unparseable")

    fine = Orchestrator(
        [CallableExpert("ok", lambda p: "4")], FixedPolicy(["ok"]), trace_dir=tmp_path
    )
    assert fine.run("2 + 2?").stop_reason == "policy finished: open task answered"


def test_an_expert_that_routes_and_answers_wins_only_the_steps_it_answered(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # "a" is the router and a candidate: its routing calls must not count as steps it
    # answered (nor as winning ones) in the index, the summary or the OTel spans.
    def both(messages: list[Message]) -> dict[str, Any]:
        prompt = messages[-1].content
        if "No step has run yet" in prompt:
            return {"text": json.dumps({"action": "call", "experts": ["b"], "rationale": "b"})}
        if "action" in prompt and "experts" in prompt:
            return {"text": json.dumps({"action": "finish", "rationale": "answered"})}
        return {"text": "Final answer: 12"}

    a = CallableExpert("a", both)
    b = CallableExpert("b", Counted(_solver("12")))
    policy = LLMRouter(a, FixedPolicy(["b"]))
    result = Orchestrator([a, b], policy, trace_dir=tmp_path).run(
        Task(prompt="What is 3 * 4?", answer_format=NUMBER)
    )
    assert [g.expert for g in result.steps[0].generations] == ["b"]
    summary = _summary(tmp_path, capsys)
    assert summary["a"]["calls"] == 2 and summary["a"]["winning"] == 0
    assert summary["b"]["winning"] == 1 and summary["b"]["win_rate"] == 1.0
    from expertgraph.traces import TraceIndex
    from expertgraph.traces.otel import run_spans

    rows = TraceIndex(tmp_path).query("SELECT expert, role, in_winner FROM calls ORDER BY seq")
    assert [tuple(r) for r in rows] == [
        ("a", "router", 0),
        ("b", "candidate", 1),
        ("a", "router", 0),
    ]
    roles = [
        a["value"]["stringValue"]
        for span in run_spans(load_run(result.trace_path or ""))
        for a in span["attributes"]
        if a["key"] == "expertgraph.call.role"
    ]
    assert roles == ["router", "candidate", "router"]


def test_an_index_of_an_older_version_is_rebuilt_from_the_files(tmp_path: Path) -> None:
    import sqlite3

    from expertgraph.traces import TraceIndex

    experts = [CallableExpert("a", Counted(_solver("12")))]
    Orchestrator(experts, FixedPolicy(["a"]), trace_dir=tmp_path).run("What is 3 * 4?")
    index = TraceIndex(tmp_path)
    index.sync()
    # An index written before calls had a role: no such column, version 1.
    with sqlite3.connect(index.path) as conn:
        conn.execute("DROP TABLE calls")
        conn.execute("CREATE TABLE calls (run_id TEXT, seq INTEGER, expert TEXT)")
        conn.execute("UPDATE meta SET value='1' WHERE key='version'")
    fresh = TraceIndex(tmp_path)
    fresh.sync()
    rows = fresh.query("SELECT expert, role FROM calls")
    assert [tuple(r) for r in rows] == [("a", "candidate")]
