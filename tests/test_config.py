"""Configuration files: valid ones build an orchestrator, invalid ones name the file, line and
field.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from expertgraph.core import ConfigError
from expertgraph.orchestrator import Orchestrator, load_config
from expertgraph.orchestrator.cli import main

VALID = """\
name: arithmetic
experts:
  - name: calc
    kind: callable
    callable: expertgraph.agents.tools:calculator
    card:
      description: exact arithmetic
      skills: [arithmetic]
  - name: remote
    kind: api
    model: openai/some-model
    api_base: http://127.0.0.1:9/v1
policy:
  name: fixed
  experts: [calc]
budget:
  max_steps: 3
trace:
  dir: traces
"""


def _write(tmp_path: Path, text: str, name: str = "cfg.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_valid_config_builds_and_runs(tmp_path: Path) -> None:
    orch = Orchestrator.from_config(_write(tmp_path, VALID), base_dir=tmp_path)
    assert list(orch.experts) == ["calc", "remote"]
    assert orch.budget.max_steps == 3 and orch.name == "arithmetic"
    result = orch.run("What is 3 * 4?")
    assert result.answer == "12"
    assert Path(result.trace_path).parent == tmp_path / "traces"


def test_misspelled_field_is_rejected_with_file_line_and_field(tmp_path: Path) -> None:
    text = VALID.replace("      skills: [arithmetic]", "      skils: [arithmetic]")
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert f"{path}:8" in message
    assert "experts[0].card.skils: unknown field (did you mean 'skills'?)" in message
    assert info.value.field == "experts[0].card.skils"


def test_misspelled_top_level_and_expert_fields(tmp_path: Path) -> None:
    text = VALID.replace("budget:", "budgett:").replace("    api_base:", "    api_bse:")
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, text))
    message = str(info.value)
    assert "budgett: unknown field (did you mean 'budget'?)" in message
    assert "experts[1].api_bse: unknown field (did you mean 'api_base'?)" in message


def test_wrong_types_and_kinds_are_named(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError, match=r"budget.max_steps: Input should be greater than or equal to 1"
    ):
        load_config(_write(tmp_path, VALID.replace("max_steps: 3", "max_steps: 0")))
    with pytest.raises(
        ConfigError,
        match=r"cfg.yaml:4: experts\[0\].kind: 'magic' is not one of: 'local', 'api', 'callable'",
    ):
        load_config(_write(tmp_path, VALID.replace("kind: callable", "kind: magic")))
    with pytest.raises(ConfigError, match=r"invalid YAML"):
        load_config(_write(tmp_path, "experts: [\n"))
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "missing.yaml")


def test_unknown_policy_and_bad_policy_options(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError, match=r"policy.name: unknown policy 'telepathy'; known: .*embedding"
    ):
        Orchestrator.from_config(_write(tmp_path, VALID.replace("name: fixed", "name: telepathy")))
    with pytest.raises(ConfigError, match=r"policy.experts names unknown experts \['nobody'\]"):
        Orchestrator.from_config(
            _write(tmp_path, VALID.replace("experts: [calc]", "experts: [nobody]"))
        )
    bad_option = VALID.replace("  experts: [calc]", "  experts: [calc]\n  top_kk: 2")
    with pytest.raises(ConfigError, match=r"policy.top_kk: unknown option"):
        Orchestrator.from_config(_write(tmp_path, bad_option))


def test_duplicate_expert_names_and_bad_callable(tmp_path: Path) -> None:
    duplicate = VALID.replace("name: remote", "name: calc")
    with pytest.raises(ConfigError, match=r"duplicate names \['calc'\]"):
        Orchestrator.from_config(_write(tmp_path, duplicate))
    missing = VALID.replace(
        "expertgraph.agents.tools:calculator", "expertgraph.agents.tools:abacus"
    )
    with pytest.raises(ConfigError, match=r"expert 'calc'.*has no 'abacus'"):
        Orchestrator.from_config(_write(tmp_path, missing))


def test_toml_config(tmp_path: Path) -> None:
    toml = """\
[[experts]]
name = "calc"
kind = "callable"
callable = "expertgraph.agents.tools:calculator"

[policy]
name = "fixed"
experts = ["calc"]
"""
    cfg = load_config(_write(tmp_path, toml, "cfg.toml"))
    assert cfg.experts[0].name == "calc"
    with pytest.raises(
        ConfigError,
        match=r"experts\[0\].kind: missing; it must be one of: 'local', 'api', 'callable'",
    ):
        load_config(
            _write(tmp_path, toml.replace('kind = "callable"', 'kindd = "callable"'), "bad.toml")
        )


def test_cli_reports_config_errors_without_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write(tmp_path, VALID.replace("budget:", "budgt:"))
    assert main(["run", "--config", str(path), "What is 1 + 1?"]) == 2
    err = capsys.readouterr().err
    assert "budgt: unknown field" in err and "Traceback" not in err


def test_cli_run_json_last_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path, VALID)
    plan = tmp_path / "plan.yaml"
    plan.write_text(
        "steps:\n  - What is 2 + 2?\n"
        "  - instruction: What is {step1} * 10?\n    answer_format: {kind: number}\n"
    )
    code = main(
        [
            "run",
            "--config",
            str(path),
            "--plan",
            str(plan),
            "--json",
            "--trace-dir",
            str(tmp_path / "t"),
        ]
    )
    assert code == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    payload = json.loads(last)
    assert payload["answer"] == "40"
    assert Path(payload["trace"]).is_file()
    assert [s["experts"] for s in payload["steps"]] == [["calc"], ["calc"]]
    assert payload["steps"][1] == {
        "step": 2,
        "instruction": "What is {step1} * 10?",
        "experts": ["calc"],
        "scores": {"calc": 1.0, "remote": 0.0},
        "answer": "40",
    }
    assert set(payload) >= {"answer", "trace", "cost", "tokens", "steps"}


def test_cli_plan_errors_name_the_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plan = tmp_path / "plan.yaml"
    plan.write_text("steps:\n  - instruction: What is 2 + 2?\n    top_kk: 2\n")
    assert main(["run", "--config", str(_write(tmp_path, VALID)), "--plan", str(plan)]) == 2
    assert "top_kk: unknown field" in capsys.readouterr().err
