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
    """Always the same expert(s). When none of them is usable (a step restricts them, they
    failed every call of the run, or they are cooling down) it falls back to the next
    configured expert that is, in the orchestrator's order after the first fixed one."""

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
        chosen = [n for n in self.experts if n in allowed]
        rationale = f"fixed: {', '.join(chosen)}"
        if not chosen:
            start = known.index(self.experts[0]) + 1
            chosen = [n for n in known[start:] + known[:start] if n in allowed][:1]
            rationale = f"fixed: {', '.join(self.experts)} not usable; next configured: " + (
                ", ".join(chosen) or "none"
            )
        return Decision(
            instruction=instruction,
            experts=chosen,
            scores={n: (1.0 if n in chosen else 0.0) for n in known},
            mode="fixed",
            rationale=rationale,
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
