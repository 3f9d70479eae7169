"""Across-run analysis from the index: per expert and per policy, as pandas DataFrames.

Columns of :attr:`TraceSummary.experts` (one row per expert):
  routed        steps whose routing decision chose the expert
  calls         expert calls made (extra samples, route-arounds, and its router, fuser or
                judge calls included)
  winning       steps where one of its candidates was in the winning answer
  win_rate      winning / steps it answered in
  router_score  mean score the router gave it, over the call decisions that scored it
  errors        calls that failed after retries;  retries: extra attempts over all calls
  tokens, cost  sums over its calls;  latency_p50_s / latency_p95_s over its calls

Columns of :attr:`TraceSummary.policies` (one row per policy name):
  decisions     routing decisions (call and finish);  finishes: decisions to finish
  mean_experts  experts per call decision
  experts_used  distinct experts it ever chose
  top_expert / top_share   the expert it chose most, and the share of call decisions
                           that included it
  entropy_bits  entropy of the distribution of chosen experts (0: always the same)
  score_spread  mean (max - min) of the router scores within a decision
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from expertgraph.core.errors import TraceError
from expertgraph.traces.index import TraceIndex
from expertgraph.traces.schema import RunStart
from expertgraph.traces.store import DEFAULT_TRACE_DIR, iter_records


@dataclass
class TraceSummary:
    """Summary tables of a trace directory."""

    experts: Any
    """pandas DataFrame, one row per expert."""
    policies: Any
    """pandas DataFrame, one row per policy."""
    runs: Any
    """pandas DataFrame, one row per run (from the index), with its latest run label."""


_RUN_COLUMNS = (
    "run_id",
    "policy",
    "aggregator",
    "steps",
    "calls",
    "cost",
    "latency_s",
    "stop_reason",
    "answer",
    "complete",
)
"""The columns of :attr:`TraceSummary.runs` (then the latest run label)."""


# The columns `traces summary` prints of each run, in order.
_SHOWN_RUN_COLUMNS = (
    "run_id",
    "policy",
    "steps",
    "calls",
    "cost",
    "latency_s",
    "label",
    "stop_reason",
)


def session_runs(runs: Any, session: str, directory: str | Path) -> set[str]:
    """Ids of the indexed runs whose task belongs to ``session`` (``metadata["session"]``,
    which ``expertgraph serve`` sets for the requests of one conversation)."""
    found: set[str] = set()
    for run_id, file in zip(runs.get("run_id", []), runs.get("file", []), strict=False):
        path = Path(file) if Path(file).is_absolute() else Path(directory) / file
        start = next(iter(iter_records(path)), None) if path.is_file() else None
        if isinstance(start, RunStart) and start.task.metadata.get("session") == session:
            found.add(run_id)
    return found


def summarize(
    directory: str | Path = DEFAULT_TRACE_DIR, *, sync: bool = True, session: str | None = None
) -> TraceSummary:
    """Summarise every run of a trace directory (the index is synced first); with
    ``session``, only the runs of that conversation (see :func:`session_runs`)."""
    import numpy as np
    import pandas as pd

    if not Path(directory).is_dir():
        raise TraceError(f"no trace directory {directory}")
    index = TraceIndex(directory)
    if sync:
        index.sync()
    calls = index.frame("calls")
    decisions = index.frame("decisions")
    runs = index.frame("runs")
    labels = index.frame("labels")
    if session is not None:
        keep = session_runs(runs, session, directory)
        calls, decisions, runs, labels = (
            frame[frame["run_id"].isin(keep)].reset_index(drop=True) if len(frame) else frame
            for frame in (calls, decisions, runs, labels)
        )

    # ---- experts ------------------------------------------------------------------------
    routed: Counter[str] = Counter()
    score_sum: Counter[str] = Counter()
    score_n: Counter[str] = Counter()
    call_decisions = decisions[decisions["action"] == "call"] if len(decisions) else decisions
    for experts, scores in zip(
        call_decisions.get("experts", []), call_decisions.get("scores", []), strict=False
    ):
        for name in json.loads(experts):
            routed[name] += 1
        for name, score in json.loads(scores).items():
            score_sum[name] += float(score)
            score_n[name] += 1
    names = sorted(set(routed) | set(calls["expert"]) if len(calls) else set(routed))
    rows = []
    for name in names:
        mine = calls[calls["expert"] == name] if len(calls) else calls
        # Steps it answered in: its own router/fuser/judge calls answer no step.
        answering = mine[mine["role"] == "candidate"] if len(mine) else mine
        answered_steps = answering[["run_id", "step"]].drop_duplicates() if len(answering) else []
        winning = (
            mine[mine["in_winner"] == 1][["run_id", "step"]].drop_duplicates() if len(mine) else []
        )
        latency = mine["latency_s"].to_numpy(dtype=float) if len(mine) else np.array([])
        rows.append(
            {
                "expert": name,
                "routed": routed[name],
                "calls": len(mine),
                "winning": len(winning),
                "win_rate": (len(winning) / len(answered_steps))
                if len(answered_steps)
                else math.nan,
                "router_score": score_sum[name] / score_n[name] if score_n[name] else math.nan,
                "errors": int((mine["ok"] == 0).sum()) if len(mine) else 0,
                "retries": int((mine["attempts"] - 1).clip(lower=0).sum()) if len(mine) else 0,
                "tokens": int((mine["input_tokens"] + mine["output_tokens"]).sum())
                if len(mine)
                else 0,
                "cost": float(mine["cost"].sum()) if len(mine) else 0.0,
                "latency_p50_s": float(np.percentile(latency, 50)) if latency.size else math.nan,
                "latency_p95_s": float(np.percentile(latency, 95)) if latency.size else math.nan,
            }
        )
    experts = pd.DataFrame(
        rows,
        columns=[
            "expert",
            "routed",
            "calls",
            "winning",
            "win_rate",
            "router_score",
            "errors",
            "retries",
            "tokens",
            "cost",
            "latency_p50_s",
            "latency_p95_s",
        ],
    )

    # ---- policies -----------------------------------------------------------------------
    prow = []
    for policy in sorted(set(decisions["policy"])) if len(decisions) else []:
        mine = decisions[decisions["policy"] == policy]
        calls_only = mine[mine["action"] == "call"]
        chosen: Counter[str] = Counter()
        spreads = []
        for experts_json, scores_json in zip(
            calls_only["experts"], calls_only["scores"], strict=False
        ):
            chosen.update(json.loads(experts_json))
            values = list(json.loads(scores_json).values())
            if values:
                spreads.append(max(values) - min(values))
        total = sum(chosen.values())
        entropy = (
            -sum((c / total) * math.log2(c / total) for c in chosen.values()) if total else 0.0
        )
        top, top_n = chosen.most_common(1)[0] if chosen else (None, 0)
        prow.append(
            {
                "policy": policy,
                "decisions": len(mine),
                "finishes": int((mine["action"] == "finish").sum()),
                "mean_experts": float(calls_only["n_experts"].mean())
                if len(calls_only)
                else math.nan,
                "experts_used": len(chosen),
                "top_expert": top,
                "top_share": top_n / len(calls_only) if len(calls_only) else math.nan,
                "entropy_bits": abs(entropy),
                "score_spread": float(np.mean(spreads)) if spreads else math.nan,
            }
        )
    policies = pd.DataFrame(
        prow,
        columns=[
            "policy",
            "decisions",
            "finishes",
            "mean_experts",
            "experts_used",
            "top_expert",
            "top_share",
            "entropy_bits",
            "score_spread",
        ],
    )

    # ---- runs ---------------------------------------------------------------------------
    columns = list(_RUN_COLUMNS)
    run_table = runs[columns].copy() if len(runs) else pd.DataFrame(columns=columns)
    run_labels = {}
    if len(labels):
        for row in labels[labels["step"].isna()].sort_values("n").itertuples():
            run_labels[row.run_id] = row.score
    run_table["label"] = [run_labels.get(r, math.nan) for r in run_table["run_id"]]
    run_table = run_table.sort_values("run_id").reset_index(drop=True)
    return TraceSummary(experts=experts, policies=policies, runs=run_table)


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def print_summary(summary: TraceSummary, console: Any | None = None, *, max_runs: int = 20) -> None:
    """Print the summary tables with Rich."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    for title, frame in (("Experts", summary.experts), ("Policies", summary.policies)):
        table = Table(title=title)
        for column in frame.columns:
            table.add_column(
                str(column), justify="left" if frame[column].dtype == object else "right"
            )
        for row in frame.itertuples(index=False):
            table.add_row(*(_fmt(v) for v in row))
        console.print(table)
    runs = summary.runs.tail(max_runs)
    table = Table(title=f"Runs (last {len(runs)} of {len(summary.runs)})")
    for column in _SHOWN_RUN_COLUMNS:
        table.add_column(column)
    for row in runs.itertuples(index=False):
        table.add_row(*(_fmt(getattr(row, c)) for c in _SHOWN_RUN_COLUMNS))
    console.print(table)
