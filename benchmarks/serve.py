"""Throughput and latency of ``expertgraph serve`` next to a bare FastAPI echo endpoint, same run.

Both servers run as their own processes on 127.0.0.1 (uvicorn, no access log), each with the
same number of worker processes (``--workers``, default 1; ``expertgraph serve --workers N``
and uvicorn's own workers for the bare app):

* ``expertgraph serve`` with one routing configuration whose expert answers instantly (an async
  callable returning the prompt), so what is measured is the server plus a full routed run:
  request validation, routing, LangGraph dispatch, voting, trace writing, response;
* a bare FastAPI app whose ``POST /v1/chat/completions`` parses the JSON body and returns a
  minimal completion echoing the last message.

The same client (httpx.AsyncClient, ``--concurrency`` requests in flight, spread over
``--clients`` processes) sends the same chat request ``--requests`` times to each, after a
warm-up, in alternating rounds. Prints a table, then as the last line
``{"workers": W, "rps": R, "bare_rps": S, "rps_vs_bare": R/S, "p50_ms": A, "p95_ms": B,
"ratio_vs_bare": C}`` for expertgraph, with C = expertgraph p50 / bare p50 (target with
workers: ``rps_vs_bare`` >= 0.5).

    python benchmarks/serve.py [--requests 200] [--concurrency 20] [--rounds 1] [--workers 1]
    python benchmarks/serve.py --quick   # a smoke run in seconds
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
home: {home}
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


def _serve_bare(port: int, workers: int) -> None:
    import uvicorn

    if workers == 1:
        uvicorn.run(bare_app(), host="127.0.0.1", port=port, log_level="warning", access_log=False)
        return
    # Worker processes import the app by factory: this file, as a module of its folder.
    uvicorn.run(
        f"{Path(__file__).stem}:bare_app",
        factory=True,
        app_dir=str(Path(__file__).resolve().parent),
        workers=workers,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        access_log=False,
    )


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


def _load_in_processes(
    name: str, url: str, requests: int, concurrency: int, expect: str, clients: int
) -> Result:
    """``_load`` split over ``clients`` processes (one Python client tops out near the rate
    of one server worker), started together; wall time is the slowest one's."""
    if clients == 1:
        return asyncio.run(_load(name, url, requests, concurrency, expect))
    from concurrent.futures import ProcessPoolExecutor

    shares = [requests // clients + (k < requests % clients) for k in range(clients)]
    per = max(1, concurrency // clients)
    with ProcessPoolExecutor(clients) as pool:
        parts = list(
            pool.map(_load_sync, [name] * clients, [url] * clients, shares, [per] * clients,
                     [expect] * clients)
        )  # fmt: skip
    return Result(
        name,
        [x for r in parts for x in r.latencies_ms],
        max(r.wall_s for r in parts),
        sum(r.errors for r in parts),
    )


def _load_sync(name: str, url: str, requests: int, concurrency: int, expect: str) -> Result:
    return asyncio.run(_load(name, url, requests, concurrency, expect))


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
    parser.add_argument("--workers", type=int, default=1, help="server worker processes, both")
    parser.add_argument(
        "--clients", type=int, default=0, help="client processes (default: one per worker)"
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run: few requests")
    parser.add_argument("--bare-server", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.requests, args.warmup, args.concurrency = 30, 10, 5
    clients = args.clients or args.workers

    if args.bare_server:
        _serve_bare(args.bare_server, args.workers)
        return 0

    work = Path(tempfile.mkdtemp(prefix="expertgraph-bench-serve-"))
    (work / "bench_experts.py").write_text(EXPERT_MODULE)
    (work / "bench.yaml").write_text(CONFIG.format(home=work / "home", traces=work / "traces"))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(work), os.environ.get("PYTHONPATH", "")]),
    }
    ours_port, bare_port = _free_port(), _free_port()
    ours = subprocess.Popen(
        [sys.executable, "-m", "expertgraph.orchestrator.cli", "serve",
         "--config", str(work / "bench.yaml"), "--port", str(ours_port),
         "--aliases", "none", "--log-level", "warning", "--no-access-log",
         "--workers", str(args.workers)],
        env=env, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    bare = subprocess.Popen(
        [sys.executable, __file__, "--bare-server", str(bare_port), "--workers", str(args.workers)],
        env=env,
        stderr=subprocess.DEVNULL,
    )
    try:
        ours_url, bare_url = f"http://127.0.0.1:{ours_port}", f"http://127.0.0.1:{bare_port}"
        _wait(ours_url, ours)
        _wait(bare_url, bare)
        text = REQUEST["messages"][0]["content"]  # type: ignore[index]
        for url in (bare_url, ours_url):
            _load_in_processes("warmup", url, args.warmup, args.concurrency, text, clients)
        runs: dict[str, list[Result]] = {"bare": [], "expertgraph": []}
        for _ in range(args.rounds):
            for name, url in (("bare", bare_url), ("expertgraph", ours_url)):
                runs[name].append(
                    _load_in_processes(name, url, args.requests, args.concurrency, text, clients)
                )
    finally:
        for proc in (ours, bare):
            proc.terminate()
            proc.wait(timeout=30)
    results = {name: _merge(rs) for name, rs in runs.items()}
    traces = len(list((work / "traces").glob("*.jsonl")))

    print(
        f"{args.requests} requests x {args.rounds} round(s), concurrency {args.concurrency}, "
        f"{args.workers} worker(s) each, {clients} client process(es), cpus {os.cpu_count()}"
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
        "workers": args.workers,
        "rps": round(ours_r.rps, 1),
        "bare_rps": round(bare_r.rps, 1),
        "rps_vs_bare": round(ours_r.rps / bare_r.rps, 2),
        "p50_ms": round(ours_r.pct(0.5), 2),
        "p95_ms": round(ours_r.pct(0.95), 2),
        "ratio_vs_bare": round(ours_r.pct(0.5) / bare_r.pct(0.5), 2),
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
