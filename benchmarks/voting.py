"""Voting and fusion over recorded model replies: accuracy against responses used.

Reads a folder laid out like ZeroEval's ``result_dirs/<task>/<model>.json`` (default: the
10-model GSM8K folder in ``../shared/data``), scores every reply with the same answer
extraction the voters use, checks that scorer against ZeroEval's published accuracies,
then runs each aggregator over every question and reports accuracy and the mean number of
responses it used, next to the best single model and the oracle (any model right).

Recorded replies stand in for model calls: each question is one orchestrator step whose
first call is the first model of an order, and every request for more samples
(``StepResult.more``) is served from the record -- the aggregator code is the one a live
run uses (``--engine orchestrator`` even runs every question through the real
Orchestrator graph, with callable experts that return the recorded replies).

Nothing is fitted on the questions it is scored on. Questions are split into two folds
(seeded); for the questions of one fold, everything learned -- each model's reliability
(the weighted vote's log-odds weights), the "strongest first" order when no published
figures exist, each model's typical reply length, whether answers are integers, and the
kNN router -- comes from the other fold only.

* router order: a kNN router over MiniLM question embeddings. For a question, its 32
  nearest questions of the other fold (cosine) predict each model's chance of being right
  (similarity-weighted, shrunk to the model's fold accuracy with prior weight 4); models are
  drawn in that order, and the prediction is the router score.
* medoid: MiniLM embeddings of each full reply (truncated by the model at 256 word
  pieces); label-free, no extra call. Embeddings are cached in ``--cache``.
* red flags (MAKER): a reply is dropped before it votes when it is unparseable, a
  refusal, truncated, over 3x its model's median length, or -- when every gold answer of
  the other fold is an integer -- a non-integer answer (the format the task's answers have).

The last line printed is one JSON object: ``{"n", "best_single", "oracle", "methods"}``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "zeroeval" / "result_dirs" / "gsm"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from expertgraph.core import AggregationContext, Aggregator, Policy  # noqa: E402
from expertgraph.core.types import Decision, StepResult, Task  # noqa: E402
from expertgraph.policies.aggregation.ahead_by_k import AheadByK  # noqa: E402
from expertgraph.policies.aggregation.medoid import MedoidAggregator  # noqa: E402
from expertgraph.policies.aggregation.redflags import RedFlags, typical_lengths  # noqa: E402
from expertgraph.policies.aggregation.replay import recorded, replay_step  # noqa: E402
from expertgraph.policies.aggregation.voting import MajorityVote, WeightedVote  # noqa: E402
from expertgraph.policies.data.zeroeval import (  # noqa: E402
    ZeroEvalSet,
    explain_differences,
    load_zeroeval,
)

KNN_K = 32
KNN_PRIOR = 4.0
LENGTH_RATIO = 3.0
CACHE_CHUNK = 1024


# ---- embeddings, cached on disk ---------------------------------------------------------------


class CachedEmbedder:
    """Wraps an embedder with an ``.npz`` cache keyed by each text's SHA-1 (no pickle)."""

    def __init__(self, inner: Any, cache_dir: Path) -> None:
        self.inner = inner
        self.name = getattr(inner, "name", "embedder")
        self.path = cache_dir / f"embeddings-{re.sub(r'[^A-Za-z0-9_.-]', '_', self.name)}.npz"
        self._vectors: dict[str, np.ndarray] = {}
        if self.path.is_file():
            with np.load(self.path, allow_pickle=False) as data:
                keys, vectors = data["keys"], data["vectors"]
            self._vectors = {str(k): v for k, v in zip(keys, vectors, strict=True)}

    @staticmethod
    def _key(text: str) -> str:
        return hashlib.sha1(text.encode("utf-8")).hexdigest()

    def encode(self, texts: list[str]) -> np.ndarray:
        keys = [self._key(t) for t in texts]
        missing = list(dict.fromkeys(k for k in keys if k not in self._vectors))
        by_key = {k: t for k, t in zip(keys, texts, strict=True)}
        for start in range(0, len(missing), CACHE_CHUNK):
            # Saved chunk by chunk: an interrupted run resumes where it stopped.
            chunk = missing[start : start + CACHE_CHUNK]
            vectors = self.inner.encode([by_key[k] for k in chunk])
            for k, v in zip(chunk, vectors, strict=True):
                self._vectors[k] = np.asarray(v, dtype=np.float32)
            self._save()
            if len(missing) > CACHE_CHUNK:
                done = min(start + CACHE_CHUNK, len(missing))
                print(f"  embedded {done}/{len(missing)}", file=sys.stderr, flush=True)
        if not keys:
            return np.zeros((0, 384), dtype=np.float32)
        return np.stack([self._vectors[k] for k in keys])

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        keys = np.array(list(self._vectors), dtype="<U40")
        vectors = np.stack(list(self._vectors.values())).astype(np.float32)
        tmp = self.path.with_suffix(".tmp.npz")
        np.savez(tmp, keys=keys, vectors=vectors)
        os.replace(tmp, self.path)


def _embedder(cache: Path) -> CachedEmbedder:
    import torch

    from expertgraph.policies.embeddings.embedder import SentenceTransformerEmbedder

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    return CachedEmbedder(SentenceTransformerEmbedder(batch_size=64), cache)


# ---- what each fold learns from the other --------------------------------------------------


@dataclass
class FoldModel:
    """Everything learned from the other fold, used on this fold's questions."""

    reliability: dict[str, float]
    strongest_first: list[str]
    typical_chars: dict[str, float]
    integer_answers: bool


def folds(n: int, seed: int) -> np.ndarray:
    """Fold id (0/1) of each question, from a seeded permutation."""
    fold = np.zeros(n, dtype=int)
    fold[np.random.default_rng(seed).permutation(n)[n // 2 :]] = 1
    return fold


def fit_fold(data: ZeroEvalSet, train: np.ndarray, published_order: list[str] | None) -> FoldModel:
    correct = data.correct[:, train]
    n_train = int(train.sum())
    reliability = {
        m: float((correct[i].sum() + 1) / (n_train + 2)) for i, m in enumerate(data.models)
    }
    measured = sorted(data.models, key=lambda m: -reliability[m])
    idx = np.flatnonzero(train)
    typical = typical_lengths(
        {m: [data.responses[i][q] for q in idx] for i, m in enumerate(data.models)}
    )
    integer = data.kind == "number" and all(re.fullmatch(r"-?\d+", data.gold[q]) for q in idx)
    return FoldModel(reliability, published_order or measured, typical, bool(integer))


def knn_router(
    q_vectors: np.ndarray, data: ZeroEvalSet, fold: np.ndarray, fits: dict[int, FoldModel]
) -> np.ndarray:
    """Predicted chance each model answers each question right, ``(n_questions, n_models)``.

    Cross-fitted: a question's neighbours come from the other fold only.
    """
    pred = np.zeros((data.n, len(data.models)))
    correct = data.correct.T.astype(float)  # (n, models)
    for f in (0, 1):
        test, train = np.flatnonzero(fold == f), np.flatnonzero(fold != f)
        prior = np.array([fits[f].reliability[m] for m in data.models])
        sims = q_vectors[test] @ q_vectors[train].T
        k = min(KNN_K, len(train))
        nearest = np.argsort(-sims, axis=1)[:, :k]
        for row, q in enumerate(test):
            nb = nearest[row]
            w = np.clip(sims[row, nb], 0.0, None)
            pred[q] = (w @ correct[train][nb] + KNN_PRIOR * prior) / (w.sum() + KNN_PRIOR)
    return pred


# ---- running one method ---------------------------------------------------------------------


@dataclass
class Plan:
    """How one method handles one question: the aggregator, the model order, the first call."""

    aggregator: Aggregator
    order: list[str]
    scores: dict[str, float]
    first: list[str]


PlanFn = Callable[[int], Plan]


def _context(data: ZeroEvalSet, q: int, plan: Plan, max_calls: int) -> AggregationContext:
    return AggregationContext(
        task=Task(prompt=data.questions[q] or data.ids[q], answer_format=data.answer_format),
        instruction=data.questions[q] or data.ids[q],
        answer_format=data.answer_format,
        scores=dict(plan.scores),
        order=list(plan.order),
        calls_left=max_calls,
    )


def run_replay(data: ZeroEvalSet, plan_for: PlanFn) -> tuple[list[StepResult], list[int]]:
    """Each question as one step, replies served from the record (the replay engine)."""
    results: list[StepResult] = []
    calls: list[int] = []
    max_calls = len(data.models)
    for q in range(data.n):
        plan = plan_for(q)
        replies = {m: [data.responses[i][q]] for i, m in enumerate(data.models)}
        out = replay_step(
            plan.aggregator,
            _context(data, q, plan, max_calls),
            plan.first,
            recorded(replies),
            max_calls=max_calls,
        )
        results.append(out.result)
        calls.append(out.calls)
    return results, calls


class _ReplayPolicy(Policy):
    """Routes each question to the first model(s) of its plan; scores give the order."""

    name = "replay-order"
    blocking = False

    def __init__(self, plans: dict[str, Plan]) -> None:
        self.plans = plans

    def decide(self, state: Any) -> Decision:
        if state.steps:
            return Decision(action="finish", policy=self.name, rationale="one step per question")
        plan = self.plans[state.task.id]
        return Decision(
            instruction=state.task.text,
            experts=list(plan.first),
            scores=dict(plan.scores),
            mode="fixed",
            policy=self.name,
        )


class _PlanAggregator(Aggregator):
    """Hands each run's step to that question's aggregator (plans differ per fold)."""

    name = "per-question"

    def __init__(self, plans: dict[str, Plan]) -> None:
        self.plans = plans

    async def acombine(self, candidates: Any, context: AggregationContext) -> StepResult:
        return await self.plans[context.task.id].aggregator.acombine(candidates, context)

    def combine(self, candidates: Any, context: AggregationContext) -> StepResult:
        return self.plans[context.task.id].aggregator.combine(candidates, context)


def run_orchestrator(data: ZeroEvalSet, plan_for: PlanFn) -> tuple[list[StepResult], list[int]]:
    """Each question as one run of the real Orchestrator graph with recorded-reply experts."""
    from expertgraph.agents.callable import CallableExpert
    from expertgraph.core.types import Budget
    from expertgraph.orchestrator.orchestrator import Orchestrator

    plans = {data.ids[q]: plan_for(q) for q in range(data.n)}
    index = {qid: q for q, qid in enumerate(data.ids)}

    def expert_fn(model: int) -> Callable[..., str]:
        def reply(messages: list[Any]) -> str:
            # The question id rides in the system message; the record answers for that question.
            qid = messages[0].content.removeprefix("question-id: ")
            return data.responses[model][index[qid]]

        return reply

    experts = [CallableExpert(m, expert_fn(i)) for i, m in enumerate(data.models)]
    with tempfile.TemporaryDirectory() as traces:
        orch = Orchestrator(
            experts,
            _ReplayPolicy(plans),
            _PlanAggregator(plans),
            budget=Budget(max_steps=1, max_calls_per_step=len(data.models)),
            trace_dir=traces,
            trace_options={"index": False},  # thousands of throwaway traces: no SQLite index
        )

        async def run_all() -> list[Any]:
            out = []
            for q, qid in enumerate(data.ids):
                task = Task(
                    id=qid,
                    prompt=data.questions[q] or qid,
                    system=f"question-id: {qid}",
                    answer_format=data.answer_format,
                )
                out.append(await orch.arun(task))
            return out

        runs = asyncio.run(run_all())
        orch.trace_store.flush()
    results = [r.steps[0].result for r in runs]
    calls = [len(r.steps[0].generations) for r in runs]
    return results, calls  # type: ignore[return-value]


# ---- the methods ------------------------------------------------------------------------------


def _plain_flags() -> RedFlags:
    # Plain votes exclude only what cannot vote at all (failed or unparseable replies).
    return RedFlags(truncated=False, refusal=False)


def _red_flags(fit: FoldModel) -> RedFlags:
    return RedFlags(
        max_length_ratio=LENGTH_RATIO,
        typical_chars=fit.typical_chars,
        answer_pattern=r"-?\d+" if fit.integer_answers else None,
    )


def methods(
    data: ZeroEvalSet,
    fold: np.ndarray,
    fits: dict[int, FoldModel],
    router: np.ndarray | None,
    medoid_embedder: Any | None,
) -> dict[str, PlanFn]:
    """Every method as a per-question plan builder (one aggregator per fold, built once)."""
    out: dict[str, PlanFn] = {}
    models = data.models

    def strongest(q: int) -> tuple[list[str], dict[str, float]]:
        order = fits[fold[q]].strongest_first
        return order, {m: 1.0 - i / len(order) for i, m in enumerate(order)}

    def routed(q: int) -> tuple[list[str], dict[str, float]]:
        assert router is not None
        scores = {m: float(router[q, i]) for i, m in enumerate(models)}
        return sorted(models, key=lambda m: (-scores[m], models.index(m))), scores

    def all_models(make: Callable[[FoldModel], Aggregator], ordering: Callable[..., Any]) -> PlanFn:
        aggs = {f: make(fits[f]) for f in (0, 1)}

        def plan(q: int) -> Plan:
            order, scores = ordering(q)
            return Plan(aggs[fold[q]], order, scores, list(order))

        return plan

    def drawn(make: Callable[[FoldModel], Aggregator], ordering: Callable[..., Any]) -> PlanFn:
        aggs = {f: make(fits[f]) for f in (0, 1)}

        def plan(q: int) -> Plan:
            order, scores = ordering(q)
            return Plan(aggs[fold[q]], order, scores, order[:1])

        return plan

    out["plurality"] = all_models(lambda f: MajorityVote(_plain_flags()), strongest)
    out["weighted"] = all_models(
        lambda f: WeightedVote("reliability", f.reliability, red_flags=_plain_flags()), strongest
    )
    if router is not None:
        out["weighted-router"] = all_models(
            lambda f: WeightedVote("router", red_flags=_plain_flags()), routed
        )
    if medoid_embedder is not None:
        out["medoid"] = all_models(lambda f: MedoidAggregator(medoid_embedder), strongest)
    orders: dict[str, Callable[..., Any]] = {"strongest-first": strongest}
    if router is not None:
        orders["router"] = routed
    for oname, ordering in orders.items():
        for k in (1, 2, 3):
            out[f"ahead-by-{k}/{oname}"] = drawn(
                lambda f, k=k: AheadByK(
                    k, source="next-expert", resample=False, red_flags=_plain_flags()
                ),
                ordering,
            )
        for k in (1, 2, 3):
            out[f"ahead-by-{k}+redflags/{oname}"] = drawn(
                lambda f, k=k: AheadByK(
                    k, source="next-expert", resample=False, red_flags=_red_flags(f)
                ),
                ordering,
            )
    return out


# ---- report ------------------------------------------------------------------------------------


def scorer_check(data: ZeroEvalSet) -> list[dict[str, Any]]:
    """Each model's accuracy here next to ZeroEval's published figure, with the causes of gaps."""
    rows = []
    acc = data.accuracy()
    assert isinstance(acc, dict)
    for m in sorted(data.models, key=lambda m: -acc[m]):
        published = data.published.get(m)
        row: dict[str, Any] = {"model": m, "accuracy": acc[m], "published": published}
        if published is not None:
            row["diff"] = acc[m] - published
            row["within_0.5"] = abs(acc[m] - published) <= 0.5
            if not row["within_0.5"]:
                row["why"] = explain_differences(data, m)
        rows.append(row)
    return rows


def _why(counts: dict[str, int], n: int) -> str:
    names = {
        "equation": "answer field is a calculation; ZeroEval reads its first number, we its result",
        "no_field": "no answer field; we read boxed/marker/last number",
        "other": "other",
    }
    parts = []
    for key, count in sorted(counts.items(), key=lambda kv: -kv[1]):
        sign, cause = key[0], key[1:]
        parts.append(f"{sign}{count} q ({100 * count / n:.2f} pts): {names.get(cause, cause)}")
    return "; ".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="result_dirs/<task> folder")
    parser.add_argument("--cache", type=Path, default=Path(".expertgraph") / "cache")
    parser.add_argument("--seed", type=int, default=0, help="seed of the 2-fold question split")
    parser.add_argument("--no-embed", action="store_true", help="skip medoid and the kNN router")
    parser.add_argument("--engine", choices=["replay", "orchestrator"], default="replay")
    parser.add_argument("--only", help="regex: run only the methods whose name matches")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    data = load_zeroeval(args.data)
    n = data.n
    print(f"{data.task}: {n} questions x {len(data.models)} models, answers as {data.kind}")

    print("\nScorer check (accuracy %, this scorer vs ZeroEval's published figure):")
    print(f"  {'model':34s} {'ours':>7s} {'publ.':>7s} {'diff':>6s}")
    for row in scorer_check(data):
        pub = row["published"]
        line = f"  {row['model']:34s} {row['accuracy']:7.2f} "
        line += f"{pub:7.2f} {row['diff']:+6.2f}" if pub is not None else f"{'-':>7s} {'':>6s}"
        if pub is not None and not row["within_0.5"]:
            line += f"  <- {_why(row['why'], n)}"
        print(line)

    fold = folds(n, args.seed)
    published = data.published
    published_order = (
        sorted(data.models, key=lambda m: -published[m])
        if all(m in published for m in data.models)
        else None
    )
    fits = {f: fit_fold(data, fold != f, published_order) for f in (0, 1)}
    print(
        "\nStrongest-first order: "
        + ("ZeroEval's published accuracy" if published_order else "accuracy on the other fold")
        + f" ({', '.join(fits[0].strongest_first)})"
    )
    print(
        f"Red flags: unparseable, refusal, truncated, > {LENGTH_RATIO:g}x the model's median "
        f"length (other fold); integer answers expected (other fold's gold): "
        f"{'yes' if fits[0].integer_answers and fits[1].integer_answers else 'no'}"
    )

    router = None
    medoid_embedder = None
    if not args.no_embed:
        embedder = _embedder(args.cache)
        t0 = time.perf_counter()
        q_vectors = embedder.encode([data.questions[q] or data.ids[q] for q in range(n)])
        router = knn_router(q_vectors, data, fold, fits)
        texts = [t for replies in data.responses for t in replies]
        embedder.encode(texts)  # warm the cache in one batched pass
        medoid_embedder = embedder
        print(
            f"Embeddings: MiniLM ({embedder.name}) of {n} questions (kNN router, k={KNN_K}) and "
            f"{len(texts)} full replies (medoid), {time.perf_counter() - t0:.0f}s, "
            f"cache {embedder.path}"
        )

    acc = data.accuracy()
    assert isinstance(acc, dict)
    best_model = max(data.models, key=lambda m: acc[m])
    oracle = data.oracle()
    table = methods(data, fold, fits, router, medoid_embedder)
    if args.only:
        table = {k: v for k, v in table.items() if re.search(args.only, k)}
    engine = run_orchestrator if args.engine == "orchestrator" else run_replay

    figures: dict[str, dict[str, float]] = {}
    print(f"\n  {'method':34s} {'acc %':>7s} {'resp/q':>7s} {'vs best':>8s}")
    print(f"  {'best single: ' + best_model:34s} {acc[best_model]:7.2f} {1.0:7.2f}")
    print(f"  {'oracle (any model right)':34s} {oracle:7.2f} {len(data.models):7.2f}")
    for name, plan_for in table.items():
        results, calls = engine(data, plan_for)
        right = sum(data.is_correct(r.answer, q) for q, r in enumerate(results))
        accuracy = 100.0 * right / n
        per_q = float(np.mean(calls))
        figures[name] = {"accuracy": round(accuracy, 4), "responses_per_question": round(per_q, 4)}
        print(f"  {name:34s} {accuracy:7.2f} {per_q:7.2f} {accuracy - acc[best_model]:+8.2f}")
    print(f"\n({args.engine} engine, {time.perf_counter() - started:.0f}s)")

    summary = {
        "n": n,
        "best_single": {"model": best_model, "accuracy": round(acc[best_model], 4)},
        "oracle": round(oracle, 4),
        "methods": figures,
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
