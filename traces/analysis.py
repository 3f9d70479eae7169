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
    ``session``, only the runs of that conversation (see :func:`session_runs`).

    The tables are aggregated by SQLite inside the index, so memory does not grow with the
    number of calls (a million-step run has millions): only one row per expert, policy and
    run comes out.
    """
    import pandas as pd

    if not Path(directory).is_dir():
        raise TraceError(f"no trace directory {directory}")
    index = TraceIndex(directory)
    if sync:
        index.sync()
    with index.connect() as conn:
        scope = ""
        if session is not None:
            listed = conn.execute("SELECT run_id, file FROM runs").fetchall()
            keep = session_runs(
                {"run_id": [r for r, _ in listed], "file": [f for _, f in listed]},
                session,
                directory,
            )
            conn.execute("CREATE TEMP TABLE IF NOT EXISTS kept (run_id TEXT PRIMARY KEY)")
            conn.execute("DELETE FROM temp.kept")
            conn.executemany("INSERT INTO temp.kept VALUES (?)", [(r,) for r in keep])
            scope = " AND run_id IN (SELECT run_id FROM temp.kept)"
        experts = _expert_table(conn, scope, pd)
        policies = _policy_table(conn, scope, pd)
        columns = list(_RUN_COLUMNS)
        rows = conn.execute(f"SELECT {', '.join(columns)} FROM runs WHERE 1{scope}").fetchall()
        label_rows = conn.execute(
            f"SELECT run_id, score FROM labels WHERE step IS NULL{scope} ORDER BY n"
        ).fetchall()
    run_table = pd.DataFrame(rows, columns=columns)
    run_labels = dict(label_rows)  # ordered by n: the latest label of a run wins
    run_table["label"] = [run_labels.get(r, math.nan) for r in run_table["run_id"]]
    run_table = run_table.sort_values("run_id").reset_index(drop=True)
    return TraceSummary(experts=experts, policies=policies, runs=run_table)


_EXPERT_COLUMNS = [
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
]
_POLICY_COLUMNS = [
    "policy",
    "decisions",
    "finishes",
    "mean_experts",
    "experts_used",
    "top_expert",
    "top_share",
    "entropy_bits",
    "score_spread",
]


def _counts(conn: Any, sql: str, params: tuple[Any, ...] = ()) -> dict[Any, Any]:
    return {key: value for key, value in conn.execute(sql, params)}


def _percentile(conn: Any, expert: str, n: int, q: float, scope: str) -> float:
    """numpy's linear-interpolated percentile of an expert's call latencies, read from the
    sorted column two values at a time (no list of them in memory)."""
    if n == 0:
        return math.nan
    position = (n - 1) * q / 100
    low = math.floor(position)
    values = [
        v
        for (v,) in conn.execute(
            "SELECT latency_s FROM calls WHERE expert = ? AND latency_s IS NOT NULL"
            f"{scope} ORDER BY latency_s LIMIT 2 OFFSET ?",
            (expert, low),
        )
    ]
    if len(values) == 1 or position == low:
        return float(values[0])
    return float(values[0] + (values[1] - values[0]) * (position - low))


def _expert_table(conn: Any, scope: str, pd: Any) -> Any:
    calls_where = f"WHERE 1{scope}"
    routed = _counts(
        conn,
        "SELECT j.value, COUNT(*) FROM decisions AS d, json_each(d.experts) AS j "
        f"WHERE d.action = 'call'{scope.replace('run_id', 'd.run_id')} GROUP BY j.value",
    )
    scored = {
        name: (total, n)
        for name, total, n in conn.execute(
            "SELECT j.key, SUM(j.value), COUNT(*) FROM decisions AS d, json_each(d.scores) AS j "
            f"WHERE d.action = 'call'{scope.replace('run_id', 'd.run_id')} GROUP BY j.key"
        )
    }
    totals = {
        row[0]: row[1:]
        for row in conn.execute(
            "SELECT expert, COUNT(*), SUM(ok = 0), SUM(MAX(attempts - 1, 0)), "
            "SUM(input_tokens + output_tokens), SUM(cost), COUNT(latency_s) "
            f"FROM calls {calls_where} GROUP BY expert"
        )
    }
    winning = _counts(
        conn,
        "SELECT expert, COUNT(*) FROM (SELECT DISTINCT expert, run_id, step FROM calls "
        f"WHERE in_winner = 1{scope}) GROUP BY expert",
    )
    answered = _counts(
        conn,
        "SELECT expert, COUNT(*) FROM (SELECT DISTINCT expert, run_id, step FROM calls "
        f"WHERE role = 'candidate'{scope}) GROUP BY expert",
    )
    rows = []
    for name in sorted(set(routed) | set(totals)):
        calls, errors, retries, tokens, cost, timed = totals.get(name, (0, 0, 0, 0, 0.0, 0))
        total, n_scored = scored.get(name, (0.0, 0))
        rows.append(
            {
                "expert": name,
                "routed": routed.get(name, 0),
                "calls": calls,
                "winning": winning.get(name, 0),
                "win_rate": winning.get(name, 0) / answered[name]
                if answered.get(name)
                else math.nan,
                "router_score": total / n_scored if n_scored else math.nan,
                "errors": int(errors or 0),
                "retries": int(retries or 0),
                "tokens": int(tokens or 0),
                "cost": float(cost or 0.0),
                "latency_p50_s": _percentile(conn, name, timed, 50, scope),
                "latency_p95_s": _percentile(conn, name, timed, 95, scope),
            }
        )
    return pd.DataFrame(rows, columns=_EXPERT_COLUMNS)


def _policy_table(conn: Any, scope: str, pd: Any) -> Any:
    rows = []
    where_d = scope.replace("run_id", "d.run_id")
    for policy, decisions, finishes, mean_experts, n_calls in conn.execute(
        "SELECT policy, COUNT(*), SUM(action = 'finish'), "
        "AVG(CASE WHEN action = 'call' THEN n_experts END), SUM(action = 'call') "
        f"FROM decisions WHERE 1{scope} GROUP BY policy ORDER BY policy"
    ).fetchall():
        chosen = Counter(
            _counts(
                conn,
                "SELECT j.value, COUNT(*) FROM decisions AS d, json_each(d.experts) AS j "
                f"WHERE d.policy = ? AND d.action = 'call'{where_d} GROUP BY j.value "
                # in order of first choice, so that a tie for the top goes to the earliest
                "ORDER BY MIN(d.rowid * 65536 + j.key)",
                (policy,),
            )
        )
        (spread,) = conn.execute(
            "SELECT AVG(spread) FROM (SELECT MAX(j.value) - MIN(j.value) AS spread "
            "FROM decisions AS d, json_each(d.scores) AS j "
            f"WHERE d.policy = ? AND d.action = 'call'{where_d} GROUP BY d.rowid)",
            (policy,),
        ).fetchone()
        total = sum(chosen.values())
        entropy = (
            -sum((c / total) * math.log2(c / total) for c in chosen.values()) if total else 0.0
        )
        top, top_n = chosen.most_common(1)[0] if chosen else (None, 0)
        rows.append(
            {
                "policy": policy,
                "decisions": decisions,
                "finishes": int(finishes or 0),
                "mean_experts": float(mean_experts) if mean_experts is not None else math.nan,
                "experts_used": len(chosen),
                "top_expert": top,
                "top_share": top_n / n_calls if n_calls else math.nan,
                "entropy_bits": abs(entropy),
                "score_spread": float(spread) if spread is not None else math.nan,
            }
        )
    return pd.DataFrame(rows, columns=_POLICY_COLUMNS)


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
