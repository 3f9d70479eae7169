"""Budget arithmetic of a run: token and cost estimates, what fits, time and calls left."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable, Mapping
from typing import Any

from expertgraph.core.tools import ToolSpec
from expertgraph.core.types import ExpertCard, Message, Task, Usage

DEFAULT_MAX_TOKENS = 256
"""Output tokens a call is estimated at when its params set no ``max_tokens``."""

_EPS = 1e-12  # float sums of estimates must not refuse a call that fits exactly


def estimate_tokens(messages: list[Message]) -> int:
    # About four characters a token for English; only used to stay inside a cost budget.
    chars = sum(len(m.content) for m in messages)
    chars += sum(len(c.name) + len(str(c.arguments)) for m in messages for c in m.tool_calls or [])
    return chars // 4 + 4 * len(messages)


def estimate_cost(card: ExpertCard, messages: list[Message], params: Mapping[str, Any]) -> float:
    """The most a call may cost: its prompt (and the tools it is offered), and ``max_tokens``
    of output, priced by the card."""
    max_tokens = int(params.get("max_tokens") or DEFAULT_MAX_TOKENS)
    tools = params.get("tools") or []
    offered = sum(
        len(json.dumps(t.openai() if isinstance(t, ToolSpec) else t, default=str)) for t in tools
    )
    return card.estimate_cost(estimate_tokens(messages) + offered // 4, max_tokens)


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
