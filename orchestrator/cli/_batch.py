"""``expertgraph batch``: many tasks from a JSONL file, one result line each, resumable."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from expertgraph.core.errors import ConfigError
from expertgraph.orchestrator.config.schema import CheckpointConfig, ExpertGraphConfig


def add_executor_args(p: argparse.ArgumentParser) -> None:
    """The options ``batch`` and ``collect`` share: config, concurrency, executor, output."""
    p.add_argument("--out", required=True, help="results JSONL (appended; ids there are skipped)")
    p.add_argument("--config", help="config file (default: ./expertgraph.yaml, else the built-in)")
    p.add_argument("--concurrency", type=int, default=8, help="tasks in flight at once (default 8)")
    p.add_argument(
        "--executor",
        choices=("local", "ray"),
        default="local",
        help="local: this process (default); ray: spread over a Ray cluster's workers",
    )
    p.add_argument("--address", help="Ray: the cluster to join (default: start a local one)")
    p.add_argument("--workers", type=int, default=2, help="Ray: worker processes (default 2)")
    p.add_argument("--trace-dir", dest="trace_dir")
    p.add_argument("--json", action="store_true", help="end with one JSON line (the summary)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or tables on stderr")


def load_config_for(args: argparse.Namespace) -> ExpertGraphConfig:
    from expertgraph.orchestrator.cli._run import resolve_config

    cfg, _ = resolve_config(args.config)
    # A batch resumes by task id from its results file; a task's run, under a fresh run id,
    # could never be resumed from a checkpoint, so saving one would only cost time.
    cfg = cfg.model_copy(update={"checkpoint": CheckpointConfig(backend="none")})
    if args.trace_dir:
        cfg = cfg.model_copy(update={"trace": cfg.trace.model_copy(update={"dir": args.trace_dir})})
    if args.concurrency < 1:
        raise ConfigError("--concurrency must be >= 1", field="concurrency")
    if args.workers < 1:
        raise ConfigError("--workers must be >= 1", field="workers")
    return cfg


class Bar:
    """A Rich progress bar on stderr: done/total, rate, ETA, spend and errors."""

    def __init__(self, progress: Any, total: int) -> None:
        self._progress = progress
        self._started = time.perf_counter()
        self._spend = 0.0
        self._errors = 0
        self._done = 0
        self._task = None
        if progress is not None:
            self._task = progress.add_task("tasks", total=total, rate=0.0, spend=0.0, errors=0)

    def advance(self, *, cost: float, failed: bool) -> None:
        self._done += 1
        self._spend += cost
        self._errors += failed
        if self._progress is not None:
            rate = self._done / max(time.perf_counter() - self._started, 1e-9)
            self._progress.update(
                self._task, advance=1, rate=rate, spend=self._spend, errors=self._errors
            )


@contextmanager
def progress_bar(total: int, *, show: bool, console: Any = None) -> Iterator[Bar]:
    """A bar on ``console`` (default stderr) when ``show`` and it is a terminal, else none."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    console = console or Console(stderr=True)
    if not show or not console.is_terminal:
        yield Bar(None, total)
        return
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]:.1f}/s"),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        TextColumn("${task.fields[spend]:.4f}"),
        TextColumn("[red]{task.fields[errors]} errors"),
        console=console,
    )
    with progress:
        yield Bar(progress, total)


def report_bad_lines(path: str, bad: list[Any]) -> None:
    for line in bad:
        print(f"expertgraph: {path}:{line.line}: {line.reason}", file=sys.stderr)


def run_on_executor(
    args: argparse.Namespace,
    cfg: ExpertGraphConfig,
    body: Callable[[Any, Any], Any],
) -> Any:
    """Run ``body(orch, executor)`` with a local orchestrator (executor None) or a Ray
    executor (orch None), loading and closing what it opened."""

    async def local() -> Any:
        from expertgraph.orchestrator.orchestrator import Orchestrator

        orch = Orchestrator.from_config(cfg)
        try:
            for name, error in (await orch.aload()).items():
                if error is not None:
                    print(
                        f"expertgraph: expert {name} did not load; it will be routed around: "
                        f"{error}",
                        file=sys.stderr,
                    )
            return await body(orch, None)
        finally:
            await orch.aclose()

    async def on_ray() -> Any:
        from expertgraph.orchestrator._ray import RayExecutor

        executor = RayExecutor(
            cfg,
            address=args.address,
            workers=args.workers,
            concurrency=args.concurrency,
            base_dir=Path.cwd(),
        )
        try:
            return await body(None, executor)
        finally:
            await executor.aclose()

    return asyncio.run(on_ray() if args.executor == "ray" else local())


def _print_summary(summary: Any, console: Any, title: str) -> None:
    from rich.table import Table

    table = Table(title=title)
    table.add_column("figure")
    table.add_column("value", justify="right")
    for key, value in summary.model_dump().items():
        if isinstance(value, dict):
            for name, inner in value.items():
                table.add_row(f"{key}: {name}", _cell(inner))
        elif isinstance(value, list):
            table.add_row(key, str(len(value)))
        elif value is not None:
            table.add_row(key, _cell(value))
    console.print(table)


def _cell(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def finish(summary: Any, args: argparse.Namespace, title: str) -> None:
    """The summary table (stdout; stderr with --json, unless --quiet) and the JSON line."""
    from rich.console import Console

    if args.json:
        if not args.quiet:
            _print_summary(summary, Console(stderr=True), title)
        sys.stdout.write(json.dumps(summary.model_dump(mode="json")) + "\n")
    else:
        _print_summary(summary, Console(), title)


def _cmd_batch(args: argparse.Namespace) -> int:
    from expertgraph.orchestrator._batch import abatch, read_tasks

    cfg = load_config_for(args)
    tasks, bad = read_tasks(args.tasks)
    report_bad_lines(args.tasks, bad)

    async def body(orch: Any, executor: Any) -> Any:
        with progress_bar(len(tasks), show=not args.quiet) as bar:
            return await abatch(
                orch,
                tasks,
                concurrency=args.concurrency,
                out=args.out,
                retry_failed=args.retry_failed,
                bad=bad,
                on_result=lambda r: bar.advance(cost=r.cost, failed=not r.ok),
                handle=executor.run_task if executor is not None else None,
            )

    report = run_on_executor(args, cfg, body)
    finish(report.summary, args, f"batch {args.tasks} -> {args.out}")
    return 0 if report.summary.failed == 0 and not bad else 1


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "batch",
        help="run every task of a JSONL file; one result line each, resumable",
        description='One task per line: {"id"?, "prompt" | "messages" | "plan", '
        '"expected"?, any Task field}. Results are appended to --out as they finish; '
        "re-running with the same --out skips ids already there.",
    )
    p.add_argument("tasks", help="tasks JSONL")
    add_executor_args(p)
    p.add_argument(
        "--retry-failed", action="store_true", help="run again the ids whose result failed"
    )
    p.set_defaults(func=_cmd_batch)
