"""A SQLite index of a trace directory: queries across runs without reading every file.

The JSONL files stay the record; ``<dir>/index.sqlite`` is derived from them. The store
indexes each run as it ends; :meth:`TraceIndex.sync` catches up with files that changed
since (found by size and mtime, so only those are read), and :meth:`TraceIndex.rebuild`
recreates it from scratch. SQLite is the stdlib's, safe for several writing processes (WAL
journal, busy timeout), and needs no server or extra dependency.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from expertgraph.core.types import candidate_key
from expertgraph.traces.schema import RunEnd
from expertgraph.traces.store import (
    DEFAULT_TRACE_DIR,
    LABELS_SUFFIX,
    RunTrace,
    is_trace_file,
    load_run,
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


def _drop_if_outdated(conn: sqlite3.Connection) -> None:
    """An index of another version is dropped: the next sync rebuilds it from the files."""
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

    def __init__(self, directory: str | Path = DEFAULT_TRACE_DIR) -> None:
        self.directory = Path(directory)
        self.path = self.directory / INDEX_NAME
        self._ready = False

    # ---- connection ----------------------------------------------------------------------

    @contextmanager
    def connect(self) -> Iterator[sqlite3.Connection]:
        """A connection with the schema in place; commits on success."""
        self.directory.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=60.0)
        try:
            conn.execute("PRAGMA busy_timeout=60000")
            # The JSONL files are the record and the index is rebuilt from them, so commits
            # need not wait for the disk: WAL with synchronous=NORMAL stays consistent.
            conn.execute("PRAGMA synchronous=NORMAL")
            if not self._ready:
                conn.execute("PRAGMA journal_mode=WAL")
                _drop_if_outdated(conn)
                conn.executescript(_SCHEMA)
                conn.execute(
                    "INSERT OR IGNORE INTO meta VALUES ('version', ?)", (str(INDEX_VERSION),)
                )
                conn.commit()
                self._ready = True
            yield conn
            conn.commit()
        except BaseException:
            conn.rollback()
            raise
        finally:
            conn.close()

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        """Run a read query against the index (rows support access by column name)."""
        with self.connect() as conn:
            conn.row_factory = sqlite3.Row
            return list(conn.execute(sql, params))

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
            loaded.append((path, stat, trace, _rows(trace)))
        with self.connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            for path, stat, trace, rows in loaded:
                self._delete_run(conn, trace.run_id)
                for table, table_rows in rows.items():
                    for row in table_rows:
                        cols = ", ".join(row)
                        marks = ", ".join("?" for _ in row)
                        conn.execute(
                            f"INSERT OR REPLACE INTO {table} ({cols}) VALUES ({marks})",
                            tuple(row.values()),
                        )
                conn.execute(
                    "INSERT OR REPLACE INTO files VALUES (?, 'trace', ?, ?, ?)",
                    (path.name, trace.run_id, stat.st_size, stat.st_mtime_ns),
                )
        return [trace.run_id for _, _, trace, _ in loaded]

    def index_labels(self, run_id: str) -> int:
        """(Re)index the labels of one run; returns how many it has."""
        from expertgraph.traces.labels import LabelStore

        store = LabelStore(self.directory)
        path = store.path_for(run_id)
        labels = store.load(run_id)
        with self.connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
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
            stat = path.stat()
            entry = known.get(path.name)
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
        if gone:
            with self.connect() as conn:
                for name, (kind, run_id, _, _) in gone:
                    if kind == "labels":
                        conn.execute("DELETE FROM labels WHERE run_id = ?", (run_id,))
                    else:
                        self._delete_run(conn, run_id)
                    conn.execute("DELETE FROM files WHERE name = ?", (name,))
        return changed

    def rebuild(self) -> int:
        """Drop the index and recreate it from the JSONL files; returns files indexed."""
        with self.connect() as conn:
            for table in (*_RUN_TABLES, "labels", "files"):
                conn.execute(f"DELETE FROM {table}")
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


def _rows(trace: RunTrace) -> dict[str, list[dict[str, Any]]]:
    """The index rows of one run."""
    start, end = trace.start, trace.end
    steps = trace.steps()
    call_decisions = {s.index: s.decision for s in steps}
    winners = {s.index: set(s.result.winner) if s.result else set() for s in steps}
    usage = end.usage if end else None
    run = {
        "run_id": trace.run_id,
        "file": trace.path.name,
        "started": start.ts,
        "ended": end.ts if end else None,
        "task_id": start.task.id,
        "task": str(start.task.metadata.get("task"))
        if start.task.metadata.get("task") is not None
        else None,
        "prompt": start.task.text,
        "policy": start.policy,
        "aggregator": start.aggregator,
        "answer": end.answer if end else None,
        "stop_reason": end.stop_reason if end else "incomplete: no run_end record",
        "steps": len(steps),
        "input_tokens": usage.input_tokens if usage else sum(s.usage.input_tokens for s in steps),
        "output_tokens": usage.output_tokens
        if usage
        else sum(s.usage.output_tokens for s in steps),
        "cost": usage.cost if usage else sum(s.usage.cost for s in steps),
        "calls": usage.calls if usage else sum(s.usage.calls for s in steps),
        "latency_s": end.latency_s if end else None,
        "complete": int(isinstance(end, RunEnd)),
        "content": int(start.capture.content),
        "version": start.v,
    }
    decisions = [
        {
            "run_id": trace.run_id,
            "seq": r.seq,
            "step": r.step,
            "policy": r.decision.policy,
            "action": r.decision.action,
            "mode": r.decision.mode,
            "experts": json.dumps(r.decision.experts),
            "scores": json.dumps(r.decision.scores),
            "n_experts": len(r.decision.experts),
            "rationale": r.decision.rationale,
            "ts": r.ts,
        }
        for r in trace.decisions()
    ]
    step_rows = [
        {
            "run_id": trace.run_id,
            "step": s.index,
            "instruction": s.instruction,
            "policy": s.decision.policy,
            "aggregator": s.result.aggregator if s.result else None,
            "answer": s.result.comparable if s.result else None,
            "winner": json.dumps(s.result.winner if s.result else []),
            "confidence": s.result.confidence if s.result else None,
            "margin": s.result.margin if s.result else None,
            "candidates": len(s.generations),
            "input_tokens": s.usage.input_tokens,
            "output_tokens": s.usage.output_tokens,
            "cost": s.usage.cost,
        }
        for s in steps
    ]
    from expertgraph.traces.schema import CallRecord

    calls = []
    for r in trace.records:
        if not isinstance(r, CallRecord):
            continue
        g = r.generation
        candidate = r.role == "candidate"
        decision = call_decisions.get(r.step) if candidate else None
        calls.append(
            {
                "run_id": trace.run_id,
                "seq": r.seq,
                "step": r.step,
                "expert": g.expert,
                "role": r.role,
                "sample": g.sample,
                "ok": int(g.ok),
                "error_type": g.error.type if g.error else None,
                "error": g.error.message if g.error else None,
                "attempts": g.attempts,
                "input_tokens": g.input_tokens,
                "output_tokens": g.output_tokens,
                "cost": g.cost,
                "latency_s": g.latency_s,
                "model": g.model,
                "routed": int(decision is not None and g.expert in decision.experts),
                "router_score": decision.scores.get(g.expert) if decision else None,
                "in_winner": int(candidate and candidate_key(g) in winners.get(r.step, set())),
                "ts": r.ts,
            }
        )
    return {"runs": [run], "decisions": decisions, "steps": step_rows, "calls": calls}
