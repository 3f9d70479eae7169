"""Offline evaluation of multi-call policies on recorded replies, and the same plan live.

Rows are built by rule (``_cascade_data``); what a test expects is computed from the
builder's truth or from the files, never copied.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from _cascade_data import EXPERTS, build_rows, write_rows

from expertgraph.agents.callable import CallableExpert
from expertgraph.core.errors import ConfigError, DatasetError, PolicyError
from expertgraph.core.types import AnswerFormat, Message, Task
from expertgraph.orchestrator import Orchestrator
from expertgraph.orchestrator.cli import main
from expertgraph.policies.aggregation.answers import extract_answer
from expertgraph.policies.data.dataset import from_examples, load_dataset
from expertgraph.policies.data.prices import apply_prices, load_prices
from expertgraph.policies.learning.cascade_fit import train_cascade
from expertgraph.policies.learning.cascade_plan import CascadePlan, StagePlan
from expertgraph.policies.learning.replay_eval import replay_rows
from expertgraph.policies.routing.cascade import LearnedCascade

NUMBER = AnswerFormat(kind="number", json_field="answer")


def _hand_plan(experts: list[str]) -> CascadePlan:
    """Ask both cheap experts; stop when they agree, else ask the strong one (whose vote
    then outweighs theirs)."""
    plan = StagePlan(
        stages=[["cheap_a", "cheap_b"], ["strong"]],
        need=[2],
        reliability={e: 0.95 if e == "strong" else 0.7 for e in experts},
        answer_format=NUMBER,
    )
    return CascadePlan(experts=experts, default=plan)


def _last_json(capsys: pytest.CaptureFixture[str]) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_cascade_escalates_exactly_on_disagreement() -> None:
    rows = build_rows(40)
    ds = from_examples(rows)
    cascade = LearnedCascade(_hand_plan(ds.experts))
    report = replay_rows(ds, cascade, cascade.paired_aggregator)
    escalated = 0
    for row, replay in zip(rows, report.rows, strict=True):
        a = extract_answer(row.responses["cheap_a"], NUMBER).answer
        b = extract_answer(row.responses["cheap_b"], NUMBER).answer
        agree = a is not None and a == b
        assert replay.called == (
            ["cheap_a", "cheap_b"] if agree else ["cheap_a", "cheap_b", "strong"]
        )
        assert replay.stage == (0 if agree else 1)
        want = row.scores["cheap_a"] if agree else row.scores["strong"]
        assert replay.score == want
        assert replay.cost == pytest.approx(sum(row.costs[e] for e in replay.called))
        escalated += not agree
    assert 0 < escalated < len(rows)  # the data has both cases
    assert report.escalations()["stopped_at_stage"]["1"] == pytest.approx(escalated / len(rows))


def test_offline_replay_decides_as_a_live_run(tmp_path: Path) -> None:
    rows = build_rows(60)
    ds = from_examples([r for r in rows if r.meta["split"] == "train"])
    plan, _ = train_cascade(ds, target_cost_share=0.5, folds=3)
    folder = plan.save(tmp_path / "cascade")
    test = [r for r in rows if r.meta["split"] == "test"]
    by_prompt = {r.prompt: r for r in test}

    def player(name: str):  # plays the expert from the record: the reply it gave
        def reply(messages: list[Message]) -> str:
            prompt = next(m.content for m in reversed(messages) if m.role == "user")
            return by_prompt[prompt].responses[name]

        return reply

    config = tmp_path / "cfg.yaml"
    experts_yaml = "".join(
        f"  - {{name: {e}, kind: callable, callable: 'expertgraph.agents.tools:calculator'}}\n"
        for e in EXPERTS
    )
    config.write_text(
        f"name: live\nhome: {tmp_path / 'home'}\nexperts:\n{experts_yaml}"
        f"policy: {{name: cascade, path: {folder}}}\n"
        f"trace: {{dir: {tmp_path / 'traces'}}}\n"
    )
    live = {e: CallableExpert(e, player(e)) for e in EXPERTS}
    orch = Orchestrator.from_config(config, experts=live)
    assert orch.aggregator.name == "cascade"
    offline = replay_rows(
        from_examples(test),
        LearnedCascade.load(folder),
        LearnedCascade.load(folder).paired_aggregator,
    )
    escalated = 0
    for row, replay in zip(test, offline.rows, strict=True):
        result = orch.run(Task(prompt=row.prompt, metadata={"task": row.task}))
        step = result.steps[0]
        assert [g.expert for g in step.generations] == replay.called, row.id
        assert step.result.answer == replay.answer, row.id
        assert step.result.meta["cascade"]["accepted"] == replay.stage
        escalated += replay.stage != 0
    assert escalated > 0


def test_trained_cascade_for_other_experts_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = build_rows(40)
    plan, _ = train_cascade(from_examples(rows), folds=2)
    folder = plan.save(tmp_path / "cascade")
    renamed = [
        r.model_copy(
            update={
                "scores": {("other" if k == "mid" else k): v for k, v in r.scores.items()},
                "costs": {("other" if k == "mid" else k): v for k, v in r.costs.items()},
            }
        )
        for r in rows
    ]
    data = write_rows(tmp_path / "other.jsonl", renamed)
    with pytest.raises(PolicyError, match="trained for experts that are not configured: mid"):
        LearnedCascade.load(folder, experts=load_dataset(data).experts)
    assert main(["eval", "--data", str(data), "--policy", str(folder)]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "configured experts it was not trained for: other" in err[0]
    config = tmp_path / "cfg.yaml"
    config.write_text(
        "experts:\n"
        + "".join(
            f"  - {{name: {e}, kind: callable, callable: 'expertgraph.agents.tools:calculator'}}\n"
            for e in ["cheap_a", "cheap_b", "strong", "other"]
        )
        + f"policy: {{name: cascade, path: {folder}}}\n"
    )
    with pytest.raises(ConfigError, match=r"policy\.path: .*configured experts it was not"):
        Orchestrator.from_config(config)


def test_eval_cli_on_jsonl_with_replies_and_prices(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = build_rows(40)
    data = write_rows(tmp_path / "rows.jsonl", rows, costs=False)
    prices = tmp_path / "prices.yaml"
    prices.write_text(
        "".join(f"{e}: {{input: {p}, output: {2 * p}}}\n" for e, (p, _) in EXPERTS.items())
    )
    table = load_prices(prices)
    priced = apply_prices(load_dataset(data, split="test"), table)
    first = priced.examples[0]
    want = (
        math.ceil(len(first.prompt) / 4) * table["mid"].input
        + math.ceil(len(first.responses["mid"]) / 4) * table["mid"].output
    ) / 1e6
    assert first.costs["mid"] == pytest.approx(want)

    hand = _hand_plan(list(EXPERTS)).save(tmp_path / "hand")
    plot = tmp_path / "pareto.png"
    args = ["eval", "--data", str(data), "--split", "test", "--prices", str(prices)]
    assert main([*args, "--policy", str(hand), "--plot", str(plot), "--json"]) == 0
    out = _last_json(capsys)
    offline = replay_rows(
        priced,
        LearnedCascade(_hand_plan(list(EXPERTS))),
        LearnedCascade(_hand_plan(list(EXPERTS))).paired_aggregator,
    )
    assert out["n"] == len(priced)
    assert out["score"] == pytest.approx(offline.score)
    assert out["cost"] == pytest.approx(offline.cost)
    assert set(out["escalations"]["per_task"]) == {"sums", "products"}
    assert out["baselines"]["best_single"]["expert"] in EXPERTS
    assert plot.is_file() and plot.read_bytes()[:4] == b"\x89PNG"

    # Any multi-call policy: every expert answers, a majority vote decides.
    assert main([*args, "--policy", "all", "--aggregator", "majority", "--json"]) == 0
    out = _last_json(capsys)
    assert out["calls_per_query"] == len(EXPERTS)
    assert out["cost"] == pytest.approx(float(priced.costs().sum(axis=1).mean()))


def test_traces_export_feeds_a_cascade(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from expertgraph.policies.aggregation.voting import MajorityVote
    from expertgraph.policies.routing.fixed import AllExperts
    from expertgraph.traces.export import export_dataset

    rows = build_rows(40)
    by_prompt = {r.prompt: r for r in rows}

    def player(name: str):
        def reply(prompt: str) -> str:
            return by_prompt[prompt].responses[name]

        return reply

    traces = tmp_path / "traces"
    orch = Orchestrator(
        [CallableExpert(e, player(e)) for e in EXPERTS],
        AllExperts(),
        MajorityVote(),
        trace_dir=traces,
    )
    for row in rows:
        orch.run(Task(prompt=row.prompt, metadata={"task": row.task}))
    orch.trace_store.flush()
    data = tmp_path / "exported.jsonl"
    assert export_dataset(traces, data).examples == len(rows)
    exported = load_dataset(data)
    assert {ex.task for ex in exported.examples} == {"sums", "products"}
    assert all(set(ex.responses) == set(EXPERTS) for ex in exported.examples)
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({e: {"input": p, "output": p} for e, (p, _) in EXPERTS.items()}))
    priced = apply_prices(exported, load_prices(prices))
    first = priced.examples[0]  # functions count no tokens: the estimate prices them
    want = (math.ceil(len(first.prompt) / 4) + math.ceil(len(first.responses["mid"]) / 4)) * 3.0
    assert first.costs["mid"] == pytest.approx(want / 1e6)
    out = tmp_path / "cascade"
    train = ["train", "--data", str(data), "--policy", "cascade", "--prices", str(prices)]
    assert main([*train, "--folds", "2", "--out", str(out)]) == 0
    evaluate = ["eval", "--data", str(data), "--policy", str(out), "--prices", str(prices)]
    assert main([*evaluate, "--json"]) == 0
    assert _last_json(capsys)["n"] == len(rows)


def test_a_bad_price_table_is_one_clear_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = write_rows(tmp_path / "rows.jsonl", build_rows(10), costs=False)
    prices = tmp_path / "prices.yaml"
    prices.write_text("cheap_a: {input: 1, ouput: 2}\n")
    with pytest.raises(DatasetError, match=r"prices.yaml: cheap_a: unknown field 'ouput'"):
        load_prices(prices)
    prices.write_text("cheap_a: 1\ncheap_b: 1\n")
    with pytest.raises(DatasetError, match=r"no price for experts \['mid', 'strong'\]"):
        apply_prices(load_dataset(data), load_prices(prices))
    args = ["eval", "--data", str(data), "--policy", "all", "--aggregator", "majority"]
    assert main([*args, "--prices", str(prices)]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no price for experts" in err[0]
