"""A learned cascade's plan: per task, which experts to ask in which stages, and when to stop.

A :class:`StagePlan` is a list of stages (each a list of experts called together). After
each stage but the last, the replies so far are read (the one answer extractor, the red
flags) and counted in a vote weighted by each expert's measured reliability on the task
(log-odds of its accuracy); the step stops there when the leading answer has at least
``need[s]`` supporters. After the last stage the weighted vote decides. The plan is what
both halves of a live learned cascade read
(:class:`~expertgraph.policies.routing.cascade.LearnedCascade` and
:class:`~expertgraph.policies.aggregation.cascade.StagedCascade`) and what the offline
simulator of :mod:`~expertgraph.policies.learning.cascade_fit` scores, so training,
evaluation and a live run follow one rule.

On disk it is an artifact (``meta.json``, kind ``cascade``; nothing pickled).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from expertgraph.core.errors import PolicyError
from expertgraph.core.types import AnswerFormat
from expertgraph.policies.learning.artifacts import check_experts, load_artifact, save_artifact

KIND = "cascade"
TASK_KEY = "task"
"""``Task.metadata[TASK_KEY]`` names a live task's label (a row's ``task`` offline)."""
MIN_WEIGHT = 0.05
MAX_WEIGHT = 6.0


def vote_weight(accuracy: float) -> float:
    """An expert's vote weight: the log-odds of its accuracy, clipped to [0.05, 6]."""
    p = min(max(accuracy, 1e-6), 1 - 1e-6)
    return float(min(MAX_WEIGHT, max(MIN_WEIGHT, math.log(p / (1 - p)))))


def query_hash(text: str) -> float:
    """A query's fixed number in [0, 1): which of two mixed plans it takes."""
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def router_scores(reliability: Mapping[str, float], experts: Sequence[str]) -> dict[str, float]:
    """The decision's score per expert: its reliability, with a tiny rank term so no two tie.

    The tie-breaks of the vote (and the orchestrator's fallback order) read these scores;
    distinct values make them independent of the order in which concurrent replies arrive.
    """
    ranked = sorted(experts, key=lambda e: (-round(reliability.get(e, 0.0), 6), e))
    n = len(ranked)
    return {e: round(reliability.get(e, 0.0), 6) + (n - i) * 1e-9 for i, e in enumerate(ranked)}


@dataclass
class StagePlan:
    """One task's cascade: stages of experts, the support needed to stop after each."""

    stages: list[list[str]]
    need: list[int]
    """Supporters the leading answer needs to stop after stage s (one per stage but the last)."""
    reliability: dict[str, float]
    """Measured accuracy of every expert on this task (the router scores and vote weights)."""
    answer_format: AnswerFormat = field(default_factory=AnswerFormat)
    estimate: dict[str, float] = field(default_factory=dict)
    """Out-of-fold mean score and cost of this plan on the training rows of its task."""
    alternative: StagePlan | None = None
    """Another plan taken on a fixed share of the queries (by a hash of the query text): a
    point on the chord between two plans, which meets a cost target between theirs."""
    share: float = 0.0

    def pick(self, text: str) -> StagePlan:
        """This plan or its alternative for a query, the same for the same text everywhere."""
        if self.alternative is None or self.share <= 0:
            return self
        return self.alternative if query_hash(text) < self.share else self

    def __post_init__(self) -> None:
        if not self.stages or any(not s for s in self.stages):
            raise PolicyError("a cascade plan needs at least one non-empty stage")
        if len(self.need) != len(self.stages) - 1:
            raise PolicyError(
                f"a cascade plan of {len(self.stages)} stages needs {len(self.stages) - 1} "
                f"acceptance counts, got {len(self.need)}"
            )

    @property
    def experts(self) -> list[str]:
        own = [e for stage in self.stages for e in stage]
        return own + (self.alternative.experts if self.alternative is not None else [])

    def weights(self) -> dict[str, float]:
        return {e: vote_weight(a) for e, a in self.reliability.items()}

    def describe(self) -> str:
        if self.alternative is not None and self.share > 0:
            return (
                f"{self._describe()}; on {self.share:.1%} of queries {self.alternative._describe()}"
            )
        return self._describe()

    def _describe(self) -> str:
        parts = []
        for s, stage in enumerate(self.stages):
            names = "+".join(stage)
            if s < len(self.need):
                parts.append(f"{names} (stop at {self.need[s]} agreeing)")
            else:
                parts.append(f"{names} (weighted vote)")
        return " -> ".join(parts)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "stages": self.stages,
            "need": self.need,
            "reliability": self.reliability,
            "answer_format": self.answer_format.model_dump(exclude_defaults=True),
            "estimate": self.estimate,
        }
        if self.alternative is not None:
            out["alternative"] = self.alternative.to_json()
            out["share"] = self.share
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str) -> StagePlan:
        try:
            alt = data.get("alternative")
            return cls(
                stages=[list(map(str, s)) for s in data["stages"]],
                need=[int(x) for x in data["need"]],
                reliability={str(k): float(v) for k, v in data["reliability"].items()},
                answer_format=AnswerFormat.model_validate(data.get("answer_format") or {}),
                estimate=dict(data.get("estimate") or {}),
                alternative=None if alt is None else cls.from_json(alt, f"{where}.alternative"),
                share=float(data.get("share", 0.0)),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise PolicyError(
                f"{where}: not a cascade plan ({type(exc).__name__}: {exc})"
            ) from None


@dataclass
class CascadePlan:
    """A learned cascade: a plan per task label, and a default for any other task."""

    experts: list[str]
    default: StagePlan
    tasks: dict[str, StagePlan] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def for_task(self, task: str | None, text: str | None = None) -> StagePlan:
        """The plan of a task label (the default for an unknown or missing label); with the
        query ``text``, the plan that query takes when the task's plan mixes two."""
        plan = self.tasks[task] if task is not None and task in self.tasks else self.default
        return plan if text is None else plan.pick(text)

    def check(self, configured: Iterable[str], where: str = "cascade") -> None:
        """Refuse a plan trained for other experts than the configured ones."""
        check_experts(self.experts, configured, where=where)

    def save(self, folder: str | Path) -> Path:
        meta = {
            "kind": KIND,
            "experts": self.experts,
            "default": self.default.to_json(),
            "tasks": {t: p.to_json() for t, p in self.tasks.items()},
            **self.meta,
        }
        return save_artifact(folder, meta, {})

    @classmethod
    def load(cls, folder: str | Path, experts: Iterable[str] | None = None) -> CascadePlan:
        """Read a trained cascade; with ``experts``, refuse one trained for other experts."""
        artifact = load_artifact(folder)
        where = str(folder)
        if artifact.kind != KIND:
            raise PolicyError(
                f"{where}: a trained {artifact.kind!r} router, not a cascade "
                "(train one with `expertgraph train --policy cascade`)"
            )
        meta = artifact.meta
        if "default" not in meta:
            raise PolicyError(f"{where}: the cascade has no default plan")
        plan = cls(
            experts=artifact.experts,
            default=StagePlan.from_json(meta["default"], f"{where}: default"),
            tasks={
                str(t): StagePlan.from_json(p, f"{where}: tasks.{t}")
                for t, p in (meta.get("tasks") or {}).items()
            },
            meta={
                k: v
                for k, v in meta.items()
                if k not in ("kind", "experts", "default", "tasks", "format", "format_version")
            },
        )
        unknown = sorted(
            {e for p in [plan.default, *plan.tasks.values()] for e in p.experts} - set(plan.experts)
        )
        if unknown:
            raise PolicyError(f"{where}: the plan names experts it lists nowhere: {unknown}")
        if experts is not None:
            plan.check(list(experts), where=f"trained cascade {where}")
        return plan
