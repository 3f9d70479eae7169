"""Buffered trace writes: a step reaches the file whole, a reply is stored once, and the
decisions detail keeps routes, votes and usage."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from expertgraph.agents import CallableExpert
from expertgraph.core.errors import ConfigError
from expertgraph.core.types import Decision, Generation, StepResult, Task, Usage
from expertgraph.orchestrator import Orchestrator, load_config
from expertgraph.policies import AllExperts, MajorityVote
from expertgraph.traces.analysis import summarize
from expertgraph.traces.attribution import attribute_run
from expertgraph.traces.schema import (
    REFS,
    AggregateRecord,
    CallRecord,
    RouteRecord,
    RunStart,
    StepEnd,
)
from expertgraph.traces.store import TraceWriter, iter_records, load_run

# A run of many steps in a child process; each expert call prints its step first, so the
# parent knows which steps had ended (every earlier one) when it kills the child.
_CHILD = textwrap.dedent(
    """
    import re, sys
    from expertgraph.agents import CallableExpert
    from expertgraph.core.types import Budget, PlanStep, Task
    from expertgraph.orchestrator import Orchestrator
    from expertgraph.policies import AllExperts, MajorityVote

    def expert(messages, loud=False):
        step = int(re.findall(r"item (\\d+)", messages[-1].content)[-1])
        if loud:  # one expert prints: two printing at once could interleave their lines
            print(step, flush=True)
        return f"Answer: {step}"

    # {stepN} names the previous result, so no step carries the whole history as context.
    plan = [PlanStep(instruction=f"item {i}" + (f" after {{step{i}}}" if i else ""))
            for i in range(5000)]
    loud = CallableExpert("e0", lambda messages: expert(messages, True))
    experts = [loud, CallableExpert("e1", expert)]
    orch = Orchestrator(experts, AllExperts(), MajorityVote(), trace_dir=sys.argv[1])
    orch.run(Task(plan=plan, budget=Budget(max_calls_per_step=4)), run_id="killed")
    """
)


def test_sigkill_mid_run_loses_no_complete_step_and_tears_no_record(tmp_path: Path) -> None:
    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    proc = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path / "traces")], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    reached = 0
    for line in proc.stdout:
        if not line.strip().isdigit():
            continue
        reached = max(reached, int(line))
        if reached >= 120:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    path = tmp_path / "traces" / "killed.jsonl"
    raw = path.read_bytes()
    assert raw.endswith(b"\n")  # whole steps are written in one write: no torn record
    records = list(iter_records(path))
    ended = {r.step for r in records if isinstance(r, StepEnd)}
    # Every step before the one in flight when the child died is in the file, whole.
    assert set(range(reached)) <= ended
    for step in ended:
        kinds = [r.type for r in records if getattr(r, "step", None) == step]
        assert kinds == ["route", "call", "call", "aggregate", "step_end"], (step, kinds)
    # And nothing of a step is there without its end: the in-flight step is lost whole.
    assert {getattr(r, "step", None) for r in records} - ended == {None}
    answers = [s.result.answer for s in load_run(path).steps()[:reached] if s.result]
    assert answers == [str(i) for i in range(reached)]


def _step_records(run_id: str, step: int, text: str) -> list:
    return [
        RouteRecord(run_id=run_id, step=step, decision=Decision(experts=["a", "b"])),
        CallRecord(
            run_id=run_id, step=step, instruction="i", generation=Generation(expert="a", text=text)
        ),
        CallRecord(
            run_id=run_id, step=step, instruction="i", generation=Generation(expert="b", text=text)
        ),
        AggregateRecord(
            run_id=run_id,
            step=step,
            result=StepResult(
                aggregator="majority",
                text=text,
                answer=text,
                votes={text: 2.0},
                supporters={text: ["a#0", "b#0"]},
                winner=["a#0", "b#0"],
            ),
        ),
        StepEnd(run_id=run_id, step=step, instruction="i", answer=text, usage=Usage(calls=2)),
    ]


def test_file_holds_whole_steps_only_and_flush_writes_the_step_in_flight(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    writer = TraceWriter(path)
    writer.write(
        RunStart(run_id="r", task=Task(prompt="p"), experts=[], policy="p", aggregator="a")
    )
    route, *rest = _step_records("r", 0, "x")
    writer.write(route)
    writer.write(rest[0])
    assert [r.type for r in iter_records(path)] == ["run_start"]  # the step is in flight
    for record in rest[1:]:
        writer.write(record)
    assert [r.type for r in iter_records(path)][-1] == "step_end"
    writer.write(_step_records("r", 1, "y")[0])
    writer.flush()
    assert [r.type for r in iter_records(path)][-1] == "route"
    writer.close()


def test_a_long_reply_is_stored_once_and_read_back_everywhere(tmp_path: Path) -> None:
    reply = "a long reply " * 20_000  # 260 kB
    path = tmp_path / "r.jsonl"
    with TraceWriter(path) as writer:
        writer.write(
            RunStart(run_id="r", task=Task(prompt="p"), experts=[], policy="p", aggregator="a")
        )
        for step in range(3):
            for record in _step_records("r", step, reply):
                writer.write(record)
    # 3 steps x (2 calls, aggregate text, answer, votes key, supporters key, step answer).
    assert path.stat().st_size < 1.2 * len(reply)
    assert sum(REFS in json.loads(line) for line in path.read_text().splitlines()) > 10
    steps = load_run(path).steps()
    for step in steps:
        assert [g.text for g in step.generations] == [reply, reply]
        assert step.result is not None and step.result.text == reply == step.result.answer
        assert step.result.votes == {reply: 2.0}
        assert step.result.supporters == {reply: ["a#0", "b#0"]}
    ends = [r for r in iter_records(path) if isinstance(r, StepEnd)]
    assert [e.answer for e in ends] == [reply] * 3


def test_orchestrator_run_with_a_long_reply_writes_it_once(tmp_path: Path) -> None:
    reply = "word " * 100_000
    experts = [CallableExpert(f"e{i}", lambda messages: reply) for i in range(2)]
    orch = Orchestrator(experts, AllExperts(), MajorityVote(), trace_dir=tmp_path)
    result = orch.run("q")
    size = Path(result.trace_path or "").stat().st_size
    assert size < 2.2 * len(reply)  # the reply, and the vote's answer (the reply, stripped)
    trace = load_run(result.trace_path or "")
    assert trace.result().answer == result.answer == reply.strip()
    assert [g.text for g in trace.steps()[0].generations] == [reply, reply]


def _votes_run(directory: Path, detail: str):
    def expert(answer: str):
        return lambda messages: f"I worked it out at length, so here it is. Answer: {answer}"

    experts = [
        CallableExpert("a", expert("7")),
        CallableExpert("b", expert("7")),
        CallableExpert("c", expert("9")),
    ]
    orch = Orchestrator(
        experts,
        AllExperts(),
        MajorityVote(),
        trace_dir=directory,
        trace_options={"detail": detail, "index": False},
    )
    result = orch.run(Task(plan=[{"instruction": "what is 3 + 4?"}, {"instruction": "and 2 + 5?"}]))
    return result, load_run(result.trace_path or "")


def test_decisions_detail_keeps_routes_votes_usage_and_attribution(tmp_path: Path) -> None:
    full_result, full = _votes_run(tmp_path / "full", "full")
    lean_result, lean = _votes_run(tmp_path / "lean", "decisions")
    assert lean.capture.detail == "decisions" and full.capture.detail == "full"
    assert lean_result.answer == full_result.answer
    assert lean.path.stat().st_size < full.path.stat().st_size
    for a, b in zip(full.steps(), lean.steps(), strict=True):
        assert a.decision.experts == b.decision.experts and a.decision.scores == b.decision.scores
        assert a.result is not None and b.result is not None
        assert (a.result.answer, a.result.votes, a.result.supporters) == (
            b.result.answer,
            b.result.votes,
            b.result.supporters,
        )
        assert a.usage == b.usage
        # A candidate keeps the answer it voted for, not its reply.
        assert [g.text for g in b.generations] == ["7", "7", "9"]
        assert "worked it out" in a.generations[0].text
    lean_values = attribute_run(lean, lambda name: MajorityVote()).run_shapley
    full_values = attribute_run(full, lambda name: MajorityVote()).run_shapley
    assert lean_values == full_values
    assert lean_values["c"] < lean_values["a"]
    # The summary reads the same calls, routes and spend from either layout.
    lean_summary = summarize(tmp_path / "lean").experts.set_index("expert")
    full_summary = summarize(tmp_path / "full").experts.set_index("expert")
    assert list(lean_summary["calls"]) == list(full_summary["calls"]) == [2, 2, 2]
    assert list(lean_summary["routed"]) == list(full_summary["routed"])


CONFIG = """\
experts:
  - name: calc
    kind: callable
    callable: expertgraph.agents.tools:calculator
policy:
  name: fixed
  experts: [calc]
trace:
  dir: traces
  detail: {detail}
"""


def test_config_trace_detail_reaches_the_trace_and_bad_values_name_the_line(
    tmp_path: Path,
) -> None:
    path = tmp_path / "cfg.yaml"
    path.write_text(CONFIG.format(detail="decisions"))
    result = Orchestrator.from_config(path, base_dir=tmp_path).run("What is 3 * 4?")
    assert result.answer == "12"
    assert load_run(result.trace_path or "").capture.detail == "decisions"
    path.write_text(CONFIG.format(detail="everything"))
    with pytest.raises(ConfigError, match=r"cfg.yaml:10: trace.detail"):
        load_config(path)
