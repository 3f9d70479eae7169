"""Towers of Hanoi with routed, voted micro-agents (MAKER, arXiv 2511.09030).

``python benchmarks/hanoi.py --disks N``: the ``2^N - 1`` moves are ``2^N - 1`` routed steps
of one open task. Three simulated micro-agents (callable experts) each read the current
state and the previous move and return the next move in a fixed format, wrong with a seeded
per-move error rate and malformed (unparseable or rambling: red-flagged) with another; each
call has a price. A routing policy picks, every step, the expert with the lowest expected
cost per decided move, and the step is voted with first-to-ahead-by-k, with ``k`` from
MAKER's k_min rule for a 95% chance of a zero-error run. The policy checks the state after
every move: a voted move that is not the solution's is an error (counted, then corrected,
so the run goes on measuring).

Baseline in the same run: the same micro-agents and the same ahead-by-k vote in a plain
Python loop, no orchestrator (``baseline_steps_per_s``); ``overhead_x`` is how many times
slower the orchestrated run is. The last line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import re
import resource
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from expertgraph.agents import CallableExpert
from expertgraph.core import AnswerFormat, Budget, Decision, Policy, RoutingState, Task
from expertgraph.core.state import AggregationContext
from expertgraph.core.types import ExpertCard, Generation
from expertgraph.orchestrator import Orchestrator
from expertgraph.policies import AheadByK, RedFlags
from expertgraph.traces.store import LIVE_INDEX_AFTER

PEGS = "ABC"
MOVE = r"(?i:move \d+ from [ABC] to [ABC])"
MOVE_RE = re.compile(r"move (\d+) from ([ABC]) to ([ABC])", re.IGNORECASE)
STATE_RE = re.compile(r"A=\[([\d,]*)\] B=\[([\d,]*)\] C=\[([\d,]*)\]")
TARGET = 0.95
"""MAKER's target: the chance that the whole run has no error."""
MAX_CHARS = 48
"""Longer replies ramble: red-flagged (a well-formed move is about 20 characters)."""


@dataclass(frozen=True)
class AgentSpec:
    name: str
    error_rate: float
    """Chance that a well-formed reply is a wrong (legal) move."""
    malformed_rate: float
    """Chance that a reply is unparseable or rambling (red-flagged)."""
    price: float
    """Cost of one call."""

    @property
    def p_valid(self) -> float:
        """Chance that a vote (a reply that is not red-flagged) is the right move."""
        return (1 - self.error_rate - self.malformed_rate) / (1 - self.malformed_rate)


AGENTS = (
    AgentSpec("careful", 0.005, 0.01, 0.004),
    AgentSpec("steady", 0.02, 0.02, 0.001),
    AgentSpec("sloppy", 0.05, 0.03, 0.0004),
)


# ---- the puzzle ---------------------------------------------------------------------------


def show(pegs: list[list[int]]) -> str:
    return " ".join(f"{p}=[{','.join(map(str, peg))}]" for p, peg in zip(PEGS, pegs, strict=True))


def parse_state(text: str) -> list[list[int]]:
    match = STATE_RE.search(text)
    if match is None:
        raise ValueError(f"no state in {text[:80]!r}")
    return [[int(d) for d in group.split(",") if d] for group in match.groups()]


def parse_move(text: str | None) -> tuple[int, int, int] | None:
    match = MOVE_RE.search(text or "")
    if match is None:
        return None
    return (
        int(match.group(1)),
        PEGS.index(match.group(2).upper()),
        PEGS.index(match.group(3).upper()),
    )


def fmt_move(move: tuple[int, int, int]) -> str:
    return f"move {move[0]} from {PEGS[move[1]]} to {PEGS[move[2]]}"


def legal_moves(pegs: list[list[int]]) -> list[tuple[int, int, int]]:
    return [
        (pegs[a][-1], a, b)
        for a in range(3)
        for b in range(3)
        if a != b and pegs[a] and (not pegs[b] or pegs[b][-1] > pegs[a][-1])
    ]


def next_move(pegs: list[list[int]], previous: tuple[int, int, int] | None) -> tuple[int, int, int]:
    """The optimal solution's next move (the iterative rule MAKER's agents are given): after a
    move of another disk, or at the start, disk 1 moves one peg on, cyclically (towards C for
    an odd count); after disk 1, the only legal move of another disk."""
    disks = sum(map(len, pegs))
    if previous is None or previous[0] != 1:
        src = next(i for i in range(3) if pegs[i] and pegs[i][-1] == 1)
        step = 2 if disks % 2 else 1
        return 1, src, (src + step) % 3
    return next(m for m in legal_moves(pegs) if m[0] != 1)


def apply(pegs: list[list[int]], move: tuple[int, int, int]) -> None:
    disk, src, dst = move
    if not pegs[src] or pegs[src][-1] != disk or (pegs[dst] and pegs[dst][-1] < disk):
        raise ValueError(f"illegal move {fmt_move(move)} in {show(pegs)}")
    pegs[dst].append(pegs[src].pop())


# ---- the micro-agents ---------------------------------------------------------------------


class MicroAgent:
    """A simulated micro-agent: the right move, else a seeded error or a malformed reply."""

    def __init__(self, spec: AgentSpec, seed: int) -> None:
        self.spec = spec
        self.rng = random.Random(f"{seed}:{spec.name}")

    def reply(self, prompt: str) -> str:
        pegs = parse_state(prompt)
        previous = parse_move(prompt.split("Previous move:", 1)[-1])
        right = next_move(pegs, previous)
        u = self.rng.random()
        if u < self.spec.malformed_rate:
            if self.rng.random() < 0.5:
                return f"I think disk {right[0]} should go somewhere else next."  # unparseable
            return f"Let me reason at length about this position first: {fmt_move(right)}."
        if u < self.spec.malformed_rate + self.spec.error_rate:
            wrong = [m for m in legal_moves(pegs) if m != right]
            return fmt_move(self.rng.choice(wrong))
        return fmt_move(right)

    async def __call__(self, messages: list[Any]) -> dict[str, Any]:
        prompt = messages[-1].content
        text = self.reply(prompt)
        return {
            "text": text,
            "cost": self.spec.price,
            "input_tokens": len(prompt) // 4,
            "output_tokens": len(text) // 4,
            "finish_reason": "stop",
        }


# ---- MAKER's arithmetic -------------------------------------------------------------------


def k_min(p: float, steps: int, target: float = TARGET) -> int:
    """MAKER's k_min: the least k whose per-step first-to-ahead-by-k vote, with per-vote
    success ``p`` against one rival, gets all ``steps`` right with chance ``target``."""
    if p >= 1:
        return 1
    ratio = (1 - p) / p
    return max(1, math.ceil(math.log(target ** (-1 / steps) - 1) / math.log(ratio)))


def expected_votes(p: float, k: int, malformed: float = 0.0) -> float:
    """Expected samples per step of a first-to-ahead-by-k vote (a gambler's ruin between
    +k and -k with step success ``p``), red-flagged samples redrawn."""
    if p >= 1:
        return k / (1 - malformed)
    r = (1 - p) / p
    valid = (k / (2 * p - 1)) * (1 - r**k) / (1 + r**k)
    return valid / (1 - malformed)


def plan_routing(steps: int) -> list[tuple[AgentSpec, int, float]]:
    """Each agent with its k and expected cost per step, cheapest first."""
    rows = []
    for spec in AGENTS:
        k = k_min(spec.p_valid, steps)
        rows.append((spec, k, spec.price * expected_votes(spec.p_valid, k, spec.malformed_rate)))
    return sorted(rows, key=lambda row: row[2])


# ---- the routing policy that also checks the state ----------------------------------------


@dataclass
class World:
    """The true state, advanced by the voted moves and checked after each one."""

    disks: int
    pegs: list[list[int]] = field(default_factory=list)
    moves: int = 0
    errors: int = 0
    previous: tuple[int, int, int] | None = None
    stamps: list[float] = field(default_factory=list)
    progress: int = 0
    """Print ``moves N`` every this many moves (0: never); a resume test watches it."""

    def __post_init__(self) -> None:
        self.pegs = [list(range(self.disks, 0, -1)), [], []]

    @property
    def total(self) -> int:
        return 2**self.disks - 1

    def check(self, voted: str | None) -> None:
        right = next_move(self.pegs, self.previous)
        if parse_move(voted) != right:
            self.errors += 1  # counted, then the solution's move is applied so the run goes on
        self.advance(right)

    def advance(self, move: tuple[int, int, int] | None = None) -> None:
        """Apply the solution's next move (``move`` when it is known already)."""
        move = move or next_move(self.pegs, self.previous)
        apply(self.pegs, move)
        self.previous = move
        self.moves += 1
        if self.progress and self.moves % self.progress == 0:
            print(f"moves {self.moves}", flush=True)


class HanoiRouter(Policy):
    """Routes every move to the cheapest expert per decided move; finishes when solved."""

    name = "hanoi-router"
    blocking = False

    def __init__(self, world: World, scores: dict[str, float]) -> None:
        self.world = world
        self.scores = scores

    def decide(self, state: RoutingState) -> Decision:
        world = self.world
        world.stamps.append(time.perf_counter())
        while world.moves < state.step_index - 1:
            # A resumed run: the moves decided before the kill are the solution's (each one
            # was checked and, when wrong, corrected), so the world catches up to them.
            world.advance()
        if state.step_index > world.moves:
            last = state.steps[-1]
            world.check(last.result.answer if last.result else None)
        if world.moves >= world.total:
            return Decision(action="finish", rationale="solved", answer=show(world.pegs))
        usable = {v.name for v in state.candidates}
        order = sorted((n for n in self.scores if n in usable), key=lambda n: -self.scores[n])
        # {stepN} names the previous step's voted move: no context block of every earlier step.
        previous = f"{{step{state.step_index}}}" if state.step_index else "none"
        instruction = (
            f"Towers of Hanoi, {world.disks} disks. State: {show(world.pegs)}. "
            f"Previous move: {previous}. Reply with the next move as 'move D from X to Y'."
        )
        return Decision(
            instruction=instruction,
            experts=order[:1],
            scores={n: self.scores[n] for n in order},
            mode="top1",
            rationale="lowest expected cost per decided move",
            policy=self.name,
        )


# ---- runs ---------------------------------------------------------------------------------


def _rate(stamps: list[float], first: bool) -> float:
    n = max(2, len(stamps) // 10)
    window = stamps[:n] if first else stamps[-n:]
    span = window[-1] - window[0]
    return (len(window) - 1) / span if span > 0 else float("inf")


def baseline(disks: int, aggregator: AheadByK, spec: AgentSpec, seed: int) -> float:
    """Steps/s of the same agents and vote in a plain loop, without the orchestrator."""
    world = World(disks)
    agent = MicroAgent(spec, seed)
    context = AggregationContext(
        task=Task(prompt="hanoi", answer_format=AnswerFormat(regex=f"({MOVE})")),
        instruction="next move",
        answer_format=AnswerFormat(regex=f"({MOVE})"),
        calls_left=10_000,
    )
    steps = min(world.total, 2000)
    start = time.perf_counter()
    for _ in range(steps):
        prompt = f"State: {show(world.pegs)}. Previous move: "
        prompt += fmt_move(world.previous) if world.previous else "none"
        candidates: list[Generation] = []
        while True:
            result = aggregator.combine(candidates, context)
            if result.more is None:
                break
            for _ in result.more.experts:
                candidates.append(
                    Generation(expert=spec.name, text=agent.reply(prompt), sample=len(candidates))
                )
        world.check(result.answer)
    return steps / (time.perf_counter() - start)


def verify_trace(path: Path, disks: int) -> dict[str, int]:
    """The run's moves read back from its trace (streamed), checked against the solution:
    steps decided, errors, and steps decided more than once (each must have one step_end)."""
    from expertgraph.traces.store import load_run

    world = World(disks)
    errors = twice = decided = 0
    expected = 0
    for step in load_run(path).iter_steps():
        decided += 1
        if step.index < expected:
            twice += 1
            continue
        if step.index != expected:
            raise ValueError(f"{path}: step {step.index} follows step {expected - 1}")
        right = next_move(world.pegs, world.previous)
        errors += parse_move(step.result.answer if step.result else None) != right
        world.advance(right)
        expected += 1
    return {"steps": expected, "errors": errors, "decided_twice": twice, "decided": decided}


async def run(
    disks: int,
    *,
    seed: int,
    detail: str,
    trace_dir: Path,
    checkpoint: Path | None = None,
    run_id: str | None = None,
    resume: bool = False,
    progress: int = 0,
    live_index_after: int | None = LIVE_INDEX_AFTER,
    summary: bool = False,
) -> dict[str, Any]:
    """One run of the puzzle; with ``checkpoint`` (a SQLite file) it is durable, and
    ``resume`` continues the run ``run_id`` from its last checkpoint. ``summary`` times
    ``expertgraph traces summary`` on the trace directory once the run is over."""
    world = World(disks, progress=progress)
    routing = plan_routing(world.total)
    best, k, _ = routing[0]
    scores = {spec.name: round(1 / cost, 3) for spec, _, cost in routing}
    experts = [
        CallableExpert(
            spec.name,
            MicroAgent(spec, seed),
            card=ExpertCard(description=f"Hanoi micro-agent, error rate {spec.error_rate:g}"),
        )
        for spec in AGENTS
    ]
    max_draws = 8 * k + 10
    aggregator = AheadByK(
        k,
        max_draws=max_draws,
        source="same-expert",
        red_flags=RedFlags(max_chars=MAX_CHARS, answer_pattern=MOVE),
    )
    orch = Orchestrator(
        experts,
        HanoiRouter(world, scores),
        aggregator,
        trace_dir=trace_dir,
        # A long run is indexed as it is written (another process), so `traces summary`
        # finds the index complete when the run ends.
        trace_options={"detail": detail, "live_index_after": live_index_after},
        checkpointer=checkpoint,
        # The router reads the last step and the prompt names it as {stepN}: a window of one
        # step is all the state needs (so a checkpoint holds one step, not sixteen).
        history_window=1,
    )
    task = Task(
        prompt=f"Solve the Towers of Hanoi with {disks} disks, one move per step.",
        answer_format=AnswerFormat(regex=f"({MOVE})"),
        budget=Budget(max_steps=world.total + 1, max_calls_per_step=max_draws),
    )
    start = time.perf_counter()
    if resume:
        result = await orch.arun(run_id=run_id, resume=True)
    else:
        result = await orch.arun(task, run_id=run_id)
    wall = time.perf_counter() - start
    await orch.aclose()
    calls = result.usage.calls
    trace_bytes = Path(result.trace_path or "").stat().st_size if result.trace_path else 0
    summary_start = time.perf_counter()
    from expertgraph.traces.store import load_run

    ended = load_run(result.trace_path or "").end
    end_s = time.perf_counter() - summary_start
    summary_s = _time_summary(trace_dir) if summary else None
    solved = world.pegs[2] == list(range(disks, 0, -1))
    base = baseline(disks, aggregator, best, seed + 1)
    steps_per_s = world.moves / wall if wall else 0.0
    return {
        "disks": disks,
        "steps": world.moves,
        "errors": world.errors,
        "solved": solved,
        "stop_reason": result.stop_reason,
        "expert": best.name,
        "k": k,
        "wall_s": round(wall, 3),
        "steps_per_s": round(steps_per_s, 1),
        "steps_per_s_first": round(_rate(world.stamps, True), 1),
        "steps_per_s_last": round(_rate(world.stamps, False), 1),
        "last_vs_first": round(_rate(world.stamps, False) / _rate(world.stamps, True), 3),
        "baseline_steps_per_s": round(base, 1),
        "overhead_x": round(base / steps_per_s, 2) if steps_per_s else None,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "votes_per_step": round(calls / max(1, world.moves), 3),
        "expected_votes_per_step": round(expected_votes(best.p_valid, k, best.malformed_rate), 3),
        "cost": round(result.usage.cost, 6),
        "trace_mb": round(trace_bytes / 1e6, 3),
        "trace_detail": detail,
        "trace_end_read_s": round(end_s, 4),
        "trace_complete": ended is not None,
        "summary_s": summary_s,
    }


def _time_summary(trace_dir: Path) -> float:
    """Seconds ``expertgraph traces summary`` takes on the directory, in a new process as a
    user would run it (it waits for the live index to catch up with the run's end)."""
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "expertgraph.orchestrator.cli", "traces", "summary"]
        + ["--dir", str(trace_dir)],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return round(time.perf_counter() - started, 2)


def kill_and_resume(
    disks: int, *, seed: int, detail: str, directory: Path, at: float
) -> dict[str, Any]:
    """A durable run SIGKILLed at about ``at`` of its moves, then resumed by a new process;
    the trace is then checked move by move (errors, moves decided twice)."""
    trace_dir, checkpoint, run_id = directory / "traces", directory / "ckpt.sqlite", "hanoi"
    total = 2**disks - 1
    common = [sys.executable, __file__, "--disks", str(disks), "--seed", str(seed)]
    common += ["--detail", detail, "--trace-dir", str(trace_dir)]
    common += ["--checkpoint", str(checkpoint), "--run-id", run_id]
    started = time.perf_counter()
    every = max(1, total // 200)
    child = subprocess.Popen([*common, "--progress", str(every)], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    killed_at = 0
    for line in child.stdout:
        if line.startswith("moves "):
            killed_at = int(line.split()[1])
            if killed_at >= at * total:
                child.send_signal(signal.SIGKILL)
                break
    child.wait()
    first_s = time.perf_counter() - started
    if child.returncode != -signal.SIGKILL:
        raise RuntimeError(f"the run ended (exit {child.returncode}) before it was killed")
    resumed = subprocess.run([*common, "--resume"], capture_output=True, text=True, check=True)
    figures = json.loads(resumed.stdout.strip().splitlines()[-1])
    checked = verify_trace(trace_dir / f"{run_id}.jsonl", disks)
    return {
        "disks": disks,
        "killed_at_move": killed_at,
        "killed_after_s": round(first_s, 2),
        "resumed_wall_s": figures["wall_s"],
        "resumed_peak_rss_mb": figures["peak_rss_mb"],
        "steps": checked["steps"],
        "errors": checked["errors"],
        "decided_twice": checked["decided_twice"],
        "solved": figures["solved"] and checked["steps"] == total,
        "stop_reason": figures["stop_reason"],
        "checkpoint_mb": round(checkpoint.stat().st_size / 1e6, 3),
        "trace_mb": figures["trace_mb"],
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--disks", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--detail", choices=["full", "decisions"], default="decisions")
    parser.add_argument("--trace-dir", type=Path, default=None)
    parser.add_argument("--quick", action="store_true", help="4 disks: a smoke test in seconds")
    parser.add_argument("--checkpoint", type=Path, help="a SQLite file: the run is durable")
    parser.add_argument("--run-id", default=None)
    parser.add_argument("--resume", action="store_true", help="continue --run-id's checkpoint")
    parser.add_argument("--progress", type=int, default=0, help="print 'moves N' every N")
    parser.add_argument(
        "--kill-at",
        type=float,
        default=None,
        help="SIGKILL a durable run at this fraction of its moves, resume it, check the trace",
    )
    args = parser.parse_args(argv)
    disks = 4 if args.quick else args.disks
    if disks < 1:
        parser.error("--disks must be at least 1")
    if args.kill_at is not None:
        with tempfile.TemporaryDirectory() as tmp:
            where = args.trace_dir or Path(tmp)
            figures = kill_and_resume(
                disks, seed=args.seed, detail=args.detail, directory=where, at=args.kill_at
            )
        print(
            f"Towers of Hanoi, {disks} disks, killed at move {figures['killed_at_move']} and "
            f"resumed: {figures['steps']} moves, {figures['errors']} errors, "
            f"{figures['decided_twice']} decided twice"
        )
        print(json.dumps(figures))
        return figures
    with tempfile.TemporaryDirectory() as tmp:
        figures = asyncio.run(
            run(
                disks,
                seed=args.seed,
                detail=args.detail,
                trace_dir=args.trace_dir or Path(tmp),
                checkpoint=args.checkpoint,
                run_id=args.run_id,
                resume=args.resume,
                progress=args.progress,
                summary=not args.resume and args.progress == 0,
            )
        )
    routing = plan_routing(2**disks - 1)
    print(f"Towers of Hanoi, {disks} disks: {figures['steps']} moves, {figures['errors']} errors")
    for spec, k, cost in routing:
        print(
            f"  {spec.name:8s} error {spec.error_rate:.3f} malformed {spec.malformed_rate:.3f} "
            f"price {spec.price:g}: k_min {k}, expected cost/step {cost:.5f}"
        )
    print(
        f"routed to {figures['expert']} (k={figures['k']}); votes/step "
        f"{figures['votes_per_step']} (MAKER expects {figures['expected_votes_per_step']}); "
        f"cost {figures['cost']:g}"
    )
    print(
        f"steps/s {figures['steps_per_s']} (first 10% {figures['steps_per_s_first']}, last 10% "
        f"{figures['steps_per_s_last']}: {figures['last_vs_first']}x); plain loop "
        f"{figures['baseline_steps_per_s']} ({figures['overhead_x']}x faster)"
    )
    print(
        f"peak RSS {figures['peak_rss_mb']} MB; trace {figures['trace_mb']} MB "
        f"({figures['trace_detail']})"
    )
    if figures["summary_s"] is not None:
        print(f"`expertgraph traces summary` on the run's trace: {figures['summary_s']} s")
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main(sys.argv[1:])
