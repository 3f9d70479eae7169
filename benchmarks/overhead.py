"""Orchestration overhead, measured against baselines in the same run.

(a) ``step_overhead_ms``: wall time per step of 10-step plans whose expert answers instantly
    (routing, LangGraph dispatch, voting and trace writing: everything but the model), next
    to a bare three-node LangGraph loop doing nothing, the floor LangGraph itself sets.
(b) ``litellm_ratio``: one-step ``expertgraph`` run with an API expert / bare
    ``litellm.acompletion`` call, both against the same OpenAI-compatible server on
    127.0.0.1 (a separate process, so its work does not share our GIL), interleaved and
    compared by median. Reported for an instant server and for one that takes 50 ms, the
    order of the fastest hosted completions.

The last line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, TypedDict

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("LITELLM_MODE", "PRODUCTION")

from expertgraph.agents import CallableExpert  # noqa: E402
from expertgraph.core import Budget, PlanStep, Task  # noqa: E402
from expertgraph.orchestrator import Orchestrator  # noqa: E402
from expertgraph.policies import FixedPolicy, MajorityVote  # noqa: E402

SERVER_CODE = """
import sys, time
sys.path.insert(0, {tests!r})
from openai_server import OpenAIServer, Reply
delay = float(sys.argv[1])
server = OpenAIServer(handler=lambda request: Reply(text="pong", delay_s=delay)).start()
print(server.url, flush=True)
sys.stdin.read()
"""


class _Loop(TypedDict):
    i: int


def bare_langgraph_ms(steps: int) -> float:
    """A route -> call -> aggregate loop in LangGraph with no work at all, per step."""
    from langgraph.graph import END, START, StateGraph

    async def route(state: _Loop) -> dict[str, int]:
        return {"i": state["i"]}

    async def call(state: _Loop) -> dict[str, int]:
        return {"i": state["i"]}

    async def aggregate(state: _Loop) -> dict[str, int]:
        return {"i": state["i"] + 1}

    graph = StateGraph(_Loop)
    graph.add_node("route", route)
    graph.add_node("call", call)
    graph.add_node("aggregate", aggregate)
    graph.add_edge(START, "route")
    graph.add_conditional_edges("route", lambda s: END if s["i"] >= steps else "call", ["call", END])
    graph.add_edge("call", "aggregate")
    graph.add_edge("aggregate", "route")
    compiled = graph.compile()

    async def once() -> float:
        started = time.perf_counter()
        await compiled.ainvoke({"i": 0}, config={"recursion_limit": 4 * steps + 10})
        return time.perf_counter() - started

    asyncio.run(once())
    return min(asyncio.run(once()) for _ in range(3)) / steps * 1000


def step_overhead_ms(steps: int, trace_dir: Path, plan_length: int = 10) -> float:
    """Per-step wall time of real runs whose expert answers instantly (best of 3).

    Plans of ``plan_length`` steps (each step sees the earlier results, as in real plans),
    run back to back until ``steps`` steps are done: run start and end are included.
    """

    def instant(prompt: str) -> str:
        return "42"

    orch = Orchestrator(
        [CallableExpert("instant", instant)], FixedPolicy(["instant"]), MajorityVote(), trace_dir=trace_dir
    )
    task = Task(plan=[PlanStep(instruction=f"step {i}") for i in range(plan_length)])
    runs = max(1, steps // plan_length)

    async def batch() -> float:
        started = time.perf_counter()
        for _ in range(runs):
            result = await orch.arun(task)
            assert len(result.steps) == plan_length and result.answer == "42"
        return time.perf_counter() - started

    asyncio.run(batch())  # warm-up
    best = min(asyncio.run(batch()) for _ in range(3))
    orch.trace_store.flush()
    return best / (runs * plan_length) * 1000


def _start_server(delay_s: float) -> tuple[subprocess.Popen[str], str]:
    code = SERVER_CODE.format(tests=str(ROOT / "tests"))
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(delay_s)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    url = proc.stdout.readline().strip()
    if not url:
        raise RuntimeError("the loopback server did not start")
    return proc, url


async def _ratio(url: str, rounds: int, trace_dir: Path) -> dict[str, float]:
    from expertgraph.agents._litellm import import_litellm
    from expertgraph.agents.api import APIExpert

    litellm = import_litellm()
    messages = [{"role": "user", "content": "ping"}]
    api_base = url + "/v1"
    expert = APIExpert("loopback", "openai/bench-model", api_base=api_base)
    os.environ.setdefault("OPENAI_API_KEY", "sk-bench-not-a-real-key")
    orch = Orchestrator([expert], FixedPolicy(["loopback"]), MajorityVote(), trace_dir=trace_dir, defaults={"max_tokens": 8})

    async def bare() -> float:
        started = time.perf_counter()
        response = await litellm.acompletion(
            model="openai/bench-model",
            messages=messages,
            api_base=api_base,
            max_tokens=8,
            num_retries=0,
            max_retries=0,
            timeout=30,
        )
        took = time.perf_counter() - started
        assert response.choices[0].message.content == "pong"
        return took

    async def ours() -> float:
        started = time.perf_counter()
        result = await orch.arun("ping")
        took = time.perf_counter() - started
        assert result.answer == "pong", result
        return took

    for _ in range(10):  # warm-up: connection pools, imports, caches
        await bare()
        await ours()
    bare_times: list[float] = []
    our_times: list[float] = []
    for i in range(rounds):  # interleaved so drift hits both alike
        if i % 2:
            bare_times.append(await bare())
            our_times.append(await ours())
        else:
            our_times.append(await ours())
            bare_times.append(await bare())
    bare_ms = statistics.median(bare_times) * 1000
    our_ms = statistics.median(our_times) * 1000
    return {"bare_ms": bare_ms, "ours_ms": our_ms, "ratio": our_ms / bare_ms}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=100)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        trace_dir = Path(tmp)
        floor = bare_langgraph_ms(args.steps)
        step_ms = step_overhead_ms(args.steps, trace_dir / "a")
        print(f"(a) per step: expertgraph {step_ms:.3f} ms | bare LangGraph loop {floor:.3f} ms "
              f"| ratio {step_ms / floor:.2f}x   (target <= 2 ms)")
        figures: dict[str, Any] = {
            "step_overhead_ms": round(step_ms, 4),
            "bare_langgraph_step_ms": round(floor, 4),
            "step_ratio_vs_bare_langgraph": round(step_ms / floor, 3),
        }
        for delay in (0.0, 0.05):
            proc, url = _start_server(delay)
            try:
                rounds = args.rounds if delay == 0 else max(20, args.rounds // 4)
                r = asyncio.run(_ratio(url, rounds, trace_dir / f"b{delay}"))
            finally:
                proc.terminate()
                proc.wait(timeout=10)
            label = "instant server" if delay == 0 else f"server taking {delay * 1000:.0f} ms"
            print(f"(b) {label}: expertgraph {r['ours_ms']:.2f} ms | bare litellm {r['bare_ms']:.2f} ms "
                  f"| ratio {r['ratio']:.3f}   (target <= 1.05)")
            suffix = "" if delay == 0 else "_50ms_server"
            figures[f"litellm_ratio{suffix}"] = round(r["ratio"], 4)
            figures[f"litellm_bare_ms{suffix}"] = round(r["bare_ms"], 3)
            figures[f"expertgraph_ms{suffix}"] = round(r["ours_ms"], 3)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
