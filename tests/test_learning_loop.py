"""The README's learning loop as one run: run -> label -> export -> train -> eval, through the CLI.

Also what the loop's output feeds: replaying a trained folder on the recorded runs, and the
cost unit `eval` reports for JSONL rows that carry costs.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from expertgraph.orchestrator.cli import main
from expertgraph.policies.data.dataset import ROW_COSTS_UNIT

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

PAIRS = [(3, 4), (10, 5), (7, 8), (21, 2), (6, 6), (9, 1)]
QUESTIONS = [(f"What is {a} + {b}?", a + b) for a, b in PAIRS]
QUESTIONS += [(f"What is {a} * {b}?", a * b) for a, b in PAIRS]


def _last_json(capsys: pytest.CaptureFixture[str]) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.fixture
def loop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[list[str], Path]]:
    """A config of two callable experts (``--config`` args) and its home folder."""
    (tmp_path / "learning_loop_experts.py").write_text(EXPERTS_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    home = tmp_path / "home"
    config = tmp_path / "loop.yaml"
    config.write_text(CONFIG.format(home=home))
    yield ["--config", str(config)], home
    sys.modules.pop("learning_loop_experts", None)  # other tests may write a module of their own


def _record_and_label(cfg: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """Real orchestrator runs of every question, each labelled with its true answer."""
    for question, truth in QUESTIONS:
        assert main(["run", question, *cfg, "--json", "--quiet"]) in (0, 1)
        run_id = Path(_last_json(capsys)["trace"]).stem
        # The two experts disagree on every question; the label says which one was right.
        label = ["traces", "label", run_id, "--score", "1", "--expected", str(truth), *cfg]
        assert main(label) == 0
        capsys.readouterr()


def _export_and_train(
    cfg: list[str], home: Path, out: Path, capsys: pytest.CaptureFixture[str]
) -> tuple[Path, Path]:
    dataset = out / "routing.jsonl"
    assert main(["traces", "export", *cfg, "--dataset", str(dataset)]) == 0
    artifact = out / "knn-router"
    code = main(
        [
            "train",
            "--data",
            str(dataset),
            "--policy",
            "knn",
            "--out",
            str(artifact),
            "--home",
            str(home),
            "--param",
            "k=3",
            "--folds",
            "0",
            "--lam",
            "0",
            "--json",
        ]
    )
    assert code == 0
    capsys.readouterr()
    return dataset, artifact


def test_run_label_export_train_eval(
    loop: tuple[list[str], Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg, home = loop
    _record_and_label(cfg, capsys)
    dataset, artifact = _export_and_train(cfg, home, tmp_path, capsys)
    rows = [json.loads(line) for line in dataset.read_text().splitlines()]
    assert len(rows) == len(QUESTIONS)
    for row in rows:  # scores come from the labels: exactly the right expert gets 1
        product = "*" in row["prompt"]
        assert row["scores"] == {"careful": float(not product), "quick": float(product)}
    meta = json.loads((artifact / "meta.json").read_text())
    assert sorted(meta["experts"]) == ["careful", "quick"]

    evaluate = ["eval", "--data", str(dataset), "--policy", str(artifact), "--home", str(home)]
    assert main([*evaluate, "--json"]) == 0
    result = _last_json(capsys)
    assert result["n"] == len(QUESTIONS)
    assert result["baselines"]["oracle"]["score"] == pytest.approx(1.0)
    assert result["baselines"]["best_single"]["score"] == pytest.approx(0.5)
    # Sums and products embed apart: the trained router sends each to the expert that is right.
    assert result["score"] >= 0.9


def test_traces_replay_of_a_trained_folder(
    loop: tuple[list[str], Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg, home = loop
    _record_and_label(cfg, capsys)
    _, artifact = _export_and_train(cfg, home, tmp_path, capsys)
    kind = json.loads((artifact / "meta.json").read_text())["kind"]
    traces = home / "traces"
    # seven registered policies load from a path; the folder's meta says which one it is
    code = main(["traces", "replay", str(traces), "--policy", str(artifact), "--json"])
    assert code == 0
    data = _last_json(capsys)
    assert data["policy"] == kind == "knn"
    assert data["evaluated"] > 0 and data["steps"] == len(QUESTIONS)
    # every recorded step had both candidates: the router picks the right one as in eval
    assert data["mean_score"] >= 0.9


def test_replay_refuses_a_folder_that_is_not_a_trained_router(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "traces").mkdir()
    (tmp_path / "not-a-router").mkdir()
    folder = tmp_path / "not-a-router"
    assert main(["traces", "replay", str(tmp_path / "traces"), "--policy", str(folder)]) == 2
    assert "not a trained router (no meta.json)" in capsys.readouterr().err


@pytest.mark.parametrize("with_costs", [True, False])
def test_eval_reports_the_cost_unit_of_jsonl_rows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], with_costs: bool
) -> None:
    rows = [
        {
            "id": str(i),
            "prompt": f"question {i}",
            "scores": {"a": float(i % 2), "b": float(1 - i % 2)},
            "costs": {"a": 0.5, "b": 0.1} if with_costs else {},
        }
        for i in range(6)
    ]
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["eval", "--data", str(data), "--policy", "oracle", "--json"]) == 0
    lines = capsys.readouterr().out.splitlines()
    unit = ROW_COSTS_UNIT if with_costs else "none (the data has no costs)"
    assert lines[0] == f"rows (all, n=6), cost unit: {unit}"
    result = json.loads(lines[-1])
    assert result["cost_unit"] == unit
    assert result["cost"] == pytest.approx(0.3 if with_costs else 0.0)
