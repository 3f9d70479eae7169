"""OpenTelemetry export: a run as OTLP/JSON spans, without the OpenTelemetry SDK.

One span per run, per step, per routing decision and per expert call, parent-linked:
run -> step -> (route, call ...); a finish decision hangs off the run. Attributes follow the
OpenTelemetry GenAI semantic conventions (``gen_ai.operation.name``,
``gen_ai.request.model``, ``gen_ai.usage.input_tokens`` ...) and OpenInference
(``openinference.span.kind``, ``llm.model_name``, ``llm.token_count.*``, ``input.value``
...), plus ``expertgraph.*`` for routing and voting. Ids are derived from the run id, so
exporting a run twice gives the same spans. Prompts and outputs (``input.value``,
``output.value``) appear only when the trace captured content; the trace was redacted
when it was written.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from expertgraph.traces.schema import (
    AggregateRecord,
    CallRecord,
    RouteRecord,
    StepEnd,
    ToolRecord,
)
from expertgraph.traces.store import RunTrace

SCOPE = "expertgraph.traces"
SPAN_KIND_INTERNAL = 1
SPAN_KIND_CLIENT = 3
STATUS_UNSET, STATUS_OK, STATUS_ERROR = 0, 1, 2


def _id(run_id: str, key: str, hex_len: int) -> str:
    return hashlib.sha256(f"{run_id}\x00{key}".encode()).hexdigest()[:hex_len]


def trace_id(run_id: str) -> str:
    """The 32-hex-digit OTel trace id of a run."""
    return _id(run_id, "trace", 32)


def span_id(run_id: str, key: str) -> str:
    return _id(run_id, key, 16)


def _value(value: Any) -> dict[str, Any]:
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, int):
        return {"intValue": str(value)}  # OTLP/JSON writes 64-bit integers as strings
    if isinstance(value, float):
        return {"doubleValue": value}
    if isinstance(value, (list, tuple)):
        return {"arrayValue": {"values": [_value(v) for v in value]}}
    return {"stringValue": str(value)}


def _attributes(attrs: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"key": k, "value": _value(v)} for k, v in attrs.items() if v is not None]


def _nanos(ts: float) -> str:
    return str(int(round(ts * 1e9)))


def _span(
    run_id: str,
    key: str,
    parent: str | None,
    name: str,
    start: float,
    end: float,
    attrs: dict[str, Any],
    *,
    kind: int = SPAN_KIND_INTERNAL,
    error: str | None = None,
) -> dict[str, Any]:
    span: dict[str, Any] = {
        "traceId": trace_id(run_id),
        "spanId": span_id(run_id, key),
        "name": name,
        "kind": kind,
        "startTimeUnixNano": _nanos(start),
        "endTimeUnixNano": _nanos(max(start, end)),
        "attributes": _attributes(attrs),
        "status": {"code": STATUS_ERROR, "message": error} if error else {"code": STATUS_OK},
    }
    if parent is not None:
        span["parentSpanId"] = parent
    return span


def _provider(model: str | None, kind: str) -> str:
    if model and "/" in model:
        return model.split("/", 1)[0]
    return {"local": "huggingface", "callable": "python"}.get(kind, kind)


def run_spans(trace: RunTrace) -> list[dict[str, Any]]:
    """The spans of one run, root first."""
    start = trace.start
    run_id = trace.run_id
    content = start.capture.content
    experts = {e.name: e for e in start.experts}
    end_record = trace.end
    last_ts = max(r.ts for r in trace.records)
    run_key = span_id(run_id, "run")
    usage = end_record.usage if end_record else None
    spans = [
        _span(
            run_id,
            "run",
            None,
            f"invoke_agent {start.config.get('name', 'expertgraph')}",
            start.ts,
            end_record.ts if end_record else last_ts,
            {
                "gen_ai.operation.name": "invoke_agent",
                "gen_ai.agent.name": str(start.config.get("name", "expertgraph")),
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
            else (
                end_record.stop_reason if end_record else "run did not finish (no run_end record)"
            ),
        )
    ]
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
        spans.append(
            _span(
                run_id,
                f"step/{index}",
                run_key,
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
        )
    previous_ts = start.ts
    for record in trace.records:
        if isinstance(record, RouteRecord):
            d = record.decision
            parent = (
                span_id(run_id, f"step/{record.step}")
                if (d.action == "call" and record.step in step_bounds)
                else run_key
            )
            spans.append(
                _span(
                    run_id,
                    f"route/{record.seq}",
                    parent,
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
            )
        elif isinstance(record, CallRecord):
            g = record.generation
            info = experts.get(g.expert)
            model = (info.model if info else None) or g.model or g.expert
            kind = info.kind if info else "expert"
            params = g.params or {}
            spans.append(
                _span(
                    run_id,
                    f"call/{record.seq}",
                    span_id(run_id, f"step/{record.step}")
                    if record.step in step_bounds
                    else run_key,
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
                    kind=SPAN_KIND_CLIENT,
                    error=f"{g.error.type}: {g.error.message}" if g.error else None,
                )
            )
        elif isinstance(record, ToolRecord):
            spans.append(
                _span(
                    run_id,
                    f"tool/{record.seq}",
                    span_id(run_id, f"step/{record.step}")
                    if record.step in step_bounds
                    else run_key,
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
            )
        previous_ts = record.ts
    return spans


def _float(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else None


def to_otlp(spans: list[dict[str, Any]]) -> dict[str, Any]:
    """Wrap spans in the OTLP/JSON ``ExportTraceServiceRequest`` shape."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        scope_version = version("expertgraph")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        scope_version = "0"
    return {
        "resourceSpans": [
            {
                "resource": {"attributes": _attributes({"service.name": "expertgraph"})},
                "scopeSpans": [
                    {"scope": {"name": SCOPE, "version": scope_version}, "spans": spans}
                ],
            }
        ]
    }


def run_to_otlp(trace: RunTrace) -> dict[str, Any]:
    """One run as an OTLP/JSON export request."""
    return to_otlp(run_spans(trace))


def write_otlp(trace: RunTrace, out: str | Path) -> int:
    """Write a run's spans as OTLP/JSON to ``out``; returns the number of spans."""
    payload = run_to_otlp(trace)
    Path(out).write_text(json.dumps(payload, indent=1), encoding="utf-8")
    return len(payload["resourceSpans"][0]["scopeSpans"][0]["spans"])


def post_spans(
    payload: dict[str, Any],
    endpoint: str,
    *,
    headers: dict[str, str] | None = None,
    timeout: float = 10.0,
) -> int:
    """POST an OTLP/JSON payload to a collector (``<endpoint>/v1/traces``); returns the status."""
    import httpx

    url = (
        endpoint
        if endpoint.rstrip("/").endswith("/v1/traces")
        else endpoint.rstrip("/") + "/v1/traces"
    )
    response = httpx.post(
        url,
        json=payload,
        headers={"Content-Type": "application/json", **(headers or {})},
        timeout=timeout,
    )
    response.raise_for_status()
    return response.status_code
