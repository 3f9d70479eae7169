"""A callable expert whose module cannot be imported is a one-line error naming file and line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from expertgraph.agents import CallableExpert
from expertgraph.core.errors import ConfigError
from expertgraph.orchestrator.config import load_config
from expertgraph.orchestrator.config.build import build_expert


@pytest.fixture
def modules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "eg_broken_syntax.py").write_text("def fn(prompt):\n    return (\n\nx = 1\n")
    (tmp_path / "eg_broken_import.py").write_text("A = 1\nB = undefined_name\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_a_syntax_error_names_file_and_line(modules: Path) -> None:
    with pytest.raises(ValueError) as info:
        CallableExpert.from_import_path("bad", "eg_broken_syntax:fn")
    message = str(info.value)
    assert f"{modules / 'eg_broken_syntax.py'}:" in message
    assert "SyntaxError" in message and "\n" not in message


def test_an_exception_at_import_names_file_and_line(modules: Path) -> None:
    with pytest.raises(ValueError) as info:
        CallableExpert.from_import_path("bad", "eg_broken_import:fn")
    message = str(info.value)
    assert f"{modules / 'eg_broken_import.py'}:2:" in message
    assert "NameError" in message and "\n" not in message


def test_config_gives_a_config_error(modules: Path) -> None:
    path = modules / "c.yaml"
    path.write_text("experts:\n  - {name: bad, kind: callable, callable: 'eg_broken_syntax:fn'}\n")
    with pytest.raises(ConfigError, match="eg_broken_syntax.py:"):
        build_expert(load_config(path).experts[0])


def test_the_cli_prints_one_line_not_a_traceback(modules: Path) -> None:
    path = modules / "c.yaml"
    path.write_text(
        "experts:\n  - {name: bad, kind: callable, callable: 'eg_broken_syntax:fn'}\n"
        "policy: {name: fixed, experts: [bad]}\n"
    )
    env = {**os.environ, "PYTHONPATH": str(modules)}
    out = subprocess.run(
        [sys.executable, "-m", "expertgraph.orchestrator.cli", "run", "--config", str(path), "hi"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert out.returncode != 0
    assert "Traceback" not in out.stderr
    assert "eg_broken_syntax.py:" in out.stderr
