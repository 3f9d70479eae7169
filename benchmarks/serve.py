"""Throughput and latency of ``expertgraph serve`` next to a bare FastAPI echo endpoint, same run.

Both servers run as their own processes on 127.0.0.1 (uvicorn, one worker, no access log):

* ``expertgraph serve`` with one routing configuration whose expert answers instantly (an async
  callable returning the prompt), so what is measured is the server plus a full routed run:
  request validation, routing, LangGraph dispatch, voting, trace writing, response;
* a bare FastAPI app whose ``POST /v1/chat/completions`` parses the JSON body and returns a
  minimal completion echoing the last message.

The same client (httpx.AsyncClient, ``--concurrency`` requests in flight) sends the same chat
request ``--requests`` times to each, after a warm-up. Prints a table, then as the last line
``{"rps": R, "p50_ms": A, "p95_ms": B, "ratio_vs_bare": C}`` for expertgraph, with
C = expertgraph p50 / bare p50.

    python benchmarks/serve.py [--requests 200] [--concurrency 20] [--rounds 1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

EXPERT_MODULE = """
async def instant(text):
    return text
"""

CONFIG = """name: bench
experts:
  - name: instant
    kind: callable
    callable: bench_experts:instant
policy:
  name: fixed
  experts: [instant]
trace:
  dir: {traces}
"""

REQUEST = {
    "model": "expertgraph/bench",
    "messages": [{"role": "user", "content": "What is the capital of France?"}],
}


def bare_app() -> FastAPI:
    """The baseline: FastAPI parsing the request and answering an echo completion."""
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def echo(request: Request) -> JSONResponse:
        body = await request.json()
        text = body["messages"][-1]["content"]
        return JSONResponse(
            {
                "id": "chatcmpl-bare",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body["model"],
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
            }
        )

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    return app


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(url: str, proc: subprocess.Popen[bytes], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not start in {timeout:g}s")


@dataclass
class Result:
    name: str
    latencies_ms: list[float]
    wall_s: float
    errors: int

    @property
    def rps(self) -> float:
        return len(self.latencies_ms) / self.wall_s

    def pct(self, q: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


async def _load(name: str, url: str, requests: int, concurrency: int, expect: str) -> Result:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    latencies: list[float] = []
    errors = 0
    semaphore = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:

        async def one() -> None:
            nonlocal errors
            async with semaphore:
                started = time.perf_counter()
                response = await client.post("/v1/chat/completions", json=REQUEST)
                latencies.append((time.perf_counter() - started) * 1000)
                if (
                    response.status_code != 200
                    or response.json()["choices"][0]["message"]["content"] != expect
                ):
                    errors += 1

        started = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(requests)))
        wall = time.perf_counter() - started
    return Result(name, latencies, wall, errors)


def _merge(results: list[Result]) -> Result:
    return Result(
        results[0].name,
        [x for r in results for x in r.latencies_ms],
        sum(r.wall_s for r in results),
        sum(r.errors for r in results),
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument(
        "--rounds", type=int, default=1, help="alternating measured rounds per server"
    )
    parser.add_argument("--warmup", type=int, default=40)
    parser.add_argument("--bare-server", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.bare_server:
        import uvicorn

        uvicorn.run(
            bare_app(),
            host="127.0.0.1",
            port=args.bare_server,
            log_level="warning",
            access_log=False,
        )
        return 0

    work = Path(tempfile.mkdtemp(prefix="expertgraph-bench-serve-"))
    (work / "bench_experts.py").write_text(EXPERT_MODULE)
    (work / "bench.yaml").write_text(CONFIG.format(traces=work / "traces"))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(work), os.environ.get("PYTHONPATH", "")]),
    }
    ours_port, bare_port = _free_port(), _free_port()
    ours = subprocess.Popen(
        [sys.executable, "-m", "expertgraph.orchestrator.cli", "serve",
         "--config", str(work / "bench.yaml"), "--port", str(ours_port),
         "--aliases", "none", "--log-level", "warning", "--no-access-log"],
        env=env, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    bare = subprocess.Popen(
        [sys.executable, __file__, "--bare-server", str(bare_port)],
        env=env,
        stderr=subprocess.DEVNULL,
    )
    try:
        ours_url, bare_url = f"http://127.0.0.1:{ours_port}", f"http://127.0.0.1:{bare_port}"
        _wait(ours_url, ours)
        _wait(bare_url, bare)
        text = REQUEST["messages"][0]["content"]  # type: ignore[index]
        for url in (bare_url, ours_url):
            asyncio.run(_load("warmup", url, args.warmup, args.concurrency, text))
        runs: dict[str, list[Result]] = {"bare": [], "expertgraph": []}
        for _ in range(args.rounds):
            runs["bare"].append(
                asyncio.run(_load("bare", bare_url, args.requests, args.concurrency, text))
            )
            runs["expertgraph"].append(
                asyncio.run(_load("expertgraph", ours_url, args.requests, args.concurrency, text))
            )
    finally:
        for proc in (ours, bare):
            proc.terminate()
            proc.wait(timeout=30)
    results = {name: _merge(rs) for name, rs in runs.items()}
    traces = len(list((work / "traces").glob("*.jsonl")))

    print(
        f"{args.requests} requests x {args.rounds} round(s), "
        f"concurrency {args.concurrency}, cpus {os.cpu_count()}"
    )
    print(f"{'server':<12} {'rps':>8} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8} {'errors':>7}")
    for r in results.values():
        print(
            f"{r.name:<12} {r.rps:8.1f} {r.pct(0.5):8.1f} {r.pct(0.95):8.1f} "
            f"{max(r.latencies_ms):8.1f} {r.errors:7d}"
        )
    print(f"expertgraph traces written: {traces}")
    ours_r, bare_r = results["expertgraph"], results["bare"]
    if ours_r.errors or bare_r.errors:
        print("errors: some responses were not 200 with the expected answer", file=sys.stderr)
        return 1
    summary = {
        "rps": round(ours_r.rps, 1),
        "p50_ms": round(ours_r.pct(0.5), 2),
        "p95_ms": round(ours_r.pct(0.95), 2),
        "ratio_vs_bare": round(ours_r.pct(0.5) / bare_r.pct(0.5), 2),
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
