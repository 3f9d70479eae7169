"""The trace index reads a run in one streamed pass: its memory does not grow with the run,
and its rows are the same figures a full load gives."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

from _trace_records import EXPERTS, end_record, start_record, step_records

from expertgraph.traces.index import TraceIndex
from expertgraph.traces.schema import (
    CallRecord,
)
from expertgraph.traces.store import TraceWriter, load_run


def _write_run(path: Path, steps: int, *, detail: str = "decisions", end: bool = True) -> None:
    """A run of ``steps`` voted steps; every 10th step also has a router call of its own."""
    with TraceWriter(path, detail=detail) as w:  # type: ignore[arg-type]
        w.write(start_record())
        for step in range(steps):
            for record in step_records(step, router_every=10):
                w.write(record)
        if end:
            w.write(end_record(steps))


def _index_peak(directory: Path) -> int:
    index = TraceIndex(directory)
    with index.connect():
        pass  # the schema, outside the measurement
    tracemalloc.start()
    try:
        index.index_file(directory / "r.jsonl")
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_indexing_a_long_run_keeps_memory_bounded(tmp_path: Path) -> None:
    small, large = tmp_path / "small", tmp_path / "large"
    small.mkdir()
    large.mkdir()
    _write_run(small / "r.jsonl", 2_000)
    _write_run(large / "r.jsonl", 40_000)  # 20x the steps
    small_peak, large_peak = _index_peak(small), _index_peak(large)
    # Loading the run costs 20x (hundreds of megabytes); a stream the same at any length.
    assert large_peak < 1.5 * small_peak + 512_000, (small_peak, large_peak)
    index = TraceIndex(large)
    (run,) = index.query("SELECT steps, calls, cost FROM runs")
    assert tuple(run) == (40_000, 120_000, 30_000.0)
    (counts,) = index.query(
        "SELECT (SELECT COUNT(*) FROM steps), (SELECT COUNT(*) FROM decisions),"
        " (SELECT COUNT(*) FROM calls), (SELECT SUM(in_winner) FROM calls)"
    )
    assert tuple(counts) == (40_000, 40_000, 124_000, 80_000)


def _reference_rows(path: Path) -> dict[str, list[tuple]]:
    """The rows a full load gives (the index before it streamed), for comparison."""
    trace = load_run(path)
    steps = trace.steps()
    decisions = {s.index: s.decision for s in steps}
    winners = {s.index: set(s.result.winner) if s.result else set() for s in steps}
    calls = []
    for r in trace.records:
        if not isinstance(r, CallRecord):
            continue
        g, candidate = r.generation, r.role == "candidate"
        decision = decisions.get(r.step) if candidate else None
        in_winner = candidate and f"{g.expert}#{g.sample}" in winners.get(r.step, set())
        calls.append(
            (r.seq, r.step, g.expert, r.role, g.cost, int(decision is not None), int(in_winner))
        )
    step_rows = [
        (s.index, s.instruction, s.result.comparable if s.result else None, len(s.generations))
        for s in steps
    ]
    return {"calls": sorted(calls), "steps": step_rows, "n_steps": [(len(steps),)]}


def test_index_rows_equal_a_full_load(tmp_path: Path) -> None:
    for detail, end in (("full", True), ("decisions", True), ("decisions", False)):
        directory = tmp_path / f"{detail}-{end}"
        directory.mkdir()
        _write_run(directory / "r.jsonl", 25, detail=detail, end=end)
        expected = _reference_rows(directory / "r.jsonl")
        index = TraceIndex(directory)
        index.sync()
        calls = index.query(
            "SELECT seq, step, expert, role, cost, routed, in_winner FROM calls ORDER BY seq"
        )
        assert [tuple(r) for r in calls] == expected["calls"]
        steps = index.query("SELECT step, instruction, answer, candidates FROM steps ORDER BY step")
        assert [tuple(r) for r in steps] == expected["steps"]
        (run,) = index.query("SELECT steps, calls, cost, complete, stop_reason FROM runs")
        assert tuple(run)[:4] == (25, 75, 0.75 * 25, int(end))
        assert (run["stop_reason"] == "done") is end
        (decision,) = index.query("SELECT experts, scores FROM decisions WHERE step = 3")
        assert json.loads(decision["experts"]) == list(EXPERTS)
        assert json.loads(decision["scores"]) == {"a": 0.5, "b": 0.3, "c": 0.2}
