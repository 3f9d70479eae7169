"""Many tasks through one orchestrator: a JSONL file in, one result line per task out.

A batch reads tasks (one JSON object a line: ``prompt``, ``messages`` or ``plan``, optional
``id`` and ``expected``), runs them with bounded concurrency and appends one result line per
task to the output as it finishes (flushed, under a file lock, a torn last line repaired), so
a killed batch resumes where it stopped: ids with a result line are not run again. A task
that fails is a result with its error. The per-expert limits (``max_concurrency``, ``rpm``,
``tpm``) hold across the batch because every run goes through the same experts.

:func:`run_pool` is the loop both ``batch`` and ``collect`` use, in one process or over Ray
(:mod:`expertgraph.orchestrator._ray`): only the coroutine that handles one item differs.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import statistics
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel, Field, ValidationError

from expertgraph.core.errors import ConfigError
from expertgraph.core.types import (
    AnswerFormat,
    Generation,
    PlanStep,
    RoutingExample,
    RunResult,
    Task,
)

if TYPE_CHECKING:
    from expertgraph.orchestrator.orchestrator import Orchestrator

T = TypeVar("T")
R = TypeVar("R", bound=BaseModel)

_EXTRA_KEYS = ("id", "expected")
_ONE_NUMBER = re.compile(r"^\s*[-+−]?\$?\s*(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?\s*%?\s*$")


@dataclass(frozen=True)
class BatchTask:
    """One good input line: its number, its id, the task and the expected answer (if any)."""

    line: int
    id: str
    task: Task
    expected: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    """Input fields that are not the task's (``task`` label of ``collect``)."""


@dataclass(frozen=True)
class BadLine:
    """An input line that cannot run, with why."""

    line: int
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}"


class BatchResult(BaseModel):
    """One result line of ``expertgraph batch``."""

    id: str
    line: int
    ok: bool
    answer: str | None = None
    expected: str | None = None
    correct: bool | None = None
    """With an expected answer: whether the answer matches it (the project's extractor)."""
    error: str | None = None
    stop_reason: str = ""
    cost: float = 0.0
    input_tokens: int = 0
    output_tokens: int = 0
    latency_s: float = 0.0
    calls: dict[str, int] = Field(default_factory=dict)
    """Expert -> calls made in this task's run."""
    run_id: str | None = None
    trace: str | None = None


class BatchSummary(BaseModel):
    """What a batch did, over every task of the input (results of earlier runs included)."""

    tasks: int
    answered: int
    failed: int
    resumed: int = 0
    """Tasks whose result came from an earlier run of the same ``--out``."""
    bad_lines: list[str] = Field(default_factory=list)
    correct: int | None = None
    """With expected answers: how many matched."""
    cost: float = 0.0
    input_tokens: int = 0
    output_tokens: int = 0
    tokens: int = 0
    p50_latency_s: float = 0.0
    p95_latency_s: float = 0.0
    experts: dict[str, int] = Field(default_factory=dict)
    """Expert -> calls, over every task (the expert mix)."""
    wall_s: float = 0.0

    def same_work(self, other: BatchSummary) -> bool:
        """Whether two summaries record the same outcome (all but timings and resumption)."""
        skip = {"resumed", "p50_latency_s", "p95_latency_s", "wall_s"}
        mine = self.model_dump(exclude=skip)
        theirs = other.model_dump(exclude=skip)
        return abs(mine.pop("cost") - theirs.pop("cost")) < 1e-9 and mine == theirs


@dataclass
class BatchReport:
    """The results of a batch (this run's and the earlier runs' of the same ids) and its
    summary."""

    results: list[BatchResult]
    summary: BatchSummary
    bad: list[BadLine] = field(default_factory=list)


# ---- input -------------------------------------------------------------------------------


def default_id(raw: Mapping[str, Any]) -> str:
    """A task's id when the line names none: a hash of the line's content, stable across
    runs (so a resumed batch recognises the task) and across edits of other lines."""
    text = json.dumps(raw, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return "t" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _task_from(raw: dict[str, Any], task_id: str) -> Task:
    data = {k: v for k, v in raw.items() if k not in _EXTRA_KEYS}
    plan = data.get("plan")
    if isinstance(plan, list):
        data["plan"] = [PlanStep(instruction=s) if isinstance(s, str) else s for s in plan]
    return Task.model_validate({**data, "id": task_id})


def _validation_text(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"])
        message = "unknown field" if error["type"] == "extra_forbidden" else error["msg"]
        message = message.removeprefix("Value error, ")
        parts.append(f"{where}: {message}" if where else message)
    return "; ".join(parts)


def parse_tasks(
    lines: Iterable[str], *, extra_keys: Sequence[str] = ()
) -> tuple[list[BatchTask], list[BadLine]]:
    """Good tasks and bad lines (not JSON, not an object, no prompt, duplicate id, ...).

    ``extra_keys``: fields kept aside in :attr:`BatchTask.extra` rather than given to the task.
    """
    tasks: list[BatchTask] = []
    bad: list[BadLine] = []
    first_line: dict[str, int] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as exc:
            bad.append(BadLine(number, f"not JSON: {exc.msg} (column {exc.colno})"))
            continue
        if not isinstance(raw, dict):
            bad.append(BadLine(number, f"a task is a JSON object, got {type(raw).__name__}"))
            continue
        extra = {k: raw.pop(k) for k in extra_keys if k in raw}
        given = raw.get("id")
        if given is not None and not isinstance(given, (str, int)):
            bad.append(BadLine(number, "id: must be a string or an integer"))
            continue
        task_id = str(given) if given is not None else default_id(raw)
        if task_id in first_line:
            bad.append(
                BadLine(number, f"duplicate id {task_id!r} (first on line {first_line[task_id]})")
            )
            continue
        try:
            task = _task_from(raw, task_id)
        except ValidationError as exc:
            bad.append(BadLine(number, _validation_text(exc)))
            continue
        expected = raw.get("expected")
        first_line[task_id] = number
        tasks.append(
            BatchTask(number, task_id, task, None if expected is None else str(expected), extra)
        )
    return tasks, bad


def read_tasks(
    path: str | Path, *, extra_keys: Sequence[str] = ()
) -> tuple[list[BatchTask], list[BadLine]]:
    """:func:`parse_tasks` of a JSONL file."""
    source = Path(path)
    try:
        with source.open(encoding="utf-8") as handle:
            return parse_tasks(handle, extra_keys=extra_keys)
    except OSError as exc:
        raise ConfigError(f"cannot read {source}: {exc.strerror or exc}", path=str(source)) from exc


def as_batch_tasks(tasks: Iterable[BatchTask | Task | str | Mapping[str, Any]]) -> list[BatchTask]:
    """Live tasks as :class:`BatchTask` (a mapping may carry ``expected``); numbered from 1."""
    out: list[BatchTask] = []
    for number, item in enumerate(tasks, start=1):
        if isinstance(item, BatchTask):
            out.append(item)
        elif isinstance(item, Task):
            out.append(BatchTask(number, item.id, item))
        elif isinstance(item, str):
            task = Task(prompt=item)
            out.append(BatchTask(number, task.id, task))
        else:
            good, bad = parse_tasks([json.dumps(dict(item))])
            if bad:
                raise ConfigError(f"task {number}: {bad[0].reason}", field="tasks")
            out.append(BatchTask(number, good[0].id, good[0].task, good[0].expected))
    ids = [t.id for t in out]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ConfigError(f"duplicate task ids: {duplicates}", field="tasks")
    return out


# ---- scoring -----------------------------------------------------------------------------


def expected_format(fmt: AnswerFormat, expected: str) -> AnswerFormat:
    """The format an answer is compared in: the task's, else number when the expected answer
    is one number, else text."""
    if fmt.kind != "text" or fmt.regex or fmt.json_field:
        return fmt
    return AnswerFormat(kind="number") if _ONE_NUMBER.match(expected) else fmt


def score_answer(text: str | None, expected: str, fmt: AnswerFormat | None = None) -> float:
    """1.0 when ``text`` answers ``expected``, else 0.0, read with the project's extractor.

    Numbers compare by value, choices by letter; a text answer matches when, normalised, it
    equals the expected answer or contains it as a whole phrase ("The capital is Paris." for
    "Paris").
    """
    from expertgraph.policies.aggregation.answers import (
        extract_answer,
        normalize_text,
        numbers_equal,
    )

    if not text or not text.strip():
        return 0.0
    fmt = expected_format(fmt or AnswerFormat(), expected)
    got = extract_answer(text, fmt).answer
    want = extract_answer(expected, fmt).answer or expected
    if got is None:
        return 0.0
    if fmt.kind == "number":
        return float(numbers_equal(got, want))
    got_n, want_n = normalize_text(got), normalize_text(want)
    if not want_n:
        return 0.0
    if fmt.kind == "text" and got_n != want_n:
        return float(re.search(rf"(?<!\w){re.escape(want_n)}(?!\w)", got_n) is not None)
    return float(got_n == want_n)


# ---- results -----------------------------------------------------------------------------


class ResultLog:
    """An append-only JSONL file of result rows keyed by ``id``: what is done, and appending.

    Lines that do not parse (a torn last line of a killed run) are ignored when reading and
    the torn tail is moved aside (``<file>.torn``) before the next append.
    """

    def __init__(self, path: str | Path, model: type[R]) -> None:
        self.path = Path(path)
        self.model = model
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd: int | None = None

    def load(self) -> dict[str, Any]:
        """Id -> the last row recorded for it."""
        rows: dict[str, Any] = {}
        if not self.path.is_file():
            return rows
        with self.path.open("rb") as handle:
            for raw in handle:
                if not raw.endswith(b"\n"):
                    break  # torn by a kill: the task runs again
                try:
                    row = self.model.model_validate_json(raw)
                except ValidationError:
                    continue
                rows[str(row.id)] = row  # type: ignore[attr-defined]
        return rows

    def append(self, row: BaseModel) -> None:
        from expertgraph.traces.store import append_line

        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        append_line(self._fd, self.path, row.model_dump_json().encode("utf-8"))

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def summarize(
    results: Sequence[BatchResult],
    *,
    resumed: int = 0,
    bad: Sequence[BadLine] = (),
    wall_s: float = 0.0,
) -> BatchSummary:
    """The summary of result rows (in any order: it sorts what it counts)."""
    rows = sorted(results, key=lambda r: r.id)
    mix: dict[str, int] = {}
    for row in rows:
        for name, calls in row.calls.items():
            mix[name] = mix.get(name, 0) + calls
    judged = [r.correct for r in rows if r.correct is not None]
    latencies = [r.latency_s for r in rows]
    input_tokens = sum(r.input_tokens for r in rows)
    output_tokens = sum(r.output_tokens for r in rows)
    return BatchSummary(
        tasks=len(rows),
        answered=sum(r.ok for r in rows),
        failed=sum(not r.ok for r in rows),
        resumed=resumed,
        bad_lines=[str(b) for b in bad],
        correct=sum(judged) if judged else None,
        cost=round(sum(r.cost for r in rows), 12),
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        tokens=input_tokens + output_tokens,
        p50_latency_s=_percentile(latencies, 50),
        p95_latency_s=_percentile(latencies, 95),
        experts=dict(sorted(mix.items())),
        wall_s=wall_s,
    )


def result_of(item: BatchTask, run: RunResult) -> BatchResult:
    """The result line of one finished run."""
    calls: dict[str, int] = {}
    for step in run.steps:
        for gen in step.generations:
            calls[gen.expert] = calls.get(gen.expert, 0) + 1
    correct = None
    if item.expected is not None:
        correct = bool(score_answer(run.answer, item.expected, item.task.answer_format))
    return BatchResult(
        id=item.id,
        line=item.line,
        ok=run.ok,
        answer=run.answer,
        expected=item.expected,
        correct=correct,
        error=None if run.ok else (run.stop_reason or "no answer"),
        stop_reason=run.stop_reason,
        cost=run.usage.cost,
        input_tokens=run.usage.input_tokens,
        output_tokens=run.usage.output_tokens,
        latency_s=run.latency_s,
        calls=dict(sorted(calls.items())),
        run_id=run.run_id,
        trace=run.trace_path,
    )


def failed_result(item: BatchTask, exc: BaseException, latency_s: float) -> BatchResult:
    """The result line of a task whose run raised."""
    return BatchResult(
        id=item.id,
        line=item.line,
        ok=False,
        expected=item.expected,
        correct=False if item.expected is not None else None,
        error=f"{type(exc).__name__}: {exc}",
        stop_reason="error",
        latency_s=latency_s,
    )


async def run_task(orch: Orchestrator, item: BatchTask) -> BatchResult:
    """Run one task; an exception becomes the result's error."""
    started = time.perf_counter()
    try:
        run = await orch.arun(item.task)
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # noqa: BLE001 - one task's failure is its result, not the batch's
        return failed_result(item, exc, time.perf_counter() - started)
    return result_of(item, run)


# ---- the loop ----------------------------------------------------------------------------


async def run_pool(
    items: Sequence[T],
    handle: Callable[[T], Awaitable[R]],
    *,
    concurrency: int,
    on_result: Callable[[R], None] | None = None,
) -> list[R]:
    """Handle every item with at most ``concurrency`` at a time; results in finishing order.

    ``on_result`` sees each result as it comes (it writes the line, moves the bar).
    """
    if concurrency < 1:
        raise ConfigError("concurrency must be >= 1", field="concurrency")
    queue: asyncio.Queue[T] = asyncio.Queue()
    for item in items:
        queue.put_nowait(item)
    results: list[R] = []

    async def worker() -> None:
        while True:
            try:
                item = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            result = await handle(item)
            results.append(result)
            if on_result is not None:
                on_result(result)

    await asyncio.gather(*(worker() for _ in range(min(concurrency, len(items)) or 1)))
    return results


async def abatch(
    orch: Orchestrator | None,
    tasks: Iterable[BatchTask | Task | str | Mapping[str, Any]],
    *,
    concurrency: int = 8,
    out: str | Path | None = None,
    retry_failed: bool = False,
    bad: Sequence[BadLine] = (),
    on_result: Callable[[BatchResult], None] | None = None,
    handle: Callable[[BatchTask], Awaitable[BatchResult]] | None = None,
) -> BatchReport:
    """Run many tasks through ``orch``, at most ``concurrency`` at a time.

    ``out``: the results JSONL; ids already there are not run again (with ``retry_failed``,
    those that failed are), and each new result is appended as it finishes. ``handle`` runs
    one task elsewhere (the Ray executor); by default :func:`run_task` on ``orch``. The
    summary covers every given task, earlier results included; ``bad`` lines go into it.
    """
    items = as_batch_tasks(tasks)
    log = ResultLog(out, BatchResult) if out is not None else None
    earlier: dict[str, BatchResult] = log.load() if log is not None else {}
    ids = {item.id for item in items}
    done = {k: v for k, v in earlier.items() if k in ids and (v.ok or not retry_failed)}
    pending = [item for item in items if item.id not in done]

    def record(result: BatchResult) -> None:
        if log is not None:
            log.append(result)
        if on_result is not None:
            on_result(result)

    started = time.perf_counter()
    if handle is None and orch is None:
        raise ConfigError("abatch needs an orchestrator or a handle", field="orch")
    run_one = handle or (lambda item: run_task(orch, item))  # type: ignore[arg-type]
    try:
        fresh = await run_pool(pending, run_one, concurrency=concurrency, on_result=record)
    finally:
        if log is not None:
            log.close()
    results = [*done.values(), *fresh]
    order = {item.id: i for i, item in enumerate(items)}
    results.sort(key=lambda r: order[r.id])
    summary = summarize(results, resumed=len(done), bad=bad, wall_s=time.perf_counter() - started)
    return BatchReport(results=results, summary=summary, bad=list(bad))


# ---- collect -----------------------------------------------------------------------------

Scorer = Callable[[str, str], float]
"""``scorer(response, expected) -> score`` (1/0 or graded)."""


def load_scorer(path: str) -> Scorer:
    """A scorer from ``"package.module:function"``."""
    import importlib

    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise ConfigError(
            f"--scorer must look like 'module:function', got {path!r}", field="scorer"
        )
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"cannot load scorer {path!r}: {exc}", field="scorer") from exc
    if not callable(fn):
        raise ConfigError(f"scorer {path!r} is not callable", field="scorer")
    return fn  # type: ignore[no-any-return]


def check_experts(orch: Orchestrator, names: Sequence[str] | None) -> list[str]:
    """The experts to ask: ``names`` (each must be configured), else all of ``orch``'s."""
    if not names:
        return list(orch.experts)
    unknown = [n for n in names if n not in orch.experts]
    if unknown:
        raise ConfigError(
            f"unknown experts {unknown}; configured: {sorted(orch.experts)}", field="experts"
        )
    return list(dict.fromkeys(names))


async def collect_one(
    orch: Orchestrator,
    item: BatchTask,
    experts: Sequence[str],
    scorer: Scorer | None = None,
) -> RoutingExample:
    """Ask every expert of ``experts`` the task (as a one-step run would ask it) and make a
    routing row: responses, costs, latencies, tokens, errors and, with an expected answer,
    scores (a failed call scores 0)."""
    from expertgraph.orchestrator._prompts import build_messages

    task = item.task
    messages = build_messages(task, [], task.text)
    nodes = orch._graph.nodes  # one copy of the call params rule: the graph's own

    async def ask(name: str) -> Generation:
        return await orch.experts[name].generate(messages, **nodes._params(name, task))

    generations = await asyncio.gather(*(ask(name) for name in experts))
    scores: dict[str, float] = {}
    if item.expected is not None:
        for gen in generations:
            if gen.error is not None:
                scores[gen.expert] = 0.0
            elif scorer is not None:
                scores[gen.expert] = float(scorer(gen.text, item.expected))
            else:
                scores[gen.expert] = score_answer(gen.text, item.expected, task.answer_format)
    # meta.tokens in the shape --prices reads (policies/data/prices.py).
    meta: dict[str, Any] = {
        "latency_s": {g.expert: round(g.latency_s, 6) for g in generations},
        "tokens": {
            g.expert: {"input": g.input_tokens, "output": g.output_tokens} for g in generations
        },
    }
    errors = {g.expert: f"{g.error.type}: {g.error.message}" for g in generations if g.error}
    if errors:
        meta["errors"] = errors
    if item.expected is not None:
        meta["expected"] = item.expected
    label = item.extra.get("task")
    return RoutingExample(
        id=item.id,
        prompt=task.text,
        scores=scores,
        costs={g.expert: g.cost for g in generations},
        responses={g.expert: g.text for g in generations if g.error is None},
        task=None if label is None else str(label),
        meta=meta,
    )


class CollectSummary(BaseModel):
    """What a collection did, over every prompt of the input (earlier rows included)."""

    prompts: int
    resumed: int = 0
    bad_lines: list[str] = Field(default_factory=list)
    calls: int = 0
    failed_calls: int = 0
    cost: float = 0.0
    tokens: int = 0
    p50_latency_s: float = 0.0
    p95_latency_s: float = 0.0
    mean_score: dict[str, float] = Field(default_factory=dict)
    """Expert -> mean score over the rows that have one."""
    wall_s: float = 0.0


def summarize_rows(
    rows: Sequence[RoutingExample],
    *,
    resumed: int = 0,
    bad: Sequence[BadLine] = (),
    wall_s: float = 0.0,
) -> CollectSummary:
    latencies = [v for r in rows for v in (r.meta.get("latency_s") or {}).values()]
    sums: dict[str, list[float]] = {}
    for row in rows:
        for name, value in row.scores.items():
            sums.setdefault(name, []).append(value)
    return CollectSummary(
        prompts=len(rows),
        resumed=resumed,
        bad_lines=[str(b) for b in bad],
        calls=sum(len(r.costs) for r in rows),
        failed_calls=sum(len(r.meta.get("errors") or {}) for r in rows),
        cost=round(sum(sum(r.costs.values()) for r in rows), 12),
        tokens=sum(
            t.get("input", 0) + t.get("output", 0)
            for r in rows
            for t in (r.meta.get("tokens") or {}).values()
        ),
        p50_latency_s=_percentile(latencies, 50),
        p95_latency_s=_percentile(latencies, 95),
        mean_score={k: sum(v) / len(v) for k, v in sorted(sums.items())},
        wall_s=wall_s,
    )


@dataclass
class CollectReport:
    """The rows of a collection (this run's and the earlier runs') and its summary."""

    rows: list[RoutingExample]
    summary: CollectSummary
    bad: list[BadLine] = field(default_factory=list)


async def acollect(
    orch: Orchestrator | None,
    items: Sequence[BatchTask],
    *,
    experts: Sequence[str],
    out: str | Path,
    concurrency: int = 8,
    scorer: Scorer | None = None,
    bad: Sequence[BadLine] = (),
    on_result: Callable[[RoutingExample], None] | None = None,
    handle: Callable[[BatchTask], Awaitable[RoutingExample]] | None = None,
) -> CollectReport:
    """Ask ``experts`` every prompt of ``items``; append one :class:`RoutingExample` a prompt
    to ``out`` as it is done (ids already there are skipped, so a killed run resumes)."""
    log = ResultLog(out, RoutingExample)
    ids = {item.id for item in items}
    done = {k: v for k, v in log.load().items() if k in ids}
    pending = [item for item in items if item.id not in done]
    if handle is None:
        if orch is None:
            raise ConfigError("acollect needs an orchestrator or a handle", field="orch")
        local = orch

        async def handle(item: BatchTask) -> RoutingExample:
            return await collect_one(local, item, experts, scorer)

    def record(row: RoutingExample) -> None:
        log.append(row)
        if on_result is not None:
            on_result(row)

    started = time.perf_counter()
    try:
        fresh = await run_pool(pending, handle, concurrency=concurrency, on_result=record)
    finally:
        log.close()
    order = {item.id: i for i, item in enumerate(items)}
    rows = sorted([*done.values(), *fresh], key=lambda r: order[r.id])
    summary = summarize_rows(rows, resumed=len(done), bad=bad, wall_s=time.perf_counter() - started)
    return CollectReport(rows=rows, summary=summary, bad=list(bad))
