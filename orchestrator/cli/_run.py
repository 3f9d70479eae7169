"""``expertgraph run`` and ``expertgraph experts``."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from expertgraph.core.errors import ConfigError
from expertgraph.core.state import step_answer_format
from expertgraph.core.types import Budget, PlanStep, RunResult, Task
from expertgraph.orchestrator.config.schema import ExpertGraphConfig, load_config, parse_config
from expertgraph.traces.redact import redact_data, redact_text

LOCAL_CONFIG_NAMES = ("expertgraph.yaml", "expertgraph.yml", "expertgraph.toml")


def default_config_text() -> str:
    """The built-in configuration: the bundled local models plus a calculator tool."""
    return resources.files("expertgraph.orchestrator.config").joinpath("default.yaml").read_text()


def resolve_config(path: str | None) -> tuple[ExpertGraphConfig, str]:
    """``--config`` if given, else ``./expertgraph.yaml``, else the built-in default."""
    if path:
        return load_config(path), path
    for name in LOCAL_CONFIG_NAMES:
        if Path(name).is_file():
            return load_config(name), name
    text = default_config_text()
    return parse_config(
        yaml.safe_load(text), path="<built-in default config>", text=text
    ), "<built-in>"


def load_plan(path: str) -> Task:
    """Read a plan file: ``{prompt?, steps: [{instruction, answer_format?, experts?, top_k?}]}``
    or a bare list of steps (strings or mappings)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
        data = yaml.safe_load(text)
    except OSError as exc:
        raise ConfigError(f"cannot read plan {path}: {exc.strerror or exc}", path=path) from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}", path=path) from exc
    if isinstance(data, list):
        data = {"steps": data}
    if not isinstance(data, dict) or "steps" not in data:
        raise ConfigError(f"{path}: a plan needs a 'steps' list", path=path, field="steps")
    steps = [{"instruction": s} if isinstance(s, str) else s for s in data.pop("steps") or []]
    if not steps:
        raise ConfigError(f"{path}: 'steps' is empty", path=path, field="steps")
    try:
        return Task(plan=[PlanStep.model_validate(s) for s in steps], **data)
    except ValidationError as exc:
        problems = [
            f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: "
            + ("unknown field" if e["type"] == "extra_forbidden" else e["msg"])
            for e in exc.errors()
        ]
        raise ConfigError(f"{path}: invalid plan: " + "; ".join(problems), path=path) from None


def _apply_overrides(cfg: ExpertGraphConfig, args: argparse.Namespace) -> ExpertGraphConfig:
    update: dict[str, Any] = {}
    if args.top_k is not None:
        update["top_k"] = args.top_k
    if args.policy:
        update["policy"] = cfg.policy.model_validate({"name": args.policy})
    if args.aggregate:
        options: dict[str, Any] = {"name": args.aggregate}
        if args.k is not None:
            options["k"] = args.k
        update["aggregator"] = cfg.aggregator.model_validate(options)
    elif args.k is not None:
        raise ConfigError("--k needs --aggregate (e.g. --aggregate ahead-by-k --k 2)", field="k")
    budget = cfg.budget.model_dump()
    for key in ("max_steps", "max_cost", "deadline_s"):
        value = getattr(args, key)
        if value is not None:
            budget[key] = value
    update["budget"] = Budget.model_validate(budget)
    if args.trace_dir:
        update["trace"] = cfg.trace.model_copy(update={"dir": args.trace_dir})
    return cfg.model_copy(update=update)


def _short(text: str | None, width: int = 70) -> str:
    # CLI output leaves the process: credentials an answer repeats are redacted like in traces.
    text = " ".join(redact_text(text or "").split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _step_json(result: RunResult) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for s in result.steps:
        answer = None
        if s.result is not None:
            # A free-text step answers in the expert's words, any other by its extracted answer.
            free = step_answer_format(result.task, s.index).kind == "text"
            answer = s.result.output if free else s.result.comparable
        rows.append(
            {
                "step": s.index + 1,
                "instruction": s.instruction,
                "experts": s.decision.experts,
                "scores": {k: round(v, 6) for k, v in s.decision.scores.items()},
                "answer": answer,
            }
        )
    return rows


def _print_result(result: RunResult, console: Any) -> None:
    from rich.table import Table

    table = Table(title="route taken", show_lines=False)
    for column in ("step", "instruction", "routed to", "scores (router)", "votes", "answer"):
        table.add_column(column, overflow="fold")
    for s in result.steps:
        scores = ", ".join(
            f"{n} {v:.2f}" for n, v in sorted(s.decision.scores.items(), key=lambda kv: -kv[1])
        )
        votes = ""
        answer = ""
        if s.result is not None:
            votes = ", ".join(f"{_short(a, 20)}: {v:g}" for a, v in s.result.votes.items())
            if s.result.excluded:
                votes += f" ({len(s.result.excluded)} excluded)"
            answer = s.result.output or "(no usable answer)"
        table.add_row(
            str(s.index + 1),
            _short(s.instruction, 40),
            ", ".join(s.decision.experts),
            scores,
            votes,
            _short(answer, 40),
        )
    console.print(table)
    for s in result.steps:
        console.print(f"[dim]step {s.index + 1} why:[/] {s.decision.rationale}")
    console.print(f"[bold]answer:[/] {redact_text(result.answer or '') or None}")
    console.print(
        f"stop: {result.stop_reason} "
        f"| tokens {result.usage.input_tokens}+{result.usage.output_tokens} "
        f"| cost ${result.usage.cost:.6f} | {result.latency_s:.1f}s | trace {result.trace_path}"
    )


async def _run_with_progress(
    orch: Any,
    task: Task | None,
    console: Any,
    show: bool,
    *,
    run_id: str | None = None,
    resume: bool = False,
) -> RunResult:
    result: RunResult | None = None
    started = time.perf_counter()
    if show:
        console.print(f"[dim]loading {len(orch.experts)} experts…[/]")
    for name, error in (await orch.aload()).items():
        if error is not None:
            console.print(
                f"[yellow]expert {name} did not load; it will be routed around: {error}[/]"
            )
    if show:
        backends = ", ".join(
            f"{e.name}: {e.backend_used}"
            for e in orch.experts.values()
            if getattr(e, "backend_used", None)
        )
        via = f" ({backends})" if backends else ""
        console.print(f"[dim]loaded in {time.perf_counter() - started:.1f}s{via}[/]")
    async for event in orch.astream(task, run_id=run_id, resume=resume):
        if event.node == "end":
            result = event.result
        elif show and event.node == "route" and event.data.get("decision") is not None:
            decision = event.data["decision"]
            console.print(
                f"[cyan]step {event.step + 1}[/] → {', '.join(decision.experts)} "
                f"[dim]({_short(decision.instruction, 50)})[/]"
            )
        elif show and event.node == "aggregate" and event.data.get("steps"):
            step = event.data["steps"][-1]
            text = step.result.output if step.result else None
            console.print(
                f"[green]step {step.index + 1} done[/] in {time.perf_counter() - started:.1f}s: "
                f"{_short(text or '(no usable answer)', 60)}"
            )
    assert result is not None
    return result


def _cmd_run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from expertgraph.orchestrator.orchestrator import Orchestrator

    task: Task | None = None
    if args.resume:
        if args.task or args.plan or args.run_id:
            raise ConfigError(
                "--resume continues the run's own task: give no TASK, --plan or --run-id"
            )
    elif not args.task and not args.plan:
        raise ConfigError("give a TASK or --plan steps.yaml (or --resume RUN_ID)")
    cfg, _ = resolve_config(args.config)
    cfg = _apply_overrides(cfg, args)
    if args.plan:
        task = load_plan(args.plan)
        if args.task:
            task = task.model_copy(update={"prompt": args.task})
    elif args.task:
        task = Task(prompt=args.task)
    orch = Orchestrator.from_config(cfg)
    console = Console(stderr=True)
    show = not args.quiet and (console.is_terminal or bool(args.resume or (task and task.plan)))
    run = _run_with_progress(
        orch,
        task,
        console,
        show,
        run_id=args.resume or args.run_id,
        resume=bool(args.resume),
    )
    result = asyncio.run(run)
    if args.json:
        if not args.quiet:
            _print_result(result, console)
        payload = {
            "answer": result.answer,
            "trace": result.trace_path,
            "cost": result.usage.cost,
            "tokens": result.usage.total_tokens,
            "stop_reason": result.stop_reason,
            "steps": _step_json(result),
        }
        sys.stdout.write(json.dumps(redact_data(payload)) + "\n")
    else:
        _print_result(result, Console())
    return 0 if result.ok else 1


def _cmd_experts(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from expertgraph.core.health import HEALTH
    from expertgraph.orchestrator.config.build import build_expert

    cfg, source = resolve_config(args.config)
    table = Table(title=f"experts ({source})")
    for column in ("name", "kind", "model", "description", "status", "health"):
        table.add_column(column, overflow="fold")
    rows: list[dict[str, Any]] = []

    async def check(expert: Any) -> tuple[str, float, str]:
        started = time.perf_counter()
        gen = await expert.generate(args.probe, max_tokens=8, temperature=0)
        took = time.perf_counter() - started
        HEALTH.end(expert, HEALTH.begin(expert), gen.error)  # the check counts in its health
        if gen.error is not None:
            return "error", took, f"{gen.error.type}: {gen.error.message}"
        return "ok", took, gen.text

    failures = 0
    for ecfg in cfg.experts:
        model = getattr(ecfg, "model", None) or getattr(ecfg, "callable", "")
        status, detail, health, backend = "not checked", "", "", None
        try:
            expert = build_expert(ecfg)
            HEALTH.configure(expert, ecfg.cooldown or cfg.cooldown)
        except Exception as exc:  # noqa: BLE001 - report every expert, not just the first failure
            status, detail = "error", f"cannot build: {exc}"
        else:
            if not args.no_check:
                status, took, detail = asyncio.run(check(expert))
                detail = f"{took:.1f}s: {_short(detail, 120)}"
            health = HEALTH.describe(expert)
            backend = getattr(expert, "backend_used", None)
        failures += status == "error"
        rows.append(
            {
                "name": ecfg.name,
                "kind": ecfg.kind,
                "model": model,
                "backend": backend,
                "status": status,
                "detail": detail,
                "health": health,
            }
        )
        table.add_row(
            ecfg.name,
            ecfg.kind,
            f"{model} ({backend})" if backend else str(model),
            _short(ecfg.card.description, 50),
            f"{status} {detail}".strip(),
            health,
        )
    if args.json:
        sys.stdout.write(json.dumps(redact_data({"config": source, "experts": rows})) + "\n")
    else:
        Console().print(table)
    return 1 if failures else 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    run = sub.add_parser("run", help="run a task (or a plan) through the routed experts")
    run.add_argument("task", nargs="?", help="the task prompt (with --plan: the overall goal)")
    run.add_argument("--plan", help="a YAML plan file with explicit steps")
    run.add_argument(
        "--config", help="config file (default: ./expertgraph.yaml, else the built-in)"
    )
    run.add_argument("--top-k", type=int, dest="top_k", help="experts per step")
    run.add_argument("--policy", help="routing policy name (overrides the config)")
    run.add_argument("--aggregate", help="aggregator name, e.g. majority, ahead-by-k")
    run.add_argument("--k", type=int, help="the k of ahead-by-k voting")
    run.add_argument("--max-steps", type=int, dest="max_steps")
    run.add_argument("--max-cost", type=float, dest="max_cost")
    run.add_argument("--deadline", type=float, dest="deadline_s", help="seconds")
    run.add_argument("--trace-dir", dest="trace_dir")
    run.add_argument("--run-id", dest="run_id", help="the new run's id (default: a fresh one)")
    run.add_argument(
        "--resume",
        metavar="RUN_ID",
        help="continue a killed run from its checkpoint; answered calls are not made again",
    )
    run.add_argument("--json", action="store_true", help="end with one JSON line")
    run.add_argument("--quiet", action="store_true", help="no progress or tables on stderr")
    run.set_defaults(func=_cmd_run)

    experts = sub.add_parser("experts", help="list the configured experts and check each answers")
    experts.add_argument("--config")
    experts.add_argument("--no-check", action="store_true", help="do not load or call the experts")
    experts.add_argument("--probe", default="Say OK.", help="the prompt used to check each expert")
    experts.add_argument("--json", action="store_true")
    experts.set_defaults(func=_cmd_experts)
