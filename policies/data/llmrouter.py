"""LLMRouter's RouterDC data as a routing dataset.

The layout as published: ``data/dcrouter_preprocessed/{train,test}.json`` (9 models x 14
tasks), with the task names joined from ``data/example_data/query_data/*.jsonl`` on the exact
question text and each model's price from ``data/example_data/llm_candidates/default_llm.json``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from expertgraph.core.types import RoutingExample
from expertgraph.policies.data.dataset import DatasetError, RoutingDataset

LLMROUTER_SPLITS = ("train", "test", "dedup")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DatasetError(f"{path}: no such file") from None
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path}: not JSON ({exc})") from None


def _llmrouter_tasks(root: Path) -> dict[str, dict[str, Any]]:
    """Query text (stripped) -> its query_data row (task name, metric)."""
    out: dict[str, dict[str, Any]] = {}
    folder = root / "data" / "example_data" / "query_data"
    for name in ("default_query_train.jsonl", "default_query_test.jsonl"):
        path = folder / name
        if not path.is_file():
            continue
        with path.open(encoding="utf-8") as handle:
            for line in handle:
                if line.strip():
                    row = json.loads(line)
                    out.setdefault(str(row.get("query", "")).strip(), row)
    return out


def load_llmrouter_dc(root: str | Path, split: str = "train") -> RoutingDataset:
    """LLMRouter's RouterDC data: ``train`` (5,608), ``test`` (500) or ``dedup``.

    ``dedup`` is the test split without the questions that also appear word for word in
    train (119 of them), which leaves 381 rows. A row's cost for an expert is that model's
    price per 1M tokens (the mean of its input and output price), so a mean cost is the mean
    price of the chosen models.
    """
    base = Path(root)
    if split not in LLMROUTER_SPLITS:
        raise DatasetError(
            f"llmrouter-dc: unknown split {split!r}; choose one of {', '.join(LLMROUTER_SPLITS)}"
        )
    pre = base / "data" / "dcrouter_preprocessed"
    source = "train" if split == "train" else "test"
    raw = _read_json(pre / f"{source}.json")
    if not isinstance(raw, list) or not raw:
        raise DatasetError(f"{pre / (source + '.json')}: expected a non-empty JSON list")
    if split == "dedup":
        train_questions = {str(r["question"]) for r in _read_json(pre / "train.json")}
        # A question counts as seen when its exact text is in train (119 rows: all gpqa,
        # all human_eval and 19 mbpp, per the data's SOURCE.md).
        indexed = [(i, r) for i, r in enumerate(raw) if str(r["question"]) not in train_questions]
    else:
        indexed = list(enumerate(raw))
    llm_path = base / "data" / "example_data" / "llm_candidates" / "default_llm.json"
    llms = _read_json(llm_path) if llm_path.is_file() else {}
    tasks = _llmrouter_tasks(base)
    # One order of experts for every split: the order train.json stores them in.
    order_source = _read_json(pre / "train.json") if (pre / "train.json").is_file() else raw
    experts = list(order_source[0]["scores"])
    prices: dict[str, float] = {}
    for name in experts:
        info = llms.get(name)
        if info is not None:
            prices[name] = (float(info["input_price"]) + float(info["output_price"])) / 2
    examples = []
    for i, row in indexed:
        question = str(row["question"])
        info = tasks.get(question.strip(), {})
        meta: dict[str, Any] = {"row": i}
        if "cluster_id" in row:
            meta["cluster_id"] = row["cluster_id"]
        if info.get("metric"):
            meta["metric"] = info["metric"]
        examples.append(
            RoutingExample(
                id=f"{source}-{i}",
                prompt=question,
                scores={k: float(v) for k, v in row["scores"].items()},
                task=info.get("task_name"),
                meta=meta,
            )
        )
    return RoutingDataset(
        name="llmrouter-dc",
        experts=experts,
        examples=examples,
        split=split,
        prices=prices,
        cost_unit="USD per 1M tokens of the chosen model" if prices else "",
        meta={"source": str(base)},
    )
