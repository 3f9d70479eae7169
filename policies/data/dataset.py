"""Routing datasets: one row per prompt with each expert's score (and cost, response, task).

The row type is :class:`~expertgraph.core.types.RoutingExample`, stored as JSONL (one
example per line). :func:`load_dataset` also reads three public layouts as they are
published, so that training and evaluation run on real results without a conversion step:
LLMRouter's RouterDC data (:mod:`~expertgraph.policies.data.llmrouter`), RouteLLM's
evaluation data (:mod:`~expertgraph.policies.data.routellm`) and any ZeroEval-style folder
``result_dirs/<task>/<model>.json`` (:mod:`~expertgraph.policies.data.zeroeval`).
A dataset path may name a subset as ``PATH#SUBSET`` (:func:`split_subset`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import ValidationError

from expertgraph.core.errors import DatasetError
from expertgraph.core.types import RoutingExample

Layout = Literal["jsonl", "llmrouter-dc", "routellm", "zeroeval"]

ROW_COSTS_UNIT = "the rows' own costs (the data records no unit)"
"""The cost unit of rows that carry costs but no unit (routing JSONL, ``traces export``)."""


@dataclass
class RoutingDataset:
    """Routing examples with a fixed order of experts, ready for matrices.

    ``prices`` gives one price per expert when the cost of a row is that price (LLMRouter:
    USD per 1M tokens of the chosen model; RouteLLM: 1 for the strong model, 0 for the weak
    one, so that a mean cost is the share of strong calls). Rows may carry their own costs.
    """

    name: str
    experts: list[str]
    examples: list[RoutingExample]
    split: str = "all"
    prices: dict[str, float] = field(default_factory=dict)
    cost_unit: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.examples)

    @property
    def prompts(self) -> list[str]:
        return [e.prompt for e in self.examples]

    @property
    def tasks(self) -> list[str | None]:
        return [e.task for e in self.examples]

    def scores(self) -> np.ndarray:
        """``(n, E)`` float array of scores; NaN where an expert has no score for a row."""
        out = np.full((len(self.examples), len(self.experts)), np.nan)
        col = {name: j for j, name in enumerate(self.experts)}
        for i, ex in enumerate(self.examples):
            for name, value in ex.scores.items():
                j = col.get(name)
                if j is not None and value is not None:
                    out[i, j] = float(value)
        return out

    def costs(self) -> np.ndarray:
        """``(n, E)`` costs: a row's own cost, else the expert's price, else 0."""
        default = np.array([self.prices.get(n, 0.0) for n in self.experts], dtype=float)
        out = np.tile(default, (len(self.examples), 1))
        col = {name: j for j, name in enumerate(self.experts)}
        for i, ex in enumerate(self.examples):
            for name, value in ex.costs.items():
                j = col.get(name)
                if j is not None:
                    out[i, j] = float(value)
        return out

    @property
    def has_costs(self) -> bool:
        return bool(self.prices) or any(ex.costs for ex in self.examples)

    def subset(self, indices: Iterable[int], split: str | None = None) -> RoutingDataset:
        """The rows at ``indices`` (same experts, prices and metadata)."""
        rows = [self.examples[i] for i in indices]
        return RoutingDataset(
            name=self.name,
            experts=list(self.experts),
            examples=rows,
            split=split or self.split,
            prices=dict(self.prices),
            cost_unit=self.cost_unit,
            meta=dict(self.meta),
        )

    def sha256(self) -> str:
        """A hash of the rows' content (prompt, scores, costs, task) in order.

        Artifacts record it, so a model can be traced back to the exact data it learned from.
        """
        digest = hashlib.sha256()
        digest.update(
            json.dumps({"experts": self.experts, "prices": self.prices}, sort_keys=True).encode()
        )
        for ex in self.examples:
            line = json.dumps(
                {"p": ex.prompt, "s": ex.scores, "c": ex.costs, "t": ex.task}, sort_keys=True
            )
            digest.update(line.encode("utf-8"))
            digest.update(b"\n")
        return digest.hexdigest()

    def save_jsonl(self, path: str | Path) -> Path:
        """Write the rows as routing-format JSONL; expert prices go into each row's costs."""
        rows = []
        for ex in self.examples:
            if self.prices and not ex.costs:
                ex = ex.model_copy(
                    update={"costs": {n: self.prices[n] for n in ex.scores if n in self.prices}}
                )
            rows.append(ex)
        return save_jsonl(rows, path)


# ----------------------------------------------------------------------------- JSONL


def save_jsonl(examples: Iterable[RoutingExample], path: str | Path) -> Path:
    """Write examples as JSONL, one per line."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("w", encoding="utf-8") as handle:
        for ex in examples:
            handle.write(ex.model_dump_json(exclude_defaults=False) + "\n")
    return target


def load_jsonl(path: str | Path) -> list[RoutingExample]:
    """Read routing-format JSONL; a bad line is reported with its number."""
    source = Path(path)
    if not source.is_file():
        raise DatasetError(f"{source}: no such file")
    rows: list[RoutingExample] = []
    with source.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                rows.append(RoutingExample.model_validate_json(line))
            except ValidationError as exc:
                first = exc.errors()[0]
                where = ".".join(str(p) for p in first["loc"]) or "row"
                raise DatasetError(f"{source}:{number}: {where}: {first['msg']}") from None
    if not rows:
        raise DatasetError(f"{source}: no rows")
    return rows


def from_examples(
    examples: Sequence[RoutingExample],
    name: str = "routing",
    *,
    split: str = "all",
    prices: dict[str, float] | None = None,
    cost_unit: str = "",
) -> RoutingDataset:
    """A dataset over the experts that the rows score, in order of first appearance.

    Without ``cost_unit``, rows or prices that carry costs get :data:`ROW_COSTS_UNIT`: the
    costs are real, only their unit is unknown.
    """
    experts: dict[str, None] = {}
    for ex in examples:
        for expert in ex.scores:
            experts.setdefault(expert, None)
    if not experts:
        raise DatasetError(f"{name}: no row scores any expert")
    ds = RoutingDataset(
        name=name,
        experts=list(experts),
        examples=list(examples),
        split=split,
        prices=dict(prices or {}),
        cost_unit=cost_unit,
    )
    if not ds.cost_unit and ds.has_costs:
        ds.cost_unit = ROW_COSTS_UNIT
    return ds


# ----------------------------------------------------------------------------- dispatch


def split_subset(path: str | Path, subset: str | None = None) -> tuple[str, str | None]:
    """``PATH#SUBSET`` -> ``(PATH, SUBSET)``; a path without ``#`` -> ``(PATH, subset)``.

    An explicit ``subset`` wins: the path is then taken whole. The split is at the last ``#``.
    """
    text = str(path)
    if subset is None and "#" in text:
        text, _, subset = text.rpartition("#")
    return text, subset


def detect_layout(path: str | Path) -> Layout:
    """``jsonl``, ``llmrouter-dc``, ``routellm`` or ``zeroeval`` for a dataset path."""
    from expertgraph.policies.data.zeroeval import zeroeval_task_dirs

    p = Path(path)
    if p.is_file():
        return "jsonl"
    if not p.is_dir():
        raise DatasetError(f"{p}: no such file or folder")
    if (p / "data" / "dcrouter_preprocessed").is_dir():
        return "llmrouter-dc"
    if (p / "routellm" / "evals").is_dir() or (p / "mmlu" / "responses").is_dir():
        return "routellm"
    try:
        if zeroeval_task_dirs(p):
            return "zeroeval"
    except OSError:
        pass
    raise DatasetError(
        f"{p}: not a routing dataset (a .jsonl file, LLMRouter's data/dcrouter_preprocessed, "
        "RouteLLM's routellm/evals, or result_dirs/<task>/<model>.json)"
    )


def _load_jsonl_dataset(path: str, split: str | None) -> RoutingDataset:
    rows = load_jsonl(path)
    if split not in (None, "all"):
        picked = [r for r in rows if r.meta.get("split") == split]
        if not picked:
            raise DatasetError(f"{path}: no row has meta.split == {split!r}")
        rows = picked
    return from_examples(rows, name=Path(path).stem, split=split or "all")


def marked_split(path: str | Path, split: str) -> str | None:
    """``split`` when ``path`` is JSONL whose rows mark it in ``meta.split``, else None.

    Commands that train or evaluate on recorded replies default to the rows meant for them
    (train for ``train``, test for ``eval``) when the data says which those are.
    """
    text, _ = split_subset(path)
    if not Path(text).is_file():
        return None
    rows = load_jsonl(text)
    return split if any(r.meta.get("split") == split for r in rows) else None


def load_dataset(
    path: str | Path, *, split: str | None = None, subset: str | None = None
) -> RoutingDataset:
    """Load any supported layout. ``PATH#SUBSET`` is the same as passing ``subset``.

    ``split``: for LLMRouter ``train``/``test``/``dedup`` (default ``train``); for JSONL the
    rows whose ``meta.split`` is that. ``subset``: RouteLLM's benchmark (``mmlu``, ``gsm8k``,
    ``mt-bench``) or a ZeroEval task name.
    """
    text, subset = split_subset(path, subset)
    layout = detect_layout(text)
    if layout == "jsonl":
        return _load_jsonl_dataset(text, split)
    if layout == "llmrouter-dc":
        from expertgraph.policies.data.llmrouter import load_llmrouter_dc

        return load_llmrouter_dc(text, split or "train")
    if layout == "routellm":
        from expertgraph.policies.data.routellm import ROUTELLM_BENCHMARKS, load_routellm

        if subset is None:
            raise DatasetError(
                f"{text}: RouteLLM data needs a benchmark: {', '.join(ROUTELLM_BENCHMARKS)} "
                "(PATH#mmlu)"
            )
        return load_routellm(text, subset)
    from expertgraph.policies.data.zeroeval import load_zeroeval_folder

    return load_zeroeval_folder(text, subset)
