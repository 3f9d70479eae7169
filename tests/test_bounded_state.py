"""Bounded run state: a long run keeps a window of recent steps, so a step costs the same time
and memory at step 5,000 as at step 1 (issue 15); every step stays in the trace."""

from __future__ import annotations

import statistics
import time
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from expertgraph.agents import CallableExpert
from expertgraph.core import Decision, PlanStep, Policy, RoutingState, Task
from expertgraph.core.errors import ConfigError
from expertgraph.core.types import Budget
from expertgraph.orchestrator import Orchestrator
from expertgraph.orchestrator._prompts import HISTORY_WINDOW
from expertgraph.orchestrator._recorder import RESULT_STEPS
from expertgraph.policies import FixedPolicy
from expertgraph.traces import load_run

STEPS = 5000
WINDOW = 1000


class Counting(Policy):
    """An open task of ``steps`` steps, each naming the previous step's answer; it notes when
    each step is routed, what the state holds, and (when asked) the traced memory."""

    name = "counting"
    blocking = False

    def __init__(self, steps: int, memory_at: tuple[int, ...] = ()) -> None:
        self.steps = steps
        self.stamps: list[float] = []
        self.window_sizes: set[int] = set()
        self.memory_at = memory_at
        self.memory: dict[int, int] = {}

    def decide(self, state: RoutingState) -> Decision:
        self.stamps.append(time.perf_counter())
        self.window_sizes.add(len(state.steps))
        if state.step_index in self.memory_at:
            self.memory[state.step_index] = tracemalloc.get_traced_memory()[0]
        if state.step_index >= self.steps:
            return Decision(action="finish", rationale="counted", answer=str(state.step_index))
        previous = f"{{step{state.step_index}}}" if state.step_index else "none"
        return Decision(
            instruction=f"count on from {previous}",
            experts=["counter"],
            scores={"counter": 1.0},
            policy=self.name,
        )


def counter(messages: list[Any]) -> str:
    text = messages[-1].content
    return str(len(text))


def _run(tmp_path: Path, policy: Counting) -> Any:
    orch = Orchestrator(
        [CallableExpert("counter", counter)],
        policy,
        trace_dir=tmp_path,
        trace_options={"detail": "decisions", "index": False},
    )
    return orch.run(Task(prompt="count", budget=Budget(max_steps=STEPS + 1)))


def test_time_per_step_of_a_5000_step_run_is_flat(tmp_path: Path) -> None:
    policy = Counting(STEPS)
    result = _run(tmp_path / "time", policy)
    assert result.stop_reason == "policy finished: counted"
    per_step = [b - a for a, b in zip(policy.stamps, policy.stamps[1:], strict=False)]
    # The fastest tenth of each window: a state that grew would slow every step, while load
    # from other processes on shared cores (a suite run beside other work) slows some of them.
    first = statistics.quantiles(per_step[:WINDOW], n=10)[0]
    last = statistics.quantiles(per_step[-WINDOW:], n=10)[0]
    print(f"10th percentile per step: first {first * 1e6:.0f} us, last {last * 1e6:.0f} us")
    assert last <= 1.25 * first, (first, last)
    # The state the policy saw never held more than the window.
    assert max(policy.window_sizes) == HISTORY_WINDOW
    # The result keeps the last RESULT_STEPS steps; the trace has every one.
    assert len(result.steps) == RESULT_STEPS
    assert [s.index for s in result.steps] == list(range(STEPS - RESULT_STEPS, STEPS))
    assert sum(1 for _ in load_run(result.trace_path).iter_steps()) == STEPS


def test_memory_of_a_5000_step_run_is_flat(tmp_path: Path) -> None:
    policy = Counting(STEPS, memory_at=(WINDOW, STEPS))
    tracemalloc.start()
    try:
        result = _run(tmp_path / "memory", policy)
    finally:
        tracemalloc.stop()
    assert result.stop_reason == "policy finished: counted"
    held_first = policy.memory[WINDOW]  # what the first 1,000 steps left allocated
    grown = policy.memory[STEPS] - held_first  # what the next 4,000 added
    print(f"held after {WINDOW} steps: {held_first / 1e3:.0f} kB; then {grown / 1e3:.0f} kB more")
    assert grown <= 0.25 * held_first, (held_first, grown)


def test_a_plan_step_names_a_step_older_than_the_window(tmp_path: Path) -> None:
    """``{step1}`` still reads step 1's answer when step 1 left the window long ago."""
    plan = [PlanStep(instruction=f"say {i}") for i in range(1, 8)]
    plan.append(PlanStep(instruction="repeat {step1} and {step7}"))
    orch = Orchestrator(
        [CallableExpert("echo", lambda messages: messages[-1].content.split("\n")[-1])],
        FixedPolicy(["echo"]),
        trace_dir=tmp_path,
        history_window=2,
    )
    result = orch.run(Task(plan=plan))
    assert result.steps[-1].result is not None
    assert result.steps[-1].result.output == "repeat say 1 and say 7"


async def test_a_checkpoint_holds_the_window_not_the_run(tmp_path: Path) -> None:
    """A checkpointed run's saved state keeps its last ``history_window`` steps, whatever its
    length: checkpoints do not grow with the run."""
    from expertgraph.orchestrator._checkpoint import open_saver, thread

    orch = Orchestrator(
        [CallableExpert("counter", counter)],
        Counting(40),
        trace_dir=tmp_path / "traces",
        checkpointer=tmp_path / "c.sqlite",
        history_window=4,
    )
    result = await orch.arun(Task(prompt="count", budget=Budget(max_steps=41)), run_id="long")
    assert result.stop_reason == "policy finished: counted" and len(result.steps) == 40
    async with open_saver(orch.checkpointer) as saver:  # type: ignore[arg-type]
        snapshot = await orch._graph.with_checkpointer(saver).aget_state(thread("long"))
    assert [s.index for s in snapshot.values["steps"]] == [36, 37, 38, 39]
    assert snapshot.values["step_index"] == 40 and not snapshot.values.get("candidates")


def test_history_window_is_a_config_field(tmp_path: Path) -> None:
    path = tmp_path / "expertgraph.yaml"
    path.write_text(
        f"home: {tmp_path}\nhistory_window: 3\nexperts:\n"
        "  - {name: e, kind: callable, callable: 'serve_experts:echo'}\n",
        encoding="utf-8",
    )
    assert Orchestrator.from_config(path)._graph.nodes.window == 3
    path.write_text(path.read_text().replace("history_window: 3", "history_window: 0"))
    with pytest.raises(ConfigError, match="history_window"):
        Orchestrator.from_config(path)
