"""Smoke test of benchmarks/serve.py: a quick run with two workers per server."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_quick_run_with_workers_ends_with_one_json_line() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "serve.py"), "--quick", "--workers", "2"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    figures = json.loads(lines[-1])
    assert set(figures) == {
        "workers",
        "rps",
        "bare_rps",
        "rps_vs_bare",
        "p50_ms",
        "p95_ms",
        "ratio_vs_bare",
    }
    assert figures["workers"] == 2
    assert figures["rps"] > 0 and figures["bare_rps"] > 0
    assert abs(figures["rps_vs_bare"] - figures["rps"] / figures["bare_rps"]) <= 0.01
    assert "2 worker(s) each" in proc.stdout
