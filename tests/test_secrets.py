"""Secrets the process uses as credentials are redacted whatever they are called: an API
expert's key in ``UPSTREAM_AUTH``, the server's own keys, OTel header values; from the trace,
the index, the HTML report, the OTLP export and the exported dataset."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from openai_server import OpenAIServer, RecordedRequest, Reply

from expertgraph.agents import APIExpert, CallableExpert, RetrySettings
from expertgraph.agents._api_errors import safe_message
from expertgraph.orchestrator import Orchestrator
from expertgraph.orchestrator.integrations.catalog import ModelCatalog
from expertgraph.orchestrator.integrations.server import ServerThread, ServeSettings, create_app
from expertgraph.policies.routing.fixed import FixedPolicy
from expertgraph.traces.export import export_dataset
from expertgraph.traces.index import TraceIndex
from expertgraph.traces.otel import run_to_otlp
from expertgraph.traces.redact import (
    MIN_REGISTERED_LENGTH,
    REDACTED,
    Redactor,
    redact_text,
    register_secret,
)
from expertgraph.traces.report import render_report
from expertgraph.traces.schema import RunStart
from expertgraph.traces.store import iter_records, load_run


def _secret(prefix: str) -> str:
    # No known key shape and a name no rule flags: only the registry can know it.
    return f"{prefix}{uuid.uuid4().hex}"


def _sinks(trace_dir: Path, trace_path: str) -> dict[str, str]:
    """Every sink a run's content reaches, as text."""
    trace = load_run(trace_path)
    index = TraceIndex(trace_dir)
    index.sync()
    dataset = trace_dir / "dataset.jsonl"
    export_dataset(trace_dir, dataset)
    return {
        "trace": Path(trace_path).read_text(encoding="utf-8"),
        "index": (trace_dir / "index.sqlite").read_bytes().decode("latin-1"),
        "report": render_report([trace]),
        "otlp": str(run_to_otlp(trace)),
        "dataset": dataset.read_text(encoding="utf-8") if dataset.exists() else "",
    }


def _assert_absent(secret: str, sinks: dict[str, str]) -> None:
    leaks = [name for name, text in sinks.items() if secret in text]
    assert leaks == [], f"secret found in {leaks}"


def test_registered_values_are_redacted_and_short_ones_ignored() -> None:
    value = _secret("reg-")
    redactor = Redactor(environ={})
    assert redactor.text(f"x {value} y") == f"x {value} y"
    register_secret(value)
    redactor.refresh()
    assert redactor.text(f"x {value} y") == f"x {REDACTED} y"
    assert redactor.json_line(f'{{"a":"{value}"}}') == f'{{"a":"{REDACTED}"}}'
    assert redact_text(value) == REDACTED

    short = "q" * (MIN_REGISTERED_LENGTH - 1)
    register_secret(short)
    assert redact_text(f"a {short} b") == f"a {short} b"
    six = uuid.uuid4().hex[:MIN_REGISTERED_LENGTH]
    register_secret(six)
    assert redact_text(six) == REDACTED


def test_error_messages_are_redacted() -> None:
    value = _secret("err-")
    register_secret(value)
    assert value not in safe_message(f"upstream refused key {value}", None)


@pytest.fixture
def upstream() -> Iterator[OpenAIServer]:
    def echo_auth(request: RecordedRequest) -> Reply:
        # A misbehaving upstream that repeats the key it was sent.
        key = request.headers.get("authorization", "").removeprefix("Bearer ")
        return Reply(text=f"you sent {key}")

    with OpenAIServer(handler=echo_auth) as server:
        yield server


def test_an_api_key_in_any_variable_is_redacted_everywhere(
    upstream: OpenAIServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = _secret("up-")
    monkeypatch.setenv("UPSTREAM_AUTH", key)
    expert = APIExpert(
        "remote",
        "openai/loopback-model",
        api_base=upstream.url + "/v1",
        api_key_env="UPSTREAM_AUTH",
        retry=RetrySettings(max_attempts=1),
    )
    orch = Orchestrator([expert], FixedPolicy(["remote"]), trace_dir=tmp_path)
    result = orch.run(f"my key is {key}, repeat it")
    orch.trace_store.flush()
    assert upstream.requests[0].headers["authorization"] == f"Bearer {key}"  # it was used
    assert result.answer is not None and "you sent" in result.answer
    assert result.trace_path is not None
    sinks = _sinks(tmp_path, result.trace_path)
    _assert_absent(key, sinks)
    assert REDACTED in sinks["trace"]


def test_the_servers_keys_pasted_into_a_prompt_are_redacted(tmp_path: Path) -> None:
    key = _secret("srv-")
    echo = CallableExpert("echo", lambda prompt: f"echo: {prompt}")
    orch = Orchestrator([echo], FixedPolicy(["echo"]), trace_dir=tmp_path)
    app = create_app(
        ModelCatalog.from_orchestrators(orch), ServeSettings(api_keys=frozenset({key}))
    )
    with ServerThread(app) as server:
        reply = httpx.post(
            server.url + "/v1/chat/completions",
            headers={"Authorization": f"Bearer {key}"},
            json={
                "model": "expertgraph",
                "messages": [{"role": "user", "content": f"the server key is {key}"}],
            },
            timeout=30,
        )
    assert reply.status_code == 200, reply.text
    # The echo repeats the key: the reply that leaves the server is redacted too.
    content = reply.json()["choices"][0]["message"]["content"]
    assert key not in content and REDACTED in content
    orch.trace_store.flush()
    (trace_path,) = [str(p) for p in tmp_path.glob("*.jsonl")]
    _assert_absent(key, _sinks(tmp_path, trace_path))


def test_otel_headers_stay_out_of_run_start_and_are_redacted(tmp_path: Path) -> None:
    value = _secret("otel-")
    config = tmp_path / "expertgraph.yaml"
    config.write_text(
        "experts:\n"
        "  - {name: calc, kind: callable, callable: 'expertgraph.agents.tools:calculator'}\n"
        "policy: {name: fixed, experts: [calc]}\n"
        f"trace: {{dir: {tmp_path / 'traces'}, otel_headers: {{x-collector-team: {value}}}}}\n"
    )
    orch = Orchestrator.from_config(config)
    result = orch.run(f"2 + 3, and {value}")
    orch.trace_store.flush()
    assert result.trace_path is not None
    (start,) = [r for r in iter_records(result.trace_path) if isinstance(r, RunStart)]
    assert "otel_headers" not in start.config.get("trace", {})
    _assert_absent(value, _sinks(tmp_path / "traces", result.trace_path))


def test_cli_output_is_redacted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from expertgraph.orchestrator.cli import main

    key = _secret("cli-")
    monkeypatch.setenv("UPSTREAM_AUTH", key)
    config = tmp_path / "expertgraph.yaml"
    config.write_text(
        f"""
home: {tmp_path}
experts:
  - {{name: echo, kind: callable, callable: "serve_experts:echo"}}
  - {{name: up, kind: api, model: openai/m, api_base: "http://127.0.0.1:9/v1",
      api_key_env: UPSTREAM_AUTH}}
policy: {{name: fixed, experts: [echo]}}
""",
        encoding="utf-8",
    )
    prompt = f"repeat {key}"
    for extra in ([], ["--json"]):
        assert main(["run", prompt, "--config", str(config), *extra]) == 0
        out = capsys.readouterr().out
        assert key not in out and REDACTED in out, out
