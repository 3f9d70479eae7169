"""Append-only JSONL trace files: one file per run, one line per record."""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from expertgraph.core.errors import TraceCorruptionError, TraceError
from expertgraph.core.types import RunResult, Step, StepResult, Usage
from expertgraph.traces.schema import (
    AggregateRecord,
    CallRecord,
    RouteRecord,
    RunEnd,
    RunStart,
    StepEnd,
    TraceRecord,
    record_adapter,
)

DEFAULT_TRACE_DIR = ".expertgraph/traces"


def new_run_id() -> str:
    """A run id that sorts by start time: ``20261123T174501-3f9a2c1b``."""
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + secrets.token_hex(4)


class TraceWriter:
    """Appends records to one run's file.

    Each record is a single ``write`` of one full line on an ``O_APPEND`` descriptor, under a
    thread lock and an advisory file lock, then flushed to the OS (``fsync`` when asked), so a
    crash can tear at most the last line. A torn last line left by an earlier crash is moved to
    ``<file>.torn`` before the first append, so new records are never glued to it.
    """

    def __init__(self, path: str | Path, *, fsync: bool = False) -> None:
        self.path = Path(path)
        self.fsync = fsync
        self._lock = threading.Lock()
        self._seq = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._repair_torn_tail()

    def _repair_torn_tail(self) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            size = os.fstat(self._fd).st_size
            if size == 0:
                return
            with open(self.path, "rb") as fh:
                data = fh.read()
            if data.endswith(b"\n"):
                self._seq = data.count(b"\n")
                return
            cut = data.rfind(b"\n") + 1
            with open(self.path.with_name(self.path.name + ".torn"), "ab") as torn:
                torn.write(data[cut:] + b"\n")
            os.truncate(self.path, cut)
            self._seq = data[:cut].count(b"\n")
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def write(self, record: TraceRecord) -> TraceRecord:
        """Append one record (its ``seq`` is set here) and return it."""
        with self._lock:
            if self._fd < 0:
                raise TraceError(f"{self.path}: writer is closed")
            record.seq = self._seq
            line = record.model_dump_json(exclude_none=False).encode() + b"\n"
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                os.write(self._fd, line)
                if self.fsync:
                    os.fsync(self._fd)
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            self._seq += 1
        return record

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    def __enter__(self) -> TraceWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def iter_records(path: str | Path) -> Iterator[TraceRecord]:
    """Yield the records of a trace file.

    Only an unterminated final line (a write torn by a crash) is skipped; any other line that
    does not parse raises :class:`TraceCorruptionError` naming the file and line.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TraceError(f"cannot read trace {path}: {exc}") from exc
    lines = data.split(b"\n")
    complete = lines[:-1]  # the last element is b"" or an unterminated (torn) line
    for number, raw in enumerate(complete, start=1):
        if not raw.strip():
            continue
        try:
            yield record_adapter.validate_json(raw)
        except (ValidationError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            first = str(exc).splitlines()[0]
            raise TraceCorruptionError(first, path=str(path), line=number) from exc


@dataclass
class RunTrace:
    """A run loaded back from its trace file."""

    path: Path
    records: list[TraceRecord] = field(default_factory=list)

    @property
    def start(self) -> RunStart:
        for record in self.records:
            if isinstance(record, RunStart):
                return record
        raise TraceError(f"{self.path}: no run_start record")

    @property
    def end(self) -> RunEnd | None:
        for record in reversed(self.records):
            if isinstance(record, RunEnd):
                return record
        return None

    @property
    def run_id(self) -> str:
        return self.start.run_id

    def steps(self) -> list[Step]:
        """Rebuild the steps from route, call and aggregate records."""
        decisions: dict[int, RouteRecord] = {}
        calls: dict[int, list[CallRecord]] = {}
        results: dict[int, StepResult] = {}
        ends: dict[int, StepEnd] = {}
        for record in self.records:
            if isinstance(record, RouteRecord) and record.decision.action == "call":
                decisions[record.step] = record
            elif isinstance(record, CallRecord):
                calls.setdefault(record.step, []).append(record)
            elif isinstance(record, AggregateRecord):
                results[record.step] = record.result
            elif isinstance(record, StepEnd):
                ends[record.step] = record
        steps = []
        for index in sorted(decisions):
            route = decisions[index]
            generations = [c.generation for c in calls.get(index, [])]
            usage = ends[index].usage if index in ends else sum(
                (g.usage for g in generations), Usage()
            )
            instruction = (
                ends[index].instruction
                if index in ends
                else (calls[index][0].instruction if calls.get(index) else route.decision.instruction or "")
            )
            steps.append(
                Step(
                    index=index,
                    instruction=instruction,
                    decision=route.decision,
                    generations=generations,
                    result=results.get(index),
                    usage=usage,
                )
            )
        return steps

    def result(self) -> RunResult:
        """The run's outcome as the same :class:`RunResult` the orchestrator returned."""
        start, end = self.start, self.end
        steps = self.steps()
        return RunResult(
            run_id=start.run_id,
            task=start.task,
            answer=end.answer if end else None,
            steps=steps,
            usage=end.usage if end else sum((s.usage for s in steps), Usage()),
            stop_reason=end.stop_reason if end else "incomplete: no run_end record",
            trace_path=str(self.path),
            latency_s=end.latency_s if end else 0.0,
        )


def load_run(path: str | Path) -> RunTrace:
    """Read one run's trace file."""
    return RunTrace(path=Path(path), records=list(iter_records(path)))


class TraceStore:
    """A directory of run traces, ``<dir>/<run_id>.jsonl``."""

    def __init__(self, directory: str | Path = DEFAULT_TRACE_DIR, *, fsync: bool = False) -> None:
        self.directory = Path(directory)
        self.fsync = fsync

    def path_for(self, run_id: str) -> Path:
        if "/" in run_id or run_id.startswith("."):
            raise TraceError(f"invalid run id {run_id!r}")
        return self.directory / f"{run_id}.jsonl"

    def writer(self, run_id: str) -> TraceWriter:
        return TraceWriter(self.path_for(run_id), fsync=self.fsync)

    def run_ids(self) -> list[str]:
        if not self.directory.is_dir():
            return []
        return sorted(p.stem for p in self.directory.glob("*.jsonl"))

    def load(self, run_id: str) -> RunTrace:
        path = self.path_for(run_id)
        if not path.exists():
            raise TraceError(f"no trace for run {run_id!r} in {self.directory}")
        return load_run(path)

    def __iter__(self) -> Iterator[RunTrace]:
        for run_id in self.run_ids():
            yield self.load(run_id)
