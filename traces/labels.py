"""Feedback labels: scores attached to a finished run or step, kept beside its trace.

Labels live in ``<dir>/<run_id>.labels.jsonl`` (append-only, one JSON line per label); the
trace itself is never rewritten. The latest label for a run or step wins.

What a label means for attribution, replay and export (:func:`step_references`):

* a **step label** (``step=N``) scores that step's recorded answer;
* a **run label** (no step) scores the run's final answer, which is the answer of its last
  answered step, so it applies to that step; other steps fall back to agreement;
* a label may carry ``expected`` (the correct answer): then any answer is scored 1 when it
  equals the expected one (after the aggregator's own normalisation) and 0 otherwise;
* without ``expected``, an answer equal to the labelled one gets the label's score, a usable
  but different answer gets 0 when the label's score is >= 0.5 (the labelled answer is right,
  so a different one is wrong) and is *unknown* otherwise;
* an unlabelled step is scored by **agreement**: 1 for an answer equal to the step's recorded
  winning answer, else 0.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from expertgraph.core.errors import TraceCorruptionError, TraceError
from expertgraph.core.types import Step
from expertgraph.traces.redact import Redactor
from expertgraph.traces.store import (
    DEFAULT_TRACE_DIR,
    LABELS_SUFFIX,
    RunTrace,
    TraceStore,
    append_line,
    iter_lines,
    load_run,
)

LABEL_VERSION = 1


class Label(BaseModel):
    """One piece of feedback on a run (``step`` None) or on one step of it."""

    model_config = ConfigDict(extra="forbid")

    v: int = LABEL_VERSION
    type: Literal["label"] = "label"
    run_id: str
    step: int | None = Field(None, ge=0)
    score: float
    """Quality of the recorded answer: 1 correct, 0 wrong, or anything graded in between."""
    expected: str | None = None
    """The correct answer, when known; makes every candidate answer scorable."""
    note: str = ""
    source: str = "user"
    ts: float = Field(default_factory=time.time)

    @field_validator("score")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("a label score must be a finite number")
        return value


class LabelStore:
    """The labels of the runs in one trace directory."""

    def __init__(self, directory: str | Path = DEFAULT_TRACE_DIR, *, redact: bool = True) -> None:
        self.directory = Path(directory)
        self.traces = TraceStore(self.directory, index=False)
        self.redact = redact

    def path_for(self, run_id: str) -> Path:
        return self.traces.path_for(run_id).with_name(f"{run_id}{LABELS_SUFFIX}")

    def add(
        self,
        run_id: str,
        score: float,
        *,
        step: int | None = None,
        expected: str | None = None,
        note: str = "",
        source: str = "user",
    ) -> Label:
        """Attach a label to a finished run (or one of its steps) and return it."""
        trace = load_run(self.traces.resolve(run_id))
        run_id = trace.run_id
        if trace.end is None:
            raise TraceError(
                f"run {run_id!r} has not finished (no run_end record); label it once it ends"
            )
        if step is not None:
            known = [s.index for s in trace.steps()]
            if step not in known:
                raise TraceError(f"run {run_id!r} has no step {step}; its steps are {known}")
        try:
            label = Label(
                run_id=run_id, step=step, score=score, expected=expected, note=note, source=source
            )
        except ValidationError as exc:
            raise TraceError(f"invalid label: {exc.errors()[0]['msg']}") from None
        data = label.model_dump(mode="json")
        if self.redact:
            data = Redactor().data(data)
        path = self.path_for(run_id)
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            append_line(fd, path, json.dumps(data, ensure_ascii=False).encode())
        finally:
            os.close(fd)
        if self.traces.index:
            try:
                from expertgraph.traces.index import TraceIndex

                TraceIndex(self.directory).index_labels(run_id)
            except TraceError:
                raise
            except Exception:  # noqa: BLE001 - the index is rebuilt by its next sync
                pass
        return label

    def load(self, run_id: str) -> list[Label]:
        """All labels of a run, oldest first (an unterminated last line is skipped)."""
        path = self.path_for(run_id)
        if not path.exists():
            return []
        labels = []
        for number, raw in iter_lines(path):
            try:
                labels.append(Label.model_validate_json(raw))
            except ValidationError as exc:
                raise TraceCorruptionError(
                    str(exc).splitlines()[0], path=str(path), line=number
                ) from exc
        return labels

    def latest(self, run_id: str) -> dict[int | None, Label]:
        """The label in force per step (``None`` for the run): the latest one written."""
        out: dict[int | None, Label] = {}
        for label in self.load(run_id):
            out[label.step] = label
        return out


def label_run(
    directory: str | Path,
    run_id: str,
    score: float,
    *,
    step: int | None = None,
    expected: str | None = None,
    note: str = "",
) -> Label:
    """Attach a label to a finished run or step in ``directory`` (Python form of ``traces
    label``)."""
    return LabelStore(directory).add(run_id, score, step=step, expected=expected, note=note)


ValueSource = Literal["label-expected", "label", "agreement"]


@dataclass(frozen=True)
class Reference:
    """How answers of one step are valued (see the module docstring)."""

    source: ValueSource
    answer: str | None
    """The step's recorded winning answer (normalised, as the aggregator returned it)."""
    score: float | None = None
    """The label's score of ``answer`` (label sources only)."""
    expected: str | None = None
    label: Label | None = None

    def value(self, answer: str | None, expected_norm: str | None = None) -> float | None:
        """Value of an answer to this step; None when it cannot be known.

        ``expected_norm`` is ``expected`` after the aggregator's normalisation.
        """
        if answer is None:
            return 0.0
        if self.source == "label-expected":
            target = expected_norm if expected_norm is not None else self.expected
            return 1.0 if answer == target else 0.0
        if self.source == "label":
            assert self.score is not None
            if answer == self.answer:
                return self.score
            return 0.0 if self.score >= 0.5 else None
        return 1.0 if answer == self.answer else 0.0


def step_references(
    trace: RunTrace, labels: dict[int | None, Label] | None = None
) -> dict[int, Reference]:
    """The reference each step's answers are valued against (labels first, else agreement)."""
    labels = labels or {}
    final = trace.final_step() if None in labels else None
    return {step.index: step_reference(step, labels, final) for step in trace.iter_steps()}


def step_reference(
    step: Step, labels: dict[int | None, Label], final: int | None = None
) -> Reference:
    """The reference one step's answers are valued against; ``final`` is the run's final
    step (:meth:`RunTrace.final_step`), which a run label values."""
    answer = step.result.comparable if step.result is not None else None
    label = labels.get(step.index)
    if label is None and step.index == final:
        label = labels.get(None)
    if label is None:
        return Reference("agreement", answer)
    if label.expected is not None:
        return Reference("label-expected", answer, label.score, label.expected, label)
    return Reference("label", answer, label.score, None, label)
