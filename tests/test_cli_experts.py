"""`expertgraph experts`: each configured expert, and whether it loads and answers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from openai_server import OpenAIServer

from expertgraph.orchestrator.cli import main


def test_experts_lists_and_checks_each_expert(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with OpenAIServer(default="OK") as server:
        config = tmp_path / "cfg.yaml"
        config.write_text(
            f"""\
experts:
  - name: calc
    kind: callable
    callable: expertgraph.agents.tools:calculator
  - name: remote
    kind: api
    model: openai/loopback
    api_base: {server.url}/v1
    api_key_env: LOOPBACK_KEY
  - name: offline
    kind: api
    model: openai/nothing
    api_base: http://127.0.0.1:9/v1
    api_key_env: LOOPBACK_KEY
    retry: {{max_attempts: 1}}
"""
        )
        import os

        os.environ["LOOPBACK_KEY"] = "sk-loopback-test-key-123456"
        try:
            code = main(["experts", "--config", str(config), "--json"])
        finally:
            del os.environ["LOOPBACK_KEY"]
        assert server.attempts == 1
    rows = {
        r["name"]: r
        for r in json.loads(capsys.readouterr().out.strip().splitlines()[-1])["experts"]
    }
    assert code == 1  # one expert does not answer
    assert rows["remote"]["status"] == "ok" and "OK" in rows["remote"]["detail"]
    assert (
        rows["offline"]["status"] == "error" and "connection" in rows["offline"]["detail"].lower()
    )
    # The calculator has no arithmetic to do in the probe: it loads, but its answer is an error.
    assert rows["calc"]["status"] == "error" and "no arithmetic" in rows["calc"]["detail"]
    assert main(["experts", "--config", str(config), "--no-check", "--json"]) == 0
