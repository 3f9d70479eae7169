"""benchmarks/cascade.py on rows built in tmp_path: it runs; its JSON line holds the figures."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest
from _cascade_data import EXPERTS, build_rows, write_rows

ROOT = Path(__file__).resolve().parents[1]


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "cascade_bench", ROOT / "benchmarks" / "cascade.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_cascade_bench_quick_json_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = write_rows(tmp_path / "rows.jsonl", build_rows(60), costs=False)
    prices = tmp_path / "prices.yaml"
    prices.write_text(
        "".join(f"{e}: {{input: {p}, output: {p}}}\n" for e, (p, _) in EXPERTS.items())
    )
    assert _bench().main(["--data", str(data), "--prices", str(prices), "--quick"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["n"] == 120
    assert out["best_single"]["expert"] in EXPERTS
    assert set(out["methods"]) == {"learned@10%", "learned@25%", "learned@50%"}
    for figures in out["methods"].values():
        assert {"accuracy", "cost_per_1k", "calls_per_query"} <= set(figures)
        assert 0 <= figures["accuracy"] <= 1 and figures["calls_per_query"] >= 1
    # Cheaper targets never cost more (each is calibrated on the other fold).
    costs = [out["methods"][f"learned@{s}%"]["cost_per_1k"] for s in (10, 25, 50)]
    assert costs == sorted(costs)


def test_prices_md_table_is_read(tmp_path: Path) -> None:
    md = tmp_path / "PRICES.md"
    md.write_text(
        "| model | input | output | source |\n|---|---|---|---|\n| m-1 | 0.15 | 0.60 | x |\n"
    )
    table = _bench().prices_from_markdown(md)
    assert table["m-1"].input == 0.15 and table["m-1"].output == 0.60
