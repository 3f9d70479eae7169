"""Zero-shot embedding router: similarity of the step text to each expert's card."""

from __future__ import annotations

import threading

import numpy as np

from expertgraph.core import (
    ExpertView,
    Policy,
    RoutingState,
    finish_decision,
    next_instruction,
)
from expertgraph.core.protocols import Embedder
from expertgraph.core.state import OPEN_TASK_ANSWERED
from expertgraph.core.types import Decision, ExpertCard
from expertgraph.policies.embeddings.embedder import SentenceTransformerEmbedder
from expertgraph.policies.routing._ranking import format_scores, top_k_decision


def card_texts(name: str, card: ExpertCard) -> list[str]:
    """The texts that describe an expert: description, each skill, each example prompt."""
    texts = [t for t in [card.description, *card.skills, *card.examples] if t and t.strip()]
    return texts or [name]


class EmbeddingRouter(Policy):
    """Routes each step to the experts whose cards are most similar to the step text.

    An expert's score is ``w_max * max + (1 - w_max) * mean`` of the cosine similarities
    between the step text and the expert's card texts (description, skills, examples): the
    max rewards one close example, the mean keeps a broad card from winning on one phrase.
    The top ``k`` experts are chosen; every expert's score is recorded in the decision.
    Experts whose calls all failed so far in the run are routed around (unless
    ``avoid_failing`` is False).
    """

    name = "embedding"

    def __init__(
        self,
        embedder: Embedder | None = None,
        *,
        top_k: int | None = None,
        w_max: float = 0.7,
        avoid_failing: bool = True,
    ) -> None:
        self.embedder = embedder or SentenceTransformerEmbedder()
        self.top_k = top_k
        self.w_max = w_max
        self.avoid_failing = avoid_failing
        # Card embeddings per expert, keyed by the card's texts: cards do not change in a run.
        self._card_cache: dict[tuple[str, tuple[str, ...]], np.ndarray] = {}
        self._lock = threading.Lock()

    def _card_vectors(self, view: ExpertView) -> np.ndarray:
        texts = tuple(card_texts(view.name, view.card))
        key = (view.name, texts)
        with self._lock:
            cached = self._card_cache.get(key)
        if cached is None:
            cached = self.embedder.encode(list(texts))
            with self._lock:
                self._card_cache[key] = cached
        return cached

    def score(self, text: str, experts: list[ExpertView]) -> dict[str, float]:
        """Score every expert for ``text``, in [-1, 1]."""
        query = self.embedder.encode([text])[0]
        scores: dict[str, float] = {}
        for view in experts:
            sims = self._card_vectors(view) @ query
            scores[view.name] = float(self.w_max * sims.max() + (1 - self.w_max) * sims.mean())
        return scores

    def decide(self, state: RoutingState) -> Decision:
        instruction = next_instruction(state)
        if instruction is None:
            return finish_decision(state, self.name, OPEN_TASK_ANSWERED)
        views = state.candidates if self.avoid_failing else state.allowed
        scores = self.score(instruction, views)
        return top_k_decision(
            state,
            scores,
            self.top_k or state.k,
            self.name,
            f"card similarity ({format_scores(scores)})",
            routed_around=state.routed_around if self.avoid_failing else [],
        )
