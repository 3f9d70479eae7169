"""Traces as training data: one :class:`RoutingExample` per step whose candidates were recorded.

For each step: ``prompt`` is the step's instruction (what the router saw), and each expert
that answered gets

* ``scores[expert]``: the value of its answer under the step's reference
  (:mod:`expertgraph.traces.labels`): with a label carrying ``expected``, 1 when its answer
  equals the expected one; with a plain label of score ``s``, ``s`` when its answer equals
  the labelled (winning) answer and 0 for a different answer when ``s >= 0.5`` (a different
  answer than a right one is wrong); without a label, agreement: 1 when its answer equals the
  step's winning answer. A failed or unparseable candidate scores 0. Several samples of one
  expert are averaged. An expert whose value is unknown (a different answer than one labelled
  wrong) is left out of ``scores`` and named in ``meta["unscored"]``.
* ``costs[expert]``: the mean cost of its generations in the step (``meta["tokens"]`` has its
  mean token count, for datasets priced by tokens).
* ``responses[expert]``: the text of its first sample.

Experts that were not called in a step are absent from the row: the dataset only holds
what was observed.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from expertgraph.core.types import Generation, RoutingExample, candidate_key
from expertgraph.traces.attribution import (
    AggregatorFactory,
    normalise_expected,
    step_context,
)
from expertgraph.traces.labels import LabelStore, Reference, step_references
from expertgraph.traces.store import RunTrace


@dataclass
class ExportStats:
    runs: int = 0
    examples: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    """Reason -> number of steps (or runs) left out."""
    sources: Counter[str] = field(default_factory=Counter)
    """Value source -> examples (``label-expected``, ``label``, ``agreement``)."""


def _candidate_answers(step_result: Any) -> dict[str, str]:
    """Candidate key -> the answer it voted for, from the recorded supporters."""
    out: dict[str, str] = {}
    for answer, keys in (step_result.supporters or {}).items():
        for key in keys:
            out[key] = answer
    return out


def run_examples(
    trace: RunTrace,
    references: dict[int, Reference],
    *,
    aggregator_factory: AggregatorFactory | None = None,
    labelled_only: bool = False,
    stats: ExportStats | None = None,
) -> list[RoutingExample]:
    """The routing examples of one run (see the module docstring for the scores)."""
    stats = stats if stats is not None else ExportStats()
    start = trace.start
    if not start.capture.content:
        stats.skipped["content not captured"] += 1
        return []
    task_label = start.task.metadata.get("task")
    task = start.task
    examples = []
    for step in trace.iter_steps():
        ref = references.get(step.index)
        if step.result is None or not step.generations or ref is None:
            stats.skipped["no recorded candidates or result"] += 1
            continue
        if labelled_only and ref.source == "agreement":
            stats.skipped["not labelled"] += 1
            continue
        expected_norm = None
        if ref.expected is not None:
            if aggregator_factory is not None:
                try:
                    context = step_context(task, step)
                    expected_norm = normalise_expected(
                        ref.expected, aggregator_factory(step.result.aggregator), context
                    )
                except Exception:  # noqa: BLE001 - an aggregator that cannot be rebuilt here
                    expected_norm = None
            if expected_norm is None:
                expected_norm = ref.expected.strip().lower()
        answers = _candidate_answers(step.result)
        values: dict[str, list[float]] = {}
        unscored: set[str] = set()
        by_expert: dict[str, list[Generation]] = {}
        for g in step.generations:
            by_expert.setdefault(g.expert, []).append(g)
            value = ref.value(answers.get(candidate_key(g)), expected_norm)
            if value is None:
                unscored.add(g.expert)
            else:
                values.setdefault(g.expert, []).append(value)
        scores = {name: sum(v) / len(v) for name, v in values.items()}
        if not scores:
            stats.skipped["no expert could be scored"] += 1
            continue
        costs = {name: sum(g.cost for g in gens) / len(gens) for name, gens in by_expert.items()}
        tokens = {
            name: sum(g.input_tokens + g.output_tokens for g in gens) / len(gens)
            for name, gens in by_expert.items()
        }
        responses = {name: gens[0].text for name, gens in by_expert.items() if gens[0].ok}
        examples.append(
            RoutingExample(
                id=f"{trace.run_id}/{step.index}",
                prompt=step.instruction,
                scores=scores,
                costs=costs,
                responses=responses,
                task=str(task_label) if task_label is not None else None,
                meta={
                    "run_id": trace.run_id,
                    "step": step.index,
                    "score_source": ref.source,
                    "label_score": ref.score,
                    "expected": ref.expected,
                    "answer": ref.answer,
                    "routed": list(step.decision.experts),
                    "policy": step.decision.policy,
                    "tokens": tokens,
                    "unscored": sorted(unscored - set(scores)),
                },
            )
        )
        stats.sources[ref.source] += 1
    stats.runs += 1
    stats.examples += len(examples)
    return examples


def export_dataset(
    directory: str | Path,
    out: str | Path,
    *,
    aggregator_factory: AggregatorFactory | None = None,
    labelled_only: bool = False,
    runs: list[str] | None = None,
) -> ExportStats:
    """Write the routing dataset (RoutingExample JSONL) of a trace directory to ``out``.

    ``aggregator_factory`` normalises labels' expected answers the way the step's aggregator
    normalises candidates; without it they are compared lower-cased and stripped.
    """
    labels = LabelStore(directory)
    stats = ExportStats()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        for run_id in runs if runs is not None else labels.traces.run_ids():
            trace = labels.traces.load(run_id)
            if trace.end is None:
                stats.skipped["run not finished"] += 1
                continue
            refs = step_references(trace, labels.latest(trace.run_id))
            for example in run_examples(
                trace,
                refs,
                aggregator_factory=aggregator_factory,
                labelled_only=labelled_only,
                stats=stats,
            ):
                fh.write(example.model_dump_json() + "\n")
    os.replace(tmp, out)
    return stats
