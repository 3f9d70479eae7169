"""Ballots and the one tally: every aggregator that counts votes over answers counts here.

A ballot is a candidate that voted (its answer and weight): a candidate that calls tools
votes for its action (:mod:`.actions`), any other for its extracted text answer, in the
same count. :func:`read_ballot` reads one candidate, :func:`count` adds ballots up per
answer, :func:`lead` reads the leader off a count and :func:`tally` turns the count into a
:class:`StepResult` (with the winning action's calls when an action wins).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

from expertgraph.core import AggregationContext
from expertgraph.core.actions import action_ballot, text_ballot
from expertgraph.core.types import Exclusion, Generation, StepResult, candidate_key
from expertgraph.policies.aggregation.answers import extract_answer
from expertgraph.policies.aggregation.redflags import RedFlags, red_flag, tool_flag

WeightFn = Callable[[Generation, AggregationContext], float]


@dataclass
class Ballot:
    """A candidate that voted: its key, its extracted answer, its weight."""

    key: str
    expert: str
    answer: str
    weight: float
    generation: Generation


@dataclass(frozen=True)
class Read:
    """One candidate read for the vote: its ballot, and the flag that keeps it from voting."""

    answer: str | None
    """The action ballot of its calls, else its extracted text answer; None when none."""
    flag: str | None
    """Why it does not vote (failed, unparseable, a red flag); None when it votes."""


def read_ballot(gen: Generation, context: AggregationContext, flags: RedFlags | None) -> Read:
    """What ``gen`` votes for and whether it may: its action if it calls tools, else its text.

    A failed call never votes; then the step's tool rules (:func:`tool_flag`), then the
    other red flags.
    """
    if gen.error is not None:
        return Read(None, red_flag(gen, None, flags))
    if gen.tool_calls:
        return Read(
            action_ballot(gen.tool_calls),
            tool_flag(gen, context.task) or red_flag(gen, None, flags),
        )
    extracted = extract_answer(gen.text, context.answer_format)
    answer = None if extracted.answer is None else text_ballot(extracted.answer)
    return Read(answer, tool_flag(gen, context.task) or red_flag(gen, extracted, flags))


def cast_ballots(
    candidates: list[Generation],
    context: AggregationContext,
    *,
    weight: WeightFn | None = None,
    flags: RedFlags | None = None,
) -> tuple[list[Ballot], list[Exclusion]]:
    """Read each candidate's ballot; failed, unparseable or red-flagged ones are excluded."""
    ballots: list[Ballot] = []
    excluded: list[Exclusion] = []
    for gen in candidates:
        read = read_ballot(gen, context, flags)
        if read.flag is not None or read.answer is None:
            excluded.append(
                Exclusion(expert=gen.expert, sample=gen.sample, reason=read.flag or "no answer")
            )
            continue
        w = 1.0 if weight is None else weight(gen, context)
        ballots.append(Ballot(candidate_key(gen), gen.expert, read.answer, w, gen))
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
    """Count weighted votes; a tie goes to the answer whose best supporter the router prefers.

    The result's ``text`` is the winner's best supporter's (by router score) and, when the
    winner is an action, ``tool_calls`` are that supporter's calls.
    """
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
        tool_calls=list(representative.generation.tool_calls),
    )
