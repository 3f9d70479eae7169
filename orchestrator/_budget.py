"""Budget arithmetic of a run: worst-case call costs, what fits, time and calls left.

The cost of a call before it is made is its expert's :meth:`~expertgraph.agents.base.Expert.
worst_case_cost` (its prompt and ``max_tokens`` of output, priced as its reply will be): the
one rule, used to fit a step's experts, to count the calls a budget pays and to admit each
call (:class:`~expertgraph.orchestrator._recorder.RunRecorder`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping
from typing import Any

from expertgraph.agents.base import Expert
from expertgraph.core.protocols import ExpertLike
from expertgraph.core.types import Message, Task, Usage

DEFAULT_MAX_TOKENS = 256
"""Output tokens a call gets (and is priced at) under a cost budget when nothing sets
``max_tokens``."""

MIN_FIT_TOKENS = 16
"""The fewest output tokens a call is lowered to so that it fits the budget; below, it is
skipped."""

_EPS = 1e-12  # float sums of estimates must not refuse a call that fits exactly


def max_tokens_of(expert: ExpertLike, params: Mapping[str, Any]) -> int:
    """The output tokens a call may produce: its ``max_tokens``, else the expert's default
    params' (an API expert's), else :data:`DEFAULT_MAX_TOKENS`."""
    own = getattr(expert, "params", None)
    value = params.get("max_tokens") or (own.get("max_tokens") if isinstance(own, Mapping) else 0)
    try:
        return max(1, int(value or DEFAULT_MAX_TOKENS))
    except (TypeError, ValueError):
        return DEFAULT_MAX_TOKENS  # the expert refuses the call with its own message


def worst_case(
    expert: ExpertLike, messages: list[Message], params: Mapping[str, Any], max_tokens: int
) -> float:
    """The most a call with ``max_tokens`` of output may cost (the expert's rule)."""
    call = {**params, "max_tokens": max_tokens}
    method = getattr(expert, "worst_case_cost", None)
    if method is None:  # an expert-like object without the method: the base rule, by card
        return float(Expert.worst_case_cost(expert, messages, call))  # type: ignore[arg-type]
    return float(method(messages, call))


def estimate_cost(expert: ExpertLike, messages: list[Message], params: Mapping[str, Any]) -> float:
    """The most a call with these params may cost, at its full ``max_tokens``."""
    return worst_case(expert, messages, params, max_tokens_of(expert, params))


def least_cost(expert: ExpertLike, messages: list[Message], params: Mapping[str, Any]) -> float:
    """The most a call may cost once lowered to the fewest output tokens it may get."""
    limit = max_tokens_of(expert, params)
    return worst_case(expert, messages, params, min(limit, MIN_FIT_TOKENS))


def fit_tokens(
    expert: ExpertLike, messages: list[Message], params: Mapping[str, Any], room: float
) -> tuple[int | None, float]:
    """The most output tokens (up to the call's own) whose worst case fits ``room``, and that
    worst case; ``(None, least)`` when not even :data:`MIN_FIT_TOKENS` fit."""
    limit = max_tokens_of(expert, params)
    full = worst_case(expert, messages, params, limit)
    if full <= room + _EPS:
        return limit, full
    low_tokens = min(limit, MIN_FIT_TOKENS)
    low = worst_case(expert, messages, params, low_tokens)
    if low > room + _EPS:
        return None, low
    # Prices are linear in output tokens: interpolate; bisect below should rounding disagree.
    per_token = (full - low) / (limit - low_tokens)
    guess = low_tokens + int((room - low) / per_token) if per_token > 0 else low_tokens
    guess = max(low_tokens, min(limit - 1, guess))
    cost = worst_case(expert, messages, params, guess)
    if cost <= room + _EPS:
        return guess, cost
    lo, hi, best = low_tokens, guess - 1, (low_tokens, low)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        cost = worst_case(expert, messages, params, mid)
        if cost <= room + _EPS:
            lo, best = mid, (mid, cost)
        else:
            hi = mid - 1
    return best


def fits(max_cost: float | None, spent: float, estimate: float) -> bool:
    """Whether a call estimated at ``estimate`` fits a budget of which ``spent`` is used."""
    return max_cost is None or spent + estimate <= max_cost + _EPS


def fit_cost(
    estimates: Iterable[tuple[str, float]], spent: float, max_cost: float | None
) -> tuple[list[str], list[str]]:
    """Keep experts in order while their estimated cost fits the budget; drop the rest."""
    chosen: list[str] = []
    dropped: list[str] = []
    total = spent
    for name, estimate in estimates:
        if fits(max_cost, total, estimate):
            chosen.append(name)
            total += estimate
        else:
            dropped.append(name)
    return chosen, dropped


def time_left(task: Task, started_at: float) -> float | None:
    """Seconds until the run's deadline (at least 1 ms), or None without a deadline."""
    deadline = task.budget.deadline_s
    if deadline is None:
        return None
    return max(0.001, deadline - (time.time() - started_at))


def past_deadline(task: Task, started_at: float) -> bool:
    deadline = task.budget.deadline_s
    return deadline is not None and time.time() - started_at >= deadline


def calls_left(
    task: Task, made: int, spent: Usage, cheapest: float | None, started_at: float
) -> int:
    """Further calls this step may make: its call limit, the cost budget and the deadline.

    ``cheapest`` is the estimated cost of one more call to the cheapest expert the step may
    use (None: no expert left); the cost budget allows as many such calls as its rest pays.
    """
    if past_deadline(task, started_at):
        return 0
    left = task.budget.max_calls_per_step - made
    max_cost = task.budget.max_cost
    if max_cost is not None and cheapest is not None and cheapest > 0:
        left = min(left, math.floor((max_cost - spent.cost + _EPS) / cheapest))
    return max(0, left)


def uncounted(reported: Usage, recorded: Usage) -> Usage:
    """What a policy or aggregator reports spending beyond the calls the run recorded for it.

    ``Decision.usage`` and ``StepResult.usage`` say what deciding or aggregating cost, calls
    through the run's caller included (they read the same offline); only the rest is new.
    """
    return Usage(
        input_tokens=max(0, reported.input_tokens - recorded.input_tokens),
        output_tokens=max(0, reported.output_tokens - recorded.output_tokens),
        cost=max(0.0, reported.cost - recorded.cost),
        calls=max(0, reported.calls - recorded.calls),
    )
