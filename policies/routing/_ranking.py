"""The scoring policies' one top-k decision, and how a rationale names routed-around experts."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from expertgraph.core import RoutingState, next_instruction
from expertgraph.core.types import Decision


def routed_around_note(rationale: str, routed_around: Sequence[str]) -> str:
    """``rationale`` plus the experts the step went around because they failed every call."""
    if not routed_around:
        return rationale
    return f"{rationale}; routed around failing experts: {', '.join(routed_around)}"


def format_scores(scores: Mapping[str, float], order: Sequence[str] | None = None) -> str:
    """``a=0.900, b=0.500``: best first, or in ``order``."""
    names = order if order is not None else sorted(scores, key=lambda n: scores[n], reverse=True)
    return ", ".join(f"{n}={scores[n]:.3f}" for n in names)


def top_k_decision(
    state: RoutingState,
    scores: Mapping[str, float],
    k: int,
    policy: str,
    reason: str,
    *,
    prefix: str = "",
    ranking: Sequence[str] | None = None,
    routed_around: Sequence[str] | None = None,
    notes: Sequence[str] = (),
    meta: Mapping[str, Any] | None = None,
) -> Decision:
    """Call the best ``k`` experts of ``ranking`` for the state's next instruction.

    ``ranking`` (best first) defaults to ``scores`` by score, ties in the order given. The
    rationale reads ``{prefix}top-{n} by {reason}``, then the experts routed around
    (``state.routed_around`` unless given) and any ``notes``.
    """
    ranked = (
        list(ranking)
        if ranking is not None
        else sorted(scores, key=lambda n: scores[n], reverse=True)
    )
    chosen = ranked[: max(1, k)]
    rationale = routed_around_note(
        f"{prefix}top-{len(chosen)} by {reason}",
        state.routed_around if routed_around is None else routed_around,
    )
    rationale = "; ".join([rationale, *notes])
    return Decision(
        action="call",
        instruction=next_instruction(state),
        experts=chosen,
        scores=dict(scores),
        mode="top1" if len(chosen) == 1 else "topk",
        rationale=rationale,
        policy=policy,
        meta=dict(meta or {}),
    )
