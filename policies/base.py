"""The contracts of routing policies (who acts next) and aggregators (how outputs combine)."""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

from expertgraph.core.types import (
    AnswerFormat,
    Decision,
    ExpertCard,
    Generation,
    PlanStep,
    Step,
    StepResult,
    Task,
    Usage,
)


@dataclass
class ExpertHealth:
    """What the run has seen of an expert so far."""

    calls: int = 0
    errors: int = 0
    last_error: str | None = None

    @property
    def error_rate(self) -> float:
        return self.errors / self.calls if self.calls else 0.0


@dataclass
class ExpertView:
    """An expert as a policy sees it: no live object, only its card and health."""

    name: str
    card: ExpertCard
    kind: str = "expert"
    health: ExpertHealth = field(default_factory=ExpertHealth)


@dataclass
class RoutingState:
    """Everything a policy may read to choose the next step."""

    task: Task
    step_index: int
    experts: list[ExpertView]
    steps: list[Step] = field(default_factory=list)
    plan_step: PlanStep | None = None
    """The plan's next sub-step; None for an open task, where the policy picks the instruction."""
    top_k: int = 1
    spent: Usage = field(default_factory=Usage)

    @property
    def instruction(self) -> str | None:
        return self.plan_step.instruction if self.plan_step else None

    @property
    def candidates(self) -> list[ExpertView]:
        """Experts this step may use: the plan step's restriction, minus unhealthy ones."""
        allowed = self.plan_step.experts if self.plan_step and self.plan_step.experts else None
        views = [e for e in self.experts if allowed is None or e.name in allowed]
        return views

    @property
    def k(self) -> int:
        return self.plan_step.top_k if self.plan_step and self.plan_step.top_k else self.top_k


class Policy(ABC):
    """A routing policy: reads the run state, returns a :class:`Decision`."""

    name: str = "policy"

    @abstractmethod
    def decide(self, state: RoutingState) -> Decision:
        """Choose the next step's experts (or finish)."""

    blocking: bool = True
    """Whether :meth:`decide` does heavy work (embedding, inference) that belongs in a
    worker thread; cheap policies set it False and run on the event loop."""

    async def adecide(self, state: RoutingState) -> Decision:
        """Async entry point used by the orchestrator."""
        if not self.blocking:
            return self.decide(state)
        return await asyncio.to_thread(self.decide, state)


@dataclass
class AggregationContext:
    """What an aggregator knows about the step whose candidates it combines."""

    task: Task
    instruction: str
    answer_format: AnswerFormat
    scores: dict[str, float] = field(default_factory=dict)
    """Router score per expert, for tie-breaks and weights."""
    order: list[str] = field(default_factory=list)
    """The router's order of experts, best first."""
    calls_left: int = 0
    """How many more expert calls the step and cost budgets allow."""
    round: int = 0
    """0 for the first batch of candidates, 1.. after each request for more."""


class Aggregator(ABC):
    """Turns a step's candidates into one :class:`StepResult`; may ask for more samples."""

    name: str = "aggregator"

    @abstractmethod
    def combine(self, candidates: list[Generation], context: AggregationContext) -> StepResult:
        """Combine candidates; set ``StepResult.more`` to ask for extra samples."""

    async def acombine(
        self, candidates: list[Generation], context: AggregationContext
    ) -> StepResult:
        """Async entry point used by the orchestrator."""
        return self.combine(candidates, context)


def next_instruction(state: RoutingState) -> str | None:
    """The instruction of the next step for policies that do not write their own.

    A plan's step gives it; an open task is answered in one step (the task itself), after
    which the run finishes. Policies that plan (an LLM router) override this behaviour.
    """
    if state.plan_step is not None:
        return state.plan_step.instruction
    return state.task.text if not state.steps else None


def finish_decision(state: RoutingState, policy: str, rationale: str) -> Decision:
    """Finish with the last step's answer."""
    last = state.steps[-1].result if state.steps else None
    answer = None
    if last is not None:
        answer = last.text or last.answer
    return Decision(action="finish", policy=policy, rationale=rationale, answer=answer)
