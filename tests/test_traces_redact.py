"""Secrets never reach a trace; content capture can be turned off."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from openai_server import OpenAIServer, RecordedRequest, Reply

from expertgraph.agents.callable import CallableExpert
from expertgraph.core.errors import ExpertCallError
from expertgraph.core.types import AnswerFormat, Task
from expertgraph.orchestrator.orchestrator import Orchestrator
from expertgraph.policies.aggregation.voting import MajorityVote
from expertgraph.policies.routing.fixed import AllExperts
from expertgraph.traces.export import export_dataset
from expertgraph.traces.labels import LabelStore
from expertgraph.traces.redact import REDACTED, Redactor
from expertgraph.traces.schema import OMITTED
from expertgraph.traces.store import TraceStore

KEY = "sk-proj-" + "Zx81Qw" * 8  # an OpenAI-shaped key, 56 characters
PLAIN = "s3cr3t-value-without-known-shape-9f2c"  # only recognisable by its variable's name


def test_redactor_replaces_whole_secrets() -> None:
    r = Redactor(
        environ={
            "MY_SERVICE_TOKEN": PLAIN,
            "TOKENIZERS_PARALLELISM": "false-but-long",
            "HOME": "/root/x",
        }
    )
    samples = {
        f"key={KEY}.": f"key={REDACTED}.",
        f"Authorization: Bearer {PLAIN}": f"Authorization: Bearer {REDACTED}",
        "auth Bearer eyJhbGciOiJIUzI1NiJ9.e30.abc123": f"auth Bearer {REDACTED}",
        "sk-ant-api03-" + "a1" * 20: REDACTED,
        "AKIAIOSFODNN7EXAMPLE in aws": f"{REDACTED} in aws",
        "ghp_" + "A1b2" * 9: REDACTED,
        "xoxb-1234567890-abcdefghij": REDACTED,
        "AIza" + "Sy0123456789abcdefghijklmnopqrstuv": REDACTED,
        "hf_" + "aB3" * 10: REDACTED,
        "basic arithmetic and a token bucket": "basic arithmetic and a token bucket",
        "false-but-long /root/x": "false-but-long /root/x",  # not secrets by their names
    }
    for text, expected in samples.items():
        assert r.text(text) == expected
    nested = r.data(
        {"headers": {"Authorization": "Basic dXNlcjpwYXNzd29yZA==", "api_key": "abc"}, "xs": [KEY]}
    )
    assert nested == {"headers": {"Authorization": REDACTED, "api_key": REDACTED}, "xs": [REDACTED]}


def _compact(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def test_redacting_the_encoded_line_matches_redacting_the_record() -> None:
    """The writer redacts the JSON line; it must remove exactly what the record walk removes."""
    r = Redactor(environ={"MY_SERVICE_TOKEN": PLAIN, "ODD_SECRET": 'quote"and\\slash-9f2c'})
    secrets = [
        KEY,
        PLAIN,
        'quote"and\\slash-9f2c',
        "AKIAIOSFODNN7EXAMPLE",
        "hf_" + "aB3" * 10,
        "Bearer eyJhbGciOiJIUzI1NiJ9.e30.abc123",
    ]
    glue = ["", " ", "\n", "\t", '"', "\\", "é", "x", "-", ":", "\n\n", "\u2028"]
    records = []
    for i, secret in enumerate(secrets):
        for before in glue:
            for after in glue:
                text = f"{before}{secret}{after}"
                records.append(
                    {
                        "text": text,
                        "meta": {"api_key": text, "Authorization": "Basic " + text},
                        "xs": [text, {"token": text}],
                        text: i,
                    }
                )
    records.append(
        {
            "note": "basic arithmetic and a token bucket",
            "api_key": "",
            "token": 3,
            "password": {"nested": "plain words"},
            "Cookie": REDACTED,
        }
    )
    for record in records:
        walked = _compact(r.data(record))
        assert json.loads(r.json_line(_compact(record))) == json.loads(walked), record


def test_a_key_right_after_an_escape_is_redacted_in_the_line() -> None:
    r = Redactor(environ={})
    for text in (f"line one\n{KEY}", f"tab\t{KEY}", "Authorization:\nBearer abc123def456"):
        line = r.json_line(_compact({"text": text}))
        assert KEY not in line and "abc123def456" not in line, line


def _provider(request: RecordedRequest) -> Reply:
    sent = request.headers.get("authorization", "")
    if request.body.get("model") == "needs-another-key":  # quotes the key, as providers do
        return Reply(
            status=401,
            error_message=f"Incorrect API key provided: {sent.split()[-1]}. Also {PLAIN}",
        )
    return Reply(text=f"4 (you sent Authorization: {sent})")


def test_key_in_env_header_and_error_message_never_reaches_the_trace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("ACME_SECRET", PLAIN)
    with OpenAIServer(handler=_provider) as server:
        url = server.url + "/v1/chat/completions"

        def call(text: str, key: str, model: str = "m") -> str:
            response = httpx.post(
                url,
                json={"model": model, "messages": [{"role": "user", "content": text}]},
                headers={"Authorization": f"Bearer {key}"},
            )
            if response.status_code != 200:
                message = response.json()["error"]["message"]
                raise ExpertCallError(
                    f"HTTP {response.status_code}: {message}", status_code=response.status_code
                )
            return response.json()["choices"][0]["message"]["content"]

        def echo(text: str) -> str:  # its answer repeats the request's header
            return call(text, KEY)

        def rejected(text: str) -> str:  # the provider's error message quotes the key
            return call(text, KEY, model="needs-another-key")

        def plain(text: str) -> str:
            return f"4, and my config says ACME_SECRET={PLAIN}"

        orch = Orchestrator(
            [
                CallableExpert("echo", echo),
                CallableExpert("rejected", rejected),
                CallableExpert("plain", plain),
            ],
            AllExperts(),
            MajorityVote(),
            trace_dir=tmp_path,
            config_snapshot={
                "otel_headers": {"Authorization": f"Bearer {KEY}"},
                "note": f"key {KEY}",
            },
        )
        task = Task(
            prompt=f"What is 2+2? (debug: OPENAI_API_KEY={KEY})",
            answer_format=AnswerFormat(kind="number"),
            metadata={"headers": {"Authorization": f"Bearer {KEY}"}, "x-api-key": PLAIN},
        )
        result = orch.run(task)
    assert result.answer is not None
    trace = orch.trace_store.load(result.run_id)
    calls = {
        s.generations[i].expert: s.generations[i]
        for s in trace.steps()
        for i in range(len(s.generations))
    }
    assert "401" in calls["rejected"].error.message and REDACTED in calls["rejected"].error.message  # type: ignore[union-attr]
    assert f"Bearer {REDACTED}" in calls["echo"].text
    LabelStore(tmp_path).add(result.run_id, 1.0, note=f"checked with {KEY}")
    orch.trace_store.flush()  # the index is written in the background
    files = [p for p in tmp_path.iterdir() if p.is_file()]
    assert any(p.name.endswith(".labels.jsonl") for p in files)
    assert any(p.name.startswith("index.sqlite") for p in files)
    for path in files:
        data = path.read_bytes()
        for secret in (KEY, PLAIN):
            assert secret.encode() not in data, path
            # No part of a secret is kept either: neither its tail nor its head past the shape
            # prefix.
            assert secret[-16:].encode() not in data, path
            assert secret[:20].encode() not in data, path


def test_content_capture_off_keeps_routing_but_no_prompts_or_outputs(tmp_path: Path) -> None:
    answers = {"a": "31415926", "b": "31415926", "c": "27182818"}
    experts = [CallableExpert(n, (lambda t, n=n: f"my answer: {answers[n]}")) for n in answers]
    orch = Orchestrator(
        experts,
        AllExperts(),
        MajorityVote(),
        trace_dir=tmp_path,
        trace_options={"capture_content": False},
    )
    result = orch.run(Task(prompt="the secret question", answer_format=AnswerFormat(kind="number")))
    assert result.answer == "my answer: 31415926"  # the run itself is unaffected
    raw = (tmp_path / f"{result.run_id}.jsonl").read_text()
    for content in ("secret question", "my answer", "31415926", "27182818"):
        assert content not in raw
    trace = TraceStore(tmp_path).load(result.run_id)
    assert trace.capture.content is False and trace.start.task.prompt == OMITTED
    step = trace.steps()[0]
    assert {g.expert for g in step.generations} == {"a", "b", "c"}
    # Who agreed with whom survives as placeholders; the answers themselves do not.
    groups = sorted(sorted(k for k in keys) for keys in step.result.supporters.values())  # type: ignore[union-attr]
    assert groups == [["a#0", "b#0"], ["c#0"]]
    assert step.result.answer in step.result.supporters and step.result.answer.startswith(
        "[omitted:"
    )  # type: ignore[union-attr]
    stats = export_dataset(tmp_path, tmp_path / "ds.jsonl")
    assert stats.examples == 0 and stats.skipped["content not captured"] == 1
    assert json.loads(json.dumps(stats.skipped))  # plain data


def test_a_secret_exported_after_the_redactor_was_made_is_still_caught(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    redactor = Redactor()
    assert redactor.text(f"value {PLAIN}") == f"value {PLAIN}"  # not a secret yet
    redactor.refresh()  # unchanged environment: the cached verdict stands
    monkeypatch.setenv("LATE_SERVICE_TOKEN", PLAIN)
    redactor.refresh()
    assert redactor.text(f"value {PLAIN}") == f"value {REDACTED}"
    monkeypatch.setenv("LATE_SERVICE_TOKEN", "another-secret-value-77")
    redactor.refresh()
    assert redactor.text("x another-secret-value-77") == f"x {REDACTED}"
