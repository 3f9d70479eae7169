"""``ChatExpertGraph``: LangChain's standard chat-model test suites, then chains, agents, structure.

Standard suites (``langchain-tests``) run against live orchestrators of instant callable
experts (:func:`agent`: when tools are offered and no result came back yet, it calls the tool
the question names, or the forced one, with arguments read from the question; else
``serve_experts.reply``: JSON when asked for it, else an echo). Tool calling is on
(``has_tool_calling``, ``has_tool_choice``) and structured output goes through function
calling. Tests the suites skip here, and why:

* image, PDF, audio inputs, image/PDF tool messages and Anthropic-style inputs: experts take
  text messages only.
* ``test_stream_time`` (needs VCR cassettes of HTTP traffic; there is none, runs are in process)
  and ``test_serdes`` (not serialisable: the model holds live orchestrators).
* ``test_init_from_env``: nothing is read from the environment.
"""

from __future__ import annotations

import asyncio
import json
import re
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.tools import tool
from langchain_tests.integration_tests import ChatModelIntegrationTests
from langchain_tests.unit_tests import ChatModelUnitTests
from pydantic import BaseModel
from serve_experts import reply, write_config

from expertgraph.agents.callable import CallableExpert
from expertgraph.core.errors import NoAnswerError
from expertgraph.core.tools import NamedToolChoice, ToolChoice, ToolSpec
from expertgraph.core.types import Message
from expertgraph.orchestrator import Orchestrator
from expertgraph.orchestrator.integrations.catalog import ModelCatalog
from expertgraph.orchestrator.integrations.langchain import ChatExpertGraph
from expertgraph.policies.routing.fixed import AllExperts
from expertgraph.traces.schema import CallRecord, RunStart
from expertgraph.traces.store import iter_records

# Class-level properties of the standard suites cannot use fixtures: the configs are written
# once at import into a temporary folder (traces go there too).
_ROOT = Path(tempfile.mkdtemp(prefix="expertgraph-langchain-"))
TRACES = _ROOT / "traces"
MAIN = write_config(_ROOT, "main", {"reply_a": "reply", "reply_b": "reply"}, trace_dir=TRACES)
SLOW = write_config(_ROOT, "slowpoke", {"slow": "slow"}, trace_dir=TRACES)
ECHO = write_config(_ROOT, "textonly", {"echo": "echo"}, trace_dir=TRACES)
SEEN = write_config(_ROOT, "seen", {"seen": "params_seen"}, trace_dir=TRACES)


def _value(
    schema: dict[str, Any], defs: dict[str, Any], name: str, text: str, ints: list[int]
) -> Any:
    """A value for one argument, read from the question where it can be."""
    if "$ref" in schema:
        return _value(defs[schema["$ref"].rsplit("/", 1)[-1]], defs, name, text, ints)
    for key in ("anyOf", "oneOf", "allOf"):
        if key in schema:
            options = [s for s in schema[key] if s.get("type") != "null"] or schema[key]
            return _value(options[0], defs, name, text, ints)
    if "enum" in schema:
        return schema["enum"][0]
    kind = schema.get("type", "string")
    if kind == "object":
        props = schema.get("properties", {})
        return {k: _value(v, defs, k, text, ints) for k, v in props.items()}
    if kind == "array":
        return [_value(schema.get("items", {}), defs, name, text, ints)]
    if kind in ("integer", "number"):
        return ints.pop(0) if ints else 3
    if kind == "boolean":
        return True
    quoted = re.search(r"'([^']+)'", text)
    return quoted.group(1) if quoted else f"{text[:40]} {name}".strip()


def agent(
    messages: list[Message],
    tools: list[ToolSpec] | None = None,
    tool_choice: ToolChoice | None = None,
) -> dict[str, Any]:
    """Calls the tool the question names (or the forced one) until a result is back; then, or
    without tools, :func:`serve_experts.reply`."""
    last_user = max(i for i, m in enumerate(messages) if m.role == "user")
    answered = any(m.role == "tool" for m in messages[last_user:])
    if not tools or tool_choice == "none" or answered:
        return reply(messages)
    text = messages[last_user].content
    if isinstance(tool_choice, NamedToolChoice):
        spec = next(t for t in tools if t.name == tool_choice.name)
    else:
        named = [t for t in sorted(tools, key=lambda t: -len(t.name)) if t.name in text] or [
            t for t in tools if any(len(w) > 3 and w in text.lower() for w in t.name.split("_"))
        ]
        spec = named[0] if named else (tools[0] if tool_choice == "required" else None)
    if spec is None:
        return reply(messages)
    after = text.split(spec.name, 1)[-1] if spec.name in text else text
    ints = [int(n) for n in re.findall(r"-?\d+", after)]
    args = _value(spec.parameters, spec.parameters.get("$defs", {}), spec.name, text, ints)
    return {
        "text": "",
        "tool_calls": [{"name": spec.name, "arguments": args}],
        "input_tokens": 5,
        "output_tokens": 3,
    }


def _served(name: str, *experts: str) -> Orchestrator:
    return Orchestrator(
        [CallableExpert(e, agent) for e in experts], AllExperts(), trace_dir=TRACES, name=name
    )


CATALOG = ModelCatalog.from_orchestrators(
    [_served("main", "reply_a", "reply_b"), _served("second", "single")]
)
PARAMS: dict[str, Any] = {"orchestrator": CATALOG, "model": "expertgraph/main"}


class TestChatExpertGraphUnit(ChatModelUnitTests):
    @property
    def chat_model_class(self) -> type[BaseChatModel]:
        return ChatExpertGraph

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return dict(PARAMS)

    @property
    def standard_chat_model_params(self) -> dict[str, Any]:
        # No api_key: runs are in process; unknown arguments are refused (extra="forbid").
        params = super().standard_chat_model_params
        params.pop("api_key")
        return params

    @property
    def model_override_value(self) -> str:
        return "expertgraph/second"

    @property
    def supports_json_mode(self) -> bool:
        return True

    @property
    def has_tool_calling(self) -> bool:
        return True

    @property
    def has_tool_choice(self) -> bool:
        return True

    @property
    def structured_output_kwargs(self) -> dict[str, Any]:
        # Structured output through a forced tool call; json_schema and json_mode are
        # checked below (test_structured_output_methods).
        return {"method": "function_calling"}


class TestChatExpertGraphIntegration(ChatModelIntegrationTests):
    @property
    def chat_model_class(self) -> type[BaseChatModel]:
        return ChatExpertGraph

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return dict(PARAMS)

    @property
    def model_override_value(self) -> str:
        return "expertgraph/second"

    @property
    def supports_json_mode(self) -> bool:
        return True

    @property
    def has_tool_calling(self) -> bool:
        return True

    @property
    def has_tool_choice(self) -> bool:
        return True

    @property
    def structured_output_kwargs(self) -> dict[str, Any]:
        # Structured output through a forced tool call; json_schema and json_mode are
        # checked below (test_structured_output_methods).
        return {"method": "function_calling"}


# ---- beyond the standard suites --------------------------------------------------------------


def _llm(**extra: Any) -> ChatExpertGraph:
    return ChatExpertGraph(**{**PARAMS, **extra})


def test_metadata_names_experts_and_usage_matches_trace() -> None:
    message = _llm().invoke("hello there")
    assert message.content == "echo: hello there"
    meta = message.response_metadata
    assert meta["model_name"] == "expertgraph/main:reply_a+reply_b"
    assert meta["experts"] == ["reply_a", "reply_b"]
    calls = [r for r in iter_records(meta["trace_path"]) if isinstance(r, CallRecord)]
    assert len(calls) == 2
    assert message.usage_metadata == {
        "input_tokens": sum(c.generation.input_tokens for c in calls),
        "output_tokens": sum(c.generation.output_tokens for c in calls),
        "total_tokens": sum(c.generation.input_tokens + c.generation.output_tokens for c in calls),
    }


def test_chain_with_prompt_and_parser() -> None:
    prompt = ChatPromptTemplate.from_messages(
        [("system", "Be brief."), ("human", "Tell me about {topic}")]
    )
    chain = prompt | _llm() | StrOutputParser()
    assert chain.invoke({"topic": "owls"}) == "echo: Tell me about owls"
    assert chain.batch([{"topic": "a"}, {"topic": "b"}]) == [
        "echo: Tell me about a",
        "echo: Tell me about b",
    ]


class Capital(BaseModel):
    country: str
    city: str


@pytest.mark.parametrize("method", ["json_schema", "json_mode", "function_calling"])
def test_structured_output_methods(method: str) -> None:
    result = _llm().with_structured_output(Capital, method=method).invoke("France")
    assert isinstance(result, Capital) and result.country.startswith("France")


def test_structured_output_include_raw() -> None:
    out = _llm().with_structured_output(Capital, include_raw=True).invoke("Peru")
    assert out["parsing_error"] is None
    assert isinstance(out["parsed"], Capital)
    assert isinstance(out["raw"], AIMessage) and out["raw"].response_metadata["run_id"]


def test_structured_output_from_text_only_experts_raises_with_run_id() -> None:
    # The echo expert never writes JSON: no candidate has an answer in the asked format.
    llm = ChatExpertGraph(config=str(ECHO), aliases=False)
    with pytest.raises(NoAnswerError, match=r"no expert produced an answer \(run \d{8}T"):
        llm.with_structured_output(Capital).invoke("Peru")


# langchain.agents.create_agent (its successor) is in the `langchain` package, not installed here.
@pytest.mark.filterwarnings("ignore:create_react_agent has been moved")
def test_agent_with_structured_response() -> None:
    from langgraph.prebuilt import create_react_agent

    agent = create_react_agent(_llm(), tools=[], response_format=Capital)
    state = agent.invoke({"messages": [HumanMessage("Chile")]})
    assert state["messages"][-1].content == "echo: Chile"
    assert isinstance(state["structured_response"], Capital)


def test_messages_roles_and_model_override() -> None:
    llm = _llm()
    message = llm.invoke(
        [
            SystemMessage("sys"),
            HumanMessage("first"),
            AIMessage("ok"),
            HumanMessage("second", name="bob"),
        ],
        model="expertgraph/second",
    )
    assert message.content == "echo: second"
    assert message.response_metadata["model_name"] == "expertgraph/second:single"


def test_call_params_are_read_like_an_openai_request() -> None:
    # One rule for every adapter: max_completion_tokens wins over max_tokens, a call's params
    # over the model's, and the request's user lands in the trace.
    llm = ChatExpertGraph(config=str(SEEN), aliases=False, max_tokens=50, temperature=0.2)
    message = llm.invoke(
        "x", stop=["\n\n"], seed=5, max_completion_tokens=7, temperature=0.4, user="ann"
    )
    seen = json.loads(str(message.content))
    assert {k: seen[k] for k in ("max_tokens", "seed", "stop", "temperature")} == {
        "max_tokens": 7,
        "seed": 5,
        "stop": ["\n\n"],
        "temperature": 0.4,
    }
    start = next(iter(iter_records(message.response_metadata["trace_path"])))
    assert isinstance(start, RunStart)
    assert start.task.metadata == {
        "source": "langchain",
        "model": "expertgraph/seen",
        "user": "ann",
    }


def test_stream_tokens_reach_callbacks() -> None:
    class Tokens(BaseCallbackHandler):
        def __init__(self) -> None:
            self.tokens: list[str] = []

        def on_llm_new_token(self, token: str, **kwargs: Any) -> None:
            self.tokens.append(token)

    handler = Tokens()
    text = "a b c d e f g h i j k l m n o p q r s"
    chunks = list(_llm(stream_words=4).stream(text, config={"callbacks": [handler]}))
    assert len(chunks) == len(handler.tokens) >= 5
    assert "".join(handler.tokens) == "echo: " + text
    assert chunks[-1].chunk_position == "last" and chunks[-1].usage_metadata is not None
    assert all(c.usage_metadata is None for c in chunks[:-1])


def test_live_orchestrator_and_sync_call_inside_a_running_loop(tmp_path: Path) -> None:
    orch = Orchestrator(
        [CallableExpert("upper", str.upper)], AllExperts(), trace_dir=tmp_path, name="live"
    )
    llm = ChatExpertGraph(orchestrator=orch)

    async def inside() -> tuple[str, str]:
        sync_answer = llm.invoke("sync in loop")  # runs on a helper thread, not this loop
        async_answer = await llm.ainvoke("async")
        return str(sync_answer.content), str(async_answer.content)

    assert asyncio.run(inside()) == ("SYNC IN LOOP", "ASYNC")
    assert llm.invoke("x").response_metadata["model_name"] == "expertgraph/live:upper"


def test_timeout_is_a_run_deadline() -> None:
    llm = ChatExpertGraph(config=str(SLOW), aliases=False, timeout=0.1)
    started = time.perf_counter()
    with pytest.raises(NoAnswerError):
        llm.invoke("too slow")
    assert time.perf_counter() - started < 0.4 + 1.0  # did not wait for the 0.4 s expert plus slack
    assert (
        ChatExpertGraph(config=str(SLOW), aliases=False, timeout=5).invoke("fine").content
        == "slow: fine"
    )


def test_configuration_errors() -> None:
    with pytest.raises(ValueError, match="needs config"):
        ChatExpertGraph().invoke("x")
    with pytest.raises(Exception, match="api_key"):
        ChatExpertGraph(config=str(MAIN), api_key="x")  # type: ignore[call-arg]
    with pytest.raises(Exception, match="unknown model 'expertgraph/nope'"):
        _llm().invoke("x", model="expertgraph/nope")


# ---- tools -------------------------------------------------------------------------------------


@tool
def get_weather(city: str) -> str:
    """The weather in a city now."""
    return {"Lima": "sunny"}.get(city, "unknown")


def test_bind_tools_returns_tool_calls_plain_and_streamed() -> None:
    llm = _llm().bind_tools([get_weather], tool_choice="get_weather")
    message = llm.invoke("What is the 'Lima' weather?")
    assert isinstance(message, AIMessage)
    assert [(c["name"], c["args"]) for c in message.tool_calls] == [
        ("get_weather", {"city": "Lima"})
    ]
    assert message.response_metadata["finish_reason"] == "tool_calls"
    assert message.response_metadata["stop_reason"] == "tool calls for the caller"
    chunks = list(llm.stream("What is the 'Lima' weather?"))
    assert [c["name"] for c in chunks[-1].tool_call_chunks] == ["get_weather"]
    full = chunks[0]
    for chunk in chunks[1:]:
        full = full + chunk
    assert [(c["name"], c["args"]) for c in full.tool_calls] == [("get_weather", {"city": "Lima"})]


def test_tool_messages_reach_the_experts_as_tool_results() -> None:
    llm = _llm().bind_tools([get_weather])
    call = {"name": "get_weather", "args": {"city": "Lima"}, "id": "c1", "type": "tool_call"}
    message = llm.invoke(
        [
            HumanMessage("What is the weather in 'Lima'?"),
            AIMessage("", tool_calls=[call]),
            ToolMessage("sunny", tool_call_id="c1"),
        ]
    )
    assert not message.tool_calls  # a result is back: the experts answer in text
    calls = [
        r
        for r in iter_records(message.response_metadata["trace_path"])
        if isinstance(r, CallRecord)
    ]
    assert calls and all(not c.generation.tool_calls for c in calls)
    start = next(iter(iter_records(message.response_metadata["trace_path"])))
    assert isinstance(start, RunStart)
    sent = start.task.messages or []
    assert [(m.role, m.tool_call_id) for m in sent] == [
        ("user", None),
        ("assistant", None),
        ("tool", "c1"),
    ]
    assert sent[1].tool_calls and sent[1].tool_calls[0].arguments == {"city": "Lima"}


def test_bind_tools_reads_langchain_tool_choices() -> None:
    bound = _llm().bind_tools([get_weather, Capital], tool_choice="any")
    assert bound.kwargs["tool_choice"] == "required"  # type: ignore[attr-defined]
    assert [t["function"]["name"] for t in bound.kwargs["tools"]] == ["get_weather", "Capital"]  # type: ignore[attr-defined]
    one = _llm().bind_tools([get_weather], tool_choice=True)
    assert one.kwargs["tool_choice"] == {  # type: ignore[attr-defined]
        "type": "function",
        "function": {"name": "get_weather"},
    }
    with pytest.raises(ValueError, match="tool_choice: names 'nope'"):
        _llm().bind_tools([get_weather], tool_choice="nope").invoke("x")


def test_structured_output_by_function_calling_is_a_forced_tool_call() -> None:
    out = _llm().with_structured_output(Capital, method="function_calling", include_raw=True)
    result = out.invoke("France")
    assert isinstance(result["parsed"], Capital) and result["parsed"].country.startswith("France")
    assert [c["name"] for c in result["raw"].tool_calls] == ["Capital"]


PRICES = {"apples": 4}


@tool
def price(fruit: str) -> int:
    """The price of a fruit."""
    return PRICES[fruit]


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def shopper(messages: list[Message], tools: list[ToolSpec] | None = None) -> dict[str, Any]:
    """Looks up the apples' price, adds 3, then says the sum."""
    results = [m.content for m in messages if m.role == "tool"]
    if not results:
        return {"tool_calls": [{"name": "price", "arguments": {"fruit": "apples"}}]}
    if len(results) == 1:
        return {"tool_calls": [{"name": "add", "arguments": {"a": int(results[0]), "b": 3}}]}
    return {"text": f"The answer is {results[-1]}."}


@pytest.mark.filterwarnings("ignore:create_react_agent has been moved")
def test_langgraph_react_agent_runs_a_multi_turn_tool_loop(tmp_path: Path) -> None:
    from langgraph.prebuilt import create_react_agent

    orch = Orchestrator(
        [CallableExpert("a", shopper), CallableExpert("b", shopper)],
        AllExperts(),
        trace_dir=tmp_path,
        name="shop",
    )
    agent = create_react_agent(ChatExpertGraph(orchestrator=orch), tools=[price, add])
    state = agent.invoke({"messages": [HumanMessage("What do apples cost, plus 3?")]})
    messages = state["messages"]
    assert messages[-1].content == "The answer is 7."
    assert [m.tool_calls[0]["name"] for m in messages if getattr(m, "tool_calls", None)] == [
        "price",
        "add",
    ]
    assert [m.content for m in messages if isinstance(m, ToolMessage)] == ["4", "7"]
