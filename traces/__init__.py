"""Traces: typed, versioned, append-only records of every routing decision and expert call.

The JSONL file of a run is the record. Around it: labels, a SQLite index, Shapley
attribution, summaries, counterfactual replay, routing-dataset export, HTML reports and
OpenTelemetry spans.
"""

from typing import TYPE_CHECKING

from expertgraph.core._lazy import lazy_exports

if TYPE_CHECKING:
    from expertgraph.traces.analysis import TraceSummary, summarize
    from expertgraph.traces.attribution import (
        RunAttribution,
        StepAttribution,
        attribute_run,
        attribute_stored_run,
        shapley_values,
    )
    from expertgraph.traces.export import ExportStats, export_dataset, run_examples
    from expertgraph.traces.index import TraceIndex
    from expertgraph.traces.labels import Label, LabelStore, Reference, label_run, step_references
    from expertgraph.traces.otel import post_spans, run_to_otlp, write_otlp
    from expertgraph.traces.redact import REDACTED, Redactor
    from expertgraph.traces.replay import ReplayReport, replay, replay_run
    from expertgraph.traces.report import render_report, write_report
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
        ToolRecord,
        TraceDetail,
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

_EXPORTS = {
    "AggregateRecord": "expertgraph.traces.schema",
    "CallRecord": "expertgraph.traces.schema",
    "Capture": "expertgraph.traces.schema",
    "DEFAULT_TRACE_DIR": "expertgraph.traces.store",
    "ExpertInfo": "expertgraph.traces.schema",
    "ExportStats": "expertgraph.traces.export",
    "Label": "expertgraph.traces.labels",
    "LabelStore": "expertgraph.traces.labels",
    "OMITTED": "expertgraph.traces.schema",
    "REDACTED": "expertgraph.traces.redact",
    "Redactor": "expertgraph.traces.redact",
    "Reference": "expertgraph.traces.labels",
    "ReplayReport": "expertgraph.traces.replay",
    "RouteRecord": "expertgraph.traces.schema",
    "RunAttribution": "expertgraph.traces.attribution",
    "RunEnd": "expertgraph.traces.schema",
    "ToolRecord": "expertgraph.traces.schema",
    "RunStart": "expertgraph.traces.schema",
    "RunTrace": "expertgraph.traces.store",
    "StepAttribution": "expertgraph.traces.attribution",
    "StepEnd": "expertgraph.traces.schema",
    "TRACE_VERSION": "expertgraph.traces.schema",
    "TraceDetail": "expertgraph.traces.schema",
    "TraceIndex": "expertgraph.traces.index",
    "TraceRecord": "expertgraph.traces.schema",
    "TraceStore": "expertgraph.traces.store",
    "TraceSummary": "expertgraph.traces.analysis",
    "TraceWriter": "expertgraph.traces.store",
    "attribute_run": "expertgraph.traces.attribution",
    "attribute_stored_run": "expertgraph.traces.attribution",
    "export_dataset": "expertgraph.traces.export",
    "iter_records": "expertgraph.traces.store",
    "label_run": "expertgraph.traces.labels",
    "load_run": "expertgraph.traces.store",
    "new_run_id": "expertgraph.traces.store",
    "post_spans": "expertgraph.traces.otel",
    "render_report": "expertgraph.traces.report",
    "replay": "expertgraph.traces.replay",
    "replay_run": "expertgraph.traces.replay",
    "run_examples": "expertgraph.traces.export",
    "run_to_otlp": "expertgraph.traces.otel",
    "shapley_values": "expertgraph.traces.attribution",
    "step_references": "expertgraph.traces.labels",
    "summarize": "expertgraph.traces.analysis",
    "write_otlp": "expertgraph.traces.otel",
    "write_report": "expertgraph.traces.report",
}

__all__ = [
    "AggregateRecord",
    "CallRecord",
    "Capture",
    "DEFAULT_TRACE_DIR",
    "ExpertInfo",
    "ExportStats",
    "Label",
    "LabelStore",
    "OMITTED",
    "REDACTED",
    "Redactor",
    "Reference",
    "ReplayReport",
    "RouteRecord",
    "RunAttribution",
    "RunEnd",
    "ToolRecord",
    "RunStart",
    "RunTrace",
    "StepAttribution",
    "StepEnd",
    "TRACE_VERSION",
    "TraceDetail",
    "TraceIndex",
    "TraceRecord",
    "TraceStore",
    "TraceSummary",
    "TraceWriter",
    "attribute_run",
    "attribute_stored_run",
    "export_dataset",
    "iter_records",
    "label_run",
    "load_run",
    "new_run_id",
    "post_spans",
    "render_report",
    "replay",
    "replay_run",
    "run_examples",
    "run_to_otlp",
    "shapley_values",
    "step_references",
    "summarize",
    "write_otlp",
    "write_report",
]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
