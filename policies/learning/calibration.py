"""Calibrating a cascade: the escalation threshold that meets a target cost or quality.

:func:`calibrate_threshold` simulates the cascade
(:class:`~expertgraph.policies.routing.cascade.CascadePolicy` with
:class:`~expertgraph.policies.aggregation.cascade.CascadeAggregator`) on held-out
:class:`RoutingExample` rows at every useful threshold and picks the one that meets a target
mean cost or a target mean quality.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from expertgraph.core import AggregationContext
from expertgraph.core.errors import PolicyError
from expertgraph.core.types import AnswerFormat, Generation, RoutingExample, Task
from expertgraph.policies.aggregation._ballots import cast_ballots
from expertgraph.policies.aggregation.cascade import agreement
from expertgraph.policies.routing.cascade import QualityPredictor, predicted_quality

Signal = Literal["auto", "confidence", "samples", "predicted"]


@dataclass(frozen=True)
class CascadePoint:
    """The cascade's mean quality and cost on a data set at one threshold."""

    threshold: float
    quality: float
    cost: float
    escalation_rate: float


@dataclass(frozen=True)
class CascadeCalibration:
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


def _agreement(
    example: RoutingExample, expert: str, texts: Sequence[str], answer_format: AnswerFormat
) -> float:
    """The agreement of an expert's sampled answers, counted as the cascade aggregator does."""
    context = AggregationContext(
        task=Task(id=example.id, prompt=example.prompt or example.id, answer_format=answer_format),
        instruction=example.prompt,
        answer_format=answer_format,
    )
    samples = [Generation(expert=expert, text=t, sample=i) for i, t in enumerate(texts)]
    ballots, _ = cast_ballots(samples, context)
    return agreement(ballots)


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
        conf = predicted_quality(predictor, [ex.prompt for ex in examples], order)
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
            conf[i, j] = (
                float(value) if key == "confidence" else _agreement(ex, name, list(value), fmt)
            )
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
) -> CascadeCalibration:
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
    return CascadeCalibration(
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
