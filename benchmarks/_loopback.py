"""The loopback OpenAI-compatible server the benchmarks call: a separate process (so its CPU
is not the client's), answering "pong" after a fixed delay."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_SERVER_CODE = """
import sys
sys.path.insert(0, {tests!r})
from openai_server import OpenAIServer, Reply
delay = float(sys.argv[1])
server = OpenAIServer(handler=lambda request: Reply(text="pong", delay_s=delay)).start()
print(server.url, flush=True)
sys.stdin.read()
"""


def start_server(delay_s: float) -> tuple[subprocess.Popen[str], str]:
    """Start the server process; it runs until its stdin closes. Returns it and its URL."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _SERVER_CODE.format(tests=str(ROOT / "tests")), str(delay_s)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    url = proc.stdout.readline().strip()
    if not url:
        raise RuntimeError("the loopback server did not start")
    return proc, url
