"""The contracts between the orchestrator and what it calls: policies, aggregators, embedders.

Traces, policies and the orchestrator all import these; none defines its own mirror.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

if TYPE_CHECKING:
    import numpy as np

    from expertgraph.core.state import AggregationContext, RoutingState
    from expertgraph.core.types import Decision, ExpertCard, Generation, Message, StepResult


class Policy(ABC):
    """A routing policy: reads the run state, returns a :class:`Decision`."""

    name: str = "policy"

    @abstractmethod
    def decide(self, state: RoutingState) -> Decision:
        """Choose the next step's experts (or finish)."""

    blocking: bool = True
    """Whether :meth:`decide` does heavy work (embedding, inference) that belongs in a
    worker thread; cheap policies set it False and run on the event loop."""

    paired_aggregator: Aggregator | None = None
    """The aggregator this policy's decisions are made for (a trained cascade's own stages),
    used when the orchestrator is given none."""

    async def adecide(self, state: RoutingState) -> Decision:
        """Async entry point used by the orchestrator."""
        if not self.blocking:
            return self.decide(state)
        return await asyncio.to_thread(self.decide, state)


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


@runtime_checkable
class Embedder(Protocol):
    """Anything that maps texts to L2-normalised vectors."""

    name: str

    def encode(self, texts: list[str]) -> np.ndarray:
        """Return an ``(n, d)`` float32 array of unit vectors."""
        ...


CallRole = Literal["candidate", "router", "fuser", "judge"]
"""What an expert call is for: a step's candidate, or a router's, fuser's or judge's own call."""

BUDGET_REFUSED = "budget"
"""``ExpertFailure.type`` of a call the run's budget did not allow: it was never made."""


class ExpertLike(Protocol):
    """What a call needs of an expert: its name, its card (for the cost estimate), generate."""

    name: str
    card: ExpertCard

    async def generate(self, messages: Sequence[Message], **params: Any) -> Generation: ...


class ExpertCall(Protocol):
    """The run's way to call an expert: budget-checked, health-counted and traced.

    The orchestrator puts one in ``RoutingState.call`` and ``AggregationContext.call``; a
    call the budget does not allow is not made and comes back as a :class:`Generation`
    whose error has type :data:`BUDGET_REFUSED`.
    """

    async def __call__(
        self, expert: ExpertLike, messages: list[Message], /, *, role: CallRole, **params: Any
    ) -> Generation: ...


async def call_expert(
    call: ExpertCall | None,
    expert: ExpertLike,
    messages: list[Message],
    *,
    role: CallRole,
    **params: Any,
) -> Generation:
    """Call ``expert`` through the run's ``call`` when there is one, else directly.

    Offline replays and direct use of a policy or aggregator have no run, hence no caller.
    """
    if call is None:
        return await expert.generate(messages, **params)
    return await call(expert, messages, role=role, **params)


def refused(generation: Generation) -> bool:
    """Whether a call was refused by the run's budget (never made: it cost nothing)."""
    return generation.error is not None and generation.error.type == BUDGET_REFUSED
