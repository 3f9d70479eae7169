"""The within-task probe (benchmarks/within_task.py) on small built data: its knapsack, AUC and
residual models find a planted within-task signal and none in noise."""

from __future__ import annotations

import importlib.util
import itertools
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def probe() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "within_task_probe", ROOT / "benchmarks" / "within_task.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_best_assignment_matches_brute_force(probe: ModuleType) -> None:
    rng = np.random.default_rng(3)
    price = np.array([0.1, 0.2, 0.9])
    means = {f"t{i}": rng.random(3) for i in range(4)}
    counts = {f"t{i}": int(rng.integers(5, 40)) for i in range(4)}
    total = sum(counts.values())
    for budget in (0.1, 0.3, 0.5, 0.9):
        got = probe.best_assignment(means, counts, price, budget)
        cost = sum(price[got[t]] * counts[t] for t in means) / total
        value = sum(means[t][got[t]] * counts[t] for t in means)
        assert cost <= budget + 1e-9
        best = max(
            sum(means[t][j] * counts[t] for t, j in zip(sorted(means), combo, strict=True))
            for combo in itertools.product(range(3), repeat=4)
            if sum(price[j] * counts[t] for t, j in zip(sorted(means), combo, strict=True)) / total
            <= budget + 1e-9
        )
        assert value == pytest.approx(best)


def test_auc_counts_pairs(probe: ModuleType) -> None:
    rng = np.random.default_rng(0)
    score = rng.integers(0, 5, 60).astype(float)  # many ties
    label = rng.random(60) < 0.4
    pos, neg = score[label], score[~label]
    pairs = [(p > n) + 0.5 * (p == n) for p in pos for n in neg]
    assert probe.auc(score, label) == pytest.approx(float(np.mean(pairs)))
    assert np.isnan(probe.auc(score, np.zeros(60, dtype=bool)))


def _built(signal: bool, n_per_task: int = 300) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two tasks, a cheap and a dear expert; with ``signal`` feature 0 says when the cheap
    one fails (and then the dear one succeeds), otherwise outcomes ignore the features."""
    rng = np.random.default_rng(1)
    n = 2 * n_per_task
    tasks = np.array(["a"] * n_per_task + ["b"] * n_per_task)
    X = rng.normal(size=(n, 4))
    hard = X[:, 0] > 0.5 if signal else rng.random(n) < 0.3
    cheap = np.where(hard, 0.0, (rng.random(n) < 0.9).astype(float))
    dear = np.where(hard, (rng.random(n) < 0.9).astype(float), (rng.random(n) < 0.9).astype(float))
    return X, np.stack([cheap, dear], axis=1), tasks


@pytest.mark.parametrize("pooled", [True, False])
def test_residual_model_finds_a_planted_signal_and_none_in_noise(
    probe: ModuleType, pooled: bool
) -> None:
    price = np.array([0.1, 0.9])
    lifts = {}
    for signal in (True, False):
        X, S, tasks = _built(signal)
        weights = np.ones(len(S))
        prior, full = probe.residual_oof(X, S, tasks, alpha=10.0, pooled=pooled, folds=5, seed=0)
        lifts[signal] = probe.score_at(full, S, price, weights, 0.4) - probe.score_at(
            prior, S, price, weights, 0.4
        )
    assert lifts[True] > 0.1  # routing the hard rows to the dear expert pays
    assert abs(lifts[False]) < 0.03


def test_simulated_draws_show_the_hindsight_gap(probe: ModuleType) -> None:
    X, S, tasks = _built(False)
    price = np.array([0.1, 0.9])
    sim = probe.simulate(S, tasks, {"a": 40, "b": 40}, price, draws=30)
    assert sim["draws"] == 30
    # picking per task on the very rows scored can only match or beat picking on other rows
    assert sim["hindsight_per_task"] >= sim["task_level_from_rest"]
    assert sim["hindsight_gap_mean"] >= 0
