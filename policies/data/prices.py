"""Per-row costs from a price table: expert -> input/output price per 1M tokens.

``expertgraph train/eval --prices FILE`` read a YAML or JSON map
``{expert: {input: USD_PER_1M, output: USD_PER_1M}}`` (a bare number is one price for both).
A row's cost for an expert is ``input_tokens * input + output_tokens * output`` / 1e6, with
the token counts taken, in order, from:

1. ``meta["tokens"][expert]`` = ``{"input": N, "output": M}`` (recorded usage); a bare
   number (``traces export`` records one total per call) is priced at the mean of the two
   prices; 0 (an expert that counts no tokens, e.g. a Python function) counts as absent;
2. an estimate: characters / 4, rounded up -- the input is the prompt as sent
   (``meta["input_chars"]`` when the loader knows it, e.g. ZeroEval's full prompt with its
   fixed instruction, else the row's prompt), the output is the expert's recorded reply.

Rows that already carry a non-zero cost for an expert keep it unless ``override`` is set
(a zero is what an unpriced card records: the table prices it).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from expertgraph.core.errors import DatasetError
from expertgraph.core.types import RoutingExample
from expertgraph.policies.data.dataset import RoutingDataset

CHARS_PER_TOKEN = 4
"""The token estimate when a row records no counts: characters / 4, rounded up."""
PRICE_UNIT = "USD per query (price table per 1M tokens)"


@dataclass(frozen=True)
class Price:
    """An expert's list price in USD per 1M input and output tokens."""

    input: float
    output: float


def _price(value: Any, where: str) -> Price:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return Price(float(value), float(value))
    if isinstance(value, Mapping):
        unknown = sorted(set(value) - {"input", "output"})
        if unknown:
            raise DatasetError(f"{where}: unknown field {unknown[0]!r} (input, output)")
        try:
            price = Price(float(value["input"]), float(value["output"]))
        except KeyError as exc:
            raise DatasetError(f"{where}: missing {exc.args[0]!r}") from None
        except (TypeError, ValueError):
            raise DatasetError(f"{where}: prices must be numbers") from None
        if price.input < 0 or price.output < 0:
            raise DatasetError(f"{where}: prices must be >= 0")
        return price
    raise DatasetError(f"{where}: expected {{input: N, output: M}} or a number")


def load_prices(path: str | Path) -> dict[str, Price]:
    """Read a YAML/JSON price table; a bad entry names the file and the expert."""
    source = Path(path)
    if not source.is_file():
        raise DatasetError(f"{source}: no such price file")
    text = source.read_text(encoding="utf-8")
    try:
        data = json.loads(text) if source.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise DatasetError(f"{source}: cannot parse: {exc}".splitlines()[0]) from None
    if not isinstance(data, Mapping) or not data:
        raise DatasetError(f"{source}: expected a map of expert -> {{input, output}}")
    return {str(name): _price(value, f"{source}: {name}") for name, value in data.items()}


def estimate_tokens(text: str) -> int:
    """Tokens of a text when none were counted: characters / 4, rounded up."""
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def row_tokens(example: RoutingExample, expert: str) -> tuple[int, int]:
    """(input, output) tokens of one expert's reply: recorded counts, else the estimate."""
    recorded = example.meta.get("tokens")
    counts = recorded.get(expert) if isinstance(recorded, Mapping) else None
    if isinstance(counts, Mapping):
        return int(counts.get("input", 0)), int(counts.get("output", 0))
    input_chars = example.meta.get("input_chars")
    prompt_tokens = (
        math.ceil(int(input_chars) / CHARS_PER_TOKEN)
        if isinstance(input_chars, int)
        else estimate_tokens(example.prompt)
    )
    return prompt_tokens, estimate_tokens(example.responses.get(expert, ""))


def apply_prices(
    dataset: RoutingDataset, prices: Mapping[str, Price], *, override: bool = False
) -> RoutingDataset:
    """The dataset with each row's cost per expert computed from ``prices``.

    Every expert of the data needs a price unless every row already has its cost.
    """
    missing = [
        e
        for e in dataset.experts
        if e not in prices and any(e not in ex.costs for ex in dataset.examples)
    ]
    if missing:
        raise DatasetError(
            f"the price table has no price for experts {missing}; it prices {sorted(prices)}"
        )
    rows: list[RoutingExample] = []
    for ex in dataset.examples:
        costs = dict(ex.costs)
        recorded = ex.meta.get("tokens")
        for expert in ex.scores:
            if expert in prices and (override or expert not in costs or not costs[expert]):
                p = prices[expert]
                total = recorded.get(expert) if isinstance(recorded, Mapping) else None
                if isinstance(total, (int, float)) and not isinstance(total, bool) and total > 0:
                    # ``traces export`` records one total per call: priced at the mean price
                    costs[expert] = total * (p.input + p.output) / 2 / 1e6
                    continue
                tokens_in, tokens_out = row_tokens(ex, expert)
                costs[expert] = (tokens_in * p.input + tokens_out * p.output) / 1e6
        rows.append(ex.model_copy(update={"costs": costs}))
    out = dataset.subset(range(0), split=dataset.split)
    out.examples = rows
    out.prices = {}
    out.cost_unit = PRICE_UNIT
    return out
