"""Baselines to measure routers against: a seeded random router and an (evaluation-only) oracle."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from expertgraph.core import (
    OPEN_TASK_ANSWERED,
    Policy,
    RoutingState,
    finish_decision,
    next_instruction,
)
from expertgraph.core.errors import PolicyError
from expertgraph.core.types import Decision, RoutingExample
from expertgraph.policies.routing._ranking import format_scores, top_k_decision


class RandomPolicy(Policy):
    """Chooses ``k`` experts uniformly at random; reproducible from ``seed``.

    Each step's draws come from a generator seeded by ``(seed, task id, step index)``, so the
    same task routes the same way whatever order or concurrency runs happen in. The uniform
    draw of each expert is recorded as its score.
    """

    name = "random"

    def __init__(self, seed: int = 0, *, top_k: int | None = None) -> None:
        self.seed = int(seed)
        self.top_k = top_k

    def _rng(self, state: RoutingState) -> random.Random:
        key = f"{self.seed}\x00{state.task.id}\x00{state.step_index}".encode()
        return random.Random(int.from_bytes(hashlib.sha256(key).digest()[:8], "big"))

    def decide(self, state: RoutingState) -> Decision:
        instruction = next_instruction(state)
        if instruction is None:
            return finish_decision(state, self.name, OPEN_TASK_ANSWERED)
        rng = self._rng(state)
        scores = {v.name: rng.random() for v in state.candidates}
        return top_k_decision(
            state,
            scores,
            self.top_k or state.k,
            self.name,
            f"a uniform draw ({format_scores(scores)})",
            prefix=f"random (seed {self.seed}): ",
        )


ScoreTable = Mapping[str, Mapping[str, float]]


class OraclePolicy(Policy):
    """Evaluation only: routes to the expert known to score best on this very task.

    The per-expert scores come from ``task.metadata[scores_key]`` (a mapping expert -> score,
    or a list of such mappings, one per plan step) or from ``table`` keyed by task id or
    prompt (e.g. built from held-out :class:`RoutingExample` rows with :meth:`from_examples`).
    With ``lam`` > 0 it maximises ``score - lam * cost`` using ``costs`` the same way. Ties go
    to the cheaper expert, then to the earlier one in the configuration.

    It reads the answers' grades, so it is an upper bound, not a router: building one raises
    :class:`PolicyError` unless ``allow=True`` says this is an evaluation.
    """

    name = "oracle"

    def __init__(
        self,
        *,
        allow: bool = False,
        table: ScoreTable | None = None,
        costs: ScoreTable | None = None,
        scores_key: str = "scores",
        costs_key: str = "costs",
        lam: float = 0.0,
        top_k: int | None = None,
    ) -> None:
        if not allow:
            raise PolicyError(
                "the oracle policy reads the graded answers of the task and is for evaluation "
                "only; pass allow=True (config: allow: true) in an evaluation"
            )
        if lam < 0:
            raise ValueError(f"lam must be >= 0, got {lam}")
        self.table = {k: dict(v) for k, v in (table or {}).items()}
        self.costs = {k: dict(v) for k, v in (costs or {}).items()}
        self.scores_key = scores_key
        self.costs_key = costs_key
        self.lam = float(lam)
        self.top_k = top_k

    @classmethod
    def from_examples(cls, examples: Iterable[RoutingExample], **kwargs: Any) -> OraclePolicy:
        """An oracle over routing examples, looked up by example id and by prompt."""
        table: dict[str, dict[str, float]] = {}
        costs: dict[str, dict[str, float]] = {}
        for ex in examples:
            for key in (ex.id, ex.prompt):
                table[key] = dict(ex.scores)
                costs[key] = dict(ex.costs)
        return cls(table=table, costs=costs, **kwargs)

    @staticmethod
    def _pick(value: Any, step: int) -> Mapping[str, float] | None:
        if isinstance(value, Mapping):
            return value
        if isinstance(value, Sequence) and not isinstance(value, str) and step < len(value):
            item = value[step]
            return item if isinstance(item, Mapping) else None
        return None

    def _lookup(self, state: RoutingState) -> tuple[Mapping[str, float], Mapping[str, float], str]:
        meta = state.task.metadata
        found = self._pick(meta.get(self.scores_key), state.step_index)
        if found is not None:
            costs = self._pick(meta.get(self.costs_key), state.step_index) or {}
            return found, costs, f"task.metadata[{self.scores_key!r}]"
        for key in (state.task.id, state.task.text):
            if key in self.table:
                return self.table[key], self.costs.get(key, {}), "score table"
        raise PolicyError(
            f"oracle: no scores for task {state.task.id!r}: neither task.metadata"
            f"[{self.scores_key!r}] nor the score table has it"
        )

    def decide(self, state: RoutingState) -> Decision:
        instruction = next_instruction(state)
        if instruction is None:
            return finish_decision(state, self.name, OPEN_TASK_ANSWERED)
        known, costs, source = self._lookup(state)
        usable = [v.name for v in state.candidates]
        pool = [n for n in usable if n in known]
        if not pool:
            raise PolicyError(
                f"oracle: the scores of task {state.task.id!r} name none of the usable experts "
                f"{usable} (they name {sorted(known)})"
            )
        utility = {n: float(known[n]) - self.lam * float(costs.get(n, 0.0)) for n in pool}
        position = {n: i for i, n in enumerate(pool)}
        ranked = sorted(pool, key=lambda n: (-utility[n], float(costs.get(n, 0.0)), position[n]))
        ignored = sorted(set(known) - {v.name for v in state.experts})
        meta: dict[str, Any] = {"evaluation_only": True}
        if ignored:
            meta["ignored_experts"] = ignored
        rule = f"score - {self.lam:g}*cost" if self.lam else "score"
        return top_k_decision(
            state,
            utility,
            self.top_k or state.k,
            self.name,
            f"{rule} ({format_scores(utility, ranked)})",
            prefix=f"oracle from {source}: ",
            ranking=ranked,
            meta=meta,
        )
