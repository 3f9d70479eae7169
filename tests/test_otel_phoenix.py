"""OpenTelemetry export checked against a real OTLP backend: Arize Phoenix, started here.

``phoenix serve`` runs on 127.0.0.1 with a temporary working directory (its own SQLite
database) for the whole session; spans are read back through Phoenix's own client
(arize-phoenix-client). Phoenix takes 20-50 s to start on 2 busy cores, once per session.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from expertgraph.agents import CallableExpert
from expertgraph.core.errors import MissingDependencyError, TraceError
from expertgraph.core.types import PlanStep, Task
from expertgraph.orchestrator import Orchestrator
from expertgraph.policies import AllExperts, MajorityVote
from expertgraph.traces.otel import build_spans, export_run, span_id, trace_id
from expertgraph.traces.schema import CallRecord
from expertgraph.traces.store import RunTrace, load_run

PHOENIX_START_S = 180.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _phoenix_command() -> list[str]:
    """``$EXPERTGRAPH_PHOENIX`` (Phoenix's own executable, e.g. from a separate virtualenv:
    its pins need not fit this project's), else Phoenix installed next to the tests."""
    exe = os.environ.get("EXPERTGRAPH_PHOENIX")
    return [exe] if exe else [sys.executable, "-m", "phoenix.server.main"]


class Phoenix:
    def __init__(self, url: str) -> None:
        from phoenix.client import Client

        self.url = url
        self.client = Client(base_url=url)

    def spans(self, run_id: str, expected: int, timeout: float = 60.0) -> list[dict[str, Any]]:
        """The run's spans as Phoenix stored them, once ``expected`` of them are there."""
        deadline = time.monotonic() + timeout
        found: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            found = list(
                self.client.spans.get_spans(
                    project_identifier="default", trace_ids=[trace_id(run_id)], limit=1000
                )
            )
            if len(found) >= expected:
                return found
            time.sleep(0.2)  # Phoenix ingests OTLP requests through a queue
        raise AssertionError(f"Phoenix holds {len(found)} of {expected} spans of run {run_id}")


class PhoenixExited(RuntimeError):
    pass


def _start_phoenix(work: Path) -> tuple[subprocess.Popen[bytes], str, float]:
    """Start ``phoenix serve`` on free ports; returns the process, its URL, seconds taken."""
    port, grpc_port = _free_port(), _free_port()
    env = {
        **os.environ,
        "PHOENIX_WORKING_DIR": str(work),
        "PHOENIX_HOST": "127.0.0.1",
        "PHOENIX_PORT": str(port),
        "PHOENIX_GRPC_PORT": str(grpc_port),
        "PHOENIX_TELEMETRY_ENABLED": "false",
    }
    log = work / "phoenix.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*_phoenix_command(), "serve"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, stopped whole at the end
        )
    url = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    while True:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:]
            raise PhoenixExited(f"phoenix exited with {proc.returncode}: {tail}")
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return proc, url, time.monotonic() - started
        except httpx.TransportError:
            pass
        if time.monotonic() - started > PHOENIX_START_S:
            _stop(proc)
            raise RuntimeError(f"phoenix did not start in {PHOENIX_START_S:g}s")
        time.sleep(0.2)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.fixture(scope="session")
def phoenix(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Phoenix]:
    try:
        proc, url, took = _start_phoenix(tmp_path_factory.mktemp("phoenix"))
    except PhoenixExited:  # a port taken between choosing and binding it: once more
        proc, url, took = _start_phoenix(tmp_path_factory.mktemp("phoenix"))
    print(f"phoenix started in {took:.1f}s", file=sys.stderr)
    try:
        yield Phoenix(url)
    finally:
        _stop(proc)


def _tool_free_run(tmp_path: Path, **trace_options: Any) -> tuple[Orchestrator, RunTrace]:
    def broken(text: str) -> str:
        raise RuntimeError("backend down")

    experts = [
        CallableExpert("alpha", lambda t: "42" if "40 + 2" in t else "Paris"),
        CallableExpert("beta", lambda t: "42" if "40 + 2" in t else "Paris"),
        CallableExpert("gamma", broken),
    ]
    orch = Orchestrator(
        experts, AllExperts(), MajorityVote(), trace_dir=tmp_path, trace_options=trace_options
    )
    task = Task(
        plan=[
            PlanStep(instruction="What is the capital of France?"),
            PlanStep(instruction="What is 40 + 2?"),
        ]
    )
    result = orch.run(task)
    assert result.answer == "42"
    return orch, load_run(result.trace_path or "")


def _by_id(spans: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {s["context"]["span_id"]: s for s in spans}


def test_a_runs_spans_arrive_with_their_parent_links_and_attributes(
    phoenix: Phoenix, tmp_path: Path
) -> None:
    _, trace = _tool_free_run(tmp_path)
    sent = build_spans(trace)
    assert export_run(trace, phoenix.url) == len(sent)
    stored = _by_id(phoenix.spans(trace.run_id, len(sent)))
    expected = {
        format(s.context.span_id, "016x"): (
            s.name,
            format(s.parent.span_id, "016x") if s.parent else None,
        )
        for s in sent
    }
    assert {k: (v["name"], v["parent_id"]) for k, v in stored.items()} == expected
    root = stored[span_id(trace.run_id, "run")]
    assert root["parent_id"] is None and root["span_kind"] == "AGENT"
    steps = [s for s in stored.values() if s["name"].startswith("expertgraph.step")]
    assert len(steps) == 2 and all(s["parent_id"] == span_id(trace.run_id, "run") for s in steps)
    calls = [s for s in stored.values() if s["span_kind"] == "LLM"]
    records = [r for r in trace.records if isinstance(r, CallRecord)]
    assert len(calls) == len(records) >= 5  # gamma fails at step 1 at least
    step_ids = {s["context"]["span_id"] for s in steps}
    for call in calls:
        a = call["attributes"]
        assert call["parent_id"] in step_ids
        assert a["gen_ai.operation.name"] == "chat"
        assert a["gen_ai.request.model"] in ("alpha", "beta", "gamma")
        assert a["gen_ai.provider.name"] == "python"
        assert a["expertgraph.expert"] == a["gen_ai.agent.name"]
        failed = a["expertgraph.expert"] == "gamma"
        assert call["status_code"] == ("ERROR" if failed else "OK")
        assert ("error.type" in a) == failed
    # Times come from the records, not from when the export ran.
    record_start = trace.start.ts
    assert abs(_seconds(root["start_time"]) - record_start) < 1e-3


def _seconds(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso).timestamp()


def test_the_live_exporter_sends_each_finished_run(phoenix: Phoenix, tmp_path: Path) -> None:
    headers = {"x-team": "routing-secret-value-123"}
    orch, trace = _tool_free_run(tmp_path, otel_endpoint=phoenix.url, otel_headers=headers)
    orch.trace_store.flush(timeout=60)
    stored = phoenix.spans(trace.run_id, len(build_spans(trace)))
    root = _by_id(stored)[span_id(trace.run_id, "run")]
    assert root["attributes"]["expertgraph.run_id"] == trace.run_id


def test_traces_otel_sends_a_recorded_run(phoenix: Phoenix, tmp_path: Path) -> None:
    _, trace = _tool_free_run(tmp_path)
    out = tmp_path / "spans.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "expertgraph.orchestrator.cli",
            "traces",
            "otel",
            trace.run_id,
            "--dir",
            str(tmp_path),
            "--out",
            str(out),
            "--endpoint",
            phoenix.url + "/v1/traces",
            "--header",
            "x-team=routing-secret-value-456",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    count = len(build_spans(trace))
    assert f"sent {count} spans" in proc.stdout
    stored = _by_id(phoenix.spans(trace.run_id, count))
    written = json.loads(out.read_text())["resourceSpans"][0]["scopeSpans"][0]["spans"]
    assert {s["spanId"] for s in written} == set(stored)
    assert "routing-secret-value-456" not in proc.stdout + proc.stderr


def test_an_unreachable_backend_is_one_clear_error(tmp_path: Path) -> None:
    _, trace = _tool_free_run(tmp_path)
    url = f"http://127.0.0.1:{_free_port()}"
    with pytest.raises(TraceError, match=rf"export of \d+ spans to {url}/v1/traces failed"):
        export_run(trace, url, timeout=1.0)


def test_header_values_become_secrets(tmp_path: Path) -> None:
    from expertgraph.traces.redact import Redactor

    _, trace = _tool_free_run(tmp_path)
    secret = "hdr-3f9a2c1b7e6d5a4c"
    with pytest.raises(TraceError):
        export_run(
            trace, f"http://127.0.0.1:{_free_port()}", headers={"api_key": secret}, timeout=0.5
        )
    assert secret not in Redactor().text(f"the key is {secret}")


def test_without_the_sdk_the_error_names_the_extra(tmp_path: Path) -> None:
    _, trace = _tool_free_run(tmp_path)
    code = (
        "import sys; sys.modules['opentelemetry.sdk'] = None\n"
        "from expertgraph.core.errors import MissingDependencyError\n"
        "from expertgraph.traces.otel import build_spans\n"
        "from expertgraph.traces.store import load_run\n"
        "try:\n"
        f"    build_spans(load_run({str(trace.path)!r}))\n"
        "except MissingDependencyError as exc:\n"
        "    print(exc)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "pip install 'expertgraph[otel]'" in proc.stdout, proc.stderr
    assert issubclass(MissingDependencyError, ImportError)
