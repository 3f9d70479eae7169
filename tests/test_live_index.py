"""A long run's trace is indexed while it is written, by a follower process: the index shows
the run as it goes, is complete when it ends, and equals an index built from the file; a
killed run's follower indexes what the file holds."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas.testing as pdt
from _trace_records import end_record, start_record, step_records

from expertgraph.traces._follow import LIVE
from expertgraph.traces.analysis import summarize
from expertgraph.traces.index import TraceIndex
from expertgraph.traces.store import TraceStore

TESTS = Path(__file__).resolve().parent


def _wait(condition, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _count(directory: Path, table: str) -> int:
    return TraceIndex(directory).query(f"SELECT COUNT(*) AS n FROM {table} WHERE run_id = 'r'")[0][
        "n"
    ]


def _files_row(directory: Path) -> tuple[str, int] | None:
    rows = TraceIndex(directory).query("SELECT kind, size FROM files WHERE name = 'r.jsonl'")
    return (rows[0]["kind"], rows[0]["size"]) if rows else None


def _same_as_cold(directory: Path, tmp_path: Path) -> None:
    """The summary of ``directory`` equals the one of a copy of its trace indexed cold."""
    cold = tmp_path / "cold"
    cold.mkdir()
    shutil.copy(directory / "r.jsonl", cold / "r.jsonl")
    live, built = summarize(directory), summarize(cold)
    pdt.assert_frame_equal(live.experts, built.experts)
    pdt.assert_frame_equal(live.policies, built.policies)
    pdt.assert_frame_equal(live.runs, built.runs)


def test_a_long_run_is_indexed_as_it_is_written(tmp_path: Path) -> None:
    directory = tmp_path / "traces"
    store = TraceStore(directory, detail="decisions", live_index_after=50)
    writer = store.writer("r")
    writer.write(start_record())
    for step in range(40):
        for record in step_records(step):
            writer.write(record)
    assert set(store._followers) == {writer.path}  # past 50 records: a follower started
    # Its rows arrive while the run goes on, and a reader's sync leaves the file to it.
    _wait(lambda: _count(directory, "steps") > 0)
    assert _files_row(directory) is not None and _files_row(directory)[0] == LIVE  # type: ignore[index]
    assert TraceIndex(directory).sync() == 0
    assert _count(directory, "runs") == 0  # not ended yet
    for step in range(40, 120):
        for record in step_records(step):
            writer.write(record)
    writer.write(end_record(120))
    writer.close()
    store.flush(timeout=30)
    assert store._followers == {}
    kind, size = _files_row(directory)  # type: ignore[misc]
    assert (kind, size) == ("trace", (directory / "r.jsonl").stat().st_size)
    assert _count(directory, "steps") == 120 and _count(directory, "calls") == 360
    assert TraceIndex(directory).sync() == 0  # complete: nothing left to read again
    _same_as_cold(directory, tmp_path)


_KILLED_WRITER = """
import sys, time
sys.path.insert(0, {tests!r})
from _trace_records import start_record, step_records
from expertgraph.traces.store import TraceStore
store = TraceStore({directory!r}, detail="decisions", live_index_after=50)
writer = store.writer("r")
writer.write(start_record())
for step in range({steps}):
    for record in step_records(step):
        writer.write(record)
print("written", flush=True)
time.sleep(600)
"""


def test_the_follower_of_a_killed_run_indexes_what_its_file_holds(tmp_path: Path) -> None:
    directory = tmp_path / "traces"
    code = _KILLED_WRITER.format(tests=str(TESTS), directory=str(directory), steps=60)
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "written"
    _wait(lambda: (directory / "index.sqlite").exists() and _count(directory, "steps") == 60)
    assert _files_row(directory)[0] == LIVE  # type: ignore[index]
    child.send_signal(signal.SIGKILL)
    child.wait()
    # Its writer's process gone, the follower reads the file to its end and hands it over.
    _wait(lambda: _files_row(directory) is not None and _files_row(directory)[0] == "trace")  # type: ignore[index]
    (run,) = TraceIndex(directory).query("SELECT complete, steps, stop_reason FROM runs")
    assert (run["complete"], run["steps"]) == (0, 60)
    assert run["stop_reason"].startswith("incomplete")
    _same_as_cold(directory, tmp_path)


def test_a_live_row_whose_follower_stopped_is_read_again_by_sync(tmp_path: Path) -> None:
    directory = tmp_path / "traces"
    store = TraceStore(directory, detail="decisions", live_index_after=None)
    with store.writer("r") as writer:
        writer.write(start_record())
        for step in range(5):
            for record in step_records(step):
                writer.write(record)
        writer.write(end_record(5))
    index = TraceIndex(directory)
    index.sync()
    stale = time.time_ns() - 120 * 10**9  # two minutes without a heartbeat
    index._write(
        lambda conn: conn.execute(
            "UPDATE files SET kind = ?, size = 1, mtime_ns = ? WHERE name = 'r.jsonl'",
            (LIVE, stale),
        )
    )
    assert index.sync() == 1
    assert _files_row(directory)[0] == "trace"  # type: ignore[index]
    assert _count(directory, "steps") == 5
