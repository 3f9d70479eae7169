"""``expertgraph serve`` with tools: the official ``openai`` SDK runs a client-driven tool loop.

The experts are callables that propose calls by rule (if tools are offered and no tool result
is in the messages, call the weather tool for each city asked about; else answer with the
results), served on a real loopback server; the client executes the tools itself.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from expertgraph.agents import CallableExpert
from expertgraph.core import Message, ToolSpec
from expertgraph.core.tools import NamedToolChoice, ToolChoice
from expertgraph.orchestrator import Orchestrator
from expertgraph.orchestrator.integrations.catalog import ModelCatalog
from expertgraph.orchestrator.integrations.server import (
    SESSION_HEADER,
    TRACE_HEADER,
    ServerThread,
    create_app,
)
from expertgraph.policies import AllExperts, MajorityVote
from expertgraph.traces.schema import CallRecord, RunStart
from expertgraph.traces.store import iter_records

CITIES = ("Lima", "Oslo")
WEATHER = {"Lima": "sunny, 24C", "Oslo": "snow, -3C"}
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city now.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "get_time",
            "description": "The local time in a city.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    },
]


def agent(
    messages: list[Message],
    tools: list[ToolSpec] | None = None,
    tool_choice: ToolChoice | None = None,
    parallel_tool_calls: bool | None = None,
) -> dict[str, Any]:
    """Calls the weather tool (or the named tool) once per city asked about, then answers."""
    results = [m.content for m in messages if m.role == "tool"]
    if results:
        return {"text": "Weather: " + "; ".join(results) + "."}
    if not tools:
        return {"text": "I cannot look that up."}
    question = next(m.content for m in reversed(messages) if m.role == "user")
    cities = [c for c in CITIES if c in question]
    if parallel_tool_calls is False:
        cities = cities[:1]
    name = tool_choice.name if isinstance(tool_choice, NamedToolChoice) else "get_weather"
    return {"text": "", "tool_calls": [{"name": name, "arguments": {"city": c}} for c in cities]}


@pytest.fixture(scope="module")
def traces(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("serve-tools-traces")


@pytest.fixture(scope="module")
def server(traces: Path) -> Iterator[ServerThread]:
    experts = [CallableExpert("a", agent), CallableExpert("b", agent)]
    orch = Orchestrator(experts, AllExperts(), MajorityVote(), trace_dir=traces, name="agent")
    with ServerThread(create_app(ModelCatalog.from_orchestrators(orch))) as running:
        yield running


def run_start(traces: Path, run_id: str) -> RunStart:
    return next(r for r in iter_records(traces / f"{run_id}.jsonl") if isinstance(r, RunStart))


def execute(call: Any) -> dict[str, Any]:
    """The client's side: run the tool the server asked for, as a ``tool`` message."""
    assert call.type == "function" and call.function.name == "get_weather"
    city = json.loads(call.function.arguments)["city"]
    return {"role": "tool", "tool_call_id": call.id, "content": WEATHER[city]}


def test_openai_sdk_runs_a_two_turn_tool_loop(server: ServerThread, traces: Path) -> None:
    import openai

    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    messages: list[Any] = [{"role": "user", "content": "What is the weather in Lima?"}]
    raw = client.chat.completions.with_raw_response.create(
        model="expertgraph/agent",
        messages=messages,
        tools=TOOLS,  # type: ignore[arg-type]
    )
    first = raw.parse()
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    (call,) = choice.message.tool_calls or []
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {
        "city": "Lima"
    }
    assert first.model == "expertgraph/agent:a+b"
    # The experts were offered the tools with the choice and parallel flag the request set.
    trace = list(iter_records(traces / f"{raw.headers[TRACE_HEADER]}.jsonl"))
    assert [r.generation.tool_calls[0].name for r in trace if isinstance(r, CallRecord)] == [
        "get_weather",
        "get_weather",
    ]

    messages += [choice.message.model_dump(exclude_none=True), execute(call)]
    second = client.chat.completions.create(
        model="expertgraph/agent",
        messages=messages,
        tools=TOOLS,  # type: ignore[arg-type]
    )
    assert second.choices[0].finish_reason == "stop"
    assert second.choices[0].message.content == "Weather: sunny, 24C."
    assert not second.choices[0].message.tool_calls


def test_openai_sdk_streams_the_tool_loop(server: ServerThread) -> None:
    import openai

    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    messages: list[Any] = [{"role": "user", "content": "Weather in Lima and in Oslo?"}]
    chunks = list(
        client.chat.completions.create(
            model="expertgraph/agent",
            messages=messages,
            tools=TOOLS,  # type: ignore[arg-type]
            stream=True,
        )
    )
    # OpenAI's chunk format: per call a delta with index, id, type and name, then arguments.
    deltas = [d for c in chunks if c.choices for d in c.choices[0].delta.tool_calls or []]
    assert [(d.index, d.id is not None, d.type) for d in deltas] == [
        (0, True, "function"),
        (0, False, None),
        (1, True, "function"),
        (1, False, None),
    ]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    calls: dict[int, dict[str, str]] = {}
    for d in deltas:
        entry = calls.setdefault(d.index, {"id": "", "name": "", "arguments": ""})
        entry["id"] += d.id or ""
        entry["name"] += (d.function and d.function.name) or ""
        entry["arguments"] += (d.function and d.function.arguments) or ""
    assert [(c["name"], json.loads(c["arguments"])) for c in calls.values()] == [
        ("get_weather", {"city": "Lima"}),
        ("get_weather", {"city": "Oslo"}),
    ]
    assistant = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": c["id"],
                "type": "function",
                "function": {"name": c["name"], "arguments": c["arguments"]},
            }
            for c in calls.values()
        ],
    }
    city = {c["id"]: json.loads(c["arguments"])["city"] for c in calls.values()}
    results = [{"role": "tool", "tool_call_id": i, "content": WEATHER[city[i]]} for i in city]
    stream = client.chat.completions.create(
        model="expertgraph/agent",
        messages=[*messages, assistant, *results],
        tools=TOOLS,  # type: ignore[arg-type]
        stream=True,
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Weather: sunny, 24C; snow, -3C."
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_tool_choice_and_parallel_tool_calls_reach_the_experts(server: ServerThread) -> None:
    question = [{"role": "user", "content": "Weather in Lima and in Oslo?"}]
    with httpx.Client(base_url=server.url, timeout=30) as http:

        def ask(**extra: Any) -> dict[str, Any]:
            body = {"model": "expertgraph/agent", "messages": question, "tools": TOOLS, **extra}
            response = http.post("/v1/chat/completions", json=body)
            assert response.status_code == 200, response.text
            return response.json()["choices"][0]

        named = ask(tool_choice={"type": "function", "function": {"name": "get_time"}})
        assert [c["function"]["name"] for c in named["message"]["tool_calls"]] == ["get_time"] * 2
        single = ask(parallel_tool_calls=False)
        assert len(single["message"]["tool_calls"]) == 1
        none = ask(tool_choice="none")
        assert none["finish_reason"] == "stop"
        assert none["message"] == {
            "role": "assistant",
            "content": "I cannot look that up.",
            "refusal": None,
        }


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
        ({"tools": None, "tool_choice": "required"}, "tool_choice"),
        ({"tool_choice": {"type": "function"}}, "tool_choice"),
        ({"tool_choice": "sometimes"}, "tool_choice"),
        ({"tools": [{"type": "function"}]}, "tools.0.function"),
        (
            {"tools": [{"type": "function", "function": {"name": "bad name"}}]},
            "tools.0.function.name",
        ),
        ({"tools": [{"type": "retrieval", "function": {"name": "x"}}]}, "tools.0.type"),
        (
            {
                "tools": [
                    {
                        "type": "function",
                        "function": {"name": "x", "parameters": {"type": "string"}},
                    }
                ]
            },
            "tools.0.function.parameters",
        ),
        ({"tools": [TOOLS[0], TOOLS[0]]}, "tools"),
        ({"parallel_tool_calls": "yes"}, "parallel_tool_calls"),
        ({"metadata": {"session_id": 7}}, "metadata.session_id"),
    ],
)
def test_bad_tools_get_400_naming_the_field(
    server: ServerThread, extra: dict[str, Any], param: str
) -> None:
    body = {
        "model": "expertgraph/agent",
        "messages": [{"role": "user", "content": "Weather in Lima?"}],
        "tools": TOOLS,
        **extra,
    }
    response = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=30)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param, error
    assert error["type"] == "invalid_request_error"


def test_bad_tool_calls_in_the_history_get_400(server: ServerThread) -> None:
    body = {
        "model": "expertgraph/agent",
        "messages": [
            {"role": "user", "content": "Weather in Lima?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"id": "c1", "type": "function"}],
            },
        ],
    }
    response = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=30)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "messages.1.tool_calls.0.function"


@pytest.mark.parametrize(
    ("headers", "extra", "session"),
    [
        ({SESSION_HEADER: "conv-header"}, {"user": "someone"}, "conv-header"),
        ({}, {"user": "conv-user", "metadata": {"session_id": "other"}}, "conv-user"),
        ({}, {"metadata": {"session_id": "conv-meta"}}, "conv-meta"),
        ({}, {}, None),
    ],
)
def test_the_session_id_lands_in_the_trace(
    server: ServerThread,
    traces: Path,
    headers: dict[str, str],
    extra: dict[str, Any],
    session: str | None,
) -> None:
    body = {
        "model": "expertgraph/agent",
        "messages": [{"role": "user", "content": "hello"}],
        **extra,
    }
    response = httpx.post(
        server.url + "/v1/chat/completions", json=body, headers=headers, timeout=30
    )
    assert response.status_code == 200, response.text
    start = run_start(traces, response.headers[TRACE_HEADER])
    assert start.task.metadata.get("session") == session


def test_traces_summary_shows_one_sessions_runs(
    server: ServerThread, traces: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from expertgraph.orchestrator.cli import main

    def ask(session: str) -> str:
        response = httpx.post(
            server.url + "/v1/chat/completions",
            json={"model": "expertgraph/agent", "messages": [{"role": "user", "content": "hi"}]},
            headers={SESSION_HEADER: session},
            timeout=30,
        )
        assert response.status_code == 200, response.text
        return response.headers[TRACE_HEADER]

    mine = {ask("summary-session"), ask("summary-session")}
    ask("another-session")
    capsys.readouterr()
    assert main(["traces", "summary", str(traces), "--session", "summary-session", "--json"]) == 0
    tables = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert tables["runs"] == len(mine) == 2
    assert {row["expert"]: row["calls"] for row in tables["experts"]} == {"a": 2, "b": 2}
    capsys.readouterr()
    assert main(["traces", "summary", str(traces), "--session", "nobody", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["runs"] == 0


def test_langchain_chat_openai_runs_the_tool_loop_against_the_server(server: ServerThread) -> None:
    from langchain_core.messages import HumanMessage, ToolMessage
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(
        model="expertgraph/agent", base_url=server.url + "/v1", api_key="unused", max_retries=0
    ).bind_tools([TOOLS[0]])
    question = HumanMessage("Weather in Oslo?")
    first = llm.invoke([question])
    assert [(c["name"], c["args"]) for c in first.tool_calls] == [("get_weather", {"city": "Oslo"})]
    chunks = list(llm.stream([question]))
    full = chunks[0]
    for chunk in chunks[1:]:
        full = full + chunk  # type: ignore[assignment]
    assert [(c["name"], c["args"]) for c in full.tool_calls] == [("get_weather", {"city": "Oslo"})]
    result = ToolMessage(WEATHER["Oslo"], tool_call_id=first.tool_calls[0]["id"])
    final = llm.invoke([question, first, result])
    assert final.content == "Weather: snow, -3C." and not final.tool_calls
