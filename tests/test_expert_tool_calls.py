"""Experts that call tools: API (loopback OpenAI server), callable, and local models."""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from openai_server import OpenAIServer, Reply, ScriptedCall, ToolRule, tool_responder
from tiny_llama import save_tiny_llama

from expertgraph.agents import APIExpert, CallableExpert, LocalHFExpert, RetrySettings
from expertgraph.agents._prompting import encode, template_takes_tools
from expertgraph.agents._tool_parsing import parse_tool_output
from expertgraph.agents.local import _decode_keeping_markers
from expertgraph.core.tools import NamedToolChoice, ToolCall, ToolSpec
from expertgraph.core.types import ExpertCard, Generation, Message

WEATHER = ToolSpec(
    name="get_weather",
    description="Current weather of a city",
    parameters={
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
)
ADD = ToolSpec(
    name="add",
    description="Add two numbers",
    parameters={
        "type": "object",
        "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
        "required": ["a", "b"],
    },
)
QUESTION = "What is the weather in Paris?"
RULES = [  # the first rule that matches answers
    ToolRule(
        [
            ScriptedCall("get_weather", {"city": "Oslo"}, id="call_p1"),
            ScriptedCall("get_weather", {"city": "Rome"}, id="call_p2"),
        ],
        when="both",
    ),
    ToolRule([ScriptedCall("get_weather", {"city": "Paris"}, id="call_w1")], when="weather"),
    ToolRule([ScriptedCall("add", {"a": 2, "b": 3}, id="call_a1")], when="add"),
]


# -- API experts against the loopback server ---------------------------------------------


pytestmark = pytest.mark.usefixtures("openai_key")


@pytest.fixture(scope="module")
def server() -> Iterator[OpenAIServer]:
    with OpenAIServer(handler=tool_responder(RULES)) as srv:
        yield srv


@pytest.fixture
def srv(server: OpenAIServer) -> Iterator[OpenAIServer]:
    server.reset()
    yield server
    server.reset()


def api_expert(srv: OpenAIServer) -> APIExpert:
    return APIExpert(
        "remote",
        "openai/loopback-model",
        api_base=srv.url + "/v1",
        retry=RetrySettings(max_attempts=1),
        card=ExpertCard(timeout_s=10, tools=True),
    )


async def test_api_sends_tools_in_openai_format_and_parses_the_calls(srv: OpenAIServer) -> None:
    gen = await api_expert(srv).generate(QUESTION, tools=[WEATHER, ADD], max_tokens=32)

    assert gen.ok, gen.error
    body = srv.requests[0].body
    assert body["tools"] == [WEATHER.openai(), ADD.openai()]
    assert body["tool_choice"] == "auto"
    assert "parallel_tool_calls" not in body
    assert gen.tool_calls == [
        ToolCall(id="call_w1", name="get_weather", arguments={"city": "Paris"})
    ]
    assert gen.finish_reason == "tool_calls"
    assert gen.text == ""
    assert gen.params["tools"] == ["get_weather", "add"]


async def test_api_accepts_openai_tool_dicts(srv: OpenAIServer) -> None:
    gen = await api_expert(srv).generate("please add", tools=[ADD.openai()])

    assert srv.requests[0].body["tools"] == [ADD.openai()]
    assert [c.canonical() for c in gen.tool_calls] == ['add({"a":2,"b":3})']


async def test_api_parallel_calls_keep_their_order(srv: OpenAIServer) -> None:
    gen = await api_expert(srv).generate("weather in both", tools=[WEATHER])

    assert [(c.id, c.arguments["city"]) for c in gen.tool_calls] == [
        ("call_p1", "Oslo"),
        ("call_p2", "Rome"),
    ]


async def test_api_sends_tool_results_back_in_openai_shape(srv: OpenAIServer) -> None:
    call = ToolCall(id="call_w1", name="get_weather", arguments={"city": "Paris"})
    messages = [
        Message(role="user", content=QUESTION),
        Message(role="assistant", tool_calls=[call]),
        Message(role="tool", tool_call_id="call_w1", content="sunny, 21 C"),
    ]
    gen = await api_expert(srv).generate(messages, tools=[WEATHER])

    assert gen.ok, gen.error
    assert gen.text == "The result is sunny, 21 C."
    assert gen.tool_calls == [] and gen.finish_reason == "stop"
    sent = srv.requests[0].messages
    assert sent[0] == {"role": "user", "content": QUESTION}
    assert sent[1]["role"] == "assistant" and not sent[1].get("content")
    assert sent[1]["tool_calls"] == [
        {
            "id": "call_w1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
        }
    ]
    assert sent[2] == {"role": "tool", "tool_call_id": "call_w1", "content": "sunny, 21 C"}


async def test_api_reads_openai_shaped_message_dicts(srv: OpenAIServer) -> None:
    # What an OpenAI client sends back: arguments as a JSON text, content None.
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": QUESTION},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_x",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_x", "content": "rain"},
    ]
    gen = await api_expert(srv).generate(messages, tools=[WEATHER])

    assert gen.text == "The result is rain."
    sent = srv.requests[0].messages
    assert json.loads(sent[1]["tool_calls"][0]["function"]["arguments"]) == {"city": "Paris"}
    assert sent[2]["tool_call_id"] == "call_x"


@pytest.mark.parametrize(
    ("arguments", "why"),
    [('{"city": Par', "not JSON"), ("[1, 2]", "not a JSON object")],
)
async def test_api_malformed_arguments_give_an_invalid_call(
    srv: OpenAIServer, arguments: str, why: str
) -> None:
    srv.script(
        [Reply(tool_calls=[ScriptedCall("get_weather", arguments)], finish_reason="tool_calls")]
    )
    gen = await api_expert(srv).generate(QUESTION, tools=[WEATHER])

    assert gen.ok, gen.error
    (call,) = gen.tool_calls
    assert call.name == "get_weather" and call.arguments == {}
    assert call.invalid is not None and why in call.invalid


@pytest.mark.parametrize(
    ("choice", "wire"),
    [
        ("required", "required"),
        ("none", "none"),
        (NamedToolChoice(name="add"), {"type": "function", "function": {"name": "add"}}),
        (
            {"type": "function", "function": {"name": "add"}},
            {"type": "function", "function": {"name": "add"}},
        ),
    ],
)
async def test_api_passes_tool_choice_and_parallel_tool_calls(
    srv: OpenAIServer, choice: Any, wire: Any
) -> None:
    gen = await api_expert(srv).generate(
        QUESTION, tools=[WEATHER, ADD], tool_choice=choice, parallel_tool_calls=False
    )

    assert gen.ok, gen.error
    body = srv.requests[0].body
    assert body["tool_choice"] == wire
    assert body["parallel_tool_calls"] is False
    if wire == "none":  # the responder answers in text
        assert gen.tool_calls == [] and gen.text == "OK"
    elif wire == "required":
        assert [c.name for c in gen.tool_calls] == ["get_weather"]
    else:  # named: the responder calls the named tool, whatever the question
        assert [c.name for c in gen.tool_calls] == ["add"]


@pytest.mark.parametrize(
    "params",
    [
        {"tool_choice": NamedToolChoice(name="nope")},
        {"tool_choice": "sometimes"},
        {"parallel_tool_calls": "yes"},
        {"tools": [WEATHER, WEATHER]},
        {"tools": [{"type": "function", "function": {"name": "bad name!"}}]},
        {"tools": [{"type": "function", "function": 3}]},
        {"tools": ["get_weather"]},
    ],
)
async def test_api_bad_tool_params_fail_before_any_request(
    srv: OpenAIServer, params: dict[str, Any]
) -> None:
    gen = await api_expert(srv).generate(QUESTION, **{"tools": [WEATHER], **params})

    assert gen.error is not None and gen.error.type == "invalid_params", gen.error
    assert srv.attempts == 0


async def test_api_without_tools_sends_no_tool_fields(srv: OpenAIServer) -> None:
    gen = await api_expert(srv).generate(QUESTION)

    assert gen.text == "OK" and gen.tool_calls == []
    assert not {"tools", "tool_choice", "parallel_tool_calls"} & set(srv.requests[0].body)


async def test_loopback_server_streams_tool_call_deltas(srv: OpenAIServer) -> None:
    """The server's streamed tool calls, accumulated by index as OpenAI's SDK users do."""
    import openai

    client = openai.AsyncOpenAI(base_url=srv.url + "/v1", api_key="sk-test", max_retries=0)
    stream = await client.chat.completions.create(
        model="loopback-model",
        messages=[{"role": "user", "content": "weather in both"}],
        tools=[WEATHER.openai()],  # type: ignore[list-item]
        stream=True,
    )
    calls: dict[int, dict[str, str]] = {}
    finish = None
    fragments = 0
    async for chunk in stream:
        choice = chunk.choices[0]
        finish = choice.finish_reason or finish
        for delta in choice.delta.tool_calls or []:
            slot = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
            slot["id"] += delta.id or ""
            slot["name"] += (delta.function and delta.function.name) or ""
            slot["arguments"] += (delta.function and delta.function.arguments) or ""
            fragments += 1
    await client.close()

    assert finish == "tool_calls"
    assert fragments > 4  # arguments arrive in pieces
    parsed = [ToolCall.parse(c["id"], c["name"], c["arguments"]) for _, c in sorted(calls.items())]
    assert [c.canonical() for c in parsed] == [
        'get_weather({"city":"Oslo"})',
        'get_weather({"city":"Rome"})',
    ]
    assert [c.id for c in parsed] == ["call_p1", "call_p2"]


async def test_a_streaming_api_expert_rebuilds_text_calls_and_usage_from_the_stream(
    srv: OpenAIServer,
) -> None:
    """stream=True: the same Generation from the streamed reply as from the whole one."""
    streamed = APIExpert(
        "remote",
        "openai/loopback-model",
        api_base=srv.url + "/v1",
        retry=RetrySettings(max_attempts=1),
        card=ExpertCard(timeout_s=10, tools=True),
        stream=True,
    )
    calls = await streamed.generate("weather in both", tools=[WEATHER])
    assert calls.ok, calls.error
    assert srv.requests[-1].body["stream"] is True
    assert [(c.id, c.canonical()) for c in calls.tool_calls] == [
        ("call_p1", 'get_weather({"city":"Oslo"})'),
        ("call_p2", 'get_weather({"city":"Rome"})'),
    ]
    assert calls.finish_reason == "tool_calls"
    whole = await api_expert(srv).generate("weather in both", tools=[WEATHER])
    assert whole.tool_calls == calls.tool_calls
    assert (whole.input_tokens, whole.output_tokens) == (calls.input_tokens, calls.output_tokens)

    call = ToolCall(id="call_w1", name="get_weather", arguments={"city": "Paris"})
    answer = await streamed.generate(
        [
            Message(role="user", content=QUESTION),
            Message(role="assistant", tool_calls=[call]),
            Message(role="tool", tool_call_id="call_w1", content="sunny, 21 C"),
        ],
        tools=[WEATHER],
    )
    assert answer.ok and answer.text == "The result is sunny, 21 C." and not answer.tool_calls


# -- callable experts ----------------------------------------------------------------------


async def test_callable_gets_tools_and_returns_calls() -> None:
    seen: dict[str, Any] = {}

    def agent(messages: list[Message], tools: list[ToolSpec], tool_choice: Any) -> dict[str, Any]:
        seen.update(tools=tools, tool_choice=tool_choice)
        return {
            "text": "",
            "tool_calls": [
                {"name": "add", "arguments": {"a": 1, "b": 2}},
                {"id": "mine", "name": "add", "arguments": '{"a": 3, "b": 4}'},
                {"name": "add", "arguments": "{not json"},
                {"name": "add", "arguments": [1, 2]},
                {"arguments": {}},
            ],
        }

    expert = CallableExpert("agent", agent)
    assert expert.card.tools is True  # it names a `tools` parameter
    gen = await expert.generate("add", tools=[ADD.openai()], tool_choice={"name": "add"})

    assert gen.ok, gen.error
    assert seen["tools"] == [ADD]
    assert seen["tool_choice"] == NamedToolChoice(name="add")
    first, second, not_json, not_object, nameless = gen.tool_calls
    assert first.arguments == {"a": 1, "b": 2} and first.id.startswith("call_")
    assert second.id == "mine" and second.arguments == {"a": 3, "b": 4}
    assert not_json.invalid is not None and "not JSON" in not_json.invalid
    assert not_object.invalid == "arguments are not a JSON object"
    assert nameless.invalid is not None and nameless.name == ""
    assert gen.finish_reason == "tool_calls"
    assert len({c.id for c in gen.tool_calls}) == 5


async def test_callable_without_tool_params_is_not_passed_tools() -> None:
    def plain(prompt: str) -> str:  # any extra keyword would raise TypeError
        return f"echo: {prompt}"

    expert = CallableExpert("plain", plain)
    gen = await expert.generate("hi", tools=[ADD], tool_choice="required", max_tokens=5)

    assert gen.ok, gen.error
    assert gen.text == "echo: hi" and gen.tool_calls == []
    assert expert.card.tools is False


async def test_callable_with_var_kwargs_gets_tool_params() -> None:
    seen: dict[str, Any] = {}

    async def agent(prompt: str, **params: Any) -> Generation:
        seen.update(params)
        return Generation(
            expert="ignored",
            tool_calls=[ToolCall(id="g1", name="add", arguments={"a": 1, "b": 1})],
        )

    expert = CallableExpert("agent", agent, card=ExpertCard(tools=False))
    gen = await expert.generate("x", tools=[ADD], parallel_tool_calls=True)

    assert seen["tools"] == [ADD] and seen["parallel_tool_calls"] is True
    assert [c.id for c in gen.tool_calls] == ["g1"]
    assert expert.card.tools is False  # the card given says so


async def test_callable_dict_needs_text_or_calls() -> None:
    gen = await CallableExpert("bad", lambda prompt: {"tool_calls": []}).generate("x")

    assert gen.error is not None and "'text' or 'tool_calls'" in gen.error.message


# -- the local parsers, on literal strings ----------------------------------------------------


def test_hermes_single_call_and_surrounding_text() -> None:
    out = parse_tool_output(
        'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n'
        "</tool_call>"
    )
    assert out.text == "Let me check."
    assert [c.canonical() for c in out.tool_calls] == ['get_weather({"city":"Paris"})']
    assert out.tool_calls[0].id.startswith("call_")


def test_hermes_several_calls_in_order() -> None:
    out = parse_tool_output(
        '<tool_call>{"name": "add", "arguments": {"a": 1, "b": 2}}</tool_call>\n'
        '<tool_call>{"name": "add", "arguments": "{\\"a\\": 3, \\"b\\": 4}"}</tool_call>'
    )
    assert out.text == ""
    assert [c.arguments for c in out.tool_calls] == [{"a": 1, "b": 2}, {"a": 3, "b": 4}]


def test_hermes_unclosed_and_malformed_blocks() -> None:
    unclosed = parse_tool_output('<tool_call>{"name": "add", "arguments": {"a": 1, "b": 2}}')
    assert unclosed.tool_calls[0].arguments == {"a": 1, "b": 2}

    broken = parse_tool_output('<tool_call>{"name": "add", "arguments": {"a": 1,</tool_call>')
    (call,) = broken.tool_calls
    assert call.name == "add" and call.arguments == {}
    assert call.invalid is not None and "not JSON" in call.invalid

    listed = parse_tool_output('<tool_call>{"name": "add", "arguments": [1]}</tool_call>')
    assert listed.tool_calls[0].invalid == "arguments are not a JSON object"


def test_llama_json_call_with_and_without_python_tag() -> None:
    bare = parse_tool_output('{"name": "get_weather", "parameters": {"city": "Oslo"}}')
    tagged = parse_tool_output(
        '<|python_tag|>{"type": "function", "name": "get_weather", "parameters": {"city": "Oslo"}}'
    )
    for out in (bare, tagged):
        assert out.text == ""
        assert [c.canonical() for c in out.tool_calls] == ['get_weather({"city":"Oslo"})']

    garbled = parse_tool_output("<|python_tag|>get_weather(city='Oslo')")
    assert garbled.tool_calls[0].invalid is not None


def test_text_and_plain_json_answers_are_not_calls() -> None:
    assert parse_tool_output("  Paris is sunny.  ").text == "Paris is sunny."
    assert parse_tool_output("  Paris is sunny.  ").tool_calls == []
    answer = '{"name": "Paris", "country": "France"}'
    assert parse_tool_output(answer).tool_calls == []
    assert parse_tool_output(answer).text == answer


# -- local models (the bundled SmolLM2 and a folder with a tool-taking template) ----------------

TOOLS_TEMPLATE = """
{%- if tools %}<|im_start|>system
You may call these tools:
<tools>
{%- for tool in tools %}
{{ tool | tojson }}
{%- endfor %}
</tools><|im_end|>
{% endif %}
{%- for message in messages %}
{%- if message.role == "assistant" and message.tool_calls %}<|im_start|>assistant
{%- for call in message.tool_calls %}
<tool_call>{"name": "{{ call.function.name }}", "arguments":
{{- call.function.arguments | tojson }}}</tool_call>
{%- endfor %}<|im_end|>
{% elif message.role == "tool" %}<|im_start|>user
<tool_response id="{{ message.tool_call_id }}">{{ message.content }}</tool_response><|im_end|>
{% else %}<|im_start|>{{ message.role }}
{{ message.content }}<|im_end|>
{% endif %}
{%- endfor %}
{%- if add_generation_prompt %}<|im_start|>assistant
{% endif %}"""


@pytest.fixture(scope="module")
def smol() -> LocalHFExpert:
    expert = LocalHFExpert("smol", "smollm2-135m", num_threads=1, max_tokens=8)
    asyncio.run(expert.load())
    return expert


@pytest.fixture(scope="module")
def tools_folder(tmp_path_factory: pytest.TempPathFactory, smol: LocalHFExpert) -> Path:
    """A real model folder: tiny random Llama, SmolLM2's tokenizer with a tool-taking template."""
    folder = tmp_path_factory.mktemp("tiny-tools")
    tok = copy.deepcopy(smol.tokenizer)
    tok.chat_template = TOOLS_TEMPLATE
    return save_tiny_llama(folder, tok, max_positions=1024)


@pytest.mark.models
async def test_smollm2_template_takes_no_tools_and_says_so(smol: LocalHFExpert) -> None:
    assert not template_takes_tools(smol.tokenizer)
    assert smol.card.tools is False  # loading did not make it claim tools

    offered = await smol.generate("What is 2 + 3?", tools=[ADD])
    assert offered.error is not None and offered.error.type == "tools_unsupported"
    assert "smollm2-135m" in offered.error.message

    declined = await smol.generate("What is 2 + 3?", tools=[ADD], tool_choice="none")
    assert declined.ok, declined.error
    assert declined.text and declined.tool_calls == []


@pytest.mark.models
def test_tool_template_renders_tools_calls_and_results(smol: LocalHFExpert) -> None:
    tok = copy.deepcopy(smol.tokenizer)
    tok.chat_template = TOOLS_TEMPLATE
    assert template_takes_tools(tok)
    messages = [
        Message(role="user", content=QUESTION),
        Message(
            role="assistant",
            tool_calls=[ToolCall(id="call_w1", name="get_weather", arguments={"city": "Paris"})],
        ),
        Message(role="tool", tool_call_id="call_w1", content="sunny"),
    ]
    ids = encode(tok, "cpu", messages, "chat", [WEATHER.openai()])["input_ids"][0]
    prompt = tok.decode(ids)

    assert json.dumps(WEATHER.openai()) in prompt
    assert '<tool_call>{"name": "get_weather", "arguments":{"city": "Paris"}}</tool_call>' in prompt
    assert '<tool_response id="call_w1">sunny</tool_response>' in prompt
    assert prompt.endswith("<|im_start|>assistant\n")
    # Without tools the same template renders no tool list.
    plain = tok.decode(encode(tok, "cpu", messages[:1], "chat")["input_ids"][0])
    assert "<tools>" not in plain


@pytest.mark.models
def test_decoding_keeps_call_markers_and_drops_other_special_tokens(smol: LocalHFExpert) -> None:
    tok = smol.tokenizer
    reply = 'Sure.<tool_call>{"name": "add", "arguments": {"a": 2, "b": 3}}</tool_call><|im_end|>'
    ids = tok(reply, add_special_tokens=False)["input_ids"]
    assert tok.convert_tokens_to_ids("<|im_end|>") in ids

    text = _decode_keeping_markers(tok, ids)
    assert "<|im_end|>" not in text
    out = parse_tool_output(text)
    assert out.text == "Sure."
    assert [c.canonical() for c in out.tool_calls] == ['add({"a":2,"b":3})']


@pytest.mark.models
async def test_local_model_with_tool_template_renders_tools(tools_folder: Path) -> None:
    expert = LocalHFExpert("tiny", str(tools_folder), num_threads=1, device="cpu", max_tokens=4)
    await expert.load()
    assert expert.card.tools is True  # its template takes tools

    with_tools = await expert.generate(QUESTION, tools=[WEATHER, ADD])
    without = await expert.generate(QUESTION)
    assert with_tools.ok, with_tools.error
    assert without.ok, without.error
    # The tool list is in the prompt: the schemas' tokens are counted.
    assert with_tools.input_tokens > without.input_tokens + 40
    assert with_tools.finish_reason in ("stop", "length", "tool_calls")

    stated = LocalHFExpert("tiny2", str(tools_folder), num_threads=1, card=ExpertCard(tools=False))
    await stated.load()
    assert stated.card.tools is False  # the user's card wins
