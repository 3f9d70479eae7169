"""Stickiness: keep the previous step's expert(s) unless a challenger wins by a margin.

Switching experts between steps has a price the scores do not see (a new model re-reads the
context, its style differs, its cache is cold), so a scoring policy wrapped here changes
expert only when the challenger's score beats the incumbent's by ``margin``.
"""

from __future__ import annotations

from dataclasses import dataclass

from expertgraph.core import Policy, RoutingState
from expertgraph.core.types import Decision


@dataclass(frozen=True)
class _Swap:
    """One incumbent kept in place of one challenger (or not)."""

    kept: str
    kept_score: float
    over: str
    over_score: float

    @property
    def margin(self) -> float:
        return self.over_score - self.kept_score


class StickyPolicy(Policy):
    """Wraps any scoring policy; keeps last step's experts unless beaten by ``margin``.

    The inner policy's scores decide. An incumbent (an expert the previous step chose that
    this step may still use and that has not failed every call) is kept in place of a
    challenger whose score exceeds the incumbent's by less than ``margin``; a challenger that
    beats it by ``margin`` or more takes its place. Each comparison is written to the
    rationale and to ``Decision.meta["sticky"]``.
    """

    def __init__(self, inner: Policy, margin: float) -> None:
        if margin < 0:
            raise ValueError(f"sticky margin must be >= 0, got {margin}")
        self.inner = inner
        self.margin = float(margin)
        self.name = f"{inner.name}+sticky"

    @property
    def history_window(self) -> int:
        """The steps it reads: the last one (the incumbent), or what the inner policy reads."""
        return max(1, getattr(self.inner, "history_window", 0) or 0)

    def decide(self, state: RoutingState) -> Decision:
        return self._tagged(self.apply(self.inner.decide(state), state))

    async def adecide(self, state: RoutingState) -> Decision:
        return self._tagged(self.apply(await self.inner.adecide(state), state))

    def _tagged(self, decision: Decision) -> Decision:
        policy = decision.policy or self.inner.name
        if not policy.endswith("+sticky"):
            policy += "+sticky"
        return decision.model_copy(update={"policy": policy})

    def _incumbents(self, state: RoutingState) -> list[str]:
        if not state.steps:
            return []
        # An expert that failed every call is no incumbent worth keeping, even when the step
        # falls back to such experts because none is usable.
        usable = {v.name for v in state.candidates if v.health.usable}
        return [n for n in state.steps[-1].decision.experts if n in usable]

    def apply(self, decision: Decision, state: RoutingState) -> Decision:
        """Apply stickiness to the inner policy's decision."""
        if decision.action != "call" or not decision.experts:
            return decision
        incumbents = self._incumbents(state)
        if not incumbents:
            return decision
        unscored = [n for n in incumbents if n not in decision.scores]
        if unscored:
            meta = {
                **decision.meta,
                "sticky": {"margin": self.margin, "note": f"no score for {unscored}"},
            }
            return decision.model_copy(update={"meta": meta})
        scores = decision.scores
        chosen = list(decision.experts)
        challengers = sorted(
            (n for n in chosen if n not in incumbents), key=lambda n: scores.get(n, 0.0)
        )
        # Strongest unchosen incumbent first: it is the one a weak challenger must beat.
        benched = sorted(
            (n for n in incumbents if n not in chosen), key=lambda n: scores[n], reverse=True
        )
        kept: list[_Swap] = []
        switched: list[_Swap] = []
        for challenger, incumbent in zip(challengers, benched):
            swap = _Swap(incumbent, scores[incumbent], challenger, scores.get(challenger, 0.0))
            if swap.margin < self.margin:
                chosen[chosen.index(challenger)] = incumbent
                kept.append(swap)
            else:
                switched.append(swap)
        notes = [
            f"kept {s.kept} (score {s.kept_score:.3f}) over {s.over} (score {s.over_score:.3f}): "
            f"margin {s.margin:.3f} < {self.margin:g}"
            for s in kept
        ] + [
            f"switched from {s.kept} (score {s.kept_score:.3f}) to {s.over} "
            f"(score {s.over_score:.3f}): margin {s.margin:.3f} >= {self.margin:g}"
            for s in switched
        ]
        if not notes:
            notes = [f"kept {', '.join(n for n in chosen if n in incumbents)}: chosen again"]
        meta = {
            **decision.meta,
            "sticky": {
                "margin": self.margin,
                "incumbents": incumbents,
                "inner_choice": list(decision.experts),
                "kept": [s.kept for s in kept],
                "notes": notes,
            },
        }
        rationale = f"{decision.rationale}; sticky: {'; '.join(notes)}".lstrip("; ")
        return decision.model_copy(
            update={
                "experts": chosen,
                "rationale": rationale,
                "meta": meta,
            }
        )
