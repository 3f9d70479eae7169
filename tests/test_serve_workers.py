"""``expertgraph serve --workers N``: one port, N processes, one trace directory and index.

A real ``expertgraph serve`` subprocess on 127.0.0.1; its expert answers with the pid of the
worker process that ran it, so the replies show which workers served.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx

from expertgraph.orchestrator.integrations.server import TRACE_HEADER

EXPERTS = """
import os


async def whoami(text):
    return str(os.getpid())
"""

CONFIG = """name: workers
experts:
  - {{name: whoami, kind: callable, callable: "workers_experts:whoami"}}
policy: {{name: fixed, experts: [whoami]}}
home: "{home}"
trace: {{dir: "{traces}"}}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve(tmp_path: Path, workers: int, *extra: str) -> tuple[subprocess.Popen[str], str]:
    (tmp_path / "workers_experts.py").write_text(EXPERTS)
    config = tmp_path / "workers.yaml"
    config.write_text(CONFIG.format(home=tmp_path / "home", traces=tmp_path / "traces"))
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "EXPERTGRAPH_API_KEYS"}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env.get("PYTHONPATH", "")])
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "expertgraph.orchestrator.cli",
            "serve",
            "--config",
            str(config),
            "--port",
            str(port),
            "--workers",
            str(workers),
            "--aliases",
            "none",
            "--log-level",
            "warning",
            "--no-access-log",
            *extra,
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    return proc, f"http://127.0.0.1:{port}"


def _wait_up(proc: subprocess.Popen[str], url: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.2)


async def _burst(url: str, n: int, concurrency: int) -> list[tuple[str, str]]:
    """``n`` requests, ``concurrency`` at a time, each on a new connection (so the kernel
    hands connections to both workers); returns (answer, run id) pairs."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:

        async def one(k: int) -> tuple[str, str]:
            body = {
                "model": "expertgraph/workers",
                "messages": [{"role": "user", "content": f"#{k}"}],
            }
            r = await client.post("/v1/chat/completions", json=body)
            assert r.status_code == 200, r.text
            return r.json()["choices"][0]["message"]["content"], r.headers[TRACE_HEADER]

        return await asyncio.gather(*(one(k) for k in range(n)))


def test_two_workers_answer_concurrent_requests_and_index_every_run_once(tmp_path: Path) -> None:
    proc, url = _serve(tmp_path, 2)
    replies: list[tuple[str, str]] = []
    try:
        _wait_up(proc, url)
        # Both workers answer once both are up; the first may start a little earlier.
        for _ in range(10):
            replies += asyncio.run(_burst(url, 60, 20))
            if len({pid for pid, _ in replies}) == 2:
                break
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "with 2 worker processes" in err
    pids = {pid for pid, _ in replies}
    assert len(pids) == 2 and str(proc.pid) not in pids, pids
    run_ids = [run_id for _, run_id in replies]
    assert len(set(run_ids)) == len(run_ids)
    traces = tmp_path / "traces"
    assert {p.stem for p in traces.glob("*.jsonl")} == set(run_ids)
    # The workers wrote the index as their runs ended (nothing synced it since).
    with sqlite3.connect(traces / "index.sqlite") as conn:
        counts = dict(conn.execute("SELECT run_id, COUNT(*) FROM runs GROUP BY run_id"))
        answers = dict(conn.execute("SELECT run_id, answer FROM runs"))
        files = conn.execute("SELECT COUNT(*) FROM files").fetchone()[0]
    assert counts == {run_id: 1 for run_id in run_ids}
    assert files == len(run_ids)
    assert {answers[run_id] for run_id in run_ids} == pids


def test_bad_worker_count_and_bad_config_fail_before_any_worker_starts(tmp_path: Path) -> None:
    proc, _ = _serve(tmp_path, 0)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2 and "--workers must be at least 1" in err
    (tmp_path / "broken.yaml").write_text("experts: [{name: x, kind: nonsense}]\n")
    proc, _ = _serve(tmp_path, 2, "--config", str(tmp_path / "broken.yaml"))
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, err
    assert "broken.yaml" in err and "Traceback" not in err
