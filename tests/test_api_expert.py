"""APIExpert through LiteLLM against a real loopback OpenAI-compatible server."""

from __future__ import annotations

import email.utils
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import pytest
from openai_server import OpenAIServer, Reply, count_words, free_port

from expertgraph.agents import APIExpert, RetrySettings
from expertgraph.agents._api_errors import parse_retry_after
from expertgraph.core.errors import ExpertCallError, ExpertGraphError
from expertgraph.core.types import ExpertCard

FAST = RetrySettings(max_attempts=4, initial_wait_s=0.01, max_wait_s=0.05)
PROMPT = "What is the capital of France?"


pytestmark = pytest.mark.usefixtures("openai_key")


@pytest.fixture(scope="module")
def server() -> Iterator[OpenAIServer]:
    with OpenAIServer() as srv:
        yield srv


@pytest.fixture
def srv(server: OpenAIServer) -> Iterator[OpenAIServer]:
    server.reset()
    yield server
    server.reset()


def make_expert(srv: OpenAIServer, **kwargs: object) -> APIExpert:
    kwargs.setdefault("retry", FAST)
    kwargs.setdefault(
        "card", ExpertCard(cost_per_1k_input=2.0, cost_per_1k_output=4.0, timeout_s=10)
    )
    return APIExpert("remote", "openai/loopback-model", api_base=srv.url + "/v1", **kwargs)  # type: ignore[arg-type]


async def test_plain_success_text_tokens_and_card_cost(srv: OpenAIServer) -> None:
    srv.script([(200, "Paris is the capital.")])
    gen = await make_expert(srv).generate(PROMPT, max_tokens=16)

    assert gen.ok, gen.error
    assert gen.text == "Paris is the capital."
    assert gen.finish_reason == "stop"
    assert gen.input_tokens == count_words(PROMPT)
    assert gen.output_tokens == count_words(gen.text)
    # The model is unknown to LiteLLM's price map, so the card prices the tokens.
    assert gen.cost == pytest.approx((gen.input_tokens * 2.0 + gen.output_tokens * 4.0) / 1000)
    assert gen.attempts == 1 and srv.attempts == 1
    assert srv.requests[0].body["messages"] == [{"role": "user", "content": PROMPT}]


async def test_cost_from_litellm_price_map_for_known_model(srv: OpenAIServer) -> None:
    from expertgraph.agents._litellm import import_litellm

    prices = import_litellm().model_cost["gpt-4o-mini"]
    card = ExpertCard(cost_per_1k_input=100.0, cost_per_1k_output=100.0)
    srv.script([(200, "one two three")])
    expert = APIExpert(
        "mini", "openai/gpt-4o-mini", api_base=srv.url + "/v1", card=card, retry=FAST
    )
    gen = await expert.generate(PROMPT)

    expected = (
        gen.input_tokens * prices["input_cost_per_token"]
        + gen.output_tokens * prices["output_cost_per_token"]
    )
    assert gen.ok and gen.output_tokens == 3
    assert gen.cost == pytest.approx(expected)
    assert gen.cost < card.estimate_cost(gen.input_tokens, gen.output_tokens)

    srv.script([(200, "one two three")])
    carded = APIExpert(
        "mini",
        "openai/gpt-4o-mini",
        api_base=srv.url + "/v1",
        card=card,
        retry=FAST,
        pricing="card",
    )
    gen = await carded.generate(PROMPT)
    assert gen.cost == pytest.approx(card.estimate_cost(gen.input_tokens, gen.output_tokens))


async def test_429_retry_after_is_honoured(srv: OpenAIServer) -> None:
    srv.script([(429, {"Retry-After": "1"}), (200, "after the wait")])
    retry = RetrySettings(max_attempts=4, initial_wait_s=0.01, max_wait_s=5)
    started = time.perf_counter()
    gen = await make_expert(srv, retry=retry).generate(PROMPT)
    elapsed = time.perf_counter() - started

    assert gen.ok, gen.error
    assert gen.text == "after the wait"
    assert gen.attempts == 2 and srv.attempts == 2
    first, second = srv.requests
    assert second.received_at - first.received_at >= 0.95
    assert elapsed >= 0.95


async def test_retry_after_is_capped_by_max_wait(srv: OpenAIServer) -> None:
    srv.script([(429, {"Retry-After": "30"}), (200, "soon")])
    started = time.perf_counter()
    gen = await make_expert(srv).generate(PROMPT)
    assert gen.ok, gen.error
    assert gen.attempts == 2
    assert time.perf_counter() - started < 5


async def test_retry_after_beyond_deadline_gives_up_with_the_real_error(srv: OpenAIServer) -> None:
    srv.script([(429, {"Retry-After": "20"}), (200, "too late")])
    retry = RetrySettings(max_attempts=4, initial_wait_s=0.01, max_wait_s=60)
    started = time.perf_counter()
    gen = await make_expert(srv, retry=retry).generate(PROMPT, timeout=2)
    assert time.perf_counter() - started < 1.5
    assert gen.error is not None
    assert gen.error.type == "rate_limit" and gen.error.status_code == 429
    assert gen.error.retryable is True
    assert gen.attempts == 1 and srv.attempts == 1
    assert "gave up" in gen.error.message


async def test_500_then_success_is_retried(srv: OpenAIServer) -> None:
    srv.script([(500, {}), (503, {}), (200, "recovered")])
    gen = await make_expert(srv).generate(PROMPT)
    assert gen.ok, gen.error
    assert gen.text == "recovered"
    assert gen.attempts == 3 and srv.attempts == 3


@pytest.mark.parametrize(
    ("status", "kind"),
    [(400, "bad_request"), (401, "authentication"), (403, "permission_denied"), (404, "not_found")],
)
async def test_client_errors_are_not_retried(srv: OpenAIServer, status: int, kind: str) -> None:
    srv.script([(status, {}), (200, "must not be reached")])
    gen = await make_expert(srv).generate(PROMPT)
    assert gen.error is not None
    assert gen.error.status_code == status
    assert gen.error.type == kind
    assert gen.error.retryable is False
    assert gen.attempts == 1 and srv.attempts == 1
    assert gen.text == ""


async def test_context_window_error_is_not_retried(srv: OpenAIServer) -> None:
    srv.script(
        [
            Reply(
                status=400,
                error_message=(
                    "This model's maximum context length is 8 tokens. "
                    "However, you requested 900 tokens."
                ),
                error_code="context_length_exceeded",
            ),
            (200, "must not be reached"),
        ]
    )
    gen = await make_expert(srv).generate(PROMPT)
    assert gen.error is not None
    assert gen.error.type == "context_window"
    assert gen.error.status_code == 400 and gen.error.retryable is False
    assert srv.attempts == 1


async def test_all_5xx_exhausts_attempts(srv: OpenAIServer) -> None:
    retry = RetrySettings(max_attempts=3, initial_wait_s=0.01, max_wait_s=0.05)
    srv.script([(500, {}), (502, {}), (500, {}), (200, "must not be reached")])
    gen = await make_expert(srv, retry=retry).generate(PROMPT)
    assert gen.error is not None
    assert gen.error.type == "server_error"
    assert gen.error.status_code == 500
    assert gen.error.retryable is True
    assert gen.attempts == retry.max_attempts == srv.attempts
    assert srv.pending == 1


async def test_connection_refused_is_retried_then_fails() -> None:
    retry = RetrySettings(max_attempts=3, initial_wait_s=0.01, max_wait_s=0.05)
    expert = APIExpert(
        "gone", "openai/loopback-model", api_base=f"http://127.0.0.1:{free_port()}/v1", retry=retry
    )
    gen = await expert.generate(PROMPT)
    assert gen.error is not None
    assert gen.error.type == "connection"
    assert gen.error.status_code is None
    assert gen.error.retryable is True
    assert gen.attempts == 3


async def test_dropped_connection_is_retried(srv: OpenAIServer) -> None:
    srv.script([Reply(drop=True), (200, "second try")])
    gen = await make_expert(srv).generate(PROMPT)
    assert gen.ok, gen.error
    assert gen.text == "second try"
    assert gen.attempts == 2 and srv.attempts == 2


async def test_timeout_is_retried(srv: OpenAIServer) -> None:
    srv.script([Reply(delay_s=3, text="late"), (200, "in time")])
    started = time.perf_counter()
    gen = await make_expert(srv, attempt_timeout_s=0.3).generate(PROMPT)
    assert gen.ok, gen.error
    assert gen.text == "in time"
    assert gen.attempts == 2 and srv.attempts == 2
    assert time.perf_counter() - started < 2.5


async def test_timeouts_exhaust_attempts(srv: OpenAIServer) -> None:
    retry = RetrySettings(max_attempts=2, initial_wait_s=0.01, max_wait_s=0.05)
    srv.script([Reply(delay_s=3, text="late"), Reply(delay_s=3, text="late")])
    gen = await make_expert(srv, retry=retry, attempt_timeout_s=0.3).generate(PROMPT)
    assert gen.error is not None
    assert gen.error.type == "timeout"
    assert gen.error.retryable is True
    assert gen.attempts == 2 and srv.attempts == 2


async def test_per_call_timeout_bounds_the_whole_call(srv: OpenAIServer) -> None:
    srv.script([Reply(delay_s=3, text="late")] * 4)
    started = time.perf_counter()
    gen = await make_expert(srv).generate(PROMPT, timeout=0.5)
    elapsed = time.perf_counter() - started
    assert gen.error is not None and gen.error.type == "timeout"
    assert elapsed < 1.5
    assert gen.attempts >= 1 and gen.attempts == srv.attempts


async def test_api_key_from_environment_reaches_server_and_stays_secret(
    srv: OpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = f"sk-test-{uuid.uuid4().hex}"
    monkeypatch.setenv("EXPERTGRAPH_TEST_API_KEY", key)
    expert = make_expert(srv, api_key_env="EXPERTGRAPH_TEST_API_KEY")
    srv.script([(200, "authorised")])
    gen = await expert.generate(PROMPT)
    assert gen.ok, gen.error
    assert srv.requests[0].headers["authorization"] == f"Bearer {key}"
    assert key not in repr(expert)
    assert "EXPERTGRAPH_TEST_API_KEY" in repr(expert)
    assert key not in repr(vars(expert))
    assert key not in gen.model_dump_json()

    # A provider error that echoes the key does not carry it into the Generation.
    srv.script([(401, f"Incorrect API key provided: {key}")])
    gen = await expert.generate(PROMPT)
    assert gen.error is not None and gen.error.status_code == 401
    assert key not in gen.model_dump_json()
    assert "***" in gen.error.message


async def test_litellm_env_lookup_when_api_key_env_is_unset(
    srv: OpenAIServer, openai_key: str
) -> None:
    srv.script([(200, "ok")])
    expert = make_expert(srv)
    gen = await expert.generate(PROMPT)
    assert gen.ok, gen.error
    assert srv.requests[0].headers["authorization"] == f"Bearer {openai_key}"
    assert openai_key not in repr(expert)


async def test_no_key_anywhere_is_a_client_error_not_retried(
    srv: OpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY")
    gen = await make_expert(srv).generate(PROMPT)
    assert gen.error is not None
    assert gen.error.type == "client_error" and gen.error.retryable is False
    assert gen.error.status_code is None
    assert gen.attempts == 1 and srv.attempts == 0


async def test_missing_api_key_env_fails_without_a_request(
    srv: OpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("EXPERTGRAPH_TEST_MISSING_KEY", raising=False)
    gen = await make_expert(srv, api_key_env="EXPERTGRAPH_TEST_MISSING_KEY").generate(PROMPT)
    assert gen.error is not None and gen.error.type == "missing_api_key"
    assert "EXPERTGRAPH_TEST_MISSING_KEY" in gen.error.message
    assert srv.attempts == 0


async def test_per_call_api_key_is_used_but_not_recorded(srv: OpenAIServer) -> None:
    key = f"sk-call-{uuid.uuid4().hex}"
    srv.script([(200, "ok")])
    gen = await make_expert(srv).generate(PROMPT, api_key=key, temperature=0.0)
    assert gen.ok, gen.error
    assert srv.requests[0].headers["authorization"] == f"Bearer {key}"
    assert "api_key" not in gen.params and key not in gen.model_dump_json()
    assert gen.params == {"temperature": 0.0}


async def test_params_and_passthrough_reach_the_server(srv: OpenAIServer) -> None:
    expert = make_expert(srv, params={"temperature": 0.7, "max_tokens": 32})
    srv.script([(200, "ok")])
    gen = await expert.generate(
        PROMPT,
        temperature=0.0,
        top_p=0.5,
        stop=["\n"],
        seed=7,
        presence_penalty=0.25,
        logit_bias={"5": 1},
        response_format={"type": "json_object"},
        extra_body={"custom_flag": True},
    )
    assert gen.ok, gen.error
    body = srv.requests[0].body
    assert body["model"] == "loopback-model"
    assert body["temperature"] == 0.0  # per call overrides the expert's default
    assert body["max_tokens"] == 32
    assert body["top_p"] == 0.5 and body["stop"] == ["\n"] and body["seed"] == 7
    assert body["presence_penalty"] == 0.25 and body["logit_bias"] == {"5": 1}
    assert body["response_format"] == {"type": "json_object"} and body["custom_flag"] is True
    assert gen.params["seed"] == 7


async def test_stream_param_is_refused_without_a_request(srv: OpenAIServer) -> None:
    gen = await make_expert(srv).generate(PROMPT, stream=True)
    assert gen.error is not None and gen.error.type == "invalid_params"
    assert srv.attempts == 0


async def test_unusable_timeout_is_an_error_not_an_exception(srv: OpenAIServer) -> None:
    for timeout in ("soon", 0, -1, float("nan")):
        gen = await make_expert(srv).generate(PROMPT, timeout=timeout)
        assert gen.error is not None and gen.error.type == "invalid_params", timeout
        assert "timeout" in gen.error.message
    assert srv.attempts == 0


def test_expert_call_error_is_an_expertgraph_error() -> None:
    assert issubclass(ExpertCallError, ExpertGraphError)


async def test_handler_computes_answers_from_the_request() -> None:
    def shout(request):  # type: ignore[no-untyped-def]
        return Reply(text=request.last_user_text.upper(), prompt_tokens=11, completion_tokens=5)

    with OpenAIServer(handler=shout) as srv:
        gen = await make_expert(srv).generate([{"role": "user", "content": "hello there"}])
    assert gen.text == "HELLO THERE"
    assert (gen.input_tokens, gen.output_tokens) == (11, 5)


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        APIExpert("x", "")
    with pytest.raises(ValueError, match="api_key"):
        APIExpert("x", "openai/m", params={"api_key": "sk-secret"})
    with pytest.raises(ValueError, match="num_retries"):
        APIExpert("x", "openai/m", params={"num_retries": 3})
    with pytest.raises(ValueError):
        RetrySettings(max_attempts=0)
    with pytest.raises(ValueError):
        RetrySettings(initial_wait_s=2, max_wait_s=1)
    assert APIExpert("x", "openai/m", retry={"max_attempts": 2}).retry.max_attempts == 2


def test_parse_retry_after() -> None:
    now = 1_700_000_000.0
    assert parse_retry_after({"retry-after": "2"}) == 2.0
    assert parse_retry_after({"retry-after": "0.5"}) == 0.5
    assert parse_retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    date = email.utils.formatdate(now + 7, usegmt=True)
    assert parse_retry_after({"retry-after": date}, now=now) == pytest.approx(7, abs=1)
    past = email.utils.formatdate(now - 60, usegmt=True)
    assert parse_retry_after({"retry-after": past}, now=now) == 0.0
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after({"retry-after": "-3"}) is None
    assert parse_retry_after({}) is None


def test_backoff_grows_and_is_capped() -> None:
    settings = RetrySettings(initial_wait_s=0.1, max_wait_s=1.0, jitter_s=0.0)
    assert [settings.backoff_s(n) for n in (1, 2, 3, 4, 5)] == [0.1, 0.2, 0.4, 0.8, 1.0]
    jittered = RetrySettings(initial_wait_s=0.1, max_wait_s=10.0, jitter_s=0.05)
    waits = {jittered.backoff_s(2) for _ in range(20)}
    assert all(0.2 <= w <= 0.25 for w in waits) and len(waits) > 1


def test_importing_the_api_expert_does_not_import_litellm() -> None:
    code = (
        "import sys, expertgraph.agents._litellm; "
        "from expertgraph.agents import APIExpert, RetrySettings; APIExpert('x', 'openai/m'); "
        "assert 'litellm' not in sys.modules, 'litellm imported'; "
        "assert 'openai' not in sys.modules, 'openai imported'"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("LITELLM_")}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr


def test_import_litellm_sets_offline_defaults() -> None:
    code = (
        "import os; from expertgraph.agents._litellm import import_litellm; m = import_litellm(); "
        "assert os.environ['LITELLM_LOCAL_MODEL_COST_MAP'] == 'True'; "
        "assert os.environ['LITELLM_MODE'] == 'PRODUCTION'; "
        "assert m.suppress_debug_info is True"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("LITELLM_")}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr


async def test_server_speaks_openai_to_the_sdk_plain_and_streaming(srv: OpenAIServer) -> None:
    import openai

    client = openai.AsyncOpenAI(base_url=srv.url + "/v1", api_key="sk-loopback", max_retries=0)
    try:
        srv.script([(200, "plain answer here")])
        plain = await client.chat.completions.create(
            model="loopback-model", messages=[{"role": "user", "content": PROMPT}]
        )
        assert plain.choices[0].message.content == "plain answer here"
        assert plain.usage is not None
        assert plain.usage.total_tokens == count_words(PROMPT) + 3

        srv.script([(200, "streamed answer here")])
        stream = await client.chat.completions.create(
            model="loopback-model",
            messages=[{"role": "user", "content": PROMPT}],
            stream=True,
            stream_options={"include_usage": True},
        )
        pieces: list[str] = []
        usage = None
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                pieces.append(chunk.choices[0].delta.content)
            usage = chunk.usage or usage
        assert "".join(pieces) == "streamed answer here"
        assert usage is not None and usage.completion_tokens == 3
        assert srv.attempts == 2
    finally:
        await client.close()
