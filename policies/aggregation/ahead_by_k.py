"""First-to-ahead-by-k voting (MAKER, arXiv 2511.09030).

Samples are drawn one after another -- from the same expert at temperature > 0, or from
the next expert in the router's order -- until one answer leads every other answer by
``k`` votes, or a cap on draws (or the step's call and cost budget) is reached. Red-flagged
samples (too long, unparseable, a refusal, an answer of the wrong shape, a call that breaks
the task's tools) are dropped before they vote. A sample that calls tools draws its action
(:mod:`.actions`), so text answers and actions race in the same count.

The counting is one pure function, :func:`count_votes`, over the draws so far. The
:class:`AheadByK` aggregator applies it to a step's candidates and, while no answer is k
ahead, asks the orchestrator for more samples (``StepResult.more``); the benchmarks replay
recorded replies through the same aggregator (:mod:`expertgraph.policies.aggregation.replay`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from expertgraph.core import AggregationContext, Aggregator
from expertgraph.core.types import Exclusion, Generation, SampleRequest, StepResult, candidate_key
from expertgraph.policies.aggregation._ballots import (
    Ballot,
    WeightFn,
    count,
    lead,
    read_ballot,
    tally,
)
from expertgraph.policies.aggregation.redflags import RedFlags
from expertgraph.policies.aggregation.voting import make_weight

Source = Literal["next-expert", "same-expert"]


@dataclass(frozen=True)
class Draw:
    """One sample, in draw order: its answer, or the flag that kept it from voting."""

    key: str
    expert: str
    sample: int
    answer: str | None
    weight: float = 1.0
    flag: str | None = None

    @property
    def votes(self) -> bool:
        return self.answer is not None and self.flag is None


@dataclass(frozen=True)
class Count:
    """The state of an ahead-by-k vote after some draws."""

    votes: dict[str, float]
    leader: str | None
    lead: float
    """Leader's votes minus the runner-up's (the leader's votes when it is alone)."""
    decided: bool
    decided_at: int | None
    """How many draws it took to decide (None while undecided)."""

    def needed(self, k: float, unit: float = 1.0) -> int:
        """The fewest further draws (of weight ``unit``) that could decide the vote."""
        if self.decided:
            return 0
        return max(1, math.ceil((k - self.lead) / unit - 1e-9))


def count_votes(draws: Sequence[Draw], k: float) -> Count:
    """Count draws in order and stop at the first moment one answer leads all others by ``k``."""
    counted: list[Draw] = []
    for i, draw in enumerate(draws):
        if not draw.votes:
            continue
        counted.append(draw)
        votes, _ = count(counted)
        leader, margin = lead(votes)
        if margin >= k - 1e-9:
            return Count(votes, leader, margin, True, i + 1)
    votes, _ = count(counted)
    leader, margin = lead(votes)
    return Count(votes, leader, margin, False, None)


class AheadByK(Aggregator):
    """Keep drawing until one answer is ``k`` votes ahead of every other (MAKER).

    ``source="same-expert"`` (MAKER's way, the default) resamples the router's top expert
    at ``temperature``. ``source="next-expert"`` draws the experts in the router's order,
    one new expert per draw; when every expert has answered and ``resample`` is on, it goes
    round them again at ``temperature``. An expert whose calls all failed is passed over.
    At most ``max_draws`` samples are drawn in all, and never more than the step's budget
    allows (``AggregationContext.calls_left``). Each round asks for just the
    draws that could decide the vote (``k`` minus the current lead), so parallel draws
    never cost more than sequential ones. With ``weights`` other than ``"none"`` the votes
    and ``k`` are in weight units.

    The result's ``meta["draws"]`` records every draw in order (answer, flag, lead after it),
    and ``stop_reason`` why drawing stopped. Undecided at the cap, the plurality of the
    draws so far wins.
    """

    name = "ahead-by-k"

    def __init__(
        self,
        k: float = 2,
        *,
        max_draws: int = 10,
        source: Source = "same-expert",
        resample: bool = True,
        temperature: float = 0.7,
        weights: Literal["none", "router", "reliability"] = "none",
        reliability: Mapping[str, float] | None = None,
        red_flags: RedFlags | None = None,
    ) -> None:
        if k <= 0:
            raise ValueError("k must be positive")
        if max_draws < 1:
            raise ValueError("max_draws must be at least 1")
        self.k = k
        self.max_draws = max_draws
        self.source = source
        self.resample = resample
        self.temperature = temperature
        self.weights = weights
        self.red_flags = red_flags if red_flags is not None else RedFlags()
        self._weight: WeightFn | None = make_weight(weights, reliability)

    # ---- counting ----------------------------------------------------------------------------

    def draws(self, candidates: Sequence[Generation], context: AggregationContext) -> list[Draw]:
        """The step's candidates as draws, in the order they were drawn."""
        out: list[Draw] = []
        for gen in candidates:
            read = read_ballot(gen, context, self.red_flags)
            weight = 1.0 if self._weight is None else self._weight(gen, context)
            out.append(
                Draw(candidate_key(gen), gen.expert, gen.sample, read.answer, weight, read.flag)
            )
        return out

    # ---- aggregation -------------------------------------------------------------------------

    def combine(self, candidates: list[Generation], context: AggregationContext) -> StepResult:
        draws = self.draws(candidates, context)
        state = count_votes(draws, self.k)
        if state.decided:
            assert state.decided_at is not None
            # Later draws (a parallel batch that overshot) are recorded but do not count.
            return self._result(
                candidates, draws, state, context, f"ahead by {self.k:g}", state.decided_at
            )
        stop = None
        if len(draws) >= self.max_draws:
            stop = f"draw cap reached ({self.max_draws})"
        elif context.calls_left <= 0:
            stop = "no calls left in the step's budget"
        if stop is None:
            unit = self._unit(context)
            want = min(state.needed(self.k, unit), self.max_draws - len(draws), context.calls_left)
            experts, params = self._next(candidates, context, want)
            if experts:
                result = self._result(candidates, draws, state, context, "drawing", len(draws))
                result.more = SampleRequest(
                    experts=experts,
                    params=params,
                    reason=(
                        f"ahead-by-{self.k:g}: leader {state.leader!r} leads by {state.lead:g} "
                        f"after {len(draws)} draw(s); drawing {len(experts)} more"
                    ),
                )
                return result
            stop = "no expert left to draw from"
        return self._result(
            candidates, draws, state, context, f"{stop}; plurality of the draws", len(draws)
        )

    def _unit(self, context: AggregationContext) -> float:
        if self._weight is None:
            return 1.0
        # The heaviest voter that could be drawn next bounds how fast the lead can grow.
        names = context.order or []
        probe = [Generation(expert=n) for n in names]
        return max((self._weight(g, context) for g in probe), default=1.0) or 1.0

    def _next(
        self, candidates: Sequence[Generation], context: AggregationContext, want: int
    ) -> tuple[list[str], dict[str, Any]]:
        """Which experts to draw next: fresh ones in the router's order, else resamples."""
        drawn = [g.expert for g in candidates]
        order = list(dict.fromkeys([*context.order, *drawn]))
        # An expert whose every call so far failed is not drawn again (it would fail again).
        dead = {n for n in drawn if all(g.error is not None for g in candidates if g.expert == n)}
        live = [n for n in order if n not in dead]
        hot = {"temperature": self.temperature}
        if self.source == "same-expert":
            top = next((n for n in live if n in drawn), live[0] if live else None)
            return ([top] * want if top else []), hot
        fresh = [n for n in live if n not in drawn]
        if fresh:
            # A first call of an expert keeps the step's own parameters (greedy by default).
            return fresh[:want], {}
        if not self.resample or not live:
            return [], {}
        counts = {n: drawn.count(n) for n in live}
        picks: list[str] = []
        for _ in range(want):
            name = min(live, key=lambda n: (counts[n], live.index(n)))
            picks.append(name)
            counts[name] += 1
        return picks, hot

    def _result(
        self,
        candidates: Sequence[Generation],
        draws: Sequence[Draw],
        state: Count,
        context: AggregationContext,
        stop_reason: str,
        used: int,
    ) -> StepResult:
        counted = draws[:used]
        ballots = [
            Ballot(d.key, d.expert, d.answer, d.weight, gen)  # type: ignore[arg-type]
            for d, gen in zip(counted, candidates, strict=False)
            if d.votes
        ]
        excluded = [
            Exclusion(expert=d.expert, sample=d.sample, reason=d.flag or "no answer")
            for d in draws
            if not d.votes
        ]
        result = tally(ballots, excluded, context, self.name)
        if ballots and stop_reason.startswith("ahead"):
            result.answer = state.leader
            result.winner = result.supporters.get(state.leader or "", [])
        result.stop_reason = (
            stop_reason if ballots or stop_reason == "drawing" else f"{stop_reason}: no usable draw"
        )
        log: list[dict[str, Any]] = []
        for i, d in enumerate(draws):
            entry: dict[str, Any] = {
                "key": d.key,
                "answer": d.answer,
                "counted": d.votes and i < used,
            }
            if d.flag:
                entry["flag"] = d.flag
            if self._weight is not None:
                entry["weight"] = round(d.weight, 6)
            entry["lead"] = lead(count(c for c in counted[: i + 1] if c.votes)[0])[1]
            log.append(entry)
        result.meta.update(
            {
                "k": self.k,
                "draws": log,
                "decided": state.decided,
                "lead": state.lead,
                "max_draws": self.max_draws,
                "source": self.source,
            }
        )
        # extra_calls: the orchestrator counts the samples it drew beyond the router's pick.
        return result
