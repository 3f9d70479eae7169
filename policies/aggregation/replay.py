"""Replay recorded expert replies through an aggregator, as the orchestrator would call it.

Benchmarks stand recorded replies in for live calls: the first batch is the router's pick,
and each ``StepResult.more`` request is answered from the record instead of a model,
within the same per-step call budget and with the same fallback (route around a step with
no usable answer to the next expert in the router's order). The aggregator code is exactly
the one a live run uses.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from expertgraph.core import AggregationContext, Aggregator
from expertgraph.core.types import Generation, SampleRequest, StepResult

SampleSource = Callable[[str, int, Mapping[str, Any]], Generation | None]
"""(expert, sample number, params) -> the recorded reply, or None when there is none."""


@dataclass
class ReplayOutcome:
    """What one replayed step produced: the result and every candidate drawn."""

    result: StepResult
    candidates: list[Generation]
    rounds: int

    @property
    def calls(self) -> int:
        return len(self.candidates)


def recorded(replies: Mapping[str, Sequence[str]]) -> SampleSource:
    """A source over ``{expert: [reply for sample 0, sample 1, ...]}``."""

    def source(expert: str, sample: int, params: Mapping[str, Any]) -> Generation | None:
        texts = replies.get(expert)
        if texts is None or sample >= len(texts):
            return None
        return Generation(expert=expert, text=texts[sample], sample=sample, params=dict(params))

    return source


def replay_step(
    aggregator: Aggregator,
    context: AggregationContext,
    first: Sequence[str],
    source: SampleSource,
    *,
    max_calls: int = 16,
) -> ReplayOutcome:
    """Run one step: call ``first``, then serve every request for more from ``source``."""
    candidates: list[Generation] = []
    next_sample: dict[str, int] = {}

    def draw(names: Sequence[str], params: Mapping[str, Any]) -> list[Generation]:
        got: list[Generation] = []
        for name in names:
            sample = next_sample.get(name, 0)
            gen = source(name, sample, params)
            if gen is None:
                continue
            next_sample[name] = sample + 1
            got.append(gen)
        return got

    candidates.extend(draw(list(first)[:max_calls], {}))
    rounds = 0
    notes: list[str] = []
    while True:
        ctx = replace(context, calls_left=max(0, max_calls - len(candidates)), round=rounds)
        result = aggregator.combine(candidates, ctx)
        more = result.more
        if more is None and result.failed:
            more = _fallback(candidates, ctx)
        if more is None:
            break
        extra = draw(more.experts[: ctx.calls_left], more.params)
        if not extra:
            why = "no budget for more samples" if ctx.calls_left <= 0 else "no recorded sample left"
            result = result.model_copy(
                update={"stop_reason": f"{result.stop_reason}; {why}".lstrip("; ")}
            )
            break
        notes.append(more.reason)
        candidates.extend(extra)
        rounds += 1
    result = result.model_copy(update={"more": None})
    if notes:
        result.meta["requests"] = notes
    result.extra_calls = max(result.extra_calls, len(candidates) - len(first))
    return ReplayOutcome(result, candidates, rounds)


def _fallback(candidates: Sequence[Generation], ctx: AggregationContext) -> SampleRequest | None:
    """The orchestrator's fallback: a step with no usable answer tries the next untried expert."""
    tried = {g.expert for g in candidates}
    for name in ctx.order:
        if name not in tried:
            return SampleRequest(
                experts=[name], reason=f"no usable answer; routing around to {name}"
            )
    return None
