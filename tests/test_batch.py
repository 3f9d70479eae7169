"""``expertgraph batch`` and ``abatch``: results per line, bad lines, resuming after SIGKILL,
per-expert limits (max_concurrency, rpm, tpm) across the batch, against loopback servers."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _batch_server import RuledModel, api_expert, result_lines, write_config, write_tasks
from openai_server import OpenAIServer

from expertgraph.agents import base as agents_base
from expertgraph.core.types import Task
from expertgraph.orchestrator._batch import abatch
from expertgraph.orchestrator.cli._main import main
from expertgraph.orchestrator.orchestrator import Orchestrator


def _good(n: int) -> list[dict[str, object]]:
    return [{"id": f"q{i}", "prompt": f"What is {i}", "expected": str(i)} for i in range(n)]


def test_batch_writes_a_line_per_task_reports_bad_lines_and_resumes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = RuledModel(latency_s=0.02)
    with OpenAIServer(model) as srv:
        cfg = write_config(tmp_path / "eg.json", [api_expert("a", srv.url, max_concurrency=3)])
        tasks = write_tasks(
            tmp_path / "tasks.jsonl",
            [
                *_good(25),
                {"id": "bad-call", "prompt": "please fail 7"},
                "this is not JSON",
                {"id": "q3", "prompt": "a second q3"},
                {"expected": "1"},
            ],
        )
        out = tmp_path / "results.jsonl"
        argv = ["batch", str(tasks), "--out", str(out), "--config", str(cfg), "--json"]
        argv += ["--quiet", "--concurrency", "20"]
        assert main(argv) == 1  # one task failed and three lines were bad
        captured = capsys.readouterr()
        summary = json.loads(captured.out.strip().splitlines()[-1])
        for number, why in ((27, "not JSON"), (28, "duplicate id 'q3'"), (29, "needs a prompt")):
            assert f"tasks.jsonl:{number}: " in captured.err and why in captured.err
        assert summary["tasks"] == 26 and summary["answered"] == 25 and summary["failed"] == 1
        assert summary["correct"] == 25 and summary["experts"] == {"a": 26}
        assert [b.split(":")[0] for b in summary["bad_lines"]] == ["line 27", "line 28", "line 29"]
        assert summary["tokens"] > 0 and summary["p95_latency_s"] >= summary["p50_latency_s"] > 0
        rows = {r["id"]: r for r in result_lines(out)}
        assert len(rows) == 26 and rows["q7"]["answer"] and rows["q7"]["correct"] is True
        assert rows["bad-call"]["ok"] is False and "bad_request" in rows["bad-call"]["error"]
        assert model.peak <= 3  # the card's max_concurrency held against 20 tasks in flight
        asked = srv.attempts

        # Same --out: nothing runs again; --retry-failed reruns only the failed id.
        assert main(argv) == 1
        again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert again["resumed"] == 26 and srv.attempts == asked
        assert {k: again[k] for k in ("answered", "failed", "cost", "tokens", "experts")} == {
            k: summary[k] for k in ("answered", "failed", "cost", "tokens", "experts")
        }
        assert main([*argv, "--retry-failed"]) == 1
        capsys.readouterr()
        assert [r.last_user_text for r in srv.requests[asked:]] == ["please fail 7"]


def _run_cli(args: list[str]) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}
    return subprocess.Popen(
        [sys.executable, "-m", "expertgraph.orchestrator.cli", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _wait_for_lines(path: Path, count: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if path.is_file() and len(result_lines(path)) >= count:
            return
        if proc.poll() is not None:
            raise AssertionError(f"exited early: {proc.communicate()[1].decode()[-2000:]}")
        time.sleep(0.05)
    raise AssertionError("no results in time")


def test_batch_killed_with_sigkill_resumes_without_redoing_done_ids(tmp_path: Path) -> None:
    model = RuledModel(latency_s=0.25)
    with OpenAIServer(model) as srv:
        cfg = write_config(tmp_path / "eg.json", [api_expert("a", srv.url)])
        tasks = write_tasks(tmp_path / "tasks.jsonl", _good(30))
        out = tmp_path / "results.jsonl"
        argv = ["batch", str(tasks), "--out", str(out), "--config", str(cfg)]
        argv += ["--concurrency", "2", "--json", "--quiet"]
        proc = _run_cli(argv)
        _wait_for_lines(out, 4, proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        done_before = {r["id"] for r in result_lines(out)}
        assert 4 <= len(done_before) < 30
        with out.open("ab") as handle:  # what a kill in the middle of a write leaves
            handle.write(b'{"id": "q29", "line": 30, "ok": tr')
        restart = len(srv.requests)

        stdout, stderr = _run_cli(argv).communicate(timeout=300)
        assert stderr.decode().count("Traceback") == 0
        summary = json.loads(stdout.decode().strip().splitlines()[-1])
        assert summary["answered"] == 30 and summary["resumed"] == len(done_before)
        ids = [r["id"] for r in result_lines(out)]
        assert sorted(ids) == sorted(f"q{i}" for i in range(30))  # each id once
        asked_again = {r.last_user_text for r in srv.requests[restart:]}
        assert not asked_again & {f"What is {i[1:]}" for i in done_before}
        assert (tmp_path / "results.jsonl.torn").read_bytes().startswith(b'{"id": "q29"')


def _max_in_window(times: list[float], window: float) -> int:
    times = sorted(times)
    return max(sum(1 for t in times if start <= t < start + window) for start in times)


def test_rpm_holds_across_orchestrators_of_the_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(agents_base, "RATE_WINDOW_S", 2.0)
    with OpenAIServer(RuledModel()) as srv:
        cfg = write_config(
            tmp_path / "eg.json", [api_expert("a", srv.url, rpm=4, max_concurrency=16)]
        )

        async def both() -> list[object]:
            first, second = Orchestrator.from_config(cfg), Orchestrator.from_config(cfg)
            tasks = [f"What is {i}" for i in range(8)]
            return await asyncio.gather(
                abatch(first, tasks, concurrency=8), abatch(second, tasks, concurrency=8)
            )

        reports = asyncio.run(both())
        assert all(r.summary.answered == 8 for r in reports)  # type: ignore[attr-defined]
        times = [r.received_at for r in srv.requests]
        assert len(times) == 16 and _max_in_window(times, 1.5) <= 4


def test_tpm_holds_and_abatch_keeps_input_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(agents_base, "RATE_WINDOW_S", 2.0)
    with OpenAIServer(RuledModel(latency_s=0.02)) as srv:
        # Each call: 3 prompt words + 4 answer words = 7 tokens on the server's count.
        cfg = write_config(
            tmp_path / "eg.json", [api_expert("a", srv.url, tpm=15, max_concurrency=1)]
        )
        orch = Orchestrator.from_config(cfg)
        tasks: list[object] = [f"What is {i}" for i in range(7)]
        tasks.append(Task(id="typed", prompt="What is 40"))
        tasks.append({"id": "mapped", "prompt": "What is 41", "expected": "41"})
        report = asyncio.run(orch.abatch(tasks, concurrency=9))
        assert [r.id for r in report.results][-2:] == ["typed", "mapped"]
        assert report.results[-1].correct is True and report.summary.answered == 9
        assert report.summary.tokens == 9 * 7
        times = [r.received_at for r in srv.requests]
        # At most what fits the window plus the one call whose reply crossed it.
        assert _max_in_window(times, 1.5) <= 15 // 7 + 1


def test_the_progress_bar_shows_rate_spend_and_errors_only_on_a_terminal() -> None:
    import io

    from rich.console import Console

    from expertgraph.orchestrator.cli._batch import progress_bar

    screen = io.StringIO()
    terminal = Console(file=screen, force_terminal=True, width=120)
    with progress_bar(3, show=True, console=terminal) as bar:
        bar.advance(cost=0.25, failed=False)
        bar.advance(cost=0.5, failed=True)
    text = screen.getvalue()
    assert "2/3" in text and "$0.7500" in text and "1 errors" in text and "/s" in text

    piped = io.StringIO()
    with progress_bar(3, show=True, console=Console(file=piped, force_terminal=False)) as bar:
        bar.advance(cost=1.0, failed=True)
    assert piped.getvalue() == ""
