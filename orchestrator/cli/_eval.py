"""``expertgraph eval``: measure a routing policy on a routing dataset against baselines."""

from __future__ import annotations

import argparse
import json
import math
from typing import Any

from expertgraph.core.errors import ConfigError


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "eval",
        help="evaluate a routing policy offline on a routing dataset",
        description="Mean score, mean cost, calls per query and expert mix of a policy, next to "
        "the best single expert, the oracle and random on the same rows; AIQ over a lambda sweep; "
        "APGR and CPT(50%%)/CPT(80%%) on two-expert data.",
    )
    p.add_argument(
        "--data",
        required=True,
        help="dataset path (PATH#SUBSET picks a RouteLLM benchmark or ZeroEval task)",
    )
    p.add_argument(
        "--policy",
        required=True,
        help="trained folder, a kind (knn, mlp, logreg, mf, cluster, task, ensemble) or a baseline "
        "(random, oracle, best-single, cheapest, fixed:<expert>)",
    )
    p.add_argument("--split", default=None, help="LLMRouter: test (default) or dedup")
    p.add_argument(
        "--cv",
        type=int,
        default=None,
        metavar="K",
        help="K-fold cross-validation on the evaluation rows",
    )
    p.add_argument("--lam", type=float, default=None, help="cost weight lambda")
    p.add_argument(
        "--target-cost",
        type=float,
        default=None,
        help="calibrate lambda to this mean cost on the evaluation prompts (labels unused)",
    )
    p.add_argument(
        "--target-share",
        action="append",
        metavar="EXPERT=SHARE",
        help="calibrate per-expert offsets on the evaluation prompts to these shares of calls",
    )
    p.add_argument("--k", type=int, default=1, help="experts per query (top-k)")
    p.add_argument(
        "--aggregator",
        default=None,
        help="replay the rows' recorded replies through this aggregator (majority, ahead-by-k, "
        "...) with --policy all, cascade, random or fixed:A,B",
    )
    p.add_argument(
        "--prices",
        default=None,
        metavar="FILE",
        help="YAML/JSON map expert -> {input, output} USD per 1M tokens (tokens: meta.tokens, "
        "else characters/4)",
    )
    p.add_argument(
        "--param",
        action="append",
        metavar="KEY=VALUE",
        help="hyper-parameter of a kind trained here",
    )
    p.add_argument(
        "--plot", default=None, metavar="PNG", help="write the cost/quality Pareto curve here"
    )
    p.add_argument(
        "--home",
        default=".expertgraph",
        help="home folder (embedding cache under cache/embeddings)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--json", action="store_true", help="print the result as one JSON object on the last line"
    )
    p.set_defaults(func=run)


def _fmt(x: object) -> str:
    return f"{x:.4f}" if isinstance(x, float) else str(x)


def run(args: argparse.Namespace) -> int:
    from expertgraph.orchestrator.cli._train import parse_params, parse_shares
    from expertgraph.policies.learning.evaluate import evaluate

    if args.lam is not None and args.target_cost is not None:
        raise ConfigError("give --lam or --target-cost, not both", field="lam")
    result = evaluate(
        args.data,
        args.policy,
        split=args.split,
        cv=args.cv,
        lam=args.lam,
        target_cost=args.target_cost,
        target_shares=parse_shares(args.target_share),
        k=args.k,
        params=parse_params(args.param),
        home=args.home,
        seed=args.seed,
        plot=args.plot,
        aggregator=args.aggregator,
        prices=args.prices,
    )
    if "escalations" in result:
        return _print_replay(result, args.json)
    b = result["baselines"]
    best = b["best_single"]
    print(
        f"{result['dataset']} ({result['split']}, n={result['n']}), "
        f"cost unit: {result['cost_unit']}"
    )
    print(
        f"  {result['policy']:<24} score {_fmt(result['score'])}  cost {_fmt(result['cost'])}  "
        f"calls/query {_fmt(result['calls_per_query'])}"
        + (f"  lambda {_fmt(result['lam'])}" if "lam" in result else "")
    )
    print(
        f"  {'best single':<24} score {_fmt(best['score'])}  cost {_fmt(best['cost'])}  "
        f"({best['expert']})"
    )
    print(f"  {'oracle':<24} score {_fmt(b['oracle']['score'])}  cost {_fmt(b['oracle']['cost'])}")
    print(f"  {'random':<24} score {_fmt(b['random']['score'])}  cost {_fmt(b['random']['cost'])}")
    print("  mix: " + ", ".join(f"{k} {v:.1%}" for k, v in result["mix"].items()))
    if "aiq" in result:
        print(f"  AIQ {_fmt(result['aiq'])}")
    if "apgr" in result:
        print(
            f"  APGR {_fmt(result['apgr'])}  CPT(50%) {result['cpt50']:.2f}%  "
            f"CPT(80%) {result['cpt80']:.2f}%"
        )
    if "plot" in result:
        print(f"  Pareto plot: {result['plot']}")
    if args.json:
        print(json.dumps(_finite(result)))
    return 0


def _print_replay(result: dict[str, Any], as_json: bool) -> int:
    """A multi-call policy replayed on recorded replies, next to the baselines."""
    b = result["baselines"]
    print(
        f"{result['dataset']} ({result['split']}, n={result['n']}), "
        f"cost unit: {result['cost_unit']}"
    )
    ratio = result.get("cost_vs_best_single")
    print(
        f"  {result['policy']:<24} score {_fmt(result['score'])}  cost {result['cost']:.6g}  "
        f"calls/query {_fmt(result['calls_per_query'])}"
        + (f"  ({ratio:.1%} of best single's cost)" if ratio is not None else "")
    )
    for label, key in (("best single", "best_single"), ("cheapest", "cheapest")):
        row = b[key]
        print(
            f"  {label:<24} score {_fmt(row['score'])}  cost {row['cost']:.6g}  ({row['expert']})"
        )
    for label in ("oracle", "random"):
        print(f"  {label:<24} score {_fmt(b[label]['score'])}  cost {b[label]['cost']:.6g}")
    print("  calls: " + ", ".join(f"{k} {v:.1%}" for k, v in result["mix"].items()))
    stops = result["escalations"]["stopped_at_stage"]
    print("  stopped at stage: " + ", ".join(f"{k} {v:.1%}" for k, v in stops.items()))
    for task, row in (result.get("per_task") or {}).items():
        print(
            f"    {task:<22} n={row['n']:<5} score {row['score']:.4f}  cost {row['cost']:.6g}  "
            f"calls/query {row['calls_per_query']:.2f}"
        )
    if "plot" in result:
        print(f"  Pareto plot: {result['plot']}")
    if as_json:
        print(json.dumps(_finite(result)))
    return 0


def _finite(value: Any) -> Any:
    """NaN/inf (an undefined metric) as null: the JSON line must parse everywhere."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value
