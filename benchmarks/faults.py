"""A soak under faults: cooldowns and the hard cost ceiling over many runs of one process.

Three loopback OpenAI-compatible servers stand for three API experts priced from LiteLLM's
price map (``openai/gpt-4o-mini``, ``pricing: auto``, no card price):

* ``flappy`` answers 500 for ``--fail`` seconds out of every ``--period`` (10 s of 30 s);
* ``staller`` hangs for longer than its attempt timeout on 5% of requests (then retried once);
* ``steady`` always answers.

Every server reports usage and spends every output token it is allowed (an honest worst
case). ``--runs`` runs (2,000) of a two-step plan go through one orchestrator (fixed policy:
``flappy``; a failed or cooling expert is routed around to the next configured one), paced
over ``--cycles`` flap periods with up to ``--concurrency`` runs in flight, each with a
``max_cost`` that pays for 1.5 full calls (so the second step is lowered or skipped).

Measured: runs answered, upstream attempts per run, calls that reached ``flappy`` while it
was cooling (admitted inside one of its cooldowns; probes come after a cooldown and are
counted apart: must be 0), spend over the ceiling (must be 0), p50/p95 run latency. The
baseline, measured in the same process first, is the same runs against healthy servers:
latency and attempts are printed as ratios to it. The last line is one JSON object holding
every figure.

    python benchmarks/faults.py [--runs 2000] [--period 30] [--fail 10] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import contextvars
import json
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("OPENAI_API_KEY", "sk-loopback")  # the OpenAI SDK wants one
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from openai_server import OpenAIServer, RecordedRequest, Reply  # noqa: E402

from expertgraph.agents import APIExpert, RetrySettings  # noqa: E402
from expertgraph.core.health import HEALTH, CooldownSettings, Ticket  # noqa: E402
from expertgraph.core.types import Budget, ExpertCard, Message, PlanStep, Task  # noqa: E402
from expertgraph.orchestrator import Orchestrator  # noqa: E402
from expertgraph.orchestrator._budget import estimate_cost  # noqa: E402
from expertgraph.policies import FixedPolicy  # noqa: E402

MODEL = "openai/gpt-4o-mini"
MAX_TOKENS = 64

# The admission of the call running in this context (set where the registry admits it), so
# the request it makes carries it to the server: the server then knows whether the call was
# admitted while the expert was cooling.
_ADMITTED: contextvars.ContextVar[tuple[float, bool] | None] = contextvars.ContextVar(
    "faults_admitted", default=None
)


@dataclass
class Faults:
    """The fault schedule of the servers; ``on`` False for the healthy baseline."""

    period_s: float
    fail_s: float
    stall_rate: float
    stall_s: float
    on: bool = True
    started: float = field(default_factory=time.monotonic)
    _rng: random.Random = field(default_factory=lambda: random.Random(12))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def flapping(self) -> bool:
        return self.on and (time.monotonic() - self.started) % self.period_s < self.fail_s

    def stalls(self) -> bool:
        with self._lock:
            return self.on and self._rng.random() < self.stall_rate


@dataclass
class Seen:
    """What one server received: each request's arrival and its call's admission."""

    requests: list[tuple[float, float | None, bool]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, request: RecordedRequest) -> None:
        raw = request.headers.get("x-admitted", "")
        admitted, _, probe = raw.partition(" ")
        with self.lock:
            self.requests.append(
                (request.received_at, float(admitted) if raw else None, probe == "1")
            )


def full_usage(text: str) -> Callable[[RecordedRequest], Reply]:
    def reply(request: RecordedRequest) -> Reply:
        return Reply(text=text, completion_tokens=int(request.body.get("max_tokens") or MAX_TOKENS))

    return reply


def make_server(kind: str, faults: Faults, seen: Seen) -> OpenAIServer:
    answer = full_usage(f"{kind} worked it out. Final answer: 42")

    def handle(request: RecordedRequest) -> Reply:
        seen.add(request)
        if kind == "flappy" and faults.flapping():
            return Reply(status=500, error_message="flapping")
        if kind == "staller" and faults.stalls():
            return Reply(text="too late", delay_s=faults.stall_s)
        return answer(request)

    return OpenAIServer(handle).start()


class TaggedExpert(APIExpert):
    """An API expert whose requests carry their call's admission (``x-admitted``)."""

    async def _generate(self, messages: list[Message], params: dict[str, Any]) -> Any:
        admitted = _ADMITTED.get()
        if admitted is not None:
            stamp = f"{admitted[0]!r} {int(admitted[1])}"
            params = {**params, "extra_headers": {"x-admitted": stamp}}
        return await super()._generate(messages, params)


def instrument_admissions() -> None:
    """Stamp each admission into the context (see :data:`_ADMITTED`)."""
    begin = HEALTH.begin

    def stamped(expert: Any) -> Ticket:
        ticket = begin(expert)
        if ticket.refused is None:
            _ADMITTED.set((time.monotonic(), ticket.probe))
        return ticket

    HEALTH.begin = stamped  # type: ignore[method-assign]


def build(servers: dict[str, OpenAIServer], args: argparse.Namespace, traces: Path) -> Orchestrator:
    settings = CooldownSettings(
        allowed_fails=args.allowed_fails, cooldown_time=args.cooldown, window_s=args.window
    )
    experts = []
    for name, srv in servers.items():
        expert = TaggedExpert(
            name,
            MODEL,
            api_base=srv.url + "/v1",
            card=ExpertCard(timeout_s=10),
            retry=RetrySettings(
                max_attempts=2 if name == "staller" else 1, initial_wait_s=0.01, max_wait_s=0.02
            ),
            attempt_timeout_s=args.attempt_timeout,
        )
        HEALTH.configure(expert, settings)
        experts.append(expert)
    return Orchestrator(
        experts,
        FixedPolicy(["flappy"]),
        trace_dir=traces,
        trace_options={"index": False},
        defaults={"max_tokens": MAX_TOKENS, "temperature": 0},
    )


def plan(i: int) -> list[PlanStep]:
    return [
        PlanStep(instruction=f"Run {i}: what is 40 + 2?"),
        PlanStep(instruction=f"Run {i}: and 84 / 2?"),
    ]


async def soak(
    orch: Orchestrator, runs: int, duration_s: float, concurrency: int, max_cost: float
) -> dict[str, Any]:
    gate = asyncio.Semaphore(concurrency)
    latencies: list[float] = []
    answered = 0
    over: list[float] = []
    errors: dict[str, int] = {}
    unanswered: dict[str, int] = {}
    started = time.monotonic()

    async def one(i: int) -> None:
        nonlocal answered
        delay = started + i * duration_s / runs - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        async with gate:
            t0 = time.perf_counter()
            try:
                result = await orch.arun(Task(plan=plan(i), budget=Budget(max_cost=max_cost)))
            except Exception as exc:  # noqa: BLE001 - counted: NoExpertAvailable, say
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                latencies.append(time.perf_counter() - t0)
                return
            latencies.append(time.perf_counter() - t0)
            answered += result.answer is not None
            if result.answer is None:
                why = result.stop_reason[:70]
                unanswered[why] = unanswered.get(why, 0) + 1
            over.append(max(0.0, result.usage.cost - max_cost))

    await asyncio.gather(*(one(i) for i in range(runs)))
    latencies.sort()
    return {
        "answered": answered,
        "errors": errors,
        "unanswered": unanswered,
        "spend_over_ceiling": sum(over),
        "p50_ms": 1000 * statistics.median(latencies),
        "p95_ms": 1000 * latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))],
        "wall_s": time.monotonic() - started,
    }


def while_cooling(expert: Any, seen: Seen) -> tuple[int, int]:
    """Requests that reached the server for calls admitted inside a cooldown of ``expert``
    (must be none), and probe requests (admitted after a cooldown ended)."""
    cooldowns = HEALTH.history(expert)
    bad = probes = 0
    for _, admitted, probe in seen.requests:
        if admitted is None:
            continue
        probes += probe
        bad += any(since <= admitted < until for since, until in cooldowns)
    return bad, probes


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    instrument_admissions()
    faults = Faults(args.period, args.fail, args.stall_rate, args.stall)
    seen = {name: Seen() for name in ("flappy", "staller", "steady")}
    servers = {name: make_server(name, faults, seen[name]) for name in seen}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            orch = build(servers, args, Path(tmp))
            probe_messages = [Message(role="user", content=plan(0)[0].instruction)]
            one_call = estimate_cost(
                orch.experts["steady"], probe_messages, {"max_tokens": MAX_TOKENS}
            )
            max_cost = 1.5 * one_call

            faults.on = False  # the baseline: the same runs at the same pace, healthy servers
            await orch.arun(Task(plan=plan(-1)))  # warm-up: LiteLLM's import, the tokenizer
            for s in seen.values():
                s.requests.clear()
            base_runs = max(20, args.runs // 10)
            pace = args.cycles * args.period / args.runs
            baseline = await soak(orch, base_runs, base_runs * pace, args.concurrency, max_cost)
            base_attempts = sum(len(s.requests) for s in seen.values()) / base_runs
            for s in seen.values():
                s.requests.clear()
            for expert in orch.experts.values():
                HEALTH.reset(expert)

            faults.on = True
            faults.started = time.monotonic()
            faulty = await soak(
                orch, args.runs, args.cycles * args.period, args.concurrency, max_cost
            )
            flappy = orch.experts["flappy"]
            bad, probes = while_cooling(flappy, seen["flappy"])
            attempts = sum(len(s.requests) for s in seen.values())
            status = HEALTH.status(flappy)
            await orch.aclose()
    finally:
        for srv in servers.values():
            srv.stop()
    return {
        "runs": args.runs,
        "answered": faulty["answered"],
        "answered_ratio": faulty["answered"] / args.runs,
        "errors": faulty["errors"],
        "unanswered": faulty["unanswered"],
        "attempts_per_run": attempts / args.runs,
        "attempts_ratio_vs_baseline": (attempts / args.runs) / base_attempts,
        "flappy_attempts": len(seen["flappy"].requests),
        "calls_while_cooling": bad,
        "probes": probes,
        "cooldowns": status.cooldowns,
        "spend_over_ceiling": faulty["spend_over_ceiling"],
        "max_cost": max_cost,
        "p50_ms": round(faulty["p50_ms"], 2),
        "p95_ms": round(faulty["p95_ms"], 2),
        "baseline_p50_ms": round(baseline["p50_ms"], 2),
        "baseline_p95_ms": round(baseline["p95_ms"], 2),
        "p50_ratio_vs_baseline": round(faulty["p50_ms"] / baseline["p50_ms"], 3),
        "p95_ratio_vs_baseline": round(faulty["p95_ms"] / baseline["p95_ms"], 3),
        "soak_s": round(faulty["wall_s"], 2),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--period", type=float, default=30.0, help="flap period, seconds")
    parser.add_argument("--fail", type=float, default=10.0, help="500s per period, seconds")
    parser.add_argument("--cycles", type=float, default=2.0, help="flap periods the soak spans")
    parser.add_argument("--stall-rate", type=float, default=0.05, dest="stall_rate")
    parser.add_argument("--stall", type=float, default=3.0, help="a stall's length, seconds")
    parser.add_argument("--attempt-timeout", type=float, default=0.5, dest="attempt_timeout")
    parser.add_argument("--allowed-fails", type=int, default=3, dest="allowed_fails")
    parser.add_argument("--cooldown", type=float, default=2.0, help="cooldown_time, seconds")
    parser.add_argument("--window", type=float, default=10.0, help="failure window, seconds")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run: 60 runs, 1.5 s periods, in seconds"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.runs, args.period, args.fail, args.cycles = 60, 1.5, 0.5, 2.0
        args.stall, args.attempt_timeout, args.cooldown, args.window = 0.6, 0.2, 0.2, 1.0
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    figures = asyncio.run(main_async(args))
    print(f"runs answered        {figures['answered']} of {figures['runs']}")
    print(
        f"upstream attempts    {figures['attempts_per_run']:.3f} a run "
        f"({figures['attempts_ratio_vs_baseline']:.3f}x the healthy baseline)"
    )
    print(
        f"calls while cooling  {figures['calls_while_cooling']} "
        f"(probes {figures['probes']}, cooldowns {figures['cooldowns']})"
    )
    print(
        f"spend over ceiling   {figures['spend_over_ceiling']:.3g} "
        f"(max_cost {figures['max_cost']:.3g} a run)"
    )
    print(
        f"run latency          p50 {figures['p50_ms']:.1f} ms "
        f"({figures['p50_ratio_vs_baseline']:.2f}x), p95 {figures['p95_ms']:.1f} ms "
        f"({figures['p95_ratio_vs_baseline']:.2f}x)"
    )
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
