"""Majority vote over extracted answers."""

from __future__ import annotations

from dataclasses import dataclass

from expertgraph.core.types import Exclusion, Generation, StepResult, candidate_key
from expertgraph.policies.base import AggregationContext, Aggregator
from expertgraph.policies.extract import extract_answer


@dataclass
class Ballot:
    """A candidate that voted: its key, its extracted answer, its weight."""

    key: str
    expert: str
    answer: str
    weight: float
    generation: Generation


def cast_ballots(
    candidates: list[Generation], context: AggregationContext
) -> tuple[list[Ballot], list[Exclusion]]:
    """Extract each candidate's answer; failed, empty or unparseable ones are excluded."""
    ballots: list[Ballot] = []
    excluded: list[Exclusion] = []
    for gen in candidates:
        if gen.error is not None:
            excluded.append(
                Exclusion(expert=gen.expert, sample=gen.sample, reason=f"failed: {gen.error.type}: {gen.error.message}")
            )
            continue
        extracted = extract_answer(gen.text, context.answer_format)
        if extracted.answer is None:
            excluded.append(Exclusion(expert=gen.expert, sample=gen.sample, reason=extracted.reason))
            continue
        ballots.append(Ballot(candidate_key(gen), gen.expert, extracted.answer, 1.0, gen))
    return ballots, excluded


def tally(
    ballots: list[Ballot],
    excluded: list[Exclusion],
    context: AggregationContext,
    aggregator: str,
) -> StepResult:
    """Count weighted votes; ties go to the answer whose best supporter the router scored highest."""
    if not ballots:
        return StepResult(
            aggregator=aggregator,
            excluded=excluded,
            stop_reason="no candidate produced a usable answer",
        )
    votes: dict[str, float] = {}
    supporters: dict[str, list[str]] = {}
    for ballot in ballots:
        votes[ballot.answer] = votes.get(ballot.answer, 0.0) + ballot.weight
        supporters.setdefault(ballot.answer, []).append(ballot.key)

    def best_router_score(answer: str) -> float:
        return max(
            (context.scores.get(b.expert, 0.0) for b in ballots if b.answer == answer),
            default=0.0,
        )

    ranked = sorted(votes, key=lambda a: (votes[a], best_router_score(a)), reverse=True)
    winner = ranked[0]
    total = sum(votes.values())
    runner_up = votes[ranked[1]] if len(ranked) > 1 else 0.0
    tie = len(ranked) > 1 and votes[ranked[1]] == votes[winner]
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


class MajorityVote(Aggregator):
    """Plurality over normalised answers (number, choice letter, trimmed text).

    Failed or empty candidates are excluded, and each exclusion is recorded with its reason.
    Ties are broken by the router's score of the answer's best supporter.
    """

    name = "majority"

    def combine(self, candidates: list[Generation], context: AggregationContext) -> StepResult:
        ballots, excluded = cast_ballots(candidates, context)
        return tally(ballots, excluded, context, self.name)
