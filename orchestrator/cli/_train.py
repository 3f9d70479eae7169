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
    p.add_argument("--policy", required=True, choices=MODEL_KINDS, help="model kind")
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
        type=float,
        default=None,
        help="calibrate lambda to this mean cost on held-back rows",
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
    ds = load_dataset(args.data, split=args.split)
    embedder = cached_embedder(args.embedder, args.home, threads=args.threads)
    router = train_router(
        ds,
        args.policy,
        embedder=embedder,
        params=parse_params(args.param),
        target_cost=args.target_cost,
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
