"""expertgraph as a LiteLLM custom provider: ``litellm.completion(model="expertgraph/<config>")``
in process.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from serve_experts import write_config

from expertgraph.agents._litellm import import_litellm
from expertgraph.agents.callable import CallableExpert
from expertgraph.core.errors import ConfigError
from expertgraph.orchestrator import Orchestrator
from expertgraph.orchestrator.integrations.litellm import CONFIG_ENV, ExpertGraphLLM, register
from expertgraph.policies.routing.fixed import AllExperts
from expertgraph.traces.schema import CallRecord
from expertgraph.traces.store import iter_records

litellm = import_litellm()
PROMPT = "one two three four five six seven eight nine ten eleven twelve"


@pytest.fixture(scope="module")
def configs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("litellm")
    write_config(root, "main", {"echo_a": "echo", "echo_b": "echo"}, trace_dir=root / "traces")
    write_config(root, "params", {"seen": "params_seen"}, trace_dir=root / "traces")
    write_config(root, "json", {"writer": "json_writer"}, trace_dir=root / "traces")
    write_config(root, "down", {"broken": "broken"}, trace_dir=root / "traces")
    return root


@pytest.fixture()
def handler(configs: Path) -> Iterator[ExpertGraphLLM]:
    saved = list(litellm.custom_provider_map)
    yield register(configs=[configs], aliases=False)
    litellm.custom_provider_map = saved


def _user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def test_completion_names_experts_and_sums_usage(handler: ExpertGraphLLM, configs: Path) -> None:
    response = litellm.completion(model="expertgraph/main", messages=_user(PROMPT))
    assert response.choices[0].message.content == "echo: " + PROMPT
    assert response.choices[0].finish_reason == "stop"
    assert response.model == "expertgraph/main:echo_a+echo_b"
    info = response._hidden_params["expertgraph"]
    assert response.id == f"chatcmpl-{info['run_id']}"
    calls = [r for r in iter_records(info["trace_path"]) if isinstance(r, CallRecord)]
    assert len(calls) == 2 == info["calls"]
    assert response.usage.prompt_tokens == sum(c.generation.input_tokens for c in calls)
    assert response.usage.completion_tokens == sum(c.generation.output_tokens for c in calls)


def test_bare_config_name_and_registration_replaces(handler: ExpertGraphLLM, configs: Path) -> None:
    register(configs=[configs], aliases=False)  # again: one entry, not two
    assert [p["provider"] for p in litellm.custom_provider_map].count("expertgraph") == 1
    assert (
        litellm.completion(model="expertgraph/main", messages=_user("x")).choices[0].message.content
        == "echo: x"
    )


def test_params_reach_experts(handler: ExpertGraphLLM) -> None:
    response = litellm.completion(
        model="expertgraph/params",
        messages=_user("x"),
        max_tokens=9,
        temperature=0.3,
        stop=["\n\n"],
        seed=5,
    )
    seen = json.loads(response.choices[0].message.content)
    # (a stop sequence that JSON escapes: the answer is also cut at stop sequences)
    assert seen == {"max_tokens": 9, "seed": 5, "stop": ["\n\n"], "temperature": 0.3}


def test_stop_sequence_and_length(handler: ExpertGraphLLM) -> None:
    cut = litellm.completion(
        model="expertgraph/main", messages=_user("alpha beta gamma"), stop=["gamma"]
    )
    assert cut.choices[0].message.content == "echo: alpha beta "
    short = litellm.completion(
        model="expertgraph/main", messages=_user("alpha beta gamma"), max_tokens=2
    )
    assert short.choices[0].message.content == "echo: alpha"
    assert short.choices[0].finish_reason == "length"


def test_streaming_sync_and_async(handler: ExpertGraphLLM) -> None:
    chunks = list(
        litellm.completion(
            model="expertgraph/main",
            messages=_user(PROMPT),
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert len(chunks) >= 3
    assert (
        "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "echo: " + PROMPT
    )
    about = chunks[0].choices[0].delta.provider_specific_fields
    assert about["model"] == "expertgraph/main:echo_a+echo_b" and about["experts"] == [
        "echo_a",
        "echo_b",
    ]
    assert [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ] == ["stop"]
    assert any(getattr(c, "usage", None) is not None and c.usage.total_tokens > 0 for c in chunks)

    async def main() -> tuple[str, str]:
        plain = await litellm.acompletion(model="expertgraph/main", messages=_user("async"))
        stream = await litellm.acompletion(
            model="expertgraph/main", messages=_user("async stream"), stream=True
        )
        text = "".join([c.choices[0].delta.content or "" async for c in stream])
        return str(plain.choices[0].message.content), text

    assert asyncio.run(main()) == ("echo: async", "echo: async stream")


def test_response_format_json_schema(handler: ExpertGraphLLM) -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "rank": {"type": "integer"}},
    }
    response = litellm.completion(
        model="expertgraph/json",
        messages=_user("Lima"),
        response_format={"type": "json_schema", "json_schema": {"name": "place", "schema": schema}},
    )
    assert json.loads(response.choices[0].message.content) == {"city": "Lima city", "rank": 42}


def test_unknown_response_format_is_refused_not_ignored(handler: ExpertGraphLLM) -> None:
    # The same rule as the server and the LangChain model: JSON asked in a shape we do not
    # know is an error, never a plain-text answer.
    with pytest.raises(Exception, match="response_format must be an OpenAI response_format"):
        litellm.completion(
            model="expertgraph/json",
            messages=_user("x"),
            response_format={"type": "xml"},
            num_retries=0,
        )


def test_failures_are_errors_that_name_the_run(handler: ExpertGraphLLM) -> None:
    with pytest.raises(Exception, match=r"no expert produced an answer \(run \d{8}T"):
        litellm.completion(model="expertgraph/down", messages=_user("x"), num_retries=0)
    with pytest.raises(Exception, match="unknown model 'expertgraph/nope'"):
        litellm.completion(model="expertgraph/nope", messages=_user("x"), num_retries=0)


def test_live_orchestrator(tmp_path: Path) -> None:
    saved = list(litellm.custom_provider_map)
    try:
        orch = Orchestrator(
            [CallableExpert("upper", str.upper)], AllExperts(), trace_dir=tmp_path, name="live"
        )
        register(orch)
        response = litellm.completion(model="expertgraph/live", messages=_user("shout"))
        assert response.choices[0].message.content == "SHOUT"
        assert response.model == "expertgraph/live:upper"
    finally:
        litellm.custom_provider_map = saved


def test_proxy_handler_as_the_litellm_proxy_loads_it(
    configs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a LiteLLM proxy does with
    ``custom_handler: expertgraph.orchestrator.integrations.litellm.proxy_handler``.

    The proxy itself (``litellm[proxy]``) is not installed here; its loader and its router are.
    """
    from litellm.proxy.types_utils.utils import get_instance_fn

    monkeypatch.setenv(CONFIG_ENV, str(configs / "main.yaml"))
    proxy_handler = get_instance_fn(
        "expertgraph.orchestrator.integrations.litellm.proxy_handler",
        config_file_path=str(configs / "proxy.yaml"),
    )
    assert isinstance(proxy_handler, ExpertGraphLLM)
    saved = list(litellm.custom_provider_map)
    monkeypatch.setattr(
        litellm,
        "custom_provider_map",
        [{"provider": "expertgraph", "custom_handler": proxy_handler}],
    )
    try:
        router = litellm.Router(
            model_list=[{"model_name": "routed", "litellm_params": {"model": "expertgraph/main"}}]
        )
        response = router.completion(model="routed", messages=_user("via the router"))
        assert response.choices[0].message.content == "echo: via the router"
        assert response.model.endswith("expertgraph/main:echo_a+echo_b")
    finally:
        litellm.custom_provider_map = saved


def test_missing_configuration_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CONFIG_ENV, raising=False)
    with pytest.raises(ConfigError, match=CONFIG_ENV):
        ExpertGraphLLM().catalog()


ADD_TOOL = {
    "type": "function",
    "function": {
        "name": "add",
        "description": "Add two integers.",
        "parameters": {
            "type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
            "required": ["a", "b"],
        },
    },
}


@pytest.fixture()
def tool_agent(tmp_path: Path) -> Iterator[Orchestrator]:
    """A provider over one expert that calls ``add`` until a tool result is in its messages."""

    def agent(messages: list[Any], tools: Any = None) -> Any:
        results = [m.content for m in messages if m.role == "tool"]
        if results:
            return f"The sum is {results[-1]}."
        return {"tool_calls": [{"name": "add", "arguments": {"a": 1, "b": 2}}]}

    saved = list(litellm.custom_provider_map)
    orch = Orchestrator(
        [CallableExpert("agent", agent)], AllExperts(), trace_dir=tmp_path / "traces"
    )
    register(orch)
    yield orch
    litellm.custom_provider_map = saved


def test_tool_calls_come_back_plain_and_streamed_and_the_result_turn_answers(
    tool_agent: Orchestrator,
) -> None:
    model = f"expertgraph/{tool_agent.name}"
    messages = _user("What is 1 + 2?")
    first = litellm.completion(model=model, messages=messages, tools=[ADD_TOOL])
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.function.name == "add" and json.loads(call.function.arguments) == {"a": 1, "b": 2}

    chunks = list(litellm.completion(model=model, messages=messages, tools=[ADD_TOOL], stream=True))
    built = litellm.stream_chunk_builder(chunks, messages=messages)
    assert built.choices[0].finish_reason == "tool_calls"
    assert [c.function.name for c in built.choices[0].message.tool_calls] == ["add"]

    turn = [
        *messages,
        choice.message.model_dump(),
        {"role": "tool", "tool_call_id": call.id, "content": "3"},
    ]
    second = litellm.completion(model=model, messages=turn, tools=[ADD_TOOL])
    assert second.choices[0].message.content == "The sum is 3."
    assert second.choices[0].finish_reason == "stop"


def test_legacy_function_calling_is_refused_by_name(tool_agent: Orchestrator) -> None:
    with pytest.raises(Exception, match="functions.*legacy function calling"):
        litellm.completion(
            model=f"expertgraph/{tool_agent.name}",
            messages=_user("x"),
            functions=[ADD_TOOL["function"]],
        )
