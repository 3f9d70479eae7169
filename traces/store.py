"""Append-only JSONL trace files: one file per run, one line per record."""

from __future__ import annotations

import copy
import fcntl
import functools
import json
import logging
import os
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from pydantic_core import to_jsonable_python

from expertgraph.core.errors import TraceCorruptionError, TraceError
from expertgraph.core.types import RunResult, Step, StepResult, Usage, candidate_key
from expertgraph.traces.redact import Redactor
from expertgraph.traces.schema import (
    BASE,
    DT,
    OMITTED,
    REFS,
    TRACE_VERSION,
    AggregateRecord,
    CallRecord,
    Capture,
    RouteRecord,
    RunEnd,
    RunStart,
    StepEnd,
    ToolRecord,
    TraceDetail,
    TraceRecord,
    record_adapter,
)

DEFAULT_TRACE_DIR = ".expertgraph/traces"
LABELS_SUFFIX = ".labels.jsonl"
# How long the background indexer waits for more runs to close before it starts a batch.
_INDEX_LINGER_S = 0.05
LIVE_INDEX_AFTER = 100_000
"""Records after which a run's trace is indexed as it is written (see :class:`TraceStore`)."""

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


# Texts at least this long are stored once per step window and referred to elsewhere (a
# reference costs about 30 bytes of JSON).
_MIN_REF_CHARS = 32
# A writer writes its buffer out when it holds this many bytes, even inside a step.
_MAX_BUFFER_BYTES = 1 << 20
# Fields of each record kind that may repeat a text of an earlier record of the step.
_TEXT_FIELDS: dict[str, tuple[str, ...]] = {
    "route": ("decision.instruction", "decision.answer"),
    "call": ("instruction", "generation.text"),
    "aggregate": ("result.text", "result.answer"),
    "step_end": ("instruction", "answer"),
    "run_end": ("answer",),
}
# Dicts whose keys may repeat such a text (a vote's answers): a key is referred to as
# ``<path>[<position>]`` and written as the placeholder ``"\u0000<position>"``.
_KEY_FIELDS: dict[str, tuple[str, ...]] = {"aggregate": ("result.votes", "result.supporters")}
# Members every line of a compact (decisions detail) layout keeps: the rest may come from its
# base. ``v`` and ``run_id`` are the run's (from its ``run_start``) and are left out.
_LINE_KEYS = frozenset({"v", "run_id", "seq", "ts", "type", REFS, BASE, DT})
# Sub-models a compact line lists member by member (only the members that changed).
_MERGED: dict[str, tuple[str, ...]] = {
    "route": ("decision",),
    "call": ("generation",),
    "aggregate": ("result",),
}
_MISSING = object()
# Records after which the buffer is written out: the run's start, a step's end (its tool
# results follow it) and the run's end. Records in between are the in-flight step.
_FLUSH_AFTER = frozenset({"run_start", "step_end", "tool", "run_end"})


def _attr(obj: Any, path: str) -> Any:
    for name in path.split("."):
        obj = getattr(obj, name, None)
    return obj


def _get(data: Any, path: str) -> Any:
    for name in path.split("."):
        if not isinstance(data, dict):
            return None
        data = data.get(name)
    return data


def _own(data: dict[str, Any], path: str) -> None:
    """Copy the dicts that hold ``path`` (see :func:`_put`), so that setting it changes
    ``data`` only: a compact line shares its members with the record kept as a base."""
    *parents, _ = path.partition("[")[0].split(".")
    for name in parents:
        data[name] = dict(data[name])
        data = data[name]


def _put(data: dict[str, Any], path: str, value: Any) -> None:
    """Set the field at ``path``, or for ``<path>[<position>]`` rename that key of the dict:
    to ``value`` when it is the placeholder, else to the placeholder (``value`` unused)."""
    table_path, bracket, position = path.partition("[")
    *parents, last = table_path.split(".")
    for name in parents:
        data = data[name]
    if not bracket:
        data[last] = value
        return
    index = int(position.rstrip("]"))
    placeholder = f"\x00{index}"
    table = data[last]
    keys = list(table)
    old = keys[index] if index < len(keys) else None
    new = value if old == placeholder else placeholder
    data[last] = {(new if i == index else k): table[k] for i, k in enumerate(keys)}


class _RefWindow:
    """Texts of the current and the previous step, each where it was stored whole, and the
    last record of each kind (a compact line's base, :data:`~expertgraph.traces.schema.BASE`).

    The writer and :func:`iter_records` keep the same window (rotated at each ``step_end``),
    so every reference a writer emits is one the reader still holds.
    """

    def __init__(self) -> None:
        self.current: dict[str, str] = {}
        self.previous: dict[str, str] = {}
        self.generation = 0  # steps rotated out so far
        # kind -> (seq, generation, dumped record as a reader restores it)
        self.bases: dict[str, tuple[int, int, dict[str, Any]]] = {}
        self.step: dict[str, dict[str, Any]] = {}  # type -> the last such record of this step

    def rotate(self) -> None:
        self.previous, self.current = self.current, {}
        self.generation += 1
        self.step = {}

    def copy(self) -> _RefWindow:
        out = _RefWindow()
        out.current, out.previous = dict(self.current), dict(self.previous)
        out.generation, out.bases, out.step = self.generation, dict(self.bases), dict(self.step)
        return out

    def base(self, kind: str, *, this_step: bool = False) -> tuple[int, dict[str, Any]] | None:
        """The last record of ``kind`` if a reader still holds it (this step or the last)."""
        found = self.bases.get(kind)
        if found is None or found[1] < self.generation - (0 if this_step else 1):
            return None
        return found[0], found[2]


def _after(ts: float, micros: int) -> float:
    """The time ``micros`` microseconds after ``ts``, as writer and reader both compute it."""
    return round(ts + micros / 1e6, 6)


def _in_step(base: dict[str, Any], step: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """``base`` as the current record most likely repeats it, the form a compact line is
    compared with (writer and reader predict alike; a wrong guess costs bytes, never
    correctness): a route is for the step after its base's; the step's route (when written
    after the base) gives a call, aggregate or step end its step, and a call or step end its
    instruction; a call after another of the same step is its next draw; the step's
    aggregate gives a step end its answer. ``step``: type -> the last such record of the step."""
    kind = base.get("type")
    if kind == "route" and isinstance(base.get("step"), int):
        return {**base, "step": base["step"] + 1}
    if kind not in ("call", "aggregate", "step_end"):
        return base
    out = base
    route, aggregate = step.get("route"), step.get("aggregate")
    if route is not None and route.get("seq", -1) > base.get("seq", -1):
        out = {**base, "step": route.get("step")}
        instruction = (route.get("decision") or {}).get("instruction")
        if kind != "aggregate" and instruction is not None:
            out["instruction"] = instruction
    elif kind == "call" and isinstance(base.get("generation"), dict):
        generation = base["generation"]
        sample = generation.get("sample", 0)
        if isinstance(sample, int):
            out = {**base, "generation": {**generation, "sample": sample + 1}}
    if kind == "step_end" and aggregate is not None and aggregate.get("seq", -1) > base["seq"]:
        answer = (aggregate.get("result") or {}).get("answer")
        if answer is not None:
            out = {**out, "answer": answer}
    return out


def _base_kinds(data: dict[str, Any]) -> tuple[str, ...]:
    """The kinds a record may take its base from: a call's are the calls of its role, and of
    its role and sample (the same draw of the step before)."""
    kind = str(data.get("type"))
    if kind != "call":
        return (kind,)
    role = f"call:{data.get('role', 'candidate')}"
    return (role, f"{role}:{(data.get('generation') or {}).get('sample', 0)}")


def _default(model: Any, name: str) -> Any:
    """The JSON form of field ``name``'s default in pydantic ``model`` (its class): a fresh
    copy when it is a container, since lines are edited in place."""
    value = _json_default(model, name)
    return copy.deepcopy(value) if isinstance(value, dict | list) else value


@functools.cache
def _json_default(model: Any, name: str) -> Any:
    # A cache: a field's default is the same on every record (a long run asks per line).
    return to_jsonable_python(model.model_fields[name].get_default(call_default_factory=True))


def _delta(
    record: Any, data: dict[str, Any], base: dict[str, Any], *, nested: bool = True
) -> dict[str, Any]:
    """The members of ``data`` that differ from ``base`` (both dumped forms of ``record``'s
    kind, a member left out meaning its default); a member ``base`` has and ``data`` lacks is
    written as its default. The sub-models of :data:`_MERGED` are compared member by member."""
    out: dict[str, Any] = {}
    merged = _MERGED.get(str(data.get("type")), ()) if nested else ()
    for name in (*data, *(k for k in base if k not in data)):
        if name in _LINE_KEYS:
            continue
        new = data[name] if name in data else _default(type(record), name)
        old = base.get(name, _MISSING)
        if name in merged and isinstance(new, dict) and isinstance(old, dict):
            sub = _delta(getattr(record, name), new, old, nested=False)
            if sub:
                out[name] = sub
        elif name not in data and old is _MISSING:
            continue
        elif new != old:
            out[name] = new
    return out


def _merge(obj: dict[str, Any], base: dict[str, Any]) -> None:
    """Fill a compact line's members from its base, in place (the inverse of :func:`_delta`)."""
    merged = _MERGED.get(str(obj.get("type")), ())
    for name, value in base.items():
        if name in _LINE_KEYS:
            continue
        if name not in obj:
            obj[name] = value
        elif name in merged and isinstance(value, dict) and isinstance(obj[name], dict):
            obj[name] = {**value, **obj[name]}


def _votes_by_key(result: Any) -> dict[str, str]:
    """Candidate key -> the answer it voted for, from a step's result (supporters, draws)."""
    out: dict[str, str] = {}
    for draw in (result.meta or {}).get("draws") or []:
        if isinstance(draw, dict) and draw.get("answer") is not None and not draw.get("flag"):
            out[str(draw.get("key"))] = str(draw["answer"])
    for answer, keys in result.supporters.items():
        for key in keys:
            out[key] = answer
    return out


class TraceWriter:
    """Appends records to one run's file, a step at a time.

    Records are encoded as they come and buffered; the buffer is written out after each
    step's end (and the run's start and end, a tool result, :meth:`flush`, :meth:`close`, or
    when it holds 1 MiB) as one ``write`` of whole lines on an ``O_APPEND`` descriptor,
    under a thread lock and an advisory file lock, then flushed to the OS (``fsync`` when
    asked). So a complete record is never torn, and a crash (SIGKILL) loses at most the
    records of the step in flight. Before every append, a torn last line left by a crashed
    writer is moved to ``<file>.torn``, so new records are never glued to it.

    Before a line is written, prompts and outputs are dropped when ``capture_content`` is
    off, and every string passes through the ``redactor`` (secrets replaced whole). A long
    text that an earlier record of the step (or the step before) already holds is stored as a
    reference to it (:data:`~expertgraph.traces.schema.REFS`), so a reply is written once.
    ``detail="decisions"`` keeps a candidate's answer instead of its reply (:data:`TraceDetail`).
    ``on_close`` is called with the path once the writer closes (the store updates its index);
    ``on_long`` once, when the file holds ``long_after`` records (the store starts indexing
    the run live).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        fsync: bool = False,
        capture_content: bool = True,
        redactor: Redactor | None = None,
        on_close: Callable[[Path], None] | None = None,
        detail: TraceDetail = "full",
        on_long: Callable[[Path], None] | None = None,
        long_after: int = 0,
    ) -> None:
        if detail not in ("full", "decisions"):
            raise TraceError(f"unknown trace detail {detail!r}: use 'full' or 'decisions'")
        self.path = Path(path)
        self._on_long = on_long
        self._long_after = long_after
        self.fsync = fsync
        self.capture_content = capture_content
        self.redactor = redactor
        self.detail: TraceDetail = detail
        self._on_close = on_close
        self._lock = threading.Lock()
        self._buffer: list[str] = []  # encoded lines, redacted as one text when written
        self._buffered = 0
        # decisions: a step's records from its first candidate call on wait for its vote.
        self._pending: list[TraceRecord] = []
        self._window = _RefWindow()
        flags = os.O_RDWR | os.O_APPEND | os.O_CREAT
        try:
            self._fd = os.open(self.path, flags, 0o644)
        except FileNotFoundError:
            # The directory is made only when missing: mkdir(exist_ok) on every run costs a
            # failing system call and a raised exception, a good part of opening a trace.
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, flags, 0o644)
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            _repair_torn_tail(self._fd, self.path)
            self._seq = _count_lines(self._fd)
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def encode(self, record: TraceRecord, votes: dict[str, str] | None = None) -> bytes:
        """The line that :meth:`write` appends for ``record`` (detail, content policy,
        references and redaction applied). ``votes`` (decisions detail): candidate key ->
        the answer it voted for. Writes nothing and leaves the writer as it was."""
        with self._lock:
            window = self._window
            self._window = window.copy()
            try:
                return self._redacted(self._line(record, votes)).encode() + b"\n"
            finally:
                self._window = window

    def _redacted(self, text: str) -> str:
        # One pass over a whole buffer of lines: JSON lines hold no raw newline, so no match
        # spans two of them, and the fixed cost of a pass is paid once per step.
        if self.redactor is None:
            return text
        self.redactor.refresh()
        return self.redactor.json_line(text)

    def _line(self, record: TraceRecord, votes: dict[str, str] | None = None) -> str:
        """``record``'s JSON line before redaction, without its newline."""
        if isinstance(record, RunStart):
            record.capture = Capture(
                content=self.capture_content,
                redacted=self.redactor is not None,
                detail=self.detail,
            )
        data: dict[str, Any] | None = None
        if not self.capture_content:
            data = record.model_dump(mode="json")
            _omit_content(data)
        elif self.detail == "decisions":
            data = self._decisions(record, votes)
        if self.detail == "decisions" and data is not None and not isinstance(record, RunStart):
            data = self._compact(record, data)
        elif self.capture_content:
            data = self._with_refs(record, data)
        if data is None:
            # pydantic's own encoder, no intermediate dict: the common path stays cheap.
            line = record.model_dump_json()
        else:
            line = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
        if record.type == "step_end":
            self._window.rotate()
        return line

    def _decisions(self, record: TraceRecord, votes: dict[str, str] | None) -> dict[str, Any]:
        """The dumped record at decisions detail: fields at their default left out (a reader
        restores them), a candidate's reply replaced by the answer it voted for, a call's
        latency in whole microseconds, and the step's result without the winner's text, a
        log of every draw's answer or the texts of its requests for more samples (their
        number stays: it is the step's round count)."""
        data = {
            "v": record.v,
            "run_id": record.run_id,
            "seq": record.seq,
            "ts": record.ts,
            "type": record.type,
            **record.model_dump(mode="json", exclude_defaults=True),
        }
        if isinstance(record, CallRecord) and votes is not None:
            # No vote known (the run stopped inside the step): the reply stays.
            key = candidate_key(record.generation)
            answer = votes.get(key, "") if record.role == "candidate" else ""
            data["generation"]["text"] = answer
        if isinstance(record, CallRecord) and "latency_s" in data["generation"]:
            # A float's last digits are noise that costs a tenth of a compact call line.
            data["generation"]["latency_s"] = round(record.generation.latency_s, 6)
        elif isinstance(record, AggregateRecord):
            if record.result.answer is not None:
                data["result"].pop("text", None)
            meta = data["result"].get("meta") or {}
            # An ahead-by-k log of every draw's answer: each call now holds its own.
            meta.pop("draws", None)
            if isinstance(meta.get("requests"), list):
                meta["requests"] = [""] * len(meta["requests"])
        return data

    def _with_refs(self, record: TraceRecord, data: dict[str, Any] | None) -> dict[str, Any] | None:
        """``data`` (or ``record`` dumped) with its repeated texts replaced by references;
        None when there are none and ``data`` was None."""
        refs = self._refs(record, data)
        if refs:
            if data is None:
                data = record.model_dump(mode="json")
            for path in refs:
                _put(data, path, "")
            data[REFS] = refs
        return data

    def _compact(self, record: TraceRecord, data: dict[str, Any]) -> dict[str, Any]:
        """The compact line of a dumped record (decisions detail): without the run's
        constants, and only the members that differ from the last record of its kind."""
        line: dict[str, Any] = {"seq": data["seq"], "ts": data["ts"], "type": data["type"]}
        if isinstance(record, RunEnd):
            # Whole, no base or reference: a reader finds the end from the file's tail alone.
            line.update((k, v) for k, v in data.items() if k not in _LINE_KEYS)
            return line
        if self._buffer:
            # The line after another of the same write: its seq is the one after. The first
            # line of each write names its own, so lines of two writers never get mixed up.
            del line["seq"]
        kinds = _base_kinds(data)
        # The closest base: an earlier call of this step (same step, instruction and mostly
        # the same answer), else the same draw of the step before, else the last of the kind.
        found = self._window.base(kinds[0], this_step=True)
        for kind in (*kinds[1:], kinds[0]) if found is None else ():
            found = found or self._window.base(kind)
        if found is None:
            line.update((k, v) for k, v in data.items() if k not in _LINE_KEYS)
        else:
            base_seq, base = found
            base = _in_step(base, self._window.step)
            del line["ts"]
            # Microseconds since the base's time; ``data`` then holds the time a reader restores.
            line[DT] = round((record.ts - base["ts"]) * 1e6)
            data["ts"] = _after(base["ts"], line[DT])
            line.update(_delta(record, data, base))
            line[BASE] = record.seq - base_seq
        for kind in kinds:
            self._window.bases[kind] = (record.seq, self._window.generation, data)
        self._window.step[record.type] = data
        if self.capture_content:
            refs = self._refs(record, line)
            for path in refs:
                _own(line, path)
                _put(line, path, "")
            if refs:
                line[REFS] = refs
        return line

    def _refs(self, record: TraceRecord, data: dict[str, Any] | None) -> dict[str, str]:
        """Fields of ``record`` that repeat a text stored earlier: path -> ``seq/path``."""
        refs: dict[str, str] = {}
        for path in _TEXT_FIELDS.get(record.type, ()):
            value = _attr(record, path) if data is None else _get(data, path)
            if not isinstance(value, str) or len(value) < _MIN_REF_CHARS:
                continue
            target = self._window.current.get(value)
            if target is None:
                # Stored here (whole, or as a reference a reader resolves in place), this
                # record is where the next steps find the text: it stays in their window.
                self._window.current[value] = f"{record.seq}/{path}"
                target = self._window.previous.get(value)
            if target is not None:
                refs[path] = target
        for path in _KEY_FIELDS.get(record.type, ()):
            table = _attr(record, path) if data is None else _get(data, path)
            for position, key in enumerate(table or {}):
                if len(key) >= _MIN_REF_CHARS:
                    target = self._window.current.get(key) or self._window.previous.get(key)
                    if target is not None:
                        refs[f"{path}[{position}]"] = target
        return refs

    def write(self, record: TraceRecord) -> TraceRecord:
        """Add one record (its ``seq`` is set here) and return it; see the class for when it
        reaches the file."""
        with self._lock:
            if self._fd < 0:
                raise TraceError(f"{self.path}: writer is closed")
            record.seq = self._seq
            self._seq += 1
            kind = record.type
            if self._pending or (
                self.detail == "decisions"
                and isinstance(record, CallRecord)
                and record.role == "candidate"
            ):
                self._pending.append(record)
                if kind in ("aggregate", "step_end", "run_end"):
                    self._drain_pending()
            else:
                self._buffer_line(self._line(record))
            if kind in _FLUSH_AFTER or self._buffered >= _MAX_BUFFER_BYTES:
                self._flush_locked()
            long = (
                self._on_long is not None and self._seq >= self._long_after and kind in _FLUSH_AFTER
            )
        if long:
            on_long, self._on_long = self._on_long, None
            assert on_long is not None
            on_long(self.path)  # once the records so far are in the file
        return record

    def _drain_pending(self, *, voted: bool = True) -> None:
        """Encode the held records of a step now that its vote is known (or never will be)."""
        votes = None
        if voted:
            for held in self._pending:
                if isinstance(held, AggregateRecord):
                    votes = _votes_by_key(held.result)
        pending, self._pending = self._pending, []
        for held in pending:
            self._buffer_line(self._line(held, votes))

    def _buffer_line(self, line: str) -> None:
        self._buffer.append(line)
        self._buffered += len(line)

    def _flush_locked(self) -> None:
        if not self._buffer:
            return
        text = self._redacted("\n".join(self._buffer) + "\n")
        self._buffer.clear()
        self._buffered = 0
        append_line(self._fd, self.path, text.encode(), fsync=self.fsync)

    def flush(self) -> None:
        """Write out every buffered record (a step still waiting for its vote at decisions
        detail stays held until the vote or :meth:`close`)."""
        with self._lock:
            if self._fd >= 0:
                self._flush_locked()

    def close(self) -> None:
        with self._lock:
            if self._fd < 0:
                return
            try:
                self._drain_pending(voted=False)
                self._flush_locked()
            finally:
                os.close(self._fd)
                self._fd = -1
        if self._on_close is not None:
            self._on_close(self.path)

    def __del__(self) -> None:
        # A writer dropped without close() (a crashed caller) still writes what it holds.
        try:
            if getattr(self, "_fd", -1) >= 0:
                self._drain_pending(voted=False)
                self._flush_locked()
                os.close(self._fd)
                self._fd = -1
        except Exception:  # noqa: BLE001, S110 - nothing may escape a finaliser
            pass

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

    The file is read a line at a time (memory holds one line, not the file). An unterminated
    final line (a write torn by a crash) is not yielded.
    """
    path = Path(path)
    try:
        handle = open(path, "rb")  # noqa: SIM115 - closed below, also when the caller stops early
    except OSError as exc:
        raise TraceError(f"cannot read trace {path}: {exc}") from exc
    with handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.endswith(b"\n"):
                return  # the last line, torn by a crash
            if raw.strip():
                yield number, raw


# The writer puts v, run_id, seq, ts and type first: a record's kind is read without parsing.
# A compact line (decisions detail) starts at "seq".
_KIND = re.compile(
    rb'^\{(?:"v":\d+,"run_id":"(?:[^"\\]|\\.)*",)?(?:"seq":\d+,)?(?:"ts":[^,]+,)?"type":"(\w+)"'
)


def _kind(raw: bytes) -> str | None:
    match = _KIND.match(raw)
    return match.group(1).decode() if match else None


class _Resolver:
    """Parses lines and resolves their references and bases, keeping the writer's window of
    records; restores the run's constants (``v``, ``run_id``) that compact lines leave out."""

    def __init__(self, path: Path, *, run_id: str | None = None, version: int | None = None):
        self.path = path
        self.run_id = run_id
        self.version = version
        self.current: dict[int, dict[str, Any]] = {}
        self.previous: dict[int, dict[str, Any]] = {}
        self.last_seq: int | None = None
        self.step: dict[str, dict[str, Any]] = {}  # type -> the last such record of this step

    def record(self, number: int, raw: bytes) -> TraceRecord:
        try:
            obj = json.loads(raw)
            if isinstance(obj, dict) and obj.get("type") == "run_start":
                self.run_id, self.version = obj.get("run_id"), obj.get("v", 1)
            version = obj.get("v", self.version or 1) if isinstance(obj, dict) else 1
            if isinstance(version, int) and version > TRACE_VERSION:
                raise TraceError(
                    f"{self.path}:{number}: trace version {version} is newer than this "
                    f"expertgraph reads ({TRACE_VERSION}); upgrade expertgraph"
                )
            if isinstance(obj, dict):
                self._restore(obj)
            return record_adapter.validate_python(obj)
        except (ValidationError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            first = str(exc).splitlines()[0]
            raise TraceCorruptionError(first, path=str(self.path), line=number) from exc

    def _restore(self, obj: dict[str, Any]) -> None:
        """Make a parsed line whole, in place, and keep it in the window."""
        if self.run_id is not None:
            obj.setdefault("run_id", self.run_id)
        if self.version is not None:
            obj.setdefault("v", self.version)
        if "seq" not in obj and self.last_seq is not None and "type" in obj:
            obj["seq"] = self.last_seq + 1
        seq = obj.get("seq")
        self.last_seq = seq if isinstance(seq, int) else None
        base = obj.pop(BASE, None)
        refs = obj.pop(REFS, None)
        micros = obj.pop(DT, None)
        holder = None
        if isinstance(base, int) and isinstance(seq, int):
            holder = self._held(seq - base)
        if holder is not None:
            holder = _in_step(holder, self.step)
            _merge(obj, holder)
            if isinstance(micros, int) and isinstance(holder.get("ts"), float | int):
                obj["ts"] = _after(holder["ts"], micros)
        if refs and (base is None or holder is not None):
            self._resolve(obj, refs)
        if isinstance(seq, int):
            self.current[seq] = obj
        self.step[str(obj.get("type"))] = obj
        if obj.get("type") == "step_end":
            self.previous, self.current = self.current, {}
            self.step = {}
        if base is not None and holder is None:
            # Kept in the window all the same: a tail reader skips it and reads on.
            message = f"{BASE} {base} names no record of this or the previous step"
            raise json.JSONDecodeError(message, "", 0)

    def _held(self, seq: Any) -> dict[str, Any] | None:
        if not isinstance(seq, int):
            return None
        return self.current.get(seq, self.previous.get(seq))

    def _resolve(self, obj: dict[str, Any], refs: Any) -> None:
        if not isinstance(refs, dict):
            raise json.JSONDecodeError(f"{REFS} is not an object", "", 0)
        for path, target in refs.items():
            seq_text, _, source = str(target).partition("/")
            seq = int(seq_text) if seq_text.isdigit() else -1
            holder = obj if seq == obj.get("seq") else self._held(seq)
            value = _get(holder, source) if holder is not None else None
            if not isinstance(value, str):
                raise json.JSONDecodeError(
                    f"reference {path} -> {target} names no text of this or the previous step",
                    "",
                    0,
                )
            _put(obj, path, value)


def iter_records(path: str | Path) -> Iterator[TraceRecord]:
    """Yield the records of a trace file, whole (references resolved), in bounded memory.

    Only an unterminated final line (a write torn by a crash) is skipped; any other line that
    does not parse raises :class:`TraceCorruptionError` naming the file and line, and a line of
    a newer trace version than this reader knows raises :class:`TraceError`.
    """
    resolver = _Resolver(Path(path))
    for number, raw in iter_lines(path):
        yield resolver.record(number, raw)


# Past this much tail without two step ends (a run of few, huge steps), read forwards.
_MAX_TAIL_BYTES = 16 << 20


def _tail_lines(path: Path, chunk: int = 1 << 16) -> list[bytes] | None:
    """The complete lines after the last-but-one ``step_end`` (read backwards), or None when
    the file is short (then reading it forwards is as cheap) or the tail is long."""
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size <= 4 * chunk:
                return None
            fd = handle.fileno()
            end = _last_newline(fd, size)
            lines: list[bytes] = []
            rest = b""
            ends = 0
            while end > 0 and size - end <= _MAX_TAIL_BYTES:
                begin = max(0, end - chunk)
                block = os.pread(fd, end - begin, begin) + rest
                parts = block.split(b"\n")
                rest = parts[0] if begin > 0 else b""
                body = parts[1:] if begin > 0 else parts
                for raw in reversed(body):
                    if not raw.strip():
                        continue
                    if _kind(raw) == "step_end":
                        ends += 1
                        if ends == 2:
                            lines.reverse()
                            return lines
                    lines.append(raw)
                end = begin
            return None
    except OSError:
        return None


def run_ended(path: str | Path) -> bool:
    """Whether the last complete line of a trace file is a ``run_end`` record (read from
    the file's last bytes only)."""
    try:
        with open(path, "rb") as handle:
            fd = handle.fileno()
            end = _last_newline(fd, os.fstat(fd).st_size)
            if end == 0:
                return False
            head = os.pread(fd, 512, _last_newline(fd, end - 1))  # the last line's start
    except OSError:
        return False
    return _kind(head) == "run_end"


class RunTrace:
    """A run read back from its trace file.

    Nothing is loaded up front: :meth:`iter_records` and :meth:`iter_steps` stream the file in
    bounded memory, :attr:`start` and :attr:`end` read its first and last lines, and
    :attr:`records` loads every record once, on first use (for short runs and callers that
    need them all).
    """

    def __init__(self, path: str | Path, records: list[TraceRecord] | None = None) -> None:
        self.path = Path(path)
        self._records = records
        self._start: RunStart | None = None
        self._end: tuple[RunEnd | None] | None = None

    def __repr__(self) -> str:
        return f"RunTrace(path={str(self.path)!r})"

    @property
    def records(self) -> list[TraceRecord]:
        """Every record of the run (loaded on first use, then kept)."""
        if self._records is None:
            self._records = list(iter_records(self.path))
        return self._records

    def iter_records(self) -> Iterator[TraceRecord]:
        """The records in order, streamed from the file unless :attr:`records` was loaded."""
        if self._records is not None:
            return iter(self._records)
        return iter_records(self.path)

    @property
    def start(self) -> RunStart:
        if self._start is None:
            for record in self.iter_records():
                if isinstance(record, RunStart):
                    self._start = record
                    break
            else:
                raise TraceError(f"{self.path}: no run_start record")
        return self._start

    @property
    def end(self) -> RunEnd | None:
        if self._end is None:
            self._end = (self._find_end(),)
        return self._end[0]

    def _find_end(self) -> RunEnd | None:
        if self._records is None:
            tail = _tail_lines(self.path)
            if tail is not None:
                start = self.start
                resolver = _Resolver(self.path, run_id=start.run_id, version=start.v)
                last: RunEnd | None = None
                for raw in tail:
                    try:
                        record = resolver.record(0, raw)
                    except TraceError:
                        if _kind(raw) == "run_end":
                            last = None  # read it forwards: the error names its line there
                            break
                        continue  # a compact line whose base is before the tail
                    if isinstance(record, RunEnd):
                        last = record
                if last is not None:
                    return last
        last = None
        for record in self.iter_records():
            if isinstance(record, RunEnd):
                last = record
        return last

    @property
    def run_id(self) -> str:
        return self.start.run_id

    @property
    def capture(self) -> Capture:
        """What the writer kept: content captured or not, redaction on or not, the detail."""
        return self.start.capture

    def decisions(self) -> list[RouteRecord]:
        """Every routing decision of the run, finish decisions included, in order."""
        return [r for r in self.iter_records() if isinstance(r, RouteRecord)]

    def tool_records(self) -> list[ToolRecord]:
        """Every tool call the orchestrator executed, in order (step, then position)."""
        return [r for r in self.iter_records() if isinstance(r, ToolRecord)]

    def final_step(self) -> int | None:
        """Index of the step whose answer became the run's answer (the last answered step)."""
        final = None
        for step in self.iter_steps():
            if step.result is not None and not step.result.failed:
                final = step.index
        return final

    def iter_steps(self, on_record: Callable[[TraceRecord], None] | None = None) -> Iterator[Step]:
        """Rebuild the steps from route, candidate call and aggregate records, in step order,
        each as soon as its ``step_end`` is read (memory holds the steps in flight).

        ``on_record`` sees every record as it is read, before the steps it completes are
        yielded: one pass serves a reader that needs both (the index)."""
        decisions: dict[int, RouteRecord] = {}
        calls: dict[int, list[CallRecord]] = {}
        results: dict[int, StepResult] = {}
        ends: dict[int, StepEnd] = {}
        for record in self.iter_records():
            if on_record is not None:
                on_record(record)
            if isinstance(record, RouteRecord) and record.decision.action == "call":
                decisions[record.step] = record
            elif isinstance(record, CallRecord) and record.role == "candidate":
                # A router's, fuser's or judge's own call is no candidate of the step.
                calls.setdefault(record.step, []).append(record)
            elif isinstance(record, AggregateRecord):
                results[record.step] = record.result
            elif isinstance(record, StepEnd):
                ends[record.step] = record
                for index in sorted(i for i in decisions if i <= record.step):
                    yield _step(index, decisions, calls, results, ends)
                for table in (calls, results, ends):
                    for index in [i for i in table if i <= record.step]:
                        del table[index]
        for index in sorted(decisions):
            yield _step(index, decisions, calls, results, ends)

    def steps(self) -> list[Step]:
        """Every step of the run (see :meth:`iter_steps`)."""
        return list(self.iter_steps())

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


def _step(
    index: int,
    decisions: dict[int, RouteRecord],
    calls: dict[int, list[CallRecord]],
    results: dict[int, StepResult],
    ends: dict[int, StepEnd],
) -> Step:
    """One step from its records (popping its route)."""
    route = decisions.pop(index)
    own = calls.get(index, [])
    generations = [c.generation for c in own]
    end = ends.get(index)
    usage = end.usage if end else sum((g.usage for g in generations), Usage())
    if end is not None:
        instruction = end.instruction
    else:
        instruction = own[0].instruction if own else route.decision.instruction or ""
    return Step(
        index=index,
        instruction=instruction,
        decision=route.decision,
        generations=generations,
        result=results.get(index),
        usage=usage,
    )


def load_run(path: str | Path) -> RunTrace:
    """Open one run's trace file (records are read when asked for; see :class:`RunTrace`)."""
    path = Path(path)
    if not path.is_file():
        raise TraceError(f"cannot read trace {path}: no such file")
    return RunTrace(path)


class TraceStore:
    """A directory of run traces, ``<dir>/<run_id>.jsonl``, with labels and an index beside them.

    ``capture_content`` off drops prompts and outputs from new traces; ``redact`` (on by
    default) replaces secrets before any line is written; ``index`` keeps
    ``<dir>/index.sqlite`` up to date as runs end, and a run past ``live_index_after``
    records is indexed as it is written, by a process of its own (:mod:`._follow`; None:
    never); ``otel_endpoint`` posts each finished
    run's spans (OTLP/JSON over HTTP) to a collector; ``detail`` is what each trace keeps
    (:data:`~expertgraph.traces.schema.TraceDetail`).
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
        detail: TraceDetail = "full",
        live_index_after: int | None = LIVE_INDEX_AFTER,
    ) -> None:
        if detail not in ("full", "decisions"):
            raise TraceError(f"unknown trace detail {detail!r}: use 'full' or 'decisions'")
        if live_index_after is not None and live_index_after < 1:
            raise TraceError(f"live_index_after must be at least 1, not {live_index_after}")
        self.directory = Path(directory)
        self.live_index_after = live_index_after
        self.detail: TraceDetail = detail
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
        self._followers: dict[Path, Any] = {}  # run file -> its follower process
        self._ended: set[Path] = set()  # followed runs whose writer closed

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
            detail=self.detail,
            on_long=self._follow if self.index and self.live_index_after else None,
            long_after=self.live_index_after or 0,
        )

    def _follow(self, path: Path) -> None:
        from expertgraph.traces._follow import start_follower

        try:
            follower = start_follower(self.directory, path)
        except OSError as exc:  # the index is a convenience: the run goes on without it
            _log.warning("live trace index of %s not started: %s", path, exc)
            return
        with self._lock:
            # Followers that are done are forgotten here, so a long-lived process (a server)
            # holds only those still at work.
            for done in [p for p, f in self._followers.items() if f.poll() is not None]:
                del self._followers[done]
                self._ended.discard(done)
            self._followers[path] = follower

    def _run_closed(self, path: Path) -> None:
        # Indexing and exporting take milliseconds (SQLite, HTTP): a background thread does
        # them so the run returns at once, and it takes the runs that closed meanwhile in one
        # batch, so a busy process pays one SQLite transaction for many runs. Readers sync
        # the index from the files before they query it, so an update still pending (or lost
        # with the process) only costs a re-read.
        with self._lock:
            if path in self._followers:
                self._ended.add(path)
                if not self.otel_endpoint:
                    return  # its follower indexes it
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
                break
            draining.result(timeout=timeout)
        with self._lock:
            # A run closed without its run_end keeps its follower reading until this process
            # is gone: waiting for it here would wait for ever.
            followed = [
                (p, f) for p, f in self._followers.items() if p in self._ended and run_ended(p)
            ]
        for path, follower in followed:
            follower.wait(timeout=timeout)
            with self._lock:
                self._followers.pop(path, None)
                self._ended.discard(path)

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
        with self._lock:
            indexed = [path for path in paths if path not in self._ended]
        if self.index and indexed:
            try:
                from expertgraph.traces.index import TraceIndex

                if self._index is None:
                    self._index = TraceIndex(self.directory, keep_open=True)
                try:
                    self._index.index_files(indexed)
                except Exception:  # noqa: BLE001 - one bad file must not cost the others
                    for path in indexed:
                        try:
                            self._index.index_file(path)
                        except Exception as exc:  # noqa: BLE001
                            _log.warning("trace index not updated for %s: %s", path, exc)
            except Exception as exc:  # noqa: BLE001
                _log.warning(
                    "trace index not updated for %s: %s", ", ".join(map(str, indexed)), exc
                )
        if self.otel_endpoint:
            for path in paths:
                try:
                    from expertgraph.traces.otel import export_run

                    export_run(load_run(path), self.otel_endpoint, headers=self.otel_headers)
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
