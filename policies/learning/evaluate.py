"""Offline evaluation of routing policies on a routing dataset.

A policy is measured by what its choices would have scored and cost on rows whose every
expert's score is known: mean score, mean cost, calls per query and the mix of experts,
next to baselines on the same rows (best single expert, oracle, random). Over a sweep of
lambda it gives a cost/quality curve, RouterBench's AIQ (area under the non-decreasing
convex hull of that curve, normalised by the cost range) and a Pareto plot; on two-expert
data it gives RouteLLM's APGR and CPT(x%) computed the way RouteLLM's ``evaluate.py`` does
(10 quantile thresholds of the router's strong-win score, trapezoid area). Policies that
call several experts (a trained cascade, a policy with an aggregator) are replayed on the
rows' recorded replies (:mod:`~expertgraph.policies.learning.replay_eval`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from expertgraph.core.errors import MissingDependencyError, PolicyError
from expertgraph.policies.learning.cost import calibrate_lambda, calibrate_shares, choose
from expertgraph.policies.learning.training import sweep

# numpy >= 2 calls it trapezoid; 1.26 only has trapz.
_trapezoid = getattr(np, "trapezoid", None) or np.trapz


@dataclass
class Outcome:
    """What a set of choices scored and cost on the rows."""

    score: float
    cost: float
    calls_per_query: float
    mix: dict[str, float]
    n: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def outcome(
    picked: np.ndarray,
    scores: np.ndarray,
    costs: np.ndarray,
    experts: Sequence[str],
    combine: str = "max",
) -> Outcome:
    """Score and cost of choosing ``picked`` (``(n,)`` or ``(n, k)`` column indices).

    With several experts per row the cost is their sum, and the score is the best of their
    scores (``combine='max'``: an aggregator that finds the right answer when one is there,
    an upper bound) or the first one's (``'first'``) or the mean (``'mean'``).
    """
    p = np.asarray(picked)
    if p.ndim == 1:
        p = p[:, None]
    n = len(p)
    got = np.take_along_axis(scores, p, axis=1)
    if combine == "max":
        row_score = np.nanmax(got, axis=1)
    elif combine == "first":
        row_score = got[:, 0]
    elif combine == "mean":
        row_score = np.nanmean(got, axis=1)
    else:
        raise PolicyError(f"unknown combine {combine!r} (max, first, mean)")
    row_cost = np.take_along_axis(costs, p, axis=1).sum(axis=1)
    counts = np.bincount(p.ravel(), minlength=len(experts))
    mix = {e: float(counts[j] / n) for j, e in enumerate(experts) if counts[j]}
    return Outcome(
        score=float(np.nanmean(row_score)) if n else float("nan"),
        cost=float(row_cost.mean()) if n else float("nan"),
        calls_per_query=float(p.shape[1]),
        mix=dict(sorted(mix.items(), key=lambda kv: -kv[1])),
        n=n,
    )


def baselines(
    scores: np.ndarray, costs: np.ndarray, experts: Sequence[str]
) -> dict[str, dict[str, Any]]:
    """Best single expert, oracle and random on the same rows.

    * best_single: the expert with the best mean score on these rows (chosen in hindsight);
    * oracle: each row's best expert, the cheapest among ties (an upper bound);
    * random: the expectation of a uniform random choice per row (exact, not sampled).
    """
    means = np.nanmean(scores, axis=0)
    mean_costs = costs.mean(axis=0)
    best = int(np.nanargmax(means))
    filled = np.where(np.isnan(scores), -np.inf, scores)
    top = filled.max(axis=1, keepdims=True)
    # cheapest expert among those that reach the row's best score
    oracle_pick = np.argmin(np.where(filled >= top - 1e-12, costs, np.inf), axis=1)
    oracle = outcome(oracle_pick, scores, costs, experts)
    cheapest = int(np.argmin(mean_costs))
    return {
        "best_single": {
            "expert": experts[best],
            "score": float(means[best]),
            "cost": float(mean_costs[best]),
        },
        "oracle": {"score": oracle.score, "cost": oracle.cost, "mix": oracle.mix},
        "random": {"score": float(np.nanmean(means)), "cost": float(mean_costs.mean())},
        "cheapest": {
            "expert": experts[cheapest],
            "score": float(means[cheapest]),
            "cost": float(mean_costs[cheapest]),
        },
        "singles": {
            e: {"score": float(means[j]), "cost": float(mean_costs[j])}
            for j, e in enumerate(experts)
        },
    }


def per_task_best(
    train_scores: np.ndarray,
    train_tasks: Sequence[str | None],
    eval_scores: np.ndarray,
    eval_tasks: Sequence[str | None],
    costs: np.ndarray,
    experts: Sequence[str],
) -> Outcome:
    """Task-level routing: each task's best expert as measured on the training rows."""
    train_means: dict[str | None, np.ndarray] = {}
    tt = np.asarray([str(t) for t in train_tasks])
    for task in set(tt):
        train_means[task] = np.nanmean(train_scores[tt == task], axis=0)
    overall = np.nanmean(train_scores, axis=0)
    picked = np.array([int(np.nanargmax(train_means.get(str(t), overall))) for t in eval_tasks])
    return outcome(picked, eval_scores, costs, experts)


# ----------------------------------------------------------------------------- curves


def pareto_front(points: Sequence[Mapping[str, float]]) -> list[dict[str, float]]:
    """The points no other point beats on both cost (lower) and score (higher), by cost."""
    ordered = sorted(points, key=lambda p: (p["cost"], -p["score"]))
    front: list[dict[str, float]] = []
    for p in ordered:
        if not front or p["score"] > front[-1]["score"] + 1e-12:
            front.append(dict(p))
    return front


def _upper_hull(xy: list[tuple[float, float]]) -> list[tuple[float, float]]:
    hull: list[tuple[float, float]] = []
    for x, y in sorted(set(xy)):
        while len(hull) >= 2:
            (x1, y1), (x2, y2) = hull[-2], hull[-1]
            if (x2 - x1) * (y - y1) - (y2 - y1) * (x - x1) >= 0:  # hull[-1] lies under the chord
                hull.pop()
            else:
                break
        hull.append((x, y))
    return hull


def aiq(points: Sequence[Mapping[str, float]], cost_min: float, cost_max: float) -> float:
    """RouterBench's Average Improvement in Quality over ``[cost_min, cost_max]``.

    The area under the non-decreasing convex hull of the (cost, score) points (mixing two
    operating points at random reaches any point on the chord between them), divided by the
    cost range. Below the cheapest point the curve is taken as that point's score; above the
    most expensive one it stays flat.
    """
    if cost_max <= cost_min:
        raise PolicyError(f"AIQ needs cost_max > cost_min, got [{cost_min}, {cost_max}]")
    xy = [(float(p["cost"]), float(p["score"])) for p in points]
    hull = _upper_hull(xy)
    # keep only the rising part: a more expensive point that scores less is never used
    rising: list[tuple[float, float]] = []
    for x, y in hull:
        if not rising or y > rising[-1][1]:
            rising.append((x, y))
    xs = np.array([x for x, _ in rising])
    ys = np.array([y for _, y in rising])
    grid = np.linspace(cost_min, cost_max, 2001)
    curve = np.interp(grid, xs, ys, left=ys[0], right=ys[-1])
    return float(_trapezoid(curve, grid) / (cost_max - cost_min))


# ----------------------------------------------------------------------------- RouteLLM metrics


def routellm_curve(
    win_score: np.ndarray, strong: np.ndarray, weak: np.ndarray, bins: int = 10
) -> list[dict[str, float]]:
    """RouteLLM's threshold sweep: ``[{threshold, strong_pct, score}]``.

    Thresholds are the edges of ``bins`` equal-count bins of the router's strong-win score
    (``pd.qcut(..., retbins=True)`` with duplicates kept); each threshold sends the rows at or
    above it to the strong model, and the last sends only rows above it.
    """
    w = np.asarray(win_score, dtype=float)
    edges = np.quantile(w, np.linspace(0, 1, bins + 1))
    out = []
    for i, t in enumerate(edges):
        sel = w >= t if i != len(edges) - 1 else w > t
        score = np.where(sel, strong, weak)
        out.append(
            {
                "threshold": float(t),
                "strong_pct": float(sel.mean() * 100),
                "score": float(np.mean(score)),
            }
        )
    return out


def apgr(curve: Sequence[Mapping[str, float]], weak_score: float, strong_score: float) -> float:
    """Average performance gap recovered: RouteLLM's ``(AUC - weak) / (strong - weak)``."""
    pts = sorted(curve, key=lambda p: p["strong_pct"])
    x = np.array([p["strong_pct"] for p in pts]) / 100
    y = np.array([p["score"] for p in pts])
    auc = _trapezoid(y, x)
    weak_auc = _trapezoid(np.full_like(x, weak_score), x)
    strong_auc = _trapezoid(np.full_like(x, strong_score), x)
    if strong_auc == weak_auc:  # no gap to recover: the metric is undefined
        return float("nan")
    return float((auc - weak_auc) / (strong_auc - weak_auc))


def cpt(
    curve: Sequence[Mapping[str, float]], weak_score: float, strong_score: float, pct: float
) -> float:
    """Call-performance threshold: % strong calls to reach ``pct`` of the gap (RouteLLM interp)."""
    pts = sorted(curve, key=lambda p: p["strong_pct"])
    target = pct * (strong_score - weak_score) + weak_score
    return float(np.interp(target, [p["score"] for p in pts], [p["strong_pct"] for p in pts]))


def two_expert_metrics(
    win_score: np.ndarray, scores: np.ndarray, strong: int, weak: int
) -> dict[str, Any]:
    """APGR, CPT(50%), CPT(80%) and the curve for a strong/weak pair."""
    s, w = scores[:, strong], scores[:, weak]
    curve = routellm_curve(win_score, s, w)
    ws, ss = float(np.nanmean(w)), float(np.nanmean(s))
    return {
        "apgr": apgr(curve, ws, ss),
        "cpt50": cpt(curve, ws, ss, 0.5),
        "cpt80": cpt(curve, ws, ss, 0.8),
        "curve": curve,
    }


# ----------------------------------------------------------------------------- policies


@dataclass
class PolicyReport:
    """One policy's figures on the evaluation rows."""

    policy: str
    score: float
    cost: float
    calls_per_query: float
    mix: dict[str, float]
    lam: float | None = None
    aiq: float | None = None
    curve: list[dict[str, float]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        out = {
            "policy": self.policy,
            "score": self.score,
            "cost": self.cost,
            "calls_per_query": self.calls_per_query,
            "mix": self.mix,
        }
        if self.lam is not None:
            out["lam"] = self.lam
        if self.aiq is not None:
            out["aiq"] = self.aiq
        out.update(self.extra)
        return out


def report_for_quality(
    name: str,
    quality: np.ndarray,
    scores: np.ndarray,
    costs: np.ndarray,
    experts: Sequence[str],
    *,
    lam: float | None = None,
    target_cost: float | None = None,
    target_shares: Mapping[str, float] | None = None,
    offsets: np.ndarray | None = None,
    k: int = 1,
    combine: str = "max",
) -> PolicyReport:
    """Route every row by ``quality - lam * cost``; lam from ``target_cost`` on these prompts.

    ``target_cost`` calibrates lambda on the evaluation prompts' predictions only (never their
    scores): the budget a deployment would set for a known workload. ``target_shares`` does the
    same for per-expert offsets (a share of calls per expert); ``offsets`` gives them directly.
    """
    if target_cost is not None:
        cal = calibrate_lambda(quality, costs, target_cost, k)
        lam = cal.lam
    lam = float(lam or 0.0)
    if target_shares is not None:
        unknown = sorted(set(target_shares) - set(experts))
        if unknown:
            raise PolicyError(f"target shares name unknown experts: {', '.join(unknown)}")
        wanted = [float(target_shares.get(e, 0.0)) for e in experts]
        offsets = calibrate_shares(quality, wanted, costs=costs, lam=lam)
    picked = choose(quality, costs, lam, k, offsets=offsets)
    out = outcome(picked, scores, costs, experts, combine)
    curve = sweep(quality, scores, costs)
    lo, hi = float(costs.mean(axis=0).min()), float(costs.mean(axis=0).max())
    value = aiq(curve, lo, hi) if hi > lo else None
    return PolicyReport(
        name, out.score, out.cost, out.calls_per_query, out.mix, lam=lam, aiq=value, curve=curve
    )


def plot_pareto(
    path: str | Path,
    curves: Mapping[str, Sequence[Mapping[str, float]]],
    singles: Mapping[str, Mapping[str, float]],
    *,
    title: str = "",
    cost_label: str = "mean cost",
    marks: Mapping[str, tuple[float, float]] | None = None,
) -> Path:
    """Cost/quality Pareto fronts of policies, with each single expert as a point (PNG)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise MissingDependencyError("matplotlib", "bench") from exc
    fig, ax = plt.subplots(figsize=(8, 5.5))
    for name, pts in curves.items():
        front = pareto_front(pts)
        ax.plot([p["cost"] for p in front], [p["score"] for p in front], marker=".", label=name)
    for name, p in singles.items():
        ax.scatter([p["cost"]], [p["score"]], marker="x", color="grey")
        ax.annotate(name[:22], (p["cost"], p["score"]), fontsize=7, color="grey")
    for name, (c, s) in (marks or {}).items():
        ax.scatter([c], [s], marker="*", s=120, label=name)
        ax.annotate(name, (c, s), fontsize=8)
    ax.set_xlabel(cost_label)
    ax.set_ylabel("mean score")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(target, dpi=120)
    plt.close(fig)
    return target


# ----------------------------------------------------------------------------- the harness

BASELINE_POLICIES = ("random", "oracle", "best-single", "cheapest")


def _default_split(layout: str, split: str | None) -> str | None:
    if split is not None:
        return split
    return "test" if layout == "llmrouter-dc" else None


def evaluate(
    data: str | Path,
    policy: str,
    *,
    split: str | None = None,
    subset: str | None = None,
    cv: int | None = None,
    lam: float | None = None,
    target_cost: float | None = None,
    target_shares: Mapping[str, float] | None = None,
    k: int = 1,
    params: Mapping[str, Any] | None = None,
    embedder: Any = None,
    home: str | Path = ".expertgraph",
    train_split: str = "train",
    seed: int = 0,
    plot: str | Path | None = None,
    aggregator: str | None = None,
    prices: str | Path | None = None,
) -> dict[str, Any]:
    """Measure one policy on a dataset; the result is the ``eval --json`` object.

    ``policy`` is a trained artifact's folder, a learned kind (``knn``, ``mlp``, ``logreg``,
    ``mf``, ``cluster``, ``task``, ``ensemble``: trained on ``train_split`` of the same data,
    or cross-validated with ``cv`` folds on the evaluation rows), or a baseline
    (``random``, ``oracle``, ``best-single``, ``cheapest``, ``fixed:<expert>``). Lambda
    comes from ``lam``, else from ``target_cost`` calibrated on the evaluation prompts'
    predictions (no labels), else from the artifact (0 for a fresh model).

    Multi-call policies are replayed on the rows' recorded replies
    (:func:`~expertgraph.policies.learning.replay_eval.replay_rows`): a trained cascade's
    folder (``expertgraph train --policy cascade``), or any registered policy (``all``,
    ``cascade``, ``random``, ``fixed:A,B``) with an ``aggregator`` (``majority``,
    ``ahead-by-k``, ...). ``prices`` (a YAML/JSON price table) gives rows their costs.
    """
    from expertgraph.policies.data.dataset import detect_layout, load_dataset, split_subset
    from expertgraph.policies.learning.features import Featurizer
    from expertgraph.policies.learning.models.base import MODEL_KINDS, model_class
    from expertgraph.policies.learning.training import fit_predict, out_of_fold
    from expertgraph.policies.routing.learned import LearnedRouter

    text, subset = split_subset(data, subset)
    layout = detect_layout(text)
    split = _default_split(layout, split)
    ds = load_dataset(text, split=split, subset=subset)
    if prices is not None:
        from expertgraph.policies.data.prices import apply_prices, load_prices

        ds = apply_prices(ds, load_prices(prices))
    multi = _multi_call(policy, aggregator)
    if multi is not None:
        if split is None and layout == "jsonl":
            from expertgraph.policies.data.dataset import marked_split

            test_split = marked_split(text, "test")
            if test_split is not None:  # rows marked train/test: a policy is judged on test
                ds = load_dataset(text, split=test_split)
                if prices is not None:
                    ds = apply_prices(ds, load_prices(prices))
        return _evaluate_replay(ds, multi, policy, aggregator, plot=plot)
    S, C, experts = ds.scores(), ds.costs(), ds.experts
    n, e = S.shape
    quality: np.ndarray | None = None
    artifact_offsets: np.ndarray | None = None
    picked: np.ndarray | None = None
    win: np.ndarray | None = None
    trained_on: str | None = None

    def _embedder() -> Any:
        if embedder is not None:
            return embedder
        from expertgraph.policies.embeddings.cache import cached_embedder

        return cached_embedder(home=home)

    policy_path = Path(policy)
    if policy_path.is_dir():
        router = LearnedRouter.load(policy_path, experts=experts, embedder=embedder, home=home)
        quality = router.predict_quality(ds.prompts)
        if lam is None and target_cost is None and target_shares is None:
            lam, artifact_offsets = router.lam, router.offset_vector()
        name = f"{router.name}:{policy_path.name}"
    elif policy in MODEL_KINDS:
        name = policy
        model = model_class(policy)(**dict(params or {}))
        featurizer = Featurizer(_embedder())
        surface = model.surface_default

        def feats(rows: Any) -> np.ndarray:
            return Featurizer.combine(
                featurizer.embed(rows.prompts), Featurizer.surface(rows.prompts), surface
            )

        if cv:
            quality = out_of_fold(policy, params, feats(ds), S, cv, tasks=ds.tasks, seed=seed)
            trained_on = f"{cv}-fold cross-validation on the evaluation rows"
        elif layout == "llmrouter-dc" and split != train_split:
            train = load_dataset(text, split=train_split, subset=subset)
            quality = fit_predict(
                policy, params, feats(train), train.scores(), feats(ds), train.tasks
            )
            trained_on = f"{train.name} split {train_split} ({len(train)} rows)"
        else:
            raise PolicyError(
                f"{policy}: this data has no separate training split; "
                "pass --cv K or a trained folder"
            )
    elif policy in BASELINE_POLICIES or policy.startswith("fixed:"):
        name = policy
        rng = np.random.default_rng(seed)
        means = np.nanmean(S, axis=0)
        if policy == "random":
            picked = rng.integers(0, e, size=n)
            win = rng.random(n)
        elif policy == "oracle":
            filled = np.where(np.isnan(S), -np.inf, S)
            picked = np.argmin(
                np.where(filled >= filled.max(axis=1, keepdims=True) - 1e-12, C, np.inf), axis=1
            )
        elif policy == "best-single":
            picked = np.full(n, int(np.nanargmax(means)))
        elif policy == "cheapest":
            picked = np.full(n, int(np.argmin(C.mean(axis=0))))
        else:
            expert = policy.split(":", 1)[1]
            if expert not in experts:
                raise PolicyError(
                    f"fixed:{expert}: not an expert of this data; experts: {', '.join(experts)}"
                )
            picked = np.full(n, experts.index(expert))
    else:
        raise PolicyError(
            f"unknown policy {policy!r}: give a trained folder, one of {', '.join(MODEL_KINDS)}, "
            f"or a baseline ({', '.join(BASELINE_POLICIES)}, fixed:<expert>)"
        )

    base = baselines(S, C, experts)
    result: dict[str, Any] = {"dataset": ds.name, "split": ds.split, "n": n}
    if quality is not None:
        rep = report_for_quality(
            name,
            quality,
            S,
            C,
            experts,
            lam=lam,
            target_cost=target_cost,
            target_shares=target_shares,
            offsets=artifact_offsets,
            k=k,
        )
        result.update(rep.summary())
        if trained_on:
            result["trained_on"] = trained_on
        curve = rep.curve
    else:
        assert picked is not None
        out = outcome(picked, S, C, experts)
        result.update(
            {
                "policy": name,
                "score": out.score,
                "cost": out.cost,
                "calls_per_query": out.calls_per_query,
                "mix": out.mix,
            }
        )
        curve = []
    result["baselines"] = {
        "best_single": base["best_single"],
        "oracle": {"score": base["oracle"]["score"], "cost": base["oracle"]["cost"]},
        "random": base["random"],
    }
    result["cost_unit"] = ds.cost_unit or "none (the data has no costs)"
    if e == 2:
        strong_name = ds.meta.get("strong") or experts[int(np.nanargmax(np.nanmean(S, axis=0)))]
        strong = experts.index(strong_name)
        weak = 1 - strong
        if quality is not None:
            win = quality[:, strong] - quality[:, weak]
        if win is not None:
            tm = two_expert_metrics(win, S, strong, weak)
            result.update(
                {
                    "apgr": tm["apgr"],
                    "cpt50": tm["cpt50"],
                    "cpt80": tm["cpt80"],
                    "strong": strong_name,
                }
            )
    if plot is not None and curve:
        singles = base["singles"]
        result["plot"] = str(
            plot_pareto(
                plot,
                {name: curve},
                singles,
                title=f"{ds.name} ({ds.split}, n={n})",
                cost_label=f"mean cost ({ds.cost_unit or 'none'})",
            )
        )
    return result


# ----------------------------------------------------------------------------- multi-call


def _multi_call(policy: str, aggregator: str | None) -> str | None:
    """``cascade`` for a trained cascade's folder, ``replay`` with an aggregator, else None."""
    path = Path(policy)
    if (path / "meta.json").is_file():
        from expertgraph.policies.learning.artifacts import load_artifact

        if load_artifact(path).kind == "cascade":
            if aggregator is not None:
                raise PolicyError(
                    f"{policy}: a trained cascade brings its own aggregator; drop --aggregator"
                )
            return "cascade"
    return "replay" if aggregator is not None else None


def _evaluate_replay(
    ds: Any, mode: str, policy: str, aggregator: str | None, *, plot: str | Path | None
) -> dict[str, Any]:
    from expertgraph.policies.learning.replay_eval import expert_views, replay_rows

    curve: list[dict[str, float]] = []
    if mode == "cascade":
        from expertgraph.policies.routing.cascade import LearnedCascade

        live = LearnedCascade.load(policy, experts=ds.experts)
        agg: Any = live.paired_aggregator
        name = f"cascade:{Path(policy).name}"
        points = (live.plan.meta.get("calibration") or {}).get("curve") or []
        curve = [{"cost": float(c), "score": float(s)} for c, s in points]
        policy_obj: Any = live
    else:
        from expertgraph.policies.registry import BuildContext, build_aggregator, build_policy

        views = {v.name: v for v in expert_views(ds)}
        ctx = BuildContext(experts=views)
        if policy.startswith("fixed:"):
            names = [n for n in policy.split(":", 1)[1].split(",") if n]
            policy_obj = build_policy("fixed", {"experts": names}, ctx)
        else:
            policy_obj = build_policy(policy, {}, ctx)
        assert aggregator is not None
        agg = build_aggregator(aggregator, {}, ctx)
        name = f"{policy}+{aggregator}"
    report = replay_rows(ds, policy_obj, agg, name=name)
    S, C = ds.scores(), ds.costs()
    base = baselines(S, C, ds.experts)
    result: dict[str, Any] = {"dataset": ds.name, "split": ds.split, "n": len(ds)}
    result.update(report.summary())
    best = base["best_single"]
    if best["cost"] > 0:
        result["cost_vs_best_single"] = report.cost / best["cost"]
    result["score_vs_best_single"] = report.score - best["score"]
    tasks = report.per_task()
    if tasks:
        result["per_task"] = tasks
    result["baselines"] = {
        "best_single": best,
        "cheapest": base["cheapest"],
        "oracle": {"score": base["oracle"]["score"], "cost": base["oracle"]["cost"]},
        "random": base["random"],
    }
    result["cost_unit"] = ds.cost_unit or "none (the data has no costs)"
    if plot is not None:
        marks = {
            name: (report.cost, report.score),
            "oracle": (base["oracle"]["cost"], base["oracle"]["score"]),
            "random": (base["random"]["cost"], base["random"]["score"]),
        }
        curves = {f"{name} (training, out-of-fold)": curve} if curve else {}
        result["plot"] = str(
            plot_pareto(
                plot,
                curves,
                base["singles"],
                title=f"{ds.name} ({ds.split}, n={len(ds)})",
                cost_label=f"mean cost ({ds.cost_unit or 'none'})",
                marks=marks,
            )
        )
    return result
