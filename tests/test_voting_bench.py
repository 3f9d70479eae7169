"""The voting benchmark and the ZeroEval loader on small folders built in tmp_path."""

from __future__ import annotations

import importlib.util
import json
import random
import sys
from collections import Counter
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from expertgraph.core.errors import ZeroEvalError
from expertgraph.policies.data.zeroeval import load_zeroeval, score_answer

ROOT = Path(__file__).resolve().parents[1]
# Each model: the chance its reply is right, and how it writes its answer.
MODELS = {
    "strong": 0.9,
    "steady": 0.75,
    "shaky": 0.55,
    "wordy": 0.6,
}
N = 24


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("voting_bench", ROOT / "benchmarks" / "voting.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file loads
    spec.loader.exec_module(module)
    return module


def _reply(model: str, answer: str, rng: random.Random) -> str:
    if model == "wordy":
        # Units and currency in the answer field, a calculation now and then.
        return json.dumps({"reasoning": "Let me think. 2 + 2 = 4.", "answer": f"${answer} total"})
    if model == "shaky" and rng.random() < 0.15:
        return "I am not sure how to solve this."  # no answer at all
    return f'```json\n{{"reasoning": "step by step", "answer": "{answer}"}}\n```'


def build_folder(root: Path, seed: int = 7) -> Path:
    """result_dirs/toy/<model>.json plus toy.summary.json, ZeroEval's layout."""
    rng = random.Random(seed)
    task = root / "result_dirs" / "toy"
    task.mkdir(parents=True)
    questions = [f"Question {i}: how many marbles are left after round {i}?" for i in range(N)]
    golds = [rng.randint(2, 400) for _ in range(N)]
    shared_wrong = [g + rng.choice([-1, 1, 10]) for g in golds]  # weak models err alike
    for model, p in MODELS.items():
        rows = []
        for i, (question, gold) in enumerate(zip(questions, golds, strict=True)):
            if rng.random() < p:
                answer = str(gold)
            else:
                answer = str(shared_wrong[i] if rng.random() < 0.6 else gold * 2)
            rows.append(
                {
                    "session_id": f"toy-#{i}",
                    "chat_history": [f"## Question:\n{question}"],
                    "output": [_reply(model, answer, rng)],
                    "id": f"toy-#{i}",
                    "question": question,
                    "answer": f"# {gold}",
                }
            )
        rng.shuffle(rows)  # files need not share an order
        (task / f"{model}.json").write_text(json.dumps(rows))
    summary = [{"Model": m, "Mode": "greedy", "Acc": "50.00", "Total": N} for m in MODELS]
    (root / "result_dirs" / "toy.summary.json").write_text(json.dumps(summary))
    return task


def _last_json(out: str) -> dict[str, Any]:
    return json.loads(out.strip().splitlines()[-1])


def test_loader_scores_each_reply_against_gold(tmp_path: Path) -> None:
    data = load_zeroeval(build_folder(tmp_path))
    assert data.kind == "number" and data.n == N and sorted(data.models) == sorted(MODELS)
    assert data.ids == sorted(data.ids, key=lambda s: int(s.split("#")[1]))
    assert data.published == {m: 50.0 for m in MODELS}
    raw = json.loads((tmp_path / "result_dirs" / "toy" / "wordy.json").read_text())
    by_id = {r["id"]: r for r in raw}
    w = data.model_index("wordy")
    for q, qid in enumerate(data.ids):
        stated = json.loads(by_id[qid]["output"][0])["answer"].removeprefix("$").split()[0]
        assert data.answers[w][q] == stated
        assert data.correct[w, q] == (stated == by_id[qid]["answer"].strip("# "))
    shaky = data.model_index("shaky")
    for answer, reason in zip(data.answers[shaky], data.reasons[shaky], strict=True):
        assert (answer is None) == bool(reason)
    assert data.oracle() >= max(data.accuracy().values())  # type: ignore[union-attr]
    rows = data.routing_examples()
    assert len(rows) == N and set(rows[0].scores) == set(MODELS)
    assert rows[0].scores["wordy"] == float(data.correct[w, 0])


def test_loader_infers_choice_tasks_and_rejects_bad_folders(tmp_path: Path) -> None:
    task = tmp_path / "mc"
    task.mkdir()
    rows = [
        {
            "id": f"q{i}",
            "question": f"Pick {i}",
            "correct_answer": "ABCD"[i % 4],
            "output": [f'{{"answer": "{"ABCD"[(i * 3) % 4]}"}}'],
        }  # fmt: skip
        for i in range(8)
    ]
    (task / "m.json").write_text(json.dumps(rows))
    data = load_zeroeval(task)
    assert data.kind == "choice"
    expected = [score_answer("ABCD"[(i * 3) % 4], "ABCD"[i % 4], "choice") for i in range(8)]
    assert data.correct[0].tolist() == expected
    with pytest.raises(ZeroEvalError, match="not a folder"):
        load_zeroeval(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ZeroEvalError, match="no <model>.json"):
        load_zeroeval(tmp_path / "empty")


def test_benchmark_json_line_is_computed_from_the_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = build_folder(tmp_path)
    bench = _bench()
    assert bench.main(["--data", str(folder), "--cache", str(tmp_path / "cache")]) == 0
    out = capsys.readouterr().out
    summary = _last_json(out)
    assert set(summary) == {"n", "best_single", "oracle", "methods"}
    data = load_zeroeval(folder)
    acc = data.accuracy()
    assert isinstance(acc, dict)
    best = max(acc, key=lambda m: acc[m])
    assert summary["n"] == N
    assert summary["best_single"] == {"model": best, "accuracy": round(acc[best], 4)}
    assert summary["oracle"] == round(data.oracle(), 4)
    methods = summary["methods"]
    for name in ("plurality", "weighted", "weighted-router", "medoid"):
        assert methods[name]["responses_per_question"] == len(MODELS)
    for order in ("strongest-first", "router"):
        for k in (1, 2, 3):
            assert (
                f"ahead-by-{k}/{order}" in methods and f"ahead-by-{k}+redflags/{order}" in methods
            )
    for fig in methods.values():
        assert set(fig) == {"accuracy", "responses_per_question"}
        assert 0.0 <= fig["accuracy"] <= summary["oracle"] + 1e-9
        assert 1.0 <= fig["responses_per_question"] <= len(MODELS)
    # Plurality recomputed here, independently: most common extracted answer, ties to the
    # published order (all 50%: ties keep the folder's order of models, sorted by name).
    order = sorted(data.models, key=lambda m: -data.published[m])
    right = 0
    for q in range(data.n):
        votes = Counter(
            data.answers[data.model_index(m)][q]
            for m in order
            if data.answers[data.model_index(m)][q] is not None
        )
        top = max(votes.values())
        winner = next(
            data.answers[data.model_index(m)][q]
            for m in order
            if votes.get(data.answers[data.model_index(m)][q]) == top
        )
        right += data.is_correct(winner, q)
    assert methods["plurality"]["accuracy"] == round(100 * right / N, 4)
    # More agreement is needed for a larger k: never fewer responses.
    per_k = [methods[f"ahead-by-{k}/strongest-first"]["responses_per_question"] for k in (1, 2, 3)]
    assert per_k == sorted(per_k) and per_k[0] >= 1.0
    assert "Scorer check" in out and "cache" in out
    assert list((tmp_path / "cache").glob("embeddings-*.npz"))


def test_replay_and_orchestrator_engines_agree(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = build_folder(tmp_path, seed=11)
    bench = _bench()
    common = ["--data", str(folder), "--no-embed", "--only", "plurality|weighted|ahead-by-2"]
    bench.main([*common, "--engine", "replay"])
    replay = _last_json(capsys.readouterr().out)
    bench.main([*common, "--engine", "orchestrator"])
    live = _last_json(capsys.readouterr().out)
    assert replay["methods"] and replay == live
