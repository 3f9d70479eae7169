"""Embedding medoid: return the candidate most similar to all the others.

Label-free and without an extra model call: the candidates are embedded (the bundled
MiniLM by default), and the one with the highest mean cosine similarity to the rest --
the centre of the cloud -- wins. It needs no extractable answer, so it also works for free
text where votes over exact answers split; its answer is still extracted for the record.
Actions are not embedded: a step where a candidate calls tools is left to the majority vote
(an action ballot is a call, not prose to be near).
"""

from __future__ import annotations

import numpy as np

from expertgraph.core import AggregationContext, Aggregator
from expertgraph.core.actions import text_ballot
from expertgraph.core.protocols import Embedder
from expertgraph.core.types import Exclusion, Generation, StepResult, candidate_key
from expertgraph.policies.aggregation._ballots import Ballot, cast_ballots, count, tally
from expertgraph.policies.aggregation.answers import extract_answer
from expertgraph.policies.aggregation.redflags import RedFlags, red_flag, tool_flag


def medoid_index(vectors: np.ndarray) -> tuple[int, np.ndarray]:
    """The row with the highest mean cosine similarity to the other rows, and every row's mean.

    Rows must be unit vectors. With one row, that row (centrality 1).
    """
    n = vectors.shape[0]
    if n == 0:
        raise ValueError("no vectors")
    if n == 1:
        return 0, np.ones(1, dtype=np.float32)
    sims = vectors @ vectors.T
    centrality = (sims.sum(axis=1) - np.diag(sims)) / (n - 1)
    return int(np.argmax(centrality)), centrality


class MedoidAggregator(Aggregator):
    """The candidate closest to all others in embedding space.

    Failed and empty candidates are excluded; with ``red_flags`` set, flagged ones too
    (by default a candidate without an extractable answer still takes part: the medoid
    does not need one). ``votes`` counts the remaining candidates per extracted answer, for
    the record; ``confidence`` is the medoid's mean similarity to the others and ``margin``
    its lead over the next most central candidate.
    """

    name = "medoid"

    def __init__(
        self, embedder: Embedder | None = None, *, red_flags: RedFlags | None = None
    ) -> None:
        if embedder is None:
            from expertgraph.policies.embeddings.embedder import SentenceTransformerEmbedder

            embedder = SentenceTransformerEmbedder()
        self.embedder = embedder
        self.red_flags = red_flags

    def combine(self, candidates: list[Generation], context: AggregationContext) -> StepResult:
        if any(g.tool_calls for g in candidates if g.error is None):
            ballots, excluded = cast_ballots(candidates, context, flags=self.red_flags)
            result = tally(ballots, excluded, context, self.name)
            result.stop_reason = f"actions are left to the vote: {result.stop_reason}"
            return result
        kept: list[Generation] = []
        answers: list[str | None] = []
        excluded: list[Exclusion] = []
        for gen in candidates:
            if gen.error is not None or not gen.text.strip():
                reason = red_flag(gen, None, None) if gen.error is not None else "empty output"
                excluded.append(
                    Exclusion(expert=gen.expert, sample=gen.sample, reason=reason or "empty output")
                )
                continue
            choice = tool_flag(gen, context.task)
            if choice is not None:  # text where the task requires a call
                excluded.append(Exclusion(expert=gen.expert, sample=gen.sample, reason=choice))
                continue
            extracted = extract_answer(gen.text, context.answer_format)
            if self.red_flags is not None:
                flag = red_flag(gen, extracted, self.red_flags)
                if flag is not None:
                    excluded.append(Exclusion(expert=gen.expert, sample=gen.sample, reason=flag))
                    continue
            kept.append(gen)
            answers.append(None if extracted.answer is None else text_ballot(extracted.answer))
        if not kept:
            return StepResult(
                aggregator=self.name,
                excluded=excluded,
                stop_reason="no candidate produced a usable answer",
            )
        vectors = self.embedder.encode([g.text for g in kept])
        best, centrality = medoid_index(np.asarray(vectors, dtype=np.float32))
        keys = [candidate_key(g) for g in kept]
        votes, supporters = count(
            Ballot(key, gen.expert, answer, 1.0, gen)
            for key, answer, gen in zip(keys, answers, kept, strict=True)
            if answer is not None
        )
        order = np.argsort(-centrality)
        runner_up = float(centrality[order[1]]) if len(order) > 1 else 0.0
        answer = answers[best]
        return StepResult(
            aggregator=self.name,
            text=kept[best].text.strip(),
            answer=answer,
            votes=votes,
            supporters=supporters,
            winner=[keys[best]],
            confidence=float(centrality[best]),
            margin=float(centrality[best]) - runner_up if len(kept) > 1 else 0.0,
            excluded=excluded,
            stop_reason="medoid"
            if answer is not None
            else "medoid (its answer could not be extracted)",
            meta={
                "centrality": {
                    k: round(float(c), 6) for k, c in zip(keys, centrality, strict=True)
                },
                "embedder": getattr(self.embedder, "name", type(self.embedder).__name__),
            },
        )
