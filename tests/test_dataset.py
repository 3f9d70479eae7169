"""Routing datasets: our JSONL, and the three published layouts in ../shared/data.

Expected figures are computed here from the raw files, never copied from them.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from expertgraph.core.errors import DatasetError
from expertgraph.core.types import RoutingExample
from expertgraph.policies.data.dataset import (
    ROW_COSTS_UNIT,
    RoutingDataset,
    detect_layout,
    from_examples,
    load_dataset,
    load_jsonl,
    save_jsonl,
    split_subset,
)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
LLMROUTER = DATA / "llmrouter-dc"
ROUTELLM = DATA / "routellm"
ZEROEVAL = DATA / "zeroeval"


def rows() -> list[RoutingExample]:
    return [
        RoutingExample(
            id="a", prompt="2+2?", scores={"x": 1.0, "y": 0.0}, costs={"x": 0.5}, task="math"
        ),
        RoutingExample(
            id="b", prompt="Capital of Peru?", scores={"y": 1.0, "z": 0.25}, responses={"y": "Lima"}
        ),
    ]


def test_jsonl_round_trip_matrices_and_hash(tmp_path: Path) -> None:
    path = save_jsonl(rows(), tmp_path / "r.jsonl")
    back = load_jsonl(path)
    assert back == rows()
    ds = load_dataset(path)
    assert ds.experts == ["x", "y", "z"] and len(ds) == 2 and ds.tasks == ["math", None]
    s = ds.scores()
    assert s[0].tolist()[:2] == [1.0, 0.0] and np.isnan(s[0, 2]) and np.isnan(s[1, 0])
    ds.prices = {"y": 0.1, "z": 2.0}
    c = ds.costs()
    assert c[0].tolist() == [0.5, 0.1, 2.0]  # a row's own cost wins over the expert's price
    assert c[1].tolist() == [0.0, 0.1, 2.0]
    same = from_examples(load_jsonl(path))
    same.prices = dict(ds.prices)
    assert same.sha256() == ds.sha256()
    changed = from_examples(
        [rows()[0], rows()[1].model_copy(update={"scores": {"y": 0.0, "z": 0.25}})]
    )
    changed.prices = dict(ds.prices)
    assert changed.sha256() != ds.sha256()
    sub = ds.subset([1], split="held")
    assert sub.prompts == ["Capital of Peru?"] and sub.split == "held" and sub.experts == ds.experts


def test_jsonl_rows_with_costs_have_a_cost_unit(tmp_path: Path) -> None:
    priced = load_dataset(save_jsonl(rows(), tmp_path / "priced.jsonl"))
    assert priced.has_costs and priced.cost_unit == ROW_COSTS_UNIT
    free = [r.model_copy(update={"costs": {}}) for r in rows()]
    assert load_dataset(save_jsonl(free, tmp_path / "free.jsonl")).cost_unit == ""
    assert from_examples(rows(), cost_unit="USD").cost_unit == "USD"


def test_split_subset_is_the_one_path_syntax() -> None:
    assert split_subset("data/routellm#mmlu") == ("data/routellm", "mmlu")
    assert split_subset(Path("a#b") / "c#gsm8k") == ("a#b/c", "gsm8k")  # the last '#'
    assert split_subset("rows.jsonl") == ("rows.jsonl", None)
    assert split_subset("rows.jsonl", "x") == ("rows.jsonl", "x")
    assert split_subset("r#s", "given") == ("r#s", "given")  # an explicit subset wins


def test_bad_rows_are_reported_with_their_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(
        rows()[0].model_dump_json() + "\n" + json.dumps({"id": "b", "prompt": "p"}) + "\n"
    )
    with pytest.raises(DatasetError, match=r"bad.jsonl:2: scores"):
        load_jsonl(path)
    with pytest.raises(DatasetError, match="no such file"):
        load_dataset(tmp_path / "missing.jsonl")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="not a routing dataset"):
        detect_layout(tmp_path / "empty")


def test_jsonl_split_filter(tmp_path: Path) -> None:
    tagged = [
        r.model_copy(update={"meta": {"split": s}})
        for r, s in zip(rows(), ["train", "test"], strict=True)
    ]
    path = save_jsonl(tagged, tmp_path / "t.jsonl")
    assert load_dataset(path, split="test").prompts == ["Capital of Peru?"]
    with pytest.raises(DatasetError, match="meta.split == 'dev'"):
        load_dataset(path, split="dev")


def _raw_llmrouter(split: str) -> list[dict]:
    return json.loads((LLMROUTER / "data" / "dcrouter_preprocessed" / f"{split}.json").read_text())


def test_llmrouter_splits_tasks_and_prices() -> None:
    train, test = _raw_llmrouter("train"), _raw_llmrouter("test")
    seen = {r["question"] for r in train}
    expected_dedup = [r for r in test if r["question"] not in seen]
    ds_train = load_dataset(LLMROUTER, split="train")
    ds_test = load_dataset(LLMROUTER, split="test")
    ds_dedup = load_dataset(LLMROUTER, split="dedup")
    assert len(ds_train) == len(train) and len(ds_test) == len(test)
    assert len(ds_dedup) == len(expected_dedup) < len(test)
    assert ds_dedup.prompts == [r["question"] for r in expected_dedup]
    assert ds_train.experts == ds_test.experts == ds_dedup.experts == list(train[0]["scores"])
    # scores exactly as stored
    j = ds_dedup.experts.index("gemma-2-9b-it")
    assert ds_dedup.scores()[:, j].tolist() == [
        float(r["scores"]["gemma-2-9b-it"]) for r in expected_dedup
    ]
    # every scored query joins a task; price is the mean of input and output price per 1M tokens
    assert all(t for t in ds_train.tasks) and all(t for t in ds_dedup.tasks)
    llms = json.loads(
        (LLMROUTER / "data" / "example_data" / "llm_candidates" / "default_llm.json").read_text()
    )
    for name in ds_train.experts:
        assert ds_train.prices[name] == pytest.approx(
            (llms[name]["input_price"] + llms[name]["output_price"]) / 2
        )
    assert "1M tokens" in ds_train.cost_unit
    with pytest.raises(DatasetError, match="unknown split 'val'"):
        load_dataset(LLMROUTER, split="val")


def _csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _contaminated(name: str) -> set[str]:
    path = ROUTELLM / "routellm" / "evals" / name / "contaminated_prompts.jsonl"
    return {
        json.loads(line)["eval_prompt"] for line in path.read_text().splitlines() if line.strip()
    }


def test_routellm_gsm8k_is_decontaminated_with_strong_weak_costs() -> None:
    raw = _csv_rows(ROUTELLM / "routellm" / "evals" / "gsm8k" / "gsm8k_responses.csv")
    drop = _contaminated("gsm8k")
    kept = [r for r in raw if r["prompt"] not in drop]
    ds = load_dataset(f"{ROUTELLM}#gsm8k")
    assert len(ds) == len(kept) < len(raw)
    strong, weak = ds.meta["strong"], ds.meta["weak"]
    assert ds.experts == [strong, weak]
    s = ds.scores()
    assert s[:, 0].mean() == pytest.approx(np.mean([r[strong] == "True" for r in kept]))
    assert ds.costs()[0].tolist() == [1.0, 0.0] and "strong" in ds.cost_unit
    assert ds.examples[0].responses[strong] == kept[0][f"{strong}_response"]


def test_routellm_mmlu_and_mt_bench() -> None:
    files = sorted((ROUTELLM / "routellm" / "evals" / "mmlu" / "responses").glob("mmlu_*.csv"))
    drop = _contaminated("mmlu")
    total = sum(1 for f in files for r in _csv_rows(f) if r["prompt"] not in drop)
    mmlu = load_dataset(ROUTELLM, subset="mmlu")
    assert len(mmlu) == total and len(set(mmlu.tasks)) == len(files)
    questions = [
        json.loads(x)
        for x in (ROUTELLM / "routellm" / "evals" / "mt_bench" / "question.jsonl")
        .read_text()
        .splitlines()
    ]
    mt_drop = _contaminated("mt_bench")
    mt = load_dataset(f"{ROUTELLM}#mt-bench")
    assert len(mt) == sum(1 for q in questions if not any(t in mt_drop for t in q["turns"]))
    s = mt.scores()
    assert np.all((s >= 0.1) & (s <= 1.0))  # grades 1..10 scaled to 0.1..1
    assert mt.prompts[0] == next(
        q["turns"][0] for q in questions if not any(t in mt_drop for t in q["turns"])
    )
    with pytest.raises(DatasetError, match="needs a benchmark"):
        load_dataset(ROUTELLM)
    with pytest.raises(DatasetError, match="unknown benchmark"):
        load_dataset(ROUTELLM, subset="hellaswag")


def _zeroeval_record(qid: int, question: str, gold: str, reply: str) -> dict:
    return {
        "session_id": f"s{qid}",
        "id": qid,
        "question": question,
        "answer": gold,
        "output": [reply],
        "chat_history": [question],
        "generator": "m",
    }


def test_zeroeval_style_folder_built_here(tmp_path: Path) -> None:
    task = tmp_path / "result_dirs" / "arith"
    task.mkdir(parents=True)
    qs = [("What is 2+3?", "# 5"), ("What is 10*4?", "# 40"), ("What is 9-1?", "# 8")]
    good = [
        _zeroeval_record(i, q, g, json.dumps({"reasoning": "...", "answer": g.strip("# ")}))
        for i, (q, g) in enumerate(qs)
    ]
    bad = [
        _zeroeval_record(i, q, g, json.dumps({"reasoning": "...", "answer": "7"}))
        for i, (q, g) in enumerate(qs)
    ]
    (task / "good-model.json").write_text(json.dumps(good))
    (task / "bad-model.json").write_text(json.dumps(bad))
    assert detect_layout(tmp_path) == "zeroeval"
    ds = load_dataset(tmp_path)
    assert sorted(ds.experts) == ["bad-model", "good-model"] and len(ds) == 3
    s = ds.scores()
    assert s[:, ds.experts.index("good-model")].tolist() == [1.0, 1.0, 1.0]
    assert s[:, ds.experts.index("bad-model")].tolist() == [0.0, 0.0, 0.0]
    assert ds.tasks == ["arith"] * 3 and not ds.has_costs


def test_zeroeval_shared_gsm_matches_the_parser() -> None:
    from expertgraph.policies.data.zeroeval import load_zeroeval

    ds = load_dataset(ZEROEVAL)
    ref = load_zeroeval(ZEROEVAL / "result_dirs" / "gsm")
    assert len(ds) == ref.n and set(ds.experts) == set(ref.models)
    for m in ref.models[:3]:
        assert ds.scores()[:, ds.experts.index(m)].mean() == pytest.approx(
            ref.correct[ref.model_index(m)].mean()
        )


def test_save_jsonl_writes_prices_into_rows(tmp_path: Path) -> None:
    ds = RoutingDataset(name="d", experts=["x", "y"], examples=rows()[:1], prices={"y": 0.1})
    path = ds.save_jsonl(tmp_path / "out.jsonl")
    back = load_jsonl(path)[0]
    assert back.costs == {"x": 0.5}  # the row's own cost kept
    ds2 = RoutingDataset(
        name="d",
        experts=["x", "y"],
        examples=[rows()[0].model_copy(update={"costs": {}})],
        prices={"x": 0.3, "y": 0.1},
    )
    assert load_jsonl(ds2.save_jsonl(tmp_path / "o2.jsonl"))[0].costs == {"x": 0.3, "y": 0.1}
