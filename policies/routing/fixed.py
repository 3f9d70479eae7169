"""Non-router baselines: a fixed expert, or every expert."""

from __future__ import annotations

from expertgraph.core import (
    OPEN_TASK_ANSWERED,
    Policy,
    RoutingState,
    finish_decision,
    next_instruction,
)
from expertgraph.core.errors import UnknownExpertError
from expertgraph.core.types import Decision


class FixedPolicy(Policy):
    """Always the same expert(s); falls back to the first allowed one when a step restricts them."""

    name = "fixed"
    blocking = False

    def __init__(self, experts: list[str]) -> None:
        if not experts:
            raise ValueError("a fixed policy needs at least one expert")
        self.experts = list(experts)

    def decide(self, state: RoutingState) -> Decision:
        instruction = next_instruction(state)
        if instruction is None:
            return finish_decision(state, self.name, OPEN_TASK_ANSWERED)
        allowed = [v.name for v in state.candidates]
        known = [v.name for v in state.experts]
        for name in self.experts:
            if name not in known:
                raise UnknownExpertError(name, known)
        chosen = [n for n in self.experts if n in allowed] or allowed[:1]
        return Decision(
            instruction=instruction,
            experts=chosen,
            scores={n: (1.0 if n in chosen else 0.0) for n in known},
            mode="fixed",
            rationale=f"fixed: {', '.join(chosen)}",
            policy=self.name,
        )


class AllExperts(Policy):
    """Dense selection: every allowed expert answers every step."""

    name = "all"
    blocking = False

    def decide(self, state: RoutingState) -> Decision:
        instruction = next_instruction(state)
        if instruction is None:
            return finish_decision(state, self.name, OPEN_TASK_ANSWERED)
        chosen = [v.name for v in state.candidates]
        return Decision(
            instruction=instruction,
            experts=chosen,
            scores={n: 1.0 for n in chosen},
            mode="all",
            rationale="dense: all experts",
            policy=self.name,
        )
