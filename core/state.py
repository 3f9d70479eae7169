"""What policies and aggregators read: the run's state as the orchestrator (or a replay) sees it.

The one copy of each rule shared by routing, aggregation and traces lives here: which experts
are usable, and what a finished run answers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from expertgraph.core.errors import NoExpertAvailable
from expertgraph.core.types import (
    AnswerFormat,
    Decision,
    ExpertCard,
    PlanStep,
    Step,
    Task,
    Usage,
)

if TYPE_CHECKING:
    from expertgraph.core.protocols import ExpertCall


@dataclass
class ExpertHealth:
    """What the run has seen of an expert so far (calls and failures before this step), and
    whether it is cooling down in this process (:mod:`expertgraph.core.health`)."""

    calls: int = 0
    errors: int = 0
    last_error: str | None = None
    cooling_s: float | None = None
    """Seconds until the process-wide cooldown lets it be called (0: a probe call decides);
    None when it may be called."""

    @property
    def error_rate(self) -> float:
        return self.errors / self.calls if self.calls else 0.0

    @property
    def cooling(self) -> bool:
        return self.cooling_s is not None

    @property
    def usable(self) -> bool:
        """False while it cools down, or once this run called it and it failed every call:
        routing goes around it."""
        return not self.cooling and not (self.calls and self.errors >= self.calls)


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
    """The run's recent steps, oldest first (each knows its ``index``): at most the run's
    history window, which is at least the policy's ``history_window`` when it declares one.
    Older steps are in the trace."""
    plan_step: PlanStep | None = None
    """The plan's next sub-step; None for an open task, where the policy picks the instruction."""
    top_k: int = 1
    spent: Usage = field(default_factory=Usage)
    call: ExpertCall | None = None
    """The run's recorded, budget-checked expert call (``call_expert`` uses it); None offline."""

    @property
    def instruction(self) -> str | None:
        return self.plan_step.instruction if self.plan_step else None

    @property
    def offers_tools(self) -> bool:
        """Whether this step offers tools: then only experts that can call tools may act."""
        return bool(self.task.tools) and self.task.tool_choice != "none"

    @property
    def allowed(self) -> list[ExpertView]:
        """Experts the plan step allows (all of them when it names none), healthy or not;
        when the step offers tools, only those whose card says they can call tools."""
        names = self.plan_step.experts if self.plan_step and self.plan_step.experts else None
        tools = self.offers_tools
        return [
            e
            for e in self.experts
            if (names is None or e.name in names) and (not tools or e.card.tools)
        ]

    @property
    def candidates(self) -> list[ExpertView]:
        """Experts this step may use: the plan step's restriction, minus unusable ones.

        When every allowed expert has failed every call in this run, those not cooling down
        come back: a step is better sent to an expert that may have recovered than to nobody.
        A cooling expert never comes back (:meth:`require_available` fails the run instead).
        """
        allowed = self.allowed
        usable = [e for e in allowed if e.health.usable]
        return usable or [e for e in allowed if not e.health.cooling]

    @property
    def cooling(self) -> dict[str, float]:
        """Allowed experts cooling down in this process -> seconds until they may be called."""
        return {e.name: e.health.cooling_s for e in self.allowed if e.health.cooling_s is not None}

    def require_available(self) -> None:
        """Raise :class:`~expertgraph.core.errors.NoExpertAvailable` when every expert the
        step allows is cooling down: the run fails at once rather than wait or call them."""
        allowed = self.allowed
        cooling = self.cooling
        if allowed and len(cooling) == len(allowed):
            raise NoExpertAvailable(cooling)

    @property
    def routed_around(self) -> list[str]:
        """Allowed experts left out of :attr:`candidates`: they failed every call of this run,
        or are cooling down."""
        kept = {e.name for e in self.candidates}
        return [e.name for e in self.allowed if e.name not in kept]

    @property
    def k(self) -> int:
        return self.plan_step.top_k if self.plan_step and self.plan_step.top_k else self.top_k


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
    """How many more expert calls the step's call limit and the run's cost budget allow;
    0 for a replay, where no more samples can be had."""
    round: int = 0
    """0 for the first batch of candidates, 1.. after each request for more."""
    step: int = 0
    """The step's index in its run."""
    call: ExpertCall | None = None
    """The run's recorded, budget-checked expert call (``call_expert`` uses it); None offline."""


def step_answer_format(task: Task, step: int) -> AnswerFormat:
    """The answer format a step is aggregated with: its plan step's, else the task's."""
    if task.plan is not None and step < len(task.plan) and task.plan[step].answer_format:
        return task.plan[step].answer_format
    return task.answer_format


OPEN_TASK_ANSWERED = "open task answered"
"""The rationale of a policy that finishes an open task once a step answered it in text."""


def next_instruction(state: RoutingState) -> str | None:
    """The instruction of the next step for policies that do not write their own.

    A plan's step gives it; an open task is answered in one step (the task itself), after
    which the run finishes, unless that step acted (its vote chose tool calls): then the
    task goes on, with the results in context, until a step answers in text (an agent
    loop). Policies that plan (an LLM router) override this behaviour.
    """
    if state.plan_step is not None:
        return state.plan_step.instruction
    last = state.steps[-1].result if state.steps else None
    if not state.steps or (last is not None and last.tool_calls):
        return state.task.text
    return None


def finish_decision(state: RoutingState, policy: str, rationale: str) -> Decision:
    """Finish with the last step's answer."""
    last = state.steps[-1].result if state.steps else None
    answer = last.output if last is not None else None
    return Decision(action="finish", policy=policy, rationale=rationale, answer=answer)
