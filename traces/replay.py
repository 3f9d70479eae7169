"""Counterfactual replay: how would another routing policy or aggregator have done on recorded runs?

For each recorded step, the policy is asked to route with the history as recorded (earlier
steps, expert health so far). When every expert it chooses has a first-round candidate
(sample 0) recorded in that step, the aggregator (the recorded one, or another) combines
those candidates with no further calls allowed; the answer is valued like attribution values
it (label score when labelled, else agreement with the recorded answer; see
:mod:`expertgraph.traces.labels`) and its cost is the cost of the candidates used. Other
steps cannot be evaluated, and their share is reported. No model is called.

The recorded system on the same evaluated steps is the baseline: its value (1 under
agreement, the label's score under a label) and its recorded cost.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from expertgraph.core.protocols import Aggregator, Policy
from expertgraph.core.state import ExpertHealth, ExpertView, RoutingState
from expertgraph.core.types import Generation, Usage
from expertgraph.traces.attribution import AggregatorFactory, normalise_expected, step_context
from expertgraph.traces.labels import LabelStore, step_reference
from expertgraph.traces.schema import CallRecord
from expertgraph.traces.store import RunTrace


@dataclass
class ReplayReport:
    """Estimated quality and cost of a policy/aggregator on recorded steps."""

    policy: str
    aggregator: str
    steps: int = 0
    evaluated: int = 0
    score: float = 0.0
    """Sum of values over evaluated steps (``mean_score`` divides it)."""
    cost: float = 0.0
    baseline_score: float = 0.0
    baseline_cost: float = 0.0
    unknown: int = 0
    """Evaluated steps whose answer had no known value (counted 0)."""
    not_evaluable: Counter[str] = field(default_factory=Counter)
    sources: Counter[str] = field(default_factory=Counter)
    chosen: Counter[str] = field(default_factory=Counter)

    @property
    def unevaluable_share(self) -> float:
        return (self.steps - self.evaluated) / self.steps if self.steps else 0.0

    @property
    def mean_score(self) -> float | None:
        return self.score / self.evaluated if self.evaluated else None

    @property
    def mean_cost(self) -> float | None:
        return self.cost / self.evaluated if self.evaluated else None

    @property
    def baseline_mean_score(self) -> float | None:
        return self.baseline_score / self.evaluated if self.evaluated else None

    @property
    def baseline_mean_cost(self) -> float | None:
        return self.baseline_cost / self.evaluated if self.evaluated else None

    def to_json(self) -> dict[str, Any]:
        return {
            "policy": self.policy,
            "aggregator": self.aggregator,
            "steps": self.steps,
            "evaluated": self.evaluated,
            "unevaluable_share": self.unevaluable_share,
            "not_evaluable": dict(self.not_evaluable),
            "mean_score": self.mean_score,
            "mean_cost": self.mean_cost,
            "total_cost": self.cost,
            "baseline_mean_score": self.baseline_mean_score,
            "baseline_mean_cost": self.baseline_mean_cost,
            "value_sources": dict(self.sources),
            "unknown_values": self.unknown,
            "chosen": dict(self.chosen),
        }


def routing_states(trace: RunTrace) -> dict[int, RoutingState]:
    """The state each recorded step was routed from: earlier steps, health and spend so far.

    Health counts the calls of earlier steps, whatever their role (candidate, router, fuser,
    judge); a step's own router call comes after its state, as it did live.
    """
    start = trace.start
    task = start.task
    steps = trace.steps()
    top_k = int(start.config.get("top_k", 1) or 1)
    out: dict[int, RoutingState] = {}
    health: dict[str, ExpertHealth] = {e.name: ExpertHealth() for e in start.experts}
    calls_by_step: dict[int, list[CallRecord]] = {}
    for record in trace.iter_records():
        # Every role counts, as in the live run: a router that failed is a failing expert.
        if isinstance(record, CallRecord):
            calls_by_step.setdefault(record.step, []).append(record)
    spent = Usage()
    for i, step in enumerate(steps):
        views = [
            ExpertView(name=e.name, card=e.card, kind=e.kind, health=replace(health[e.name]))
            for e in start.experts
        ]
        plan = task.plan
        out[step.index] = RoutingState(
            task=task,
            step_index=step.index,
            experts=views,
            steps=steps[:i],
            plan_step=plan[step.index] if plan is not None and step.index < len(plan) else None,
            top_k=top_k,
            spent=spent,
        )
        for record in calls_by_step.get(step.index, []):
            h = health.setdefault(record.generation.expert, ExpertHealth())
            h.calls += 1
            if record.generation.error is not None:
                h.errors += 1
                h.last_error = record.generation.error.message
            if record.role == "router":  # routing is the run's spend, not in the step's
                spent = spent + record.generation.usage
        spent = spent + step.usage
    return out


def replay_run(
    trace: RunTrace,
    report: ReplayReport,
    *,
    aggregator_factory: AggregatorFactory,
    policy: Policy | None = None,
    aggregator: Aggregator | None = None,
    labels: dict[Any, Any] | None = None,
) -> None:
    """Add one run's steps to ``report``.

    ``policy`` None keeps the recorded routing (to evaluate another ``aggregator`` alone);
    ``aggregator`` None replays each step's recorded aggregator.
    """
    if not trace.capture.content:
        count = sum(1 for _ in trace.iter_steps())
        report.steps += count
        report.not_evaluable["content not captured"] += count
        return
    labels = labels or {}
    final = trace.final_step() if None in labels else None
    task = trace.start.task
    # A policy reads the earlier steps, so replaying one holds the run's steps; replaying an
    # aggregator alone streams the trace a step at a time.
    routes = routing_states(trace) if policy is not None else {}
    for step in trace.iter_steps():
        report.steps += 1
        if step.result is None:
            report.not_evaluable["step has no aggregate record"] += 1
            continue
        if policy is not None:
            try:
                decision = policy.decide(routes[step.index])
            except Exception as exc:  # noqa: BLE001 - a policy failing on a step is reported
                report.not_evaluable[f"policy failed: {type(exc).__name__}"] += 1
                continue
            if decision.action != "call":
                report.not_evaluable["policy finished where the run called experts"] += 1
                continue
            chosen = list(dict.fromkeys(decision.experts))
        else:
            chosen = list(dict.fromkeys(step.decision.experts))
        first_round: dict[str, Generation] = {}
        for g in step.generations:
            if g.sample == 0:
                first_round.setdefault(g.expert, g)
        missing = [n for n in chosen if n not in first_round]
        if not chosen or missing:
            report.not_evaluable["chosen expert's candidate not recorded"] += 1
            continue
        candidates = [first_round[n] for n in chosen]
        try:
            live = aggregator or aggregator_factory(step.result.aggregator)
        except Exception:  # noqa: BLE001 - e.g. an aggregator that needs live experts
            report.not_evaluable[
                f"aggregator {step.result.aggregator!r} cannot be rebuilt for replay"
            ] += 1
            continue
        context = step_context(task, step)
        try:
            answer = live.combine(candidates, context).comparable
        except Exception as exc:  # noqa: BLE001
            report.not_evaluable[f"aggregator failed: {type(exc).__name__}"] += 1
            continue
        ref = step_reference(step, labels, final)
        expected = None
        if ref.expected is not None:
            expected = normalise_expected(ref.expected, live, context)
        value = ref.value(answer, expected)
        if value is None:
            report.unknown += 1
            value = 0.0
        baseline = ref.value(ref.answer, expected)
        report.evaluated += 1
        report.score += value
        report.cost += sum(g.cost for g in candidates)
        report.baseline_score += baseline or 0.0
        report.baseline_cost += step.usage.cost
        report.sources[ref.source] += 1
        report.chosen.update(chosen)


def replay(
    directory: str | Path,
    *,
    aggregator_factory: AggregatorFactory,
    policy: Policy | None = None,
    aggregator: Aggregator | None = None,
    runs: Sequence[str] | None = None,
) -> ReplayReport:
    """Replay a policy and/or aggregator on every finished run of a trace directory."""
    labels = LabelStore(directory)
    report = ReplayReport(
        policy=policy.name if policy is not None else "(recorded)",
        aggregator=aggregator.name if aggregator is not None else "(recorded)",
    )
    for run_id in runs if runs is not None else labels.traces.run_ids():
        trace = labels.traces.load(run_id)
        replay_run(
            trace,
            report,
            aggregator_factory=aggregator_factory,
            policy=policy,
            aggregator=aggregator,
            labels=labels.latest(trace.run_id),
        )
    return report
