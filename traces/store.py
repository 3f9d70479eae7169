"""Append-only JSONL trace files: one file per run, one line per record."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from expertgraph.core.errors import TraceCorruptionError, TraceError
from expertgraph.core.types import RunResult, Step, StepResult, Usage
from expertgraph.traces.redact import Redactor
from expertgraph.traces.schema import (
    OMITTED,
    TRACE_VERSION,
    AggregateRecord,
    CallRecord,
    Capture,
    RouteRecord,
    RunEnd,
    RunStart,
    StepEnd,
    ToolRecord,
    TraceRecord,
    record_adapter,
)

DEFAULT_TRACE_DIR = ".expertgraph/traces"
LABELS_SUFFIX = ".labels.jsonl"
# How long the background indexer waits for more runs to close before it starts a batch.
_INDEX_LINGER_S = 0.05

_log = logging.getLogger(__name__)


def new_run_id() -> str:
    """A run id that sorts by start time: ``20261123T174501-3f9a2c1b``."""
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + secrets.token_hex(4)


def _last_newline(fd: int, size: int, chunk: int = 1 << 16) -> int:
    """Offset just past the last ``\\n`` of the file (0 when there is none), read backwards."""
    end = size
    while end > 0:
        start = max(0, end - chunk)
        block = os.pread(fd, end - start, start)
        cut = block.rfind(b"\n")
        if cut >= 0:
            return start + cut + 1
        end = start
    return 0


def _repair_torn_tail(fd: int, path: Path) -> int:
    """Quarantine an unterminated last line into ``<file>.torn``; return bytes moved.

    Call with the file lock held. ``fd`` must be readable.
    """
    size = os.fstat(fd).st_size
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return 0
    cut = _last_newline(fd, size)
    tail = os.pread(fd, size - cut, cut)
    with open(path.with_name(path.name + ".torn"), "ab") as torn:
        torn.write(tail + b"\n")
        torn.flush()
        os.fsync(torn.fileno())
    os.ftruncate(fd, cut)
    return len(tail)


def append_line(fd: int, path: Path, line: bytes, *, fsync: bool = False) -> None:
    """Append one full line under the file lock, repairing a torn tail first.

    ``fd`` is an ``O_RDWR | O_APPEND`` descriptor of ``path``. The line is written with one
    ``write`` call (looping only if the kernel accepts part of it), so concurrent writers
    that take the same lock never interleave, and a crash can tear at most this line.
    """
    if not line.endswith(b"\n"):
        line += b"\n"
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        _repair_torn_tail(fd, path)
        view = memoryview(line)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        if fsync:
            os.fsync(fd)
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)


def _omit_arguments(calls: list[dict[str, Any]] | None) -> None:
    # A call's tool name stays (which tool was chosen is no content); its arguments do not.
    for call in calls or []:
        call["arguments"] = {key: OMITTED for key in call.get("arguments") or {}}


def _omit_content(data: dict[str, Any]) -> None:
    """Replace prompts and outputs of a dumped record by ``[omitted]``, in place.

    Answers in votes and supporters become ``[omitted:N]`` placeholders, so who agreed with
    whom survives (agreement-based export still works) while the answers themselves do not.
    Tool calls keep their tool's name; their arguments and results are omitted.
    """
    kind = data.get("type")
    if kind == "run_start":
        task = data["task"]
        if task.get("prompt") is not None:
            task["prompt"] = OMITTED
        if task.get("system") is not None:
            task["system"] = OMITTED
        for message in task.get("messages") or []:
            message["content"] = OMITTED
            _omit_arguments(message.get("tool_calls"))
        for plan_step in task.get("plan") or []:
            plan_step["instruction"] = OMITTED
    elif kind == "route":
        decision = data["decision"]
        for key in ("instruction", "answer"):
            if decision.get(key) is not None:
                decision[key] = OMITTED
    elif kind == "call":
        data["instruction"] = OMITTED
        data["generation"]["text"] = OMITTED if data["generation"].get("text") else ""
        _omit_arguments(data["generation"].get("tool_calls"))
    elif kind == "aggregate":
        result = data["result"]
        names: dict[str, str] = {}

        def placeholder(answer: str) -> str:
            return names.setdefault(answer, f"{OMITTED[:-1]}:{len(names) + 1}]")

        result["supporters"] = {placeholder(a): k for a, k in result.get("supporters", {}).items()}
        result["votes"] = {placeholder(a): v for a, v in result.get("votes", {}).items()}
        if result.get("answer") is not None:
            result["answer"] = placeholder(result["answer"])
        if result.get("text"):
            result["text"] = OMITTED
        _omit_arguments(result.get("tool_calls"))
    elif kind == "tool":
        _omit_arguments([data])
        data["result"] = OMITTED
    elif kind in ("step_end", "run_end"):
        if data.get("answer") is not None:
            data["answer"] = OMITTED
        if kind == "step_end":
            data["instruction"] = OMITTED
        else:
            _omit_arguments(data.get("tool_calls"))


class TraceWriter:
    """Appends records to one run's file.

    Each record is a single ``write`` of one full line on an ``O_APPEND`` descriptor, under a
    thread lock and an advisory file lock, then flushed to the OS (``fsync`` when asked), so a
    crash can tear at most the last line. Before every append, a torn last line left by a
    crashed writer is moved to ``<file>.torn``, so new records are never glued to it.

    Before a line is written, prompts and outputs are dropped when ``capture_content`` is
    off, and every string passes through the ``redactor`` (secrets replaced whole).
    ``on_close`` is called with the path once the writer closes (the store updates its index).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        fsync: bool = False,
        capture_content: bool = True,
        redactor: Redactor | None = None,
        on_close: Callable[[Path], None] | None = None,
    ) -> None:
        self.path = Path(path)
        self.fsync = fsync
        self.capture_content = capture_content
        self.redactor = redactor
        self._on_close = on_close
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            _repair_torn_tail(self._fd, self.path)
            self._seq = _count_lines(self._fd)
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def encode(self, record: TraceRecord) -> bytes:
        """The line that :meth:`write` appends for ``record`` (content policy and redaction
        applied)."""
        if isinstance(record, RunStart):
            record.capture = Capture(
                content=self.capture_content, redacted=self.redactor is not None
            )
        if self.capture_content:
            # pydantic's own encoder, no intermediate dict: the common path stays cheap.
            line = record.model_dump_json()
        else:
            data = record.model_dump(mode="json")
            _omit_content(data)
            line = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
        if self.redactor is not None:
            self.redactor.refresh()
            line = self.redactor.json_line(line)
        return line.encode() + b"\n"

    def write(self, record: TraceRecord) -> TraceRecord:
        """Append one record (its ``seq`` is set here) and return it."""
        with self._lock:
            if self._fd < 0:
                raise TraceError(f"{self.path}: writer is closed")
            record.seq = self._seq
            append_line(self._fd, self.path, self.encode(record), fsync=self.fsync)
            self._seq += 1
        return record

    def close(self) -> None:
        with self._lock:
            if self._fd < 0:
                return
            os.close(self._fd)
            self._fd = -1
        if self._on_close is not None:
            self._on_close(self.path)

    def __enter__(self) -> TraceWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _count_lines(fd: int, chunk: int = 1 << 20) -> int:
    count, offset = 0, 0
    while True:
        block = os.pread(fd, chunk, offset)
        if not block:
            return count
        count += block.count(b"\n")
        offset += len(block)


def is_trace_file(path: str | Path) -> bool:
    """Whether a file starts with a run_start record (read from its first bytes only)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(512)
    except OSError:
        return False
    # The writer puts v, run_id, seq and ts first; run ids are short, so "type" is near.
    return head.startswith(b"{") and b'"type":"run_start"' in head


def iter_lines(path: str | Path) -> Iterator[tuple[int, bytes]]:
    """Yield ``(line number, bytes)`` of each complete, non-blank line of a JSONL file.

    An unterminated final line (a write torn by a crash) is not yielded.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TraceError(f"cannot read trace {path}: {exc}") from exc
    lines = data.split(b"\n")
    complete = lines[:-1]  # the last element is b"" or an unterminated (torn) line
    for number, raw in enumerate(complete, start=1):
        if raw.strip():
            yield number, raw


def iter_records(path: str | Path) -> Iterator[TraceRecord]:
    """Yield the records of a trace file.

    Only an unterminated final line (a write torn by a crash) is skipped; any other line that
    does not parse raises :class:`TraceCorruptionError` naming the file and line, and a line of
    a newer trace version than this reader knows raises :class:`TraceError`.
    """
    path = Path(path)
    for number, raw in iter_lines(path):
        try:
            obj = json.loads(raw)
            version = obj.get("v", 1) if isinstance(obj, dict) else 1
            if isinstance(version, int) and version > TRACE_VERSION:
                raise TraceError(
                    f"{path}:{number}: trace version {version} is newer than this expertgraph "
                    f"reads ({TRACE_VERSION}); upgrade expertgraph"
                )
            yield record_adapter.validate_python(obj)
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

    @property
    def capture(self) -> Capture:
        """What the writer kept: content captured or not, redaction on or not."""
        return self.start.capture

    def decisions(self) -> list[RouteRecord]:
        """Every routing decision of the run, finish decisions included, in order."""
        return [r for r in self.records if isinstance(r, RouteRecord)]

    def tool_records(self) -> list[ToolRecord]:
        """Every tool call the orchestrator executed, in order (step, then position)."""
        return [r for r in self.records if isinstance(r, ToolRecord)]

    def final_step(self) -> int | None:
        """Index of the step whose answer became the run's answer (the last answered step)."""
        for step in reversed(self.steps()):
            if step.result is not None and not step.result.failed:
                return step.index
        return None

    def steps(self) -> list[Step]:
        """Rebuild the steps from route, candidate call and aggregate records."""
        decisions: dict[int, RouteRecord] = {}
        calls: dict[int, list[CallRecord]] = {}
        results: dict[int, StepResult] = {}
        ends: dict[int, StepEnd] = {}
        for record in self.records:
            if isinstance(record, RouteRecord) and record.decision.action == "call":
                decisions[record.step] = record
            elif isinstance(record, CallRecord) and record.role == "candidate":
                # A router's, fuser's or judge's own call is no candidate of the step.
                calls.setdefault(record.step, []).append(record)
            elif isinstance(record, AggregateRecord):
                results[record.step] = record.result
            elif isinstance(record, StepEnd):
                ends[record.step] = record
        steps = []
        for index in sorted(decisions):
            route = decisions[index]
            generations = [c.generation for c in calls.get(index, [])]
            usage = (
                ends[index].usage if index in ends else sum((g.usage for g in generations), Usage())
            )
            instruction = (
                ends[index].instruction
                if index in ends
                else (
                    calls[index][0].instruction
                    if calls.get(index)
                    else route.decision.instruction or ""
                )
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
            tool_calls=list(end.tool_calls) if end else [],
        )


def load_run(path: str | Path) -> RunTrace:
    """Read one run's trace file."""
    return RunTrace(path=Path(path), records=list(iter_records(path)))


class TraceStore:
    """A directory of run traces, ``<dir>/<run_id>.jsonl``, with labels and an index beside them.

    ``capture_content`` off drops prompts and outputs from new traces; ``redact`` (on by
    default) replaces secrets before any line is written; ``index`` keeps
    ``<dir>/index.sqlite`` up to date as runs end; ``otel_endpoint`` posts each finished
    run's spans (OTLP/JSON over HTTP) to a collector.
    """

    def __init__(
        self,
        directory: str | Path = DEFAULT_TRACE_DIR,
        *,
        fsync: bool = False,
        capture_content: bool = True,
        redact: bool = True,
        index: bool = True,
        otel_endpoint: str | None = None,
        otel_headers: dict[str, str] | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.fsync = fsync
        self.capture_content = capture_content
        self.redact = redact
        self.index = index
        self.otel_endpoint = otel_endpoint
        self.otel_headers = dict(otel_headers or {})
        self._index: Any = None  # the TraceIndex, opened on the first run's close
        # One redactor for every writer: it re-reads the environment only when it changed.
        self._redactor = Redactor() if redact else None
        self._lock = threading.Lock()
        self._worker: ThreadPoolExecutor | None = None
        self._closed: list[Path] = []  # runs closed and not yet indexed or exported
        self._draining: Future[None] | None = None

    def path_for(self, run_id: str) -> Path:
        if (
            not run_id
            or "/" in run_id
            or "\\" in run_id
            or run_id.startswith(".")
            or run_id.endswith(".labels")
        ):
            raise TraceError(f"invalid run id {run_id!r}")
        return self.directory / f"{run_id}.jsonl"

    def writer(self, run_id: str) -> TraceWriter:
        return TraceWriter(
            self.path_for(run_id),
            fsync=self.fsync,
            capture_content=self.capture_content,
            redactor=self._redactor,
            on_close=self._run_closed if (self.index or self.otel_endpoint) else None,
        )

    def _run_closed(self, path: Path) -> None:
        # Indexing and exporting take milliseconds (SQLite, HTTP): a background thread does
        # them so the run returns at once, and it takes the runs that closed meanwhile in one
        # batch, so a busy process pays one SQLite transaction for many runs. Readers sync
        # the index from the files before they query it, so an update still pending (or lost
        # with the process) only costs a re-read.
        with self._lock:
            self._closed.append(path)
            if self._draining is not None:
                return
            if self._worker is None:
                self._worker = ThreadPoolExecutor(
                    max_workers=1, thread_name_prefix="expertgraph-trace"
                )
            self._draining = self._worker.submit(self._drain)

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every closed run is indexed and exported."""
        while True:
            with self._lock:
                draining = self._draining
            if draining is None:
                return
            draining.result(timeout=timeout)

    def _drain(self) -> None:
        time.sleep(_INDEX_LINGER_S)  # let the runs closing right now join this batch
        while True:
            with self._lock:
                paths, self._closed = self._closed, []
                if not paths:
                    self._draining = None
                    return
            try:
                self._after_close(paths)
            except Exception as exc:  # noqa: BLE001 - the worker must always reach the reset above
                _log.warning("trace post-processing failed: %s", exc)

    def _after_close(self, paths: list[Path]) -> None:
        # The JSONL file is the record; the index and the exporter are conveniences, so a
        # failure here is logged and never fails the run.
        if self.index:
            try:
                from expertgraph.traces.index import TraceIndex

                if self._index is None:
                    self._index = TraceIndex(self.directory)
                try:
                    self._index.index_files(paths)
                except Exception:  # noqa: BLE001 - one bad file must not cost the others
                    for path in paths:
                        try:
                            self._index.index_file(path)
                        except Exception as exc:  # noqa: BLE001
                            _log.warning("trace index not updated for %s: %s", path, exc)
            except Exception as exc:  # noqa: BLE001
                _log.warning("trace index not updated for %s: %s", ", ".join(map(str, paths)), exc)
        if self.otel_endpoint:
            for path in paths:
                try:
                    from expertgraph.traces.otel import post_spans, run_to_otlp

                    post_spans(
                        run_to_otlp(load_run(path)), self.otel_endpoint, headers=self.otel_headers
                    )
                except Exception as exc:  # noqa: BLE001
                    _log.warning(
                        "OpenTelemetry export of %s to %s failed: %s", path, self.otel_endpoint, exc
                    )

    def run_ids(self) -> list[str]:
        """Runs of the directory: ``*.jsonl`` files that start with a run_start record.

        Other JSONL files (a dataset exported next to the traces, labels) are not runs.
        """
        if not self.directory.is_dir():
            return []
        return sorted(
            p.name[: -len(".jsonl")]
            for p in self.directory.glob("*.jsonl")
            if not p.name.endswith(LABELS_SUFFIX) and is_trace_file(p)
        )

    def resolve(self, run: str) -> Path:
        """A run id in this store, or a path to a trace file."""
        candidate = Path(run)
        if candidate.suffix == ".jsonl" and candidate.is_file():
            return candidate
        path = self.path_for(run)
        if not path.exists():
            known = self.run_ids()
            hint = (
                f"; known runs: {', '.join(known[-5:])}" if known else "; the directory has no runs"
            )
            raise TraceError(f"no trace for run {run!r} in {self.directory}{hint}")
        return path

    def load(self, run_id: str) -> RunTrace:
        return load_run(self.resolve(run_id))

    def __iter__(self) -> Iterator[RunTrace]:
        for run_id in self.run_ids():
            yield self.load(run_id)
