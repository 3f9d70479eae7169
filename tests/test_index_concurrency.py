"""The trace index with several writing processes at once (``serve --workers``, Ray workers).

Real processes, a real SQLite file: each process opens a fresh index of the same directory
at the same moment and indexes runs that the others index too.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from expertgraph.agents import CallableExpert
from expertgraph.orchestrator import Orchestrator
from expertgraph.policies import AllExperts, MajorityVote
from expertgraph.traces.index import TraceIndex
from expertgraph.traces.schema import CallRecord
from expertgraph.traces.store import load_run

WORKERS = 4
RUNS = 40

_HAMMER = """
import sys, time
from pathlib import Path
from expertgraph.traces.index import TraceIndex

directory, go = Path(sys.argv[1]), Path(sys.argv[2])
me, workers = int(sys.argv[3]), int(sys.argv[4])
paths = sorted(p for p in directory.glob("*.jsonl"))
while not go.exists():
    time.sleep(0.001)
# every process opens (and sets up) the index at once; half of them keep one connection
# open (as a trace store's indexing thread does), half open one per write
index = TraceIndex(directory, keep_open=me % 2 == 0)
# Each run is indexed by two processes, one at a time or many in one transaction.
mine = [p for n, p in enumerate(paths) if n % workers in (me, (me + 1) % workers)]
for n, path in enumerate(mine):
    if n % 3 == 0:
        index.index_files(mine[n : n + 3])
    else:
        index.index_file(path)
    if n % 7 == 0:
        index.sync()
index.sync()
print(len(index.run_ids()))
"""


def _runs(directory: Path, n: int) -> list[str]:
    experts = [CallableExpert(name, lambda t: "4") for name in ("a", "b", "c")]
    orch = Orchestrator(
        experts,
        AllExperts(),
        MajorityVote(),
        trace_dir=directory,
        trace_options={"index": False},
    )
    return [orch.run(f"What is 2 + {k % 3}?").run_id for k in range(n)]


def test_processes_index_one_directory_at_once_and_every_run_is_there_once(
    tmp_path: Path,
) -> None:
    traces = tmp_path / "traces"
    run_ids = _runs(traces, RUNS)
    assert not (traces / "index.sqlite").exists()
    script = tmp_path / "hammer.py"
    script.write_text(_HAMMER)
    go = tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(traces), str(go), str(me), str(WORKERS)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        for me in range(WORKERS)
    ]
    time.sleep(1.0)  # let every interpreter import and wait at the gate
    go.write_text("")
    outputs = [p.communicate(timeout=300) for p in procs]
    for proc, (out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err
        assert out.split() == [str(RUNS)], err
    with sqlite3.connect(traces / "index.sqlite") as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        counts = dict(conn.execute("SELECT run_id, COUNT(*) FROM runs GROUP BY run_id"))
        calls = dict(conn.execute("SELECT run_id, COUNT(*) FROM calls GROUP BY run_id"))
        files = conn.execute("SELECT COUNT(*) FROM files").fetchone()[0]
    assert counts == {run_id: 1 for run_id in run_ids}
    for run_id in run_ids:
        trace = load_run(traces / f"{run_id}.jsonl")
        assert calls[run_id] == sum(isinstance(r, CallRecord) for r in trace.records)
    assert files == RUNS


def test_an_index_set_up_while_another_process_writes_keeps_its_rows(tmp_path: Path) -> None:
    # One process indexes; others open the same new index meanwhile: the set-up of a late
    # opener must never drop what the first one wrote.
    traces = tmp_path / "traces"
    run_ids = _runs(traces, 6)
    first = TraceIndex(traces)
    first.index_file(traces / f"{run_ids[0]}.jsonl")
    for _ in range(3):
        late = TraceIndex(traces)
        late.index_file(traces / f"{run_ids[1]}.jsonl")
    assert sorted(first.run_ids()) == sorted(run_ids[:2])


def test_a_kept_connection_sees_other_writers_and_is_dropped_after_a_failure(
    tmp_path: Path,
) -> None:
    runs = _runs(tmp_path, 3)
    paths = [tmp_path / f"{r}.jsonl" for r in runs]
    kept = TraceIndex(tmp_path, keep_open=True)
    kept.index_files(paths[:2])
    TraceIndex(tmp_path).index_file(paths[2])  # another writer, its own connection
    assert sorted(kept.run_ids()) == sorted(runs)
    held = kept._kept
    assert held is not None  # one connection for every write

    def failing(conn: sqlite3.Connection) -> None:  # a write that fails inside its transaction
        conn.execute("DELETE FROM runs")
        raise RuntimeError("injected")

    try:
        kept._write(failing)
    except RuntimeError:
        pass
    assert kept._kept is None  # not kept: it was in a failed transaction
    assert sorted(kept.run_ids()) == sorted(runs)  # and its delete was rolled back
    kept.index_file(paths[0])  # the next write opens a fresh connection and works
    assert sorted(kept.run_ids()) == sorted(runs)
    kept.close()
