"""Bad inputs are one-line errors naming the file, the line and the field, never a traceback:
call params that collide with the call path or have the wrong type, a damaged trained router
folder, and an unset ``api_key_env`` (found when the orchestrator is built, not at call
time). Each through the command line and the Python API."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import numpy as np
import pytest
from openai_server import OpenAIServer

from expertgraph.agents import CallableExpert
from expertgraph.core import ConfigError, PolicyError
from expertgraph.orchestrator import Orchestrator
from expertgraph.orchestrator.cli import main
from expertgraph.policies import AllExperts
from expertgraph.policies.learning import load_artifact, save_artifact

CALC = """\
name: bad
home: {home}
experts:
  - name: calc
    kind: callable
    callable: expertgraph.agents.tools:calculator
policy: {{name: all}}
checkpoint: {{backend: none}}
"""


def _config(tmp_path: Path, extra: str) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(CALC.format(home=tmp_path / "home") + extra, encoding="utf-8")
    return path


def _cli_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """Run the command; it must fail with exit code 2 and one clean error."""
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and err.startswith("expertgraph: error: "), err
    return err


@pytest.mark.parametrize(
    ("extra", "where"),
    [
        ("defaults: {sample: 2}\n", "cfg.yaml:9: defaults.sample: "),
        (
            'defaults: {max_tokens: "lots"}\nbudget: {max_cost: 0.5}\n',
            "cfg.yaml:9: defaults.max_tokens",
        ),
        ('defaults: {timeout: "soon"}\n', "cfg.yaml:9: defaults.timeout: "),
        ("defaults: {timeout: 0}\n", "cfg.yaml:9: defaults.timeout: "),
        (
            "defaults: {max_tokens: 8}\n",
            None,  # a good one, for contrast
        ),
    ],
)
def test_call_params_in_the_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: str, where: str | None
) -> None:
    config = _config(tmp_path, extra)
    argv = ["run", "What is 2 + 3?", "--config", str(config), "--json", "--quiet"]
    if where is None:
        assert main(argv) == 0
        assert json.loads(capsys.readouterr().out.splitlines()[-1])["answer"] == "5"
        return
    assert where in _cli_error(capsys, argv)


def test_sample_in_an_experts_params_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "cfg.yaml"
    config.write_text(
        CALC.format(home=tmp_path).replace(
            "    callable: expertgraph.agents.tools:calculator\n",
            "    callable: expertgraph.agents.tools:calculator\n    params: {sample: 1}\n",
        )
    )
    with pytest.raises(ConfigError, match=r"cfg.yaml:7: experts\[0\].params.sample: "):
        Orchestrator.from_config(config)


def test_timeout_in_defaults_bounds_each_call(tmp_path: Path) -> None:
    """``timeout`` is the call's timeout in seconds (not a collision with the call path)."""

    def slow(prompt: str) -> str:
        time.sleep(2)
        return "late"

    orch = Orchestrator(
        [CallableExpert("slow", slow)], AllExperts(), defaults={"timeout": 0.2}, trace_dir=tmp_path
    )
    result = orch.run("anything")
    assert result.answer is None and "timeout" in result.stop_reason


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"defaults": {"sample": 2}}, r"defaults.sample: Value error, is set by the orchestrator"),
        ({"defaults": {"max_tokens": "lots"}}, r"defaults.max_tokens: Input should be"),
        (
            {"expert_params": {"calc": {"timeout": -1}}},
            r"expert_params\['calc'\].timeout: Input should be greater than 0",
        ),
    ],
)
def test_call_params_in_the_python_api(
    tmp_path: Path, kwargs: dict[str, object], match: str
) -> None:
    calc = CallableExpert("calc", lambda prompt: "5")
    with pytest.raises(ConfigError, match=match):
        Orchestrator([calc], trace_dir=tmp_path, **kwargs)  # type: ignore[arg-type]


# ---- API keys ----------------------------------------------------------------------------


def test_unset_api_key_env_is_an_error_when_the_orchestrator_is_built(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("BAD_INPUTS_KEY", raising=False)
    monkeypatch.delenv("BAD_INPUTS_OTHER_KEY", raising=False)
    with OpenAIServer(default="5") as server:
        experts = "".join(
            f"  - name: {name}\n    kind: api\n    model: openai/m\n"
            f"    api_base: {server.url}/v1\n    api_key_env: {env}\n"
            for name, env in (("gpt", "BAD_INPUTS_KEY"), ("other", "BAD_INPUTS_OTHER_KEY"))
        )
        config = _config(tmp_path, "")
        text = config.read_text().replace("experts:\n", "experts:\n" + experts)
        config.write_text(text)
        with pytest.raises(ConfigError) as err:
            Orchestrator.from_config(config)
        message = str(err.value)
        assert "cfg.yaml:8: experts[0].api_key_env: environment variable BAD_INPUTS_KEY" in message
        assert "cfg.yaml:13: experts[1].api_key_env: environment variable" in message
        printed = _cli_error(capsys, ["run", "What is 2 + 3?", "--config", str(config)])
        assert "BAD_INPUTS_KEY is not set" in printed
        assert server.attempts == 0  # found before any call
        monkeypatch.setenv("BAD_INPUTS_KEY", "sk-1")
        monkeypatch.setenv("BAD_INPUTS_OTHER_KEY", "sk-2")
        assert Orchestrator.from_config(config).experts.keys() == {"gpt", "other", "calc"}


# ---- trained router folders ----------------------------------------------------------------


def _artifact(folder: Path) -> Path:
    arrays = {"X": np.ones((4, 3), dtype=np.float32), "Y": np.ones((4, 2), dtype=np.float32)}
    return save_artifact(folder, {"kind": "knn", "experts": ["calc", "other"]}, arrays)


def _truncate(folder: Path) -> None:
    weights = folder / "weights.npz"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])


def _meta_list(folder: Path) -> None:
    (folder / "meta.json").write_text("[1, 2]\n")


def _no_weights(folder: Path) -> None:
    (folder / "weights.npz").unlink()


def _experts_not_names(folder: Path) -> None:
    meta = json.loads((folder / "meta.json").read_text())
    meta["experts"] = "calc"
    (folder / "meta.json").write_text(json.dumps(meta, indent=2))


DAMAGE = {
    "truncated weights.npz": (_truncate, r"weights.npz: damaged or truncated"),
    "meta.json is a list": (_meta_list, r"meta.json:1: must be a JSON object"),
    "no weights.npz": (_no_weights, r"weights.npz: missing; the artifact is incomplete"),
    "experts not a list": (_experts_not_names, r"meta.json:\d+: experts: must be a list"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_router_folder_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], damage: str
) -> None:
    folder = _artifact(tmp_path / "router")
    assert set(load_artifact(folder).arrays) == {"X", "Y"}
    spoil, match = DAMAGE[damage]
    spoil(folder)
    with pytest.raises(PolicyError, match=match):
        load_artifact(folder)
    # The command line: a run configured with the folder, and eval of it.
    config = _config(tmp_path, "").read_text()
    config = config.replace("policy: {name: all}", f"policy: {{name: knn, path: {folder}}}")
    (tmp_path / "cfg.yaml").write_text(config)
    run = ["run", "What is 2 + 3?", "--config", str(tmp_path / "cfg.yaml")]
    assert re.search(match, _cli_error(capsys, run))
    data = tmp_path / "rows.jsonl"
    data.write_text(
        "".join(
            json.dumps({"id": str(i), "prompt": f"{i} + 1", "scores": {"calc": 1, "other": 0}})
            + "\n"
            for i in range(4)
        )
    )
    evaluate = ["eval", "--data", str(data), "--policy", str(folder)]
    assert re.search(match, _cli_error(capsys, evaluate))


def test_a_router_missing_an_array_names_it(tmp_path: Path) -> None:
    folder = save_artifact(tmp_path / "r", {"kind": "knn", "experts": ["a"]}, {"X": np.ones(2)})
    arrays = load_artifact(folder).arrays
    with pytest.raises(PolicyError, match=r"weights.npz: no array 'Y' \(it holds X\)"):
        arrays["Y"]
