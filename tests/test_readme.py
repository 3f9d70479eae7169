"""The README's Python example runs as written, on the bundled model."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.mark.models
def test_readme_python_example_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code = re.search(r"```python\n(.*?)```", README.read_text(), re.S)
    assert code is not None, "README has no python example"
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {}
    exec(compile(code.group(1), str(README), "exec"), namespace)  # noqa: S102 - our own README
    result = namespace["result"]
    assert result.answer == "42"  # type: ignore[attr-defined]
    assert [s.decision.experts for s in result.steps] == [["smollm2"], ["calculator"]]  # type: ignore[attr-defined]
    assert "Tokyo" in result.steps[0].result.text  # type: ignore[attr-defined]
    assert (tmp_path / ".expertgraph" / "traces").is_dir()


def test_readme_tools_example_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    section = README.read_text().split("## Tools and agents", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    assert code is not None, "README's Tools and agents section has no python example"
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {}
    exec(compile(code.group(1), str(README), "exec"), namespace)  # noqa: S102 - our own README
    run = namespace["agent_run"]
    assert run.answer == "A pear costs 90 cents."  # type: ignore[attr-defined]
    printed = capsys.readouterr().out
    assert "A pear costs 90 cents." in printed and 'price({"item":"pear"})\': 2.0' in printed
