"""Compact lines at decisions detail: each line keeps only what changed since the last record
of its kind, and every reader gets the records back whole."""

from __future__ import annotations

import json
from pathlib import Path

from expertgraph.core.types import (
    Decision,
    ExpertFailure,
    Generation,
    StepResult,
    Task,
    Usage,
)
from expertgraph.traces.schema import (
    BASE,
    AggregateRecord,
    CallRecord,
    RouteRecord,
    RunEnd,
    RunStart,
    StepEnd,
    ToolRecord,
    TraceRecord,
)
from expertgraph.traces.store import TraceWriter, iter_records, load_run


def _step(step: int) -> list[TraceRecord]:
    """One voted step; members change from step to step (an error, a new expert, a tool)."""
    answer = f"move {step % 3} from a to b"
    wrong = f"move {step % 3} from c to a"
    samples = 3 + step % 2
    calls: list[TraceRecord] = []
    if step % 5 == 0:
        calls.append(
            CallRecord(
                run_id="r",
                step=step,
                instruction="pick",
                role="router",
                generation=Generation(expert="router", text="a", cost=0.001),
            )
        )
    for sample in range(samples):
        failed = step % 4 == 1 and sample == 1
        calls.append(
            CallRecord(
                run_id="r",
                step=step,
                instruction=f"state {step}",
                generation=Generation(
                    expert="a" if step % 7 else "b",
                    text="" if failed else f"I say {wrong if sample == 2 else answer}",
                    finish_reason=None if failed else "stop",
                    input_tokens=30 + step % 3,
                    output_tokens=4,
                    cost=0.0004,
                    latency_s=0.000123456 * (sample + 1),
                    sample=sample,
                    error=ExpertFailure(type="timeout", message="slow") if failed else None,
                    params={"temperature": 0.0 if sample == 0 else 0.7},
                ),
            )
        )
    expert = "a" if step % 7 else "b"
    keys = [f"{expert}#{i}" for i in range(samples) if i != 2 and not (step % 4 == 1 and i == 1)]
    return [
        RouteRecord(
            run_id="r",
            step=step,
            decision=Decision(
                instruction=f"state {step}",
                experts=[expert],
                scores={"a": 0.7, "b": 0.2 + step % 2},
                rationale="cheapest",
                policy="p",
            ),
        ),
        *calls,
        AggregateRecord(
            run_id="r",
            step=step,
            result=StepResult(
                aggregator="ahead-by-k",
                text=f"I say {answer}",
                answer=answer,
                votes={answer: float(len(keys)), wrong: 1.0},
                supporters={answer: keys, wrong: [f"{expert}#2"]},
                winner=keys,
                confidence=0.5 + step % 2 / 4,
                meta={"k": 2, "requests": ["drawing 2 more"] * (1 + step % 2)},
            ),
        ),
        StepEnd(
            run_id="r",
            step=step,
            instruction=f"state {step}",
            answer=answer if step % 6 else None,
            usage=Usage(input_tokens=90, output_tokens=12, cost=0.0012, calls=samples),
        ),
        *(
            [ToolRecord(run_id="r", step=step, call_id=f"c{step}", name="look", result=f"r{step}")]
            if step % 3 == 0
            else []
        ),
    ]


def _start() -> RunStart:
    return RunStart(run_id="r", task=Task(prompt="p"), experts=[], policy="p", aggregator="m")


def _end(steps: int) -> RunEnd:
    return RunEnd(
        run_id="r",
        answer="a long final answer " * 3,
        stop_reason="done",
        usage=Usage(calls=steps),
        steps=steps,
        latency_s=1.5,
    )


def _expected(record: TraceRecord) -> dict:
    """What decisions detail keeps of a record, dumped (the lossy parts made comparable)."""
    data = record.model_dump(mode="json", exclude={"ts"})
    if isinstance(record, CallRecord):
        generation = data["generation"]
        generation["latency_s"] = round(generation["latency_s"], 6)
        if record.role == "candidate":  # the answer it voted for (a router's reply stays)
            generation["text"] = generation["text"].removeprefix("I say ")
    if isinstance(record, AggregateRecord):
        if record.result.answer is not None:  # else the text is the step's result
            data["result"]["text"] = ""
        if "requests" in record.result.meta:
            data["result"]["meta"]["requests"] = [""] * len(record.result.meta["requests"])
    return data


def _read(path: Path) -> list[dict]:
    return [r.model_dump(mode="json", exclude={"ts"}) for r in iter_records(path)]


def _same_times(path: Path, written: list[TraceRecord]) -> bool:
    # A compact line keeps its time to the microsecond.
    read = [r.ts for r in iter_records(path)]
    return len(read) == len(written) and all(
        abs(a - b.ts) < 2e-6 for a, b in zip(read, written, strict=True)
    )


def _write(writer: TraceWriter, records: list[TraceRecord]) -> list[TraceRecord]:
    return [writer.write(r) for r in records]


def test_compact_lines_read_back_whole(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    with TraceWriter(path, detail="decisions") as writer:
        written = _write(writer, [_start()])
        for step in range(40):
            written += _write(writer, _step(step))
        written += _write(writer, [_end(40)])
    assert _read(path) == [_expected(r) for r in written]
    assert _same_times(path, written)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    # Only the run's first line names the run; most others are a few changed members.
    assert sum("run_id" in line for line in lines) == 1  # its run_start
    assert sum(BASE in line for line in lines) > 0.9 * len(lines)
    assert path.stat().st_size / 40 < 1_600  # 10 records a step
    # The run's end is found from the file's tail, and the steps rebuild.
    trace = load_run(path)
    assert trace.end is not None and trace.end.answer == "a long final answer " * 3
    steps = trace.steps()
    assert [s.result.answer for s in steps if s.result] == [
        f"move {i % 3} from a to b" for i in range(40)
    ]
    assert steps[1].generations[1].error is not None and steps[2].generations[1].error is None


def test_a_long_text_stored_once_leaves_the_next_lines_base_whole(tmp_path: Path) -> None:
    """A reply repeated in a step is written once; the base the next line is compared with
    keeps the text, so a later empty reply reads back empty, not as the base's text."""
    long = "the answer, stated at some length: " * 3
    path = tmp_path / "r.jsonl"
    with TraceWriter(path, detail="decisions") as writer:
        written = _write(writer, [_start()])
        # Step 1's empty answer equals what a shared base would have been blanked to.
        for step, text in enumerate([long, "", "", long]):
            for record in _step(step):
                if isinstance(record, CallRecord) and record.role == "candidate":
                    record.generation.text = "I say " + text if text else ""
                    record.generation.error = None
                if isinstance(record, AggregateRecord):
                    record.result.answer = None if step == 2 else text
                    record.result.votes = {text: 2.0} if text else {}
                    keys = [f"{'a' if step % 7 else 'b'}#{i}" for i in range(3 + step % 2)]
                    record.result.supporters = {text: keys} if text else {}
                    record.result.winner = keys if text else []
                    record.result.meta = {}
                written.append(writer.write(record))
    assert '"refs"' in path.read_text()
    read = _read(path)
    for got, want in zip(read, written, strict=True):
        want_data = _expected(want)
        if isinstance(want, CallRecord) and want.role == "candidate":
            # decisions detail: a candidate keeps the answer it voted for (none: empty).
            answer = want.generation.text.removeprefix("I say ")
            want_data["generation"]["text"] = answer if answer else ""
        assert got == want_data


def test_a_second_writer_after_a_crash_never_leans_on_the_first(tmp_path: Path) -> None:
    """A resumed run appends to the file with a new writer: its lines must not take a base
    the reader holds from the crashed writer's lines (nor the crashed step's route)."""
    path = tmp_path / "r.jsonl"
    first = TraceWriter(path, detail="decisions")
    written = _write(first, [_start()])
    for step in range(3):
        written += _write(first, _step(step))
    in_flight = _step(3)
    written += _write(first, in_flight[:1])  # the route of step 3 is written ...
    first.flush()
    del first  # ... and the process dies inside the step (its finaliser writes what it holds)
    second = TraceWriter(path, detail="decisions")
    for step in range(3, 6):
        records = _step(step)
        written += _write(second, records[1:] if step == 3 else records)
    written += _write(second, [_end(6)])
    second.close()
    assert [r["seq"] for r in _read(path)] == list(range(len(written)))
    assert _read(path) == [_expected(r) for r in written]


def test_a_long_compact_run_ends_from_its_tail(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    with TraceWriter(path, detail="decisions") as writer:
        _write(writer, [_start()])
        for step in range(800):
            _write(writer, _step(step))
        _write(writer, [_end(800)])
    trace = load_run(path)
    assert trace.start.run_id == "r"

    def read_forwards() -> None:
        raise AssertionError("the end was not found from the tail")

    # The tail's first lines lean on records before it; the reader skips them for the end.
    trace.iter_records = read_forwards  # type: ignore[method-assign]
    end = trace.end
    assert end is not None and end.steps == 800 and end.answer == "a long final answer " * 3
    assert load_run(path).final_step() == 799
