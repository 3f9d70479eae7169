"""Typed, versioned trace records: one JSON line per event of a run."""

from __future__ import annotations

import functools
import time
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from expertgraph.core.protocols import CallRole
from expertgraph.core.tools import ToolCall
from expertgraph.core.types import (
    Decision,
    ExpertCard,
    Generation,
    StepResult,
    Task,
    Usage,
)

TRACE_VERSION = 6
"""Version of the trace line format. 1: first release; 2: ``RunStart.capture`` added; 3:
``CallRecord.role`` added; 4: ``ToolRecord`` and ``RunEnd.tool_calls`` added; 5: a line may
carry ``refs`` (a text stored once in an earlier record, see :data:`REFS`) and
``Capture.detail``; 6: compact lines at decisions detail (see :data:`BASE`). Files of older
versions read unchanged; readers refuse lines of a newer version."""

REFS = "refs"
"""The line member that names texts stored once elsewhere: ``{"result.text": "3/generation.text"}``
says the field ``result.text`` of this record holds the ``generation.text`` of the record with
``seq`` 3. A line refers only to records of its own step or the step before (the records
since the last-but-one ``step_end``), so a reader resolves references in bounded memory;
readers of this module resolve them, and a record read back is whole."""

BASE = "base"
"""At decisions detail every line but the run's first and last is compact: it leaves out
``v`` and ``run_id`` (the ``run_start``'s), ``seq`` when it is the previous line's plus one
(the first line of each write names it), and, with ``"base": N``, every member equal to that
of record ``seq - N`` (its base: an earlier record of its kind, for calls of its role, in
this step or the one before); the members of ``decision``, ``generation`` and ``result`` are
compared one by one, and a member the base has and the record does not is written at its
default. Readers of this module restore the record whole, in bounded memory (the window of
:data:`REFS`)."""

DT = "dt"
"""A compact line's time: microseconds after its base's (``ts`` then kept to the
microsecond)."""

TraceDetail = Literal["full", "decisions"]
"""What a trace keeps. ``full``: every record whole (each long text stored once, referred to
elsewhere). ``decisions``: routes, votes and usage per step; a candidate call keeps the answer
it voted for instead of its reply, and texts repeated within a step are stored once."""

OMITTED = "[omitted]"
"""What stands in for a prompt or output when content capture is off."""


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid")

    v: int = TRACE_VERSION
    run_id: str
    seq: int = 0
    """Position of the record in its run, assigned by the writer."""
    ts: float = Field(default_factory=time.time)

    @classmethod
    def built(cls, **values: Any) -> Self:
        """A record from already-valid values, unvalidated (the hot path of a run writes
        several per step): ``model_construct`` with the class's plain defaults filled in from
        a cache, so pydantic need not copy each default on every record."""
        given = set(values)
        plain = _plain_defaults(cls)
        if "ts" not in values:
            values["ts"] = time.time()
        return cls.model_construct(_fields_set=given, **{**plain, **values})


@functools.cache
def _plain_defaults(cls: type[BaseModel]) -> dict[str, Any]:
    # A cache per record class: its immutable field defaults (no default factory).
    return {
        name: field.default
        for name, field in cls.model_fields.items()
        if field.default_factory is None
        and not field.is_required()
        and isinstance(field.default, str | int | float | bool | type(None))
    }


class ExpertInfo(BaseModel):
    """An expert as the run saw it: enough to explain the run without the live object."""

    model_config = ConfigDict(extra="forbid")

    name: str
    kind: str
    card: ExpertCard
    model: str | None = None


class Capture(BaseModel):
    """What the writer kept of the run: set by the writer, not by the caller."""

    model_config = ConfigDict(extra="forbid")

    content: bool = True
    """False: prompts and outputs were replaced by ``[omitted]`` before writing."""
    redacted: bool = True
    """True: secrets were replaced by ``[REDACTED]`` before writing."""
    detail: TraceDetail = "full"
    """``decisions``: candidate replies were replaced by the answers they voted for."""


class RunStart(_Record):
    type: Literal["run_start"] = "run_start"
    task: Task
    experts: list[ExpertInfo]
    policy: str
    aggregator: str
    config: dict[str, Any] = Field(default_factory=dict)
    capture: Capture = Field(default_factory=Capture)


class RouteRecord(_Record):
    type: Literal["route"] = "route"
    step: int
    decision: Decision


class CallRecord(_Record):
    """One expert call that was made: a step's candidate, or a router's, fuser's or judge's own.

    Only ``role == "candidate"`` calls are a step's candidates; every role counts as a call of
    its expert (health, spend, summaries).
    """

    type: Literal["call"] = "call"
    step: int
    instruction: str
    generation: Generation
    role: CallRole = "candidate"


class AggregateRecord(_Record):
    type: Literal["aggregate"] = "aggregate"
    step: int
    result: StepResult


class ToolRecord(_Record):
    """One tool call the orchestrator executed after a step's vote chose it."""

    type: Literal["tool"] = "tool"
    step: int
    """The step whose action this call is part of."""
    index: int = 0
    """The call's position in the step's action (parallel calls run in order)."""
    call_id: str
    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)
    result: str
    """The text the next step's experts read (an ``error: ...`` text when it failed)."""
    latency_s: float = 0.0
    error: str | None = None
    """Why the call failed (unknown tool, bad arguments, exception, timeout); None if it ran."""


class StepEnd(_Record):
    type: Literal["step_end"] = "step_end"
    step: int
    instruction: str
    answer: str | None
    usage: Usage


class RunEnd(_Record):
    type: Literal["run_end"] = "run_end"
    answer: str | None
    stop_reason: str
    usage: Usage
    steps: int
    latency_s: float
    tool_calls: list[ToolCall] = Field(default_factory=list)
    """Calls the run ended on, for its caller to execute (``RunResult.tool_calls``)."""


TraceRecord = Annotated[
    RunStart | RouteRecord | CallRecord | AggregateRecord | ToolRecord | StepEnd | RunEnd,
    Field(discriminator="type"),
]
record_adapter: TypeAdapter[TraceRecord] = TypeAdapter(TraceRecord)
