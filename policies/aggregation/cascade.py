"""The cascade's aggregator: accept a tier whose samples agree, else escalate to the next.

The other half of :class:`~expertgraph.policies.routing.cascade.CascadePolicy`: it draws extra
samples of the current expert at a temperature above zero and, when they disagree (agreement
below the threshold), asks the orchestrator for the next expert of the cascade.
:class:`StagedCascade` is the other half of a learned cascade
(:class:`~expertgraph.policies.routing.cascade.LearnedCascade`): stages of experts, stopping
when enough of their answers agree.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from expertgraph.core import AggregationContext, Aggregator
from expertgraph.core.types import Exclusion, Generation, SampleRequest, StepResult
from expertgraph.policies.aggregation._ballots import Ballot, cast_ballots, count, tally
from expertgraph.policies.aggregation.redflags import RedFlags

CASCADE_FLAGS = RedFlags()
"""The red flags of a learned cascade (unparseable, truncated, a refusal): the one setting
training, offline evaluation and a live run read replies with."""


def agreement(ballots: Sequence[Ballot]) -> float:
    """Share of the votes that go to the most common answer (0 with no ballot)."""
    votes, _ = count(ballots)
    total = sum(votes.values())
    return max(votes.values()) / total if total else 0.0


@dataclass
class _Tier:
    expert: str
    generations: list[Generation] = field(default_factory=list)
    ballots: list[Ballot] = field(default_factory=list)
    excluded: list[Exclusion] = field(default_factory=list)

    @property
    def agreement(self) -> float:
        """Share of this tier's usable answers that agree with its most common one."""
        return agreement(self.ballots)

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
        unchecked = (
            current.ballots and wants_samples and len(current.generations) < 1 + self.samples
        )
        if unchecked and can_call:
            missing = min(1 + self.samples - len(current.generations), context.calls_left)
            return self._result(
                tried,
                escalations,
                context,
                accepted=None,
                more=SampleRequest(
                    experts=[current.expert] * missing,
                    params={"temperature": self.temperature},
                    reason=f"self-consistency check: {missing} more sample(s) of {current.expert} "
                    f"at temperature {self.temperature:g}",
                ),
            )
        if unchecked:
            return self._result(
                tried,
                escalations,
                context,
                accepted=current,
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
        if is_last or not can_call:
            # No escalation possible: keep the highest tier that has an answer.
            best = next((t for t in reversed(tried) if t.ballots), None)
            why = "cascade exhausted" if is_last else "cascade: no calls left to escalate"
            return self._result(
                tried, escalations, context, accepted=best, stop_reason=f"{why} after {reason}"
            )
        nxt = following[0]
        return self._result(
            tried,
            escalations,
            context,
            accepted=None,
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


class StagedCascade(Aggregator):
    """The live half of a learned cascade: stop when enough replies agree, else the next stage.

    Reads the :class:`~expertgraph.policies.learning.cascade_plan.CascadePlan` of the step's
    task (``Task.metadata["task"]``, else the plan's default): the replies so far are read
    with the plan's answer format and red flags, counted in a vote weighted by each expert's
    measured reliability, and the step stops once the leading answer has the stage's
    ``need`` supporters (after the last stage, the weighted vote decides). Otherwise it asks
    for the next stage's experts. ``StepResult.meta["cascade"]`` says at which stage it
    stopped and why.
    """

    name = "cascade"

    def __init__(self, plan: Any) -> None:
        self.plan = plan

    def combine(self, candidates: list[Generation], context: AggregationContext) -> StepResult:
        from expertgraph.policies.learning.cascade_plan import MIN_WEIGHT, TASK_KEY

        label = context.task.metadata.get(TASK_KEY)
        plan = self.plan.for_task(label, context.instruction)
        ctx = replace(context, answer_format=plan.answer_format)
        weights = plan.weights()
        ballots, excluded = cast_ballots(
            candidates,
            ctx,
            weight=lambda g, _c: weights.get(g.expert, MIN_WEIGHT),
            flags=CASCADE_FLAGS,
        )
        called = {g.expert for g in candidates}
        stage = 0
        while stage + 1 < len(plan.stages) and all(e in called for e in plan.stages[stage + 1]):
            stage += 1
        last = stage == len(plan.stages) - 1
        voted = tally(ballots, excluded, ctx, self.name)
        support = len(voted.winner)
        info: dict[str, Any] = {
            "task": label if label in self.plan.tasks else None,
            "stage": stage,
            "supporters": support,
            "plan": plan.describe(),
        }
        if last or (ballots and support >= plan.need[stage]):
            if not ballots:
                why = "cascade: no usable answer after the last stage"
            elif last and stage > 0:
                why = f"cascade: weighted vote after the last stage {stage}"
            elif last:
                why = "cascade: the only stage answered"
            else:
                why = f"cascade: stopped at stage {stage} ({support} >= {plan.need[stage]} agree)"
            info["accepted"] = stage
            return voted.model_copy(update={"stop_reason": why, "meta": {"cascade": info}})
        nxt = [e for e in plan.stages[stage + 1] if e not in called]
        reason = (
            f"no usable answer at stage {stage}"
            if not ballots
            else f"{support} < {plan.need[stage]} agree at stage {stage}"
        )
        if context.calls_left <= 0 or not nxt:
            info["accepted"] = stage
            return voted.model_copy(
                update={
                    "stop_reason": f"cascade: {reason}; no calls left to escalate",
                    "meta": {"cascade": info},
                }
            )
        return voted.model_copy(
            update={
                "more": SampleRequest(
                    experts=nxt, params={}, reason=f"escalate to {'+'.join(nxt)}: {reason}"
                ),
                "stop_reason": f"pending: escalate after stage {stage} ({reason})",
                "meta": {"cascade": info},
            }
        )
