"""``expertgraph train``: fit a routing policy on a routing dataset and save the artifact."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import yaml

from expertgraph.core.errors import ConfigError


def parse_params(pairs: list[str] | None) -> dict[str, Any]:
    """``KEY=VALUE`` pairs (values read as YAML: numbers, lists, booleans) -> a dict."""
    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--param {pair!r}: expected KEY=VALUE", field="param")
        out[key] = yaml.safe_load(value)
    return out


def parse_shares(pairs: list[str] | None) -> dict[str, float] | None:
    """``EXPERT=SHARE`` pairs -> a dict (None without any)."""
    if not pairs:
        return None
    out: dict[str, float] = {}
    for pair in pairs:
        name, sep, value = pair.rpartition("=")
        try:
            out[name] = float(value)
        except ValueError:
            name = ""
        if not sep or not name:
            raise ConfigError(
                f"--target-share {pair!r}: expected EXPERT=SHARE", field="target-share"
            )
    return out


def parse_target_cost(text: str | None) -> tuple[float | None, float | None]:
    """``--target-cost``: a mean cost per row (``0.0005``) or a share of the best single
    expert's (``25%``) -> ``(absolute, share)``."""
    if text is None:
        return None, None
    raw = text.strip()
    try:
        if raw.endswith("%"):
            share = float(raw[:-1]) / 100
            if share <= 0:
                raise ValueError
            return None, share
        value = float(raw)
        if value < 0:
            raise ValueError
        return value, None
    except ValueError:
        raise ConfigError(
            f"--target-cost {text!r}: expected a mean cost (0.0005) or a share of the best single "
            "expert's cost (25%)",
            field="target-cost",
        ) from None


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from expertgraph.policies.learning.models.base import MODEL_KINDS

    p = sub.add_parser(
        "train",
        help="train a routing policy on a routing dataset",
        description="Fit a router on routing data (JSONL, LLMRouter, RouteLLM or ZeroEval layout) "
        "and write weights.npz + meta.json to --out. Lambda is calibrated on out-of-fold "
        "predictions.",
    )
    p.add_argument(
        "--data",
        required=True,
        help="dataset path (PATH#SUBSET picks a RouteLLM benchmark or ZeroEval task)",
    )
    p.add_argument(
        "--policy",
        required=True,
        choices=[*MODEL_KINDS, "cascade"],
        help="model kind; cascade: a cascade learned from the rows' recorded replies",
    )
    p.add_argument("--out", required=True, help="artifact folder to write")
    p.add_argument(
        "--split", default=None, help="split to train on (LLMRouter: train, the default)"
    )
    p.add_argument(
        "--param",
        action="append",
        metavar="KEY=VALUE",
        help="hyper-parameter (repeatable), e.g. k=50",
    )
    p.add_argument(
        "--target-cost",
        default=None,
        help="calibrate to this mean cost on held-back rows; cascade: also N%% of the best "
        "single expert's cost (default 50%%)",
    )
    p.add_argument(
        "--target-score",
        type=float,
        default=None,
        help="cascade: the cheapest plan reaching this mean score on held-back rows",
    )
    p.add_argument(
        "--prices",
        default=None,
        metavar="FILE",
        help="YAML/JSON map expert -> {input, output} USD per 1M tokens; rows without token "
        "counts (meta.tokens) are estimated at characters/4",
    )
    p.add_argument("--lam", type=float, default=None, help="store this lambda instead")
    p.add_argument(
        "--target-share",
        action="append",
        metavar="EXPERT=SHARE",
        help="calibrate per-expert offsets so each expert gets this share of calls (repeatable)",
    )
    p.add_argument(
        "--folds", type=int, default=5, help="folds for the out-of-fold calibration (0: none)"
    )
    p.add_argument(
        "--home",
        default=".expertgraph",
        help="home folder (embedding cache under cache/embeddings)",
    )
    p.add_argument(
        "--embedder", default="all-minilm-l6-v2", help="embedder name or local model folder"
    )
    p.add_argument("--threads", type=int, default=None, help="torch threads for embedding")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print a JSON summary as the last line")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from expertgraph.policies.data.dataset import load_dataset
    from expertgraph.policies.embeddings.cache import cached_embedder
    from expertgraph.policies.learning.training import train_router

    if args.lam is not None and args.target_cost is not None:
        raise ConfigError("give --lam or --target-cost, not both", field="lam")
    split = args.split
    if split is None and args.policy == "cascade":
        from expertgraph.policies.data.dataset import marked_split

        split = marked_split(args.data, "train")
    ds = load_dataset(args.data, split=split)
    if args.prices is not None:
        from expertgraph.policies.data.prices import apply_prices, load_prices

        ds = apply_prices(ds, load_prices(args.prices))
    target_cost, target_share = parse_target_cost(args.target_cost)
    if args.policy == "cascade":
        return _train_cascade(args, ds, target_cost, target_share)
    if target_share is not None:
        raise ConfigError(
            "--target-cost N% is for --policy cascade; give a mean cost", field="target-cost"
        )
    if args.target_score is not None:
        raise ConfigError("--target-score is for --policy cascade", field="target-score")
    embedder = cached_embedder(args.embedder, args.home, threads=args.threads)
    router = train_router(
        ds,
        args.policy,
        embedder=embedder,
        params=parse_params(args.param),
        target_cost=target_cost,
        lam=args.lam,
        target_shares=parse_shares(args.target_share),
        folds=args.folds,
        seed=args.seed,
    )
    folder = router.save(Path(args.out))
    summary = {
        "out": str(folder),
        "policy": args.policy,
        "dataset": ds.name,
        "split": ds.split,
        "n": len(ds),
        "experts": router.experts,
        "lam": router.lam,
        "sha256": ds.sha256(),
        "embeddings": {"cached": embedder.hits, "computed": embedder.misses},
    }
    print(
        f"trained {args.policy} on {ds.name} ({ds.split}, {len(ds)} rows, "
        f"{len(router.experts)} experts) -> {folder} (lambda {router.lam:.4g})"
    )
    if args.json:
        print(json.dumps(summary))
    return 0


def _train_cascade(
    args: argparse.Namespace, ds: Any, target_cost: float | None, target_share: float | None
) -> int:
    from expertgraph.policies.learning.cascade_fit import train_cascade

    if args.lam is not None or args.target_share or args.param:
        raise ConfigError(
            "--policy cascade takes --target-cost or --target-score (not --lam, "
            "--target-share, --param)",
            field="policy",
        )
    if target_cost is not None and args.target_score is not None:
        raise ConfigError("give --target-cost or --target-score, not both", field="target-cost")
    plan, summary = train_cascade(
        ds,
        target_cost=target_cost,
        target_cost_share=target_share,
        target_score=args.target_score,
        folds=args.folds,
        seed=args.seed,
    )
    folder = plan.save(Path(args.out))
    summary = {"out": str(folder), "policy": "cascade", "dataset": ds.name, **summary}
    best = summary["best_single"]
    est = summary["estimate"]
    ratio = est["cost"] / best["cost"] if best["cost"] else float("nan")
    print(
        f"trained cascade on {ds.name} ({ds.split}, {len(ds)} rows, {len(plan.experts)} experts) "
        f"-> {folder}"
    )
    print(
        f"  out-of-fold estimate: score {est['score']:.4f} at cost {est['cost']:.6g} "
        f"({ratio:.1%} of best single {best['expert']}: score {best['score']:.4f}, "
        f"cost {best['cost']:.6g}){'' if est['met'] else '  (target NOT met)'}"
    )
    for task, text in summary["tasks"].items():
        print(f"  {task}: {text}")
    print(f"  default: {summary['default']}")
    if args.json:
        print(json.dumps(summary))
    return 0
