"""Streamed API replies are watched: a first-token timeout and an inter-chunk idle timeout, each
its own failure kind, against a real loopback server that stalls."""

from __future__ import annotations

from pathlib import Path

import pytest
from openai_server import OpenAIServer, Reply

from expertgraph.agents import APIExpert, RetrySettings
from expertgraph.agents.api import FIRST_TOKEN_TIMEOUT, IDLE_TIMEOUT
from expertgraph.core.errors import ConfigError
from expertgraph.core.types import ExpertCard
from expertgraph.orchestrator import Orchestrator
from expertgraph.orchestrator.config import load_config
from expertgraph.policies.routing.fixed import FixedPolicy
from expertgraph.traces.schema import CallRecord
from expertgraph.traces.store import iter_records

ONE_TRY = RetrySettings(max_attempts=1)
TEXT = "one two three four five six"


pytestmark = pytest.mark.usefixtures("openai_key")


def _expert(srv: OpenAIServer, **kwargs: object) -> APIExpert:
    kwargs.setdefault("retry", ONE_TRY)
    return APIExpert(
        "streamer",
        "openai/loopback-model",
        api_base=srv.url + "/v1",
        stream=True,
        card=ExpertCard(timeout_s=20),
        **kwargs,  # type: ignore[arg-type]
    )


async def test_a_stream_that_never_sends_a_token_fails_as_first_token_timeout(
    srv: OpenAIServer,
) -> None:
    # Headers and the role-only chunk arrive at once; no token follows for 10 s.
    srv.script([Reply(text=TEXT, stall_after_chunks=1, stall_s=10)])
    gen = await _expert(srv, first_token_timeout_s=2, idle_timeout_s=5).generate("hi")
    assert gen.error is not None
    assert gen.error.type == FIRST_TOKEN_TIMEOUT and gen.error.retryable
    assert gen.latency_s < 10  # given up at the watchdog, not after the stall


async def test_a_server_that_stalls_before_answering_fails_as_first_token_timeout(
    srv: OpenAIServer,
) -> None:
    srv.script([Reply(text=TEXT, delay_s=10)])  # not even the headers
    gen = await _expert(srv, first_token_timeout_s=0.5).generate("hi")
    assert gen.error is not None and gen.error.type == FIRST_TOKEN_TIMEOUT


async def test_a_stream_that_stalls_mid_reply_fails_as_idle_timeout(srv: OpenAIServer) -> None:
    # Role chunk and two words, then 10 s of silence.
    srv.script([Reply(text=TEXT, stall_after_chunks=3, stall_s=10)])
    gen = await _expert(srv, first_token_timeout_s=5, idle_timeout_s=0.5).generate("hi")
    assert gen.error is not None
    assert gen.error.type == IDLE_TIMEOUT and gen.error.retryable


async def test_a_stall_is_retried_and_a_slow_but_steady_stream_is_not_cut(
    srv: OpenAIServer,
) -> None:
    srv.script(
        [
            Reply(text=TEXT, stall_after_chunks=3, stall_s=10),
            # Stalls 0.3 s once, under the 1 s idle limit: answered in full.
            Reply(text=TEXT, stall_after_chunks=3, stall_s=0.3),
        ]
    )
    retry = RetrySettings(max_attempts=2, initial_wait_s=0.01, max_wait_s=0.05)
    gen = await _expert(srv, retry=retry, first_token_timeout_s=5, idle_timeout_s=1).generate("hi")
    assert gen.ok, gen.error
    assert gen.text == TEXT
    assert gen.attempts == 2 and srv.attempts == 2


def test_the_timeout_kinds_reach_the_trace(srv: OpenAIServer, tmp_path: Path) -> None:
    srv.script([Reply(text=TEXT, stall_after_chunks=3, stall_s=10)])
    orch = Orchestrator(
        [_expert(srv, idle_timeout_s=0.5)], FixedPolicy(["streamer"]), trace_dir=tmp_path
    )
    result = orch.run("hi")
    assert result.trace_path is not None
    calls = [r for r in iter_records(result.trace_path) if isinstance(r, CallRecord)]
    assert [c.generation.error.type for c in calls if c.generation.error] == [IDLE_TIMEOUT]


def test_config_fields_and_their_rule(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(
        "experts:\n"
        "  - {name: s, kind: api, model: openai/m, stream: true,\n"
        "     first_token_timeout_s: 2, idle_timeout_s: 1}\n"
    )
    cfg = load_config(good)
    from expertgraph.orchestrator.config.build import build_expert

    expert = build_expert(cfg.experts[0])
    assert isinstance(expert, APIExpert)
    assert (expert.first_token_timeout_s, expert.idle_timeout_s) == (2, 1)

    bad = tmp_path / "bad.yaml"
    bad.write_text("experts:\n  - {name: s, kind: api, model: openai/m, idle_timeout_s: 1}\n")
    with pytest.raises(ConfigError, match="idle_timeout_s needs stream: true"):
        load_config(bad)
