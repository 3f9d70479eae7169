"""A reply longer than the expert's ``max_reply_chars`` is cut and flagged: API experts (plain
and streamed, a real loopback server sending 50 MB) and callable experts."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from openai_server import OpenAIServer, Reply

from expertgraph.agents import APIExpert, CallableExpert, RetrySettings
from expertgraph.core.types import DEFAULT_MAX_REPLY_CHARS
from expertgraph.orchestrator import Orchestrator
from expertgraph.orchestrator.config import load_config
from expertgraph.orchestrator.config.build import build_expert
from expertgraph.policies.routing.fixed import FixedPolicy
from expertgraph.traces.schema import CallRecord
from expertgraph.traces.store import iter_records

MB = 1_000_000
# 50 MB of text in 50 words of 1 MB: streamed, one chunk a word.
BIG = ("x" * (MB - 1) + " ") * 50

# Runs in a fresh interpreter so its peak memory is the run's alone; the server stays here.
CHILD = textwrap.dedent(
    """
    import json, resource, sys
    from pathlib import Path
    from expertgraph.agents import APIExpert, RetrySettings
    from expertgraph.agents._litellm import import_litellm
    from expertgraph.core.types import ExpertCard
    from expertgraph.orchestrator import Orchestrator
    from expertgraph.policies.routing.fixed import FixedPolicy

    url, trace_dir, stream = sys.argv[1], sys.argv[2], sys.argv[3] == "stream"
    expert = APIExpert("big", "openai/loopback-model", api_base=url + "/v1", stream=stream,
                       retry=RetrySettings(max_attempts=1), card=ExpertCard(timeout_s=120))
    orch = Orchestrator([expert], FixedPolicy(["big"]), trace_dir=trace_dir)
    import_litellm()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = orch.run("hi")
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    gen = result.steps[0].generations[0]
    print(json.dumps({"grew_mb": (after - before) / 1024, "chars": len(gen.text),
                      "truncated": gen.truncated, "finish": gen.finish_reason,
                      "error": gen.error.type if gen.error else None,
                      "trace": result.trace_path}))
    """
)


pytestmark = pytest.mark.usefixtures("openai_key")


@pytest.mark.parametrize(("mode", "grew_mb"), [("plain", 600), ("stream", 200)])
def test_a_50_mb_reply_is_cut_with_bounded_memory_and_trace(
    srv: OpenAIServer, tmp_path: Path, mode: str, grew_mb: int
) -> None:
    srv.script([Reply(text=BIG)])
    out = subprocess.run(
        [sys.executable, "-c", CHILD, srv.url, str(tmp_path), mode],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["error"] is None
    assert seen["chars"] == DEFAULT_MAX_REPLY_CHARS
    assert seen["truncated"] is True and seen["finish"] == "length"
    # Without the cap: a 419 MB trace and 2.2 GB of peak memory.
    assert seen["grew_mb"] < grew_mb
    trace = Path(seen["trace"])
    assert trace.stat().st_size < 16 * MB
    calls = [r for r in iter_records(trace) if isinstance(r, CallRecord)]
    assert [c.generation.truncated for c in calls] == [True]
    if mode == "stream":
        # The client hung up after the cap: the server never got to send the 50 words.
        (request,) = srv.requests
        assert request.sent_chunks < 25


async def test_the_cap_is_per_expert_and_a_short_reply_is_whole(srv: OpenAIServer) -> None:
    expert = APIExpert(
        "small",
        "openai/loopback-model",
        api_base=srv.url + "/v1",
        retry=RetrySettings(max_attempts=1),
        max_reply_chars=10,
    )
    srv.script([Reply(text="0123456789abcdef"), Reply(text="0123456789")])
    cut = await expert.generate("hi")
    assert (cut.text, cut.truncated, cut.finish_reason) == ("0123456789", True, "length")
    whole = await expert.generate("hi")
    assert (whole.text, whole.truncated, whole.finish_reason) == ("0123456789", False, "stop")


async def test_a_streamed_reply_is_cut_at_the_cap(srv: OpenAIServer) -> None:
    expert = APIExpert(
        "small",
        "openai/loopback-model",
        api_base=srv.url + "/v1",
        stream=True,
        retry=RetrySettings(max_attempts=1),
        max_reply_chars=12,
    )
    srv.script([Reply(text="alpha beta gamma delta epsilon zeta eta theta")])
    gen = await expert.generate("hi")
    assert gen.ok, gen.error
    assert (gen.text, gen.truncated) == ("alpha beta g", True)


async def test_callable_replies_are_capped() -> None:
    expert = CallableExpert("long", lambda prompt: "y" * 100, max_reply_chars=30)
    gen = await expert.generate("hi")
    assert (len(gen.text), gen.truncated, gen.finish_reason) == (30, True, "length")
    default = CallableExpert("long", lambda prompt: "y" * (DEFAULT_MAX_REPLY_CHARS + 5))
    assert len((await default.generate("hi")).text) == DEFAULT_MAX_REPLY_CHARS


def test_max_reply_chars_from_config(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        "experts:\n"
        "  - {name: a, kind: api, model: openai/m, max_reply_chars: 500}\n"
        "  - {name: c, kind: callable, callable: 'expertgraph.agents.tools:calculator',\n"
        "     max_reply_chars: 40}\n"
    )
    cfg = load_config(path)
    experts = [build_expert(e) for e in cfg.experts]
    assert [getattr(e, "max_reply_chars", None) for e in experts] == [500, 40]


def test_the_trace_shows_the_cut(tmp_path: Path) -> None:
    expert = CallableExpert("long", lambda prompt: "z" * 100, max_reply_chars=20)
    result = Orchestrator([expert], FixedPolicy(["long"]), trace_dir=tmp_path).run("hi")
    assert result.answer == "z" * 20
    assert result.trace_path is not None
    calls = [r for r in iter_records(result.trace_path) if isinstance(r, CallRecord)]
    assert [c.generation.truncated for c in calls] == [True]
