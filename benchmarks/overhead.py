"""Orchestration overhead, measured against baselines in the same run.

(a) ``step_overhead_ms``: wall time per step of 10-step plans whose expert answers instantly
    (routing, LangGraph dispatch, voting and trace writing: everything but the model), next
    to a bare three-node LangGraph loop doing nothing, the floor LangGraph itself sets.
(b) ``litellm_ratio``: one-step ``expertgraph`` run with an API expert / bare
    ``litellm.acompletion`` call, both against the same OpenAI-compatible server on
    127.0.0.1 (a separate process, so its work does not share our GIL), interleaved and
    compared by median. Reported for an instant server and for one that takes 50 ms, the
    order of the fastest hosted completions. Next to it, ``langgraph_floor_ratio``: the same
    call made inside a bare route -> call (``Send``) -> aggregate LangGraph graph with no
    policy, trace or vote, the least any orchestrator of this design can cost. And the peer:
    ``router_ms``, LiteLLM's own ``Router.acompletion`` over two deployments of the same
    server, in the same interleaved rounds; ``expertgraph_vs_router`` is our one-step run
    over it (target <= 1.25 with the instant server).

``--quick`` runs a few steps and rounds: a smoke test in seconds, not a measurement.

The last line is one JSON object with every figure.
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
from typing import Any, TypedDict

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("LITELLM_MODE", "PRODUCTION")

from _loopback import start_server  # noqa: E402

from expertgraph.agents import CallableExpert  # noqa: E402
from expertgraph.core import PlanStep, Task  # noqa: E402
from expertgraph.orchestrator import Orchestrator  # noqa: E402
from expertgraph.policies import FixedPolicy, MajorityVote  # noqa: E402


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
    graph.add_conditional_edges(
        "route", lambda s: END if s["i"] >= steps else "call", ["call", END]
    )
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

    async def instant(prompt: str) -> str:
        # async: a sync callable runs in a worker thread, whose hop is the expert's cost
        return "42"

    orch = Orchestrator(
        [CallableExpert("instant", instant)],
        FixedPolicy(["instant"]),
        MajorityVote(),
        trace_dir=trace_dir,
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


class _OneCall(TypedDict, total=False):
    done: bool
    text: str


def _floor_graph(complete: Any) -> Any:
    """The least a LangGraph orchestrator of DESIGN.md's shape does for a one-step run:
    route -> call (``Send``) -> aggregate -> route -> END, with ``complete`` as the call and
    no policy, trace, budget or vote."""
    from langgraph.graph import END, START, StateGraph
    from langgraph.types import Send

    async def route(state: _OneCall) -> dict[str, Any]:
        return {}

    async def after_route(state: _OneCall) -> Any:
        return END if state.get("done") else [Send("call", {})]

    async def call(payload: dict[str, Any]) -> dict[str, Any]:
        return {"text": await complete()}

    async def aggregate(state: _OneCall) -> dict[str, Any]:
        return {"done": True}

    graph = StateGraph(_OneCall)
    graph.add_node("route", route)
    graph.add_node("call", call)
    graph.add_node("aggregate", aggregate)
    graph.add_edge(START, "route")
    graph.add_conditional_edges("route", after_route, ["call", END])
    graph.add_edge("call", "aggregate")
    graph.add_edge("aggregate", "route")
    return graph.compile()


async def _ratio(url: str, rounds: int, trace_dir: Path) -> dict[str, float]:
    """Median ms of a bare call, of the floor graph making it, and of a one-step run."""
    from expertgraph.agents._litellm import import_litellm
    from expertgraph.agents.api import APIExpert

    litellm = import_litellm()
    messages = [{"role": "user", "content": "ping"}]
    api_base = url + "/v1"
    expert = APIExpert("loopback", "openai/bench-model", api_base=api_base)
    os.environ.setdefault("OPENAI_API_KEY", "sk-bench-not-a-real-key")
    orch = Orchestrator(
        [expert],
        FixedPolicy(["loopback"]),
        MajorityVote(),
        trace_dir=trace_dir,
        defaults={"max_tokens": 8},
    )

    async def complete() -> str:
        response = await litellm.acompletion(
            model="openai/bench-model",
            messages=messages,
            api_base=api_base,
            max_tokens=8,
            num_retries=0,
            max_retries=0,
            timeout=30,
        )
        return str(response.choices[0].message.content)

    floor_graph = _floor_graph(complete)
    # The peer: LiteLLM's Router over two deployments of the same model and server.
    router = litellm.Router(
        model_list=[
            {
                "model_name": "bench-model",
                "litellm_params": {
                    "model": "openai/bench-model",
                    "api_base": api_base,
                    "api_key": os.environ["OPENAI_API_KEY"],
                },
                "model_info": {"id": f"deployment-{i}"},
            }
            for i in range(2)
        ],
        num_retries=0,
        timeout=30,
    )

    async def routed() -> str:
        response = await router.acompletion(model="bench-model", messages=messages, max_tokens=8)
        return str(response.choices[0].message.content)

    async def bare() -> str:
        return await complete()

    async def floor() -> str:
        return str((await floor_graph.ainvoke({}))["text"])

    async def ours() -> str:
        return str((await orch.arun("ping")).answer)

    contenders = {"bare": bare, "router": routed, "floor": floor, "ours": ours}
    for _ in range(10):  # warm-up: connection pools, imports, caches
        for fn in contenders.values():
            assert await fn() == "pong"
    times: dict[str, list[float]] = {name: [] for name in contenders}
    order = list(contenders)
    for i in range(rounds):  # interleaved, in a rotating order, so drift hits all alike
        shift = i % len(order)
        for name in order[shift:] + order[:shift]:
            started = time.perf_counter()
            await contenders[name]()
            times[name].append(time.perf_counter() - started)
    orch.trace_store.flush()
    ms = {name: statistics.median(t) * 1000 for name, t in times.items()}
    return {
        "bare_ms": ms["bare"],
        "router_ms": ms["router"],
        "vs_router": ms["ours"] / ms["router"],
        "router_ratio": ms["router"] / ms["bare"],
        "floor_ms": ms["floor"],
        "ours_ms": ms["ours"],
        "ratio": ms["ours"] / ms["bare"],
        "floor_ratio": ms["floor"] / ms["bare"],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--quick", action="store_true", help="a smoke test in seconds")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.rounds = 20, 8

    with tempfile.TemporaryDirectory() as tmp:
        trace_dir = Path(tmp)
        floor = bare_langgraph_ms(args.steps)
        step_ms = step_overhead_ms(args.steps, trace_dir / "a")
        print(
            f"(a) per step: expertgraph {step_ms:.3f} ms | bare LangGraph loop {floor:.3f} ms "
            f"| ratio {step_ms / floor:.2f}x   (target <= 2 ms)"
        )
        figures: dict[str, Any] = {
            "step_overhead_ms": round(step_ms, 4),
            "bare_langgraph_step_ms": round(floor, 4),
            "step_ratio_vs_bare_langgraph": round(step_ms / floor, 3),
        }
        for delay in (0.0, 0.05):
            proc, url = start_server(delay)
            try:
                least = 4 if args.quick else 20
                rounds = args.rounds if delay == 0 else max(least, args.rounds // 4)
                r = asyncio.run(_ratio(url, rounds, trace_dir / f"b{delay}"))
            finally:
                proc.terminate()
                proc.wait(timeout=10)
            label = "instant server" if delay == 0 else f"server taking {delay * 1000:.0f} ms"
            print(
                f"(b) {label}: expertgraph {r['ours_ms']:.2f} ms "
                f"| bare litellm {r['bare_ms']:.2f} ms "
                f"| ratio {r['ratio']:.3f}   (target <= 1.05)"
            )
            print(
                f"    LiteLLM Router (2 deployments) {r['router_ms']:.2f} ms | expertgraph / "
                f"router {r['vs_router']:.3f}   (target <= 1.25) | router / bare "
                f"{r['router_ratio']:.3f}"
            )
            print(
                f"    floor: the same call inside a bare route/call/aggregate LangGraph graph "
                f"{r['floor_ms']:.2f} ms | ratio {r['floor_ratio']:.3f}"
            )
            suffix = "" if delay == 0 else "_50ms_server"
            figures[f"litellm_ratio{suffix}"] = round(r["ratio"], 4)
            figures[f"litellm_bare_ms{suffix}"] = round(r["bare_ms"], 3)
            figures[f"expertgraph_ms{suffix}"] = round(r["ours_ms"], 3)
            figures[f"langgraph_floor_ratio{suffix}"] = round(r["floor_ratio"], 4)
            figures[f"langgraph_floor_ms{suffix}"] = round(r["floor_ms"], 3)
            figures[f"router_ms{suffix}"] = round(r["router_ms"], 3)
            figures[f"expertgraph_vs_router{suffix}"] = round(r["vs_router"], 4)
            figures[f"router_ratio{suffix}"] = round(r["router_ratio"], 4)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
