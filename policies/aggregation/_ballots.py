"""Ballots and the one tally: every aggregator that counts votes over answers counts here.

A ballot is a candidate that voted (its extracted answer and weight); :func:`count` adds
them up per answer, :func:`lead` reads the leader off a count and :func:`tally` turns the
count into a :class:`StepResult`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

from expertgraph.core import AggregationContext
from expertgraph.core.types import Exclusion, Generation, StepResult, candidate_key
from expertgraph.policies.aggregation.answers import extract_answer
from expertgraph.policies.aggregation.redflags import RedFlags, red_flag

WeightFn = Callable[[Generation, AggregationContext], float]


@dataclass
class Ballot:
    """A candidate that voted: its key, its extracted answer, its weight."""

    key: str
    expert: str
    answer: str
    weight: float
    generation: Generation


def cast_ballots(
    candidates: list[Generation],
    context: AggregationContext,
    *,
    weight: WeightFn | None = None,
    flags: RedFlags | None = None,
) -> tuple[list[Ballot], list[Exclusion]]:
    """Extract each candidate's answer; failed, unparseable or red-flagged ones are excluded."""
    ballots: list[Ballot] = []
    excluded: list[Exclusion] = []
    for gen in candidates:
        extracted = extract_answer(gen.text, context.answer_format) if gen.error is None else None
        reason = red_flag(gen, extracted, flags)
        if reason is not None or extracted is None or extracted.answer is None:
            excluded.append(
                Exclusion(expert=gen.expert, sample=gen.sample, reason=reason or "no answer")
            )
            continue
        w = 1.0 if weight is None else weight(gen, context)
        ballots.append(Ballot(candidate_key(gen), gen.expert, extracted.answer, w, gen))
    return ballots, excluded


class Vote(Protocol):
    """What :func:`count` reads of a vote: a :class:`Ballot`, or an ahead-by-k draw."""

    @property
    def key(self) -> str: ...

    @property
    def answer(self) -> str | None: ...

    @property
    def weight(self) -> float: ...


def count(ballots: Iterable[Vote]) -> tuple[dict[str, float], dict[str, list[str]]]:
    """Votes per answer (summed weights) and the candidate keys behind each, in ballot order.

    A vote without an answer counts for nothing.
    """
    votes: dict[str, float] = {}
    supporters: dict[str, list[str]] = {}
    for ballot in ballots:
        if ballot.answer is None:
            continue
        votes[ballot.answer] = votes.get(ballot.answer, 0.0) + ballot.weight
        supporters.setdefault(ballot.answer, []).append(ballot.key)
    return votes, supporters


def lead(votes: Mapping[str, float]) -> tuple[str | None, float]:
    """The most voted answer (the first counted among equals) and its lead over the runner-up.

    Alone, the leader leads by all its votes; with no votes there is no leader.
    """
    if not votes:
        return None, 0.0
    ranked = sorted(votes.values(), reverse=True)
    leader = max(votes, key=lambda a: votes[a])
    return leader, ranked[0] - (ranked[1] if len(ranked) > 1 else 0.0)


def tally(
    ballots: list[Ballot],
    excluded: list[Exclusion],
    context: AggregationContext,
    aggregator: str,
) -> StepResult:
    """Count weighted votes; a tie goes to the answer whose best supporter the router prefers."""
    if not ballots:
        return StepResult(
            aggregator=aggregator,
            excluded=excluded,
            stop_reason="no candidate produced a usable answer",
        )
    votes, supporters = count(ballots)

    def best_router_score(answer: str) -> float:
        return max(
            (context.scores.get(b.expert, 0.0) for b in ballots if b.answer == answer),
            default=0.0,
        )

    def first_seen(answer: str) -> int:
        return -next(i for i, b in enumerate(ballots) if b.answer == answer)

    # Ties: the router's favourite supporter, then the answer drawn first (stable order).
    ranked = sorted(
        votes, key=lambda a: (votes[a], best_router_score(a), first_seen(a)), reverse=True
    )
    winner = ranked[0]
    total = sum(votes.values())
    runner_up = votes[ranked[1]] if len(ranked) > 1 else 0.0
    tie = len(ranked) > 1 and math.isclose(votes[ranked[1]], votes[winner])
    representative = max(
        (b for b in ballots if b.answer == winner),
        key=lambda b: context.scores.get(b.expert, 0.0),
    )
    return StepResult(
        aggregator=aggregator,
        text=representative.generation.text.strip(),
        answer=winner,
        votes=votes,
        supporters=supporters,
        winner=supporters[winner],
        confidence=votes[winner] / total if total else 0.0,
        margin=(votes[winner] - runner_up) / total if total else 0.0,
        excluded=excluded,
        stop_reason="tie broken by router score" if tie else "majority",
    )
