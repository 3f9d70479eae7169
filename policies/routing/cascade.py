"""Cascade routing: cheapest adequate expert first, escalate on low confidence.

Two halves that work together (FrugalGPT, Chen et al. 2023; AutoMix, Madaan et al. 2023):

- :class:`CascadePolicy` starts each step with the cheapest expert (by card price or an
  explicit order), or, given a quality predictor, with the cheapest expert whose predicted
  quality reaches the threshold.
- :class:`CascadeAggregator` checks the answer inside the step: it draws extra samples of the
  current expert at a temperature above zero and, when they disagree (agreement below the
  threshold), asks the orchestrator for the next expert of the cascade.

:func:`calibrate_threshold` picks either threshold on held-out :class:`RoutingExample` rows
so that the cascade meets a target mean cost or a target mean quality.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
from expertgraph.core import (
    AggregationContext,
    Aggregator,
    Policy,
    RoutingState,
    finish_decision,
    next_instruction,
)
from expertgraph.core.errors import PolicyError
from expertgraph.core.types import (
    AnswerFormat,
    Decision,
    Exclusion,
    ExpertCard,
    Generation,
    RoutingExample,
    SampleRequest,
    StepResult,
)
from expertgraph.policies.aggregation.answers import extract_answer
from expertgraph.policies.aggregation._ballots import Ballot, cast_ballots, tally


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


def _predicted(predictor: QualityPredictor, prompts: list[str], names: Sequence[str]) -> np.ndarray:
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
    every call in the run are skipped.
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
            raise PolicyError("a cascade with a quality predictor needs a threshold, and vice versa")
        self.order = list(order) if order else None
        self.predictor = predictor
        self.threshold = threshold

    def decide(self, state: RoutingState) -> Decision:
        instruction = next_instruction(state)
        if instruction is None:
            return finish_decision(state, self.name, "open task answered in one step")
        views = state.candidates
        healthy = {
            v.name: v.card for v in views if not (v.health.calls and v.health.errors == v.health.calls)
        } or {v.name: v.card for v in views}
        order = cascade_order(healthy, self.order)
        if self.predictor is None or self.threshold is None:
            n = len(order)
            scores = {name: 1.0 - i / n for i, name in enumerate(order)}
            chosen = order[0]
            rationale = f"cascade: cheapest first ({' < '.join(order)})"
            meta: dict[str, Any] = {"cascade_order": order}
        else:
            quality = _predicted(self.predictor, [instruction], order)[0]
            scores = {name: float(q) for name, q in zip(order, quality) if math.isfinite(q)}
            adequate = [n for n, q in zip(order, quality) if math.isfinite(q) and q >= self.threshold]
            chosen = adequate[0] if adequate else order[-1]
            why = (
                f"predicted quality {scores[chosen]:.3f} >= {self.threshold:g}"
                if adequate
                else f"no expert predicted >= {self.threshold:g}; last tier"
            )
            rationale = f"cascade: {chosen} is the cheapest adequate ({why}; order {' < '.join(order)})"
            meta = {"cascade_order": order, "threshold": self.threshold}
        return Decision(
            instruction=instruction,
            experts=[chosen],
            scores=scores,
            mode="cascade",
            rationale=rationale,
            policy=self.name,
            meta=meta,
        )


@dataclass
class _Tier:
    expert: str
    generations: list[Generation] = field(default_factory=list)
    ballots: list[Ballot] = field(default_factory=list)
    excluded: list[Exclusion] = field(default_factory=list)

    @property
    def agreement(self) -> float:
        """Share of this tier's usable answers that agree with its most common one."""
        if not self.ballots:
            return 0.0
        counts: dict[str, int] = {}
        for b in self.ballots:
            counts[b.answer] = counts.get(b.answer, 0) + 1
        return max(counts.values()) / len(self.ballots)

    def summary(self) -> dict[str, Any]:
        return {
            "expert": self.expert,
            "calls": len(self.generations),
            "answers": [b.answer for b in self.ballots],
            "agreement": round(self.agreement, 4),
            "cost": sum(g.cost for g in self.generations),
        }


class CascadeAggregator(Aggregator):
    """Accepts the current tier's answer when its samples agree; else escalates.

    For each tier but the last (and the last too with ``sample_last``), ``samples`` extra
    calls of the same expert are drawn at ``temperature``; the tier's agreement is the share
    of its usable answers that match its most common answer. Agreement >= ``threshold``
    accepts that answer; lower agreement, or no usable answer, asks for the next expert in
    ``order`` (default: the router's order). The escalations and their reasons are recorded
    in ``StepResult.meta["cascade"]`` and the stop reason. Lower tiers' candidates are listed
    as excluded, with the reason they were passed over.
    """

    name = "cascade"

    def __init__(
        self,
        order: Sequence[str] | None = None,
        *,
        samples: int = 2,
        temperature: float = 0.7,
        threshold: float = 1.0,
        sample_last: bool = False,
    ) -> None:
        if samples < 0:
            raise ValueError(f"samples must be >= 0, got {samples}")
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold is an agreement share in [0, 1], got {threshold}")
        self.order = list(order) if order else None
        self.samples = samples
        self.temperature = temperature
        self.threshold = threshold
        self.sample_last = sample_last

    def _order(self, candidates: list[Generation], context: AggregationContext) -> list[str]:
        base = self.order or context.order
        allowed = set(context.scores) if context.scores else None
        order = [n for n in base if allowed is None or n in allowed]
        # Experts the orchestrator routed around to (not in the order) go last, in call order.
        for g in candidates:
            if g.expert not in order:
                order.append(g.expert)
        return order

    def combine(self, candidates: list[Generation], context: AggregationContext) -> StepResult:
        if not candidates:
            return StepResult(aggregator=self.name, stop_reason="no candidates")
        order = self._order(candidates, context)
        tiers: dict[str, _Tier] = {}
        for g in candidates:
            tiers.setdefault(g.expert, _Tier(g.expert)).generations.append(g)
        tried = [tiers[n] for n in order if n in tiers]
        for tier in tried:
            tier.ballots, tier.excluded = cast_ballots(tier.generations, context)
        current = tried[-1]
        position = order.index(current.expert)
        following = order[position + 1 :]
        is_last = not following
        wants_samples = self.samples > 0 and (not is_last or self.sample_last)

        escalations = [self._reason(t) for t in tried[:-1]]
        can_call = context.calls_left > 0
        unchecked = current.ballots and wants_samples and len(current.generations) < 1 + self.samples
        if unchecked and can_call:
            missing = min(1 + self.samples - len(current.generations), context.calls_left)
            return self._result(
                tried, escalations, context, accepted=None,
                more=SampleRequest(
                    experts=[current.expert] * missing,
                    params={"temperature": self.temperature},
                    reason=f"self-consistency check: {missing} more sample(s) of {current.expert} "
                    f"at temperature {self.temperature:g}",
                ),
            )
        if unchecked:
            return self._result(
                tried, escalations, context, accepted=current,
                stop_reason=f"cascade: accepted {current.expert} unchecked (no calls left for "
                f"self-consistency samples)",
            )
        if current.ballots and (current.agreement >= self.threshold or is_last):
            if is_last and not wants_samples:
                why = f"cascade: accepted {current.expert}, the last tier"
            elif current.agreement >= self.threshold:
                why = (
                    f"cascade: accepted {current.expert} "
                    f"(agreement {current.agreement:.2f} >= {self.threshold:g})"
                )
            else:
                why = (
                    f"cascade: accepted {current.expert}, the last tier "
                    f"(agreement {current.agreement:.2f})"
                )
            return self._result(tried, escalations, context, accepted=current, stop_reason=why)
        reason = self._reason(current)
        escalations.append(reason)
        if is_last:
            # Nothing left to escalate to: keep the highest tier that has an answer.
            best = next((t for t in reversed(tried) if t.ballots), None)
            return self._result(
                tried, escalations, context, accepted=best,
                stop_reason=f"cascade exhausted after {reason}",
            )
        if not can_call:
            best = next((t for t in reversed(tried) if t.ballots), None)
            return self._result(
                tried, escalations, context, accepted=best,
                stop_reason=f"cascade: no calls left to escalate after {reason}",
            )
        nxt = following[0]
        return self._result(
            tried, escalations, context, accepted=None,
            more=SampleRequest(experts=[nxt], params={}, reason=f"escalate to {nxt}: {reason}"),
        )

    def _reason(self, tier: _Tier) -> str:
        if not tier.ballots:
            return f"{tier.expert} gave no usable answer"
        return f"{tier.expert} agreement {tier.agreement:.2f} < {self.threshold:g}"

    def _result(
        self,
        tried: list[_Tier],
        escalations: list[str],
        context: AggregationContext,
        *,
        accepted: _Tier | None,
        more: SampleRequest | None = None,
        stop_reason: str = "",
    ) -> StepResult:
        # While asking for more, carry the best answer so far: if the budget refuses the
        # request, the orchestrator keeps this result.
        holder = accepted or next((t for t in reversed(tried) if t.ballots), None)
        excluded: list[Exclusion] = []
        for tier in tried:
            excluded.extend(tier.excluded)
            if tier is not holder:
                reason = f"passed over: {self._reason(tier)}"
                excluded.extend(
                    Exclusion(expert=b.expert, sample=b.generation.sample, reason=reason)
                    for b in tier.ballots
                )
        meta = {
            "cascade": {
                "tiers": [t.summary() for t in tried],
                "escalations": escalations,
                "threshold": self.threshold,
                "accepted": accepted.expert if accepted else None,
            }
        }
        if holder is None:
            return StepResult(
                aggregator=self.name,
                excluded=excluded,
                more=more,
                stop_reason=stop_reason or "no candidate produced a usable answer",
                meta=meta,
            )
        voted = tally(holder.ballots, [], context, self.name)
        if more is not None and not stop_reason:
            stop_reason = f"pending: {more.reason}; best so far from {holder.expert}"
        return voted.model_copy(
            update={
                "excluded": excluded,
                "confidence": holder.agreement,
                "more": more,
                "stop_reason": stop_reason,
                "meta": meta,
            }
        )


# ---- calibration --------------------------------------------------------------------------

Signal = Literal["auto", "confidence", "samples", "predicted"]


@dataclass(frozen=True)
class CascadePoint:
    """The cascade's mean quality and cost on a data set at one threshold."""

    threshold: float
    quality: float
    cost: float
    escalation_rate: float


@dataclass(frozen=True)
class Calibration:
    """A calibrated threshold, what it achieves, and the whole quality/cost curve."""

    threshold: float
    quality: float
    cost: float
    escalation_rate: float
    target: str
    met: bool
    signal: str
    order: list[str]
    used: int
    skipped: list[str]
    """Ids of examples left out because they lack a score or cost for an expert of ``order``."""
    ignored_experts: list[str]
    """Experts the data names that ``order`` does not have."""
    curve: list[CascadePoint]


def _agreement(texts: Sequence[str], answer_format: AnswerFormat) -> float:
    answers = [a for a in (extract_answer(t, answer_format).answer for t in texts) if a is not None]
    if not answers:
        return 0.0
    return max(answers.count(a) for a in set(answers)) / len(answers)


def confidence_matrix(
    examples: Sequence[RoutingExample],
    order: Sequence[str],
    *,
    signal: Signal = "auto",
    predictor: QualityPredictor | None = None,
    answer_format: AnswerFormat | None = None,
) -> tuple[np.ndarray, str]:
    """Each example's confidence signal for each expert of ``order``, and which signal it is.

    ``confidence``: ``meta["confidence"][expert]`` (a stored agreement or verifier score);
    ``samples``: the agreement of ``meta["samples"][expert]`` (several sampled answers);
    ``predicted``: ``predictor.predict_quality`` of the prompts. ``auto`` takes ``predicted``
    when a predictor is given, else the first of the others that every example has.
    """
    fmt = answer_format or AnswerFormat()

    def has(key: str) -> bool:
        return bool(examples) and all(
            isinstance(ex.meta.get(key), Mapping) and all(n in ex.meta[key] for n in order)
            for ex in examples
        )

    if signal == "auto":
        if predictor is not None:
            signal = "predicted"
        elif has("confidence"):
            signal = "confidence"
        elif has("samples"):
            signal = "samples"
        else:
            raise PolicyError(
                "no confidence signal: the examples have neither meta['confidence'] nor "
                "meta['samples'] for every expert, and no quality predictor was given"
            )
    if signal == "predicted":
        if predictor is None:
            raise PolicyError("signal 'predicted' needs a quality predictor")
        conf = _predicted(predictor, [ex.prompt for ex in examples], order)
        missing = [n for j, n in enumerate(order) if np.isnan(conf[:, j]).any()]
        if missing:
            raise PolicyError(f"the predictor has no prediction for experts {missing}")
        return conf, signal
    key = "confidence" if signal == "confidence" else "samples"
    conf = np.zeros((len(examples), len(order)))
    for i, ex in enumerate(examples):
        values = ex.meta.get(key)
        if not isinstance(values, Mapping):
            raise PolicyError(f"example {ex.id!r} has no meta[{key!r}]")
        for j, name in enumerate(order):
            if name not in values:
                raise PolicyError(f"example {ex.id!r}: meta[{key!r}] has no entry for {name!r}")
            value = values[name]
            conf[i, j] = float(value) if key == "confidence" else _agreement(list(value), fmt)
    return conf, signal


def simulate_cascade(
    quality: np.ndarray,
    cost: np.ndarray,
    confidence: np.ndarray,
    threshold: float,
    *,
    pay_tried: bool = True,
    calls_per_tier: float = 1.0,
) -> CascadePoint:
    """Mean quality and cost of a cascade over tiers (columns, cheapest first).

    Each row walks the tiers and accepts the first whose confidence is >= ``threshold`` (the
    last tier always). With ``pay_tried`` every tier walked costs ``calls_per_tier`` times its
    cost (it was called and sampled; the last tier once); without it only the accepted tier
    is paid (the choice was made before any call, from predictions).
    """
    n, tiers = quality.shape
    accepted = np.full(n, tiers - 1)
    ok = confidence[:, :-1] >= threshold
    has_ok = ok.any(axis=1)
    accepted[has_ok] = ok[has_ok].argmax(axis=1)
    rows = np.arange(n)
    q = quality[rows, accepted]
    if pay_tried:
        weights = np.where(np.arange(tiers) < tiers - 1, calls_per_tier, 1.0)
        walked = np.arange(tiers)[None, :] <= accepted[:, None]
        c = (cost * weights[None, :] * walked).sum(axis=1)
    else:
        c = cost[rows, accepted]
    return CascadePoint(
        threshold=float(threshold),
        quality=float(q.mean()) if n else 0.0,
        cost=float(c.mean()) if n else 0.0,
        escalation_rate=float((accepted > 0).mean()) if n else 0.0,
    )


def calibrate_threshold(
    examples: Sequence[RoutingExample],
    order: Sequence[str],
    *,
    target_cost: float | None = None,
    target_quality: float | None = None,
    signal: Signal = "auto",
    predictor: QualityPredictor | None = None,
    samples: int = 2,
    answer_format: AnswerFormat | None = None,
) -> Calibration:
    """Choose the escalation threshold on held-out examples to meet one target.

    ``order`` lists the cascade's experts, cheapest first. With ``target_cost`` the threshold
    of highest mean quality whose mean cost is within the target is chosen; with
    ``target_quality`` the cheapest threshold whose mean quality reaches it. When no
    threshold meets the target, the closest one is returned with ``met=False``. For signals
    measured after a call (``confidence``, ``samples``), each tier walked is paid
    ``1 + samples`` times (the aggregator's self-consistency draws; the last tier once); for
    ``predicted``, only the chosen expert is paid, as :class:`CascadePolicy` calls only it.
    """
    if (target_cost is None) == (target_quality is None):
        raise ValueError("give exactly one of target_cost and target_quality")
    order = list(order)
    if len(order) < 2:
        raise PolicyError("a cascade needs at least two experts")
    usable: list[RoutingExample] = []
    skipped: list[str] = []
    named: set[str] = set()
    for ex in examples:
        named.update(ex.scores)
        if all(n in ex.scores and n in ex.costs for n in order):
            usable.append(ex)
        else:
            skipped.append(ex.id)
    if not usable:
        raise PolicyError(
            f"no example has a score and a cost for every expert of {order}; "
            f"the data names {sorted(named)}"
        )
    quality = np.array([[ex.scores[n] for n in order] for ex in usable], dtype=float)
    cost = np.array([[ex.costs[n] for n in order] for ex in usable], dtype=float)
    conf, used_signal = confidence_matrix(
        usable, order, signal=signal, predictor=predictor, answer_format=answer_format
    )
    pay_tried = used_signal != "predicted"
    calls = 1.0 + samples if used_signal in ("confidence", "samples") else 1.0
    values = np.unique(conf[:, :-1])
    # Accept-all (the lowest value), every distinct value, and escalate-all (just above the top).
    candidates = [*values.tolist(), float(np.nextafter(values.max(), np.inf))]
    curve = [
        simulate_cascade(quality, cost, conf, t, pay_tried=pay_tried, calls_per_tier=calls)
        for t in candidates
    ]
    eps = 1e-12
    if target_cost is not None:
        meeting = [p for p in curve if p.cost <= target_cost + eps]
        met = bool(meeting)
        pool = meeting or [min(curve, key=lambda p: p.cost)]
        best = max(pool, key=lambda p: (p.quality, -p.cost, -p.threshold))
        target = f"mean cost <= {target_cost:g}"
    else:
        assert target_quality is not None
        meeting = [p for p in curve if p.quality >= target_quality - eps]
        met = bool(meeting)
        pool = meeting or [max(curve, key=lambda p: p.quality)]
        best = min(pool, key=lambda p: (p.cost, -p.quality, p.threshold))
        target = f"mean quality >= {target_quality:g}"
    return Calibration(
        threshold=best.threshold,
        quality=best.quality,
        cost=best.cost,
        escalation_rate=best.escalation_rate,
        target=target,
        met=met,
        signal=used_signal,
        order=order,
        used=len(usable),
        skipped=skipped,
        ignored_experts=sorted(named - set(order)),
        curve=curve,
    )
