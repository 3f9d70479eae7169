"""Typed, versioned trace records: one JSON line per event of a run."""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

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

TRACE_VERSION = 4
"""Version of the trace line format. 1: first release; 2: ``RunStart.capture`` added; 3:
``CallRecord.role`` added; 4: ``ToolRecord`` and ``RunEnd.tool_calls`` added (files of older
versions read unchanged). Readers refuse lines of a newer version."""

OMITTED = "[omitted]"
"""What stands in for a prompt or output when content capture is off."""


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid")

    v: int = TRACE_VERSION
    run_id: str
    seq: int = 0
    """Position of the record in its run, assigned by the writer."""
    ts: float = Field(default_factory=time.time)


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
