"""The Towers of Hanoi benchmark (MAKER's setup) on a few disks: figures, rules and its line."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]
KEYS = {
    "disks",
    "steps",
    "errors",
    "wall_s",
    "steps_per_s_first",
    "steps_per_s_last",
    "peak_rss_mb",
    "votes_per_step",
    "expected_votes_per_step",
    "cost",
    "trace_mb",
}


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("hanoi_bench", ROOT / "benchmarks" / "hanoi.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file loads
    spec.loader.exec_module(module)
    return module


def _figures(*args: str) -> dict[str, object]:
    """Run the benchmark script; its last line, the JSON figures."""
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "hanoi.py"), *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_quick_run_solves_the_puzzle_and_ends_on_one_json_line(tmp_path: Path) -> None:
    figures = _figures("--quick", "--trace-dir", str(tmp_path))
    assert KEYS <= set(figures)
    assert figures["disks"] == 4 and figures["steps"] == 15 and figures["solved"]
    assert figures["errors"] == 0  # k from k_min: the vote corrects the seeded errors
    assert figures["votes_per_step"] >= figures["k"]  # ahead by k needs at least k votes
    traces = list(tmp_path.glob("*.jsonl"))
    assert len(traces) == 1 and figures["trace_mb"] > 0


def test_the_rule_solves_hanoi_and_errors_are_counted() -> None:
    bench = _bench()
    world = bench.World(5)
    for _ in range(world.total):
        world.check(bench.fmt_move(bench.next_move(world.pegs, world.previous)))
    assert world.pegs == [[], [], [5, 4, 3, 2, 1]] and world.errors == 0
    world = bench.World(3)
    world.check("move 1 from A to B")  # the solution moves disk 1 to C first (odd count)
    world.check("nonsense")
    assert world.errors == 2 and world.moves == 2


def test_k_min_and_expected_votes_follow_maker() -> None:
    bench = _bench()
    # Higher accuracy or fewer steps never needs a larger k; a million steps need more.
    assert bench.k_min(0.995, 1023) <= bench.k_min(0.95, 1023) <= bench.k_min(0.95, 2**20)
    for p in (0.9, 0.98):
        k = bench.k_min(p, 1000)
        per_step = 1 / (1 + ((1 - p) / p) ** k)  # the vote's chance of the right move
        assert per_step**1000 >= 0.95 > (1 / (1 + ((1 - p) / p) ** (k - 1))) ** 1000
    assert bench.expected_votes(1.0, 3) == 3
    assert 3 < bench.expected_votes(0.9, 3) < 3 / 0.8  # drift 2p - 1 bounds it
    assert bench.expected_votes(0.9, 3, malformed=0.5) == 2 * bench.expected_votes(0.9, 3)


def test_a_durable_run_killed_at_half_resumes_and_decides_each_move_once(
    tmp_path: Path,
) -> None:
    figures = _figures("--disks", "7", "--kill-at", "0.5", "--trace-dir", str(tmp_path))
    assert 63 <= figures["killed_at_move"] < 127  # killed in the middle, by a real SIGKILL
    assert figures["steps"] == 127 and figures["solved"]
    assert figures["errors"] == 0 and figures["decided_twice"] == 0  # read back from the trace
    # The SQLite checkpoints keep a run's latest states only: a few, not one per superstep.
    assert figures["checkpoint_mb"] < 1


def test_the_trace_check_counts_wrong_and_repeated_moves(tmp_path: Path) -> None:
    from expertgraph.agents import CallableExpert
    from expertgraph.core import PlanStep, Task
    from expertgraph.orchestrator import Orchestrator
    from expertgraph.policies import FixedPolicy

    bench = _bench()
    world = bench.World(2)  # three moves: the solution's, then one wrong
    moves = []
    for _ in range(3):
        moves.append(bench.fmt_move(bench.next_move(world.pegs, world.previous)))
        world.advance()
    moves[2] = "move 1 from A to A"
    answers = iter(moves)
    orch = Orchestrator(
        [CallableExpert("m", lambda prompt: next(answers))],
        FixedPolicy(["m"]),
        trace_dir=tmp_path,
    )
    result = orch.run(Task(plan=[PlanStep(instruction=f"move {i}") for i in range(3)]))
    checked = bench.verify_trace(Path(result.trace_path or ""), 2)
    assert checked == {"steps": 3, "errors": 1, "decided_twice": 0, "decided": 3}
