"""The README's main job, for real: the built-in config, the bundled models, the example plan."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from expertgraph.orchestrator.cli import main
from expertgraph.traces import AggregateRecord, CallRecord, load_run

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.models
def test_main_job_routes_each_step_to_the_right_expert(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)  # no ./expertgraph.yaml here: the built-in config applies
    code = main(["run", "--plan", str(ROOT / "examples" / "plan.yaml"), "--json", "--quiet"])
    out = capsys.readouterr().out.strip().splitlines()
    assert code == 0, out
    payload = json.loads(out[-1])

    steps = payload["steps"]
    assert [s["experts"] for s in steps] == [
        ["smollm2"],
        ["gemma3"],
        ["calculator"],
        ["smollm2", "gemma3"],
    ]
    for step in steps:  # the chosen expert is the one the router scored highest
        assert max(step["scores"], key=step["scores"].get) == step["experts"][0]
    assert "Tokyo" in steps[0]["answer"]
    assert "Jupiter" in steps[1]["answer"]
    assert steps[2]["answer"] == "42"
    assert steps[3]["answer"] == "Paris"
    assert payload["tokens"] > 0 and payload["cost"] == 0.0

    trace = load_run(payload["trace"])
    assert Path(payload["trace"]).is_relative_to(tmp_path / ".expertgraph")
    calls = [r for r in trace.records if isinstance(r, CallRecord)]
    assert all(c.generation.error is None for c in calls)
    vote = [r for r in trace.records if isinstance(r, AggregateRecord)][-1].result
    assert vote.votes == {"Paris": 2.0}
    assert sorted(vote.supporters["Paris"]) == ["gemma3#0", "smollm2#0"]
