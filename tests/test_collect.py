"""``expertgraph collect``: every expert answers every prompt -> RoutingExample rows that
``eval`` reads; a custom scorer, an expert subset, and resuming after SIGKILL."""

from __future__ import annotations

import json
import signal
import textwrap
from pathlib import Path

import pytest
from _batch_server import RuledModel, api_expert, result_lines, write_config, write_tasks
from openai_server import OpenAIServer
from test_batch import _run_cli, _wait_for_lines

from expertgraph.core.types import RoutingExample
from expertgraph.orchestrator.cli._main import main
from expertgraph.policies.data.dataset import load_jsonl


def _prompts(n: int) -> list[dict[str, object]]:
    return [
        {"id": f"p{i}", "prompt": f"What is {i}", "expected": str(i), "task": "sums"}
        for i in range(n)
    ]


def test_collect_scores_every_expert_and_eval_reads_the_rows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with (
        OpenAIServer(RuledModel(latency_s=0.01)) as right,
        OpenAIServer(RuledModel(offset=1)) as wrong,
    ):
        cfg = write_config(
            tmp_path / "eg.json",
            [
                api_expert("right", right.url, cost_per_1k_input=2.0, cost_per_1k_output=2.0),
                api_expert("wrong", wrong.url, cost_per_1k_input=1.0, cost_per_1k_output=1.0),
            ],
        )
        prompts = write_tasks(
            tmp_path / "prompts.jsonl",
            [*_prompts(12), "{oops", {"id": "plan", "plan": ["What is 1"]}],
        )
        out = tmp_path / "data.jsonl"
        argv = ["collect", str(prompts), "--out", str(out), "--config", str(cfg)]
        assert main([*argv, "--json", "--quiet"]) == 1  # two bad lines
        captured = capsys.readouterr()
        assert "prompts.jsonl:13: not JSON" in captured.err
        assert "prompts.jsonl:14: collect takes a prompt or messages" in captured.err
        summary = json.loads(captured.out.strip().splitlines()[-1])
        assert summary["prompts"] == 12 and summary["calls"] == 24
        assert summary["mean_score"] == {"right": 1.0, "wrong": 0.0}
        rows = {r.id: r for r in load_jsonl(out)}  # in the order the prompts finished
        assert len(load_jsonl(out)) == 12 and set(rows) == {f"p{i}" for i in range(12)}
        row: RoutingExample = rows["p3"]
        assert row.scores == {"right": 1.0, "wrong": 0.0} and row.task == "sums"
        assert row.responses == {"right": "The answer is 3.", "wrong": "The answer is 4."}
        assert (
            row.costs["right"] == pytest.approx(2 * row.costs["wrong"]) and row.costs["wrong"] > 0
        )
        assert row.meta["tokens"]["right"] == {"input": 3, "output": 4}
        assert row.meta["latency_s"]["right"] > 0 and row.meta["expected"] == "3"
        assert right.attempts == 12 and wrong.attempts == 12

        assert main(["eval", "--data", str(out), "--policy", "best-single", "--json"]) == 0
        result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert result["n"] == 12 and result["score"] == 1.0
        assert result["baselines"]["best_single"]["expert"] == "right"


def test_collect_with_a_scorer_and_an_expert_subset(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "my_scorer.py").write_text(
        textwrap.dedent(
            """
            def close(response, expected):
                number = int(response.rstrip(".").split()[-1])
                return max(0.0, 1.0 - abs(number - int(expected)) / 2)
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with OpenAIServer(RuledModel()) as right, OpenAIServer(RuledModel(offset=1)) as wrong:
        cfg = write_config(
            tmp_path / "eg.json", [api_expert("right", right.url), api_expert("wrong", wrong.url)]
        )
        prompts = write_tasks(tmp_path / "prompts.jsonl", _prompts(3))
        out = tmp_path / "data.jsonl"
        argv = ["collect", str(prompts), "--out", str(out), "--config", str(cfg), "--quiet"]
        assert main([*argv, "--experts", "wrong", "--scorer", "my_scorer:close", "--json"]) == 0
        capsys.readouterr()
        assert [r.scores for r in load_jsonl(out)] == [{"wrong": 0.5}] * 3
        assert right.attempts == 0
        assert main([*argv, "--experts", "nobody"]) == 2
        assert "unknown ['nobody']" in capsys.readouterr().err


def test_collect_killed_with_sigkill_resumes(tmp_path: Path) -> None:
    with OpenAIServer(RuledModel(latency_s=0.25)) as a, OpenAIServer(RuledModel()) as b:
        cfg = write_config(tmp_path / "eg.json", [api_expert("a", a.url), api_expert("b", b.url)])
        prompts = write_tasks(tmp_path / "prompts.jsonl", _prompts(20))
        out = tmp_path / "data.jsonl"
        argv = ["collect", str(prompts), "--out", str(out), "--config", str(cfg)]
        argv += ["--concurrency", "2", "--quiet", "--json"]
        proc = _run_cli(argv)
        _wait_for_lines(out, 3, proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        done_before = {r["id"] for r in result_lines(out)}
        assert 3 <= len(done_before) < 20
        restart = a.attempts

        stdout, _ = _run_cli(argv).communicate(timeout=300)
        summary = json.loads(stdout.decode().strip().splitlines()[-1])
        assert summary["prompts"] == 20 and summary["resumed"] == len(done_before)
        ids = [r["id"] for r in result_lines(out)]
        assert sorted(ids) == sorted(f"p{i}" for i in range(20))
        asked_again = {r.last_user_text for r in a.requests[restart:]}
        assert not asked_again & {f"What is {i[1:]}" for i in done_before}
