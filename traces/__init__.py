"""Traces: typed, versioned, append-only records of every routing decision and expert call.

The JSONL file of a run is the record. Around it: labels (:mod:`.labels`), a SQLite index
(:mod:`.index`), Shapley attribution (:mod:`.attribution`), summaries (:mod:`.analysis`),
counterfactual replay (:mod:`.replay`), routing-dataset export (:mod:`.export`), HTML
reports (:mod:`.report`) and OpenTelemetry spans (:mod:`.otel`).
"""

from expertgraph.traces.attribution import (
    RunAttribution,
    StepAttribution,
    StepContext,
    attribute_run,
    attribute_stored_run,
    shapley_values,
)
from expertgraph.traces.export import ExportStats, export_dataset, run_examples
from expertgraph.traces.index import TraceIndex
from expertgraph.traces.labels import Label, LabelStore, Reference, label_run, step_references
from expertgraph.traces.redact import REDACTED, Redactor
from expertgraph.traces.replay import ReplayReport, RouteContext, replay, replay_run
from expertgraph.traces.schema import (
    OMITTED,
    TRACE_VERSION,
    AggregateRecord,
    CallRecord,
    Capture,
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
    "OMITTED",
    "REDACTED",
    "TRACE_VERSION",
    "AggregateRecord",
    "CallRecord",
    "Capture",
    "ExpertInfo",
    "ExportStats",
    "Label",
    "LabelStore",
    "Redactor",
    "Reference",
    "ReplayReport",
    "RouteContext",
    "RouteRecord",
    "RunAttribution",
    "RunEnd",
    "RunStart",
    "RunTrace",
    "StepAttribution",
    "StepContext",
    "StepEnd",
    "TraceIndex",
    "TraceRecord",
    "TraceStore",
    "TraceWriter",
    "attribute_run",
    "attribute_stored_run",
    "export_dataset",
    "iter_records",
    "label_run",
    "load_run",
    "new_run_id",
    "replay",
    "replay_run",
    "run_examples",
    "shapley_values",
    "step_references",
]
