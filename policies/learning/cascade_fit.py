"""Training a cascade on recorded replies: ``expertgraph train --policy cascade``.

What is learned from the train rows, per task label when the data has them:

* how answers are read (:func:`infer_formats`): a row's ``meta["answer_format"]``, else the
  format under which equal extracted answers best mean equal scores;
* each expert's reliability on the task (smoothed accuracy; the vote weights and the order);
* the plan (:class:`~expertgraph.policies.learning.cascade_plan.StagePlan`): which experts
  to ask first, how many must agree to stop, whom to escalate to, one or two stages deep.

Every candidate plan is scored on out-of-fold rows (reliabilities from the other folds) by
:func:`simulate`, which follows the live aggregator's rule. A task's estimate is shrunk
toward the same plan's score on all tasks (small tasks borrow strength), and rows of tasks
with fewer than ``min_task_rows`` share one plan. One plan per task is then chosen jointly,
maximising the mean score under the cost target (a Lagrange multiplier over tasks, then a
greedy fill of what budget is left, then one task mixing two plans on a fixed share of its
queries for the rest), or minimising the cost under a score target. A cost target is aimed
``cost_margin`` standard errors of the estimate below it (the estimate is measured on few
rows, and the chosen plan is the one whose cost looked lowest).
"""

from __future__ import annotations

import datetime as _dt
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from expertgraph.core import AggregationContext
from expertgraph.core.errors import PolicyError
from expertgraph.core.types import AnswerFormat, Generation, RoutingExample, Task
from expertgraph.policies.aggregation._ballots import read_ballot
from expertgraph.policies.aggregation.cascade import CASCADE_FLAGS
from expertgraph.policies.data.dataset import RoutingDataset
from expertgraph.policies.learning.cascade_plan import (
    CascadePlan,
    StagePlan,
    query_hash,
    router_scores,
    vote_weight,
)
from expertgraph.policies.learning.training import fold_indices

POOLED = "*"
"""The group of rows without a task label or of tasks too small for their own plan."""
FORMAT_CANDIDATES = (
    AnswerFormat(kind="number", json_field="answer"),
    AnswerFormat(kind="choice", json_field="answer"),
    AnswerFormat(kind="text", json_field="answer"),
)


# ----------------------------------------------------------------------------- reading replies


def row_format(example: RoutingExample) -> AnswerFormat | None:
    """The answer format a row names in ``meta["answer_format"]``, if any."""
    raw = example.meta.get("answer_format")
    return AnswerFormat.model_validate(raw) if isinstance(raw, Mapping) else None


def read_answer(example: RoutingExample, expert: str, fmt: AnswerFormat) -> str | None:
    """The ballot an expert's recorded reply casts (None: no reply, unparseable, red-flagged).

    The same reading as the live aggregator's (:func:`read_ballot` with the cascade's flags).
    """
    text = example.responses.get(expert)
    if text is None:
        return None
    task = Task(id=example.id, prompt=example.prompt or example.id, answer_format=fmt)
    ctx = AggregationContext(task=task, instruction=task.text, answer_format=fmt)
    read = read_ballot(Generation(expert=expert, text=text), ctx, CASCADE_FLAGS)
    return read.answer if read.flag is None else None


def _codes(rows: Sequence[RoutingExample], experts: Sequence[str], fmt: AnswerFormat) -> np.ndarray:
    """``(n, E)`` integer answer codes (equal code = equal ballot), -1 where none."""
    table: dict[str, int] = {}
    out = np.full((len(rows), len(experts)), -1, dtype=np.int64)
    for i, ex in enumerate(rows):
        for j, e in enumerate(experts):
            answer = read_answer(ex, e, fmt)
            if answer is not None:
                out[i, j] = table.setdefault(answer, len(table))
    return out


def _format_fit(codes: np.ndarray, scores: np.ndarray) -> float:
    """How well equal answers mean equal scores: +1 per agreeing pair that scores alike,
    -3 per agreeing pair that does not."""
    total = 0.0
    for j, k in itertools.combinations(range(codes.shape[1]), 2):
        agree = (codes[:, j] >= 0) & (codes[:, j] == codes[:, k])
        alike = np.abs(scores[:, j] - scores[:, k]) < 0.5
        total += float((agree & alike).sum() - 3 * (agree & ~alike).sum())
    return total


def infer_formats(
    dataset: RoutingDataset, groups: Sequence[str], sample: int = 200, seed: int = 0
) -> dict[str, AnswerFormat]:
    """The answer format of each group: the rows' own, else the best fit to the scores."""
    out: dict[str, AnswerFormat] = {}
    labels = np.asarray(groups)
    S = np.nan_to_num(dataset.scores(), nan=0.0)
    rng = np.random.default_rng(seed)
    for group in dict.fromkeys(groups):
        idx = np.flatnonzero(labels == group)
        named = row_format(dataset.examples[idx[0]])
        if named is not None:
            out[group] = named
            continue
        pick = np.sort(rng.permutation(idx)[:sample])
        rows = [dataset.examples[i] for i in pick]
        with_replies = [e for e in dataset.experts if all(e in r.responses for r in rows)]
        if len(with_replies) < 2:
            out[group] = AnswerFormat()
            continue
        cols = [dataset.experts.index(e) for e in with_replies]
        fits = [
            _format_fit(_codes(rows, with_replies, fmt), S[np.ix_(pick, cols)])
            for fmt in FORMAT_CANDIDATES
        ]
        out[group] = FORMAT_CANDIDATES[int(np.argmax(fits))]
    return out


# ----------------------------------------------------------------------------- simulation


@dataclass(frozen=True)
class Spec:
    """A candidate plan, by column index: stages and the support needed after each."""

    stages: tuple[tuple[int, ...], ...]
    need: tuple[int, ...]


@dataclass
class Simulated:
    """Per row: the score of the answer returned, the cost paid, the stage it stopped at."""

    score: np.ndarray
    cost: np.ndarray
    stage: np.ndarray
    calls: np.ndarray


def _winner(
    codes: np.ndarray, weights: np.ndarray, rank: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The weighted vote's representative column and its supporters per row (-1, 0: none).

    Mirrors the one tally: most weight wins, ties go to the answer whose best supporter the
    router scores highest; the representative is that supporter.
    """
    valid = codes >= 0
    same = (codes[:, :, None] == codes[:, None, :]) & valid[:, :, None] & valid[:, None, :]
    votes = (same * weights[None, None, :]).sum(axis=2)
    support = same.sum(axis=2)
    best = np.where(same, rank[None, None, :], -1).max(axis=2)
    votes = np.where(valid, votes, -np.inf)
    top = votes.max(axis=1, keepdims=True)
    key = np.where(votes == top, best, -1)
    lead = key.argmax(axis=1)
    rows = np.arange(len(codes))
    rep_rank = best[rows, lead]
    rep = np.argmax(rank[None, :] == rep_rank[:, None], axis=1)
    has = valid.any(axis=1)
    return np.where(has, rep, -1), np.where(has, support[rows, lead], 0)


def simulate(
    spec: Spec,
    codes: np.ndarray,
    scores: np.ndarray,
    costs: np.ndarray,
    weights: np.ndarray,
    rank: np.ndarray,
) -> Simulated:
    """What the plan does on rows of recorded replies, as the live cascade would.

    ``weights``/``rank`` are per column: the vote weight and the router score's rank (higher
    is preferred). A row with no usable answer after the last stage is routed around to the
    next expert by rank, as the orchestrator does, until one answers.
    """
    n = len(codes)
    score = np.zeros(n)
    cost = np.zeros(n)
    stage_at = np.full(n, len(spec.stages) - 1)
    calls = np.zeros(n, dtype=int)
    done = np.zeros(n, dtype=bool)
    pool: list[int] = []
    rows = np.arange(n)
    last = len(spec.stages) - 1
    for s, stage in enumerate(spec.stages):
        active = ~done
        cost[active] += costs[active][:, list(stage)].sum(axis=1)
        calls[active] += len(stage)
        pool.extend(stage)
        cols = np.array(pool)
        rep, support = _winner(codes[:, cols], weights[cols], rank[cols])
        accept = active & (support >= (spec.need[s] if s < last else 1))
        if s == last:
            accept = active & (rep >= 0)
        chosen = cols[np.clip(rep, 0, None)]
        score[accept] = scores[rows[accept], chosen[accept]]
        stage_at[accept] = s
        done |= accept
    if not done.all():
        tried = set(pool)
        for col in np.argsort(-rank, kind="stable"):
            if done.all():
                break
            if col in tried:
                continue
            active = ~done
            cost[active] += costs[active, col]
            calls[active] += 1
            got = active & (codes[:, col] >= 0)
            score[got] = scores[got, col]
            done |= got
    return Simulated(score, cost, stage_at, calls)


def _front(accuracy: np.ndarray, mean_cost: np.ndarray) -> list[int]:
    """Experts no cheaper expert matches in accuracy, cheapest first."""
    front: list[int] = []
    best = -np.inf
    for j in np.lexsort((-accuracy, mean_cost)):
        if accuracy[j] > best:
            front.append(int(j))
            best = accuracy[j]
    return front


def candidate_specs(
    accuracy: np.ndarray,
    mean_cost: np.ndarray,
    group_accuracy: Sequence[np.ndarray] = (),
    max_strong: int = 7,
    max_pool: int = 8,
) -> list[Spec]:
    """Plans worth scoring: singles, pairs and triples first, then up to two escalations
    (one expert, then another; or two at once).

    Triples come from the experts on the accuracy-per-cost front (overall and of each
    group); escalations go to the most accurate experts, overall and of each group.
    """
    e = len(accuracy)
    by_acc = [int(j) for j in np.argsort(-accuracy, kind="stable")]
    tops = [[int(j) for j in np.argsort(-a, kind="stable")[:3]] for a in group_accuracy]
    strong = list(dict.fromkeys([*by_acc[:3], *itertools.chain(*tops), *by_acc]))[:max_strong]
    fronts = [_front(a, mean_cost) for a in (accuracy, *group_accuracy)]
    pool3 = list(dict.fromkeys([*itertools.chain(*fronts), *by_acc]))[:max_pool]
    firsts: list[tuple[tuple[int, ...], tuple[int, ...]]] = []
    firsts += [((j,), (1,)) for j in range(e)]
    firsts += [(p, (2,)) for p in itertools.combinations(range(e), 2)]
    for t in itertools.combinations(sorted(pool3), 3):
        firsts += [(t, (2,)), (t, (3,))]
    specs: list[Spec] = []
    for first, need in firsts:
        specs.append(Spec((first,), ()))  # one stage: the weighted vote of the first experts
        rest = [j for j in strong if j not in first]
        for a in rest:
            specs.append(Spec((first, (a,)), need))
            for b in rest:
                if b != a:
                    specs.append(Spec((first, (a,), (b,)), (*need, 2)))
                if b > a:  # two strong experts at once, then the vote of all
                    specs.append(Spec((first, (a, b)), need))
    return list(dict.fromkeys(specs))


# ----------------------------------------------------------------------------- choosing


def _accuracy(scores: np.ndarray) -> np.ndarray:
    """Smoothed accuracy per column, (sum + 1) / (n + 2), to the 6 decimals a plan stores."""
    return np.round((np.nansum(scores, axis=0) + 1.0) / (len(scores) + 2.0), 6)


def _rank(accuracy: np.ndarray, experts: Sequence[str]) -> np.ndarray:
    """Router-score rank per column (higher preferred), as :func:`router_scores` orders them."""
    names = np.array([str(e) for e in experts])
    order = np.lexsort((names, -np.round(accuracy, 6)))
    rank = np.empty(len(accuracy))
    rank[order] = np.arange(len(accuracy), 0, -1)
    return rank


@dataclass
class GroupTable:
    """Out-of-fold mean score and cost of every candidate plan on one group's rows."""

    name: str
    n: int
    score: np.ndarray
    cost: np.ndarray
    accuracy: np.ndarray
    """Smoothed accuracy per expert on all the group's train rows (the final plan's)."""
    cost_sq: np.ndarray | None = None
    """Mean squared cost per row of every plan (for the standard error of a mean cost)."""


def cost_error(tables: Sequence[GroupTable], picks: Sequence[int]) -> float:
    """The standard error of the mean cost per row of one plan per group."""
    n = sum(t.n for t in tables)
    var = 0.0
    for t, c in zip(tables, picks, strict=True):
        if t.cost_sq is not None:
            var += t.n * max(0.0, float(t.cost_sq[c] - t.cost[c] ** 2))
    return float(np.sqrt(var) / n)


def _choose(
    tables: Sequence[GroupTable], lam: float, pooled_score: np.ndarray, shrink: float
) -> list[int]:
    out = []
    for t in tables:
        s = (t.n * t.score + shrink * pooled_score) / (t.n + shrink)
        out.append(int(np.argmax(s - lam * t.cost)))
    return out


def _totals(
    tables: Sequence[GroupTable], picks: Sequence[int], pooled_score: np.ndarray, shrink: float
) -> tuple[float, float]:
    n = sum(t.n for t in tables)
    s = sum(
        t.n * (t.n * t.score[c] + shrink * pooled_score[c]) / (t.n + shrink)
        for t, c in zip(tables, picks, strict=True)
    )
    c = sum(t.n * t.cost[p] for t, p in zip(tables, picks, strict=True))
    return float(s / n), float(c / n)


def _lambda_grid(tables: Sequence[GroupTable]) -> np.ndarray:
    spread = max(float(np.max(t.cost) - np.min(t.cost)) for t in tables) or 1.0
    return np.concatenate([[0.0], np.geomspace(1e-4, 1e4, 240) / spread])


@dataclass
class Choice:
    picks: list[int]
    score: float
    cost: float
    met: bool
    lam: float
    curve: list[tuple[float, float]] = field(default_factory=list)
    partial: tuple[int, int, float] | None = None
    """(group, plan, budget left in total cost): the upgrade that fits only on a share of the
    group's queries, for the budget a whole-plan choice leaves unspent."""


def select(
    tables: Sequence[GroupTable],
    *,
    target_cost: float | None,
    target_score: float | None,
    shrink: float = 10.0,
) -> Choice:
    """One plan per group: best mean score within ``target_cost``, or cheapest reaching
    ``target_score``; a Lagrange multiplier over groups, then a greedy fill."""
    n = sum(t.n for t in tables)
    pooled = sum(t.n * t.score for t in tables) / n
    lams = _lambda_grid(tables)
    sweep = []
    for lam in lams:
        picks = _choose(tables, float(lam), pooled, shrink)
        s, c = _totals(tables, picks, pooled, shrink)
        sweep.append((float(lam), picks, s, c))
    curve = sorted({(round(c, 12), round(s, 12)) for _, _, s, c in sweep})
    if target_score is not None:
        ok = [x for x in sweep if x[2] >= target_score - 1e-12]
        met = bool(ok)
        lam, picks, s, c = min(ok, key=lambda x: x[3]) if ok else max(sweep, key=lambda x: x[2])
        return Choice(list(picks), s, c, met, lam, curve)
    assert target_cost is not None
    ok = [x for x in sweep if x[3] <= target_cost + 1e-12]
    met = bool(ok)
    if not ok:
        lam, picks, s, c = min(sweep, key=lambda x: x[3])
        return Choice(list(picks), s, c, False, lam, curve)
    lam, picks, s, c = max(ok, key=lambda x: (x[2], -x[3]))
    picks = list(picks)
    budget = target_cost * n - sum(t.n * t.cost[p] for t, p in zip(tables, picks, strict=True))
    shrunk = [(t.n * t.score + shrink * pooled) / (t.n + shrink) for t in tables]
    while True:  # spend what is left on the upgrade with the best gain per unit of cost
        best: tuple[float, int, int] | None = None
        for g, t in enumerate(tables):
            gain = t.n * (shrunk[g] - shrunk[g][picks[g]])
            extra = t.n * (t.cost - t.cost[picks[g]])
            fits = (gain > 1e-12) & (extra <= budget + 1e-12)
            for c in np.flatnonzero(fits):
                ratio = gain[c] / max(extra[c], 1e-12)
                if best is None or ratio > best[0]:
                    best = (float(ratio), g, int(c))
        if best is None:
            break
        _, g, c = best
        budget -= tables[g].n * (tables[g].cost[c] - tables[g].cost[picks[g]])
        picks[g] = c
    partial: tuple[int, int, float] | None = None
    best_gain = 0.0
    for g, t in enumerate(tables):  # the best upgrade on a share of one group's queries
        gain = t.n * (shrunk[g] - shrunk[g][picks[g]])
        extra = t.n * (t.cost - t.cost[picks[g]])
        for c in np.flatnonzero((gain > 1e-12) & (extra > budget)):
            part = gain[c] * budget / extra[c]
            if part > best_gain:
                best_gain, partial = float(part), (g, int(c), float(budget))
    s, c = _totals(tables, picks, pooled, shrink)
    return Choice(picks, s, c, met, lam, curve, partial)


def _mix_share(
    base: Simulated, alt: Simulated, hashes: np.ndarray, budget: float
) -> tuple[float, float, float]:
    """The share of queries (lowest hashes first) that take ``alt`` within ``budget`` of extra
    total cost; returns (share, extra score, extra cost) summed over the rows."""
    order = np.argsort(hashes)
    extra = np.cumsum((alt.cost - base.cost)[order])
    gains = np.cumsum((alt.score - base.score)[order])
    fits = np.flatnonzero(extra <= budget + 1e-12)
    if not len(fits):
        return 0.0, 0.0, 0.0
    k = int(fits[-1]) + 1
    cut = hashes[order]
    share = 1.0 if k == len(cut) else float((cut[k - 1] + cut[k]) / 2)
    return share, float(gains[k - 1]), float(extra[k - 1])


# ----------------------------------------------------------------------------- training


def _groups(dataset: RoutingDataset, min_task_rows: int) -> list[str]:
    labels = [ex.task or POOLED for ex in dataset.examples]
    counts: dict[str, int] = {}
    for label in labels:
        counts[label] = counts.get(label, 0) + 1
    return [lab if counts[lab] >= min_task_rows else POOLED for lab in labels]


def _plan(
    spec: Spec, experts: Sequence[str], accuracy: np.ndarray, fmt: AnswerFormat, estimate: dict
) -> StagePlan:
    return StagePlan(
        stages=[[experts[j] for j in stage] for stage in spec.stages],
        need=list(spec.need),
        reliability={e: round(float(a), 6) for e, a in zip(experts, accuracy, strict=True)},
        answer_format=fmt,
        estimate=estimate,
    )


def best_single(dataset: RoutingDataset) -> tuple[str, float, float]:
    """The expert with the best mean score on the rows: (name, score, mean cost)."""
    S, C = dataset.scores(), dataset.costs()
    means = np.nanmean(S, axis=0)
    j = int(np.nanargmax(means))
    return dataset.experts[j], float(means[j]), float(C[:, j].mean())


def train_cascade(
    dataset: RoutingDataset,
    *,
    target_cost: float | None = None,
    target_cost_share: float | None = None,
    target_score: float | None = None,
    folds: int = 5,
    seed: int = 0,
    min_task_rows: int = 60,
    shrink: float = 10.0,
    cost_margin: float = 2.0,
) -> tuple[CascadePlan, dict[str, Any]]:
    """Learn a cascade plan from rows with recorded replies; returns it and a summary.

    One target: ``target_cost`` (mean cost per row), ``target_cost_share`` (a share of the
    best single expert's mean cost on these rows) or ``target_score``; without one, half
    the best single expert's cost. A cost target is aimed at ``cost_margin`` standard errors
    of the out-of-fold mean cost below it (0: exactly at it).
    """
    if sum(x is not None for x in (target_cost, target_cost_share, target_score)) > 1:
        raise PolicyError("give one of target_cost, target_cost share (N%) and target_score")
    if not any(ex.responses for ex in dataset.examples):
        raise PolicyError(
            f"{dataset.name}: the rows carry no recorded replies (responses); a cascade is "
            "trained on what the experts answered"
        )
    if not dataset.has_costs:
        raise PolicyError(
            f"{dataset.name}: the rows carry no costs; give --prices FILE (expert -> input/output "
            "price per 1M tokens)"
        )
    experts = list(dataset.experts)
    single, single_score, single_cost = best_single(dataset)
    if target_cost is None and target_score is None:
        target_cost = (0.5 if target_cost_share is None else target_cost_share) * single_cost
    n = len(dataset)
    if folds < 2 or n < 2 * folds:
        raise PolicyError(f"{dataset.name}: {n} rows are too few for {folds}-fold calibration")
    S = np.nan_to_num(dataset.scores(), nan=0.0)
    C = dataset.costs()
    groups = _groups(dataset, min_task_rows)
    formats = infer_formats(dataset, groups, seed=seed)
    labels = np.asarray(groups)
    names = list(dict.fromkeys(groups))
    codes: dict[str, np.ndarray] = {}
    for g in names:
        idx = np.flatnonzero(labels == g)
        codes[g] = _codes([dataset.examples[i] for i in idx], experts, formats[g])
    all_acc = _accuracy(S)
    group_acc = [_accuracy(S[labels == g]) for g in names]
    specs = candidate_specs(all_acc, C.mean(axis=0), group_acc)
    parts = fold_indices(n, folds, seed)
    fold_of = np.empty(n, dtype=int)
    for f, part in enumerate(parts):
        fold_of[part] = f
    tables: list[GroupTable] = []
    for g in names:
        idx = np.flatnonzero(labels == g)
        Sg, Cg, Ag = S[idx], C[idx], codes[g]
        score_sum = np.zeros(len(specs))
        cost_sum = np.zeros(len(specs))
        cost_sq = np.zeros(len(specs))
        for f in range(folds):
            held = fold_of[idx] == f
            if not held.any():
                continue
            train = ~held
            # pooled rows learn from every train row of other folds; a task from its own
            acc = _accuracy(Sg[train]) if train.sum() >= 10 else _accuracy(S[fold_of != f])
            w = np.array([vote_weight(a) for a in acc])
            rank = _rank(acc, experts)
            for k, spec in enumerate(specs):
                sim = simulate(spec, Ag[held], Sg[held], Cg[held], w, rank)
                score_sum[k] += sim.score.sum()
                cost_sum[k] += sim.cost.sum()
                cost_sq[k] += (sim.cost**2).sum()
        tables.append(
            GroupTable(
                g,
                len(idx),
                score_sum / len(idx),
                cost_sum / len(idx),
                _accuracy(Sg),
                cost_sq / len(idx),
            )
        )
    choice = select(tables, target_cost=target_cost, target_score=target_score, shrink=shrink)
    aimed = target_cost
    if target_cost is not None and cost_margin > 0:
        # Aim below the target by the estimate's standard error, so that new rows of the
        # same kind stay within it more often than not.
        aimed = max(0.0, target_cost - cost_margin * cost_error(tables, choice.picks))
        choice = select(tables, target_cost=aimed, target_score=None, shrink=shrink)
        if not choice.met:
            choice = select(tables, target_cost=target_cost, target_score=None, shrink=shrink)
            aimed = target_cost
    plans: dict[str, StagePlan] = {}
    for t, k in zip(tables, choice.picks, strict=True):
        estimate = {"score": float(t.score[k]), "cost": float(t.cost[k]), "n": t.n}
        plans[t.name] = _plan(specs[k], experts, t.accuracy, formats[t.name], estimate)
    if choice.partial is not None and target_cost is not None:
        g, k_alt, budget = choice.partial
        t = tables[g]
        idx = np.flatnonzero(labels == t.name)
        w = np.array([vote_weight(a) for a in t.accuracy])
        rank = _rank(t.accuracy, experts)
        args = (codes[t.name], S[idx], C[idx], w, rank)
        base = simulate(specs[choice.picks[g]], *args)
        alt = simulate(specs[k_alt], *args)
        hashes = np.array(
            [query_hash(dataset.examples[i].prompt or dataset.examples[i].id) for i in idx]
        )
        share, gain, extra = _mix_share(base, alt, hashes, budget)
        if share > 0:
            plan = plans[t.name]
            plan.alternative = _plan(specs[k_alt], experts, t.accuracy, formats[t.name], {})
            plan.share = share
            choice.score += gain / n
            choice.cost += extra / n
    if POOLED in plans:
        default = plans.pop(POOLED)
    elif len(plans) == 1:  # one task: any other task gets its plan
        default = next(iter(plans.values()))
    else:  # every task has its own plan: the default, for other tasks, is chosen on all rows
        pooled = sum(t.n * t.score for t in tables) / n
        pooled_cost = sum(t.n * t.cost for t in tables) / n
        k = int(np.argmax(pooled - choice.lam * pooled_cost))
        fmt = formats[names[0]] if len(names) == 1 else AnswerFormat()
        default = _plan(
            specs[k],
            experts,
            all_acc,
            fmt,
            {"score": float(pooled[k]), "cost": float(pooled_cost[k]), "n": n},
        )
    summary = {
        "kind": "cascade",
        "n": n,
        "experts": experts,
        "tasks": {t: p.describe() for t, p in plans.items()},
        "default": default.describe(),
        "candidates": len(specs),
        "best_single": {"expert": single, "score": single_score, "cost": single_cost},
        "target": ({"score": target_score} if target_score is not None else {"cost": target_cost}),
        "estimate": {"score": choice.score, "cost": choice.cost, "met": choice.met},
        "aimed_cost": aimed,
        "source": f"{folds}-fold out-of-fold replays of the training rows",
    }
    plan = CascadePlan(
        experts=experts,
        default=default,
        tasks=plans,
        meta={
            "training": {
                "dataset": dataset.name,
                "split": dataset.split,
                "n": n,
                "sha256": dataset.sha256(),
                "cost_unit": dataset.cost_unit,
                "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
                "seed": seed,
            },
            "calibration": {
                **{k: summary[k] for k in ("target", "estimate", "best_single", "source")},
                "folds": folds,
                "curve": [list(p) for p in choice.curve],
            },
        },
    )
    return plan, summary


__all__ = ["router_scores", "simulate", "train_cascade"]
