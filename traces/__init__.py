"""Traces: typed, versioned, append-only records of every routing decision and expert call."""

from expertgraph.traces.schema import (
    AggregateRecord,
    CallRecord,
    ExpertInfo,
    RouteRecord,
    RunEnd,
    RunStart,
    StepEnd,
    TraceRecord,
)
from expertgraph.traces.store import (
    DEFAULT_TRACE_DIR,
    RunTrace,
    TraceStore,
    TraceWriter,
    iter_records,
    load_run,
    new_run_id,
)

__all__ = [
    "DEFAULT_TRACE_DIR",
    "AggregateRecord",
    "CallRecord",
    "ExpertInfo",
    "RouteRecord",
    "RunEnd",
    "RunStart",
    "RunTrace",
    "StepEnd",
    "TraceRecord",
    "TraceStore",
    "TraceWriter",
    "iter_records",
    "load_run",
    "new_run_id",
]
