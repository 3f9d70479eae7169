"""Is there a routing signal inside tasks? A train-only probe on the LLMRouter data.

Run from the repository root (the data lives in ../shared/data):

    python benchmarks/within_task.py [--seeds 5] [--out out/within_task]

Task-level routing (one model per task) tops out near the best per-task assignment; a
router beats it only if it can tell which queries *of one task* a cheaper model gets right.
This probe measures that on the training split alone, never on the test rows:

1. Draws from train that look like the ``dedup`` test split (the same number of rows per
   task), routes them with per-task means learnt on the rest of train, and compares with the
   best per-task assignment picked with hindsight on the draw itself: the gap is what
   picking with hindsight adds on rows of this size, without any per-query signal.
2. For each feature set (surface shape features, task-shape features, the MiniLM
   embedding), cross-validated per-query quality = per-task mean + a ridge model of the
   residual (per-task standardised features, pooled over tasks, or one model per task);
   the score at mean price <= 0.45 on the test split's task mix, minus the per-task mean's
   score on the same folds, over several fold seeds.
3. For each test task, the cross-validated AUC (per held-out fold, averaged) of a ridge
   model on the embedding for "the pricier model wins on this query" against the model the
   task-level router would use instead.

The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from expertgraph.policies.data.dataset import load_dataset
from expertgraph.policies.learning.features import Featurizer
from expertgraph.policies.learning.training import fold_indices

REPO = Path(__file__).resolve().parents[1]
TARGET_PRICE = 0.45
_HOUSES = re.compile(r"There are (\d+) houses")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")


def log(*parts: Any) -> None:
    print(*parts, flush=True)


def shape_features(text: str) -> list[float]:
    """Task-shape features the embedding may miss: list length (CommonGen's concept count),
    puzzle size (logic grids' houses, clue lines), numbers, units and lexical variety."""
    words = text.split()
    n = max(len(text), 1)
    houses = _HOUSES.search(text)
    return [
        math.log1p(len(text)),
        math.log1p(len(words)),
        len(text.split(",")) / 10.0,
        float(houses.group(1)) if houses else 0.0,
        text.count("\n - ") / 5.0,
        len(_NUMBER.findall(text)) / 5.0,
        10.0 * sum(c.isdigit() for c in text) / n,
        float("%" in text),
        float("$" in text),
        float("/" in text),
        float(text.count("?")),
        float(bool(re.search(r"[^\x00-\x7f]", text))),
        len(set(words)) / max(len(words), 1),
        float(np.mean([len(w) for w in words])) if words else 0.0,
    ]


def task_means(S: np.ndarray, tasks: np.ndarray, rows: np.ndarray) -> dict[str, np.ndarray]:
    """Mean score per expert of each task over ``rows``."""
    return {str(t): S[rows[tasks[rows] == t]].mean(axis=0) for t in np.unique(tasks[rows])}


def score_at(
    quality: np.ndarray,
    S: np.ndarray,
    price: np.ndarray,
    weights: np.ndarray,
    budget: float,
    seed: int = 0,
) -> float:
    """Weighted mean score of ``argmax(quality - lam * price)`` at weighted mean price
    ``budget``, lambda picked with hindsight (used only to compare quality estimates on the
    same rows, never as a figure of a deployable router).

    Between the last lambda over the budget and the first within it, rows are moved to the
    pricier choice in random order until the budget is spent: a task whose rows all share
    one prediction can then be split between two experts, so a model's lift must come from
    *which* rows it sends, not from splitting a task at all.
    """
    rows = np.arange(len(S))
    wsum = weights.sum()

    def point(picked: np.ndarray) -> tuple[float, float]:
        return (
            float((weights * price[picked]).sum() / wsum),
            float((weights * S[rows, picked]).sum() / wsum),
        )

    above: np.ndarray | None = None
    for lam in np.concatenate([[0.0], np.geomspace(1e-3, 3.0, 400)]):
        picked = np.argmax(quality - lam * price, axis=1)
        cost, score = point(picked)
        if cost <= budget + 1e-9:
            break
        above = picked
    else:
        return float("nan")
    if above is None:
        return score
    moved = picked.copy()
    spent = cost
    for i in np.random.default_rng(seed).permutation(np.flatnonzero(above != picked)):
        extra = weights[i] * (price[above[i]] - price[picked[i]]) / wsum
        if spent + extra <= budget + 1e-9:
            moved[i] = above[i]
            spent += extra
    return point(moved)[1]


def best_assignment(
    means: dict[str, np.ndarray], counts: dict[str, int], price: np.ndarray, budget: float
) -> dict[str, int]:
    """The one-model-per-task choice with the best expected score under a mean-price budget
    (exact: dynamic programme over tasks on the price in cents)."""
    cents = np.round(price * 100).astype(int)
    states: dict[int, tuple[float, list[int]]] = {0: (0.0, [])}
    names = sorted(means)
    for t in names:
        n = counts[t]
        nxt: dict[int, tuple[float, list[int]]] = {}
        for spent, (value, picks) in states.items():
            for j in range(len(price)):
                key = spent + int(cents[j]) * n
                cand = (value + float(means[t][j]) * n, [*picks, j])
                if key not in nxt or nxt[key][0] < cand[0]:
                    nxt[key] = cand
        states = nxt
    total = sum(counts.values())
    ok = [(v, p) for k, (v, p) in states.items() if k / 100 / total <= budget + 1e-9]
    return dict(zip(names, max(ok, key=lambda vp: vp[0])[1], strict=True))


def ridge(X: np.ndarray, Y: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Closed-form ridge on centred data: (weights, intercept)."""
    mx, my = X.mean(axis=0), Y.mean(axis=0)
    Xc = X - mx
    W = np.linalg.solve(Xc.T @ Xc + alpha * np.eye(X.shape[1]), Xc.T @ (Y - my))
    return W, my - mx @ W


def per_task_standardise(X: np.ndarray, tasks: np.ndarray, fit_rows: np.ndarray) -> np.ndarray:
    """Features standardised within each task with statistics of ``fit_rows`` only."""
    out = np.zeros_like(X, dtype=np.float64)
    for t in np.unique(tasks):
        ref = fit_rows[tasks[fit_rows] == t]
        mu, sd = X[ref].mean(axis=0), X[ref].std(axis=0) + 1e-6
        out[tasks == t] = (X[tasks == t] - mu) / sd
    return out


def residual_oof(
    X: np.ndarray,
    S: np.ndarray,
    tasks: np.ndarray,
    *,
    alpha: float,
    pooled: bool,
    folds: int,
    seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Out-of-fold (task-mean prediction, task mean + ridge residual prediction)."""
    prior = np.zeros_like(S)
    full = np.zeros_like(S)
    everything = np.arange(len(S))
    for held in fold_indices(len(S), folds, seed):
        fit = np.setdiff1d(everything, held)
        means = task_means(S, tasks, fit)
        M = np.array([means[str(t)] for t in tasks])
        Xn = per_task_standardise(X, tasks, fit)
        prior[held] = M[held]
        if pooled:
            W, b = ridge(Xn[fit], S[fit] - M[fit], alpha)
            full[held] = M[held] + Xn[held] @ W + b
            continue
        for t in np.unique(tasks[held]):
            a, h = fit[tasks[fit] == t], held[tasks[held] == t]
            W, b = ridge(Xn[a], S[a] - M[a], alpha)
            full[h] = M[h] + Xn[h] @ W + b
    return prior, full


def auc(score: np.ndarray, label: np.ndarray) -> float:
    """Rank AUC (ties count half); NaN without both classes."""
    pos, neg = score[label], score[~label]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    ranks = np.argsort(np.argsort(np.concatenate([pos, neg]), kind="stable"), kind="stable")
    # average ranks over ties
    allv = np.concatenate([pos, neg])
    r = ranks.astype(float)
    for v in np.unique(allv):
        m = allv == v
        r[m] = r[m].mean()
    return float((r[: len(pos)].sum() - len(pos) * (len(pos) - 1) / 2) / (len(pos) * len(neg)))


def simulate(
    S: np.ndarray,
    tasks: np.ndarray,
    counts: dict[str, int],
    price: np.ndarray,
    draws: int,
    seed: int = 0,
) -> dict[str, float]:
    """Dedup-like draws from train: task-level routing learnt on the rest vs hindsight."""
    rng = np.random.default_rng(seed)
    by_task = {t: np.where(tasks == t)[0] for t in counts}
    pool = np.concatenate(list(by_task.values()))
    honest, hind = [], []
    for _ in range(draws):
        held = np.concatenate([rng.choice(by_task[t], counts[t], replace=False) for t in counts])
        rest = np.setdiff1d(pool, held)
        rows = np.arange(len(held))
        for means, out in (
            (task_means(S, tasks, rest), honest),
            (task_means(S, tasks, held), hind),
        ):
            pick = best_assignment(means, counts, price, TARGET_PRICE)
            col = np.array([pick[str(t)] for t in tasks[held]])
            out.append(float(S[held][rows, col].mean()))
    gap = np.array(hind) - np.array(honest)
    return {
        "draws": draws,
        "task_level_from_rest": float(np.mean(honest)),
        "task_level_sd": float(np.std(honest)),
        "hindsight_per_task": float(np.mean(hind)),
        "hindsight_gap_mean": float(gap.mean()),
        "hindsight_gap_sd": float(gap.std()),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--home", default=str(REPO / ".expertgraph"))
    parser.add_argument("--out", default=str(REPO / "out" / "within_task"))
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--draws", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--extra",
        action="append",
        default=[],
        help="NAME=PATH.npy: more per-row features for the training rows, in train order",
    )
    args = parser.parse_args(argv)
    t0 = time.time()
    root = Path(args.data) / "llmrouter-dc"
    train = load_dataset(root, split="train")
    test_tasks = load_dataset(root, split="dedup").tasks  # only the task mix of the test split
    S = train.scores()
    price = train.costs()[0]
    tasks = np.array([str(t) for t in train.tasks])
    counts = {str(t): int(sum(1 for x in test_tasks if x == t)) for t in sorted(set(test_tasks))}
    # weights: each test task's rows count as much as in the test split
    weights = np.array(
        [counts.get(t, 0) / int((tasks == t).sum()) if t in counts else 0.0 for t in tasks]
    )
    result: dict[str, Any] = {"n_train": len(train), "test_task_counts": counts}
    sim = simulate(S, tasks, counts, price, args.draws)
    result["simulated_dedup_draws"] = sim
    log(
        f"[within] dedup-like draws from train: task-level learnt on the rest "
        f"{sim['task_level_from_rest']:.4f} (sd {sim['task_level_sd']:.4f}), the same rows with "
        f"per-task hindsight {sim['hindsight_per_task']:.4f}: hindsight adds "
        f"{sim['hindsight_gap_mean']:.4f} (sd {sim['hindsight_gap_sd']:.4f})"
    )

    from expertgraph.policies.embeddings.cache import cached_embedder

    embedder = cached_embedder(home=args.home, threads=args.threads)
    emb = Featurizer(embedder).embed(train.prompts).astype(np.float64)
    surface = Featurizer.surface(train.prompts).astype(np.float64)
    shape = np.array([shape_features(p) for p in train.prompts])
    sets: dict[str, np.ndarray] = {
        "surface": surface,
        "surface+shape": np.hstack([surface, shape]),
        "minilm": emb,
        "minilm+surface+shape": np.hstack([emb, surface, shape]),
    }
    for spec in args.extra:
        name, _, path = spec.partition("=")
        extra = np.load(path)
        if len(extra) != len(train):
            raise SystemExit(f"--extra {name}: {len(extra)} rows, train has {len(train)}")
        sets[name] = np.asarray(extra, dtype=np.float64)
        sets[f"{name}+surface+shape"] = np.hstack([sets[name], surface, shape])
    probes: dict[str, Any] = {}
    for name, X in sets.items():
        for pooled in (True, False):
            for alpha in (10.0, 100.0, 1000.0) if X.shape[1] < 64 else (100.0, 1000.0, 10000.0):
                diffs, priors = [], []
                for seed in range(args.seeds):
                    prior, full = residual_oof(
                        X, S, tasks, alpha=alpha, pooled=pooled, folds=args.folds, seed=seed
                    )
                    p = score_at(prior, S, price, weights, TARGET_PRICE)
                    diffs.append(score_at(full, S, price, weights, TARGET_PRICE) - p)
                    priors.append(p)
                key = f"{name} {'pooled' if pooled else 'per-task'} alpha={alpha:g}"
                probes[key] = {
                    "task_mean_score": float(np.mean(priors)),
                    "lift_mean": float(np.mean(diffs)),
                    "lift_sd": float(np.std(diffs)),
                    "lifts": [round(d, 4) for d in diffs],
                }
                log(
                    f"[within] {key:50s} task means {np.mean(priors):.4f}  lift "
                    f"{np.mean(diffs):+.4f} (sd {np.std(diffs):.4f})"
                )
    result["residual_probes"] = probes
    best = max(probes, key=lambda k: probes[k]["lift_mean"])
    result["best_probe"] = {"name": best, **probes[best]}

    # 3. upgrade AUC per test task: the task-level choice vs the best pricier expert
    full_means = task_means(S, tasks, np.arange(len(S)))
    pick = best_assignment({t: full_means[t] for t in counts}, counts, price, TARGET_PRICE)
    upgrades: dict[str, Any] = {}
    for t in counts:
        rows = np.where(tasks == t)[0]
        base = pick[t]
        dearer = [j for j in range(len(price)) if price[j] > price[base]]
        if not dearer:
            cheaper = [j for j in range(len(price)) if price[j] < price[base]]
            if not cheaper:
                continue
            other = max(cheaper, key=lambda j: full_means[t][j])
            cheap, dear = other, base
        else:
            cheap, dear = base, max(dearer, key=lambda j: full_means[t][j])
        label = (S[rows, dear] - S[rows, cheap]) > 0.05
        Xn = per_task_standardise(emb[rows], np.array([t] * len(rows)), np.arange(len(rows)))
        # AUC within each held-out fold, averaged: pooling folds would mix their intercepts,
        # which move against each fold's share of wins and push a pooled AUC below 0.5
        fold_aucs = []
        for held in fold_indices(len(rows), args.folds, 0):
            fit = np.setdiff1d(np.arange(len(rows)), held)
            W, b = ridge(Xn[fit], label[fit].astype(float), 1000.0)
            fold_aucs.append(auc(Xn[held] @ W + b, label[held]))
        upgrades[t] = {
            "cheap": train.experts[cheap],
            "dear": train.experts[dear],
            "dear_wins_share": float(label.mean()),
            "auc_minilm": float(np.nanmean(fold_aucs)),
        }
        log(
            f"[within] {t:22s} {train.experts[cheap]} -> {train.experts[dear]}: dearer wins on "
            f"{label.mean():.2f} of rows, MiniLM CV AUC {upgrades[t]['auc_minilm']:.3f}"
        )
    result["upgrade_auc"] = upgrades
    result["seconds"] = round(time.time() - t0, 1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    line = json.dumps({"benchmark": "within_task", **result})
    (out / "within_task.json").write_text(line + "\n")
    print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
