"""OpenTelemetry export: a run as spans built with the OpenTelemetry SDK, sent over OTLP.

One span per run, per step, per routing decision, per expert call and per tool execution,
parent-linked: run -> step -> (route, call, tool ...); a finish decision hangs off the run.
Attributes follow the OpenTelemetry GenAI semantic conventions (``gen_ai.operation.name``,
``gen_ai.request.model``, ``gen_ai.usage.input_tokens`` ...) and OpenInference
(``openinference.span.kind``, ``llm.model_name``, ``llm.token_count.*``, ``input.value``
...), plus ``expertgraph.*`` for routing and voting. Span ids and times come from the trace
records (ids derived from the run id, so exporting a run twice gives the same spans), not
from the clock. Prompts and outputs (``input.value``, ``output.value``) appear only when
the trace captured content; the trace was redacted when it was written.

:func:`export_run` sends a run with the SDK's standard OTLP/HTTP exporter (protobuf), so
any OTLP backend takes it (an OpenTelemetry Collector, Arize Phoenix, Jaeger ...);
:func:`run_to_otlp` gives the same spans as OTLP/JSON (``traces otel --out``). Needs the
``otel`` extra (``opentelemetry-sdk``, ``opentelemetry-exporter-otlp-proto-http``), imported
only when spans are built.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import logging
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from expertgraph.core.errors import MissingDependencyError, TraceError
from expertgraph.traces.schema import (
    AggregateRecord,
    CallRecord,
    RouteRecord,
    StepEnd,
    ToolRecord,
)
from expertgraph.traces.store import RunTrace

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import ReadableSpan

SCOPE = "expertgraph.traces"
SERVICE_NAME = "expertgraph"


def _id(run_id: str, key: str, hex_len: int) -> str:
    return hashlib.sha256(f"{run_id}\x00{key}".encode()).hexdigest()[:hex_len]


def trace_id(run_id: str) -> str:
    """The 32-hex-digit OTel trace id of a run."""
    return _id(run_id, "trace", 32)


def span_id(run_id: str, key: str) -> str:
    """The 16-hex-digit OTel span id of one part of a run (``run``, ``step/0``, ``call/7``)."""
    return _id(run_id, key, 16)


def _nanos(ts: float) -> int:
    return int(round(ts * 1e9))


def _provider(model: str | None, kind: str) -> str:
    if model and "/" in model:
        return model.split("/", 1)[0]
    return {"local": "huggingface", "callable": "python"}.get(kind, kind)


def _float(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else None


# ---- the span plan: what the trace says, before any SDK object ------------------------------


@dataclass
class _Planned:
    key: str
    parent: str | None  # the parent's key; None for the root
    name: str
    start: float
    end: float
    attrs: dict[str, Any]
    client: bool = False
    error: str | None = None


@dataclass
class _Plan:
    run_id: str
    spans: list[_Planned] = field(default_factory=list)

    def add(self, *args: Any, **kwargs: Any) -> None:
        self.spans.append(_Planned(*args, **kwargs))


def _plan(trace: RunTrace) -> _Plan:
    """The spans of one run, root first, from its records."""
    start = trace.start
    run_id = trace.run_id
    content = start.capture.content
    experts = {e.name: e for e in start.experts}
    end_record = trace.end
    last_ts = max(r.ts for r in trace.records)
    usage = end_record.usage if end_record else None
    plan = _Plan(run_id)
    agent = str(start.config.get("name", "expertgraph"))
    plan.add(
        "run",
        None,
        f"invoke_agent {agent}",
        start.ts,
        end_record.ts if end_record else last_ts,
        {
            "gen_ai.operation.name": "invoke_agent",
            "gen_ai.agent.name": agent,
            "gen_ai.conversation.id": run_id,
            "gen_ai.usage.input_tokens": usage.input_tokens if usage else None,
            "gen_ai.usage.output_tokens": usage.output_tokens if usage else None,
            "openinference.span.kind": "AGENT",
            "session.id": run_id,
            "input.value": start.task.text if content else None,
            "output.value": end_record.answer if end_record and content else None,
            "llm.token_count.prompt": usage.input_tokens if usage else None,
            "llm.token_count.completion": usage.output_tokens if usage else None,
            "llm.token_count.total": usage.total_tokens if usage else None,
            "expertgraph.run_id": run_id,
            "expertgraph.task_id": start.task.id,
            "expertgraph.policy": start.policy,
            "expertgraph.aggregator": start.aggregator,
            "expertgraph.stop_reason": end_record.stop_reason if end_record else "incomplete",
            "expertgraph.cost": usage.cost if usage else None,
            "expertgraph.steps": end_record.steps if end_record else None,
        },
        error=None
        if end_record and not end_record.stop_reason.startswith("error")
        else (end_record.stop_reason if end_record else "run did not finish (no run_end record)"),
    )
    # Group records by step; a step starts at the record before its route decision.
    previous_ts = start.ts
    step_bounds: dict[int, list[float]] = {}
    for record in trace.records:
        step = getattr(record, "step", None)
        if isinstance(record, RouteRecord) and record.decision.action == "call":
            step_bounds.setdefault(step, [previous_ts, record.ts])
        if step is not None and step in step_bounds:
            bounds = step_bounds[step]
            bounds[1] = max(bounds[1], record.ts)
            if isinstance(record, CallRecord):
                bounds[0] = min(bounds[0], record.ts - record.generation.latency_s)
        previous_ts = record.ts
    results = {r.step: r.result for r in trace.records if isinstance(r, AggregateRecord)}
    step_ends = {r.step: r for r in trace.records if isinstance(r, StepEnd)}
    for index, (s_start, s_end) in sorted(step_bounds.items()):
        result = results.get(index)
        end = step_ends.get(index)
        plan.add(
            f"step/{index}",
            "run",
            f"expertgraph.step {index}",
            s_start,
            s_end,
            {
                "openinference.span.kind": "CHAIN",
                "expertgraph.step": index,
                "expertgraph.aggregator": result.aggregator if result else None,
                "expertgraph.answer": (result.answer if result and content else None),
                "expertgraph.confidence": result.confidence if result else None,
                "expertgraph.margin": result.margin if result else None,
                "expertgraph.winner": list(result.winner) if result else None,
                "expertgraph.votes": json.dumps(result.votes) if result and content else None,
                "expertgraph.cost": end.usage.cost if end else None,
                "input.value": end.instruction if end and content else None,
                "output.value": end.answer if end and content else None,
            },
            error=None
            if result is None or not result.failed
            else (result.stop_reason or "no answer"),
        )

    def in_step(step: int | None) -> str:
        return f"step/{step}" if step in step_bounds else "run"

    previous_ts = start.ts
    for record in trace.records:
        if isinstance(record, RouteRecord):
            d = record.decision
            plan.add(
                f"route/{record.seq}",
                in_step(record.step) if d.action == "call" else "run",
                f"expertgraph.route {d.policy or start.policy}",
                previous_ts,
                record.ts,
                {
                    "openinference.span.kind": "CHAIN",
                    "expertgraph.step": record.step,
                    "expertgraph.policy": d.policy,
                    "expertgraph.route.action": d.action,
                    "expertgraph.route.mode": d.mode,
                    "expertgraph.route.experts": list(d.experts),
                    "expertgraph.route.scores": json.dumps(d.scores),
                    "expertgraph.route.rationale": d.rationale,
                    "metadata": json.dumps(d.meta) if d.meta else None,
                },
            )
        elif isinstance(record, CallRecord):
            g = record.generation
            info = experts.get(g.expert)
            model = (info.model if info else None) or g.model or g.expert
            kind = info.kind if info else "expert"
            params = g.params or {}
            plan.add(
                f"call/{record.seq}",
                in_step(record.step),
                f"chat {model}",
                record.ts - g.latency_s,
                record.ts,
                {
                    "gen_ai.operation.name": "chat",
                    "gen_ai.provider.name": _provider(model, kind),
                    "gen_ai.request.model": model,
                    "gen_ai.response.model": g.model,
                    "gen_ai.request.temperature": _float(params.get("temperature")),
                    "gen_ai.request.max_tokens": _int(params.get("max_tokens")),
                    "gen_ai.usage.input_tokens": g.input_tokens,
                    "gen_ai.usage.output_tokens": g.output_tokens,
                    "gen_ai.response.finish_reasons": [g.finish_reason]
                    if g.finish_reason
                    else None,
                    "gen_ai.agent.name": g.expert,
                    "error.type": g.error.type if g.error else None,
                    "openinference.span.kind": "LLM",
                    "llm.model_name": model,
                    "llm.provider": _provider(model, kind),
                    "llm.token_count.prompt": g.input_tokens,
                    "llm.token_count.completion": g.output_tokens,
                    "llm.token_count.total": g.input_tokens + g.output_tokens,
                    "llm.invocation_parameters": json.dumps(params) if params else None,
                    "llm.cost.total": g.cost,
                    "input.value": record.instruction if content else None,
                    "output.value": g.text if content and g.ok else None,
                    "expertgraph.expert": g.expert,
                    "expertgraph.sample": g.sample,
                    "expertgraph.call.role": record.role,
                    "expertgraph.attempts": g.attempts,
                    "expertgraph.cost": g.cost,
                },
                client=True,
                error=f"{g.error.type}: {g.error.message}" if g.error else None,
            )
        elif isinstance(record, ToolRecord):
            plan.add(
                f"tool/{record.seq}",
                in_step(record.step),
                f"execute_tool {record.name}",
                record.ts - record.latency_s,
                record.ts,
                {
                    "gen_ai.operation.name": "execute_tool",
                    "gen_ai.tool.name": record.name,
                    "gen_ai.tool.call.id": record.call_id,
                    "gen_ai.tool.type": "function",
                    "openinference.span.kind": "TOOL",
                    "tool.name": record.name,
                    "input.value": json.dumps(record.arguments) if content else None,
                    "output.value": record.result if content else None,
                    "expertgraph.step": record.step,
                    "error.type": "tool_error" if record.error else None,
                },
                error=record.error,
            )
        previous_ts = record.ts
    return plan


# ---- the SDK ----------------------------------------------------------------------------------


def _require_sdk() -> None:
    try:
        import opentelemetry.exporter.otlp.proto.http  # noqa: F401
        import opentelemetry.sdk.trace  # noqa: F401
    except ImportError as exc:
        raise MissingDependencyError(exc.name or "opentelemetry-sdk", "otel") from exc


def _scope_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("expertgraph")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "0"


def build_spans(trace: RunTrace) -> list[ReadableSpan]:
    """The run's spans as OpenTelemetry SDK spans (root first), ready for any span exporter.

    Each span is started and ended through an SDK tracer at the times its records give; an
    id generator hands the tracer the ids derived from the run, and each parent is set as
    the span's context.
    """
    _require_sdk()
    from opentelemetry import trace as otel_trace
    from opentelemetry.context import Context
    from opentelemetry.sdk.resources import OTELResourceDetector, Resource
    from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
    from opentelemetry.sdk.trace.id_generator import IdGenerator
    from opentelemetry.sdk.trace.sampling import ALWAYS_ON
    from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags
    from opentelemetry.trace.status import Status, StatusCode

    plan = _plan(trace)
    run_trace_id = int(trace_id(plan.run_id), 16)

    class RecordIds(IdGenerator):
        """Hands out the ids derived from the run instead of random ones."""

        next_span_id = 0

        def generate_span_id(self) -> int:
            return self.next_span_id

        def generate_trace_id(self) -> int:
            return run_trace_id

    class Collect(SpanProcessor):
        def __init__(self) -> None:
            self.spans: list[ReadableSpan] = []

        def on_end(self, span: ReadableSpan) -> None:
            self.spans.append(span)

    ids = RecordIds()
    collected = Collect()
    # The service name may be overridden (OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES), as
    # with any SDK; no random service.instance.id, so a run's export is reproducible.
    resource = Resource({"service.name": SERVICE_NAME}).merge(OTELResourceDetector().detect())
    provider = TracerProvider(
        sampler=ALWAYS_ON, resource=resource, id_generator=ids, shutdown_on_exit=False
    )
    provider.add_span_processor(collected)
    tracer = provider.get_tracer(SCOPE, _scope_version())
    sampled = TraceFlags(TraceFlags.SAMPLED)
    for planned in plan.spans:
        if planned.parent is None:
            context = Context()  # a root: never the caller's current span
        else:
            parent = SpanContext(
                run_trace_id,
                int(span_id(plan.run_id, planned.parent), 16),
                is_remote=False,
                trace_flags=sampled,
            )
            context = otel_trace.set_span_in_context(NonRecordingSpan(parent), Context())
        ids.next_span_id = int(span_id(plan.run_id, planned.key), 16)
        start = _nanos(planned.start)
        span = tracer.start_span(
            planned.name,
            context=context,
            kind=SpanKind.CLIENT if planned.client else SpanKind.INTERNAL,
            attributes={k: v for k, v in planned.attrs.items() if v is not None},
            start_time=start,
        )
        span.set_status(
            Status(StatusCode.ERROR, planned.error) if planned.error else Status(StatusCode.OK)
        )
        span.end(end_time=max(start, _nanos(planned.end)))
    provider.shutdown()
    return collected.spans


# ---- OTLP/JSON --------------------------------------------------------------------------------


def _hex_ids(node: Any) -> Any:
    """OTLP/JSON writes trace and span ids as hex, where protobuf's JSON mapping has base64."""
    if isinstance(node, dict):
        return {
            k: base64.b64decode(v).hex()
            if k in ("traceId", "spanId", "parentSpanId") and isinstance(v, str)
            else _hex_ids(v)
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_hex_ids(v) for v in node]
    return node


def spans_to_otlp(spans: Sequence[ReadableSpan]) -> dict[str, Any]:
    """SDK spans as an OTLP/JSON ``ExportTraceServiceRequest`` (the SDK's own encoding)."""
    from google.protobuf.json_format import MessageToDict
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

    payload = MessageToDict(encode_spans(spans), use_integers_for_enums=True)
    return _hex_ids(payload)  # type: ignore[no-any-return]


def request_to_otlp(body: bytes) -> dict[str, Any]:
    """An OTLP/HTTP protobuf request body (what :func:`export_spans` sends) as OTLP/JSON."""
    _require_sdk()
    from google.protobuf.json_format import MessageToDict
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    request = ExportTraceServiceRequest.FromString(body)
    return _hex_ids(MessageToDict(request, use_integers_for_enums=True))  # type: ignore[no-any-return]


def run_to_otlp(trace: RunTrace) -> dict[str, Any]:
    """One run as an OTLP/JSON export request."""
    return spans_to_otlp(build_spans(trace))


def run_spans(trace: RunTrace) -> list[dict[str, Any]]:
    """The spans of one run as OTLP/JSON span objects, root first."""
    (resource,) = run_to_otlp(trace)["resourceSpans"]
    (scope,) = resource["scopeSpans"]
    return scope["spans"]  # type: ignore[no-any-return]


def write_otlp(trace: RunTrace, out: str | Path) -> int:
    """Write a run's spans as OTLP/JSON to ``out``; returns the number of spans."""
    payload = run_to_otlp(trace)
    Path(out).write_text(json.dumps(payload, indent=1), encoding="utf-8")
    return sum(len(s["spans"]) for r in payload["resourceSpans"] for s in r["scopeSpans"])


# ---- OTLP/HTTP --------------------------------------------------------------------------------


def traces_url(endpoint: str) -> str:
    """``<endpoint>/v1/traces`` unless the endpoint already names that path."""
    endpoint = endpoint.rstrip("/")
    return endpoint if endpoint.endswith("/v1/traces") else endpoint + "/v1/traces"


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextmanager
def _exporter_log() -> Iterator[_Capture]:
    # The SDK exporter reports why an export failed only in its log: keep those lines for
    # the error message.
    capture = _Capture()
    logger = logging.getLogger("opentelemetry.exporter")
    logger.addHandler(capture)
    try:
        yield capture
    finally:
        logger.removeHandler(capture)


@functools.lru_cache(maxsize=16)
def _exporter(
    url: str, headers: tuple[tuple[str, str], ...], timeout: float
) -> tuple[Any, threading.Lock]:
    """One OTLP/HTTP exporter per backend, kept (a cache): its HTTP session, and so its
    connection, is reused by every run the process exports there, one export at a time."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter(endpoint=url, headers=dict(headers), timeout=timeout), threading.Lock()


def export_spans(
    spans: Sequence[ReadableSpan],
    endpoint: str,
    *,
    headers: Mapping[str, str] | None = None,
    timeout: float = 10.0,
) -> int:
    """Send SDK spans with the standard OTLP/HTTP exporter; returns how many were sent.

    ``headers`` (an API key for a hosted backend, say) are registered as secrets, so no
    trace, log line or export of this process shows them.
    """
    _require_sdk()
    from opentelemetry.sdk.trace.export import SpanExportResult

    from expertgraph.traces.redact import register_secret

    for value in (headers or {}).values():
        register_secret(value)
    url = traces_url(endpoint)
    exporter, lock = _exporter(url, tuple(sorted((headers or {}).items())), timeout)
    with lock, _exporter_log() as log:
        result = exporter.export(list(spans))
    if result is not SpanExportResult.SUCCESS:
        why = "; ".join(log.messages)[:500] or "no reason given"
        raise TraceError(f"OpenTelemetry export of {len(spans)} spans to {url} failed: {why}")
    return len(spans)


def export_run(
    trace: RunTrace,
    endpoint: str,
    *,
    headers: Mapping[str, str] | None = None,
    timeout: float = 10.0,
) -> int:
    """Send one run's spans to an OTLP/HTTP backend (``<endpoint>/v1/traces``); returns
    how many were sent."""
    return export_spans(build_spans(trace), endpoint, headers=headers, timeout=timeout)
