"""A self-contained HTML report of one run or a whole trace directory.

The page holds the step-by-step route (router scores, chosen experts), every candidate
(answer, text or tool calls, error, cost, latency), the votes and winner, the agent's turns
(each step's chosen action and its tool results), attribution bars (Shapley and
leave-one-out, when given) and PNG plots (matplotlib) of expert usage, cost and score,
embedded as base64 data URIs: no script, no external asset, one file to mail around.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from expertgraph.core.errors import TraceError
from expertgraph.core.tools import ToolCall
from expertgraph.core.types import candidate_key
from expertgraph.traces.attribution import RunAttribution
from expertgraph.traces.labels import Label, LabelStore
from expertgraph.traces.store import RunTrace

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#1d232a;
max-width:1200px}
h1{font-size:22px}h2{font-size:18px;margin-top:32px;border-bottom:1px solid #d0d7de}
h3{font-size:15px}
table{border-collapse:collapse;margin:8px 0;font-size:13px}
th,td{border:1px solid #d0d7de;padding:4px 8px;vertical-align:top;text-align:left}
th{background:#f3f5f7}.num{text-align:right;font-variant-numeric:tabular-nums}
.win{background:#e6f6ea}.err{color:#b42318}.muted{color:#667085}
pre{white-space:pre-wrap;max-width:520px;margin:0;font-size:12px}
.bar{display:inline-block;height:12px;background:#2f6fdd;vertical-align:middle}
.bar.neg{background:#d92d20}.plots img{max-width:560px;margin:6px;border:1px solid #eaecf0}
dl{display:grid;grid-template-columns:max-content 1fr;gap:2px 12px;font-size:13px}
dt{font-weight:600}
"""


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _num(value: float | None, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}g}"


def _png(fig: Any) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _bar_plot(title: str, values: dict[str, float], ylabel: str) -> str:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.0))
    names = list(values) or ["(none)"]
    heights = [values.get(n, 0.0) for n in names]
    colors = ["#d92d20" if h < 0 else "#2f6fdd" for h in heights]
    ax.bar(names, heights, color=colors)
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    ax.axhline(0, color="#667085", linewidth=0.8)
    ax.tick_params(axis="x", labelrotation=30)
    return _png(fig)


def _plots(
    traces: Sequence[RunTrace], attributions: dict[str, RunAttribution]
) -> list[tuple[str, str, str]]:
    """(id, title, data URI) of each plot over the given runs."""
    calls: Counter[str] = Counter()
    wins: Counter[str] = Counter()
    cost: Counter[str] = Counter()
    score_sum: Counter[str] = Counter()
    score_n: Counter[str] = Counter()
    for trace in traces:
        for step in trace.steps():
            winners = set(step.result.winner) if step.result else set()
            for g in step.generations:
                calls[g.expert] += 1
                cost[g.expert] += g.cost
                if candidate_key(g) in winners:
                    wins[g.expert] += 1
            for name, score in step.decision.scores.items():
                score_sum[name] += score
                score_n[name] += 1
    names = sorted(set(calls) | set(score_n))
    plots = [
        (
            "plot-usage",
            "Expert usage (calls)",
            _bar_plot("Calls per expert", {n: calls[n] for n in names}, "calls"),
        ),
        (
            "plot-wins",
            "Candidates in the winning answer",
            _bar_plot("Winning candidates", {n: wins[n] for n in names}, "steps"),
        ),
        (
            "plot-cost",
            "Cost per expert",
            _bar_plot("Cost per expert", {n: cost[n] for n in names}, "cost"),
        ),
        (
            "plot-score",
            "Mean router score",
            _bar_plot(
                "Mean router score",
                {n: score_sum[n] / score_n[n] for n in names if score_n[n]},
                "score",
            ),
        ),
    ]
    if attributions:
        total: Counter[str] = Counter()
        for attribution in attributions.values():
            for name, value in attribution.run_shapley.items():
                total[name] += value
        plots.append(
            (
                "plot-shapley",
                "Shapley value per expert",
                _bar_plot("Shapley value (sum over runs)", dict(total), "value"),
            )
        )
    return plots


def _bars(values: dict[str, float]) -> str:
    if not values:
        return "<span class='muted'>-</span>"
    scale = max((abs(v) for v in values.values()), default=0.0) or 1.0
    rows = []
    for name, value in sorted(values.items(), key=lambda kv: -kv[1]):
        width = int(round(120 * abs(value) / scale))
        cls = "bar neg" if value < 0 else "bar"
        rows.append(
            f"<div class='attr'><span class='{cls}' style='width:{width}px'></span> "
            f"<b>{_e(name)}</b> {_num(value)}</div>"
        )
    return "".join(rows)


def _calls_html(calls: Sequence[ToolCall]) -> str:
    return "".join(
        f"<div><b>{_e(c.name)}</b> <code>{_e(json.dumps(c.arguments, ensure_ascii=False))}</code>"
        + (f" <span class='err'>{_e(c.invalid)}</span>" if c.invalid else "")
        + "</div>"
        for c in calls
    )


def _turns_section(trace: RunTrace) -> str:
    """The agent's turns: each step that acted, its chosen calls and what each returned."""
    records = trace.tool_records()
    acting = [s for s in trace.steps() if s.result is not None and s.result.tool_calls]
    end = trace.end
    if not records and not acting:
        return ""
    rows = []
    for step in acting:
        assert step.result is not None
        ran = [r for r in records if r.step == step.index]
        for i, call in enumerate(step.result.tool_calls):
            record = next((r for r in ran if r.index == i), None)
            if record is None:
                result = "<span class='muted'>not executed (for the caller)</span>"
                latency = "-"
            elif record.error:
                result = f"<span class='err'><pre>{_e(record.result)}</pre></span>"
                latency = f"{_num(record.latency_s, 3)}s"
            else:
                result = f"<pre>{_e(record.result)}</pre>"
                latency = f"{_num(record.latency_s, 3)}s"
            rows.append(
                f"<tr><td class='num'>{step.index}</td><td>{_e(call.id)}</td>"
                f"<td>{_calls_html([call])}</td><td>{result}</td>"
                f"<td class='num'>{latency}</td></tr>"
            )
    pending = (
        f"<p class='muted'>ended on calls for the caller: {_calls_html(end.tool_calls)}</p>"
        if end is not None and end.tool_calls
        else ""
    )
    return (
        "<h3>Agent turns</h3><table class='turns'><tr><th>step</th><th>call id</th>"
        f"<th>action</th><th>result</th><th>latency</th></tr>{''.join(rows)}</table>{pending}"
    )


def _run_section(
    trace: RunTrace, labels: dict[int | None, Label], attribution: RunAttribution | None
) -> str:
    start, end = trace.start, trace.end
    run_id = trace.run_id
    run_label = labels.get(None)
    attr_steps = {s.step: s for s in attribution.steps} if attribution else {}
    parts = [
        f"<section class='run' id='run-{_e(run_id)}'><h2>Run {_e(run_id)}</h2><dl>",
        f"<dt>task</dt><dd><pre>{_e(start.task.text)}</pre></dd>",
        f"<dt>policy</dt><dd>{_e(start.policy)}</dd><dt>aggregator</dt><dd>{_e(start.aggregator)}</dd>",
        f"<dt>experts</dt><dd>{_e(', '.join(e.name for e in start.experts))}</dd>",
        f"<dt>answer</dt><dd><pre>{_e(end.answer if end else None)}</pre></dd>",
        (
            "<dt>stop reason</dt>"
            f"<dd>{_e(end.stop_reason if end else 'incomplete: no run_end record')}</dd>"
        ),
    ]
    if end:
        parts.append(
            f"<dt>usage</dt><dd>{end.usage.calls} calls, "
            f"{end.usage.input_tokens}+{end.usage.output_tokens} tokens, "
            f"cost {_num(end.usage.cost)}, {_num(end.latency_s, 3)} s</dd>"
        )
    if run_label:
        parts.append(f"<dt>label</dt><dd>score {_num(run_label.score)} {_e(run_label.note)}</dd>")
    if not start.capture.content:
        parts.append(
            "<dt>content</dt><dd class='muted'>not captured (prompts and outputs omitted)</dd>"
        )
    parts.append("</dl>")
    parts.append(
        f"<table class='steps' id='steps-{_e(run_id)}'><thead><tr><th>step</th><th>instruction</th>"
        "<th>route</th><th>candidates</th><th>votes</th><th>result</th><th>attribution</th></tr></thead><tbody>"
    )
    for step in trace.steps():
        d = step.decision
        route = (
            f"<div><b>{_e(d.policy)}</b> ({_e(d.mode)})</div>"
            f"<div>chose {_e(', '.join(d.experts))}</div>"
            + "".join(
                f"<div class='muted'>{_e(n)}: {_num(s, 3)}</div>"
                for n, s in sorted(d.scores.items(), key=lambda kv: -kv[1])
            )
            + (f"<div class='muted'>{_e(d.rationale)}</div>" if d.rationale else "")
        )
        result = step.result
        answers: dict[str, str] = {}
        if result:
            for answer, keys in result.supporters.items():
                for key in keys:
                    answers[key] = answer
        winners = set(result.winner) if result else set()
        rows = []
        for g in step.generations:
            key = candidate_key(g)
            cls = "win" if key in winners else ""
            body = (
                f"<span class='err'>{_e(g.error.type)}: {_e(g.error.message)}</span>"
                if g.error
                else f"<pre>{_e(g.text[:600])}</pre>" + _calls_html(g.tool_calls)
            )
            rows.append(
                f"<tr class='{cls}'><td>{_e(key)}</td><td>{_e(answers.get(key, '-'))}</td>"
                f"<td>{body}</td><td class='num'>{_num(g.cost)}</td>"
                f"<td class='num'>{_num(g.latency_s, 3)}s</td></tr>"
            )
        candidates = (
            "<table class='candidates'><tr><th>candidate</th><th>answer</th><th>text</th>"
            f"<th>cost</th><th>latency</th></tr>{''.join(rows)}</table>"
        )
        votes = "".join(
            f"<div>{_e(a)}: {_num(v, 3)}</div>"
            for a, v in sorted((result.votes if result else {}).items(), key=lambda kv: -kv[1])
        )
        outcome = (
            f"<div><b>{_e(result.comparable)}</b></div>"
            f"<div class='muted'>confidence {_num(result.confidence, 3)}, "
            f"margin {_num(result.margin, 3)}</div>"
            f"<div class='muted'>{_e(result.stop_reason)}</div>"
            if result
            else "<span class='muted'>no result</span>"
        )
        attr = attr_steps.get(step.index)
        attribution_html = (
            f"<div class='muted'>Shapley ({_e(attr.value_source)}, {_e(attr.result.method)})</div>"
            f"{_bars(attr.result.shapley)}<div class='muted'>leave-one-out</div>"
            f"{_bars(attr.result.leave_one_out)}"
            if attr
            else "<span class='muted'>-</span>"
        )
        step_label = labels.get(step.index)
        label_html = f"<div>label {_num(step_label.score)}</div>" if step_label else ""
        parts.append(
            f"<tr class='step'><td class='num'>{step.index}</td>"
            f"<td><pre>{_e(step.instruction)}</pre>{label_html}</td>"
            f"<td>{route}</td><td>{candidates}</td><td>{votes}</td><td>{outcome}</td><td>{attribution_html}</td></tr>"
        )
    parts.append("</tbody></table>")
    parts.append(_turns_section(trace))
    if attribution and attribution.steps:
        parts.append(
            "<h3>Run attribution</h3>"
            f"<div class='run-attribution'>{_bars(attribution.run_shapley)}</div>"
        )
    parts.append("</section>")
    return "".join(parts)


def render_report(
    traces: Sequence[RunTrace],
    *,
    labels: dict[str, dict[int | None, Label]] | None = None,
    attributions: dict[str, RunAttribution] | None = None,
    title: str = "expertgraph trace report",
) -> str:
    """The HTML page for the given runs."""
    labels = labels or {}
    attributions = attributions or {}
    plots = _plots(traces, attributions)
    total_cost = sum(t.end.usage.cost for t in traces if t.end)
    head = (
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{_e(title)}</title>"
        f"<style>{_CSS}</style></head><body><h1>{_e(title)}</h1>"
        f"<p class='muted'>{len(traces)} run(s), total cost {_num(total_cost)}, generated "
        f"{_e(time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime()))}</p>"
    )
    runs_table = ""
    if len(traces) > 1:
        run_labels = [labels.get(t.run_id, {}).get(None) for t in traces]
        rows = "".join(
            f"<tr><td><a href='#run-{_e(t.run_id)}'>{_e(t.run_id)}</a></td>"
            f"<td>{_e(t.start.policy)}</td><td class='num'>{len(t.steps())}</td>"
            f"<td class='num'>{_num(t.end.usage.cost if t.end else None)}</td>"
            f"<td>{_e(t.end.stop_reason if t.end else 'incomplete')}</td>"
            f"<td class='num'>{_num(run_label.score if run_label else None)}</td></tr>"
            for t, run_label in zip(traces, run_labels)
        )
        runs_table = (
            "<h2>Runs</h2><table id='runs'><tr><th>run</th><th>policy</th><th>steps</th>"
            f"<th>cost</th><th>stop reason</th><th>label</th></tr>{rows}</table>"
        )
    plot_html = (
        "<h2>Plots</h2><div class='plots'>"
        + "".join(
            f"<img class='plot' id='{pid}' alt='{_e(ptitle)}' title='{_e(ptitle)}' src='{uri}'>"
            for pid, ptitle, uri in plots
        )
        + "</div>"
    )
    sections = "".join(
        _run_section(t, labels.get(t.run_id, {}), attributions.get(t.run_id)) for t in traces
    )
    return head + runs_table + plot_html + sections + "</body></html>"


def write_report(
    directory: str | Path,
    target: str,
    out: str | Path,
    *,
    attribute: Any | None = None,
    max_runs: int = 50,
    session: str | None = None,
) -> int:
    """Write the report of one run (``target`` a run id or trace file) or of a whole directory
    (``target`` the directory). ``attribute(trace, labels) -> RunAttribution`` adds the
    attribution bars. ``session`` keeps a directory's runs of one conversation (the task's
    ``metadata["session"]``, which ``expertgraph serve`` sets): a client-driven agent's whole
    run. Returns the number of runs in the report."""
    target_path = Path(target)
    if target_path.is_dir():
        store = LabelStore(target_path)
        traces = [store.traces.load(r) for r in store.traces.run_ids()]
        if session is not None:
            traces = [t for t in traces if t.start.task.metadata.get("session") == session]
            if not traces:
                raise TraceError(f"no run of session {session!r} in {target_path}")
        traces = traces[-max_runs:]
    else:
        store = LabelStore(directory)
        traces = [store.traces.load(target)]
    labels = {t.run_id: store.latest(t.run_id) for t in traces}
    attributions: dict[str, RunAttribution] = {}
    if attribute is not None:
        for t in traces:
            if t.capture.content:
                attributions[t.run_id] = attribute(t, labels[t.run_id])
    title = (
        f"expertgraph run {traces[0].run_id}"
        if len(traces) == 1 and not target_path.is_dir()
        else f"expertgraph session {session}: {target_path}"
        if session is not None
        else f"expertgraph traces: {target_path}"
    )
    page = render_report(traces, labels=labels, attributions=attributions, title=title)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(page, encoding="utf-8")
    return len(traces)
