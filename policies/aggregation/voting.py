"""Majority and weighted votes over extracted answers.

Both read every candidate's answer with :func:`extract_answer`; a candidate that failed,
has no readable answer or raises a red flag is excluded, with its reason, and does not
vote. The result's ``confidence`` is the winner's share of the (weighted) votes and
``margin`` its lead over the runner-up, as a share of the votes too.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from expertgraph.core import AggregationContext, Aggregator
from expertgraph.core.errors import ConfigError
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


class MajorityVote(Aggregator):
    """Plurality over normalised answers (number, choice letter, trimmed text).

    Failed or empty candidates are excluded, and each exclusion is recorded with its reason.
    Ties are broken by the router's score of the answer's best supporter.
    """

    name = "majority"

    def __init__(self, red_flags: RedFlags | None = None) -> None:
        self.red_flags = red_flags

    def combine(self, candidates: list[Generation], context: AggregationContext) -> StepResult:
        ballots, excluded = cast_ballots(candidates, context, flags=self.red_flags)
        return tally(ballots, excluded, context, self.name)


# ---- weights -------------------------------------------------------------------------------

MIN_WEIGHT = 1e-3
"""No voter weighs zero: a tiny weight still breaks ties among otherwise unsupported answers."""


def reliability_weight(p: float) -> float:
    """The log-odds weight of a voter that is right with probability ``p``.

    Under independent errors, weighting each vote by ``log(p / (1 - p))`` makes the weighted
    plurality the most likely answer (Nitzan & Paroush 1982). ``p`` is clipped to
    [0.5005, 0.999]: a voter at or below chance still gets the smallest weight, never a
    negative one (on open answers a wrong voter rarely agrees with another wrong voter).
    """
    p = min(max(p, 0.5005), 0.999)
    return max(MIN_WEIGHT, math.log(p / (1.0 - p)))


def load_reliability(path: str | Path) -> dict[str, float]:
    """Read ``{expert: accuracy}`` (0..1, or percent above 1) from a JSON file."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read reliability file {path}: {exc}", path=str(path)) from exc
    if not isinstance(data, dict) or not all(isinstance(v, (int, float)) for v in data.values()):
        raise ConfigError(f"{path}: expected a JSON object {{expert: accuracy}}", path=str(path))
    return {str(k): float(v) / 100.0 if v > 1 else float(v) for k, v in data.items()}


def make_weight(
    source: Literal["none", "router", "reliability"],
    reliability: Mapping[str, float] | None = None,
    default_reliability: float = 0.6,
) -> WeightFn | None:
    """A weight function: none (1 each), the router's score, or each expert's reliability."""
    if source == "none":
        return None
    if source == "router":
        return lambda gen, ctx: max(MIN_WEIGHT, float(ctx.scores.get(gen.expert, MIN_WEIGHT)))
    table = dict(reliability or {})
    return lambda gen, ctx: reliability_weight(table.get(gen.expert, default_reliability))


class WeightedVote(Aggregator):
    """Plurality where each vote counts its expert's weight.

    ``weights="reliability"``: log-odds of each expert's measured accuracy (``reliability``,
    a mapping expert -> accuracy in 0..1; experts not in it get ``default_reliability``).
    ``weights="router"``: the router's score of the expert for this step.
    """

    name = "weighted"

    def __init__(
        self,
        weights: Literal["router", "reliability"] = "reliability",
        reliability: Mapping[str, float] | None = None,
        *,
        default_reliability: float = 0.6,
        red_flags: RedFlags | None = None,
    ) -> None:
        self.weights = weights
        self.reliability = dict(reliability or {})
        self.red_flags = red_flags
        self._weight = make_weight(weights, self.reliability, default_reliability)

    def combine(self, candidates: list[Generation], context: AggregationContext) -> StepResult:
        ballots, excluded = cast_ballots(
            candidates, context, weight=self._weight, flags=self.red_flags
        )
        result = tally(ballots, excluded, context, self.name)
        result.meta["weights"] = {b.key: round(b.weight, 6) for b in ballots}
        result.meta["weight_source"] = self.weights
        return result
