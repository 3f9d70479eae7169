"""Majority and weighted votes over extracted answers and actions.

Both read every candidate's answer with :func:`extract_answer` -- or, for a candidate that
calls tools, its action ballot (:mod:`.actions`), in the same count; a candidate that
failed, has no readable answer or raises a red flag (:mod:`.redflags`, tool rules
included) is excluded, with its reason, and does not vote. When an action wins, the
result's ``tool_calls`` are its best-scored supporter's calls. The result's
``confidence`` is the winner's share of the (weighted) votes and ``margin`` its lead over
the runner-up, as a share of the votes too.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from expertgraph.core import AggregationContext, Aggregator
from expertgraph.core.errors import ConfigError
from expertgraph.core.types import Generation, StepResult
from expertgraph.policies.aggregation._ballots import WeightFn, cast_ballots, tally
from expertgraph.policies.aggregation.redflags import RedFlags


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
