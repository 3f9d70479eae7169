"""Learned cascades on recorded replies: accuracy against cost, next to the best single model.

Reads a ZeroEval-layout folder (default: the 10-model GSM8K replies in ``../shared/data``)
and a price table (default: ``PRICES.md`` next to it; US$ per 1M tokens). ZeroEval stores no
token counts: input tokens are the full prompt's characters / 4 (the question in ZeroEval's
fixed instruction), output tokens the reply's characters / 4, rounded up
(:mod:`expertgraph.policies.data.prices`).

2-fold cross-fitted like ``benchmarks/voting.py``: questions are split into two seeded
folds; for the questions of one fold, the cascade is trained (``train_cascade``, its own
out-of-fold calibration inside the training fold) on the other fold only, and every method
is replayed on the held fold by the live policy and aggregator code. Methods:

* the hand-made rule: gpt-4o-mini and Llama-3.1-70B, accept when they agree, else
  claude-3-5-sonnet;
* the learned cascade calibrated to 10%, 25% and 50% of the best single model's cost
  (measured on the training fold).

Figures are printed as ratios to the best single model (chosen on all rows, in hindsight)
and the last line is one JSON object
``{"best_single": {...}, "methods": {NAME: {"accuracy", "cost_per_1k", "calls_per_query"}}}``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "zeroeval"

from expertgraph.policies.data.dataset import RoutingDataset, load_dataset  # noqa: E402
from expertgraph.policies.data.prices import Price, apply_prices, load_prices  # noqa: E402
from expertgraph.policies.learning.cascade_fit import best_single, train_cascade  # noqa: E402
from expertgraph.policies.learning.cascade_plan import CascadePlan, StagePlan  # noqa: E402
from expertgraph.policies.learning.replay_eval import replay_rows  # noqa: E402
from expertgraph.policies.routing.cascade import LearnedCascade  # noqa: E402

HAND_RULE = (["gpt-4o-mini", "Llama-3.1-70B"], "claude-3-5-sonnet")
SHARES = (0.10, 0.25, 0.50)
_ROW = re.compile(r"^\|\s*([^|]+?)\s*\|\s*([\d.]+)\s*\|\s*([\d.]+)\s*\|")


def prices_from_markdown(path: Path) -> dict[str, Price]:
    """The ``| model | input | output | ... |`` rows of a PRICES.md table."""
    out: dict[str, Price] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        m = _ROW.match(line)
        if m:
            out[m.group(1)] = Price(float(m.group(2)), float(m.group(3)))
    if not out:
        raise SystemExit(f"{path}: no price rows")
    return out


def _named(experts: list[str], part: str) -> str | None:
    return next((e for e in experts if part.lower() in e.lower()), None)


def hand_plan(ds: RoutingDataset, fmt: Any) -> CascadePlan | None:
    """The hand-made rule, when the data has its three models."""
    first = [_named(ds.experts, p) for p in HAND_RULE[0]]
    last = _named(ds.experts, HAND_RULE[1])
    if None in first or last is None:
        return None
    # The last tier's vote must win a disagreement: it gets the top reliability.
    reliability = {e: (0.99 if e == last else 0.5) for e in ds.experts}
    plan = StagePlan(stages=[first, [last]], need=[2], reliability=reliability, answer_format=fmt)  # type: ignore[list-item]
    return CascadePlan(experts=list(ds.experts), default=plan)


def replay(plan: CascadePlan, ds: RoutingDataset) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    cascade = LearnedCascade(plan)
    report = replay_rows(ds, cascade, cascade.paired_aggregator)
    return (
        np.array([r.score for r in report.rows]),
        np.array([r.cost for r in report.rows]),
        np.array([len(r.called) for r in report.rows], dtype=float),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="ZeroEval-layout folder")
    parser.add_argument("--prices", default=None, help="YAML/JSON price table (default PRICES.md)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--folds", type=int, default=5, help="calibration folds inside training")
    parser.add_argument("--quick", action="store_true", help="the first 200 questions, 3 folds")
    args = parser.parse_args(argv)

    ds = load_dataset(args.data)
    if args.prices:
        table = load_prices(args.prices)
    else:
        md = Path(args.data) / "PRICES.md"
        table = prices_from_markdown(md)
    ds = apply_prices(ds, table)
    if args.quick:
        ds = ds.subset(range(min(200, len(ds))))
        args.folds = 3
    n = len(ds)
    fold = np.zeros(n, dtype=int)
    fold[np.random.default_rng(args.seed).permutation(n)[n // 2 :]] = 1
    single, single_score, single_cost = best_single(ds)
    from expertgraph.policies.learning.cascade_fit import row_format

    fmt = row_format(ds.examples[0])
    methods: dict[str, dict[str, np.ndarray]] = {}

    def put(name: str, idx: np.ndarray, got: tuple[np.ndarray, ...]) -> None:
        slot = methods.setdefault(
            name, {"score": np.zeros(n), "cost": np.zeros(n), "calls": np.zeros(n)}
        )
        slot["score"][idx], slot["cost"][idx], slot["calls"][idx] = got

    for f in (0, 1):
        test = np.flatnonzero(fold == f)
        train = ds.subset(np.flatnonzero(fold != f))
        held = ds.subset(test)
        hand = hand_plan(ds, fmt)
        if hand is not None:
            put("hand-rule", test, replay(hand, held))
        for share in SHARES:
            plan, _ = train_cascade(
                train, target_cost_share=share, folds=args.folds, seed=args.seed
            )
            put(f"learned@{share:.0%}", test, replay(plan, held))
            print(f"fold {f} learned@{share:.0%}: {plan.default.describe()}", file=sys.stderr)

    print(f"{ds.name}: n={n}, 2-fold cross-fitted; cost: est. tokens x list price")
    print(f"  best single {single}: accuracy {single_score:.2%}, ${single_cost * 1000:.3f} per 1k")
    out: dict[str, Any] = {
        "n": n,
        "best_single": {
            "expert": single,
            "accuracy": single_score,
            "cost_per_1k": single_cost * 1000,
        },
        "methods": {},
    }
    for name, slot in methods.items():
        acc, cost, calls = slot["score"].mean(), slot["cost"].mean(), slot["calls"].mean()
        print(
            f"  {name:<14} accuracy {acc:.2%} ({(acc - single_score) * 100:+.2f} pt)  "
            f"cost {cost / single_cost:.1%} of best single  calls/query {calls:.2f}"
        )
        out["methods"][name] = {
            "accuracy": float(acc),
            "cost_per_1k": float(cost * 1000),
            "calls_per_query": float(calls),
            "cost_ratio": float(cost / single_cost),
            "accuracy_gain_pt": float((acc - single_score) * 100),
        }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
