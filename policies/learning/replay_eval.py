"""Offline evaluation of multi-call policies by replaying the replies recorded in the rows.

Each row is one step: the live policy decides on a routing state built from the row, and
the live aggregator combines the recorded replies (``RoutingExample.responses``), every
request for more served from the record by
:func:`~expertgraph.policies.aggregation.replay.replay_step` with the orchestrator's
fallback. So a cascade, a top-k vote or ahead-by-k is scored by exactly the code a live run
executes. A row's score is the recorded score of the expert whose reply was returned; its
cost is the sum of the recorded costs of the experts called.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from expertgraph.core import AggregationContext, Aggregator, Policy
from expertgraph.core.state import ExpertView, RoutingState
from expertgraph.core.types import AnswerFormat, ExpertCard, RoutingExample, StepResult, Task
from expertgraph.policies.aggregation.replay import recorded, replay_step
from expertgraph.policies.data.dataset import RoutingDataset
from expertgraph.policies.learning.cascade_plan import TASK_KEY


@dataclass
class RowReplay:
    """What the policy did on one row."""

    id: str
    task: str | None
    first: list[str]
    called: list[str]
    answer: str | None
    expert: str | None
    """Whose reply was returned (the winner's representative)."""
    score: float
    cost: float
    stage: int | None = None


@dataclass
class ReplayReport:
    """A multi-call policy's figures on the rows, and every row's replay."""

    policy: str
    rows: list[RowReplay] = field(default_factory=list)

    @property
    def score(self) -> float:
        return float(np.mean([r.score for r in self.rows])) if self.rows else float("nan")

    @property
    def cost(self) -> float:
        return float(np.mean([r.cost for r in self.rows])) if self.rows else float("nan")

    @property
    def calls_per_query(self) -> float:
        return float(np.mean([len(r.called) for r in self.rows])) if self.rows else 0.0

    def mix(self) -> dict[str, float]:
        """Share of rows on which each expert was called."""
        counts: dict[str, int] = {}
        for r in self.rows:
            for e in dict.fromkeys(r.called):
                counts[e] = counts.get(e, 0) + 1
        n = max(1, len(self.rows))
        return {e: c / n for e, c in sorted(counts.items(), key=lambda kv: -kv[1])}

    def escalations(self) -> dict[str, Any]:
        """Where the rows stopped: the share per stage, overall and per task."""

        def shares(rows: list[RowReplay]) -> dict[str, float]:
            counts: dict[str, int] = {}
            for r in rows:
                key = "none" if r.stage is None else str(r.stage)
                counts[key] = counts.get(key, 0) + 1
            return {k: counts[k] / len(rows) for k in sorted(counts)}

        out: dict[str, Any] = {"stopped_at_stage": shares(self.rows)}
        tasks = sorted({r.task for r in self.rows if r.task is not None})
        if tasks:
            out["per_task"] = {t: shares([r for r in self.rows if r.task == t]) for t in tasks}
        return out

    def per_task(self) -> dict[str, dict[str, float]]:
        tasks = sorted({r.task for r in self.rows if r.task is not None})
        out = {}
        for t in tasks:
            rows = [r for r in self.rows if r.task == t]
            out[t] = {
                "n": len(rows),
                "score": float(np.mean([r.score for r in rows])),
                "cost": float(np.mean([r.cost for r in rows])),
                "calls_per_query": float(np.mean([len(r.called) for r in rows])),
            }
        return out

    def summary(self) -> dict[str, Any]:
        return {
            "policy": self.policy,
            "score": self.score,
            "cost": self.cost,
            "calls_per_query": self.calls_per_query,
            "mix": self.mix(),
            "escalations": self.escalations(),
        }


def expert_views(dataset: RoutingDataset) -> list[ExpertView]:
    """The dataset's experts as a policy sees them, each card priced at its mean row cost
    (per query, put in ``cost_per_1k_input``), so cheapest-first orders follow the data."""
    C = dataset.costs()
    return [
        ExpertView(name=e, card=ExpertCard(cost_per_1k_input=float(C[:, j].mean())))
        for j, e in enumerate(dataset.experts)
    ]


def row_task(example: RoutingExample, answer_format: AnswerFormat) -> Task:
    """The live task a row stands for: its prompt, its answer format, its task label."""
    metadata = {TASK_KEY: example.task} if example.task is not None else {}
    return Task(
        id=example.id,
        prompt=example.prompt or example.id,
        answer_format=answer_format,
        metadata=metadata,
    )


def _returned(result: StepResult, candidates: list[Any]) -> str | None:
    """The expert whose reply the step returned: the winner's representative."""
    if result.failed:
        return None
    winners = set(result.winner)
    for g in candidates:
        if f"{g.expert}#{g.sample}" in winners and g.text.strip() == result.text:
            return g.expert
    for g in candidates:
        if f"{g.expert}#{g.sample}" in winners:
            return g.expert
    return None


def replay_rows(
    dataset: RoutingDataset,
    policy: Policy,
    aggregator: Aggregator,
    *,
    name: str | None = None,
    formats: Mapping[str | None, AnswerFormat] | None = None,
    max_calls: int = 16,
) -> ReplayReport:
    """Replay every row through ``policy`` and ``aggregator``; see the module docstring.

    A row's answer format: ``formats[task]``, else the row's ``meta["answer_format"]``, else
    the default (text).
    """
    from expertgraph.policies.learning.cascade_fit import row_format

    views = expert_views(dataset)
    col = {e: j for j, e in enumerate(dataset.experts)}
    S = np.nan_to_num(dataset.scores(), nan=0.0)
    C = dataset.costs()
    report = ReplayReport(name or getattr(policy, "name", "policy"))
    for i, ex in enumerate(dataset.examples):
        fmt = (formats or {}).get(ex.task) or row_format(ex) or AnswerFormat()
        task = row_task(ex, fmt)
        state = RoutingState(task=task, step_index=0, experts=views)
        decision = policy.decide(state)
        order = sorted(decision.scores, key=lambda n: decision.scores[n], reverse=True)
        context = AggregationContext(
            task=task,
            instruction=decision.instruction or task.text,
            answer_format=fmt,
            scores=dict(decision.scores),
            order=order,
            calls_left=max_calls,
        )
        replies = {e: [text] for e, text in ex.responses.items() if e in col}
        out = replay_step(
            aggregator, context, decision.experts, recorded(replies), max_calls=max_calls
        )
        called = [g.expert for g in out.candidates]
        expert = _returned(out.result, out.candidates)
        stage = (out.result.meta.get("cascade") or {}).get("accepted")
        report.rows.append(
            RowReplay(
                id=ex.id,
                task=ex.task,
                first=list(decision.experts),
                called=called,
                answer=out.result.answer,
                expert=expert,
                score=float(S[i, col[expert]]) if expert is not None else 0.0,
                cost=float(sum(C[i, col[e]] for e in dict.fromkeys(called))),
                stage=stage,
            )
        )
    return report
