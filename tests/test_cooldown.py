"""Cooldowns shared by every run of a process: after N failures in a window an expert is
skipped by every policy until its cooldown ends, then one probe call decides. Against real
loopback servers that count the attempts they get."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from openai_server import OpenAIServer, Reply

from expertgraph.agents import APIExpert, CallableExpert, RetrySettings
from expertgraph.core.errors import ConfigError, NoExpertAvailable
from expertgraph.core.health import HEALTH, CooldownSettings
from expertgraph.core.types import ExpertCard, PlanStep, Task
from expertgraph.orchestrator import Orchestrator
from expertgraph.orchestrator.config.schema import parse_config
from expertgraph.policies import AllExperts, FixedPolicy
from expertgraph.traces import load_run
from expertgraph.traces.schema import CallRecord, RouteRecord

NO_RETRY = RetrySettings(max_attempts=1)
QUICK = CooldownSettings(allowed_fails=1, cooldown_time=0.6, window_s=30)  # 2 failures cool


pytestmark = pytest.mark.usefixtures("openai_key")


@pytest.fixture
def flaky() -> Iterator[OpenAIServer]:
    with OpenAIServer(default="flaky says 7") as srv:
        yield srv


@pytest.fixture
def steady() -> Iterator[OpenAIServer]:
    with OpenAIServer(default="steady says 7") as srv:
        yield srv


def api(name: str, srv: OpenAIServer, settings: CooldownSettings = QUICK) -> APIExpert:
    expert = APIExpert(
        name,
        "openai/loopback-model",
        api_base=srv.url + "/v1",
        retry=NO_RETRY,
        card=ExpertCard(timeout_s=5),
    )
    HEALTH.configure(expert, settings)
    return expert


def orchestrator(tmp_path: Path, *experts: APIExpert, fixed: str = "flaky") -> Orchestrator:
    return Orchestrator(list(experts), FixedPolicy([fixed]), trace_dir=tmp_path)


def test_a_failing_expert_cools_down_for_every_run_then_one_probe_decides(
    flaky: OpenAIServer, steady: OpenAIServer, tmp_path: Path
) -> None:
    flaky.script([(500, "down"), (500, "down")])
    a, b = api("flaky", flaky), api("steady", steady)
    orch = orchestrator(tmp_path, a, b)
    for _ in range(2):  # each run: flaky fails once, the step routes around it to steady
        result = orch.run("What is 3 + 4?")
        assert result.answer == "steady says 7"
    assert flaky.attempts == 2 and HEALTH.status(a).state == "cooling"

    # A new run, and a second orchestrator over the same experts: neither calls flaky.
    other = orchestrator(tmp_path / "other", a, b)
    for orch_ in (orch, other):
        result = orch_.run("What is 3 + 4?")
        assert result.answer == "steady says 7"
        assert result.steps[0].decision.experts == ["steady"]  # fixed fell back
        assert "next configured: steady" in result.steps[0].decision.rationale
    assert flaky.attempts == 2
    routes = [r for r in load_run(result.trace_path or "").records if isinstance(r, RouteRecord)]
    assert 0 < routes[0].decision.meta["cooling"]["flaky"] <= QUICK.cooldown_time

    time.sleep(QUICK.cooldown_time + 0.1)
    result = orch.run("What is 3 + 4?")  # the probe: flaky answers again
    assert result.answer == "flaky says 7" and flaky.attempts == 3
    status = HEALTH.status(a)
    assert status.state == "ok" and status.probes == 1 and status.cooldowns == 1


def test_a_failed_probe_cools_again_and_only_one_probe_runs_at_a_time(
    flaky: OpenAIServer, steady: OpenAIServer, tmp_path: Path
) -> None:
    flaky.script([(500, "down"), (500, "down")])
    a, b = api("flaky", flaky), api("steady", steady)
    orch = orchestrator(tmp_path, a, b)
    orch.run("q")
    orch.run("q")
    assert HEALTH.status(a).state == "cooling"
    time.sleep(QUICK.cooldown_time + 0.1)
    # The probe is slow and fails; runs started meanwhile must not call flaky.
    flaky.script([Reply(status=500, error_message="still down", delay_s=0.5)])

    async def many() -> list[str | None]:
        first = asyncio.create_task(orch.arun("q"))
        await asyncio.sleep(0.2)  # the probe is in flight
        rest = await asyncio.gather(*(orch.arun("q") for _ in range(4)))
        return [r.answer for r in [await first, *rest]]

    answers = asyncio.run(many())
    assert answers == ["steady says 7"] * 5
    assert flaky.attempts == 3  # two failures, then the one probe
    status = HEALTH.status(a)
    assert status.state == "cooling" and status.cooldowns == 2 and status.probes == 1


def test_every_expert_cooling_fails_the_run_at_once_naming_the_first_to_recover(
    flaky: OpenAIServer, steady: OpenAIServer, tmp_path: Path
) -> None:
    flaky.script([(500, "down")] * 2)
    steady.script([(500, "down")] * 2)
    slow = CooldownSettings(allowed_fails=1, cooldown_time=30, window_s=30)
    a, b = api("flaky", flaky, QUICK), api("steady", steady, slow)
    orch = Orchestrator([a, b], AllExperts(), trace_dir=tmp_path)
    for _ in range(2):
        assert orch.run("q").answer is None
    assert flaky.attempts == 2 and steady.attempts == 2
    started = time.perf_counter()
    with pytest.raises(NoExpertAvailable) as caught:
        orch.run("q")
    assert time.perf_counter() - started < QUICK.cooldown_time  # at once, no waiting
    assert flaky.attempts == 2 and steady.attempts == 2
    error = caught.value
    assert set(error.cooling) == {"flaky", "steady"}
    assert "the first, flaky, recovers in" in str(error)
    assert error.recovers_in_s <= QUICK.cooldown_time
    # The run's trace ends with the reason.
    traces = sorted(tmp_path.glob("*.jsonl"), key=lambda p: p.stat().st_mtime)
    end = load_run(str(traces[-1])).end
    assert end is not None and "NoExpertAvailable" in end.stop_reason


def test_the_fixed_policy_falls_back_inside_a_run_too(tmp_path: Path) -> None:
    calls: list[str] = []

    def dead(prompt: str) -> str:
        calls.append("dead")
        raise ConnectionError("dead upstream")

    alive = CallableExpert("alive", lambda p: "7")
    gone = CallableExpert("dead", dead)
    HEALTH.configure(gone, CooldownSettings(allowed_fails=0, cooldown_time=30))
    orch = Orchestrator([gone, alive], FixedPolicy(["dead"]), trace_dir=tmp_path)
    plan = [PlanStep(instruction=f"step {i}") for i in range(3)]
    result = orch.run(Task(plan=plan))
    assert [s.result.answer for s in result.steps if s.result] == ["7", "7", "7"]
    assert calls == ["dead"]  # once: then it cools, and fixed falls back to alive
    assert [s.decision.experts for s in result.steps] == [["dead"], ["alive"], ["alive"]]


def test_experts_of_the_same_name_in_two_orchestrators_do_not_share_health(
    flaky: OpenAIServer, steady: OpenAIServer, tmp_path: Path
) -> None:
    flaky.script([(500, "down"), (500, "down")])
    mine = api("x", flaky)
    theirs = api("x", steady)  # same name, another upstream
    for _ in range(2):
        Orchestrator([mine], FixedPolicy(["x"]), trace_dir=tmp_path).run("q")
    assert HEALTH.status(mine).state == "cooling"
    assert HEALTH.status(theirs).state == "ok"
    result = Orchestrator([theirs], FixedPolicy(["x"]), trace_dir=tmp_path).run("q")
    assert result.answer == "steady says 7"


def test_bad_requests_do_not_count_against_health(flaky: OpenAIServer, tmp_path: Path) -> None:
    flaky.script([(400, "bad request")] * 3)
    a = api("flaky", flaky)
    orch = orchestrator(tmp_path, a)
    for _ in range(3):
        orch.run("q")
    assert HEALTH.status(a).state == "ok" and flaky.attempts == 3


def test_cooldown_config_top_level_and_per_expert(tmp_path: Path) -> None:
    cfg = parse_config(
        {
            "experts": [
                {"name": "a", "kind": "callable", "callable": "json:dumps"},
                {
                    "name": "b",
                    "kind": "callable",
                    "callable": "json:dumps",
                    "cooldown": {"allowed_fails": 0, "cooldown_time": 2},
                },
            ],
            "policy": {"name": "fixed", "experts": ["a"]},
            "cooldown": {"allowed_fails": 5, "cooldown_time": 9, "window_s": 20},
            "trace": {"dir": str(tmp_path)},
        }
    )
    orch = Orchestrator.from_config(cfg)
    assert HEALTH.settings(orch.experts["a"]) == CooldownSettings(
        allowed_fails=5, cooldown_time=9, window_s=20
    )
    assert HEALTH.settings(orch.experts["b"]).allowed_fails == 0
    with pytest.raises(ConfigError, match="cooldown.allowed_fails"):
        parse_config(
            {
                "experts": [{"name": "a", "kind": "callable", "callable": "json:dumps"}],
                "cooldown": {"allowed_fails": -1},
            }
        )
    assert json.dumps  # the callable the config names


def test_health_is_visible_in_the_server(
    flaky: OpenAIServer, steady: OpenAIServer, tmp_path: Path
) -> None:
    from expertgraph.orchestrator.integrations.catalog import ModelCatalog
    from expertgraph.orchestrator.integrations.server import ServerThread, create_app

    flaky.script([(500, "down"), (500, "down")])
    a, b = api("flaky", flaky), api("steady", steady)
    orch = orchestrator(tmp_path, a, b)
    app = create_app(ModelCatalog.from_orchestrators({"main": orch}))
    with ServerThread(app) as srv:
        assert httpx.get(srv.url + "/health").json() == {"status": "ok"}
        for _ in range(2):
            orch.run("q")
        response = httpx.get(srv.url + "/health")
        body = response.json()
    assert response.status_code == 200  # still alive: degraded, not down
    assert body["status"] == "degraded" and body["cooling"] == 1 and body["experts"] == 2
    assert 0 < body["recovers_in_s"] <= QUICK.cooldown_time
    assert "flaky" not in json.dumps(body)  # liveness names no expert


def test_the_server_answers_503_with_retry_after_when_every_expert_is_cooling(
    flaky: OpenAIServer, tmp_path: Path
) -> None:
    from expertgraph.orchestrator.integrations.catalog import ModelCatalog
    from expertgraph.orchestrator.integrations.server import ServerThread, create_app

    flaky.script([(500, "down")] * 2)
    slow = CooldownSettings(allowed_fails=1, cooldown_time=30, window_s=30)
    orch = orchestrator(tmp_path, api("flaky", flaky, slow))
    app = create_app(ModelCatalog.from_orchestrators({"main": orch}))
    request = {"model": "main", "messages": [{"role": "user", "content": "q"}]}
    with ServerThread(app) as srv:
        for _ in range(2):
            orch.run("q")
        reply = httpx.post(srv.url + "/v1/chat/completions", json=request, timeout=30)
        streamed = httpx.post(
            srv.url + "/v1/chat/completions", json={**request, "stream": True}, timeout=30
        )
    assert reply.status_code == 503, reply.text
    assert reply.json()["error"]["code"] == "no_expert_available"
    assert 1 <= int(reply.headers["Retry-After"]) <= 30
    assert '"no_expert_available"' in streamed.text
    assert flaky.attempts == 2  # neither request reached the cooling expert


def test_the_experts_command_shows_each_experts_health(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from expertgraph.orchestrator.cli import main

    config = tmp_path / "eg.yaml"
    config.write_text(
        "experts:\n"
        "  - {name: ok, kind: callable, callable: 'builtins:len'}\n"
        "  - {name: broken, kind: callable, callable: 'json:loads',\n"
        "     cooldown: {allowed_fails: 0, cooldown_time: 30}}\n"
        "cooldown: {allowed_fails: 4, window_s: 20}\n"
    )
    code = main(["experts", "--config", str(config), "--json", "--probe", "not json"])
    assert code == 1  # json.loads fails on the probe
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)["experts"]}
    assert rows["ok"]["health"] == "ok (0 failures in 20s, 4 allowed)"
    assert rows["broken"]["health"].startswith("cooling 30s more; last error:")


def test_a_cooling_router_is_not_called_and_the_skip_is_in_the_trace(
    flaky: OpenAIServer, steady: OpenAIServer, tmp_path: Path
) -> None:
    from expertgraph.policies import LLMRouter

    flaky.script([(500, "down"), (500, "down")])
    router, b = api("router", flaky), api("steady", steady)
    orch = Orchestrator([b], LLMRouter(router, FixedPolicy(["steady"])), trace_dir=tmp_path)
    for _ in range(2):
        assert orch.run("q").answer == "steady says 7"  # the router failed: its fallback
    assert flaky.attempts == 2
    result = orch.run("q")
    assert result.answer == "steady says 7" and flaky.attempts == 2
    skipped = [
        r
        for r in load_run(result.trace_path or "").records
        if isinstance(r, CallRecord) and r.role == "router"
    ]
    assert skipped and all(r.generation.attempts == 0 for r in skipped)
    error = skipped[0].generation.error
    assert error is not None and error.type == "cooling"
    assert error.message.startswith("router not called: cooling down for")
