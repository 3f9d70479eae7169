"""The sync entry points keep the API experts' retries: a 429 then a 200 is answered everywhere.

Each path runs against a real loopback OpenAI-compatible server that counts attempts.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai_server import OpenAIServer, free_port

from expertgraph.agents import APIExpert, RetrySettings
from expertgraph.agents._api_errors import classify_error
from expertgraph.core._sync import run_sync
from expertgraph.core.types import ExpertCard
from expertgraph.orchestrator import Orchestrator
from expertgraph.policies.routing.fixed import FixedPolicy

FAST = RetrySettings(max_attempts=4, initial_wait_s=0.01, max_wait_s=0.05)


pytestmark = pytest.mark.usefixtures("openai_key")


def _orchestrator(srv: OpenAIServer, tmp_path: Path, base: str | None = None) -> Orchestrator:
    expert = APIExpert(
        "remote",
        "openai/loopback-model",
        api_base=base or srv.url + "/v1",
        retry=FAST,
        card=ExpertCard(timeout_s=10),
    )
    return Orchestrator([expert], FixedPolicy(["remote"]), trace_dir=tmp_path)


def _calls(result: Any) -> list[Any]:
    return [g for s in result.steps for g in s.generations]


def test_run_sync_does_not_chain_the_no_loop_error() -> None:
    async def fail() -> None:
        raise ValueError("boom")

    with pytest.raises(ValueError) as info:
        run_sync(fail())
    assert info.value.__context__ is None


@pytest.mark.parametrize(
    ("kind", "status", "expected"),
    [("RateLimitError", 429, "rate_limit"), ("ServiceUnavailableError", 503, "server_error")],
)
def test_an_unrelated_context_does_not_make_a_retryable_error_a_client_error(
    kind: str, status: int, expected: str
) -> None:
    from expertgraph.agents._litellm import import_litellm

    error_class = getattr(import_litellm(), kind)
    try:
        try:
            raise RuntimeError("no running event loop")
        except RuntimeError:
            # How LiteLLM's mapped errors reach us from a sync caller: the only thing on
            # their chain is whatever was being handled when the call started.
            raise error_class(f"upstream said {status}", llm_provider="openai", model="m")  # noqa: B904
    except error_class as exc:
        assert isinstance(exc.__context__, RuntimeError)
        failure = classify_error(exc)
    assert (failure.type, failure.status_code, failure.retryable) == (expected, status, True)


def test_the_call_stacks_own_context_is_still_evidence() -> None:
    request = httpx.Request("POST", "http://127.0.0.1/v1/chat/completions")
    try:
        try:
            raise httpx.ConnectError("refused", request=request)
        except httpx.ConnectError:
            raise httpx.HTTPError("wrapped without from")  # noqa: B904
    except httpx.HTTPError as exc:
        failure = classify_error(exc)
    assert (failure.type, failure.retryable) == ("connection", True)


def test_orchestrator_run_retries_a_429(srv: OpenAIServer, tmp_path: Path) -> None:
    srv.script([(429, {}), (200, "Paris")])
    result = _orchestrator(srv, tmp_path).run("capital of France?")
    assert result.answer == "Paris"
    assert srv.attempts == 2
    (gen,) = _calls(result)
    assert gen.ok and gen.attempts == 2


def test_orchestrator_run_retries_5xx_and_classifies_refused_connections(
    srv: OpenAIServer, tmp_path: Path
) -> None:
    srv.script([(500, {}), (503, {}), (200, "Paris")])
    assert _orchestrator(srv, tmp_path).run("capital of France?").answer == "Paris"
    assert srv.attempts == 3

    refused = _orchestrator(srv, tmp_path, base=f"http://127.0.0.1:{free_port()}/v1")
    result = refused.run("capital of France?")
    (gen,) = _calls(result)
    assert gen.error is not None
    assert gen.error.type == "connection" and gen.error.retryable
    assert gen.attempts == FAST.max_attempts


def test_orchestrator_run_inside_a_running_loop_retries(srv: OpenAIServer, tmp_path: Path) -> None:
    srv.script([(429, {}), (200, "Paris")])
    orch = _orchestrator(srv, tmp_path)

    async def caller() -> str | None:
        return orch.run("capital of France?").answer  # sync code called from async code

    assert asyncio.run(caller()) == "Paris"
    assert srv.attempts == 2


def test_langchain_invoke_retries_a_429(srv: OpenAIServer, tmp_path: Path) -> None:
    from expertgraph.orchestrator.integrations.langchain import ChatExpertGraph

    srv.script([(429, {}), (200, "Paris")])
    chat = ChatExpertGraph(orchestrator=_orchestrator(srv, tmp_path))
    assert chat.invoke("capital of France?").content == "Paris"
    assert srv.attempts == 2


def test_litellm_completion_retries_a_429(srv: OpenAIServer, tmp_path: Path) -> None:
    from expertgraph.agents._litellm import import_litellm
    from expertgraph.orchestrator.integrations.litellm import register

    litellm = import_litellm()
    saved = list(litellm.custom_provider_map)
    try:
        register(_orchestrator(srv, tmp_path))
        srv.script([(429, {}), (200, "Paris")])
        response = litellm.completion(
            model="expertgraph/default",
            messages=[{"role": "user", "content": "capital of France?"}],
        )
    finally:
        litellm.custom_provider_map = saved
    assert response.choices[0].message.content == "Paris"
    assert srv.attempts == 2
