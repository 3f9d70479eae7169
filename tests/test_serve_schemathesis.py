"""Property-based checks of ``expertgraph serve`` against its own OpenAPI schema (schemathesis).

``st run`` (the schemathesis CLI: its examples, coverage, fuzzing and stateful phases, every
check) runs against a real loopback server, at most 50 generated examples per operation and
phase, deterministically (the same cases each run). It must report no failure and no error:
no 5xx, status codes, content types, headers and bodies as the schema declares them,
schema-valid requests accepted, invalid ones rejected, auth not ignored. Once without keys
(loopback) and once with keys, where the schema declares bearer auth.

The schemathesis pytest plugin (``schemathesis.pytest.from_fixture``) does not work with
pytest 9 (it reads ``Function._nodeid``, which pytest 9 removed), hence the CLI.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from serve_experts import json_writer

from expertgraph.agents import CallableExpert
from expertgraph.core.tools import NamedToolChoice, ToolChoice, ToolSpec
from expertgraph.core.types import Message
from expertgraph.orchestrator import Orchestrator
from expertgraph.orchestrator.integrations.catalog import ModelCatalog
from expertgraph.orchestrator.integrations.server import ServerThread, ServeSettings, create_app
from expertgraph.policies import AllExperts

KEY = "sk-schemathesis-000000"
MAX_EXAMPLES = 50

# The body size limit (413) is real but no JSON schema can state it in bytes; it is the one
# status schemathesis' data-acceptance checks are told to expect besides their defaults.
CONFIG = """
[checks.negative_data_rejection]
expected-statuses = [400, 401, 403, 404, 405, 406, 409, 413, 415, 422, 428, 429]

[checks.positive_data_acceptance]
expected-statuses = ["2XX", 401, 403, 404, 409, 413, 429]
"""


def tool_writer(
    messages: list[Message],
    tools: list[ToolSpec] | None = None,
    tool_choice: ToolChoice | None = None,
) -> dict[str, Any]:
    """``json_writer``, and when a call is forced: a call to the named (or first) tool, with no
    arguments (which any generated schema short of ``required`` properties accepts)."""
    if not tools or tool_choice in (None, "auto", "none"):
        return json_writer(messages)
    name = tool_choice.name if isinstance(tool_choice, NamedToolChoice) else tools[0].name
    call = {"name": name, "arguments": {}}
    return {"text": "", "tool_calls": [call], "input_tokens": 1, "output_tokens": 1}


def _catalog(root: Path) -> ModelCatalog:
    # Experts that always answer, JSON and forced tool calls included: a request that asks for
    # JSON (or a call) from experts that cannot give it is a documented 502 (no usable answer),
    # which schemathesis would rightly count as a server error. Those 502s are tested in
    # test_serve.py.
    def orch(name: str, *experts: str) -> Orchestrator:
        return Orchestrator(
            [CallableExpert(e, tool_writer) for e in experts],
            AllExperts(),
            trace_dir=root / "traces",
            name=name,
        )

    return ModelCatalog.from_orchestrators(
        [orch("default", "writer_a", "writer_b"), orch("solo", "writer"), orch("all", "writer")]
    )


@pytest.fixture(scope="module")
def open_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    with ServerThread(
        create_app(
            _catalog(tmp_path_factory.mktemp("st-open")), ServeSettings(max_tokens_limit=512)
        )
    ) as srv:
        yield srv


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    settings = ServeSettings(api_keys=frozenset({KEY}), max_tokens_limit=512)
    with ServerThread(create_app(_catalog(tmp_path_factory.mktemp("st-keyed")), settings)) as srv:
        yield srv


def _st() -> list[str]:
    exe = shutil.which("st", path=str(Path(sys.executable).parent))
    assert exe is not None, "schemathesis is not installed"
    return [exe]


def _run(url: str, tmp_path: Path, *extra: str) -> str:
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG)
    command = [
        *_st(), "--config-file", str(config), "run", url + "/openapi.json",
        "--checks", "all", "--max-examples", str(MAX_EXAMPLES),
        "--generation-deterministic", "--no-color", *extra,
    ]  # fmt: skip
    proc = subprocess.run(command, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-12000:]
    return out


def _tested(out: str) -> int:
    match = re.search(r"(\d+) generated", out)
    assert match, out[-3000:]
    return int(match.group(1))


def test_open_server_conforms(open_server: ServerThread, tmp_path: Path) -> None:
    out = _run(open_server.url, tmp_path)
    assert "Tested: 5" in out  # every operation of the schema was exercised
    assert _tested(out) > 200
    assert "No issues found" in out or "passed" in out


def test_keyed_server_conforms(keyed_server: ServerThread, tmp_path: Path) -> None:
    out = _run(keyed_server.url, tmp_path, "--header", f"Authorization: Bearer {KEY}")
    assert "Tested: 5" in out
    assert _tested(out) > 200


def test_schema_declares_what_the_server_does(
    open_server: ServerThread, keyed_server: ServerThread
) -> None:
    raw = httpx.get(open_server.url + "/openapi.json").json()
    chat = raw["paths"]["/v1/chat/completions"]["post"]
    assert set(chat["responses"]) >= {"200", "400", "404", "413", "502"}
    assert "422" not in chat["responses"]
    assert chat["responses"]["200"]["content"]["text/event-stream"]["schema"]["required"] == [
        "data"
    ]
    request = raw["components"]["schemas"]["ChatCompletionRequest"]["properties"]
    integer = next(o for o in request["max_tokens"]["anyOf"] if o.get("type") == "integer")
    assert integer["maximum"] == 512
    assert "securitySchemes" not in raw.get("components", {})
    keyed = httpx.get(keyed_server.url + "/openapi.json").json()
    assert keyed["paths"]["/v1/models"]["get"]["security"] == [{"bearer": []}]
    assert "401" in keyed["paths"]["/v1/chat/completions"]["post"]["responses"]
    assert "security" not in keyed["paths"]["/health"]["get"]
