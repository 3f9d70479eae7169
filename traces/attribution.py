"""Who made the answer right: Shapley values and leave-one-out per expert, per step and run.

The game of a step (CapaBench, arXiv 2502.00510): the players are the experts that produced
a recorded candidate in the step; the value ``v(S)`` of a coalition is the value of the
answer that the step's aggregator returns when it is replayed on the candidates of ``S``
only (all samples of each expert in ``S``). No model is called: aggregators only combine
recorded text. Answers are valued by :mod:`expertgraph.traces.labels` references: the
label's score when the step (or, for the final step, the run) is labelled, else agreement
with the step's recorded answer; an answer whose value is unknown counts 0.

Shapley values are exact (all ``2^n`` coalitions) for up to :data:`EXACT_MAX_PLAYERS`
experts, and estimated from random permutations beyond, with the count reported. Both obey
efficiency: per step the values sum to ``v(all) - v(none)``; each sampled permutation's
marginal contributions telescope to that difference, so the estimate keeps it too. A run's
value is the sum of its steps' games, and Shapley values are additive, so an expert's run
value is the sum of its step values.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from expertgraph.core.actions import action_ballot, parse_action
from expertgraph.core.errors import TraceError
from expertgraph.core.protocols import Aggregator
from expertgraph.core.state import AggregationContext, step_answer_format
from expertgraph.core.types import Generation, Step, Task
from expertgraph.traces.labels import Label, LabelStore, Reference, step_reference
from expertgraph.traces.store import RunTrace

EXACT_MAX_PLAYERS = 10
DEFAULT_PERMUTATIONS = 2000


AggregatorFactory = Callable[[str], Aggregator]
"""Aggregator name (as recorded in ``StepResult.aggregator``) -> a live aggregator."""


def step_context(task: Task, step: Step) -> AggregationContext:
    """The aggregation context of one recorded step, rebuilt from the trace.

    ``calls_left`` is 0: a replayed aggregator gets no more samples, so it decides with what
    was recorded.
    """
    scores = dict(step.decision.scores)
    rounds = len(step.result.meta.get("requests", [])) if step.result else 0
    return AggregationContext(
        task=task,
        step=step.index,
        instruction=step.instruction,
        answer_format=step_answer_format(task, step.index),
        scores=scores,
        order=sorted(scores, key=lambda n: scores[n], reverse=True),
        round=rounds,
    )


def step_contexts(trace: RunTrace) -> dict[int, AggregationContext]:
    """The aggregation context of each recorded step (see :func:`step_context`)."""
    task = trace.start.task
    return {step.index: step_context(task, step) for step in trace.iter_steps()}


class StepGame:
    """The coalition game of one step: ``v(S)`` by replaying the aggregator on ``S``'s
    candidates."""

    def __init__(
        self,
        candidates: Sequence[Generation],
        aggregator: Aggregator,
        context: AggregationContext,
        reference: Reference,
        expected_norm: str | None = None,
    ) -> None:
        self.candidates = list(candidates)
        self.players = sorted({g.expert for g in self.candidates})
        self.aggregator = aggregator
        self.context = context
        self.reference = reference
        self.expected_norm = expected_norm
        self.unknown = 0
        """Coalitions whose answer had no known value (counted 0)."""
        self._cache: dict[frozenset[str], float] = {}
        self.answers: dict[frozenset[str], str | None] = {}

    def value(self, coalition: frozenset[str]) -> float:
        cached = self._cache.get(coalition)
        if cached is not None:
            return cached
        subset = [g for g in self.candidates if g.expert in coalition]
        try:
            result = self.aggregator.combine(subset, self.context)
            answer = result.comparable
        except Exception:  # noqa: BLE001 - an aggregator that fails on a subset yields no answer
            answer = None
        value = self.reference.value(answer, self.expected_norm)
        if value is None:
            self.unknown += 1
            value = 0.0
        self._cache[coalition] = value
        self.answers[coalition] = answer
        return value

    @property
    def evaluations(self) -> int:
        return len(self._cache)


@dataclass
class ShapleyResult:
    """Per-expert values of one game."""

    shapley: dict[str, float]
    leave_one_out: dict[str, float]
    v_all: float
    v_none: float
    method: str
    """``exact`` or ``permutation``."""
    samples: int | None = None
    """Permutations drawn (``permutation`` only)."""


def shapley_values(
    players: Sequence[str],
    value: Callable[[frozenset[str]], float],
    *,
    exact_max: int = EXACT_MAX_PLAYERS,
    permutations: int = DEFAULT_PERMUTATIONS,
    seed: int = 0,
) -> ShapleyResult:
    """Shapley values and leave-one-out of a game given by its value function."""
    players = list(players)
    n = len(players)
    everyone = frozenset(players)
    v_all, v_none = value(everyone), value(frozenset())
    loo = {p: v_all - value(everyone - {p}) for p in players}
    if n <= exact_max:
        phi = dict.fromkeys(players, 0.0)
        weights = [
            math.factorial(s) * math.factorial(n - s - 1) / math.factorial(n) for s in range(n)
        ]
        for player in players:
            others = [p for p in players if p != player]
            for size in range(len(others) + 1):
                for combo in itertools.combinations(others, size):
                    s = frozenset(combo)
                    phi[player] += weights[size] * (value(s | {player}) - value(s))
        return ShapleyResult(phi, loo, v_all, v_none, "exact")
    rng = random.Random(seed)
    totals = dict.fromkeys(players, 0.0)
    order = list(players)
    for _ in range(permutations):
        rng.shuffle(order)
        coalition: frozenset[str] = frozenset()
        previous = v_none
        for player in order:
            coalition = coalition | {player}
            current = value(coalition)
            totals[player] += current - previous
            previous = current
    phi = {p: totals[p] / permutations for p in players}
    return ShapleyResult(phi, loo, v_all, v_none, "permutation", permutations)


@dataclass
class StepAttribution:
    step: int
    aggregator: str
    value_source: str
    """``label-expected``, ``label`` or ``agreement`` (see :mod:`expertgraph.traces.labels`)."""
    answer: str | None
    result: ShapleyResult
    evaluations: int
    unknown: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "v_all": self.result.v_all,
            "v_none": self.result.v_none,
            "shapley": self.result.shapley,
            "leave_one_out": self.result.leave_one_out,
            "value": self.value_source,
            "method": self.result.method,
            "samples": self.result.samples,
            "aggregator": self.aggregator,
            "answer": self.answer,
            "evaluations": self.evaluations,
            "unknown_values": self.unknown,
        }


@dataclass
class RunAttribution:
    run_id: str
    steps: list[StepAttribution]
    """The attributed steps (empty when :func:`attribute_run` was asked not to keep them)."""
    skipped: dict[int, str] = field(default_factory=dict)
    """Steps that could not be attributed, with the reason."""
    attributed: int = 0
    """How many steps were attributed (kept or not)."""
    _shapley: dict[str, float] = field(default_factory=dict, repr=False)
    _loo: dict[str, float] = field(default_factory=dict, repr=False)

    def add(self, step: StepAttribution, *, keep: bool = True) -> None:
        """Count one step's values into the run's (and keep the step, unless told not to)."""
        for total, values in (
            (self._shapley, step.result.shapley),
            (self._loo, step.result.leave_one_out),
        ):
            for name, value in values.items():
                total[name] = total.get(name, 0.0) + value
        self.attributed += 1
        if keep:
            self.steps.append(step)

    @property
    def run_shapley(self) -> dict[str, float]:
        """Sum of the step values per expert (the run game is the sum of the step games)."""
        return dict(self._shapley)

    @property
    def run_leave_one_out(self) -> dict[str, float]:
        return dict(self._loo)

    def to_json(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "steps": [s.to_json() for s in self.steps],
            "attributed": self.attributed,
            "run": {"shapley": self.run_shapley, "leave_one_out": self.run_leave_one_out},
            "skipped": {str(k): v for k, v in self.skipped.items()},
        }


def normalise_expected(
    expected: str, aggregator: Aggregator, context: AggregationContext
) -> str | None:
    """The expected answer as the aggregator normalises answers (it votes on it alone).

    An expected action (``tool:add({"a": 1, "b": 2})``) is voted as the calls it names, so it
    compares with the action ballots of the step.
    """
    calls = parse_action(expected)
    if calls is not None:
        return action_ballot(calls)
    try:
        probe = [Generation(expert="__expected__", text=expected)]
        return aggregator.combine(probe, context).comparable
    except Exception:  # noqa: BLE001
        return None


def attribute_run(
    trace: RunTrace,
    aggregator_factory: AggregatorFactory,
    *,
    labels: dict[int | None, Label] | None = None,
    exact_max: int = EXACT_MAX_PLAYERS,
    permutations: int = DEFAULT_PERMUTATIONS,
    seed: int = 0,
    keep_steps: bool = True,
) -> RunAttribution:
    """Shapley values and leave-one-out of every step of a run, and of the run.

    ``aggregator_factory`` builds the step's aggregator from the name the trace recorded. The
    trace is streamed a step at a time and the run's values are summed as steps are
    attributed, so with ``keep_steps=False`` (only the run's values, for a very long run)
    memory does not grow with the run.
    """
    if not trace.capture.content:
        raise TraceError(
            f"run {trace.run_id!r} was traced without content capture: the candidates' texts "
            "are not in the trace, so the aggregator cannot be replayed"
        )
    labels = labels or {}
    final = trace.final_step() if None in labels else None
    task = trace.start.task
    aggregators: dict[str, Aggregator | None] = {}
    failures: dict[str, str] = {}
    out = RunAttribution(run_id=trace.run_id, steps=[])
    for step in trace.iter_steps():
        if step.result is None:
            out.skipped[step.index] = "no aggregate record (the run stopped inside the step)"
            continue
        if not step.generations:
            out.skipped[step.index] = "no recorded candidates"
            continue
        name = step.result.aggregator
        if name not in aggregators:
            try:
                aggregators[name] = aggregator_factory(name)
            except Exception as exc:  # noqa: BLE001 - e.g. an aggregator that needs live experts
                aggregators[name] = None
                failures[name] = f"{type(exc).__name__}: {exc}"
        aggregator = aggregators[name]
        if aggregator is None:
            out.skipped[step.index] = (
                f"aggregator {name!r} cannot be rebuilt for replay ({failures[name]})"
            )
            continue
        context = step_context(task, step)
        ref = step_reference(step, labels, final)
        expected_norm = (
            normalise_expected(ref.expected, aggregator, context)
            if ref.expected is not None
            else None
        )
        game = StepGame(step.generations, aggregator, context, ref, expected_norm)
        result = shapley_values(
            game.players, game.value, exact_max=exact_max, permutations=permutations, seed=seed
        )
        out.add(
            StepAttribution(
                step=step.index,
                aggregator=name,
                value_source=ref.source,
                answer=ref.answer,
                result=result,
                evaluations=game.evaluations,
                unknown=game.unknown,
            ),
            keep=keep_steps,
        )
    return out


def attribute_stored_run(
    directory: Any,
    run: str,
    aggregator_factory: AggregatorFactory,
    **kwargs: Any,
) -> RunAttribution:
    """:func:`attribute_run` for a run of a trace directory, with its labels."""
    store = LabelStore(directory)
    trace = store.traces.load(run)
    return attribute_run(trace, aggregator_factory, labels=store.latest(trace.run_id), **kwargs)
