"""RouteLLM's evaluation data (GPT-4 vs Mixtral) as a routing dataset.

The layout as published: ``routellm/evals/{mmlu,gsm8k,mt_bench}``, decontaminated the way
RouteLLM's own evaluation does it.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from expertgraph.core.types import RoutingExample
from expertgraph.policies.data.dataset import DatasetError, RoutingDataset

ROUTELLM_STRONG = "gpt-4-1106-preview"
ROUTELLM_WEAK = "mistralai/Mixtral-8x7B-Instruct-v0.1"
ROUTELLM_BENCHMARKS = ("mmlu", "gsm8k", "mt-bench")
_EXPERTS = (ROUTELLM_STRONG, ROUTELLM_WEAK)


def _contaminated(path: Path) -> set[str]:
    if not path.is_file():
        return set()
    with path.open(encoding="utf-8") as handle:
        return {json.loads(line)["eval_prompt"] for line in handle if line.strip()}


def _truth(value: str) -> float:
    text = value.strip().lower()
    if text in ("true", "1", "1.0"):
        return 1.0
    if text in ("false", "0", "0.0"):
        return 0.0
    raise DatasetError(f"not a True/False correctness value: {value!r}")


def _csv_examples(path: Path, drop: set[str], id_prefix: str, task: str) -> list[RoutingExample]:
    """One example per row of a responses CSV (columns ``prompt``, each expert's correctness
    and, where present, ``<expert>_response``), skipping contaminated prompts."""
    examples: list[RoutingExample] = []
    with path.open(encoding="utf-8", newline="") as handle:
        for i, row in enumerate(csv.DictReader(handle)):
            if row["prompt"] in drop:
                continue
            examples.append(
                RoutingExample(
                    id=f"{id_prefix}-{i}",
                    prompt=row["prompt"],
                    scores={m: _truth(row[m]) for m in _EXPERTS},
                    responses={
                        m: row[f"{m}_response"] for m in _EXPERTS if row.get(f"{m}_response")
                    },
                    task=task,
                )
            )
    return examples


def _mmlu(base: Path) -> list[RoutingExample]:
    folder = base / "mmlu" / "responses"
    files = sorted(folder.glob("mmlu_*.csv"))
    if not files:
        raise DatasetError(f"{folder}: no mmlu_<subject>.csv files")
    drop = _contaminated(base / "mmlu" / "contaminated_prompts.jsonl")
    examples: list[RoutingExample] = []
    for path in files:
        subject = path.stem.removeprefix("mmlu_")
        examples += _csv_examples(path, drop, f"mmlu-{subject}", subject)
    return examples


def _gsm8k(base: Path) -> list[RoutingExample]:
    path = base / "gsm8k" / "gsm8k_responses.csv"
    if not path.is_file():
        raise DatasetError(f"{path}: no such file")
    drop = _contaminated(base / "gsm8k" / "contaminated_prompts.jsonl")
    return _csv_examples(path, drop, "gsm8k", "gsm8k")


def _mt_bench(base: Path) -> list[RoutingExample]:
    folder = base / "mt_bench"
    drop = _contaminated(folder / "contaminated_prompts.jsonl")
    questions = [
        json.loads(line)
        for line in (folder / "question.jsonl").read_text().splitlines()
        if line.strip()
    ]
    grades: dict[tuple[str, str], list[float]] = {}
    for line in (folder / "judgements.jsonl").read_text().splitlines():
        if line.strip():
            j = json.loads(line)
            grades.setdefault((str(j["question_id"]), j["model"]), []).append(float(j["score"]))
    examples: list[RoutingExample] = []
    for q in questions:
        turns = q["turns"]
        if any(t in drop for t in turns):
            continue
        qid = str(q["question_id"])
        scores = {
            m: float(np.mean(grades[(qid, m)])) / 10.0 for m in _EXPERTS if (qid, m) in grades
        }
        examples.append(
            RoutingExample(
                id=f"mt-bench-{qid}",
                prompt=turns[0],
                scores=scores,
                task=q.get("category"),
                meta={"turns": turns},
            )
        )
    return examples


_READERS: dict[str, Callable[[Path], list[RoutingExample]]] = {
    "mmlu": _mmlu,
    "gsm8k": _gsm8k,
    "mt-bench": _mt_bench,
}


def load_routellm(root: str | Path, benchmark: str) -> RoutingDataset:
    """RouteLLM's evaluation data for ``mmlu``, ``gsm8k`` or ``mt-bench``.

    Scores are 1/0 correctness (MMLU, GSM8K) or the GPT-4 grade / 10 averaged over both
    turns (MT-Bench, routed on the first turn as RouteLLM does). Contaminated prompts are
    dropped as RouteLLM's ``benchmarks.py`` drops them. The cost of a row is 1 for the strong
    model and 0 for the weak one, so a mean cost is the share of calls to GPT-4.
    """
    read = _READERS.get(benchmark)
    if read is None:
        raise DatasetError(
            f"routellm: unknown benchmark {benchmark!r}; "
            f"choose one of {', '.join(ROUTELLM_BENCHMARKS)}"
        )
    base = Path(root) / "routellm" / "evals"
    if not base.is_dir():
        base = Path(root)
    return RoutingDataset(
        name=f"routellm-{benchmark}",
        experts=list(_EXPERTS),
        examples=read(base),
        split="all",
        prices={ROUTELLM_STRONG: 1.0, ROUTELLM_WEAK: 0.0},
        cost_unit="share of calls to the strong model",
        meta={"strong": ROUTELLM_STRONG, "weak": ROUTELLM_WEAK, "benchmark": benchmark},
    )
