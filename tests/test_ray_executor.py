"""The Ray executor on a real local Ray cluster (2 CPUs, started here): 200 tasks over two
workers against a rate-limited loopback server, one worker SIGKILLed mid-way; the summary
equals a single-process run's; collect over Ray; a local model hosted once per node."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import ray
from _batch_server import RuledModel, api_expert, result_lines, write_config, write_tasks
from openai_server import OpenAIServer

from expertgraph.orchestrator._batch import BatchResult, abatch, acollect, read_tasks
from expertgraph.orchestrator._ray import RayExecutor
from expertgraph.orchestrator.config.schema import load_config
from expertgraph.orchestrator.orchestrator import Orchestrator
from expertgraph.traces.index import TraceIndex


@pytest.fixture(scope="module")
def cluster() -> Iterator[None]:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, namespace="expertgraph")
    yield
    ray.shutdown()


def test_batch_over_two_workers_survives_a_killed_worker(tmp_path: Path, cluster: None) -> None:
    # The server refuses (429, Retry-After) beyond 6 requests in flight; the card allows 10,
    # 5 per worker, so the workers meet the limit and retry.
    model = RuledModel(latency_s=0.05, limit=6)
    with OpenAIServer(model) as srv:
        cfg_path = write_config(
            tmp_path / "eg.json", [api_expert("a", srv.url, max_concurrency=10)]
        )
        tasks_path = write_tasks(
            tmp_path / "tasks.jsonl",
            [{"id": f"t{i}", "prompt": f"What is {i}", "expected": str(i)} for i in range(200)],
        )
        tasks, bad = read_tasks(tasks_path)
        assert not bad
        cfg = load_config(cfg_path)
        out = tmp_path / "ray.jsonl"

        async def on_ray() -> tuple[list[int], list[int], object]:
            executor = RayExecutor(cfg, workers=2, concurrency=16, base_dir=tmp_path)
            try:
                await executor.start()
                before = await executor.pids()
                killed: list[int] = []

                def kill_midway(result: BatchResult) -> None:
                    if len(result_lines(out)) >= 60 and not killed:
                        killed.append(before[0])
                        os.kill(before[0], signal.SIGKILL)

                report = await abatch(
                    None,
                    tasks,
                    concurrency=16,
                    out=out,
                    on_result=kill_midway,
                    handle=executor.run_task,
                )
                return before, await executor.pids(), report
            finally:
                await executor.aclose()

        before, after, report = asyncio.run(on_ray())
        assert before[0] != after[0] and before[1] == after[1]  # killed, restarted by Ray
        ray_summary = report.summary  # type: ignore[attr-defined]
        assert ray_summary.answered == 200 and ray_summary.failed == 0
        rows = result_lines(out)
        assert sorted(r["id"] for r in rows) == sorted(t.id for t in tasks)  # each task once
        assert srv.attempts >= 200

        # Every run's trace is in the one directory, and the index sees it.
        trace_dir = tmp_path / "traces"
        run_ids = {r["run_id"] for r in rows}
        assert all((trace_dir / f"{run}.jsonl").is_file() for run in run_ids)
        assert run_ids <= set(TraceIndex(trace_dir).run_ids())

        # The driver's summary is a single-process run's on the same tasks.
        async def local() -> object:
            orch = Orchestrator.from_config(cfg, base_dir=tmp_path)
            try:
                return await abatch(orch, tasks, concurrency=16, out=tmp_path / "local.jsonl")
            finally:
                await orch.aclose()

        single = asyncio.run(local()).summary  # type: ignore[attr-defined]
        assert ray_summary.same_work(single), (ray_summary, single)


def test_collect_over_ray(tmp_path: Path, cluster: None) -> None:
    with OpenAIServer(RuledModel()) as right, OpenAIServer(RuledModel(offset=1)) as wrong:
        cfg = load_config(
            write_config(
                tmp_path / "eg.json",
                [api_expert("right", right.url), api_expert("wrong", wrong.url)],
            )
        )
        items, _ = read_tasks(
            write_tasks(
                tmp_path / "prompts.jsonl",
                [{"id": f"p{i}", "prompt": f"What is {i}", "expected": str(i)} for i in range(20)],
            )
        )

        async def on_ray() -> object:
            executor = RayExecutor(cfg, workers=2, concurrency=8, base_dir=tmp_path)
            try:
                return await acollect(
                    None,
                    items,
                    experts=["right", "wrong"],
                    out=tmp_path / "data.jsonl",
                    concurrency=8,
                    handle=lambda item: executor.collect_one(item, ["right", "wrong"]),
                )
            finally:
                await executor.aclose()

        report = asyncio.run(on_ray())
        summary = report.summary  # type: ignore[attr-defined]
        assert summary.prompts == 20 and summary.calls == 40
        assert summary.mean_score == {"right": 1.0, "wrong": 0.0}
        assert right.attempts == 20 and wrong.attempts == 20


@pytest.mark.models
def test_a_local_model_is_hosted_once_per_node_for_every_worker(
    tmp_path: Path, cluster: None
) -> None:
    cfg = load_config(
        write_config(
            tmp_path / "eg.json",
            [{"name": "smol", "kind": "local", "model": "smollm2-135m", "num_threads": 1}],
            defaults={"max_tokens": 8, "temperature": 0},
        )
    )
    items, _ = read_tasks(
        write_tasks(tmp_path / "tasks.jsonl", [{"prompt": f"Say {w}."} for w in "abcdef"])
    )

    async def on_ray() -> tuple[object, dict[str, dict[str, int]], list[int]]:
        executor = RayExecutor(cfg, workers=2, concurrency=6, base_dir=tmp_path)
        try:
            loaded = await executor.start()
            assert loaded == [{"smol": None}, {"smol": None}]
            report = await abatch(None, items, concurrency=6, handle=executor.run_task)
            return report, await executor.hosted(), await executor.pids()
        finally:
            await executor.aclose()

    report, hosted, workers = asyncio.run(on_ray())
    # One model actor on the one node, in its own process, that both workers call.
    assert len(hosted) == 1
    (on_node,) = hosted.values()
    assert set(on_node) == {"smol"} and on_node["smol"] not in workers
    summary = report.summary  # type: ignore[attr-defined]
    assert summary.answered == 6 and summary.experts == {"smol": 6}


def test_batch_command_with_the_ray_executor_matches_a_local_run(tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    with OpenAIServer(RuledModel(latency_s=0.02)) as srv:
        cfg = write_config(tmp_path / "eg.json", [api_expert("a", srv.url)])
        tasks = write_tasks(
            tmp_path / "tasks.jsonl",
            [*({"prompt": f"What is {i}", "expected": str(i)} for i in range(30)), "{bad"],
        )

        def batch(out: str, *extra: str) -> dict[str, object]:
            done = subprocess.run(
                [sys.executable, "-m", "expertgraph.orchestrator.cli", "batch", str(tasks)]
                + ["--out", str(tmp_path / out), "--config", str(cfg), "--json", "--quiet"]
                + list(extra),
                capture_output=True,
                text=True,
                timeout=300,
            )
            assert done.returncode == 1, done.stderr[-3000:]  # the bad line
            assert "tasks.jsonl:31: not JSON" in done.stderr
            return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]

        on_ray = batch("ray.jsonl", "--executor", "ray", "--workers", "2")
        local = batch("local.jsonl")
        skip = ("p50_latency_s", "p95_latency_s", "wall_s")
        assert on_ray["answered"] == 30 and on_ray["correct"] == 30
        assert {k: v for k, v in on_ray.items() if k not in skip} == {
            k: v for k, v in local.items() if k not in skip
        }
