"""Trace records of synthetic voted runs, for the tests of the index and its follower."""

from __future__ import annotations

from collections.abc import Iterator

from expertgraph.core.types import Decision, Generation, StepResult, Task, Usage
from expertgraph.traces.schema import (
    AggregateRecord,
    CallRecord,
    RouteRecord,
    RunEnd,
    RunStart,
    StepEnd,
    TraceRecord,
)

EXPERTS = ("a", "b", "c")


def start_record() -> RunStart:
    return RunStart(run_id="r", task=Task(prompt="p"), experts=[], policy="p", aggregator="m")


def step_records(step: int, *, router_every: int = 0) -> Iterator[TraceRecord]:
    """One voted step: a route, three candidate calls (c is wrong, a retried), a vote; with
    ``router_every``, every such step also has a router call of its own."""
    answer, wrong = str(step), str(step + 1)
    yield RouteRecord(
        run_id="r",
        step=step,
        decision=Decision(
            instruction=f"question {step}",
            experts=list(EXPERTS),
            scores={"a": 0.5, "b": 0.3, "c": 0.2},
            policy="p",
        ),
    )
    if router_every and step % router_every == 0:
        yield CallRecord(
            run_id="r",
            step=step,
            instruction="route it",
            role="router",
            generation=Generation(expert="a", text="a", cost=0.5, input_tokens=3),
        )
    for name in EXPERTS:
        yield CallRecord(
            run_id="r",
            step=step,
            instruction=f"question {step}",
            generation=Generation(
                expert=name,
                text=f"The answer is {wrong if name == 'c' else answer}",
                output_tokens=4,
                cost=0.25,
                latency_s=0.01 * (1 + step % 7),
                attempts=2 if name == "a" and step % 5 == 0 else 1,
            ),
        )
    yield AggregateRecord(
        run_id="r",
        step=step,
        result=StepResult(
            aggregator="majority",
            text=f"The answer is {answer}",
            answer=answer,
            votes={answer: 2.0, wrong: 1.0},
            supporters={answer: ["a#0", "b#0"], wrong: ["c#0"]},
            winner=["a#0", "b#0"],
            confidence=2 / 3,
        ),
    )
    yield StepEnd(
        run_id="r",
        step=step,
        instruction=f"question {step}",
        answer=answer,
        usage=Usage(output_tokens=12, cost=0.75, calls=3),
    )


def end_record(steps: int) -> RunEnd:
    return RunEnd(
        run_id="r",
        answer=str(steps - 1),
        stop_reason="done",
        usage=Usage(output_tokens=12 * steps, cost=0.75 * steps, calls=3 * steps),
        steps=steps,
        latency_s=1.0,
    )
