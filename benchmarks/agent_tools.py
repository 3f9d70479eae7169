"""Voting on actions: tool-use success of one expert, a majority vote and ahead-by-k.

A suite of tool-use tasks is built from a seed (no data files): arithmetic (``add``,
``multiply`` on integers), a fixed table (``lookup(key)``: an element's atomic number) and
unit conversion (``convert(value, from_unit, to_unit)``). Each task's right call is known,
and so is its answer: the tool's own result for that call.

Three callable experts play models by rule, each with its own per-call error rate: on every
call that has no tool result to read yet, an expert proposes a wrong call with probability
``p`` (a wrong tool, a wrong argument value, or malformed arguments), else the right call;
once a tool result is in its messages it answers ``"The answer is <result>."``. The random
draw of a call is seeded by the expert, the task, the step and how many times that expert
was already asked in that step, so every setup sees the same first proposal from each
expert, and a resample (ahead-by-k going round the experts again) is a fresh draw.

Every task runs through the real :class:`~expertgraph.orchestrator.Orchestrator` with the
real tools (route, propose, vote, act, then the text answer):

* ``single/<expert>``: that expert alone (``FixedPolicy``); ``single_best`` is the best of
  the three as measured in this run;
* ``majority``: all three experts (``AllExperts``) and ``MajorityVote`` over their actions
  (ties go to the router's order, strongest expert first);
* ``ahead_by_k``: ``AheadByK(k=2, source="next-expert", resample=True)``, starting from the
  strongest expert and drawing the next ones (then going round again) until one action
  leads by 2.

A task succeeds when exactly the right call was executed and the final text answer is the
right one. The last line printed is one JSON object: ``{"tasks": N, "single_best": S,
"majority": M, "ahead_by_k": A, "calls_per_task": C, ...}`` where ``C`` maps each setup
(``single/<expert>``, ``majority``, ``ahead_by_k``) to its mean expert calls per task, and
the extra keys give ``best_expert``, each setup's ``success`` and ``ratio_to_single_best``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from expertgraph.agents import CallableExpert
from expertgraph.core import Aggregator, Message, Policy, ToolSpec
from expertgraph.orchestrator import Orchestrator, Tool
from expertgraph.policies import AllExperts, FixedPolicy, MajorityVote
from expertgraph.policies.aggregation.ahead_by_k import AheadByK

# (name, error rate), strongest first: the order routers and tie-breaks use.
EXPERTS: tuple[tuple[str, float], ...] = (("alpha", 0.10), ("beta", 0.20), ("gamma", 0.30))
K = 2
MAX_DRAWS = 10

ELEMENTS: dict[str, int] = {
    "hydrogen": 1, "helium": 2, "lithium": 3, "beryllium": 4, "boron": 5, "carbon": 6,
    "nitrogen": 7, "oxygen": 8, "fluorine": 9, "neon": 10, "sodium": 11, "magnesium": 12,
    "aluminium": 13, "silicon": 14, "phosphorus": 15, "sulfur": 16, "chlorine": 17,
    "argon": 18, "potassium": 19, "calcium": 20, "titanium": 22, "iron": 26, "cobalt": 27,
    "nickel": 28, "copper": 29, "zinc": 30, "silver": 47, "tin": 50, "iodine": 53,
    "platinum": 78, "gold": 79, "mercury": 80, "lead": 82, "uranium": 92,
}  # fmt: skip
Unit = Literal["mm", "cm", "m", "km", "in", "ft", "mi", "g", "kg", "oz", "lb"]
# Each unit's size in its dimension's base unit (metre, kilogram).
UNITS: dict[str, tuple[str, float]] = {
    "mm": ("length", 0.001), "cm": ("length", 0.01), "m": ("length", 1.0),
    "km": ("length", 1000.0), "in": ("length", 0.0254), "ft": ("length", 0.3048),
    "mi": ("length", 1609.344), "g": ("mass", 0.001), "kg": ("mass", 1.0),
    "oz": ("mass", 0.028349523125), "lb": ("mass", 0.45359237),
}  # fmt: skip


# ---- the tools --------------------------------------------------------------------------------


@dataclass
class ToolLog:
    """The calls the tools executed, in order (runs go one at a time, so one run's calls)."""

    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)


def make_tools(log: ToolLog) -> list[Tool]:
    """The four tools, each logging its executed call."""

    def add(a: int, b: int) -> int:
        """Add two integers."""
        log.calls.append(("add", {"a": a, "b": b}))
        return a + b

    def multiply(a: int, b: int) -> int:
        """Multiply two integers."""
        log.calls.append(("multiply", {"a": a, "b": b}))
        return a * b

    def lookup(key: str) -> int:
        """The atomic number of a chemical element, by its English name."""
        log.calls.append(("lookup", {"key": key}))
        return ELEMENTS[key]

    def convert(value: float, from_unit: Unit, to_unit: Unit) -> str:
        """Convert a length or a mass from one unit to another (4 significant digits)."""
        log.calls.append(("convert", {"value": value, "from_unit": from_unit, "to_unit": to_unit}))
        return convert_value(value, from_unit, to_unit)

    return [Tool.from_function(f) for f in (add, multiply, lookup, convert)]


def convert_value(value: float, from_unit: str, to_unit: str) -> str:
    (dim_from, size_from), (dim_to, size_to) = UNITS[from_unit], UNITS[to_unit]
    if dim_from != dim_to:
        raise ValueError(f"cannot convert {dim_from} to {dim_to}")
    return f"{value * size_from / size_to:.4g}"


# ---- the suite --------------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchTask:
    """One task: its prompt, the right call, and the right final answer."""

    id: str
    prompt: str
    tool: str
    arguments: dict[str, Any]
    answer: str


def _answer(tool: str, arguments: dict[str, Any]) -> str:
    if tool == "add":
        return str(arguments["a"] + arguments["b"])
    if tool == "multiply":
        return str(arguments["a"] * arguments["b"])
    if tool == "lookup":
        return str(ELEMENTS[arguments["key"]])
    return convert_value(arguments["value"], arguments["from_unit"], arguments["to_unit"])


def build_suite(n: int, seed: int) -> list[BenchTask]:
    """``n`` tasks, cycling arithmetic, lookup and conversion, drawn from ``seed``."""
    rng = random.Random(f"suite-{seed}")
    tasks: list[BenchTask] = []
    for i in range(n):
        kind = ("add", "multiply", "lookup", "convert")[i % 4]
        if kind in ("add", "multiply"):
            args: dict[str, Any] = {"a": rng.randint(2, 999), "b": rng.randint(2, 999)}
            verb = "the sum of" if kind == "add" else "the product of"
            prompt = f"What is {verb} {args['a']} and {args['b']}?"
        elif kind == "lookup":
            args = {"key": rng.choice(sorted(ELEMENTS))}
            prompt = f"What is the atomic number of {args['key']}?"
        else:
            dim = rng.choice(["length", "mass"])
            units = [u for u, (d, _) in UNITS.items() if d == dim]
            src, dst = rng.sample(units, 2)
            args = {"value": rng.randint(1, 500), "from_unit": src, "to_unit": dst}
            prompt = f"How many {dst} is {args['value']} {src}?"
        tid = f"t{i:04d}"
        tasks.append(BenchTask(tid, f"[{tid}] {prompt}", kind, args, _answer(kind, args)))
    return tasks


# ---- the experts ------------------------------------------------------------------------------


def _wrong_call(task: BenchTask, rng: random.Random) -> dict[str, Any]:
    """A wrong proposal for ``task``: a wrong tool, a wrong value, or malformed arguments."""
    kind = rng.choice(["tool", "value", "malformed"])
    args = dict(task.arguments)
    if kind == "malformed":
        text = json.dumps(args)
        if rng.random() < 0.5:
            return {"name": task.tool, "arguments": text[: rng.randint(1, len(text) - 1)]}
        args.pop(rng.choice(sorted(args)))  # a required argument left out: fails the schema
        return {"name": task.tool, "arguments": args}
    if kind == "tool":
        if task.tool in ("add", "multiply"):  # the sibling tool: a valid call that votes
            return {"name": "multiply" if task.tool == "add" else "add", "arguments": args}
        # A tool that does not exist (red-flagged, never votes).
        return {"name": rng.choice(["search", "get_value", "unit_convert"]), "arguments": args}
    if task.tool in ("add", "multiply"):
        slot = rng.choice(["a", "b"])
        args[slot] += rng.choice([-1, 1]) * rng.randint(1, 50)
    elif task.tool == "lookup":
        args["key"] = rng.choice([k for k in sorted(ELEMENTS) if k != args["key"]])
    elif rng.random() < 0.5:
        args["value"] += rng.choice([-1, 1]) * rng.randint(1, 50)
    else:
        args["from_unit"], args["to_unit"] = args["to_unit"], args["from_unit"]
    return {"name": task.tool, "arguments": args}


@dataclass
class RuleExpert:
    """A model played by rule: the right call with probability ``1 - error_rate``."""

    name: str
    error_rate: float
    seed: int
    tasks: dict[str, BenchTask]
    calls: int = 0
    asked: dict[tuple[str, int], int] = field(default_factory=dict)

    def draw(self, task: BenchTask, step: int) -> dict[str, Any]:
        """The proposal of this expert's next call on ``task`` at ``step`` (seeded)."""
        n = self.asked.get((task.id, step), 0)
        self.asked[(task.id, step)] = n + 1
        key = f"{self.seed}/{self.name}/{task.id}/{step}/{n}".encode()
        rng = random.Random(int.from_bytes(hashlib.sha256(key).digest()[:8], "big"))
        if rng.random() < self.error_rate:
            return _wrong_call(task, rng)
        return {"name": task.tool, "arguments": dict(task.arguments)}

    async def __call__(self, messages: list[Message], tools: list[ToolSpec] | None = None) -> Any:
        self.calls += 1
        results = [m.content for m in messages if m.role == "tool"]
        if results:
            return {"text": f"The answer is {results[-1]}."}
        prompt = next(m.content for m in messages if m.role == "user")
        task = self.tasks[prompt.split("]", 1)[0].lstrip("[")]
        return {"text": "", "tool_calls": [self.draw(task, len(results))]}


# ---- running ----------------------------------------------------------------------------------


Setup = Callable[[], tuple[list[str], Policy, Aggregator]]
"""Builds a setup's experts (by name), routing policy and aggregator."""


@dataclass
class Figures:
    """One setup's figures over the suite."""

    success: float
    calls_per_task: float
    seconds: float


def run_setup(
    suite: Sequence[BenchTask],
    seed: int,
    trace_dir: Path,
    make: Setup,
) -> Figures:
    """Every task of ``suite`` through one orchestrator; success and expert calls per task."""
    by_id = {t.id: t for t in suite}
    names, policy, aggregator = make()
    players = [RuleExpert(name, p, seed, by_id) for name, p in EXPERTS if name in names]
    experts = [CallableExpert(p.name, p) for p in players]
    log = ToolLog()
    orch = Orchestrator(
        experts,
        policy,
        aggregator,
        trace_dir=trace_dir,
        trace_options={"capture_content": False},
        tools=make_tools(log),
    )
    started = time.perf_counter()
    right = 0
    for task in suite:
        log.calls.clear()
        result = orch.run(task.prompt)
        executed = [(name, _normal(args)) for name, args in log.calls]
        right += executed == [(task.tool, _normal(task.arguments))] and (
            result.answer == f"The answer is {task.answer}."
        )
    orch.trace_store.flush()  # the index is written in the background: finish it first
    calls = sum(p.calls for p in players)
    return Figures(right / len(suite), calls / len(suite), time.perf_counter() - started)


def _normal(arguments: dict[str, Any]) -> str:
    """Arguments compared by value: an integer and the same float are one call."""
    numbers = {k: float(v) if isinstance(v, int) else v for k, v in arguments.items()}
    return json.dumps(numbers, sort_keys=True)


def setups() -> dict[str, Setup]:
    """The setups compared, by name."""
    out: dict[str, Setup] = {}
    for name, _ in EXPERTS:
        out[f"single/{name}"] = lambda n=name: ([n], FixedPolicy([n]), MajorityVote())
    all_names = [n for n, _ in EXPERTS]
    out["majority"] = lambda: (all_names, AllExperts(), MajorityVote())
    out["ahead_by_k"] = lambda: (
        all_names,
        # The strongest expert first; AheadByK draws the rest in the router's order.
        FixedPolicy([all_names[0]]),
        AheadByK(K, max_draws=MAX_DRAWS, source="next-expert", resample=True),
    )
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--tasks", type=int, default=200, help="suite size (default 200)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the suite and the experts")
    parser.add_argument("--traces", type=Path, default=None, help="trace folder (default: temp)")
    args = parser.parse_args(argv)
    if args.tasks < 1:
        parser.error("--tasks must be at least 1")
    suite = build_suite(args.tasks, args.seed)
    with tempfile.TemporaryDirectory(prefix="agent-tools-") as tmp:
        trace_root = args.traces or Path(tmp)
        figures = {
            name: run_setup(suite, args.seed, trace_root / name.replace("/", "-"), make)
            for name, make in setups().items()
        }
    singles = {n: f for n, f in figures.items() if n.startswith("single/")}
    best = max(singles, key=lambda n: singles[n].success)
    single_best = singles[best].success

    def ratio(x: float) -> float | None:
        return round(x / single_best, 4) if single_best else None

    rates = dict(EXPERTS)
    print(f"{len(suite)} tool-use tasks, seed {args.seed}; error rates {rates}")
    print(f"{'setup':<16} {'success':>8} {'/ single_best':>14} {'calls/task':>11} {'seconds':>8}")
    for name, fig in figures.items():
        r = ratio(fig.success)
        print(
            f"{name:<16} {fig.success:>8.3f} {'-' if r is None else f'{r:.3f}':>14} "
            f"{fig.calls_per_task:>11.2f} {fig.seconds:>8.1f}"
        )
    print(f"single_best = {best} ({single_best:.3f})")
    summary = {
        "tasks": len(suite),
        "single_best": round(single_best, 4),
        "majority": round(figures["majority"].success, 4),
        "ahead_by_k": round(figures["ahead_by_k"].success, 4),
        "calls_per_task": {n: round(f.calls_per_task, 4) for n, f in figures.items()},
        "best_expert": best.removeprefix("single/"),
        "success": {n: round(f.success, 4) for n, f in figures.items()},
        "ratio_to_single_best": {n: ratio(f.success) for n, f in figures.items()},
        "error_rates": rates,
        "k": K,
        "seed": args.seed,
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
