"""LiteLLM's per-call work that nobody reads is skipped; a registered callback still hears
every call, and an unpriced model is looked up in the price map once."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from openai_server import OpenAIServer

from expertgraph.agents import APIExpert
from expertgraph.agents._litellm import import_litellm
from expertgraph.core.types import ExpertCard, Message


@pytest.fixture(autouse=True)
def openai_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", f"sk-env-{uuid.uuid4().hex}")


@pytest.fixture(scope="module")
def server() -> Iterator[OpenAIServer]:
    with OpenAIServer() as srv:
        yield srv


def _success_handlers(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Counts LiteLLM's post-call success logging (a spy around its own handler)."""
    from litellm.litellm_core_utils.litellm_logging import Logging

    seen: list[str] = []
    original = Logging.async_success_handler

    async def spy(self: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(str(self.model))
        return await original(self, *args, **kwargs)

    monkeypatch.setattr(Logging, "async_success_handler", spy)
    return seen


async def _calls(expert: APIExpert, n: int) -> list[float]:
    costs = []
    for _ in range(n):
        g = await expert.generate("ping", max_tokens=8)
        assert g.ok and g.text, g.error
        costs.append(g.cost)
    await asyncio.sleep(0.3)  # LiteLLM's logging worker runs the handlers after the call
    return costs


def test_no_callback_no_post_call_logging_and_cost_kept(
    server: OpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    litellm = import_litellm()
    assert not litellm.callbacks and not litellm.success_callback
    seen = _success_handlers(monkeypatch)
    priced = APIExpert("priced", "openai/gpt-4o-mini", api_base=server.url + "/v1")
    carded = APIExpert(
        "carded",
        "openai/bench-model",
        api_base=server.url + "/v1",
        card=ExpertCard(cost_per_1k_input=1.0, cost_per_1k_output=2.0),
    )

    async def run() -> tuple[list[float], list[float]]:
        return await _calls(priced, 3), await _calls(carded, 3)

    priced_costs, card_costs = asyncio.run(run())
    assert seen == []  # nobody listens: LiteLLM's success logging never ran
    # The cost is what it was: LiteLLM's price map for a model it knows, the card otherwise.
    assert all(c > 0 for c in priced_costs) and len(set(priced_costs)) == 1
    usage = asyncio.run(carded.generate("ping", max_tokens=8))
    expected = usage.input_tokens / 1000 * 1.0 + usage.output_tokens / 1000 * 2.0
    assert card_costs == [pytest.approx(expected)] * 3


def test_a_registered_callback_still_hears_every_call(
    server: OpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from litellm.integrations.custom_logger import CustomLogger

    litellm = import_litellm()
    heard: list[Any] = []

    class Listener(CustomLogger):
        async def async_log_success_event(self, kwargs, response_obj, start_time, end_time):
            heard.append(kwargs.get("response_cost"))

    monkeypatch.setattr(litellm, "callbacks", [Listener()])
    seen = _success_handlers(monkeypatch)
    expert = APIExpert("priced", "openai/gpt-4o-mini", api_base=server.url + "/v1")
    asyncio.run(_calls(expert, 2))
    assert len(seen) == 2 and len(heard) == 2


def test_a_litellm_router_in_the_process_is_no_reader_of_our_calls(
    server: OpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Router registers its deployment bookkeeping as global callbacks; they count only the
    Router's own calls, so ours still skip the logging, and the Router's keep theirs."""
    litellm = import_litellm()
    # LiteLLM copies a registered callback into its other lists: start from none at all.
    from expertgraph.agents._litellm import _CALLBACK_LISTS

    for name in _CALLBACK_LISTS:
        monkeypatch.setattr(litellm, name, [])
    router = litellm.Router(
        model_list=[
            {
                "model_name": "bench",
                "litellm_params": {
                    "model": "openai/bench-model",
                    "api_base": server.url + "/v1",
                    "api_key": "sk-router-not-real",
                },
                "model_info": {"id": "deployment-1"},
            }
        ]
    )
    assert litellm._async_success_callback  # the Router's bookkeeping is registered
    seen = _success_handlers(monkeypatch)
    expert = APIExpert("priced", "openai/gpt-4o-mini", api_base=server.url + "/v1")

    async def run() -> None:
        await _calls(expert, 2)
        assert seen == []  # ours: skipped
        reply = await router.acompletion(
            model="bench", messages=[{"role": "user", "content": "ping"}], max_tokens=8
        )
        assert reply.choices[0].message.content
        await asyncio.sleep(0.3)

    asyncio.run(run())
    assert len(seen) == 1  # the Router's own call: logged, as LiteLLM does


def test_an_unpriced_model_is_looked_up_once(monkeypatch: pytest.MonkeyPatch) -> None:
    litellm = import_litellm()
    asked: list[str] = []
    original = litellm.cost_per_token

    def spy(*args: Any, **kwargs: Any) -> Any:
        asked.append(str(kwargs.get("model")))
        return original(*args, **kwargs)

    monkeypatch.setattr(litellm, "cost_per_token", spy)
    model = f"openai/unpriced-{uuid.uuid4().hex[:8]}"
    expert = APIExpert(
        "unpriced", model, api_base="http://127.0.0.1:9", card=ExpertCard(cost_per_1k_output=1.0)
    )
    messages = [Message(role="user", content="hi")]
    costs = [expert.worst_case_cost(messages, {"max_tokens": 100}) for _ in range(3)]
    assert costs == [pytest.approx(0.1)] * 3  # the card prices it: 100 tokens at 1 per 1k
    assert asked == [model]
    known = APIExpert("known", "openai/gpt-4o-mini", api_base="http://127.0.0.1:9")
    assert known.worst_case_cost(messages, {"max_tokens": 100}) > 0
