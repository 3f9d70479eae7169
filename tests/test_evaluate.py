"""The evaluation harness and the cost module: metrics on matrices small enough to check by hand."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from expertgraph.core.errors import PolicyError
from expertgraph.core.types import RoutingExample
from expertgraph.policies.data.dataset import save_jsonl
from expertgraph.policies.learning.cost import (
    calibrate_lambda,
    calibrate_shares,
    choose,
    mean_cost,
    shares,
    utility,
)
from expertgraph.policies.learning.evaluate import (
    aiq,
    apgr,
    baselines,
    cpt,
    evaluate,
    outcome,
    pareto_front,
    per_task_best,
    plot_pareto,
    routellm_curve,
    two_expert_metrics,
)
from expertgraph.policies.learning.training import sweep

EXPERTS = ["cheap", "mid", "dear"]
S = np.array([[1.0, 1.0, 1.0], [0.0, 1.0, 1.0], [0.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
C = np.tile([0.1, 0.5, 1.0], (4, 1))


def test_choose_breaks_ties_to_the_cheaper_and_skips_nan_and_masked() -> None:
    q = np.array([[0.5, 0.5, 0.5], [np.nan, 0.2, 0.1], [0.9, 0.8, 0.7]])
    picked = choose(q, [0.3, 0.1, 0.2], lam=0.0, k=3)
    assert picked[0].tolist() == [1, 2, 0]  # equal quality: cheapest first
    assert picked[1][0] == 1 and picked[1][-1] == 0  # NaN last
    assert choose(q, [0.3, 0.1, 0.2], 0.0, 1, allowed=np.array([False, True, True]))[2, 0] == 1
    assert utility(q[2:], [1.0, 0.0, 0.0], 0.5).tolist() == [[0.4, 0.8, 0.7]]


def test_calibrate_lambda_meets_the_target_and_is_the_smallest() -> None:
    rng = np.random.default_rng(0)
    q = rng.random((400, 3))
    costs = np.array([0.1, 0.5, 1.0])
    assert mean_cost(q, costs, 0.0) > 0.45
    for target in (0.2, 0.3, 0.45):
        cal = calibrate_lambda(q, costs, target)
        assert cal.met and cal.mean_cost <= target + 1e-12
        assert mean_cost(q, costs, cal.lam * 0.99) > target  # a little less lambda overspends
    free = calibrate_lambda(q, costs, 5.0)
    assert free.lam == 0.0 and free.met
    impossible = calibrate_lambda(q, costs, 0.05)
    assert not impossible.met and impossible.mean_cost == pytest.approx(0.1)


def test_calibrate_shares_hits_target_shares_for_n_and_two_experts() -> None:
    rng = np.random.default_rng(1)
    q = rng.random((2000, 4)) + np.array([0.3, 0.0, 0.1, 0.0])
    target = [0.1, 0.4, 0.2, 0.3]
    offsets = calibrate_shares(q, target)
    got = shares(choose(q, np.zeros(4), 0.0, offsets=offsets), 4)
    assert np.abs(got - target).max() <= 0.01
    two = rng.random((1000, 2))
    off = calibrate_shares(two, {0: 0.3, 1: 0.7})
    assert shares(choose(two, np.zeros(2), 0.0, offsets=off), 2)[0] == pytest.approx(0.3, abs=0.002)
    with pytest.raises(PolicyError, match="summing to 1"):
        calibrate_shares(q, [0.5, 0.5, 0.5, 0.5])


def test_outcome_and_baselines_by_hand() -> None:
    out = outcome(np.array([0, 1, 2, 0]), S, C, EXPERTS)
    assert out.score == pytest.approx(0.75) and out.cost == pytest.approx(
        (0.1 + 0.5 + 1.0 + 0.1) / 4
    )
    assert out.mix == {"cheap": 0.5, "mid": 0.25, "dear": 0.25} and out.calls_per_query == 1
    two = outcome(np.array([[0, 1]] * 4), S, C, EXPERTS)  # top-2: best of the two, both paid
    assert (
        two.score == pytest.approx(0.5)
        and two.cost == pytest.approx(0.6)
        and two.calls_per_query == 2
    )
    assert outcome(np.array([[0, 1]] * 4), S, C, EXPERTS, combine="first").score == pytest.approx(
        0.25
    )
    b = baselines(S, C, EXPERTS)
    assert b["best_single"] == {"expert": "dear", "score": 0.75, "cost": 1.0}
    # oracle: cheapest expert reaching each row's best score; row 4 (all zero) goes to cheap
    assert b["oracle"]["score"] == pytest.approx(0.75)
    assert b["oracle"]["cost"] == pytest.approx((0.1 + 0.5 + 1.0 + 0.1) / 4)
    assert b["random"]["score"] == pytest.approx(np.mean([0.25, 0.5, 0.75]))
    tasks_train = ["a", "a", "b", "b"]
    pt = per_task_best(S, tasks_train, S, tasks_train, C, EXPERTS)
    assert pt.score == pytest.approx(np.mean([1.0, 1.0, 1.0, 0.0]))


def test_sweep_pareto_and_aiq() -> None:
    q = S + np.array([0.0, 0.01, 0.02])  # a router that knows the scores, slightly favouring dear
    points = sweep(q, S, C)
    assert points[0]["lam"] == 0 and points[0]["cost"] == pytest.approx(1.0)
    assert points[-1]["cost"] == pytest.approx(0.1)
    front = pareto_front(points)
    assert all(
        a["cost"] < b["cost"] and a["score"] < b["score"]
        for a, b in zip(front, front[1:], strict=False)
    )
    # AIQ of two points (0, 0) and (1, 1) over [0, 1] is the triangle's area 0.5; flat above
    assert aiq(
        [{"cost": 0.0, "score": 0.0}, {"cost": 1.0, "score": 1.0}], 0.0, 1.0
    ) == pytest.approx(0.5, abs=1e-3)
    assert aiq(
        [{"cost": 0.0, "score": 0.0}, {"cost": 0.5, "score": 1.0}], 0.0, 1.0
    ) == pytest.approx(0.75, abs=1e-3)
    # a dominated point under the hull does not count
    pts = [{"cost": 0.0, "score": 0.0}, {"cost": 0.5, "score": 0.1}, {"cost": 1.0, "score": 1.0}]
    assert aiq(pts, 0.0, 1.0) == pytest.approx(0.5, abs=1e-3)


def test_sweep_takes_per_expert_costs_and_reaches_the_cheapest_expert() -> None:
    # The middle expert is far better than the free one and costs almost nothing more: only a
    # lambda of about 1000 over the cost spread makes the free one win.
    q = np.tile([0.0, 0.9, 1.0], (3, 1))
    costs = np.array([0.0, 0.001, 1.0])
    points = sweep(q, S[:3], costs)
    assert points == sweep(q, S[:3], np.tile(costs, (3, 1)))
    assert points[0]["cost"] == 1.0 and points[-1]["cost"] == 0.0


def test_routellm_thresholds_match_pandas_qcut() -> None:
    pd = pytest.importorskip("pandas")
    rng = np.random.default_rng(3)
    w = rng.random(500)
    _, edges = pd.qcut(w, 10, retbins=True)
    curve = routellm_curve(w, np.ones(500), np.zeros(500))
    assert [p["threshold"] for p in curve] == pytest.approx(list(edges))
    assert curve[0]["strong_pct"] == 100.0 and curve[-1]["strong_pct"] == 0.0


def test_apgr_random_near_half_perfect_high_and_cpt() -> None:
    rng = np.random.default_rng(4)
    n = 4000
    strong = (rng.random(n) < 0.85).astype(float)
    weak = np.where(
        strong > 0, (rng.random(n) < 0.7).astype(float), (rng.random(n) < 0.2).astype(float)
    )
    scores = np.stack([strong, weak], axis=1)
    random_apgr = np.mean(
        [two_expert_metrics(rng.random(n), scores, 0, 1)["apgr"] for _ in range(10)]
    )
    assert random_apgr == pytest.approx(0.5, abs=0.03)
    perfect = two_expert_metrics(strong - weak + 0.01 * rng.random(n), scores, 0, 1)
    assert perfect["apgr"] > 0.8 and perfect["cpt50"] < 25 and perfect["cpt50"] < perfect["cpt80"]
    curve = [
        {"strong_pct": 0.0, "score": 0.6},
        {"strong_pct": 50.0, "score": 0.8},
        {"strong_pct": 100.0, "score": 0.8},
    ]
    assert apgr(curve, 0.6, 0.8) == pytest.approx(0.75)
    assert cpt(curve, 0.6, 0.8, 0.5) == pytest.approx(25.0)


def test_plot_pareto_writes_a_png(tmp_path: Path) -> None:
    pts = sweep(S + 0.01, S, C)
    path = plot_pareto(
        tmp_path / "p.png",
        {"r": pts},
        {e: {"cost": 0.1, "score": 0.2} for e in EXPERTS},
        title="t",
        marks={"ours": (0.3, 0.5)},
    )
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _two_expert_rows(n: int, seed: int) -> list[RoutingExample]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        hard = i % 2 == 0
        prompt = (
            f"Prove that the integral of x^{i % 7 + 2} over a closed contour vanishes."
            if hard
            else f"What colour is item number {i}?"
        )
        out.append(
            RoutingExample(
                id=str(i),
                prompt=prompt,
                task="hard" if hard else "easy",
                scores={"strong": 1.0, "weak": 0.0 if hard else float(rng.random() < 0.9)},
                costs={"strong": 1.0, "weak": 0.0},
            )
        )
    return out


@pytest.mark.models
def test_evaluate_cv_and_baselines_on_built_data(tmp_path: Path) -> None:
    import torch

    torch.set_num_threads(1)
    data = save_jsonl(_two_expert_rows(40, 0), tmp_path / "two.jsonl")
    home = tmp_path / "home"
    res = evaluate(
        data, "knn", cv=4, params={"k": 5}, home=home, target_cost=0.5, plot=tmp_path / "c.png"
    )
    for key in (
        "dataset",
        "split",
        "n",
        "policy",
        "score",
        "cost",
        "calls_per_query",
        "baselines",
        "apgr",
        "cpt50",
        "cpt80",
        "aiq",
    ):
        assert key in res
    assert res["n"] == 40 and res["cost"] <= 0.5 + 1e-9
    rows = _two_expert_rows(40, 0)
    truth = np.array([[r.scores["strong"], r.scores["weak"]] for r in rows])
    best = two_expert_metrics(truth[:, 0] - truth[:, 1], truth, 0, 1)[
        "apgr"
    ]  # ranking by the answers
    assert res["apgr"] >= 0.9 * best > 0.6  # hard prompts are easy to tell apart
    assert set(res["baselines"]) == {"best_single", "oracle", "random"}
    assert res["baselines"]["oracle"]["score"] == 1.0 and Path(res["plot"]).is_file()
    rnd = evaluate(data, "random", home=home)
    assert "apgr" in rnd and rnd["calls_per_query"] == 1.0
    fixed = evaluate(data, "fixed:weak", home=home)
    assert fixed["cost"] == 0.0 and fixed["mix"] == {"weak": 1.0}
    with pytest.raises(PolicyError, match="no separate training split"):
        evaluate(data, "mlp", home=home)
    with pytest.raises(PolicyError, match="unknown policy"):
        evaluate(data, "nonsense", home=home)


@pytest.mark.models
def test_cli_eval_json_is_the_last_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from expertgraph.orchestrator.cli import main

    data = save_jsonl(_two_expert_rows(20, 1), tmp_path / "rows.jsonl")
    assert (
        main(
            [
                "eval",
                "--data",
                str(data),
                "--policy",
                "cluster",
                "--cv",
                "2",
                "--param",
                "n_clusters=2",
                "--home",
                str(tmp_path / "h"),
                "--json",
            ]
        )
        == 0
    )
    last = capsys.readouterr().out.strip().splitlines()[-1]
    result = json.loads(last)
    assert result["policy"] == "cluster" and result["n"] == 20
    assert {"best_single", "oracle", "random"} <= set(result["baselines"])
    assert (
        main(["eval", "--data", str(data), "--policy", "knn", "--lam", "1", "--target-cost", "1"])
        == 2
    )
