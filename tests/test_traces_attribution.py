"""Shapley attribution by replaying the recorded aggregator on subsets of recorded candidates."""

from __future__ import annotations

import io
import itertools
import json
import math
from contextlib import redirect_stdout
from pathlib import Path

import pytest

from expertgraph.agents.callable import CallableExpert
from expertgraph.core import AggregationContext
from expertgraph.core.errors import ConfigError, TraceError
from expertgraph.core.types import AnswerFormat, Generation, PlanStep, StepResult, Task
from expertgraph.orchestrator.cli import main
from expertgraph.orchestrator.orchestrator import Orchestrator
from expertgraph.policies.aggregation.voting import MajorityVote
from expertgraph.policies.routing.fixed import AllExperts
from expertgraph.policies.specs import aggregator_factory
from expertgraph.traces.attribution import StepGame, attribute_run, shapley_values
from expertgraph.traces.labels import LabelStore, Reference
from expertgraph.traces.store import TraceStore

# Step -> expert -> answer text; None makes the expert fail in that step.
ANSWERS = {
    "step-one": {"a": "The result is 12", "b": "12", "c": "13"},
    "step-two": {"a": "7", "b": "7", "c": "7"},
    "step-three": {"a": "40", "b": "41", "c": None},
}


def _expert(name: str) -> CallableExpert:
    def answer(text: str) -> str:
        instruction = text.strip().splitlines()[-1]
        reply = ANSWERS[instruction][name]
        if reply is None:
            raise RuntimeError(f"{name} cannot do {instruction}")
        return reply

    return CallableExpert(name, answer)


def _run(tmp_path: Path, **trace_options: object) -> tuple[TraceStore, str]:
    orch = Orchestrator(
        [_expert(n) for n in "abc"],
        AllExperts(),
        MajorityVote(),
        trace_dir=tmp_path,
        trace_options=trace_options,
    )
    task = Task(
        plan=[PlanStep(instruction=s) for s in ANSWERS], answer_format=AnswerFormat(kind="number")
    )
    result = orch.run(task)
    assert len(result.steps) == 3
    return orch.trace_store, result.run_id


def _cli_json(*argv: str) -> dict:
    out = io.StringIO()
    with redirect_stdout(out):
        assert main(list(argv)) == 0
    return json.loads(out.getvalue().strip().splitlines()[-1])


def test_three_expert_run_efficiency_symmetry_and_null_player(tmp_path: Path) -> None:
    store, run_id = _run(tmp_path)
    data = _cli_json("traces", "attribute", run_id, "--dir", str(tmp_path), "--json")
    assert data["run_id"] == run_id and [s["step"] for s in data["steps"]] == [0, 1, 2]
    for step in data["steps"]:
        assert set(step["shapley"]) == {"a", "b", "c"} == set(step["leave_one_out"])
        total = sum(step["shapley"].values())
        assert abs(total - (step["v_all"] - step["v_none"])) <= 1e-9  # efficiency
        assert step["value"] == "agreement" and step["method"] == "exact"
    one, two, three = data["steps"]
    assert one["v_all"] == 1.0 and one["v_none"] == 0.0
    # step-two: every expert says 7, so the game is symmetric: equal values.
    assert two["shapley"]["a"] == pytest.approx(two["shapley"]["b"], abs=1e-12)
    assert two["shapley"]["b"] == pytest.approx(two["shapley"]["c"], abs=1e-12)
    assert two["shapley"]["a"] == pytest.approx(1 / 3)
    # step-three: c failed, so its candidate never changes the answer: exactly 0.
    assert three["shapley"]["c"] == 0.0 and three["leave_one_out"]["c"] == 0.0
    # Run values are the sums over steps.
    for name in "abc":
        assert data["run"]["shapley"][name] == pytest.approx(
            sum(s["shapley"][name] for s in data["steps"])
        )


def test_values_come_from_labels_when_labelled(tmp_path: Path) -> None:
    store, run_id = _run(tmp_path)
    labels = LabelStore(tmp_path)
    # Step 0's right answer was 13 (only c had it); the run's final step (2) is labelled wrong.
    labels.add(run_id, 1.0, step=0, expected="13")
    labels.add(run_id, 0.0)
    trace = store.load(run_id)
    result = attribute_run(trace, aggregator_factory(trace), labels=labels.latest(run_id))
    by_step = {s.step: s for s in result.steps}
    zero = by_step[0]
    assert zero.value_source == "label-expected"
    assert zero.result.v_all == 0.0  # majority said 12
    assert zero.result.shapley["c"] > 0 > zero.result.shapley["a"]
    assert sum(zero.result.shapley.values()) == pytest.approx(
        zero.result.v_all - zero.result.v_none, abs=1e-9
    )
    assert by_step[1].value_source == "agreement"
    final = by_step[2]
    assert final.value_source == "label" and final.result.v_all == 0.0


def _gens(answers: dict[str, str | None]) -> list[Generation]:
    from expertgraph.core.types import ExpertFailure

    return [
        Generation(
            expert=n,
            text=t or "",
            error=None if t is not None else ExpertFailure(type="x", message="down"),
        )
        for n, t in answers.items()
    ]


def _context(scores: dict[str, float] | None = None) -> AggregationContext:
    return AggregationContext(
        task=Task(prompt="q"),
        instruction="q",
        answer_format=AnswerFormat(kind="number"),
        scores=scores or {},
    )


def test_hand_made_games_exact_and_sampled(tmp_path: Path) -> None:
    agg = MajorityVote()
    # Two experts agree on the winner; a third answers differently but the router ranks it
    # last, so ties never go its way: it is a null player.
    cands = _gens({"x": "5", "y": "5", "z": "6"})
    ctx = _context({"x": 0.9, "y": 0.8, "z": 0.1})
    game = StepGame(cands, agg, ctx, Reference("agreement", "5"))
    res = shapley_values(game.players, game.value)
    assert res.shapley["z"] == 0.0
    assert res.shapley["x"] == pytest.approx(0.5) and res.shapley["y"] == pytest.approx(0.5)
    assert res.leave_one_out == {"x": 0.0, "y": 0.0, "z": 0.0}
    assert game.evaluations == 8

    # Against an independent brute force over permutations for 5 players.
    cands = _gens({"p1": "1", "p2": "2", "p3": "1", "p4": "2", "p5": "2"})
    ctx = _context({"p1": 0.9, "p2": 0.5, "p3": 0.4, "p4": 0.3, "p5": 0.2})
    game = StepGame(cands, agg, ctx, Reference("agreement", "2"))
    exact = shapley_values(game.players, game.value)
    brute = dict.fromkeys(game.players, 0.0)
    perms = list(itertools.permutations(game.players))
    for order in perms:
        coalition: frozenset[str] = frozenset()
        for p in order:
            brute[p] += game.value(coalition | {p}) - game.value(coalition)
            coalition = coalition | {p}
    for p in game.players:
        assert exact.shapley[p] == pytest.approx(brute[p] / len(perms), abs=1e-12)

    # 12 experts: beyond the exact limit, permutation sampling, count reported, efficiency kept.
    answers = {f"e{i:02d}": str(i % 3) for i in range(12)}
    cands = _gens(answers)
    ctx = _context({n: 1.0 - i / 20 for i, n in enumerate(answers)})
    game = StepGame(cands, agg, ctx, Reference("agreement", "0"))
    sampled = shapley_values(game.players, game.value, permutations=300, seed=1)
    assert sampled.method == "permutation" and sampled.samples == 300
    assert sum(sampled.shapley.values()) == pytest.approx(sampled.v_all - sampled.v_none, abs=1e-9)
    exact12 = shapley_values(game.players, game.value, exact_max=12)
    assert exact12.method == "exact"
    assert max(abs(sampled.shapley[p] - exact12.shapley[p]) for p in game.players) < 0.08


def test_attribution_of_a_run_without_content_is_refused(tmp_path: Path) -> None:
    store, run_id = _run(tmp_path, capture_content=False)
    trace = store.load(run_id)
    with pytest.raises(TraceError, match="content capture"):
        attribute_run(trace, aggregator_factory(trace))


def test_aggregator_is_replayed_not_reimplemented(tmp_path: Path) -> None:
    """A custom aggregator recorded by name is the one replayed (the factory receives its name)."""
    store, run_id = _run(tmp_path)
    LabelStore(tmp_path).add(run_id, 1.0, step=2, expected="40")  # a deterministic reference
    trace = store.load(run_id)
    asked: list[str] = []

    class FirstCandidate:
        name = "first"

        def combine(self, candidates: list[Generation], context: object) -> StepResult:
            ok = sorted((g for g in candidates if g.ok), key=lambda g: g.expert)
            if not ok:
                return StepResult(aggregator=self.name)
            return StepResult(aggregator=self.name, answer=ok[0].text.split()[-1])

    def factory(name: str) -> FirstCandidate:
        asked.append(name)
        return FirstCandidate()

    result = attribute_run(trace, factory, labels=LabelStore(tmp_path).latest(run_id))
    assert asked == ["majority"]
    # With "first expert alphabetically wins", step-three's answer 40 belongs to a alone.
    third = {s.step: s for s in result.steps}[2]
    assert third.result.shapley["a"] == pytest.approx(1.0) and third.result.shapley["b"] == 0.0
    assert not math.isnan(sum(third.result.shapley.values()))


def test_an_aggregator_that_cannot_be_rebuilt_skips_its_steps(tmp_path: Path) -> None:
    """Aggregators that call models (fusion, judge) are not replayed: no model is called."""
    store, run_id = _run(tmp_path)
    trace = store.load(run_id)

    def factory(name: str) -> MajorityVote:
        raise ConfigError("aggregator.experts names unknown experts ['writer']")

    result = attribute_run(trace, factory)
    assert result.steps == [] and set(result.skipped) == {0, 1, 2}
    assert "cannot be rebuilt" in result.skipped[0] and "writer" in result.skipped[0]
