"""``expertgraph traces ...``: label, attribute, summarise, replay, export, report and export spans.

The trace tools (``expertgraph.traces``) get live aggregators and policies from
``expertgraph.policies.specs``; this module only parses arguments and prints.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml

from expertgraph.core.errors import ConfigError, TraceError
from expertgraph.traces.store import DEFAULT_TRACE_DIR

# ---- arguments ----------------------------------------------------------------------------


def _parse_options(pairs: list[str]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--option {pair!r}: expected KEY=VALUE", field="option")
        options[key] = yaml.safe_load(value)
    return options


def _trace_dir(args: argparse.Namespace, positional: str | None = None) -> Path:
    if positional:
        directory = Path(positional)
    elif getattr(args, "dir", None):
        directory = Path(args.dir)
    elif getattr(args, "config", None):
        from expertgraph.orchestrator.config.schema import load_config

        directory = load_config(Path(args.config)).trace_dir(Path.cwd())
    else:
        directory = Path(DEFAULT_TRACE_DIR)
    if not directory.is_dir():
        raise TraceError(f"no trace directory {directory} (give DIR, --dir or --config)")
    return directory


def _run_dir(args: argparse.Namespace) -> Path:
    """The trace directory of a RUN_ID argument: a trace file's own folder, else as usual."""
    run = Path(args.run_id)
    if run.suffix == ".jsonl" and run.is_file() and not args.dir and not args.config:
        return run.parent
    return _trace_dir(args)


def _console() -> Any:
    from rich.console import Console

    console = Console()
    return console if console.is_terminal else Console(width=180)


def register(subparsers: Any) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--dir", help=f"trace directory (default {DEFAULT_TRACE_DIR}, or the config's)"
    )
    common.add_argument("-c", "--config", help="take the trace directory from this config file")

    parser = subparsers.add_parser(
        "traces",
        help="label, attribute, summarise, replay, export and report traces",
        description=(
            "Work with run traces: the record of who decided what, who answered and who was right."
        ),
    )
    sub = parser.add_subparsers(dest="traces_command", required=True, metavar="SUBCOMMAND")

    p = sub.add_parser("list", parents=[common], help="list the runs of a trace directory")
    p.add_argument("directory", nargs="?", metavar="DIR")
    p.set_defaults(func=_cmd_list)

    p = sub.add_parser("label", parents=[common], help="attach a score to a finished run or step")
    p.add_argument("run_id", metavar="RUN_ID")
    p.add_argument(
        "--score", type=float, required=True, help="1 correct, 0 wrong, or a graded score"
    )
    p.add_argument("--step", type=int, help="label this step instead of the run's final answer")
    p.add_argument("--expected", help="the correct answer (makes every candidate scorable)")
    p.add_argument("--note", default="")
    p.set_defaults(func=_cmd_label)

    p = sub.add_parser(
        "attribute", parents=[common], help="Shapley and leave-one-out value of each expert"
    )
    p.add_argument("run_id", metavar="RUN_ID")
    p.add_argument("--json", action="store_true", help="end with one JSON line")
    p.add_argument(
        "--permutations", type=int, default=2000, help="samples when a step has > 10 experts"
    )
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_attribute)

    p = sub.add_parser(
        "summary", parents=[common], help="per-expert and per-policy tables over all runs"
    )
    p.add_argument("directory", nargs="?", metavar="DIR")
    p.add_argument("--json", action="store_true", help="end with one JSON line of the tables")
    p.add_argument(
        "--session", metavar="ID", help="only the runs of this conversation (its session id)"
    )
    p.set_defaults(func=_cmd_summary)

    p = sub.add_parser(
        "replay", parents=[common], help="counterfactual evaluation of a policy/aggregator"
    )
    p.add_argument("directory", nargs="?", metavar="DIR")
    p.add_argument(
        "--policy",
        help=(
            "a policy name, a .yaml/.json/.toml spec, or a trained folder (expertgraph train --out)"
        ),
    )
    p.add_argument("--aggregator", help="an aggregator name (default: each step's recorded one)")
    p.add_argument(
        "--option", action="append", default=[], metavar="KEY=VALUE", help="policy option"
    )
    p.add_argument("--json", action="store_true", help="end with one JSON line")
    p.set_defaults(func=_cmd_replay)

    p = sub.add_parser(
        "export", parents=[common], help="write the routing dataset (RoutingExample JSONL)"
    )
    p.add_argument("directory", nargs="?", metavar="DIR")
    p.add_argument("--dataset", required=True, metavar="OUT", help="output JSONL file")
    p.add_argument("--labelled-only", action="store_true", help="only steps with a label")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser(
        "report", parents=[common], help="a self-contained HTML report of a run or directory"
    )
    p.add_argument("target", metavar="RUN_ID|DIR")
    p.add_argument("--out", required=True, help="output .html file")
    p.add_argument("--no-attribution", action="store_true", help="skip the Shapley bars")
    p.add_argument("--max-runs", type=int, default=50)
    p.add_argument("--session", metavar="ID", help="with DIR: only the runs of this conversation")
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser(
        "otel",
        parents=[common],
        help="export a run as OpenTelemetry spans (OTLP/JSON file and/or OTLP/HTTP)",
    )
    p.add_argument("run_id", metavar="RUN_ID")
    p.add_argument("--out", help="write OTLP/JSON here")
    p.add_argument("--endpoint", help="also send to this OTLP/HTTP backend (.../v1/traces)")
    p.add_argument("--header", action="append", default=[], metavar="KEY=VALUE")
    p.set_defaults(func=_cmd_otel)

    p = sub.add_parser("index", parents=[common], help="update (or --rebuild) the SQLite index")
    p.add_argument("directory", nargs="?", metavar="DIR")
    p.add_argument("--rebuild", action="store_true")
    p.set_defaults(func=_cmd_index)


# ---- handlers -----------------------------------------------------------------------------


def _cmd_list(args: argparse.Namespace) -> int:
    from expertgraph.traces.analysis import _fmt, summarize

    directory = _trace_dir(args, args.directory)
    runs = summarize(directory).runs
    for row in runs.itertuples(index=False):
        print(
            f"{row.run_id}\t{row.policy}\tsteps={row.steps}\tcost={_fmt(row.cost)}\tlabel={_fmt(row.label)}\t{row.stop_reason}"
        )
    return 0


def _cmd_label(args: argparse.Namespace) -> int:
    from expertgraph.traces.labels import LabelStore

    label = LabelStore(_run_dir(args)).add(
        args.run_id, args.score, step=args.step, expected=args.expected, note=args.note
    )
    where = f"step {label.step}" if label.step is not None else "run"
    print(f"labelled {label.run_id} ({where}) score={label.score:g}")
    return 0


def _cmd_attribute(args: argparse.Namespace) -> int:
    from rich.table import Table

    from expertgraph.traces.labels import LabelStore

    store = LabelStore(_run_dir(args))
    trace = store.traces.load(args.run_id)
    from expertgraph.policies.specs import attribute_recorded

    result = attribute_recorded(
        trace, store.latest(trace.run_id), permutations=args.permutations, seed=args.seed
    )
    console = _console()
    for step in result.steps:
        table = Table(
            title=(
                f"step {step.step}: v(all)={step.result.v_all:g} v(none)={step.result.v_none:g} "
                f"value={step.value_source} method={step.result.method}"
                + (f" samples={step.result.samples}" if step.result.samples else "")
            )
        )
        table.add_column("expert")
        table.add_column("shapley", justify="right")
        table.add_column("leave-one-out", justify="right")
        for name in sorted(step.result.shapley):
            table.add_row(
                name, f"{step.result.shapley[name]:.6g}", f"{step.result.leave_one_out[name]:.6g}"
            )
        console.print(table)
    for index, reason in result.skipped.items():
        console.print(f"step {index}: skipped ({reason})")
    run_table = Table(title=f"run {result.run_id}: Shapley value summed over steps")
    run_table.add_column("expert")
    run_table.add_column("shapley", justify="right")
    for name, value in sorted(result.run_shapley.items(), key=lambda kv: -kv[1]):
        run_table.add_row(name, f"{value:.6g}")
    console.print(run_table)
    if args.json:
        sys.stdout.flush()
        print(json.dumps(result.to_json()))
    return 0


def _cmd_summary(args: argparse.Namespace) -> int:
    from expertgraph.traces.analysis import print_summary, summarize

    summary = summarize(_trace_dir(args, args.directory), session=args.session)
    print_summary(summary, _console())
    if args.json:
        sys.stdout.flush()
        payload = {
            "experts": json.loads(summary.experts.to_json(orient="records")),
            "policies": json.loads(summary.policies.to_json(orient="records")),
            "runs": len(summary.runs),
        }
        print(json.dumps(payload))
    return 0


def _cmd_replay(args: argparse.Namespace) -> int:
    from expertgraph.policies.specs import (
        aggregator_factory,
        build_replay_targets,
        recorded_experts,
    )
    from expertgraph.traces.replay import replay

    directory = _trace_dir(args, args.directory)
    policy, aggregator = build_replay_targets(
        args.policy, args.aggregator, _parse_options(args.option), recorded_experts(directory)
    )
    report = replay(
        directory,
        aggregator_factory=aggregator_factory(None),
        policy=policy,
        aggregator=aggregator,
    )
    data = report.to_json()

    def fmt(value: Any) -> str:
        return "-" if value is None else f"{value:.4g}"

    print(f"replay of policy {data['policy']} with aggregator {data['aggregator']} on {directory}")
    print(
        f"  steps: {data['steps']}, evaluated: {data['evaluated']}, "
        f"could not evaluate: {data['unevaluable_share']:.1%}"
    )
    for reason, count in sorted(data["not_evaluable"].items()):
        print(f"    {count} x {reason}")
    print(
        f"  estimated score: {fmt(data['mean_score'])}  "
        f"(recorded: {fmt(data['baseline_mean_score'])})"
    )
    print(
        f"  estimated cost per step: {fmt(data['mean_cost'])}  "
        f"(recorded: {fmt(data['baseline_mean_cost'])})"
    )
    print(
        f"  values from: {data['value_sources'] or '-'}; unknown values: {data['unknown_values']}"
    )
    if args.json:
        print(json.dumps(data))
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from expertgraph.policies.specs import aggregator_factory
    from expertgraph.traces.export import export_dataset

    directory = _trace_dir(args, args.directory)
    stats = export_dataset(
        directory,
        args.dataset,
        aggregator_factory=aggregator_factory(None),
        labelled_only=args.labelled_only,
    )
    print(f"wrote {stats.examples} examples from {stats.runs} runs to {args.dataset}")
    if stats.sources:
        print("  scores from: " + ", ".join(f"{k} {v}" for k, v in sorted(stats.sources.items())))
    for reason, count in sorted(stats.skipped.items()):
        print(f"  skipped {count}: {reason}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from expertgraph.traces.report import write_report

    target = Path(args.target)
    if target.is_dir():
        directory = _trace_dir(args, args.target)
    elif target.suffix == ".jsonl" and target.is_file() and not args.dir and not args.config:
        directory = target.parent
    else:
        directory = _trace_dir(args)
    from expertgraph.policies.specs import attribute_recorded

    attribute = None if args.no_attribution else attribute_recorded
    count = write_report(
        directory,
        args.target,
        args.out,
        attribute=attribute,
        max_runs=args.max_runs,
        session=args.session,
    )
    print(f"wrote {args.out} ({count} run(s))")
    return 0


def _cmd_otel(args: argparse.Namespace) -> int:
    from expertgraph.traces.otel import build_spans, export_spans, spans_to_otlp
    from expertgraph.traces.store import TraceStore

    if not args.out and not args.endpoint:
        raise TraceError("traces otel needs --out FILE and/or --endpoint URL")
    headers = {}
    for header in args.header:
        key, sep, value = header.partition("=")
        if not sep or not key.strip():
            raise TraceError(f"--header {header.split('=', 1)[0]!r}: expected KEY=VALUE")
        headers[key.strip()] = value
    trace = TraceStore(_run_dir(args), index=False).load(args.run_id)
    spans = build_spans(trace)
    if args.out:
        payload = spans_to_otlp(spans)
        Path(args.out).write_text(json.dumps(payload, indent=1), encoding="utf-8")
        print(f"wrote {len(spans)} spans to {args.out}")
    if args.endpoint:
        sent = export_spans(spans, args.endpoint, headers=headers)
        print(f"sent {sent} spans to {args.endpoint} (OTLP/HTTP)")
    return 0


def _cmd_index(args: argparse.Namespace) -> int:
    from expertgraph.traces.index import TraceIndex

    index = TraceIndex(_trace_dir(args, args.directory))
    count = index.rebuild() if args.rebuild else index.sync()
    print(f"{'rebuilt' if args.rebuild else 'synced'} {index.path}: {count} file(s) indexed")
    return 0
