"""Batch throughput, measured against baselines in the same run.

(a) ``batch_s``: 1,000 one-step tasks at concurrency 100 through ``expertgraph batch`` (the
    library call the command makes: ``abatch`` with a results file, traces and the index on)
    with one API expert, against an OpenAI-compatible loopback server that takes 50 ms (a
    separate process, so its work does not share our GIL). ``peer_router_s``: the same 1,000
    prompts through ``asyncio.gather`` over ``litellm.Router.acompletion`` at the same
    concurrency (a semaphore of 100), the least a LiteLLM-based batch costs. The two run
    interleaved, ``--rounds`` times each, and the medians are compared.
(b) ``ray_s``: the same batch with the Ray executor on 2 local workers (started and warmed
    before the clock starts).
(c) ``cpu_bound_speedup_ray``: a CPU-bound batch (the embedding router, bundled
    all-MiniLM-L6-v2, scoring every task against three instant calculator experts) in one
    process / on 2 Ray workers (one executor, started and warmed once), interleaved
    ``--rounds`` times, medians compared. Every process uses one torch thread, so the
    comparison is one core's worth of Python against two. ``cpu_single_core_share`` is the
    CPU time the one process got per second of wall time, ``cpu_ray_cores_share`` the
    workers' (of 2): well below that, other load shares the two cores and no speedup can
    reach 2.

Targets: ``batch_vs_peer`` <= 1.25, ``cpu_bound_speedup_ray`` >= 1.6 on 2 cores. The last line
is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("LITELLM_MODE", "PRODUCTION")
os.environ.setdefault("OMP_NUM_THREADS", "1")  # one core per process (Ray workers inherit it)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("BENCH_LOOPBACK_KEY", "loopback-key")

from _loopback import start_server  # noqa: E402

from expertgraph.orchestrator._batch import BatchTask, abatch, as_batch_tasks  # noqa: E402
from expertgraph.orchestrator.config.schema import ExpertGraphConfig  # noqa: E402
from expertgraph.orchestrator.orchestrator import Orchestrator  # noqa: E402

CPU_CONCURRENCY = 32
"""Tasks in flight in the CPU-bound batch, one process or two workers alike."""


def api_config(url: str, trace_dir: Path, concurrency: int) -> ExpertGraphConfig:
    return ExpertGraphConfig.model_validate(
        {
            "experts": [
                {
                    "name": "api",
                    "kind": "api",
                    "model": "openai/bench-model",
                    "api_base": url + "/v1",
                    "api_key_env": "BENCH_LOOPBACK_KEY",
                    "card": {"max_concurrency": concurrency},
                }
            ],
            "policy": {"name": "fixed", "experts": ["api"]},
            "defaults": {"max_tokens": 8, "temperature": 0},
            "trace": {"dir": str(trace_dir)},
            "checkpoint": {"backend": "none"},  # as `expertgraph batch` runs
        }
    )


def cpu_config(trace_dir: Path) -> ExpertGraphConfig:
    cards = {
        "adder": "adds numbers: sums and totals",
        "multiplier": "multiplies numbers: products and times tables",
        "subtractor": "subtracts numbers: differences and what is left",
    }
    return ExpertGraphConfig.model_validate(
        {
            "experts": [
                {
                    "name": name,
                    "kind": "callable",
                    "callable": "expertgraph.agents.tools:calculator",
                    "card": {"description": text, "max_concurrency": 64},
                }
                for name, text in cards.items()
            ],
            "policy": {"name": "embedding"},
            "trace": {"dir": str(trace_dir)},
            "checkpoint": {"backend": "none"},  # as `expertgraph batch` runs
        }
    )


def tasks(n: int, tag: str) -> list[BatchTask]:
    """``n`` distinct one-step tasks (distinct texts: no cache may answer one for another)."""
    ops = ["+", "*", "-"]
    return as_batch_tasks(
        [{"id": f"{tag}{i}", "prompt": f"{i} {ops[i % 3]} {i % 97 + 3}"} for i in range(n)]
    )


async def peer(url: str, n: int, concurrency: int) -> float:
    import litellm

    router = litellm.Router(
        model_list=[
            {
                "model_name": "bench",
                "litellm_params": {
                    "model": "openai/bench-model",
                    "api_base": url + "/v1",
                    "api_key": "loopback-key",
                },
            }
        ],
        num_retries=0,
    )
    gate = asyncio.Semaphore(concurrency)

    async def one(i: int) -> str:
        async with gate:
            response = await router.acompletion(
                model="bench",
                messages=[{"role": "user", "content": f"{i} + 1"}],
                max_tokens=8,
                temperature=0,
            )
            return str(response.choices[0].message.content)

    await asyncio.gather(*(one(i) for i in range(min(n, 50))))  # warm-up
    started = time.perf_counter()
    answers = await asyncio.gather(*(one(i) for i in range(n)))
    took = time.perf_counter() - started
    assert answers.count("pong") == n
    return took


async def ours(orch: Orchestrator, items: list[BatchTask], out: Path, concurrency: int) -> float:
    started = time.perf_counter()
    report = await abatch(orch, items, concurrency=concurrency, out=out)
    took = time.perf_counter() - started
    errors = [r.error for r in report.results if r.error]
    assert report.summary.answered == len(items), (report.summary, errors[:3])
    return took


async def on_ray(
    cfg: ExpertGraphConfig, items: list[BatchTask], warm: list[BatchTask], base: Path, c: int
) -> float:
    """Wall seconds of the batch on 2 workers (started and warmed first)."""
    from expertgraph.orchestrator._ray import RayExecutor

    executor = RayExecutor(cfg, workers=2, concurrency=c, base_dir=base)
    try:
        await executor.start()
        await abatch(None, warm, concurrency=c, handle=executor.run_task)  # models, pools
        started = time.perf_counter()
        report = await abatch(None, items, concurrency=c, handle=executor.run_task)
        took = time.perf_counter() - started
        errors = [r.error for r in report.results if r.error]
        assert report.summary.answered == len(items), (report.summary, errors[:3])
        return took
    finally:
        await executor.aclose()


async def cpu_bound(cfg: ExpertGraphConfig, n: int, rounds: int, base: Path) -> dict[str, float]:
    """The CPU-bound batch in this process and on 2 Ray workers, interleaved ``rounds`` times
    (one executor, warmed once); medians, with the CPU each side got."""
    from expertgraph.orchestrator._ray import RayExecutor

    c = CPU_CONCURRENCY
    orch = Orchestrator.from_config(cfg)
    executor = RayExecutor(cfg, workers=2, concurrency=c, base_dir=base)
    single, on_workers, single_cpu, workers_cpu = [], [], [], []
    try:
        await executor.start()
        await abatch(None, tasks(32, "cwarm-ray"), concurrency=c, handle=executor.run_task)
        await ours(orch, tasks(16, "cwarm"), base / "cwarm.jsonl", c)
        for r in range(rounds):
            cpu = time.process_time()
            single.append(await ours(orch, tasks(n, f"cpu1-{r}-"), base / f"c1-{r}.jsonl", c))
            single_cpu.append(time.process_time() - cpu)
            cpu = await executor.cpu_s()
            started = time.perf_counter()
            report = await abatch(
                None, tasks(n, f"cpu2-{r}-"), concurrency=c, handle=executor.run_task
            )
            on_workers.append(time.perf_counter() - started)
            workers_cpu.append(await executor.cpu_s() - cpu)
            assert report.summary.answered == n, report.summary
    finally:
        await executor.aclose()
        await orch.aclose()
    return {
        "single_s": statistics.median(single),
        "ray_s": statistics.median(on_workers),
        "single_cpu_s": statistics.median(single_cpu),
        "workers_cpu_s": statistics.median(workers_cpu),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--cpu-tasks", type=int, default=400, dest="cpu_tasks")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="a small run, for a smoke test")
    args = parser.parse_args()
    if args.quick:
        args.tasks, args.cpu_tasks, args.rounds = 40, 16, 1
    warm, n_cpu = min(args.tasks, 100), args.cpu_tasks
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    proc, url = start_server(0.05)
    figures: dict[str, Any] = {"tasks": args.tasks}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            base = Path(tmp)
            c = args.concurrency
            cfg = api_config(url, base / "traces", c)
            orch = Orchestrator.from_config(cfg)
            asyncio.run(ours(orch, tasks(warm, "warm"), base / "warm.jsonl", c))
            batch_times, peer_times = [], []
            for r in range(args.rounds):  # interleaved, so drift hits both alike
                peer_times.append(asyncio.run(peer(url, args.tasks, c)))
                items = tasks(args.tasks, f"r{r}-")
                batch_times.append(asyncio.run(ours(orch, items, base / f"r{r}.jsonl", c)))
            asyncio.run(orch.aclose())
            batch_s, peer_s = statistics.median(batch_times), statistics.median(peer_times)
            print(
                f"(a) {args.tasks} tasks at concurrency {c}, 50 ms server: expertgraph batch "
                f"{batch_s:.2f}s | litellm.Router gather {peer_s:.2f}s | ratio "
                f"{batch_s / peer_s:.2f}x (target <= 1.25)"
            )
            ray_s = asyncio.run(
                on_ray(cfg, tasks(args.tasks, "ray-"), tasks(warm, "rwarm"), base, c)
            )
            print(
                f"(b) the same batch on 2 Ray workers: {ray_s:.2f}s "
                f"({ray_s / peer_s:.2f}x the peer)"
            )

            cpu = asyncio.run(cpu_bound(cpu_config(base / "cpu-traces"), n_cpu, args.rounds, base))
            speedup = cpu["single_s"] / cpu["ray_s"]
            core_share = cpu["single_cpu_s"] / cpu["single_s"]
            workers_share = cpu["workers_cpu_s"] / cpu["ray_s"]
            print(
                f"(c) CPU-bound batch of {n_cpu} (embedding router, instant experts): "
                f"one process {cpu['single_s']:.2f}s | 2 Ray workers {cpu['ray_s']:.2f}s | "
                f"speedup {speedup:.2f}x (target >= 1.6); CPU per task: one process "
                f"{cpu['single_cpu_s'] / n_cpu * 1000:.1f} ms, the workers "
                f"{cpu['workers_cpu_s'] / n_cpu * 1000:.1f} ms; cores got: one process "
                f"{core_share:.2f} of 1, the workers {workers_share:.2f} of 2"
            )
            figures.update(
                {
                    "batch_s": round(batch_s, 4),
                    "peer_router_s": round(peer_s, 4),
                    "batch_vs_peer": round(batch_s / peer_s, 4),
                    "ray_s": round(ray_s, 4),
                    "ray_vs_peer": round(ray_s / peer_s, 4),
                    "cpu_tasks": n_cpu,
                    "cpu_single_s": round(cpu["single_s"], 4),
                    "cpu_ray_s": round(cpu["ray_s"], 4),
                    "cpu_bound_speedup_ray": round(speedup, 4),
                    "cpu_single_core_share": round(core_share, 4),
                    "cpu_ray_cores_share": round(workers_share, 4),
                    "cpu_single_ms_per_task": round(cpu["single_cpu_s"] / n_cpu * 1000, 3),
                    "cpu_ray_ms_per_task": round(cpu["workers_cpu_s"] / n_cpu * 1000, 3),
                }
            )
    finally:
        proc.terminate()
        ray.shutdown()
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
