"""The contracts between the orchestrator and what it calls: policies, aggregators, embedders.

Traces, policies and the orchestrator all import these; none defines its own mirror.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    import numpy as np
    from expertgraph.core.state import AggregationContext, RoutingState
    from expertgraph.core.types import Decision, Generation, StepResult


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
