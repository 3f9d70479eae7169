"""The agent-tools benchmark: its suite, and a small run of the script end to end."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

from expertgraph.core import ToolCall
from expertgraph.orchestrator.tools import execute

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "agent_tools.py"


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("agent_tools_bench", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file loads
    spec.loader.exec_module(module)
    return module


def test_the_suite_is_seeded_and_each_right_call_gives_the_answer() -> None:
    bench = _bench()
    suite = bench.build_suite(200, seed=3)
    assert len(suite) == 200 and len({t.id for t in suite}) == 200
    assert {t.tool for t in suite} == {"add", "multiply", "lookup", "convert"}
    assert [t.prompt for t in bench.build_suite(200, seed=3)] == [t.prompt for t in suite]
    assert [t.prompt for t in bench.build_suite(200, seed=4)] != [t.prompt for t in suite]
    log = bench.ToolLog()
    tools = {t.name: t for t in bench.make_tools(log)}
    for task in suite[:40]:
        call = ToolCall(id="1", name=task.tool, arguments=task.arguments)
        result = asyncio.run(execute(call, tools[task.tool], 1.0))
        assert result.error is None and result.content == task.answer, task
    assert len(log.calls) == 40


def test_voting_beats_the_best_single_expert_on_a_small_run(tmp_path: Path) -> None:
    traces = tmp_path / "traces"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--tasks", "30", "--seed", "0", "--traces", str(traces)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert {"tasks", "single_best", "majority", "ahead_by_k", "calls_per_task"} <= set(summary)
    assert summary["tasks"] == 30
    for key in ("single_best", "majority", "ahead_by_k"):
        assert 0.0 <= summary[key] <= 1.0
    assert summary["majority"] >= summary["single_best"]
    singles = {k: v for k, v in summary["success"].items() if k.startswith("single/")}
    assert summary["single_best"] == max(singles.values())
    calls = summary["calls_per_task"]
    assert set(calls) == {"single/alpha", "single/beta", "single/gamma", "majority", "ahead_by_k"}
    # One action step and one answer step: a lone expert is called at most twice a task,
    # all three at most six times; ahead-by-2 needs two agreeing draws per step at least.
    assert all(1.0 <= calls[k] <= 2.0 for k in singles)
    assert 3.0 <= calls["majority"] <= 6.0
    assert calls["ahead_by_k"] >= 2.0
    # Every run of every setup wrote its trace where --traces said.
    for setup in ("single-alpha", "majority", "ahead_by_k"):
        assert len(list((traces / setup).glob("*.jsonl"))) == 30
    assert "single_best" in proc.stdout and "/ single_best" in proc.stdout
