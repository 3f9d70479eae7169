"""Training a cascade on recorded replies: what it learns per task, and its calibration."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _cascade_data import EXPERTS, build_rows, write_rows

from expertgraph.core.types import AnswerFormat
from expertgraph.orchestrator.cli import main
from expertgraph.policies.data.dataset import from_examples, load_dataset
from expertgraph.policies.learning.cascade_fit import train_cascade
from expertgraph.policies.learning.cascade_plan import CascadePlan, StagePlan
from expertgraph.policies.learning.replay_eval import replay_rows
from expertgraph.policies.routing.cascade import LearnedCascade


def _replay(plan: CascadePlan, rows: list) -> tuple[float, float]:
    cascade = LearnedCascade(plan)
    report = replay_rows(from_examples(rows), cascade, cascade.paired_aggregator)
    return report.score, report.cost


def _last_json(capsys: pytest.CaptureFixture[str]) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_learned_cascade_beats_the_hand_rule_per_task(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = build_rows(240)
    data = write_rows(tmp_path / "rows.jsonl", rows)
    train = [r for r in rows if r.meta["split"] == "train"]
    test = [r for r in rows if r.meta["split"] == "test"]
    hand = CascadePlan(
        experts=list(EXPERTS),
        default=StagePlan(
            stages=[["cheap_a", "cheap_b"], ["strong"]],
            need=[2],
            reliability={e: 0.95 if e == "strong" else 0.7 for e in EXPERTS},
            answer_format=AnswerFormat(kind="number", json_field="answer"),
        ),
    )
    _, hand_cost_train = _replay(hand, train)
    hand_score, hand_cost = _replay(hand, test)
    out = tmp_path / "learned"
    # Rows marked meta.split: train learns on the train rows, eval judges on the test rows.
    args = ["train", "--data", str(data), "--policy", "cascade"]
    assert main([*args, "--target-cost", str(hand_cost_train), "--out", str(out), "--json"]) == 0
    summary = _last_json(capsys)
    assert summary["n"] == len(train)
    assert set(summary["tasks"]) == {"sums", "products"}
    plan = CascadePlan.load(out)
    # Each task its own plan: the cheap expert reliable on sums is trusted there only.
    assert plan.tasks["sums"].describe() != plan.tasks["products"].describe()
    assert main(["eval", "--data", str(data), "--policy", str(out), "--json"]) == 0
    got = _last_json(capsys)
    assert (got["split"], got["n"]) == ("test", len(test))
    assert got["score"] >= hand_score + 0.03
    assert got["cost"] <= hand_cost * 1.05


@pytest.mark.parametrize("share", [0.3, 0.6])
def test_calibration_lands_within_five_percent_of_the_target_cost(share: float) -> None:
    rows = [r for r in build_rows(240) if r.meta["split"] == "train"]
    ds = from_examples(rows)
    strong_cost = ds.costs()[:, ds.experts.index("strong")].mean()
    target = share * strong_cost
    plan, summary = train_cascade(ds, target_cost=target, folds=5, cost_margin=0)
    assert summary["estimate"]["met"]
    # The plan's own cost on the rows it was calibrated on, replayed by the live code.
    _, cost = _replay(plan, rows)
    assert abs(cost - target) <= 0.05 * target
    assert summary["estimate"]["cost"] <= target + 1e-9
    # By default it aims a standard error lower, so that new rows stay within the target.
    _, safe = train_cascade(ds, target_cost=target, folds=5)
    assert summary["estimate"]["cost"] > safe["estimate"]["cost"]
    assert safe["aimed_cost"] < target


def test_target_score_gives_the_cheapest_plan_that_reaches_it() -> None:
    rows = [r for r in build_rows(240) if r.meta["split"] == "train"]
    ds = from_examples(rows)
    low, low_summary = train_cascade(ds, target_score=0.85, folds=5)
    high, high_summary = train_cascade(ds, target_score=0.93, folds=5)
    assert low_summary["estimate"]["score"] >= 0.85
    assert high_summary["estimate"]["score"] >= 0.93
    assert low_summary["estimate"]["cost"] < high_summary["estimate"]["cost"]


def test_train_cascade_needs_replies_and_costs(tmp_path: Path) -> None:
    rows = build_rows(20)
    bare = write_rows(tmp_path / "bare.jsonl", rows, costs=False)
    assert (
        main(["train", "--data", str(bare), "--policy", "cascade", "--out", str(tmp_path / "x")])
        != 0
    )
    ds = load_dataset(bare)
    with pytest.raises(Exception, match="no costs; give --prices"):
        train_cascade(ds)


def test_training_simulator_follows_the_live_aggregator() -> None:
    """The fast simulator that scores candidate plans decides each row as the replay does."""
    import numpy as np

    from expertgraph.policies.learning import cascade_fit as cf

    rows = build_rows(60)
    ds = from_examples(rows)
    S, C = ds.scores(), ds.costs()
    acc = cf._accuracy(S)
    weights = np.array([cf.vote_weight(a) for a in acc])
    rank = cf._rank(acc, ds.experts)
    fmt = AnswerFormat(kind="number", json_field="answer")
    codes = cf._codes(ds.examples, ds.experts, fmt)
    specs = cf.candidate_specs(acc, C.mean(axis=0))
    for spec in specs[:: max(1, len(specs) // 40)]:  # 40 plans of every shape
        sim = cf.simulate(spec, codes, S, C, weights, rank)
        plan = cf._plan(spec, ds.experts, acc, fmt, {})
        cascade = LearnedCascade(CascadePlan(experts=ds.experts, default=plan))
        report = replay_rows(ds, cascade, cascade.paired_aggregator)
        assert [r.score for r in report.rows] == sim.score.tolist(), plan.describe()
        assert [r.cost for r in report.rows] == pytest.approx(sim.cost.tolist())
        assert [len(r.called) for r in report.rows] == sim.calls.tolist()
