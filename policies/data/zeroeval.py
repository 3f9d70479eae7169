"""Load and score a ZeroEval-style folder of model outputs: ``result_dirs/<task>/<model>.json``.

Each model file is a JSON list, one record per question, with the model's raw reply in
``output[0]`` and the gold answer in ``answer`` (GSM8K writes it ``"# 18"``) or
``correct_answer``. Correctness is not stored: it is parsed here, with the same
:func:`~expertgraph.policies.aggregation.answers.extract_answer` the voters use, so a benchmark
scores exactly the answers that vote. ZeroEval's published accuracies, when the folder's
``<task>.summary.json`` sits next to it, come along for a scorer check.

Used by the voting benchmark (:func:`load_zeroeval`, one task folder) and by the routing tools
(:func:`load_zeroeval_folder`, every task folder as one routing dataset).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

import numpy as np

from expertgraph.core.errors import DatasetError, ZeroEvalError
from expertgraph.core.types import AnswerFormat, RoutingExample
from expertgraph.policies.aggregation.answers import (
    Extracted,
    extract_answer,
    extract_choice,
    find_json_field,
    normalize_text,
    number_in_span,
    numbers_equal,
)
from expertgraph.policies.data.dataset import RoutingDataset, from_examples

Kind = Literal["number", "choice", "text"]
_GOLD_FIELDS = ("answer", "correct_answer", "gold", "target", "label")
_QUESTION_FIELDS = ("question", "problem", "instruction", "input", "prompt")
_CHOICE_GOLD = re.compile(r"^\s*\(?([A-J])\)?\s*$")


@dataclass
class ZeroEvalSet:
    """Every model's reply to every question of one task, parsed and scored.

    Arrays are indexed ``[model, question]`` in the order of :attr:`models` and :attr:`ids`.
    """

    task: str
    ids: list[str]
    questions: list[str]
    gold: list[str]
    """Canonical gold answers (numbers as :func:`format_number` writes them)."""
    models: list[str]
    responses: list[list[str]]
    answers: list[list[str | None]]
    """Extracted answers; None where the reply had none (see :attr:`reasons`)."""
    reasons: list[list[str]]
    """Why no answer could be extracted ('' where one was)."""
    correct: np.ndarray
    """Boolean ``(n_models, n_questions)``."""
    answer_format: AnswerFormat
    kind: Kind
    published: dict[str, float] = field(default_factory=dict)
    """ZeroEval's own accuracy (percent) per model, from ``<task>.summary.json``."""
    prompt_chars: list[int] = field(default_factory=list)
    """Characters of each question's full prompt as sent (``chat_history``: the question in
    ZeroEval's fixed instruction), for token estimates."""

    @property
    def n(self) -> int:
        return len(self.ids)

    def model_index(self, model: str) -> int:
        return self.models.index(model)

    def accuracy(self, model: str | None = None) -> float | dict[str, float]:
        """Accuracy in percent of one model, or of each model (a dict)."""
        acc = self.correct.mean(axis=1) * 100.0
        if model is not None:
            return float(acc[self.model_index(model)])
        return {m: float(a) for m, a in zip(self.models, acc, strict=True)}

    def oracle(self) -> float:
        """Percent of questions that at least one model answered correctly."""
        return float(self.correct.any(axis=0).mean() * 100.0)

    def no_answer(self) -> dict[str, float]:
        """Percent of replies per model from which no answer could be extracted."""
        return {
            m: 100.0 * sum(a is None for a in answers) / max(1, self.n)
            for m, answers in zip(self.models, self.answers, strict=True)
        }

    def is_correct(self, answer: str | None, question: int) -> bool:
        """Score any answer (a vote's winner) against question ``question``'s gold."""
        return score_answer(answer, self.gold[question], self.kind)

    def subset(self, models: Sequence[str]) -> ZeroEvalSet:
        """The same questions with only ``models`` (in that order)."""
        idx = [self.model_index(m) for m in models]
        return ZeroEvalSet(
            task=self.task,
            ids=self.ids,
            questions=self.questions,
            gold=self.gold,
            models=list(models),
            responses=[self.responses[i] for i in idx],
            answers=[self.answers[i] for i in idx],
            reasons=[self.reasons[i] for i in idx],
            correct=self.correct[idx],
            answer_format=self.answer_format,
            kind=self.kind,
            published={m: v for m, v in self.published.items() if m in models},
            prompt_chars=self.prompt_chars,
        )

    def routing_examples(self) -> list[RoutingExample]:
        """One :class:`RoutingExample` per question: 1/0 correctness per model, and replies.

        ZeroEval stores no prices or token counts, so ``costs`` is left empty; ``meta`` holds
        each reply's length in characters as a cost proxy, the full prompt's length
        (``input_chars``, for :mod:`~expertgraph.policies.data.prices`), the gold answer and
        the answer format the replies were scored with.
        """
        fmt = self.answer_format.model_dump(exclude_defaults=True)
        rows: list[RoutingExample] = []
        for q, qid in enumerate(self.ids):
            rows.append(
                RoutingExample(
                    id=qid,
                    prompt=self.questions[q],
                    scores={m: float(self.correct[i, q]) for i, m in enumerate(self.models)},
                    responses={m: self.responses[i][q] for i, m in enumerate(self.models)},
                    task=self.task,
                    meta={
                        "gold": self.gold[q],
                        "output_chars": {
                            m: len(self.responses[i][q]) for i, m in enumerate(self.models)
                        },
                        "answers": {m: self.answers[i][q] for i, m in enumerate(self.models)},
                        "answer_format": fmt,
                        **(
                            {"input_chars": self.prompt_chars[q]}
                            if q < len(self.prompt_chars)
                            else {}
                        ),
                    },
                )
            )
        return rows


def score_answer(answer: str | None, gold: str, kind: Kind) -> bool:
    """Whether an extracted answer matches the canonical gold answer."""
    if answer is None:
        return False
    if kind == "number":
        return numbers_equal(answer, gold)
    if kind == "choice":
        return answer.strip().upper() == gold.strip().upper()
    return normalize_text(answer) == normalize_text(gold)


def _canonical_gold(raw: Any, kind: Kind) -> str:
    text = raw if isinstance(raw, str) else json.dumps(raw)
    if kind == "number":
        found = number_in_span(text.replace("#", " "))
        if found.answer is None:
            raise ZeroEvalError(f"gold answer {text!r} has no number")
        return found.answer
    if kind == "choice":
        found = extract_choice(text)
        if found.answer is None:
            raise ZeroEvalError(f"gold answer {text!r} is not a choice letter")
        return found.answer
    return normalize_text(text)


def infer_kind(golds: Sequence[Any]) -> Kind:
    """``number`` if every gold is a number, ``choice`` if every gold is a letter, else ``text``."""
    texts = [g if isinstance(g, str) else json.dumps(g) for g in golds]
    if texts and all(_CHOICE_GOLD.match(t) for t in texts):
        return "choice"
    numeric = re.compile(r"^\s*#*\s*[-−]?\$?\s*[\d,]*\.?\d+\s*%?\s*$")
    if texts and all(numeric.match(t) for t in texts):
        return "number"
    return "text"


def _question_text(record: dict[str, Any]) -> str:
    for name in _QUESTION_FIELDS:
        value = record.get(name)
        if isinstance(value, str) and value.strip():
            return value
    history = record.get("chat_history")
    if isinstance(history, list) and history:
        return str(history[-1])
    return ""


def _prompt_text(record: dict[str, Any]) -> str:
    """The prompt as sent: ZeroEval's ``chat_history`` (instruction and question), else the
    question."""
    history = record.get("chat_history")
    if isinstance(history, list):
        return "\n".join(str(h) for h in history)
    if isinstance(history, str) and history.strip():
        return history
    return _question_text(record)


def _gold_field(record: dict[str, Any]) -> str:
    for name in _GOLD_FIELDS:
        if name in record:
            return name
    raise ZeroEvalError(
        f"record {record.get('id')!r} has no gold field (looked for {list(_GOLD_FIELDS)})"
    )


def _reply(record: dict[str, Any]) -> str:
    output = record.get("output")
    if isinstance(output, list):
        return str(output[0]) if output else ""
    return "" if output is None else str(output)


def _read_model_file(path: Path) -> list[dict[str, Any]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ZeroEvalError(f"{path}: cannot read model outputs: {exc}") from exc
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise ZeroEvalError(f"{path}: expected a JSON list of records")
    return data


def _published(task_dir: Path) -> dict[str, float]:
    summary = task_dir.parent / f"{task_dir.name}.summary.json"
    if not summary.is_file():
        return {}
    try:
        rows = json.loads(summary.read_text(encoding="utf-8"))
        return {
            str(r["Model"]): float(r["Acc"]) for r in rows if r.get("Mode", "greedy") == "greedy"
        }
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError):
        return {}


def _id_sort_key(qid: str) -> tuple[str, int, str]:
    match = re.search(r"(\d+)$", qid)
    return (qid[: match.start()] if match else qid, int(match.group(1)) if match else -1, qid)


def load_zeroeval(
    task_dir: str | Path,
    *,
    models: Sequence[str] | None = None,
    kind: Kind | None = None,
    answer_format: AnswerFormat | None = None,
) -> ZeroEvalSet:
    """Load ``task_dir/<model>.json`` for every model (or the named ones), parse and score.

    ``kind`` (number, choice, text) is inferred from the gold answers when not given. The
    replies are read with ``answer_format`` (default: that kind, the JSON ``answer`` field
    ZeroEval's prompt asks for first). Only questions every model answered are kept, sorted
    by id.
    """
    root = Path(task_dir)
    if not root.is_dir():
        raise ZeroEvalError(f"{root}: not a folder (expected result_dirs/<task>/<model>.json)")
    files = {p.stem: p for p in sorted(root.glob("*.json")) if not p.name.endswith(".summary.json")}
    if models is not None:
        missing = [m for m in models if m not in files]
        if missing:
            raise ZeroEvalError(f"{root}: no file for models {missing}; found {sorted(files)}")
        files = {m: files[m] for m in models}
    if not files:
        raise ZeroEvalError(f"{root}: no <model>.json files")

    records: dict[str, dict[str, dict[str, Any]]] = {}
    for model, path in files.items():
        rows = _read_model_file(path)
        by_id: dict[str, dict[str, Any]] = {}
        for i, row in enumerate(rows):
            qid = str(row.get("id", row.get("session_id", i)))
            by_id[qid] = row
        records[model] = by_id
    names = list(files)
    common = set.intersection(*(set(r) for r in records.values()))
    if not common:
        raise ZeroEvalError(f"{root}: the model files share no question id")
    ids = sorted(common, key=_id_sort_key)

    first = records[names[0]]
    gold_name = _gold_field(first[ids[0]])
    raw_gold = [first[q].get(gold_name) for q in ids]
    kind = kind or infer_kind(raw_gold)
    gold = [_canonical_gold(g, kind) for g in raw_gold]
    fmt = answer_format or AnswerFormat(kind=kind, json_field="answer")

    responses: list[list[str]] = []
    answers: list[list[str | None]] = []
    reasons: list[list[str]] = []
    correct = np.zeros((len(names), len(ids)), dtype=bool)
    for m, model in enumerate(names):
        texts = [_reply(records[model][q]) for q in ids]
        found: list[Extracted] = [extract_answer(t, fmt) for t in texts]
        responses.append(texts)
        answers.append([f.answer for f in found])
        reasons.append([f.reason if f.answer is None else "" for f in found])
        correct[m] = [score_answer(f.answer, g, kind) for f, g in zip(found, gold, strict=True)]
    return ZeroEvalSet(
        task=root.name,
        ids=ids,
        questions=[_question_text(first[q]) for q in ids],
        gold=gold,
        models=names,
        responses=responses,
        answers=answers,
        reasons=reasons,
        correct=correct,
        answer_format=fmt,
        kind=kind,
        published=_published(root),
        prompt_chars=[len(_prompt_text(first[q])) for q in ids],
    )


def _first_number_rule(text: str, gold: str) -> bool:
    """ZeroEval's published GSM rule, restated: the first number of the ``answer`` field."""
    field_value = find_json_field(text, "answer")
    if field_value is None:
        return False
    match = re.search(r"-?\d+(?:\.\d+)?", field_value.replace("$", "").replace(",", ""))
    return bool(match) and numbers_equal(str(Fraction(match.group())), gold)


def explain_differences(data: ZeroEvalSet, model: str) -> dict[str, int]:
    """Why this scorer and ZeroEval's rule (first number of the answer field) disagree.

    Counts, for one numeric-task model, the questions scored differently, by cause:
    ``equation`` (the field is a calculation, e.g. ``"4 * 15 * 12 = 720"``: ZeroEval reads
    its first number, this scorer its result), ``no_field`` (no ``answer`` field: this scorer
    reads ``\\boxed{}``, a marker or the last number), ``other``; each split into
    ``+`` (right here, wrong there) and ``-`` (the reverse).
    """
    if data.kind != "number":
        return {}
    m = data.model_index(model)
    counts: dict[str, int] = {}
    for q in range(data.n):
        text = data.responses[m][q]
        theirs = _first_number_rule(text, data.gold[q])
        ours = bool(data.correct[m, q])
        if theirs == ours:
            continue
        field_value = find_json_field(text, "answer")
        cause = (
            "no_field" if field_value is None else ("equation" if "=" in field_value else "other")
        )
        key = f"{'+' if ours else '-'}{cause}"
        counts[key] = counts.get(key, 0) + 1
    return counts


# ----------------------------------------------------------------------------- as a routing dataset


def zeroeval_task_dirs(root: Path) -> list[Path]:
    """The task folders under ``root``: itself if it holds ``<model>.json``, else its children."""
    if any(
        p.suffix == ".json" and not p.name.endswith(".summary.json") for p in root.glob("*.json")
    ):
        return [root]
    base = root / "result_dirs" if (root / "result_dirs").is_dir() else root
    return sorted(p for p in base.iterdir() if p.is_dir() and any(p.glob("*.json")))


def load_zeroeval_folder(root: str | Path, task: str | None = None) -> RoutingDataset:
    """A ZeroEval-style folder: ``result_dirs/<task>/<model>.json`` (or one task folder).

    Each reply is scored 1/0 against the gold answer by :func:`load_zeroeval`. ZeroEval stores
    no prices, so costs are empty unless the rows are given some later.
    """
    base = Path(root)
    dirs = zeroeval_task_dirs(base)
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
