"""``expertgraph serve``: real loopback HTTP servers, instant callable experts, real traces."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from serve_experts import write_config

from expertgraph.core.errors import ConfigError, UnknownModelError
from expertgraph.orchestrator import Orchestrator, RunEvent
from expertgraph.orchestrator.integrations.catalog import ModelCatalog
from expertgraph.orchestrator.integrations.server import (
    TRACE_HEADER,
    ServerThread,
    ServeSettings,
    check_bind,
    create_app,
    is_loopback,
    load_api_keys,
)
from expertgraph.traces.schema import CallRecord
from expertgraph.traces.store import iter_records

TESTS = Path(__file__).parent
KEY = "sk-test-0123456789"


@pytest.fixture(scope="module")
def config_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("serve")
    configs = root / "configs"
    traces = root / "traces"
    # 'pair': two experts that agree, so both are named as the answer's experts.
    write_config(configs, "pair", {"echo_a": "echo", "echo_b": "echo"}, trace_dir=traces)
    write_config(
        configs, "solo", {"echo": "echo", "shout": "shout"}, policy="fixed:shout", trace_dir=traces
    )
    write_config(configs, "params", {"seen": "params_seen"}, trace_dir=traces)
    write_config(configs, "down", {"broken": "broken"}, trace_dir=traces)
    write_config(configs, "slow", {"slow": "slow"}, trace_dir=traces)
    return root


@pytest.fixture(scope="module")
def catalog(config_dir: Path) -> ModelCatalog:
    return ModelCatalog.from_paths([config_dir / "configs"], aliases=["all", "embedding"])


@pytest.fixture(scope="module")
def server(catalog: ModelCatalog) -> Iterator[ServerThread]:
    settings = ServeSettings(max_body_bytes=50_000, max_tokens_limit=64)
    with ServerThread(create_app(catalog, settings)) as running:
        yield running


@pytest.fixture()
def client(server: ServerThread) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


def chat(model: str, text: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}


def sse_events(response: httpx.Response) -> list[Any]:
    """The ``data:`` payloads of a server-sent event stream, parsed (``[DONE]`` kept as a str)."""
    events: list[Any] = []
    for block in response.text.split("\n\n"):
        if not block.strip():
            continue
        assert block.startswith("data: "), block
        payload = block[len("data: ") :]
        events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


def trace_usage(config_dir: Path, run_id: str) -> tuple[int, int, int]:
    calls = [
        r
        for r in iter_records(config_dir / "traces" / f"{run_id}.jsonl")
        if isinstance(r, CallRecord)
    ]
    return (
        sum(r.generation.input_tokens for r in calls),
        sum(r.generation.output_tokens for r in calls),
        len(calls),
    )


# ---- catalog ---------------------------------------------------------------------------------


def test_catalog_names_configs_and_policy_aliases(catalog: ModelCatalog) -> None:
    ids = catalog.ids()
    for name in ("down", "pair", "params", "slow", "solo"):
        assert f"expertgraph/{name}" in ids
    # Aliases route the first config's experts (down.yaml sorts first) with another policy;
    # one is skipped only when a config already has that name.
    assert "expertgraph/embedding" in ids and "expertgraph/all" in ids
    alias = catalog.resolve("expertgraph/embedding")
    assert alias.alias_of == "down" and alias.experts == ["broken"]
    # An alias is the first config with another policy, over the same expert objects.
    target = catalog.resolve("expertgraph/down")
    assert alias.orchestrator is not target.orchestrator
    assert alias.orchestrator.experts["broken"] is target.orchestrator.experts["broken"]
    assert catalog.resolve("expertgraph").name == "down"  # the first config
    assert catalog.resolve("expertgraph/pair:echo_a+echo_b").name == "pair"
    assert catalog.resolve("pair").name == "pair"
    with pytest.raises(UnknownModelError, match="expertgraph/pair"):
        catalog.resolve("expertgraph/nope")


def test_catalog_rejects_duplicate_names(tmp_path: Path) -> None:
    write_config(tmp_path / "a", "same", {"e": "echo"})
    write_config(tmp_path / "b", "same", {"e": "echo"})
    with pytest.raises(ConfigError, match="both named 'same'"):
        ModelCatalog.from_paths([tmp_path / "a", tmp_path / "b"], aliases=False)


def test_catalog_rejects_unknown_alias(config_dir: Path) -> None:
    with pytest.raises(ConfigError, match="not registered"):
        ModelCatalog.from_paths([config_dir / "configs" / "pair.yaml"], aliases=["no-such-policy"])


# ---- endpoints -------------------------------------------------------------------------------


def test_health_and_models(client: httpx.Client, catalog: ModelCatalog) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    listed = client.get("/v1/models").json()
    assert listed["object"] == "list"
    assert [m["id"] for m in listed["data"]] == catalog.ids()
    one = client.get("/v1/models/expertgraph/pair")
    assert one.status_code == 200 and one.json()["id"] == "expertgraph/pair"
    missing = client.get("/v1/models/expertgraph/nope")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"


def test_completion_names_experts_sums_usage_and_traces(
    client: httpx.Client, config_dir: Path
) -> None:
    response = client.post("/v1/chat/completions", json=chat("expertgraph/pair", "hello there"))
    assert response.status_code == 200
    body = response.json()
    run_id = response.headers[TRACE_HEADER]
    assert body["id"] == f"chatcmpl-{run_id}"
    assert body["model"] == "expertgraph/pair:echo_a+echo_b"
    assert body["choices"][0]["message"] == {
        "role": "assistant",
        "content": "echo: hello there",
        "refusal": None,
    }
    assert body["choices"][0]["finish_reason"] == "stop"
    prompt, completion, calls = trace_usage(config_dir, run_id)
    assert calls == 2 and completion > 0
    assert body["usage"] == {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    assert body["expertgraph"]["run_id"] == run_id and body["expertgraph"]["calls"] == 2


def test_fixed_config_returns_its_expert(client: httpx.Client) -> None:
    body = client.post("/v1/chat/completions", json=chat("expertgraph/solo", "quiet please")).json()
    assert body["model"] == "expertgraph/solo:shout"
    assert body["choices"][0]["message"]["content"] == "QUIET PLEASE"


def test_request_params_reach_experts(client: httpx.Client) -> None:
    body = client.post(
        "/v1/chat/completions",
        json=chat("expertgraph/params", "x", max_tokens=7, temperature=0.5, stop=["\n\n"], seed=3),
    ).json()
    seen = json.loads(body["choices"][0]["message"]["content"])
    assert seen["max_tokens"] == 7 and seen["temperature"] == 0.5 and seen["seed"] == 3
    assert seen["stop"] == ["\n\n"]


def test_max_tokens_cut_reports_length(client: httpx.Client) -> None:
    body = client.post(
        "/v1/chat/completions", json=chat("expertgraph/pair", "one two three four", max_tokens=2)
    ).json()
    assert body["choices"][0]["message"]["content"] == "echo: one"
    assert body["choices"][0]["finish_reason"] == "length"


def test_stop_sequence_cuts_answer(client: httpx.Client) -> None:
    body = client.post(
        "/v1/chat/completions", json=chat("expertgraph/pair", "alpha beta gamma", stop="gamma")
    ).json()
    assert body["choices"][0]["message"]["content"] == "echo: alpha beta "
    assert body["choices"][0]["finish_reason"] == "stop"


def test_stream_matches_plain_completion(client: httpx.Client, config_dir: Path) -> None:
    text = "one two three four five six seven eight nine ten eleven twelve"
    plain = client.post("/v1/chat/completions", json=chat("expertgraph/pair", text)).json()
    response = client.post(
        "/v1/chat/completions",
        json=chat("expertgraph/pair", text, stream=True, stream_options={"include_usage": True}),
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    run_id = response.headers[TRACE_HEADER]
    events = sse_events(response)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(
        c["object"] == "chat.completion.chunk" and c["id"] == f"chatcmpl-{run_id}" for c in chunks
    )
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    content = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert content == plain["choices"][0]["message"]["content"]
    assert sum(1 for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content")) >= 2
    finish = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert len(finish) == 1 and finish[0]["choices"][0]["finish_reason"] == "stop"
    usage_chunk = chunks[-1]
    assert usage_chunk["choices"] == []
    prompt, completion, _ = trace_usage(config_dir, run_id)
    assert usage_chunk["usage"] == {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    assert usage_chunk["model"] == "expertgraph/pair:echo_a+echo_b"


def test_stream_without_include_usage_has_no_usage(client: httpx.Client) -> None:
    events = sse_events(
        client.post("/v1/chat/completions", json=chat("expertgraph/pair", "hi", stream=True))
    )
    assert events[-1] == "[DONE]"
    assert all("usage" not in c for c in events[:-1])


# ---- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "param"),
    [
        ({"model": "expertgraph/pair"}, "messages"),
        ({"model": "expertgraph/pair", "messages": []}, "messages"),
        (
            chat("expertgraph/pair", "x") | {"messages": [{"role": "user", "content": 5}]},
            "messages.0.content",
        ),
        (
            chat("expertgraph/pair", "x") | {"messages": [{"role": "wizard", "content": "x"}]},
            "messages.0.role",
        ),
        (chat("expertgraph/pair", "x", temperature=3), "temperature"),
        (chat("expertgraph/pair", "x", n=2), "n"),
        (chat("expertgraph/pair", "x", max_tokens=65), "max_tokens"),
        (chat("expertgraph/pair", "x", max_completion_tokens=1000), "max_completion_tokens"),
        (chat("expertgraph/pair", "x", logprobs=True), "logprobs"),
        (chat("expertgraph/pair", "x", tool_choice="required"), "tool_choice"),
        (
            chat("expertgraph/pair", "x", response_format={"type": "json_schema"}),
            "response_format.json_schema",
        ),
        (
            chat("expertgraph/pair", "x")
            | {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image_url", "image_url": {"url": "http://x"}}],
                    }
                ]
            },
            "messages.0.content",
        ),
    ],
)
def test_invalid_fields_get_400_naming_the_field(
    client: httpx.Client, payload: dict[str, Any], param: str
) -> None:
    response = client.post("/v1/chat/completions", json=payload)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert param in error["message"]
    assert TRACE_HEADER not in response.headers  # nothing ran


def test_lone_surrogate_is_a_400_not_a_500(client: httpx.Client) -> None:
    raw = b'{"model": "expertgraph/pair", "messages": [{"role": "user", "content": "\\ud800"}]}'
    response = client.post(
        "/v1/chat/completions", content=raw, headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "messages.0.content"


def test_invalid_json_gets_400(client: httpx.Client) -> None:
    response = client.post(
        "/v1/chat/completions", content=b'{"model": ', headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_json"


def test_unknown_model_gets_404(client: httpx.Client) -> None:
    response = client.post("/v1/chat/completions", json=chat("expertgraph/nope", "x"))
    assert response.status_code == 404
    assert response.json()["error"] == {
        "message": response.json()["error"]["message"],
        "type": "invalid_request_error",
        "param": "model",
        "code": "model_not_found",
    }


def test_body_over_limit_gets_413(client: httpx.Client) -> None:
    response = client.post("/v1/chat/completions", json=chat("expertgraph/pair", "x" * 60_000))
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"


def test_unknown_path_and_method_are_openai_errors(client: httpx.Client) -> None:
    missing = client.get("/v1/nothing")
    assert missing.status_code == 404 and "error" in missing.json()
    wrong = client.get("/v1/chat/completions")
    assert wrong.status_code == 405 and "error" in wrong.json()


def test_failing_experts_get_502_with_trace(client: httpx.Client, config_dir: Path) -> None:
    response = client.post("/v1/chat/completions", json=chat("expertgraph/down", "anyone?"))
    assert response.status_code == 502
    error = response.json()["error"]
    assert error["code"] == "no_answer" and error["type"] == "expert_error"
    run_id = response.headers[TRACE_HEADER]
    assert run_id in error["message"]
    calls = [
        r
        for r in iter_records(config_dir / "traces" / f"{run_id}.jsonl")
        if isinstance(r, CallRecord)
    ]
    assert calls and all(r.generation.error is not None for r in calls)


def test_failing_experts_mid_stream_give_error_event_then_done(client: httpx.Client) -> None:
    response = client.post(
        "/v1/chat/completions", json=chat("expertgraph/down", "anyone?", stream=True)
    )
    assert response.status_code == 200  # the role chunk went out before the run failed
    events = sse_events(response)
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    assert events[-2]["error"]["code"] == "no_answer"
    assert events[-1] == "[DONE]"


class _CrashingOrchestrator(Orchestrator):
    """Fault injection: the run dies after its first node, as a bug in a policy would."""

    async def astream(self, task: Any, *, run_id: str | None = None) -> AsyncIterator[RunEvent]:
        async for event in super().astream(task, run_id=run_id):
            yield event
            raise RuntimeError("boom")

    async def arun(self, task: Any, *, run_id: str | None = None) -> Any:
        raise RuntimeError("boom")


def test_crash_is_500_before_first_byte_and_error_event_after(config_dir: Path) -> None:
    from expertgraph.agents.callable import CallableExpert
    from expertgraph.policies.routing.fixed import AllExperts

    orch = _CrashingOrchestrator(
        [CallableExpert("e", lambda text: text)], AllExperts(), trace_dir=config_dir / "traces"
    )
    with ServerThread(create_app(ModelCatalog.from_orchestrators({"crash": orch}))) as srv:
        plain = httpx.post(
            f"{srv.url}/v1/chat/completions", json=chat("expertgraph/crash", "x"), timeout=30
        )
        assert plain.status_code == 500
        assert plain.json()["error"] == {
            "message": "internal error: RuntimeError",
            "type": "server_error",
            "param": None,
            "code": "internal_error",
        }
        streamed = httpx.post(
            f"{srv.url}/v1/chat/completions",
            json=chat("expertgraph/crash", "x", stream=True),
            timeout=30,
        )
        events = sse_events(streamed)
        assert events[-2]["error"]["code"] == "run_failed" and "boom" not in json.dumps(events[-2])
        assert events[-1] == "[DONE]"


# ---- concurrency -----------------------------------------------------------------------------


def test_requests_run_concurrently(server: ServerThread) -> None:
    async def burst() -> tuple[float, list[int]]:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as c:
            started = time.perf_counter()
            responses = await asyncio.gather(
                *(
                    c.post("/v1/chat/completions", json=chat("expertgraph/slow", f"n{i}"))
                    for i in range(8)
                )
            )
            return time.perf_counter() - started, [r.status_code for r in responses]

    elapsed, statuses = asyncio.run(burst())
    assert statuses == [200] * 8
    # Eight 0.4 s answers one after another would take 3.2 s; the expert's card allows 4 at once.
    assert elapsed < 2.4, elapsed


# ---- keys and binding ------------------------------------------------------------------------


def test_keys_from_env_and_file(tmp_path: Path) -> None:
    key_file = tmp_path / "keys.txt"
    key_file.write_text("# team keys\nsk-file-000000001\n\nsk-file-000000002  # ci\n")
    keys = load_api_keys(key_file, env={"EXPERTGRAPH_API_KEYS": "sk-env-00000001, sk-env-00000002"})
    assert keys == {"sk-file-000000001", "sk-file-000000002", "sk-env-00000001", "sk-env-00000002"}
    assert load_api_keys(env={}) == frozenset()
    with pytest.raises(ConfigError, match="at least 8"):
        load_api_keys(env={"EXPERTGRAPH_API_KEYS": "short"})
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n")
    with pytest.raises(ConfigError, match="holds no key"):
        load_api_keys(empty, env={})


def test_loopback_detection() -> None:
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "10.0.0.5", "example.com"))


def test_refuses_non_loopback_without_keys() -> None:
    with pytest.raises(ConfigError, match="refusing to listen on '0.0.0.0'"):
        check_bind("0.0.0.0", ServeSettings())
    check_bind("0.0.0.0", ServeSettings(api_keys=frozenset({KEY})))
    check_bind("127.0.0.1", ServeSettings())


def test_wrong_or_missing_key_gets_401_and_nothing_else(catalog: ModelCatalog) -> None:
    settings = ServeSettings(api_keys=frozenset({KEY, "sk-other-key-000000"}))
    with ServerThread(create_app(catalog, settings)) as srv:
        good = {"authorization": f"Bearer {KEY}"}
        assert httpx.get(f"{srv.url}/health").status_code == 200  # liveness needs no key
        for headers in (
            {},
            {"authorization": "Bearer sk-wrong-00000000"},
            {"authorization": KEY},
            {"authorization": "Basic abc"},
        ):
            for method, path, body in (
                ("GET", "/v1/models", None),
                ("POST", "/v1/chat/completions", chat("expertgraph/pair", "x")),
                ("POST", "/v1/chat/completions", {"broken": True}),
            ):
                r = httpx.request(method, srv.url + path, json=body, headers=headers)
                assert r.status_code == 401, (headers, path)
                assert r.headers["www-authenticate"] == "Bearer"
                assert TRACE_HEADER.lower() not in r.headers
                text = r.text
                assert not any(name in text for name in ("echo", "shout", "pair", "expertgraph/"))
        ok = httpx.post(
            f"{srv.url}/v1/chat/completions",
            json=chat("expertgraph/pair", "x"),
            headers=good,
            timeout=30,
        )
        assert ok.status_code == 200 and ok.json()["model"] == "expertgraph/pair:echo_a+echo_b"
        schema = httpx.get(f"{srv.url}/openapi.json").json()
        assert schema["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"


# ---- the command line ------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "EXPERTGRAPH_API_KEYS"}
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")])
    env.update(extra)
    return env


def test_a_worker_builds_the_same_app_from_its_spec(
    config_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from expertgraph.orchestrator.cli._serve import WORKER_ENV, worker_app

    monkeypatch.delenv(WORKER_ENV, raising=False)
    with pytest.raises(ConfigError, match="serve --workers"):
        worker_app()
    key_file = tmp_path / "keys"
    key_file.write_text(KEY + "\n")
    spec = {
        "config": [str(config_dir / "configs" / "pair.yaml")],
        "aliases": False,
        "api_key_file": str(key_file),
        "max_body_bytes": 1000,
        "max_tokens_limit": 64,
        "created": 1234,
    }
    monkeypatch.setenv(WORKER_ENV, json.dumps(spec))
    with ServerThread(worker_app()) as running, httpx.Client(base_url=running.url) as c:
        assert c.get("/v1/models").status_code == 401  # the key file's key is required
        auth = {"authorization": f"Bearer {KEY}"}
        models = c.get("/v1/models", headers=auth).json()["data"]
        assert [(m["id"], m["created"]) for m in models] == [("expertgraph/pair", 1234)]
        big = chat("expertgraph/pair", "x" * 2000)
        assert c.post("/v1/chat/completions", json=big, headers=auth).status_code == 413


def test_cli_refuses_public_bind_without_keys(config_dir: Path) -> None:
    port = _free_port()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "expertgraph.orchestrator.cli",
            "serve",
            "--config",
            str(config_dir / "configs"),
            "--host",
            "0.0.0.0",
            "--port",
            str(port),
        ],
        env=_cli_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "refusing to listen on '0.0.0.0' without API keys" in proc.stderr
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0  # nothing bound


def test_cli_serves_end_to_end(config_dir: Path, tmp_path: Path) -> None:
    port = _free_port()
    key_file = tmp_path / "keys"
    key_file.write_text(KEY + "\n")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "expertgraph.orchestrator.cli",
            "serve",
            "--config",
            str(config_dir / "configs" / "pair.yaml"),
            "--port",
            str(port),
            "--api-key-file",
            str(key_file),
            "--aliases",
            "none",
            "--log-level",
            "warning",
        ],
        env=_cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.2)
        headers = {"authorization": f"Bearer {KEY}"}
        assert [m["id"] for m in httpx.get(url + "/v1/models", headers=headers).json()["data"]] == [
            "expertgraph/pair"
        ]
        r = httpx.post(
            url + "/v1/chat/completions",
            json=chat("expertgraph/pair", "from the cli"),
            headers=headers,
            timeout=30,
        )
        assert r.status_code == 200
        assert r.json()["choices"][0]["message"]["content"] == "echo: from the cli"
        assert (config_dir / "traces" / f"{r.headers[TRACE_HEADER]}.jsonl").exists()
        assert (
            httpx.post(url + "/v1/chat/completions", json=chat("expertgraph/pair", "x")).status_code
            == 401
        )
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert "serving expertgraph/pair on http://127.0.0.1" in err


# ---- a real local model ----------------------------------------------------------------------


@pytest.mark.models
def test_local_smollm2_behind_serve(tmp_path: Path) -> None:
    config = tmp_path / "small.yaml"
    config.write_text(
        "name: small\nexperts:\n  - name: smollm2\n    kind: local\n    model: smollm2-135m\n"
        "    num_threads: 1\n"
        "policy: {name: fixed, experts: [smollm2]}\n"
        "defaults: {max_tokens: 8, temperature: 0}\n"
        f"trace: {{dir: {tmp_path / 'traces'}}}\n"
    )
    catalog = ModelCatalog.from_paths([config], aliases=False)
    with ServerThread(create_app(catalog)) as srv:
        request = chat("expertgraph/small", "What is the capital of Japan?", max_tokens=8)
        first = httpx.post(f"{srv.url}/v1/chat/completions", json=request, timeout=300)
        assert first.status_code == 200, first.text
        body = first.json()
        assert body["model"] == "expertgraph/small:smollm2"
        assert body["choices"][0]["message"]["content"].strip()
        assert 0 < body["usage"]["completion_tokens"] <= 8 and body["usage"]["prompt_tokens"] > 0
        streamed = sse_events(
            httpx.post(
                f"{srv.url}/v1/chat/completions", json=request | {"stream": True}, timeout=300
            )
        )
        assert streamed[-1] == "[DONE]"
        content = "".join(
            c["choices"][0]["delta"].get("content") or "" for c in streamed[:-1] if c["choices"]
        )
        assert content == body["choices"][0]["message"]["content"]  # greedy: same answer twice


@pytest.mark.models
def test_cli_serves_the_built_in_config_without_config(tmp_path: Path) -> None:
    # No --config and no ./expertgraph.yaml: the configuration `expertgraph run` uses.
    port = _free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "expertgraph.orchestrator.cli",
            "serve",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        cwd=tmp_path,
        env=_cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 180
        while True:
            try:
                listed = httpx.get(url + "/v1/models", timeout=1)
                if listed.status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.5)
        ids = [m["id"] for m in listed.json()["data"]]
        assert ids[0] == "expertgraph/local"  # the built-in config's name, served first
        assert httpx.get(url + "/v1/models/expertgraph/local", timeout=5).status_code == 200
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert "the following arguments are required" not in err
    assert "serving expertgraph/local" in err
