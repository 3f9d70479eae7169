"""Cascade routing: cheapest first, self-consistency escalation, costs, threshold calibration."""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from expertgraph.agents import CallableExpert
from expertgraph.agents.tools import calculator
from expertgraph.core import (
    AnswerFormat,
    Budget,
    ExpertCard,
    ExpertHealth,
    ExpertView,
    PlanStep,
    RoutingExample,
    RoutingState,
    Task,
)
from expertgraph.core.errors import ConfigError, PolicyError
from expertgraph.orchestrator import Orchestrator
from expertgraph.policies.aggregation.cascade import CascadeAggregator
from expertgraph.policies.learning.calibration import calibrate_threshold
from expertgraph.policies.registry import BuildContext, build_aggregator, build_policy
from expertgraph.policies.routing.cascade import CascadePolicy, QualityPredictor, cascade_order
from expertgraph.traces import CallRecord, load_run

NUMBER = AnswerFormat(kind="number")
TOKENS_IN, TOKENS_OUT = 120, 8


def _card(price: float) -> ExpertCard:
    return ExpertCard(
        description="arithmetic", cost_per_1k_input=price, cost_per_1k_output=2 * price
    )


def _priced(text: str) -> dict[str, object]:
    # Fixed token counts so the card prices every call the same way.
    return {"text": text, "input_tokens": TOKENS_IN, "output_tokens": TOKENS_OUT}


def steady(prompt: str, **params: object) -> dict[str, object]:
    """Computes exactly at any temperature: its samples agree."""
    return _priced(calculator(prompt))


def make_shaky(seed: int):
    """Exact when greedy; at temperature > 0 each sample is off by a non-zero amount."""
    rng = random.Random(seed)

    def shaky(prompt: str, **params: object) -> dict[str, object]:
        value = int(calculator(prompt))
        if float(params.get("temperature", 0) or 0) > 0:
            value += rng.choice([-2, -1, 1, 2])
        return _priced(str(value))

    return shaky


def broken(prompt: str, **params: object) -> str:
    raise TimeoutError("overloaded")


def _cost(card: ExpertCard) -> float:
    return card.estimate_cost(TOKENS_IN, TOKENS_OUT)


def _orchestrator(tmp_path: Path, experts: list[CallableExpert], **budget: int) -> Orchestrator:
    ctx = BuildContext(experts={e.name: e for e in experts})
    return Orchestrator(
        experts,
        build_policy("cascade", {}, ctx),
        build_aggregator("cascade", {}, ctx),
        trace_dir=tmp_path,
        budget=Budget(**budget),
    )


def test_agreeing_cheap_expert_is_accepted_without_escalation(tmp_path: Path) -> None:
    experts = [
        CallableExpert("strong", steady, _card(1.0)),
        CallableExpert("cheap", steady, _card(0.1)),
    ]
    result = _orchestrator(tmp_path, experts).run(
        Task(prompt="What is 6 * 7?", answer_format=NUMBER)
    )

    step = result.steps[0]
    assert step.decision.experts == ["cheap"] and step.decision.mode == "cascade"
    assert [(g.expert, g.sample, g.params.get("temperature")) for g in step.generations] == [
        ("cheap", 0, 0),
        ("cheap", 1, 0.7),
        ("cheap", 2, 0.7),
    ]
    assert result.answer == "42"
    assert step.result.stop_reason == "cascade: accepted cheap (agreement 1.00 >= 1)"
    assert step.result.meta["cascade"]["escalations"] == []
    assert result.usage.cost == pytest.approx(3 * _cost(experts[1].card))


def test_disagreeing_cheap_expert_escalates_and_costs_add_up(tmp_path: Path) -> None:
    experts = [
        CallableExpert("cheap", make_shaky(0), _card(0.1)),
        CallableExpert("strong", steady, _card(1.0)),
    ]
    result = _orchestrator(tmp_path, experts).run(
        Task(prompt="What is 6 * 7?", answer_format=NUMBER)
    )

    step = result.steps[0]
    assert [(g.expert, g.sample) for g in step.generations] == [
        ("cheap", 0),
        ("cheap", 1),
        ("cheap", 2),
        ("strong", 0),
    ]
    assert result.answer == "42"
    assert step.result.winner == ["strong#0"]
    cascade = step.result.meta["cascade"]
    assert cascade["accepted"] == "strong"
    [escalation] = cascade["escalations"]
    assert escalation.startswith("cheap agreement 0.") and escalation.endswith("< 1")
    assert step.result.meta["requests"][0].startswith(
        "self-consistency check: 2 more sample(s) of cheap"
    )
    assert step.result.meta["requests"][1] == f"escalate to strong: {escalation}"
    assert step.result.stop_reason == "cascade: accepted strong, the last tier"
    assert {e.expert for e in step.result.excluded} == {"cheap"}
    assert all(e.reason.startswith("passed over: cheap agreement") for e in step.result.excluded)
    # The run's cost is three cheap calls and one strong call, as the cards price them,
    # and the trace's call records add up to the same.
    expected = 3 * _cost(experts[0].card) + _cost(experts[1].card)
    assert result.usage.cost == pytest.approx(expected)
    calls = [r for r in load_run(result.trace_path).records if isinstance(r, CallRecord)]
    assert sum(c.generation.cost for c in calls) == pytest.approx(expected)
    assert result.usage.calls == 4


def test_three_tiers_stop_at_the_first_confident_one(tmp_path: Path) -> None:
    experts = [
        CallableExpert("strong", steady, _card(2.0)),
        CallableExpert("mid", steady, _card(0.5)),
        CallableExpert("cheap", make_shaky(1), _card(0.1)),
    ]
    result = _orchestrator(tmp_path, experts).run(
        Task(prompt="What is 9 + 10?", answer_format=NUMBER)
    )
    step = result.steps[0]
    assert [g.expert for g in step.generations] == ["cheap"] * 3 + ["mid"] * 3
    assert result.answer == "19"
    assert step.result.meta["cascade"]["accepted"] == "mid"
    assert result.usage.cost == pytest.approx(
        3 * _cost(experts[2].card) + 3 * _cost(experts[1].card)
    )


def test_failing_tier_escalates_without_sampling(tmp_path: Path) -> None:
    experts = [
        CallableExpert("cheap", broken, _card(0.1)),
        CallableExpert("strong", steady, _card(1.0)),
    ]
    result = _orchestrator(tmp_path, experts).run(
        Task(prompt="What is 2 + 2?", answer_format=NUMBER)
    )
    step = result.steps[0]
    assert [g.expert for g in step.generations] == ["cheap", "strong"]
    assert step.result.meta["cascade"]["escalations"] == ["cheap gave no usable answer"]
    assert result.answer == "4"
    assert step.result.excluded[0].reason.startswith("failed: timeout")


def test_call_budget_limits_the_cascade(tmp_path: Path) -> None:
    experts = [
        CallableExpert("cheap", make_shaky(2), _card(0.1)),
        CallableExpert("strong", steady, _card(1.0)),
    ]
    result = _orchestrator(tmp_path, experts, max_calls_per_step=2).run(
        Task(prompt="What is 5 * 5?", answer_format=NUMBER)
    )
    step = result.steps[0]
    assert [g.expert for g in step.generations] == ["cheap", "cheap"]
    assert "unchecked" in step.result.stop_reason
    assert step.result.answer is not None


def test_plan_steps_each_start_cheap(tmp_path: Path) -> None:
    experts = [
        CallableExpert("cheap", make_shaky(3), _card(0.1)),
        CallableExpert("strong", steady, _card(1.0)),
    ]
    plan = [PlanStep(instruction="What is 3 * 4?"), PlanStep(instruction="What is {step1} + 1?")]
    result = _orchestrator(tmp_path, experts).run(Task(plan=plan, answer_format=NUMBER))
    assert [s.decision.experts for s in result.steps] == [["cheap"], ["cheap"]]
    assert [s.result.answer for s in result.steps] == ["12", "13"]
    assert all(s.generations[-1].expert == "strong" for s in result.steps)


def test_order_and_registry_options() -> None:
    cards = {"b": _card(1.0), "a": _card(0.2), "c": _card(0.2)}
    assert cascade_order(cards) == ["a", "c", "b"]
    assert cascade_order(cards, ["b"]) == ["b", "a", "c"]
    experts = {n: CallableExpert(n, steady, card) for n, card in cards.items()}
    ctx = BuildContext(experts=experts)
    aggregator = build_aggregator("cascade", {"threshold": 0.6, "samples": 4}, ctx)
    assert isinstance(aggregator, CascadeAggregator)
    assert aggregator.order == ["a", "c", "b"] and aggregator.samples == 4
    with pytest.raises(ConfigError, match="aggregator.order names unknown experts"):
        build_aggregator("cascade", {"order": ["a", "zz"]}, ctx)
    with pytest.raises(ConfigError, match="aggregator.threshold"):
        build_aggregator("cascade", {"threshold": 2}, ctx)
    with pytest.raises(ConfigError, match="policy.threshold"):
        build_policy("cascade", {"threshold": 0.5}, ctx)
    with pytest.raises(ConfigError, match="has no predict_quality"):
        build_policy("cascade", {"predictor": {"name": "random"}, "threshold": 0.5}, ctx)


def test_policy_routes_around_an_expert_that_failed_every_call_and_says_so() -> None:
    views = [
        ExpertView("cheap", _card(0.1), health=ExpertHealth(calls=2, errors=2)),
        ExpertView("strong", _card(1.0)),
        ExpertView("mid", _card(0.5)),
    ]
    state = RoutingState(task=Task(prompt="What is 2 + 2?"), step_index=0, experts=views)
    decision = CascadePolicy().decide(state)
    assert decision.experts == ["mid"] and decision.meta["cascade_order"] == ["mid", "strong"]
    assert decision.rationale == (
        "cascade: cheapest first (mid < strong); routed around failing experts: cheap"
    )


# ---- calibration on built data ----------------------------------------------------------------

EXPERTS = ["cheap", "strong"]


def _built_examples(n: int, seed: int) -> list[RoutingExample]:
    """Arithmetic and geography prompts; the cheap expert is good at geography only.

    A correct answer's samples agree; a wrong one's samples scatter (as self-consistency
    assumes). An extra expert "oracle-9000" that no config has is named in every row.
    """
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        task = "math" if rng.random() < 0.5 else "geo"
        p_cheap = 0.35 if task == "math" else 0.9
        cheap_ok = rng.random() < p_cheap
        strong_ok = rng.random() < 0.95
        gold = str(rng.randint(10, 99))

        def samples(ok: bool) -> list[str]:
            if ok:
                return [gold] * 3 if rng.random() < 0.9 else [gold, gold, str(int(gold) + 1)]
            return [str(int(gold) + rng.randint(1, 5)) for _ in range(3)]

        rows.append(
            RoutingExample(
                id=f"{task}-{i}",
                prompt=f"{task} question {i}",
                scores={"cheap": float(cheap_ok), "strong": float(strong_ok), "oracle-9000": 1.0},
                costs={"cheap": 0.1, "strong": 1.0 + rng.random() * 0.2, "oracle-9000": 50.0},
                task=task,
                meta={"samples": {"cheap": samples(cheap_ok), "strong": samples(strong_ok)}},
            )
        )
    return rows


class LabelMeanPredictor:
    """A stand-in quality predictor: each expert's mean score per task label on training rows."""

    def __init__(self, examples: Sequence[RoutingExample], experts: Sequence[str]) -> None:
        self.experts = list(experts)
        self.means: dict[str, np.ndarray] = {}
        for label in {ex.task for ex in examples}:
            rows = [ex for ex in examples if ex.task == label]
            self.means[str(label)] = np.array(
                [np.mean([ex.scores[e] for ex in rows]) for e in self.experts]
            )

    def predict_quality(self, prompts: list[str]) -> np.ndarray:
        return np.stack([self.means[p.split()[0]] for p in prompts])


def _brute_force(
    examples: list[RoutingExample],
    conf: dict[str, list[float]],
    threshold: float,
    calls: float,
    pay_tried: bool,
) -> tuple[float, float]:
    quality = cost = 0.0
    for i, ex in enumerate(examples):
        if conf["cheap"][i] >= threshold:
            quality += ex.scores["cheap"]
            cost += ex.costs["cheap"] * (calls if pay_tried else 1)
        else:
            quality += ex.scores["strong"]
            cost += ex.costs["strong"] + (ex.costs["cheap"] * calls if pay_tried else 0)
    return quality / len(examples), cost / len(examples)


def _agreement(answers: list[str]) -> float:
    return max(answers.count(a) for a in answers) / len(answers)


def test_calibration_from_samples_meets_a_cost_target_optimally() -> None:
    examples = _built_examples(300, seed=7)
    conf = {"cheap": [_agreement(ex.meta["samples"]["cheap"]) for ex in examples]}
    grid = [t / 100 for t in range(0, 102)]
    points = [_brute_force(examples, conf, t, 3.0, True) for t in grid]
    cheapest, dearest = min(c for _, c in points), max(c for _, c in points)
    target = (cheapest + dearest) / 2

    cal = calibrate_threshold(
        examples, EXPERTS, target_cost=target, samples=2, answer_format=NUMBER
    )
    assert cal.signal == "samples" and cal.met and cal.used == 300 and cal.skipped == []
    assert cal.ignored_experts == ["oracle-9000"]
    quality, cost = _brute_force(examples, conf, cal.threshold, 3.0, True)
    assert (cal.quality, cal.cost) == (pytest.approx(quality), pytest.approx(cost))
    assert cost <= target
    best_within = max(q for q, c in points if c <= target)
    assert quality == pytest.approx(best_within)
    assert 0 < cal.escalation_rate < 1


def test_calibration_from_predicted_quality_meets_a_quality_target_and_drives_the_policy() -> None:
    train, held = _built_examples(400, seed=1), _built_examples(200, seed=2)
    predictor = LabelMeanPredictor(train, ["strong", "cheap"])  # columns in its own order
    assert isinstance(predictor, QualityPredictor)
    mean_strong = float(np.mean([ex.scores["strong"] for ex in held]))
    mean_cheap = float(np.mean([ex.scores["cheap"] for ex in held]))
    target = mean_cheap + 0.8 * (mean_strong - mean_cheap)

    cal = calibrate_threshold(held, EXPERTS, target_quality=target, predictor=predictor)
    assert cal.signal == "predicted" and cal.met
    assert cal.quality >= target
    predicted = predictor.predict_quality([ex.prompt for ex in held])
    conf = {"cheap": predicted[:, 1].tolist()}
    grid = sorted(set(conf["cheap"])) + [1.1]
    points = [_brute_force(held, conf, t, 1.0, False) for t in grid]
    cheapest_meeting = min(c for q, c in points if q >= target)
    assert cal.cost == pytest.approx(cheapest_meeting)

    # The policy with the calibrated threshold makes the same choices the calibration simulated.
    policy = CascadePolicy(predictor=predictor, threshold=cal.threshold)
    views = [
        ExpertView(n, ExpertCard(cost_per_1k_input=0.1 if n == "cheap" else 1.0)) for n in EXPERTS
    ]
    costs = []
    for ex in held:
        decision = policy.decide(
            RoutingState(task=Task(prompt=ex.prompt), step_index=0, experts=views)
        )
        assert decision.scores == pytest.approx(
            dict(zip(["strong", "cheap"], predictor.predict_quality([ex.prompt])[0]))
        )
        costs.append(ex.costs[decision.experts[0]])
    assert float(np.mean(costs)) == pytest.approx(cal.cost)


def test_calibration_edge_cases() -> None:
    examples = _built_examples(40, seed=3)
    # A row that lacks the strong expert is skipped and reported.
    examples.append(
        RoutingExample(id="partial", prompt="geo q", scores={"cheap": 1.0}, costs={"cheap": 0.1})
    )
    cal = calibrate_threshold(examples, EXPERTS, target_cost=0.0, signal="samples")
    assert cal.skipped == ["partial"] and not cal.met
    assert cal.escalation_rate == 0.0  # the closest to an unreachable cost target: never escalate
    with pytest.raises(ValueError, match="exactly one"):
        calibrate_threshold(examples, EXPERTS)
    with pytest.raises(PolicyError, match="no example has a score and a cost"):
        calibrate_threshold(examples, ["cheap", "gpt-9"], target_cost=1.0)
    with pytest.raises(PolicyError, match="no confidence signal"):
        plain = [ex.model_copy(update={"meta": {}}) for ex in examples[:-1]]
        calibrate_threshold(plain, EXPERTS, target_cost=1.0)
