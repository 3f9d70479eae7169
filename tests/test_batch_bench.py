"""The batch benchmark: a small run of the script end to end (loopback server, Ray, the
bundled embedder), ending with its one JSON line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.models
def test_quick_run_prints_every_figure() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "batch.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=540,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert figures["tasks"] == 40
    for key in ("batch_s", "peer_router_s", "ray_s", "cpu_bound_speedup_ray"):
        assert figures[key] > 0
    assert figures["batch_vs_peer"] == pytest.approx(
        figures["batch_s"] / figures["peer_router_s"], rel=1e-2
    )
    assert "(a) 40 tasks at concurrency 100" in done.stdout
