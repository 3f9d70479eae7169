"""Stickiness over a scoring policy, the seeded random router and the evaluation-only oracle."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from expertgraph.agents import CallableExpert
from expertgraph.core import (
    Decision,
    ExpertCard,
    ExpertHealth,
    ExpertView,
    PlanStep,
    Policy,
    RoutingExample,
    RoutingState,
    Task,
)
from expertgraph.core.errors import ConfigError, PolicyError
from expertgraph.orchestrator import Orchestrator
from expertgraph.policies.registry import BuildContext, build_policy
from expertgraph.policies.routing.baselines import OraclePolicy, RandomPolicy
from expertgraph.policies.routing.sticky import StickyPolicy
from expertgraph.traces import RouteRecord, load_run


def _named(name: str) -> CallableExpert:
    # Each expert signs its answers, so a run shows who answered which step.
    return CallableExpert(
        name, lambda prompt: f"{name}: {prompt.splitlines()[-1]}", ExpertCard(description=name)
    )


def _ctx(*names: str) -> BuildContext:
    return BuildContext(experts={n: _named(n) for n in names})


def _plan(n: int) -> list[PlanStep]:
    return [PlanStep(instruction=f"step {i}") for i in range(n)]


def _orch(tmp_path: Path, ctx: BuildContext, policy: Policy) -> Orchestrator:
    return Orchestrator(list(ctx.experts.values()), policy, trace_dir=tmp_path)


# ---- stickiness ---------------------------------------------------------------------------------

STEP_SCORES = [
    {"a": 0.9, "b": 0.5},  # a: first step, nothing to stick to
    {"a": 0.6, "b": 0.7},  # b leads by 0.1 < 0.25: keep a
    {"a": 0.3, "b": 0.8},  # b leads by 0.5 >= 0.25: switch to b
    {"a": 0.6, "b": 0.5},  # a leads by 0.1: keep b
]


def test_sticky_margin_keeps_the_previous_expert_unless_beaten(tmp_path: Path) -> None:
    ctx = _ctx("a", "b")
    policy = build_policy("oracle", {"allow": True, "sticky_margin": 0.25}, ctx)
    assert isinstance(policy, StickyPolicy) and policy.name == "oracle+sticky"
    result = _orch(tmp_path, ctx, policy).run(Task(plan=_plan(4), metadata={"scores": STEP_SCORES}))

    assert [s.decision.experts for s in result.steps] == [["a"], ["a"], ["b"], ["b"]]
    assert [s.result.text.split(":")[0] for s in result.steps] == ["a", "a", "b", "b"]
    routes = [r.decision for r in load_run(result.trace_path).records if isinstance(r, RouteRecord)]
    assert "sticky" not in routes[0].meta
    assert routes[1].meta["sticky"]["notes"] == [
        "kept a (score 0.600) over b (score 0.700): margin 0.100 < 0.25"
    ]
    assert routes[1].meta["sticky"]["inner_choice"] == ["b"] and routes[1].meta["sticky"][
        "kept"
    ] == ["a"]
    assert routes[1].rationale.endswith(
        "sticky: kept a (score 0.600) over b (score 0.700): margin 0.100 < 0.25"
    )
    assert routes[2].meta["sticky"]["notes"] == [
        "switched from a (score 0.300) to b (score 0.800): margin 0.500 >= 0.25"
    ]
    assert routes[3].meta["sticky"]["notes"] == [
        "kept b (score 0.500) over a (score 0.600): margin 0.100 < 0.25"
    ]
    assert all(r.policy == "oracle+sticky" for r in routes)

    # Without stickiness the same scores switch at every lead.
    plain = build_policy("oracle", {"allow": True}, ctx)
    result = _orch(tmp_path, ctx, plain).run(Task(plan=_plan(4), metadata={"scores": STEP_SCORES}))
    assert [s.decision.experts for s in result.steps] == [["a"], ["b"], ["b"], ["a"]]


def test_sticky_does_not_keep_an_expert_that_failed_every_call(tmp_path: Path) -> None:
    def down(prompt: str) -> str:
        raise ConnectionError("down")

    ctx = _ctx("b")
    experts = [CallableExpert("a", down), *ctx.experts.values()]
    scores = [{"a": 0.9, "b": 0.5}, {"a": 0.5, "b": 0.6}]
    policy = StickyPolicy(OraclePolicy(allow=True), 0.5)
    # The oracle itself routes around failing experts, so pin step 0 to a via plan restriction.
    plan = [PlanStep(instruction="step 0", experts=["a", "b"]), PlanStep(instruction="step 1")]
    result = Orchestrator(experts, policy, trace_dir=tmp_path).run(
        Task(plan=plan, metadata={"scores": scores})
    )
    first, second = result.steps
    assert first.decision.experts == ["a"] and [g.expert for g in first.generations] == ["a", "b"]
    assert second.decision.experts == ["b"]
    assert "sticky" not in second.decision.meta  # a failed every call: no incumbent


def test_sticky_with_top_k_swaps_only_the_weak_challenger() -> None:
    class Table(Policy):
        name = "table"

        def decide(self, state: RoutingState) -> Decision:
            scores = {"a": 0.9, "b": 0.50, "c": 0.55, "d": 0.1}
            ranked = sorted(scores, key=scores.__getitem__, reverse=True)[:2]
            return Decision(
                instruction="x", experts=ranked, scores=scores, rationale="table", policy="table"
            )

    from expertgraph.core.types import Step

    views = [ExpertView(n, ExpertCard()) for n in "abcd"]
    previous = Step(index=0, instruction="x", decision=Decision(experts=["b", "d"]))
    state = RoutingState(
        task=Task(prompt="x"), step_index=1, experts=views, steps=[previous], top_k=2
    )
    decision = StickyPolicy(Table(), 0.1).decide(state)
    # The weakest challenger meets the strongest benched incumbent: c (0.55) beats b (0.50) by
    # only 0.05, so b stays; a (0.9) displaces d (0.1) by far.
    assert decision.experts == ["a", "b"]
    assert decision.meta["sticky"]["notes"] == [
        "kept b (score 0.500) over c (score 0.550): margin 0.050 < 0.1",
        "switched from d (score 0.100) to a (score 0.900): margin 0.800 >= 0.1",
    ]
    assert StickyPolicy(Table(), 0.04).decide(state).experts == ["a", "c"]
    with pytest.raises(ValueError):
        StickyPolicy(Table(), -0.1)
    with pytest.raises(ConfigError, match="sticky_margin"):
        build_policy("random", {"sticky_margin": "high"}, _ctx("a"))


# ---- random --------------------------------------------------------------------------------------


def test_random_is_seeded_per_task_and_records_its_draws(tmp_path: Path) -> None:
    ctx = _ctx("a", "b", "c")
    views = [ExpertView(n, ExpertCard()) for n in ctx.experts]
    tasks = [Task(id=f"t{i}", prompt=f"question {i}") for i in range(300)]

    def choices(seed: int) -> list[str]:
        policy = RandomPolicy(seed)
        return [
            policy.decide(RoutingState(task=t, step_index=0, experts=views)).experts[0]
            for t in tasks
        ]

    first = choices(1)
    assert choices(1) == first  # reproducible
    assert choices(2) != first  # and the seed matters
    counts = Counter(first)
    assert set(counts) == {"a", "b", "c"} and all(70 <= n <= 130 for n in counts.values())

    policy = build_policy("random", {"seed": 5}, ctx)
    result = _orch(tmp_path, ctx, policy).run(Task(id="fixed-id", plan=_plan(3)))
    again = _orch(tmp_path, ctx, policy).run(Task(id="fixed-id", plan=_plan(3)))
    assert [s.decision.experts for s in result.steps] == [s.decision.experts for s in again.steps]
    for step in result.steps:
        scores = step.decision.scores
        assert set(scores) == {"a", "b", "c"} and all(0 <= v < 1 for v in scores.values())
        assert step.decision.experts == [max(scores, key=scores.__getitem__)]
        assert step.decision.rationale.startswith("random (seed 5): ")


def test_random_and_oracle_route_around_failing_experts_and_say_so() -> None:
    scores = {"a": 1.0, "b": 0.2, "c": 0.6}
    task = Task(id="t", prompt="x", metadata={"scores": scores})

    def views(failed: str) -> list[ExpertView]:
        health = {n: ExpertHealth(calls=1, errors=1) for n in failed}
        return [ExpertView(n, ExpertCard(), health=health.get(n, ExpertHealth())) for n in "abc"]

    state = RoutingState(task=task, step_index=0, experts=views("a"))
    drawn = RandomPolicy(3).decide(state)
    assert set(drawn.scores) == {"b", "c"} and drawn.experts[0] in {"b", "c"}
    assert drawn.rationale.startswith("random (seed 3): top-1 by a uniform draw (")
    assert drawn.rationale.endswith("; routed around failing experts: a")
    best = OraclePolicy(allow=True).decide(state)
    assert best.experts == ["c"] and set(best.scores) == {"b", "c"}
    assert best.rationale == (
        "oracle from task.metadata['scores']: top-1 by score (c=0.600, b=0.200); "
        "routed around failing experts: a"
    )
    # When every expert failed every call, all of them are tried again: none is routed around.
    retry = OraclePolicy(allow=True).decide(
        RoutingState(task=task, step_index=0, experts=views("abc"))
    )
    assert retry.experts == ["a"] and "routed around" not in retry.rationale


# ---- oracle --------------------------------------------------------------------------------------


def test_oracle_is_refused_unless_allowed() -> None:
    with pytest.raises(PolicyError, match="evaluation only"):
        OraclePolicy()
    with pytest.raises(ConfigError, match="policy.allow"):
        build_policy("oracle", {}, _ctx("a"))


def test_oracle_from_an_examples_file_ignores_unknown_experts(tmp_path: Path) -> None:
    examples = [
        RoutingExample(
            id="q1",
            prompt="Capital of Peru?",
            scores={"a": 0.0, "b": 1.0, "gpt-9": 1.0},
            costs={"a": 0.1, "b": 0.3, "gpt-9": 9.0},
        ),
        RoutingExample(
            id="q2",
            prompt="What is 2 + 2?",
            scores={"a": 1.0, "b": 1.0, "gpt-9": 1.0},
            costs={"a": 0.1, "b": 0.3, "gpt-9": 9.0},
        ),
    ]
    path = tmp_path / "held_out.jsonl"
    path.write_text("".join(ex.model_dump_json() + "\n" for ex in examples), encoding="utf-8")
    ctx = _ctx("a", "b")
    policy = build_policy("oracle", {"allow": True, "examples": str(path)}, ctx)
    orch = _orch(tmp_path, ctx, policy)

    by_id = orch.run(Task(id="q1", prompt="anything"))
    assert by_id.steps[0].decision.experts == ["b"]
    assert by_id.steps[0].decision.meta == {"evaluation_only": True, "ignored_experts": ["gpt-9"]}
    tie = orch.run(Task(prompt="What is 2 + 2?"))  # found by prompt; the tie goes to the cheaper
    assert tie.steps[0].decision.experts == ["a"]

    # Cost-aware: with lam large enough the cheap wrong answer wins over the dear right one.
    lam = (examples[0].scores["b"] - examples[0].scores["a"]) / (
        examples[0].costs["b"] - examples[0].costs["a"]
    )
    frugal = OraclePolicy.from_examples(examples, allow=True, lam=lam * 1.5)
    views = [ExpertView(n, ExpertCard()) for n in ("a", "b")]
    decision = frugal.decide(
        RoutingState(task=Task(id="q1", prompt="x"), step_index=0, experts=views)
    )
    assert decision.experts == ["a"]
    assert decision.scores["a"] > decision.scores["b"]

    unknown = orch.run(Task(prompt="never seen"))
    assert unknown.stop_reason.startswith(
        "policy 'oracle' failed: PolicyError: oracle: no scores for task"
    )
    with pytest.raises(ConfigError, match="policy.examples"):
        build_policy("oracle", {"allow": True, "examples": str(tmp_path / "missing.jsonl")}, ctx)
    path.write_text(json.dumps({"id": "x"}) + "\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="policy.examples"):
        build_policy("oracle", {"allow": True, "examples": str(path)}, ctx)


def test_oracle_scores_that_name_no_configured_expert_fail_the_run_cleanly(tmp_path: Path) -> None:
    ctx = _ctx("a", "b")
    policy = build_policy("oracle", {"allow": True}, ctx)
    result = _orch(tmp_path, ctx, policy).run(Task(prompt="x", metadata={"scores": {"gpt-9": 1.0}}))
    assert result.steps == []
    assert "name none of the usable experts ['a', 'b']" in result.stop_reason
