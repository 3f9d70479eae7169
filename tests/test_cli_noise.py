"""The command line keeps model-loading noise (progress bars, library logging) out of its output
unless ``--verbose``: real subprocesses loading the bundled models."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from expertgraph.orchestrator.cli._main import _QUIET_ENV

NOISE = ("Loading weights", "Converting and de-quantizing GGUF tensors")


def _env() -> dict[str, str]:
    # An in-process main() in this session may have set the switches: start from a clean slate.
    return {k: v for k, v in os.environ.items() if k not in _QUIET_ENV}


def _cli(*args: str, cwd: Path) -> tuple[str, str]:
    """``(stdout, stderr)`` of a successful command."""
    proc = subprocess.run(
        [sys.executable, "-m", "expertgraph.orchestrator.cli", *args],
        cwd=cwd,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout, proc.stderr


def _noise(*outputs: str) -> list[str]:
    return [n for n in NOISE if any(n in text for text in outputs)]


def _rows(path: Path) -> Path:
    rows = [
        {
            "id": str(i),
            "prompt": f"What is {i} + {i + 1}?" if i % 2 else f"Name the capital of country {i}.",
            "scores": {"a": float(i % 2), "b": float(1 - i % 2)},
        }
        for i in range(8)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.models
def test_eval_loading_the_embedder_prints_no_progress_bars(tmp_path: Path) -> None:
    data = _rows(tmp_path / "rows.jsonl")
    # A fresh home each time: no embedding cache, so MiniLM is loaded (and would print a bar).
    base = ["eval", "--data", str(data), "--policy", "knn", "--cv", "2"]
    out, err = _cli(*base, "--home", str(tmp_path / "quiet"), cwd=tmp_path)
    assert "cost unit" in out and _noise(out, err) == []
    out, err = _cli(*base, "--home", str(tmp_path / "loud"), "--verbose", cwd=tmp_path)
    assert "Loading weights" in err  # the flag gives the bars back: the quiet run did load


@pytest.mark.models
def test_run_loading_a_gguf_model_prints_no_progress_bars(tmp_path: Path) -> None:
    config = tmp_path / "gemma.yaml"
    config.write_text(
        "name: gemma\nexperts:\n  - name: gemma3\n    kind: local\n    model: gemma3-270m\n"
        "    num_threads: 1\n    prompt_format: completion\n"
        "policy: {name: fixed, experts: [gemma3]}\n"
        f"defaults: {{max_tokens: 4, temperature: 0}}\ntrace: {{dir: {tmp_path / 'traces'}}}\n"
    )
    out, err = _cli("run", "The largest planet is", "--config", str(config), "--json", cwd=tmp_path)
    assert json.loads(out.strip().splitlines()[-1])["steps"][0]["experts"] == ["gemma3"]
    assert _noise(out, err) == []
