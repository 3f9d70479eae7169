"""``expertgraph traces``: label, summary/index, replay, export, report (headless Chromium),
otel.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import threading
import time
from contextlib import redirect_stdout
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from expertgraph.agents.callable import CallableExpert
from expertgraph.core.errors import ExpertCallError, TraceError
from expertgraph.core.types import AnswerFormat, PlanStep, RoutingExample, Task
from expertgraph.orchestrator.cli import main
from expertgraph.orchestrator.orchestrator import Orchestrator
from expertgraph.policies.aggregation.voting import MajorityVote
from expertgraph.policies.routing.fixed import AllExperts, FixedPolicy
from expertgraph.traces.analysis import summarize
from expertgraph.traces.index import TraceIndex
from expertgraph.traces.labels import LabelStore
from expertgraph.traces.otel import request_to_otlp
from expertgraph.traces.schema import CallRecord, RouteRecord
from expertgraph.traces.store import TraceStore, load_run

PRICES = {"good": 0.002, "cheap": 0.0005, "flaky": 0.001}
# Calls per expert over the 4 runs of `_record_runs`: flaky is down on odd numbers, so in
# runs 1 and 3 it fails step 0 -- every call it had -- and step 1 is routed around it.
ROUTED = {"good": 8, "cheap": 8, "flaky": 6}


def _answer(name: str, text: str) -> dict[str, Any]:
    question = text.strip().splitlines()[-1]
    a, b = (int(x) for x in re.findall(r"\d+", question)[:2])
    time.sleep(0.002 * (1 + len(name)))  # distinct, measurable latencies
    if name == "flaky" and a % 2:
        raise ExpertCallError(f"flaky is down for {question}", type="server_error", attempts=3)
    value = a + b if name != "cheap" or a % 3 else a + b + 1  # cheap is wrong on multiples of 3
    words = len(question.split())
    return {
        "text": f"{a} + {b} = {value}",
        "input_tokens": words,
        "output_tokens": 5,
        "cost": PRICES[name] * words,
    }


def _experts() -> list[CallableExpert]:
    return [CallableExpert(n, (lambda t, n=n: _answer(n, t))) for n in PRICES]


def _record_runs(
    directory: Path, n: int = 4, policy: Any = None, **trace_options: Any
) -> list[str]:
    orch = Orchestrator(
        _experts(),
        policy or AllExperts(),
        MajorityVote(),
        trace_dir=directory,
        trace_options=trace_options,
    )
    run_ids = []
    for i in range(n):
        plan = [PlanStep(instruction=f"Add {i + j} and {10 * j + 1}") for j in range(2)]
        result = orch.run(
            Task(prompt=f"sums #{i}", plan=plan, answer_format=AnswerFormat(kind="number"))
        )
        run_ids.append(result.run_id)
    orch.trace_store.flush()  # indexing and live export run in the background
    return run_ids


def _cli(*argv: str) -> str:
    out = io.StringIO()
    with redirect_stdout(out):
        code = main(list(argv))
    assert code == 0, out.getvalue()
    return out.getvalue()


def _last_json(text: str) -> Any:
    return json.loads(text.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("traces")
    _record_runs(directory)
    return directory


def test_summary_matches_the_recorded_calls(recorded: Path) -> None:
    summary = summarize(recorded)
    experts = summary.experts.set_index("expert")
    calls: dict[str, list[Any]] = {}
    routed: dict[str, int] = {}
    decisions = finishes = 0
    for path in sorted(recorded.glob("2*.jsonl")):
        for record in load_run(path).records:
            if isinstance(record, CallRecord):
                calls.setdefault(record.generation.expert, []).append(record.generation)
            elif isinstance(record, RouteRecord):
                decisions += 1
                finishes += record.decision.action == "finish"
                for name in record.decision.experts if record.decision.action == "call" else []:
                    routed[name] = routed.get(name, 0) + 1
    assert set(experts.index) == set(PRICES)
    for name, gens in calls.items():
        row = experts.loc[name]
        latencies = [g.latency_s for g in gens]
        assert row["calls"] == len(gens) and row["routed"] == routed[name] == ROUTED[name]
        assert row["errors"] == sum(not g.ok for g in gens)
        assert row["retries"] == sum(g.attempts - 1 for g in gens)
        assert row["tokens"] == sum(g.input_tokens + g.output_tokens for g in gens)
        assert row["cost"] == pytest.approx(sum(g.cost for g in gens))
        assert row["latency_p50_s"] == pytest.approx(np.percentile(latencies, 50))
        assert row["latency_p95_s"] == pytest.approx(np.percentile(latencies, 95))
        assert row["router_score"] == pytest.approx(1.0)  # AllExperts scores everyone 1
    assert experts.loc["flaky", "errors"] == 4 and experts.loc["flaky", "retries"] == 8
    assert experts.loc["good", "winning"] == 8  # good is always in the majority
    policies = summary.policies.set_index("policy")
    assert (
        policies.loc["all", "decisions"] == decisions == 8
    )  # a finished plan needs no finish decision
    assert policies.loc["all", "finishes"] == finishes
    assert policies.loc["all", "mean_experts"] == sum(ROUTED.values()) / 8
    printed = _cli("traces", "summary", str(recorded), "--json")
    assert "Experts" in printed and "Policies" in printed
    data = _last_json(printed)
    assert {e["expert"]: e["calls"] for e in data["experts"]} == {
        n: len(g) for n, g in calls.items()
    }


def test_index_reads_only_changed_files_and_rebuilds(tmp_path: Path) -> None:
    run_ids = _record_runs(tmp_path, n=2)
    index = TraceIndex(tmp_path)
    assert index.sync() == 0  # every run was indexed as it ended
    assert sorted(index.run_ids()) == sorted(run_ids)
    # Garble an indexed file but keep its size and mtime: sync must not read it.
    path = tmp_path / f"{run_ids[0]}.jsonl"
    stat = path.stat()
    original = path.read_bytes()
    path.write_bytes(b"x" * len(original))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert index.sync() == 0
    path.write_bytes(original)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    # A deleted run leaves the index; rebuild recreates the same rows from the files.
    before = index.query("SELECT COUNT(*) AS n FROM calls")[0]["n"]
    (tmp_path / f"{run_ids[1]}.jsonl").unlink()
    index.sync()
    assert index.run_ids() == [run_ids[0]]
    assert index.rebuild() == 1
    # Run 0 called all three experts twice; run 1 routed step 1 around flaky (down at step 0).
    assert before == 6 + 5
    assert index.query("SELECT COUNT(*) AS n FROM calls")[0]["n"] == 6
    out = _cli("traces", "index", str(tmp_path), "--rebuild")
    assert "rebuilt" in out


def test_label_export_rows_follow_the_documented_scores(tmp_path: Path) -> None:
    run_ids = _record_runs(tmp_path, n=3)
    out = _cli("traces", "label", run_ids[0], "--score", "1", "--dir", str(tmp_path))
    assert "labelled" in out
    _cli(
        "traces",
        "label",
        run_ids[1],
        "--score",
        "1",
        "--step",
        "0",
        "--expected",
        "99",
        "--dir",
        str(tmp_path),
    )
    _cli("traces", "label", run_ids[2], "--score", "0", "--dir", str(tmp_path))
    labels = LabelStore(tmp_path)
    assert labels.latest(run_ids[0])[None].score == 1.0
    raw = (tmp_path / f"{run_ids[0]}.labels.jsonl").read_text()
    assert raw.count("\n") == 1 and json.loads(raw)["run_id"] == run_ids[0]
    with pytest.raises(TraceError, match="no step 7"):
        labels.add(run_ids[0], 1.0, step=7)
    assert main(["traces", "label", "nope", "--score", "1", "--dir", str(tmp_path)]) == 2

    dataset = tmp_path / "routing.jsonl"
    printed = _cli("traces", "export", str(tmp_path), "--dataset", str(dataset))
    rows = [RoutingExample.model_validate_json(line) for line in dataset.read_text().splitlines()]
    assert len(rows) == 6 and "wrote 6 examples" in printed
    by_id = {r.id: r for r in rows}
    traces = {r: load_run(tmp_path / f"{r}.jsonl") for r in run_ids}
    for run_id, trace in traces.items():
        for step in trace.steps():
            row = by_id[f"{run_id}/{step.index}"]
            assert row.prompt == step.instruction
            for g in step.generations:
                assert row.costs[g.expert] == pytest.approx(g.cost)
            answers = {k: a for a, keys in step.result.supporters.items() for k in keys}  # type: ignore[union-attr]
            source = row.meta["score_source"]
            for g in step.generations:
                mine = answers.get(f"{g.expert}#0")
                if source == "agreement" or (source == "label" and row.meta["label_score"] >= 0.5):
                    expected = 1.0 if mine == step.result.answer else 0.0  # type: ignore[union-attr]
                    if source == "label":
                        expected *= row.meta["label_score"]
                    assert row.scores[g.expert] == expected
                elif source == "label-expected":
                    assert row.scores[g.expert] == (1.0 if mine == "99" else 0.0)
                elif mine == step.result.answer:  # type: ignore[union-attr]
                    assert row.scores[g.expert] == 0.0  # the labelled answer was wrong
                elif mine is not None:
                    assert g.expert not in row.scores and g.expert in row.meta["unscored"]
    assert by_id[f"{run_ids[0]}/1"].meta["score_source"] == "label"  # run label -> final step
    assert by_id[f"{run_ids[0]}/0"].meta["score_source"] == "agreement"
    assert by_id[f"{run_ids[1]}/0"].meta["score_source"] == "label-expected"
    assert all(v == 0.0 for v in by_id[f"{run_ids[1]}/0"].scores.values())  # nobody said 99
    only = tmp_path / "labelled.jsonl"
    _cli("traces", "export", str(tmp_path), "--dataset", str(only), "--labelled-only")
    assert len(only.read_text().splitlines()) == 3


def test_replay_of_other_policies_on_recorded_runs(recorded: Path) -> None:
    data = _last_json(
        _cli(
            "traces",
            "replay",
            str(recorded),
            "--policy",
            "fixed",
            "--option",
            "experts=[cheap]",
            "--json",
        )
    )
    # Every step recorded all three experts, so every step can be evaluated.
    assert data["steps"] == 8 and data["evaluated"] == 8 and data["unevaluable_share"] == 0.0
    # Ground truth from the recorded texts: cheap agrees with the majority unless a % 3 == 0.
    agree = cost = 0.0
    for path in sorted(recorded.glob("2*.jsonl")):
        for step in load_run(path).steps():
            gen = next(g for g in step.generations if g.expert == "cheap")
            agree += gen.text.split()[-1] == step.result.answer  # type: ignore[union-attr]
            cost += gen.cost
    assert data["mean_score"] == pytest.approx(agree / 8) and agree < 8
    assert data["mean_cost"] == pytest.approx(cost / 8)
    assert data["baseline_mean_score"] == 1.0 and data["chosen"] == {"cheap": 8}
    spec = recorded.parent / "policy.yaml"
    spec.write_text("policy:\n  name: fixed\n  experts: [good]\naggregator: majority\n")
    data = _last_json(_cli("traces", "replay", str(recorded), "--policy", str(spec), "--json"))
    assert data["mean_score"] == 1.0 and data["aggregator"] == "majority"


def test_replay_cannot_evaluate_experts_that_were_not_recorded(tmp_path: Path) -> None:
    _record_runs(tmp_path, n=2, policy=FixedPolicy(["good"]))
    data = _last_json(
        _cli(
            "traces",
            "replay",
            str(tmp_path),
            "--policy",
            "fixed",
            "--option",
            "experts=[cheap]",
            "--json",
        )
    )
    assert data["steps"] == 4 and data["evaluated"] == 0 and data["unevaluable_share"] == 1.0
    assert data["mean_score"] is None
    data = _last_json(
        _cli(
            "traces",
            "replay",
            str(tmp_path),
            "--policy",
            "fixed",
            "--option",
            "experts=[good]",
            "--json",
        )
    )
    assert data["evaluated"] == 4 and data["mean_score"] == 1.0


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    pytest.fail("headless Chromium is needed for the report test: apt-get install -y chromium")


def test_report_renders_in_headless_chromium(recorded: Path, tmp_path: Path) -> None:
    run_id = sorted(p.stem for p in recorded.glob("2*.jsonl"))[0]
    out = tmp_path / "report.html"
    _cli("traces", "report", run_id, "--dir", str(recorded), "--out", str(out))
    page = out.read_text()
    assert (
        "<script" not in page and "http://" not in page and "https://" not in page
    )  # self-contained
    # The check script goes into a copy: it writes each image's decoded size into the DOM.
    probe = (
        "<script>window.addEventListener('load',()=>{"
        "const d=document.createElement('pre');d.id='probe';"
        "d.textContent=JSON.stringify({images:[...document.images]"
        ".map(i=>[i.id,i.complete,i.naturalWidth,i.naturalHeight]),"
        "steps:document.querySelectorAll('table.steps tr.step').length,"
        "candidates:document.querySelectorAll('table.candidates tr').length,"
        "bars:document.querySelectorAll('.attr .bar').length});"
        "document.body.appendChild(d);});</script>"
    )
    checked = tmp_path / "checked.html"
    checked.write_text(page.replace("</body>", probe + "</body>"))
    proc = subprocess.run(
        [
            _chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--virtual-time-budget=5000",
            "--dump-dom",
            checked.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    match = re.search(r'<pre id="probe">(.*?)</pre>', proc.stdout, re.S)
    assert match, proc.stdout[-2000:]
    probe_data = json.loads(match.group(1).replace("&quot;", '"'))
    images = {i[0]: i for i in probe_data["images"]}
    assert {"plot-usage", "plot-cost", "plot-score", "plot-wins", "plot-shapley"} <= set(images)
    for _, complete, width, height in images.values():
        assert complete and width > 100 and height > 100  # the PNGs decoded
    trace = load_run(recorded / f"{run_id}.jsonl")
    assert probe_data["steps"] == len(trace.steps()) == 2
    assert probe_data["candidates"] == sum(
        len(s.generations) + 1 for s in trace.steps()
    )  # + header rows
    assert probe_data["bars"] >= 2 * 3 * 2  # Shapley and leave-one-out bars per expert per step
    assert f"Run {run_id}" in proc.stdout
    # A directory report covers every run.
    _cli("traces", "report", str(recorded), "--out", str(tmp_path / "all.html"), "--no-attribution")
    assert (tmp_path / "all.html").read_text().count("<section class='run'") == 4


def _spans(payload: dict[str, Any]) -> list[dict[str, Any]]:
    (resource,) = payload["resourceSpans"]
    (scope,) = resource["scopeSpans"]
    return scope["spans"]


def _attrs(span: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for item in span["attributes"]:
        ((kind, value),) = item["value"].items()
        out[item["key"]] = int(value) if kind == "intValue" else value
    return out


def test_otel_spans_are_parent_linked_with_genai_attributes(recorded: Path, tmp_path: Path) -> None:
    run_id = sorted(p.stem for p in recorded.glob("2*.jsonl"))[0]
    out = tmp_path / "spans.json"
    _cli("traces", "otel", run_id, "--dir", str(recorded), "--out", str(out))
    spans = _spans(json.loads(out.read_text()))
    trace = load_run(recorded / f"{run_id}.jsonl")
    calls = [r for r in trace.records if isinstance(r, CallRecord)]
    routes = [r for r in trace.records if isinstance(r, RouteRecord)]
    assert len(spans) == 1 + len(trace.steps()) + len(routes) + len(calls)
    ids = {s["spanId"]: s for s in spans}
    assert len(ids) == len(spans) and len({s["traceId"] for s in spans}) == 1
    assert all(
        re.fullmatch(r"[0-9a-f]{32}", s["traceId"]) and re.fullmatch(r"[0-9a-f]{16}", s["spanId"])
        for s in spans
    )
    roots = [s for s in spans if "parentSpanId" not in s]
    assert len(roots) == 1 and _attrs(roots[0])["openinference.span.kind"] == "AGENT"
    for span in spans:
        if span is not roots[0]:
            assert span["parentSpanId"] in ids
        assert int(span["endTimeUnixNano"]) >= int(span["startTimeUnixNano"])
    llm = [s for s in spans if _attrs(s).get("openinference.span.kind") == "LLM"]
    assert len(llm) == len(calls)
    for span, record in zip(
        sorted(llm, key=lambda s: s["name"] + s["startTimeUnixNano"]),
        sorted(calls, key=lambda r: r.generation.expert + str(r.ts - r.generation.latency_s)),
    ):
        a = _attrs(span)
        g = record.generation
        assert a["gen_ai.request.model"] == a["llm.model_name"] == g.expert
        assert a["gen_ai.usage.input_tokens"] == a["llm.token_count.prompt"] == g.input_tokens
        assert a["gen_ai.usage.output_tokens"] == g.output_tokens
        assert ids[span["parentSpanId"]]["name"] == f"expertgraph.step {record.step}"
        assert (span["status"]["code"] == 2) == (g.error is not None)
    route_parents = {
        ids[s["parentSpanId"]]["name"] for s in spans if s["name"].startswith("expertgraph.route")
    }
    assert any(n.startswith("expertgraph.step") for n in route_parents)


class _Collector(BaseHTTPRequestHandler):
    received: list[tuple[str, dict[str, str], bytes]] = []

    def do_POST(self) -> None:  # noqa: N802 - stdlib name
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append((self.path, dict(self.headers), body))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: Any) -> None:
        pass


def test_live_otel_exporter_posts_each_finished_run(tmp_path: Path) -> None:
    _Collector.received = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Collector)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        endpoint = f"http://127.0.0.1:{server.server_address[1]}"
        run_ids = _record_runs(
            tmp_path, n=2, otel_endpoint=endpoint, otel_headers={"x-team": "routing"}
        )
        _cli(
            "traces",
            "otel",
            run_ids[0],
            "--dir",
            str(tmp_path),
            "--endpoint",
            endpoint + "/v1/traces",
        )
    finally:
        server.shutdown()
        server.server_close()
    assert [r[0] for r in _Collector.received] == ["/v1/traces"] * 3
    assert _Collector.received[0][1].get("x-team") == "routing"
    # The exporter is OpenTelemetry's own: OTLP/HTTP protobuf bodies, read back as OTLP/JSON.
    live = [request_to_otlp(r[2]) for r in _Collector.received]
    assert _spans(live[0]) == _spans(live[2])  # same run, same spans (ids derive from the run)
    store = TraceStore(tmp_path)
    # Run 1's flaky fails step 0 and is routed around at step 1: one call fewer.
    for payload, run_id, calls in zip(live[:2], run_ids, (6, 5), strict=True):
        root = next(s for s in _spans(payload) if "parentSpanId" not in s)
        assert _attrs(root)["expertgraph.run_id"] == run_id
        assert len(_spans(payload)) == 1 + 2 + 2 + calls  # run, 2 steps, 2 decisions, calls
    assert store.load(run_ids[0]).end is not None


_EXPERTS_MODULE = """
import re

def exact(text):
    a, b = (int(x) for x in re.findall(r"\\d+", text)[:2])
    return {"text": f"The sum is {a + b}", "input_tokens": 8, "output_tokens": 4, "cost": 0.004}

def sloppy(text):
    a, b = (int(x) for x in re.findall(r"\\d+", text)[:2])
    return {"text": str(a + b + (a % 2)), "input_tokens": 8, "output_tokens": 1, "cost": 0.0005}
"""

_CONFIG = """
name: loop
experts:
  - {name: exact, kind: callable, callable: "loop_experts:exact"}
  - {name: sloppy, kind: callable, callable: "loop_experts:sloppy"}
  - {name: exact2, kind: callable, callable: "loop_experts:exact"}
policy: {name: all}
aggregator: {name: majority}
trace: {dir: TRACE_DIR}
"""


def test_run_label_export_loop_through_the_cli(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "loop_experts.py").write_text(_EXPERTS_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    traces = tmp_path / "traces"
    config = tmp_path / "expertgraph.yaml"
    config.write_text(_CONFIG.replace("TRACE_DIR", str(traces)))
    trace_paths = []
    for a, b in ((3, 4), (10, 5), (7, 7)):
        out = _cli("run", f"What is {a} plus {b}?", "--config", str(config), "--json", "--quiet")
        trace_paths.append(_last_json(out)["trace"])
    # Label by trace path or by run id; the first answer is right, the last one is not checked.
    _cli("traces", "label", trace_paths[0], "--score", "1", "--config", str(config))
    run_id = Path(trace_paths[1]).stem
    _cli("traces", "label", run_id, "--score", "1", "--expected", "15", "--config", str(config))
    dataset = tmp_path / "routing.jsonl"
    _cli("traces", "export", "--config", str(config), "--dataset", str(dataset))
    rows = {
        r.meta["run_id"]: r
        for r in map(RoutingExample.model_validate_json, dataset.read_text().splitlines())
    }
    assert set(rows) == {Path(p).stem for p in trace_paths}
    first, second = rows[Path(trace_paths[0]).stem], rows[run_id]
    assert first.prompt == "What is 3 plus 4?" and first.meta["score_source"] == "label"
    assert first.scores == {"exact": 1.0, "exact2": 1.0, "sloppy": 0.0}  # sloppy said 8
    assert second.meta["score_source"] == "label-expected"
    # `run` asks for a text answer, compared whole after normalisation: "the sum is 15" is
    # not "15"; sloppy's bare "15" (10 is even) is.
    assert second.scores == {"exact": 0.0, "exact2": 0.0, "sloppy": 1.0}
    assert first.costs == {"exact": 0.004, "exact2": 0.004, "sloppy": 0.0005}
    assert rows[Path(trace_paths[2]).stem].meta["score_source"] == "agreement"


def test_report_of_a_session_holds_only_that_conversations_runs(tmp_path: Path) -> None:
    orch = Orchestrator(
        [CallableExpert("calc", lambda prompt: "Final answer: 4")],
        FixedPolicy(["calc"]),
        trace_dir=tmp_path,
    )
    ours = [
        orch.run(Task(prompt=f"turn {i}", metadata={"session": "conv-1"})).run_id for i in range(2)
    ]
    other = orch.run(Task(prompt="elsewhere", metadata={"session": "conv-2"})).run_id
    out = tmp_path / "session.html"
    printed = _cli(
        "traces", "report", str(tmp_path), "--session", "conv-1", "--out", str(out),
        "--no-attribution",
    )  # fmt: skip
    assert "(2 run(s))" in printed
    page = out.read_text()
    assert "expertgraph session conv-1" in page
    assert all(r in page for r in ours) and other not in page
    code = main(["traces", "report", str(tmp_path), "--session", "nobody", "--out", str(out)])
    assert code == 2
