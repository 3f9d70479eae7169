"""The overhead benchmark's quick mode: every contender runs, and its last line has every figure."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_quick_run_reports_the_router_and_the_langgraph_ratios() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "overhead.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout
    figures = json.loads(out.strip().splitlines()[-1])
    for suffix in ("", "_50ms_server"):
        for key in ("router_ms", "expertgraph_vs_router", "litellm_ratio", "expertgraph_ms"):
            assert figures[key + suffix] > 0, key + suffix
        # The ratio is the two medians' quotient, as printed.
        ratio = figures["expertgraph_ms" + suffix] / figures["router_ms" + suffix]
        assert abs(ratio - figures["expertgraph_vs_router" + suffix]) < 0.01 * ratio
    assert figures["step_ratio_vs_bare_langgraph"] > 0
    assert "LiteLLM Router" in out
