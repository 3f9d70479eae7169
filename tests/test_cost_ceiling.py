"""The hard cost ceiling: every call (candidate, router, fuser, judge) is admitted by its
worst case priced from LiteLLM's price map, lowered to fit or skipped; an upstream that
reports more than the worst case stops the run. Against real loopback servers that report
usage (one of them lies)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from openai_server import OpenAIServer, RecordedRequest, Reply

from expertgraph.agents import APIExpert, RetrySettings
from expertgraph.core.types import Budget, ExpertCard, PlanStep, Task
from expertgraph.orchestrator import Orchestrator
from expertgraph.policies import AllExperts, FixedPolicy, JudgeRanking, LLMFusion, LLMRouter
from expertgraph.traces import load_run
from expertgraph.traces.schema import AggregateRecord, CallRecord

MODEL = "openai/gpt-4o-mini"  # in LiteLLM's bundled price map: pricing "auto" charges money
NO_RETRY = RetrySettings(max_attempts=1)
NUMBER = {"kind": "number"}


pytestmark = pytest.mark.usefixtures("openai_key")


def honest(text: Callable[[RecordedRequest], str]) -> Callable[[RecordedRequest], Reply]:
    """A model played by rule that uses every output token it is allowed (an honest worst
    case: the reported completion is ``max_tokens`` long)."""

    def handle(request: RecordedRequest) -> Reply:
        return Reply(text=text(request), completion_tokens=int(request.body["max_tokens"]))

    return handle


def solver(answer: str) -> Callable[[RecordedRequest], Reply]:
    return honest(lambda r: f"I worked it out. Final answer: {answer}")


@pytest.fixture
def servers() -> Iterator[dict[str, OpenAIServer]]:
    started: dict[str, OpenAIServer] = {}
    try:
        for name in ("a", "b", "c"):
            started[name] = OpenAIServer(solver("12")).start()
        yield started
    finally:
        for srv in started.values():
            srv.stop()


def api(name: str, srv: OpenAIServer) -> APIExpert:
    # No card price: before the ceiling, such an expert was estimated at 0.
    return APIExpert(
        name, MODEL, api_base=srv.url + "/v1", retry=NO_RETRY, card=ExpertCard(timeout_s=10)
    )


def max_tokens_sent(srv: OpenAIServer) -> list[int]:
    return [int(r.body["max_tokens"]) for r in srv.requests]


def calls(path: str | None) -> list[CallRecord]:
    return [r for r in load_run(path or "").records if isinstance(r, CallRecord)]


def test_auto_priced_calls_are_lowered_then_skipped_and_spend_stays_under_max_cost(
    servers: dict[str, OpenAIServer], tmp_path: Path
) -> None:
    experts = [api("a", servers["a"])]
    plan = [PlanStep(instruction=f"What is {i} + 12 - {i}?") for i in range(6)]
    orch = Orchestrator(experts, FixedPolicy(["a"]), trace_dir=tmp_path)
    full = orch.run(Task(plan=plan, answer_format=NUMBER))
    one_call = full.usage.cost / 6
    assert one_call > 0  # LiteLLM's price map charged real money

    servers["a"].reset()
    ceiling = 2.5 * one_call
    result = orch.run(Task(plan=plan, answer_format=NUMBER, budget=Budget(max_cost=ceiling)))
    assert result.usage.cost <= ceiling
    sent = max_tokens_sent(servers["a"])
    # Two calls at the full 128 tokens, then one lowered to what was left, then none.
    assert sent[:2] == [128, 128] and len(sent) == 3 and 16 <= sent[2] < 128
    assert result.stop_reason.startswith("cost budget: calling a would exceed max_cost")
    records = load_run(result.trace_path or "").records
    notes = [
        n
        for r in records
        if isinstance(r, AggregateRecord)
        for n in r.result.meta.get("budget", [])
    ]
    assert any("max_tokens lowered from 128 to" in n for n in notes)


def test_concurrent_candidates_share_the_budget_left(
    servers: dict[str, OpenAIServer], tmp_path: Path
) -> None:
    experts = [api(n, servers[n]) for n in ("a", "b", "c")]
    orch = Orchestrator(experts, AllExperts(), trace_dir=tmp_path)
    full = orch.run(Task(prompt="What is 3 * 4?", answer_format=NUMBER))
    per_call = full.usage.cost / 3
    for srv in servers.values():
        srv.reset()
    ceiling = 1.5 * per_call
    result = orch.run(
        Task(prompt="What is 3 * 4?", answer_format=NUMBER, budget=Budget(max_cost=ceiling))
    )
    assert result.usage.cost <= ceiling
    sent = sorted(t for srv in servers.values() for t in max_tokens_sent(srv))
    assert sent[-1] == 128 and len(sent) >= 2 and sent[0] < 128  # the rest was lowered
    assert result.answer is not None and "12" in result.answer


def test_a_server_that_reports_more_than_the_worst_case_stops_the_run(tmp_path: Path) -> None:
    def liar(request: RecordedRequest) -> Reply:
        return Reply(text="Final answer: 12", prompt_tokens=2_000_000)  # 0.30 at 0.15/M

    with OpenAIServer(liar) as srv:
        orch = Orchestrator([api("liar", srv)], FixedPolicy(["liar"]), trace_dir=tmp_path)
        plan = [PlanStep(instruction=f"What is {i} + 12 - {i}?") for i in range(4)]
        ceiling = 0.01
        result = orch.run(Task(plan=plan, answer_format=NUMBER, budget=Budget(max_cost=ceiling)))
        assert srv.attempts == 1  # nothing was called after the overrun
    assert result.stop_reason.startswith("budget_overrun: liar reported usage costing 0.3")
    made = calls(result.trace_path)
    assert len(made) == 1
    # Spend over the ceiling is at most that one overrun.
    assert result.usage.cost - ceiling <= made[0].generation.cost
    trace = load_run(result.trace_path or "")
    assert trace.end is not None and trace.end.stop_reason == result.stop_reason


def _router_rule(request: RecordedRequest) -> str:
    if "No step has run yet" in request.last_user_text:
        return json.dumps({"action": "call", "experts": ["a", "b"], "rationale": "both"})
    return json.dumps({"action": "finish", "rationale": "answered"})


def _judge_rule(request: RecordedRequest) -> str:
    prompt = request.last_user_text
    ids = re.findall(r'<candidate id="(\d+)">', prompt)
    return json.dumps({"ranking": ids})


@pytest.mark.parametrize("share", [0.15, 0.4, 0.7, 0.95])
def test_router_fuser_and_judge_calls_are_inside_the_ceiling(
    servers: dict[str, OpenAIServer], tmp_path: Path, share: float
) -> None:
    with (
        OpenAIServer(honest(_router_rule)) as router_srv,
        OpenAIServer(honest(lambda r: "Final answer: 12")) as fuser_srv,
        OpenAIServer(honest(_judge_rule)) as judge_srv,
    ):
        servers["b"].handler = solver("13")  # they disagree: fusion and judging have work
        candidates = [api("a", servers["a"]), api("b", servers["b"])]
        router = LLMRouter(api("router", router_srv), FixedPolicy(["a"]), top_k=2)
        setups = {
            "fusion": (router, LLMFusion(api("fuser", fuser_srv), max_tokens=256)),
            "judge": (AllExperts(), JudgeRanking(api("judge", judge_srv))),
        }
        for label, (policy, aggregator) in setups.items():
            orch = Orchestrator(candidates, policy, aggregator, trace_dir=tmp_path / label)
            task = Task(prompt="What is 3 * 4?", answer_format=NUMBER)
            full = orch.run(task)
            roles = {c.role for c in calls(full.trace_path)}
            assert roles >= ({"router", "fuser"} if label == "fusion" else {"judge"})
            ceiling = share * full.usage.cost
            capped = orch.run(task.model_copy(update={"budget": Budget(max_cost=ceiling)}))
            assert capped.usage.cost <= ceiling, (label, capped.stop_reason)
            assert capped.usage.cost < full.usage.cost
