"""A loopback model for batch, collect and Ray tests: latency, a rate limit, answers by rule.

Not a test module. :class:`RuledModel` is a handler for :class:`openai_server.OpenAIServer`:
it answers ``"The answer is N."`` for a prompt ending in ``N`` (``offset`` added: a wrong
model), fails a prompt containing ``fail``, holds each request ``latency_s`` (so the
server's threads see real concurrency), answers 429 with ``Retry-After`` when more than
``limit`` requests are in flight, and records the peak number in flight.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

from openai_server import RecordedRequest, Reply

KEY_ENV = "EXPERTGRAPH_LOOPBACK_KEY"
# The loopback servers take any key; LiteLLM's OpenAI client wants one. Set here, before a
# test starts a subprocess or a Ray cluster, which inherit it.
os.environ.setdefault(KEY_ENV, "loopback-key")


class RuledModel:
    def __init__(self, *, latency_s: float = 0.0, offset: int = 0, limit: int | None = None):
        self.latency_s = latency_s
        self.offset = offset
        self.limit = limit
        self.active = 0
        self.peak = 0
        self.refused = 0
        self._lock = threading.Lock()

    def __call__(self, request: RecordedRequest) -> Reply:
        with self._lock:
            self.active += 1
            if self.limit is not None and self.active > self.limit:
                self.active -= 1
                self.refused += 1
                return Reply(status=429, headers={"Retry-After": "0.05"})
            self.peak = max(self.peak, self.active)
        try:
            if self.latency_s:
                time.sleep(self.latency_s)
            text = request.last_user_text
            if "fail" in text:
                return Reply(status=400, error_message="this prompt always fails")
            word = text.split()[-1] if text.split() else ""
            if word.isdigit():
                return Reply(text=f"The answer is {int(word) + self.offset}.")
            return Reply(text=f"I read: {text}")
        finally:
            with self._lock:
                self.active -= 1


def api_expert(name: str, url: str, **card: Any) -> dict[str, Any]:
    """A config entry of an API expert on a loopback server (quick retries)."""
    return {
        "name": name,
        "kind": "api",
        "model": "openai/loopback-model",
        "api_base": url + "/v1",
        "api_key_env": KEY_ENV,
        "card": {"description": f"expert {name}", **card},
        "retry": {"max_attempts": 6, "initial_wait_s": 0.05, "max_wait_s": 0.5},
    }


def write_config(path: Path, experts: list[dict[str, Any]], **extra: Any) -> Path:
    """A config file (JSON is YAML) with a fixed policy on the first expert by default."""
    config = {
        "experts": experts,
        "policy": {"name": "fixed", "experts": [experts[0]["name"]]},
        "trace": {"dir": str(path.parent / "traces")},
        **extra,
    }
    path.write_text(json.dumps(config), encoding="utf-8")
    return path


def write_tasks(path: Path, rows: list[dict[str, Any] | str]) -> Path:
    """One JSON object (or a raw string line) a line."""
    lines = [r if isinstance(r, str) else json.dumps(r) for r in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def result_lines(path: Path) -> list[dict[str, Any]]:
    """The complete, parseable lines of a results file."""
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows
