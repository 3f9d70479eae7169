"""``expertgraph collect``: every configured expert answers every prompt -> a routing data set."""

from __future__ import annotations

import argparse
from typing import Any

from expertgraph.orchestrator.cli._batch import (
    add_executor_args,
    finish,
    load_config_for,
    progress_bar,
    report_bad_lines,
    run_on_executor,
)


def _cmd_collect(args: argparse.Namespace) -> int:
    from expertgraph.orchestrator._batch import (
        BadLine,
        acollect,
        check_experts,
        load_scorer,
        read_tasks,
    )

    cfg = load_config_for(args)
    scorer = load_scorer(args.scorer) if args.scorer else None
    asked = [n.strip() for n in (args.experts or "").split(",") if n.strip()]
    configured = [e.name for e in cfg.experts]
    unknown = [n for n in asked if n not in configured]
    if unknown:
        from expertgraph.core.errors import ConfigError

        raise ConfigError(
            f"--experts: unknown {unknown}; configured: {configured}", field="experts"
        )
    experts = asked or configured
    items, bad = read_tasks(args.prompts, extra_keys=("task",))
    plans = [i for i in items if i.task.plan]
    bad = sorted(
        [*bad, *(BadLine(i.line, "collect takes a prompt or messages, not a plan") for i in plans)],
        key=lambda b: b.line,
    )
    items = [i for i in items if not i.task.plan]
    report_bad_lines(args.prompts, bad)

    async def body(orch: Any, executor: Any) -> Any:
        if orch is not None:
            check_experts(orch, experts)
        handle = None
        if executor is not None:

            async def handle(item: Any) -> Any:
                return await executor.collect_one(item, experts, args.scorer)

        with progress_bar(len(items), show=not args.quiet) as bar:
            return await acollect(
                orch,
                items,
                experts=experts,
                out=args.out,
                concurrency=args.concurrency,
                scorer=scorer,
                bad=bad,
                on_result=lambda row: bar.advance(
                    cost=sum(row.costs.values()), failed=bool(row.meta.get("errors"))
                ),
                handle=handle,
            )

    report = run_on_executor(args, cfg, body)
    finish(report.summary, args, f"collect {args.prompts} -> {args.out}")
    return 0 if not bad and report.summary.failed_calls == 0 else 1


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "collect",
        help="ask every configured expert every prompt; write a routing data set",
        description='One prompt per line: {"id"?, "prompt" | "messages", "expected"?, '
        '"task"?}. Writes RoutingExample rows (responses, costs, latencies in meta and, with '
        "an expected answer, scores) for `expertgraph train` and `eval`; resumable like batch.",
    )
    p.add_argument("prompts", help="prompts JSONL")
    add_executor_args(p)
    p.add_argument("--experts", help="comma-separated expert names (default: every expert)")
    p.add_argument(
        "--scorer",
        help="module:function(response, expected) -> score (default: the answer extractor)",
    )
    p.set_defaults(func=_cmd_collect)
