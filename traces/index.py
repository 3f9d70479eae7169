"""A SQLite index of a trace directory: queries across runs without reading every file.

The JSONL files stay the record; ``<dir>/index.sqlite`` is derived from them. The store
indexes each run as it ends; :meth:`TraceIndex.sync` catches up with files that changed
since (found by size and mtime, so only those are read), and :meth:`TraceIndex.rebuild`
recreates it from scratch. SQLite is the stdlib's and needs no server or extra dependency.

Several processes may write one index at once (``serve --workers``, batch workers): the
journal is WAL (readers never block the writer), each write is one ``BEGIN IMMEDIATE``
transaction that waits for the lock (busy timeout) and is retried whole if SQLite still
reports the database busy, and setting the index up is itself one transaction, so a process
opening a new index never drops what another one just wrote.
"""

from __future__ import annotations

import json
import random
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from expertgraph.core.types import Decision, Step, Usage, candidate_key
from expertgraph.traces._follow import LIVE, POLL_S, heartbeat_fresh
from expertgraph.traces.schema import CallRecord, RouteRecord, RunEnd, TraceRecord
from expertgraph.traces.store import (
    DEFAULT_TRACE_DIR,
    LABELS_SUFFIX,
    RunTrace,
    is_trace_file,
    load_run,
    run_ended,
)

INDEX_NAME = "index.sqlite"
INDEX_VERSION = 2
"""2: calls carry their role (candidate, router, fuser, judge)."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS files (
    name TEXT PRIMARY KEY, kind TEXT, run_id TEXT, size INTEGER, mtime_ns INTEGER
);
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY, file TEXT, started REAL, ended REAL, task_id TEXT, task TEXT,
    prompt TEXT, policy TEXT, aggregator TEXT, answer TEXT, stop_reason TEXT, steps INTEGER,
    input_tokens INTEGER, output_tokens INTEGER, cost REAL, calls INTEGER, latency_s REAL,
    complete INTEGER, content INTEGER, version INTEGER
);
CREATE TABLE IF NOT EXISTS decisions (
    run_id TEXT, seq INTEGER, step INTEGER, policy TEXT, action TEXT, mode TEXT,
    experts TEXT, scores TEXT, n_experts INTEGER, rationale TEXT, ts REAL,
    PRIMARY KEY (run_id, seq)
);
CREATE TABLE IF NOT EXISTS steps (
    run_id TEXT, step INTEGER, instruction TEXT, policy TEXT, aggregator TEXT, answer TEXT,
    winner TEXT, confidence REAL, margin REAL, candidates INTEGER, input_tokens INTEGER,
    output_tokens INTEGER, cost REAL, PRIMARY KEY (run_id, step)
);
CREATE TABLE IF NOT EXISTS calls (
    run_id TEXT, seq INTEGER, step INTEGER, expert TEXT, role TEXT, sample INTEGER, ok INTEGER,
    error_type TEXT, error TEXT, attempts INTEGER, input_tokens INTEGER, output_tokens INTEGER,
    cost REAL, latency_s REAL, model TEXT, routed INTEGER, router_score REAL, in_winner INTEGER,
    ts REAL, PRIMARY KEY (run_id, seq)
);
CREATE TABLE IF NOT EXISTS labels (
    run_id TEXT, n INTEGER, step INTEGER, score REAL, expected TEXT, note TEXT, source TEXT,
    ts REAL, PRIMARY KEY (run_id, n)
);
CREATE INDEX IF NOT EXISTS calls_expert ON calls (expert);
CREATE INDEX IF NOT EXISTS decisions_policy ON decisions (policy);
"""
_RUN_TABLES = ("runs", "decisions", "steps", "calls")
_ALL_TABLES = ("meta", "files", *_RUN_TABLES, "labels")
_BUSY_TIMEOUT_S = 60.0
_RETRIES = 5
_T = TypeVar("_T")


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    text = str(exc).lower()
    return "locked" in text or "busy" in text


def _retrying(work: Callable[[], _T]) -> _T:
    """``work()``, again after a short random pause while SQLite reports the database busy.

    The busy timeout covers waiting for another writer's lock; this covers the cases where
    SQLite gives up without waiting (a deferred transaction that could not upgrade, WAL
    set-up racing another opener).
    """
    for attempt in range(_RETRIES):
        try:
            return work()
        except sqlite3.OperationalError as exc:
            if not _is_busy(exc) or attempt == _RETRIES - 1:
                raise
            time.sleep(random.uniform(0.01, 0.05) * 2**attempt)
    raise AssertionError("unreachable")  # pragma: no cover


def _drop_if_outdated(conn: sqlite3.Connection) -> None:
    """An index of another version is dropped: the next sync rebuilds it from the files.

    Called inside the set-up transaction, so "meta without a version" is never another
    process's set-up half done.
    """
    has_meta = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type='table' AND name='meta'"
    ).fetchone()
    if not has_meta:
        return
    row = conn.execute("SELECT value FROM meta WHERE key='version'").fetchone()
    if row is not None and row[0] == str(INDEX_VERSION):
        return
    for table in _ALL_TABLES:
        conn.execute(f"DROP TABLE IF EXISTS {table}")


class TraceIndex:
    """The index of one trace directory (``<dir>/index.sqlite``)."""

    def __init__(
        self, directory: str | Path = DEFAULT_TRACE_DIR, *, keep_open: bool = False
    ) -> None:
        """``keep_open``: hold one connection for every write instead of one per write. A
        trace store's indexing thread does: opening SQLite and checkpointing its WAL on the
        last close cost milliseconds, most of what indexing a short run costs. The kept
        connection belongs to the first thread that uses it."""
        self.directory = Path(directory)
        self.path = self.directory / INDEX_NAME
        self._ready = False
        self._keep_open = keep_open
        self._kept: sqlite3.Connection | None = None

    # ---- connection ----------------------------------------------------------------------

    @contextmanager
    def connect(self) -> Iterator[sqlite3.Connection]:
        """A connection with the schema in place; commits on success."""
        kept = self._kept is not None
        conn = self._kept if self._kept is not None else self._open()
        ok = False
        try:
            if not self._ready:
                _retrying(lambda: self._set_up(conn))
                self._ready = True
            yield conn
            conn.commit()
            ok = True
        except BaseException:
            conn.rollback()
            raise
        finally:
            if ok and self._keep_open:
                self._kept = conn
            else:  # a connection that failed is not kept: it may be in an unknown state
                if kept:
                    self._kept = None
                conn.close()

    def _open(self) -> sqlite3.Connection:
        self.directory.mkdir(parents=True, exist_ok=True)
        # check_same_thread off: a kept connection is used by one thread at a time (the
        # store's single indexing thread), never concurrently.
        conn = sqlite3.connect(self.path, timeout=_BUSY_TIMEOUT_S, check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout={int(_BUSY_TIMEOUT_S * 1000)}")
        # The JSONL files are the record and the index is rebuilt from them, so commits
        # need not wait for the disk: WAL with synchronous=NORMAL stays consistent.
        conn.execute("PRAGMA synchronous=NORMAL")
        return conn

    def close(self) -> None:
        """Close the kept connection, if any."""
        kept, self._kept = self._kept, None
        if kept is not None:
            kept.close()

    @staticmethod
    def _set_up(conn: sqlite3.Connection) -> None:
        conn.execute("PRAGMA journal_mode=WAL")  # persistent: the first opener switches it
        conn.execute("BEGIN IMMEDIATE")  # one opener at a time checks and creates the schema
        try:
            _drop_if_outdated(conn)
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute("INSERT OR IGNORE INTO meta VALUES ('version', ?)", (str(INDEX_VERSION),))
            conn.commit()
        except BaseException:
            conn.rollback()
            raise

    def _write(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        """``work(conn)`` in one ``BEGIN IMMEDIATE`` transaction, retried whole while busy."""

        def attempt() -> _T:
            with self.connect() as conn:
                conn.execute("BEGIN IMMEDIATE")  # take the write lock now, waiting for it
                return work(conn)

        return _retrying(attempt)

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        """Run a read query against the index (rows support access by column name)."""
        with self.connect() as conn:
            cursor = conn.cursor()  # the row factory on the cursor: a kept connection keeps its own
            cursor.row_factory = sqlite3.Row
            return list(cursor.execute(sql, params))

    # ---- writing -------------------------------------------------------------------------

    def index_file(self, path: str | Path) -> str:
        """(Re)index one run's trace file; returns its run id."""
        return self.index_files([path])[0]

    def index_files(self, paths: Iterable[str | Path]) -> list[str]:
        """(Re)index run trace files in one transaction; returns their run ids.

        One transaction for many runs: its fixed cost (connection, lock, commit) is most of
        what indexing a short run costs.
        """
        loaded = []
        for path in map(Path, paths):
            stat = path.stat()
            trace = load_run(path)
            loaded.append((path, stat, trace, _prefetch(trace)))

        def write(conn: sqlite3.Connection) -> None:
            for path, stat, trace, rows in loaded:
                self._delete_run(conn, trace.run_id)
                # A long run is read again here, streamed (and again if SQLite was busy).
                for table, batch in _rows(trace) if rows is None else rows:
                    conn.executemany(_INSERT[table], batch)
                conn.execute(
                    "INSERT OR REPLACE INTO files VALUES (?, 'trace', ?, ?, ?)",
                    (path.name, trace.run_id, stat.st_size, stat.st_mtime_ns),
                )

        self._write(write)
        return [trace.run_id for _, _, trace, _ in loaded]

    def index_labels(self, run_id: str) -> int:
        """(Re)index the labels of one run; returns how many it has."""
        from expertgraph.traces.labels import LabelStore

        store = LabelStore(self.directory)
        path = store.path_for(run_id)
        labels = store.load(run_id)

        def write(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM labels WHERE run_id = ?", (run_id,))
            for n, label in enumerate(labels):
                conn.execute(
                    "INSERT INTO labels VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        run_id,
                        n,
                        label.step,
                        label.score,
                        label.expected,
                        label.note,
                        label.source,
                        label.ts,
                    ),
                )
            if path.exists():
                stat = path.stat()
                conn.execute(
                    "INSERT OR REPLACE INTO files VALUES (?, 'labels', ?, ?, ?)",
                    (path.name, run_id, stat.st_size, stat.st_mtime_ns),
                )

        self._write(write)
        return len(labels)

    @staticmethod
    def _delete_run(conn: sqlite3.Connection, run_id: str) -> None:
        for table in _RUN_TABLES:
            conn.execute(f"DELETE FROM {table} WHERE run_id = ?", (run_id,))

    def sync(self) -> int:
        """Index files that are new or changed since they were indexed; forget deleted ones.

        Only files whose size or mtime differ are read. Returns how many were (re)indexed.
        """
        if not self.directory.is_dir():
            return 0
        with self.connect() as conn:
            known = {
                name: (kind, run_id, size, mtime)
                for name, kind, run_id, size, mtime in conn.execute("SELECT * FROM files")
            }
        present: set[str] = set()
        changed = 0
        for path in sorted(self.directory.glob("*.jsonl")):
            entry = known.get(path.name)
            if entry is not None and entry[0] == LIVE:
                entry = self._await_follower(path, entry)
                if entry is None:  # a follower indexes this run as it is written
                    present.add(path.name)
                    continue
            stat = path.stat()
            if entry is not None and (entry[2], entry[3]) == (stat.st_size, stat.st_mtime_ns):
                present.add(path.name)
                continue
            if path.name.endswith(LABELS_SUFFIX):
                self.index_labels(path.name[: -len(LABELS_SUFFIX)])
            elif is_trace_file(path):
                self.index_file(path)
            else:  # not a run (an exported dataset, an empty file)
                continue
            present.add(path.name)
            changed += 1
        gone = [(name, entry) for name, entry in known.items() if name not in present]

        def forget(conn: sqlite3.Connection) -> None:
            for name, (kind, run_id, _, _) in gone:
                if kind == "labels":
                    conn.execute("DELETE FROM labels WHERE run_id = ?", (run_id,))
                else:
                    self._delete_run(conn, run_id)
                conn.execute("DELETE FROM files WHERE name = ?", (name,))

        if gone:
            self._write(forget)
        return changed

    def _await_follower(
        self, path: Path, entry: tuple[str, str, int, int]
    ) -> tuple[str, str, int, int] | None:
        """The ``files`` entry of a run a follower indexes live (:mod:`._follow`): None while
        the run is still written (the follower keeps up with it); once the run has ended, the
        entry the follower leaves when it is done. A follower whose heartbeat stopped leaves
        the file to this sync."""
        while entry[0] == LIVE and heartbeat_fresh(entry[3]):
            if not run_ended(path):
                return None
            time.sleep(POLL_S)
            with self.connect() as conn:
                row = conn.execute(
                    "SELECT kind, run_id, size, mtime_ns FROM files WHERE name = ?", (path.name,)
                ).fetchone()
            if row is None:  # the follower gave the file back
                return ("trace", "", -1, -1)
            entry = tuple(row)  # type: ignore[assignment]
        return entry

    def rebuild(self) -> int:
        """Drop the index and recreate it from the JSONL files; returns files indexed."""

        def clear(conn: sqlite3.Connection) -> None:
            for table in (*_RUN_TABLES, "labels", "files"):
                conn.execute(f"DELETE FROM {table}")

        self._write(clear)
        return self.sync()

    # ---- reading -------------------------------------------------------------------------

    def run_ids(self) -> list[str]:
        return [r["run_id"] for r in self.query("SELECT run_id FROM runs ORDER BY started, run_id")]

    def frame(self, table: str) -> Any:
        """One table of the index as a pandas DataFrame."""
        import pandas as pd

        if table not in (*_RUN_TABLES, "labels"):
            raise ValueError(f"unknown index table {table!r}")
        with self.connect() as conn:
            return pd.read_sql_query(f"SELECT * FROM {table}", conn)


# Columns of each run table, in insert order.
_COLUMNS: dict[str, tuple[str, ...]] = {
    "runs": (
        "run_id", "file", "started", "ended", "task_id", "task", "prompt", "policy",
        "aggregator", "answer", "stop_reason", "steps", "input_tokens", "output_tokens", "cost",
        "calls", "latency_s", "complete", "content", "version",
    ),
    "decisions": (
        "run_id", "seq", "step", "policy", "action", "mode", "experts", "scores", "n_experts",
        "rationale", "ts",
    ),
    "steps": (
        "run_id", "step", "instruction", "policy", "aggregator", "answer", "winner",
        "confidence", "margin", "candidates", "input_tokens", "output_tokens", "cost",
    ),
    "calls": (
        "run_id", "seq", "step", "expert", "role", "sample", "ok", "error_type", "error",
        "attempts", "input_tokens", "output_tokens", "cost", "latency_s", "model", "routed",
        "router_score", "in_winner", "ts",
    ),
}  # fmt: skip
_INSERT = {
    table: f"INSERT OR REPLACE INTO {table} ({', '.join(cols)}) VALUES "
    f"({', '.join('?' for _ in cols)})"
    for table, cols in _COLUMNS.items()
}
# Rows of one table sent to SQLite at once: memory holds at most this many per table.
_BATCH_ROWS = 2000
# A run with at most this many rows is read before the write lock is taken (short runs hold
# the lock only for their inserts); a longer one is streamed inside the transaction.
_PREFETCH_ROWS = 5000

_Rows = Iterator[tuple[str, list[tuple[Any, ...]]]]


def _call_row(
    run_id: str, record: CallRecord, decision: Decision | None, winners: set[str]
) -> tuple[Any, ...]:
    g = record.generation
    candidate = record.role == "candidate"
    return (
        run_id,
        record.seq,
        record.step,
        g.expert,
        record.role,
        g.sample,
        int(g.ok),
        g.error.type if g.error else None,
        g.error.message if g.error else None,
        g.attempts,
        g.input_tokens,
        g.output_tokens,
        g.cost,
        g.latency_s,
        g.model,
        int(decision is not None and g.expert in decision.experts),
        decision.scores.get(g.expert) if decision else None,
        int(candidate and candidate_key(g) in winners),
        record.ts,
    )


def _step_row(run_id: str, s: Step) -> tuple[Any, ...]:
    return (
        run_id,
        s.index,
        s.instruction,
        s.decision.policy,
        s.result.aggregator if s.result else None,
        s.result.comparable if s.result else None,
        json.dumps(s.result.winner if s.result else []),
        s.result.confidence if s.result else None,
        s.result.margin if s.result else None,
        len(s.generations),
        s.usage.input_tokens,
        s.usage.output_tokens,
        s.usage.cost,
    )


def _decision_row(run_id: str, r: RouteRecord) -> tuple[Any, ...]:
    d = r.decision
    return (
        run_id,
        r.seq,
        r.step,
        d.policy,
        d.action,
        d.mode,
        json.dumps(d.experts),
        json.dumps(d.scores),
        len(d.experts),
        d.rationale,
        r.ts,
    )


def _prefetch(trace: RunTrace) -> list[tuple[str, list[tuple[Any, ...]]]] | None:
    """A short run's rows, read now; None for a run of more than ``_PREFETCH_ROWS`` rows."""
    out: list[tuple[str, list[tuple[Any, ...]]]] = []
    count = 0
    for table, batch in _rows(trace):
        count += len(batch)
        if count > _PREFETCH_ROWS:
            return None
        out.append((table, batch))
    return out


def _rows(trace: RunTrace, drain: Callable[[], bool] | None = None) -> _Rows:
    """The index rows of one run, as ``(table, batch of rows)``, in one pass over the file.

    Memory holds a batch per table and the candidate calls of the steps in flight (a call's
    row needs its step's route and vote), never the run.
    """
    run_id = trace.run_id
    batches: dict[str, list[tuple[Any, ...]]] = {table: [] for table in _COLUMNS}
    ready: list[tuple[str, list[tuple[Any, ...]]]] = []  # full batches, yielded next
    held: dict[int, list[CallRecord]] = {}  # candidate calls waiting for their step
    end: list[RunEnd] = []
    totals = Usage()
    steps = 0

    def add(table: str, row: tuple[Any, ...]) -> None:
        batches[table].append(row)
        if len(batches[table]) >= _BATCH_ROWS:
            ready.append((table, batches[table]))
            batches[table] = []

    def on_record(record: TraceRecord) -> None:
        if isinstance(record, RouteRecord):
            add("decisions", _decision_row(run_id, record))
        elif isinstance(record, CallRecord) and record.role == "candidate":
            held.setdefault(record.step, []).append(record)
        elif isinstance(record, CallRecord):
            add("calls", _call_row(run_id, record, None, set()))
        elif isinstance(record, RunEnd):
            end.append(record)

    def release(index: int, decision: Decision | None, winners: set[str]) -> None:
        for record in held.pop(index, []):
            add("calls", _call_row(run_id, record, decision, winners))

    for step in trace.iter_steps(on_record):
        steps += 1
        totals += step.usage
        # Candidate calls of earlier steps that were no step (no call route) have no route.
        for index in [i for i in held if i < step.index]:
            release(index, None, set())
        release(step.index, step.decision, set(step.result.winner) if step.result else set())
        add("steps", _step_row(run_id, step))
        if drain is not None and drain():  # a live reader that caught up: partial batches too
            for table, batch in batches.items():
                if batch:
                    ready.append((table, batch))
                    batches[table] = []
        yield from ready
        ready.clear()
    for index in list(held):
        release(index, None, set())
    yield from ready
    yield from ((table, batch) for table, batch in batches.items() if batch)
    start = trace.start
    last = end[-1] if end else None
    usage = last.usage if last else totals
    task = start.task.metadata.get("task")
    yield (
        "runs",
        [
            (
                run_id,
                trace.path.name,
                start.ts,
                last.ts if last else None,
                start.task.id,
                str(task) if task is not None else None,
                start.task.text,
                start.policy,
                start.aggregator,
                last.answer if last else None,
                last.stop_reason if last else "incomplete: no run_end record",
                steps,
                usage.input_tokens,
                usage.output_tokens,
                usage.cost,
                usage.calls,
                last.latency_s if last else None,
                int(last is not None),
                int(start.capture.content),
                start.v,
            )
        ],
    )
