"""Fast extra draws (issue 15): the aggregate node draws the samples an aggregator asks for
itself, concurrently, through the run's recorder (same records and budget), with no extra
graph superstep; a run killed while drawing redoes only the draws in flight."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

from expertgraph.agents import CallableExpert
from expertgraph.core import Budget, Task
from expertgraph.orchestrator import Orchestrator
from expertgraph.policies import AheadByK, FixedPolicy
from expertgraph.traces import CallRecord, load_run


class Voter:
    """Answers from a script, one answer per call; notes the most calls in flight at once."""

    def __init__(self, answers: list[str]) -> None:
        self.answers = answers
        self.calls = 0
        self.in_flight = 0
        self.most_in_flight = 0

    async def __call__(self, messages: list[Any]) -> str:
        answer = self.answers[min(self.calls, len(self.answers) - 1)]
        self.calls += 1
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        await asyncio.sleep(0)  # let the other draws of the round start
        self.in_flight -= 1
        return answer


def _orch(tmp_path: Path, voter: Voter, k: int = 3) -> Orchestrator:
    return Orchestrator(
        [CallableExpert("voter", voter)],
        FixedPolicy(["voter"]),
        AheadByK(k, max_draws=10),
        trace_dir=tmp_path,
    )


def test_extra_draws_cost_no_superstep_and_run_concurrently(tmp_path: Path) -> None:
    voter = Voter(["yes"])
    orch = _orch(tmp_path, voter)

    async def collect() -> list[Any]:
        return [event async for event in orch.astream("yes or no?")]

    events = asyncio.run(collect())
    # One step, three draws (one, then the two that can decide ahead-by-3): no call node.
    assert [e.node for e in events] == ["route", "aggregate", "route", "end"]
    result = events[-1].result
    assert result.answer == "yes" and result.usage.calls == 3
    step = result.steps[0]
    assert [g.sample for g in step.generations] == [0, 1, 2]
    assert step.result.extra_calls == 2 and len(step.result.meta["requests"]) == 1
    assert voter.most_in_flight == 2  # the round's two draws were in flight together
    calls = [r for r in load_run(result.trace_path).records if isinstance(r, CallRecord)]
    assert [(r.role, r.generation.sample) for r in calls] == [("candidate", i) for i in range(3)]


def test_extra_draws_keep_to_the_steps_call_limit(tmp_path: Path) -> None:
    voter = Voter(["yes", "no"])  # never ahead by 3: it draws until the limit
    orch = _orch(tmp_path, voter)
    result = orch.run(Task(prompt="yes or no?", budget=Budget(max_calls_per_step=4)))
    assert voter.calls == 4 and result.usage.calls == 4
    assert len(result.steps[0].generations) == 4


KILLED_RUN = """
import asyncio, os, signal, sys
from pathlib import Path
from expertgraph.agents import CallableExpert
from expertgraph.orchestrator import Orchestrator
from expertgraph.policies import AheadByK, FixedPolicy

tmp, mode = Path(sys.argv[1]), sys.argv[2]
log = tmp / f"calls-{mode}.txt"
ANSWERS = ["yes", "no", "yes", "yes"]  # then: the 5th call of the first run kills it

async def voter(messages):
    with log.open("a") as f:
        f.write("call\\n")
    n = len(log.read_text().splitlines())
    if mode == "first":
        if n > len(ANSWERS):
            os.kill(os.getpid(), signal.SIGKILL)
        return ANSWERS[n - 1]
    return "yes"

orch = Orchestrator(
    [CallableExpert("voter", voter)],
    FixedPolicy(["voter"]),
    AheadByK(4, max_draws=10),
    trace_dir=tmp / "traces",
    checkpointer=tmp / "c.sqlite",
)
if mode == "first":
    orch.run("yes or no?", run_id="drawn")
else:
    result = orch.run(run_id="drawn", resume=True)
    print(result.answer, [g.sample for g in result.steps[0].generations])
"""


def test_a_kill_while_drawing_redoes_only_the_draws_in_flight(tmp_path: Path) -> None:
    """Killed in its third round of draws (samples 1-3 answered, 4 in flight), the resumed
    run counts the saved draws from the trace and draws only samples 4 and 5 again."""
    script = tmp_path / "run.py"
    script.write_text(KILLED_RUN, encoding="utf-8")

    def run(mode: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, str(script), str(tmp_path), mode]
        return subprocess.run(command, capture_output=True, text=True, timeout=120)

    first = run("first")
    assert first.returncode == -9, first.stderr[-2000:]
    resumed = run("resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert resumed.stdout.split()[0] == "yes"
    assert resumed.stdout.strip().endswith("[0, 1, 2, 3, 4, 5]")
    # Samples 0-3 were answered before the kill: only 4 (in flight) and 5 are drawn again.
    assert len((tmp_path / "calls-resume.txt").read_text().splitlines()) == 2
    trace = load_run(tmp_path / "traces" / "drawn.jsonl")
    samples = [r.generation.sample for r in trace.records if isinstance(r, CallRecord)]
    assert sorted(samples) == [0, 1, 2, 3, 4, 5]
