"""``ChatExpertGraph``: LangChain's standard chat-model test suites, then chains, agents, structure.

Standard suites (``langchain-tests``) run against routing configurations of instant callable
experts (``serve_experts.reply``: JSON when asked for it, else an echo). Tests the suites skip
here, and why:

* tool calling (``test_tool_calling*``, ``test_bind_tool_pydantic``, ``test_tool_choice``,
  ``test_tool_message_*``, ``test_structured_few_shot_examples``, ``test_agent_loop``,
  ``test_unicode_tool_call_integration``, ``test_bind_runnables_as_tools``): experts return
  text; ``bind_tools`` is not implemented.
* image, PDF, audio inputs and Anthropic-style inputs: experts take text messages only.
* ``test_stream_time`` (needs VCR cassettes of HTTP traffic; there is none, runs are in process)
  and ``test_serdes`` (not serialisable: the model holds live orchestrators).
* ``test_init_from_env``: nothing is read from the environment.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_tests.integration_tests import ChatModelIntegrationTests
from langchain_tests.unit_tests import ChatModelUnitTests
from pydantic import BaseModel
from serve_experts import write_config

from expertgraph.agents.callable import CallableExpert
from expertgraph.core.errors import NoAnswerError
from expertgraph.orchestrator import Orchestrator
from expertgraph.orchestrator.integrations.langchain import ChatExpertGraph
from expertgraph.policies.routing.fixed import AllExperts
from expertgraph.traces.schema import CallRecord, RunStart
from expertgraph.traces.store import iter_records

# Class-level properties of the standard suites cannot use fixtures: the configs are written
# once at import into a temporary folder (traces go there too).
_ROOT = Path(tempfile.mkdtemp(prefix="expertgraph-langchain-"))
TRACES = _ROOT / "traces"
MAIN = write_config(_ROOT, "main", {"reply_a": "reply", "reply_b": "reply"}, trace_dir=TRACES)
SECOND = write_config(_ROOT, "second", {"single": "reply"}, trace_dir=TRACES)
SLOW = write_config(_ROOT, "slowpoke", {"slow": "slow"}, trace_dir=TRACES)
ECHO = write_config(_ROOT, "textonly", {"echo": "echo"}, trace_dir=TRACES)
SEEN = write_config(_ROOT, "seen", {"seen": "params_seen"}, trace_dir=TRACES)
PARAMS: dict[str, Any] = {
    "config": [str(MAIN), str(SECOND)],
    "model": "expertgraph/main",
    "aliases": False,
}


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
