"""The README's learning loop as one run: run -> label -> export -> train -> eval, through the CLI."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from expertgraph.orchestrator.cli import main

EXPERTS_MODULE = '''
from expertgraph.agents.tools import calculator


def careful(prompt: str) -> str:
    """Right on sums, wrong on products."""
    value = int(calculator(prompt))
    return str(value + 1) if "*" in prompt else str(value)


def quick(prompt: str) -> str:
    """Right on products, wrong on sums."""
    value = int(calculator(prompt))
    return str(value) if "*" in prompt else str(value - 1)
'''

CONFIG = """\
name: loop
home: {home}
experts:
  - name: careful
    kind: callable
    callable: learning_loop_experts:careful
    card: {{description: arithmetic, cost_per_1k_input: 0.002}}
  - name: quick
    kind: callable
    callable: learning_loop_experts:quick
    card: {{description: arithmetic, cost_per_1k_input: 0.001}}
policy: {{name: all}}
"""


def _last_json(capsys: pytest.CaptureFixture[str]) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_run_label_export_train_eval(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "learning_loop_experts.py").write_text(EXPERTS_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    home = tmp_path / "home"
    config = tmp_path / "loop.yaml"
    config.write_text(CONFIG.format(home=home))
    cfg = ["--config", str(config)]

    questions = [(f"What is {a} + {b}?", a + b) for a, b in [(3, 4), (10, 5), (7, 8), (21, 2), (6, 6), (9, 1)]]
    questions += [(f"What is {a} * {b}?", a * b) for a, b in [(3, 4), (10, 5), (7, 8), (21, 2), (6, 6), (9, 1)]]
    for question, truth in questions:
        assert main(["run", question, *cfg, "--json", "--quiet"]) in (0, 1)
        run = _last_json(capsys)
        run_id = Path(run["trace"]).stem
        # The two experts disagree on every question; the label says which one was right.
        assert main(["traces", "label", run_id, "--score", "1", "--expected", str(truth), *cfg]) == 0
        capsys.readouterr()

    dataset = tmp_path / "routing.jsonl"
    assert main(["traces", "export", *cfg, "--dataset", str(dataset)]) == 0
    capsys.readouterr()
    rows = [json.loads(line) for line in dataset.read_text().splitlines()]
    assert len(rows) == len(questions)
    for row in rows:  # scores come from the labels: exactly the right expert gets 1
        product = "*" in row["prompt"]
        assert row["scores"] == {"careful": 0.0 if product else 1.0, "quick": 1.0 if product else 0.0}

    artifact = tmp_path / "knn-router"
    code = main([
        "train", "--data", str(dataset), "--policy", "knn", "--out", str(artifact),
        "--home", str(home), "--param", "k=3", "--folds", "0", "--lam", "0", "--json",
    ])
    assert code == 0
    capsys.readouterr()
    meta = json.loads((artifact / "meta.json").read_text())
    assert sorted(meta["experts"]) == ["careful", "quick"]

    assert main(["eval", "--data", str(dataset), "--policy", str(artifact), "--home", str(home), "--json"]) == 0
    result = _last_json(capsys)
    assert result["n"] == len(questions)
    assert result["baselines"]["oracle"]["score"] == pytest.approx(1.0)
    assert result["baselines"]["best_single"]["score"] == pytest.approx(0.5)
    # Sums and products embed apart: the trained router sends each to the expert that is right.
    assert result["score"] >= 0.9
    sys.modules.pop("learning_loop_experts", None)  # other tests may write a module of their own
