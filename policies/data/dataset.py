"""Routing datasets: one row per prompt with each expert's score (and cost, response, task).

The row type is :class:`~expertgraph.core.types.RoutingExample`, stored as JSONL (one
example per line). :func:`load_dataset` also reads three public layouts as they are
published, so that training and evaluation run on real results without a conversion step:

* LLMRouter's ``data/dcrouter_preprocessed/{train,test}.json`` (9 models x 14 tasks), with
  the task names joined from ``data/example_data/query_data/*.jsonl`` on the exact question
  text and each model's price from ``data/example_data/llm_candidates/default_llm.json``;
* RouteLLM's ``routellm/evals/{mmlu,gsm8k,mt_bench}`` (GPT-4 vs Mixtral), decontaminated the
  way RouteLLM's own evaluation does it;
* any ZeroEval-style folder ``result_dirs/<task>/<model>.json`` (replies scored by
  :mod:`expertgraph.policies.data.zeroeval`).
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from expertgraph.core.errors import ExpertGraphError
from expertgraph.core.types import RoutingExample
from pydantic import ValidationError


class DatasetError(ExpertGraphError, ValueError):
    """A routing dataset is missing, malformed, or asked for a split it does not have."""


@dataclass
class RoutingDataset:
    """Routing examples with a fixed order of experts, ready for matrices.

    ``prices`` gives one price per expert when the cost of a row is that price (LLMRouter:
    USD per 1M tokens of the chosen model; RouteLLM: 1 for the strong model, 0 for the weak
    one, so that a mean cost is the share of strong calls). Rows may carry their own costs.
    """

    name: str
    experts: list[str]
    examples: list[RoutingExample]
    split: str = "all"
    prices: dict[str, float] = field(default_factory=dict)
    cost_unit: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.examples)

    @property
    def prompts(self) -> list[str]:
        return [e.prompt for e in self.examples]

    @property
    def tasks(self) -> list[str | None]:
        return [e.task for e in self.examples]

    def scores(self) -> np.ndarray:
        """``(n, E)`` float array of scores; NaN where an expert has no score for a row."""
        out = np.full((len(self.examples), len(self.experts)), np.nan)
        col = {name: j for j, name in enumerate(self.experts)}
        for i, ex in enumerate(self.examples):
            for name, value in ex.scores.items():
                j = col.get(name)
                if j is not None and value is not None:
                    out[i, j] = float(value)
        return out

    def costs(self) -> np.ndarray:
        """``(n, E)`` costs: a row's own cost, else the expert's price, else 0."""
        default = np.array([self.prices.get(n, 0.0) for n in self.experts], dtype=float)
        out = np.tile(default, (len(self.examples), 1))
        col = {name: j for j, name in enumerate(self.experts)}
        for i, ex in enumerate(self.examples):
            for name, value in ex.costs.items():
                j = col.get(name)
                if j is not None:
                    out[i, j] = float(value)
        return out

    @property
    def has_costs(self) -> bool:
        return bool(self.prices) or any(ex.costs for ex in self.examples)

    def subset(self, indices: Iterable[int], split: str | None = None) -> RoutingDataset:
        """The rows at ``indices`` (same experts, prices and metadata)."""
        rows = [self.examples[i] for i in indices]
        return RoutingDataset(
            name=self.name,
            experts=list(self.experts),
            examples=rows,
            split=split or self.split,
            prices=dict(self.prices),
            cost_unit=self.cost_unit,
            meta=dict(self.meta),
        )

    def sha256(self) -> str:
        """A hash of the rows' content (prompt, scores, costs, task) in order.

        Artifacts record it, so a model can be traced back to the exact data it learned from.
        """
        digest = hashlib.sha256()
        digest.update(
            json.dumps({"experts": self.experts, "prices": self.prices}, sort_keys=True).encode()
        )
        for ex in self.examples:
            line = json.dumps(
                {"p": ex.prompt, "s": ex.scores, "c": ex.costs, "t": ex.task}, sort_keys=True
            )
            digest.update(line.encode("utf-8"))
            digest.update(b"\n")
        return digest.hexdigest()

    def save_jsonl(self, path: str | Path) -> Path:
        """Write the rows as routing-format JSONL; expert prices go into each row's costs."""
        rows = []
        for ex in self.examples:
            if self.prices and not ex.costs:
                ex = ex.model_copy(
                    update={"costs": {n: self.prices[n] for n in ex.scores if n in self.prices}}
                )
            rows.append(ex)
        return save_jsonl(rows, path)


# ----------------------------------------------------------------------------- JSONL


def save_jsonl(examples: Iterable[RoutingExample], path: str | Path) -> Path:
    """Write examples as JSONL, one per line."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("w", encoding="utf-8") as handle:
        for ex in examples:
            handle.write(ex.model_dump_json(exclude_defaults=False) + "\n")
    return target


def load_jsonl(path: str | Path) -> list[RoutingExample]:
    """Read routing-format JSONL; a bad line is reported with its number."""
    source = Path(path)
    if not source.is_file():
        raise DatasetError(f"{source}: no such file")
    rows: list[RoutingExample] = []
    with source.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                rows.append(RoutingExample.model_validate_json(line))
            except ValidationError as exc:
                first = exc.errors()[0]
                where = ".".join(str(p) for p in first["loc"]) or "row"
                raise DatasetError(f"{source}:{number}: {where}: {first['msg']}") from None
    if not rows:
        raise DatasetError(f"{source}: no rows")
    return rows


def from_examples(
    examples: Sequence[RoutingExample],
    name: str = "routing",
    *,
    split: str = "all",
    prices: dict[str, float] | None = None,
    cost_unit: str = "",
) -> RoutingDataset:
    """A dataset over the experts that the rows score, in order of first appearance."""
    experts: dict[str, None] = {}
    for ex in examples:
        for expert in ex.scores:
            experts.setdefault(expert, None)
    if not experts:
        raise DatasetError(f"{name}: no row scores any expert")
    return RoutingDataset(
        name=name,
        experts=list(experts),
        examples=list(examples),
        split=split,
        prices=dict(prices or {}),
        cost_unit=cost_unit,
    )


# ----------------------------------------------------------------------------- LLMRouter

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


# ----------------------------------------------------------------------------- RouteLLM

ROUTELLM_STRONG = "gpt-4-1106-preview"
ROUTELLM_WEAK = "mistralai/Mixtral-8x7B-Instruct-v0.1"
ROUTELLM_BENCHMARKS = ("mmlu", "gsm8k", "mt-bench")


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


def load_routellm(root: str | Path, benchmark: str) -> RoutingDataset:
    """RouteLLM's evaluation data for ``mmlu``, ``gsm8k`` or ``mt-bench``.

    Scores are 1/0 correctness (MMLU, GSM8K) or the GPT-4 grade / 10 averaged over both
    turns (MT-Bench, routed on the first turn as RouteLLM does). Contaminated prompts are
    dropped as RouteLLM's ``benchmarks.py`` drops them. The cost of a row is 1 for the strong
    model and 0 for the weak one, so a mean cost is the share of calls to GPT-4.
    """
    base = Path(root) / "routellm" / "evals"
    if not base.is_dir():
        base = Path(root)
    prices = {ROUTELLM_STRONG: 1.0, ROUTELLM_WEAK: 0.0}
    experts = [ROUTELLM_STRONG, ROUTELLM_WEAK]
    examples: list[RoutingExample] = []
    if benchmark == "mmlu":
        folder = base / "mmlu" / "responses"
        files = sorted(folder.glob("mmlu_*.csv"))
        if not files:
            raise DatasetError(f"{folder}: no mmlu_<subject>.csv files")
        drop = _contaminated(base / "mmlu" / "contaminated_prompts.jsonl")
        for path in files:
            subject = path.stem.removeprefix("mmlu_")
            with path.open(encoding="utf-8", newline="") as handle:
                for i, row in enumerate(csv.DictReader(handle)):
                    if row["prompt"] in drop:
                        continue
                    examples.append(
                        RoutingExample(
                            id=f"mmlu-{subject}-{i}",
                            prompt=row["prompt"],
                            scores={m: _truth(row[m]) for m in experts},
                            task=subject,
                        )
                    )
    elif benchmark == "gsm8k":
        path = base / "gsm8k" / "gsm8k_responses.csv"
        if not path.is_file():
            raise DatasetError(f"{path}: no such file")
        drop = _contaminated(base / "gsm8k" / "contaminated_prompts.jsonl")
        with path.open(encoding="utf-8", newline="") as handle:
            for i, row in enumerate(csv.DictReader(handle)):
                if row["prompt"] in drop:
                    continue
                examples.append(
                    RoutingExample(
                        id=f"gsm8k-{i}",
                        prompt=row["prompt"],
                        scores={m: _truth(row[m]) for m in experts},
                        responses={
                            m: row.get(f"{m}_response", "")
                            for m in experts
                            if row.get(f"{m}_response")
                        },
                        task="gsm8k",
                    )
                )
    elif benchmark == "mt-bench":
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
        for q in questions:
            turns = q["turns"]
            if any(t in drop for t in turns):
                continue
            qid = str(q["question_id"])
            scores = {
                m: float(np.mean(grades[(qid, m)])) / 10.0 for m in experts if (qid, m) in grades
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
    else:
        raise DatasetError(
            f"routellm: unknown benchmark {benchmark!r}; choose one of {', '.join(ROUTELLM_BENCHMARKS)}"
        )
    return RoutingDataset(
        name=f"routellm-{benchmark}",
        experts=experts,
        examples=examples,
        split="all",
        prices=prices,
        cost_unit="share of calls to the strong model",
        meta={"strong": ROUTELLM_STRONG, "weak": ROUTELLM_WEAK, "benchmark": benchmark},
    )


# ----------------------------------------------------------------------------- ZeroEval


def _zeroeval_task_dirs(root: Path) -> list[Path]:
    if any(
        p.suffix == ".json" and not p.name.endswith(".summary.json") for p in root.glob("*.json")
    ):
        return [root]
    base = root / "result_dirs" if (root / "result_dirs").is_dir() else root
    return sorted(p for p in base.iterdir() if p.is_dir() and any(p.glob("*.json")))


def load_zeroeval_folder(root: str | Path, task: str | None = None) -> RoutingDataset:
    """A ZeroEval-style folder: ``result_dirs/<task>/<model>.json`` (or one task folder).

    Each reply is scored 1/0 against the gold answer by the ZeroEval parser. ZeroEval stores
    no prices, so costs are empty unless the rows are given some later.
    """
    from expertgraph.policies.data.zeroeval import load_zeroeval

    base = Path(root)
    dirs = _zeroeval_task_dirs(base)
    if task is not None:
        dirs = [d for d in dirs if d.name == task]
    if not dirs:
        raise DatasetError(
            f"{base}: no <task>/<model>.json folders" + (f" for task {task!r}" if task else "")
        )
    examples: list[RoutingExample] = []
    for folder in dirs:
        data = load_zeroeval(folder)
        for ex in data.routing_examples():
            examples.append(ex.model_copy(update={"id": f"{data.task}-{ex.id}"}))
    name = "zeroeval" + (f"-{task}" if task else "")
    return from_examples(examples, name=name)


# ----------------------------------------------------------------------------- dispatch


def detect_layout(path: str | Path) -> str:
    """``jsonl``, ``llmrouter-dc``, ``routellm`` or ``zeroeval`` for a dataset path."""
    p = Path(path)
    if p.is_file():
        return "jsonl"
    if not p.is_dir():
        raise DatasetError(f"{p}: no such file or folder")
    if (p / "data" / "dcrouter_preprocessed").is_dir():
        return "llmrouter-dc"
    if (p / "routellm" / "evals").is_dir() or (p / "mmlu" / "responses").is_dir():
        return "routellm"
    try:
        if _zeroeval_task_dirs(p):
            return "zeroeval"
    except OSError:
        pass
    raise DatasetError(
        f"{p}: not a routing dataset (a .jsonl file, LLMRouter's data/dcrouter_preprocessed, "
        "RouteLLM's routellm/evals, or result_dirs/<task>/<model>.json)"
    )


def load_dataset(
    path: str | Path, *, split: str | None = None, subset: str | None = None
) -> RoutingDataset:
    """Load any supported layout. ``PATH#SUBSET`` is the same as passing ``subset``.

    ``split``: for LLMRouter ``train``/``test``/``dedup`` (default ``train``). ``subset``:
    RouteLLM's benchmark (``mmlu``, ``gsm8k``, ``mt-bench``) or a ZeroEval task name.
    """
    text = str(path)
    if "#" in text and subset is None:
        text, _, subset = text.rpartition("#")
    layout = detect_layout(text)
    if layout == "jsonl":
        rows = load_jsonl(text)
        if split not in (None, "all"):
            picked = [r for r in rows if r.meta.get("split") == split]
            if not picked:
                raise DatasetError(f"{text}: no row has meta.split == {split!r}")
            rows = picked
        return from_examples(rows, name=Path(text).stem, split=split or "all")
    if layout == "llmrouter-dc":
        return load_llmrouter_dc(text, split or "train")
    if layout == "routellm":
        if subset is None:
            raise DatasetError(
                f"{text}: RouteLLM data needs a benchmark: {', '.join(ROUTELLM_BENCHMARKS)} (PATH#mmlu)"
            )
        return load_routellm(text, subset)
    return load_zeroeval_folder(text, subset)
