"""Routing rows with recorded replies, built by rule for the cascade tests.

Two tasks of arithmetic questions. Each expert is right with its own chance per task and,
when wrong, either makes its own mistake or, for the two cheap experts on ``products``, the
*same* mistake (correlated errors: their agreement is then wrong). Replies write the answer
in varied surface forms (``$12``, ``12 dollars``, JSON), so agreement is only visible
through the answer extractor. Scores are computed from the truth the builder drew.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from expertgraph.core.types import RoutingExample

# expert -> (price per reply, {task: chance of a right answer})
EXPERTS = {
    "cheap_a": (1.0, {"sums": 0.97, "products": 0.55}),
    "cheap_b": (1.0, {"sums": 0.75, "products": 0.6}),
    "mid": (3.0, {"sums": 0.85, "products": 0.88}),
    "strong": (10.0, {"sums": 0.95, "products": 0.95}),
}
SHARED_MISTAKE = {"products": 0.6}
"""On products, a wrong cheap reply makes the shared mistake (answer + 1) this often."""


def _reply(answer: int, rng: random.Random) -> str:
    form = rng.randrange(3)
    if form == 0:
        return json.dumps({"reasoning": "worked it out", "answer": str(answer)})
    if form == 1:
        return f"Step by step... The answer is ${answer}."
    return f"So the total comes to {answer} dollars.\n#### {answer}"


def build_rows(n_per_task: int = 120, seed: int = 3) -> list[RoutingExample]:
    """Rows of both tasks, half ``meta.split`` train and half test (alternating)."""
    rng = random.Random(seed)
    rows: list[RoutingExample] = []
    for task in ("sums", "products"):
        for i in range(n_per_task):
            a, b = rng.randint(10, 99), rng.randint(10, 99)
            truth = a + b if task == "sums" else a * b
            op = "+" if task == "sums" else "*"
            shared = truth + 1
            replies: dict[str, str] = {}
            scores: dict[str, float] = {}
            costs: dict[str, float] = {}
            shared_now = rng.random() < SHARED_MISTAKE.get(task, 0.0)
            for name, (price, chance) in EXPERTS.items():
                right = rng.random() < chance[task]
                if right:
                    answer = truth
                elif name.startswith("cheap") and shared_now:
                    answer = shared
                else:
                    answer = truth + rng.randint(2, 50)
                replies[name] = _reply(answer, rng)
                scores[name] = 1.0 if right else 0.0
                costs[name] = price
            rows.append(
                RoutingExample(
                    id=f"{task}-{i}",
                    prompt=f"[{task} {i}] What is {a} {op} {b}?",
                    scores=scores,
                    costs=costs,
                    responses=replies,
                    task=task,
                    meta={"split": "train" if i % 2 == 0 else "test"},
                )
            )
    return rows


def write_rows(path: Path, rows: list[RoutingExample], *, costs: bool = True) -> Path:
    """JSONL of the rows; without ``costs`` the rows carry none (a price table gives them)."""
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            if not costs:
                row = row.model_copy(update={"costs": {}})
            handle.write(row.model_dump_json() + "\n")
    return path
