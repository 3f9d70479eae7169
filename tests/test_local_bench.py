"""Smoke test of benchmarks/local.py: --quick, in this process (weights are cached)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.models


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("local_bench", ROOT / "benchmarks" / "local.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_quick_run_ends_with_the_figures(capsys: pytest.CaptureFixture[str]) -> None:
    assert _bench().main(["--quick", "--in-process"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["requests"] == 2
    smol = summary["smollm2"]
    for backend in ("transformers", "llama_cpp"):
        fig = smol[backend]
        assert fig["batched_equals_sequential"] is True
        assert fig["sequential_tok_s"] > 0 and fig["batched_tok_s"] > 0
        assert fig["load_s"] >= 0 and fig["peak_rss_mb"] > 0
        assert fig["first_answer_s"] >= fig["load_s"]
    assert smol["batched_speedup"] == round(
        smol["transformers"]["batched_tok_s"] / smol["transformers"]["sequential_tok_s"], 3
    )
    ratio = smol["llama_cpp"]["sequential_tok_s"] / smol["transformers"]["sequential_tok_s"]
    assert smol["llama_cpp_vs_transformers"] == round(ratio, 3)
    assert summary["llama_cpp_vs_transformers"] == pytest.approx(ratio, rel=1e-2)
    assert "gemma3" not in summary
