"""The faults soak: a quick run of the script end to end, its invariants and its one JSON line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "faults.py"

KEYS = {
    "runs",
    "answered",
    "attempts_per_run",
    "attempts_ratio_vs_baseline",
    "calls_while_cooling",
    "probes",
    "cooldowns",
    "spend_over_ceiling",
    "max_cost",
    "p50_ms",
    "p95_ms",
    "baseline_p50_ms",
    "baseline_p95_ms",
    "p50_ratio_vs_baseline",
    "p95_ratio_vs_baseline",
}


def test_a_quick_soak_never_calls_a_cooling_expert_nor_spends_over_the_ceiling() -> None:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    assert KEYS <= set(figures)
    assert figures["runs"] == 60
    assert figures["cooldowns"] >= 1  # flappy flapped and was cooled down
    assert figures["calls_while_cooling"] == 0
    assert figures["spend_over_ceiling"] == 0
    assert figures["max_cost"] > 0  # priced from LiteLLM's map, no card price
    assert figures["answered"] > figures["runs"] // 2  # routed around the faults
    assert figures["attempts_per_run"] > 0 and figures["p95_ms"] >= figures["p50_ms"]
    assert "runs answered" in proc.stdout and "calls while cooling" in proc.stdout
