"""Readers stream a trace: their memory does not grow with the run (checked with tracemalloc)."""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

from expertgraph.core.types import Decision, Generation, StepResult, Task, Usage
from expertgraph.policies import MajorityVote
from expertgraph.traces.attribution import attribute_run
from expertgraph.traces.schema import (
    AggregateRecord,
    CallRecord,
    RouteRecord,
    RunEnd,
    RunStart,
    StepEnd,
)
from expertgraph.traces.store import TraceWriter, iter_records, load_run

EXPERTS = ("a", "b", "c")


def _write_trace(path: Path, steps: int) -> None:
    with TraceWriter(path) as writer:
        writer.write(
            RunStart(run_id="r", task=Task(prompt="p"), experts=[], policy="p", aggregator="m")
        )
        for step in range(steps):
            texts = {
                "a": f"step {step}: the answer is {step}",
                "b": f"step {step}: the answer is {step}",
                "c": f"step {step}: the answer is {step + 1}",
            }
            writer.write(
                RouteRecord(
                    run_id="r",
                    step=step,
                    decision=Decision(experts=list(EXPERTS), scores=dict.fromkeys(EXPERTS, 1.0)),
                )
            )
            for name in EXPERTS:
                writer.write(
                    CallRecord(
                        run_id="r",
                        step=step,
                        instruction=f"question {step}",
                        generation=Generation(expert=name, text=texts[name], output_tokens=7),
                    )
                )
            answer = str(step)
            writer.write(
                AggregateRecord(
                    run_id="r",
                    step=step,
                    result=StepResult(
                        aggregator="majority",
                        text=texts["a"],
                        answer=answer,
                        votes={answer: 2.0, str(step + 1): 1.0},
                        supporters={answer: ["a#0", "b#0"], str(step + 1): ["c#0"]},
                        winner=["a#0", "b#0"],
                    ),
                )
            )
            writer.write(
                StepEnd(
                    run_id="r",
                    step=step,
                    instruction=f"question {step}",
                    answer=answer,
                    usage=Usage(output_tokens=21, calls=3),
                )
            )
        writer.write(
            RunEnd(
                run_id="r",
                answer=texts["a"],
                stop_reason="done",
                usage=Usage(calls=3 * steps),
                steps=steps,
                latency_s=1.0,
            )
        )


def _peak(read: Callable[[], Any]) -> int:
    tracemalloc.start()
    try:
        read()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _readers(path: Path) -> dict[str, Callable[[], Any]]:
    def records() -> None:
        for _ in iter_records(path):
            pass

    def steps() -> None:
        for _ in load_run(path).iter_steps():
            pass

    def end() -> None:
        assert load_run(path).end is not None

    def attribution() -> None:
        out = attribute_run(load_run(path), lambda name: MajorityVote(), keep_steps=False)
        assert out.attributed > 0

    return {"records": records, "steps": steps, "end": end, "attribution": attribution}


def test_streaming_readers_memory_does_not_grow_with_the_run(tmp_path: Path) -> None:
    small, large = tmp_path / "small.jsonl", tmp_path / "large.jsonl"
    _write_trace(small, 100)
    _write_trace(large, 2000)  # 20x the records
    assert large.stat().st_size > 15 * small.stat().st_size
    for name, read in _readers(small).items():
        small_peak = _peak(read)
        large_peak = _peak(_readers(large)[name])
        # Loading every record would cost 20x (megabytes); a stream costs the same at any
        # length (the end is read backwards, in 64 kB blocks, from large files).
        assert large_peak < 1.5 * small_peak + 256_000, (name, small_peak, large_peak)
    # The same readers agree with a full load.
    trace = load_run(large)
    steps = trace.steps()
    assert len(steps) == 2000 and steps[-1].result is not None
    assert steps[-1].result.answer == "1999" and [g.text for g in steps[7].generations] == [
        "step 7: the answer is 7",
        "step 7: the answer is 7",
        "step 7: the answer is 8",
    ]
    end = trace.end
    assert end is not None and end.answer == "step 1999: the answer is 1999"
    assert trace.final_step() == 1999
    values = attribute_run(trace, lambda name: MajorityVote(), keep_steps=False)
    kept = attribute_run(load_run(small), lambda name: MajorityVote())
    assert values.attributed == 2000 and not values.steps and len(kept.steps) == 100
    # c never agrees: in every step a and b make the answer, c adds nothing.
    per_step = {name: value / 100 for name, value in kept.run_shapley.items()}
    assert per_step["c"] < per_step["a"] == per_step["b"]
    assert values.run_shapley["a"] == 20 * kept.run_shapley["a"]
