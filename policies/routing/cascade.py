"""Cascade routing: each step starts with the cheapest adequate expert.

FrugalGPT (Chen et al. 2023) and AutoMix (Madaan et al. 2023): :class:`CascadePolicy` starts
each step with the cheapest expert (by card price or an explicit order), or, given a quality
predictor, with the cheapest expert whose predicted quality reaches the threshold. Its other
half, :class:`~expertgraph.policies.aggregation.cascade.CascadeAggregator`, checks the answer
inside the step and escalates;
:func:`~expertgraph.policies.learning.calibration.calibrate_threshold` picks either threshold
on held-out rows. :class:`LearnedCascade` runs a cascade trained on recorded replies
(:mod:`~expertgraph.policies.learning.cascade_fit`): stages of experts per task, with its
own aggregator.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from expertgraph.core import (
    OPEN_TASK_ANSWERED,
    Policy,
    RoutingState,
    finish_decision,
    next_instruction,
)
from expertgraph.core.errors import PolicyError
from expertgraph.core.types import Decision, ExpertCard
from expertgraph.policies.routing._ranking import routed_around_note


@runtime_checkable
class QualityPredictor(Protocol):
    """Anything that predicts each expert's quality on prompts (the learned policies do).

    ``predict_quality`` returns an ``(n, len(experts))`` array whose columns follow ``experts``.
    """

    experts: Sequence[str]

    def predict_quality(self, prompts: list[str]) -> np.ndarray: ...


def card_price(card: ExpertCard) -> float:
    """The price a cascade sorts by: input plus output cost per 1k tokens."""
    return card.cost_per_1k_input + card.cost_per_1k_output


def cascade_order(cards: Mapping[str, ExpertCard], order: Sequence[str] | None = None) -> list[str]:
    """Experts cheapest first (ties keep the given order).

    ``order`` puts its names first, as given; experts it does not name follow by price, so a
    plan step restricted to other experts still has a cascade.
    """
    names = list(cards)
    head = [n for n in (order or []) if n in cards]
    rest = sorted((n for n in names if n not in head), key=lambda n: card_price(cards[n]))
    return head + rest


def predicted_quality(
    predictor: QualityPredictor, prompts: list[str], names: Sequence[str]
) -> np.ndarray:
    """Predicted quality for ``names`` (NaN where the predictor does not know an expert)."""
    raw = np.asarray(predictor.predict_quality(prompts), dtype=float)
    columns = list(predictor.experts)
    if raw.shape != (len(prompts), len(columns)):
        raise PolicyError(
            f"predict_quality returned shape {raw.shape}; expected ({len(prompts)}, {len(columns)})"
        )
    out = np.full((len(prompts), len(names)), np.nan)
    for j, name in enumerate(names):
        if name in columns:
            out[:, j] = raw[:, columns.index(name)]
    return out


class CascadePolicy(Policy):
    """Starts each step with the cheapest adequate expert.

    Without a predictor the cheapest allowed expert is chosen, and the scores rank the
    cascade (1 for the first tier, lower for later ones) so that an aggregator without its
    own order escalates in cascade order. With a ``predictor`` and ``threshold``, the scores
    are the predicted qualities and the choice is the first expert in cascade order whose
    prediction reaches the threshold (the last tier when none does). Experts that failed
    every call in the run are skipped (:attr:`RoutingState.candidates`).
    """

    name = "cascade"

    def __init__(
        self,
        order: Sequence[str] | None = None,
        *,
        predictor: QualityPredictor | None = None,
        threshold: float | None = None,
    ) -> None:
        if (predictor is None) != (threshold is None):
            raise PolicyError(
                "a cascade with a quality predictor needs a threshold, and vice versa"
            )
        self.order = list(order) if order else None
        self.predictor = predictor
        self.threshold = threshold

    def decide(self, state: RoutingState) -> Decision:
        instruction = next_instruction(state)
        if instruction is None:
            return finish_decision(state, self.name, OPEN_TASK_ANSWERED)
        order = cascade_order({v.name: v.card for v in state.candidates}, self.order)
        if self.predictor is None or self.threshold is None:
            n = len(order)
            scores = {name: 1.0 - i / n for i, name in enumerate(order)}
            chosen = order[0]
            rationale = f"cascade: cheapest first ({' < '.join(order)})"
            meta: dict[str, Any] = {"cascade_order": order}
        else:
            quality = predicted_quality(self.predictor, [instruction], order)[0]
            scores = {name: float(q) for name, q in zip(order, quality) if math.isfinite(q)}
            adequate = [
                n for n, q in zip(order, quality) if math.isfinite(q) and q >= self.threshold
            ]
            chosen = adequate[0] if adequate else order[-1]
            why = (
                f"predicted quality {scores[chosen]:.3f} >= {self.threshold:g}"
                if adequate
                else f"no expert predicted >= {self.threshold:g}; last tier"
            )
            rationale = (
                f"cascade: {chosen} is the cheapest adequate ({why}; order {' < '.join(order)})"
            )
            meta = {"cascade_order": order, "threshold": self.threshold}
        return Decision(
            instruction=instruction,
            experts=[chosen],
            scores=scores,
            mode="cascade",
            rationale=routed_around_note(rationale, state.routed_around),
            policy=self.name,
            meta=meta,
        )


class LearnedCascade(Policy):
    """A trained cascade (``expertgraph train --policy cascade``): the first stage of the plan
    of the step's task (``Task.metadata["task"]``, else the plan's default).

    Its scores are every expert's measured reliability on the task, so the vote's tie-breaks
    and the orchestrator's fallback follow it. :attr:`paired_aggregator` is the
    :class:`~expertgraph.policies.aggregation.cascade.StagedCascade` that runs the rest of
    the plan; a configuration that names this policy gets it as its aggregator.
    """

    name = "cascade"

    def __init__(self, plan: Any) -> None:
        from expertgraph.policies.aggregation.cascade import StagedCascade

        self.plan = plan
        self.paired_aggregator = StagedCascade(plan)

    @classmethod
    def load(cls, path: str | Path, experts: Sequence[str] | None = None) -> LearnedCascade:
        """Load a trained cascade; with ``experts``, refuse one trained for other experts."""
        from expertgraph.policies.learning.cascade_plan import CascadePlan

        return cls(CascadePlan.load(path, experts))

    def decide(self, state: RoutingState) -> Decision:
        from expertgraph.policies.learning.cascade_plan import TASK_KEY, router_scores

        instruction = next_instruction(state)
        if instruction is None:
            return finish_decision(state, self.name, OPEN_TASK_ANSWERED)
        label = state.task.metadata.get(TASK_KEY)
        plan = self.plan.for_task(label, instruction)
        names = [v.name for v in state.candidates]
        scores = router_scores(plan.reliability, names)
        first = [e for e in plan.stages[0] if e in scores]
        if not first:  # the plan's first stage is not allowed here: the most reliable expert
            first = [max(scores, key=lambda n: scores[n])]
        which = f"task {label!r}" if label in self.plan.tasks else "the default plan"
        return Decision(
            instruction=instruction,
            experts=first,
            scores=scores,
            mode="cascade",
            rationale=routed_around_note(
                f"learned cascade ({which}): {plan.describe()}", state.routed_around
            ),
            policy=self.name,
            meta={"cascade_task": label if label in self.plan.tasks else None},
        )
