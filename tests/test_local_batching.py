"""Dynamic batching of local experts, through both backends, with the real bundled models.

A batched call must answer exactly as the same call made alone: greedy rows, seeded samples
(several samples of one prompt share its prefill), per-row stop strings and token limits; a
prompt that does not fit the context fails alone while the rest of its batch completes.
Weights load once per process (the model cache); 1 thread. These tests fail, never skip,
when the model packages or llama-cpp-python (which CI installs) are missing.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from typing import Any

import pytest

from expertgraph.agents import LocalHFExpert
from expertgraph.core.types import ExpertCard, Generation

pytestmark = pytest.mark.models

BACKENDS = ("transformers", "llama_cpp")
CASES = [
    pytest.param("smollm2-135m", "transformers", id="smollm2-transformers"),
    pytest.param("smollm2-135m", "llama_cpp", id="smollm2-llama_cpp"),
    pytest.param("gemma3-270m", "transformers", id="gemma3-transformers"),
    pytest.param("gemma3-270m", "llama_cpp", id="gemma3-llama_cpp"),
]
PROMPTS = {
    "smollm2-135m": [
        "What is the capital of Japan?",
        "Name three colors.",
        "Write one sentence about the sea.",
        "Who wrote Hamlet? Answer in a short sentence, please.",
    ],
    "gemma3-270m": [
        "What is the capital of France?",
        "What do bees make?",
        "What is the largest planet in the solar system?",
        "What gas do plants absorb from the air?",
    ],
}
COUNT = "Count from 1 to 1000, separated by commas."
"""Runs to its token limit (minutes), unless a timeout stops it."""
_CARD = ExpertCard(max_concurrency=16, timeout_s=900)


def _expert(model: str, backend: str, *, batch: int = 1, **kw: Any) -> LocalHFExpert:
    """An expert on the shared weights; ``batch`` > 1: its calls wait (up to a minute) until
    that many are gathered, so the test does not depend on timing."""
    return LocalHFExpert(
        f"{model}-{backend}-{batch}",
        model,
        backend=backend,  # type: ignore[arg-type]
        num_threads=1,
        max_tokens=kw.pop("max_tokens", 12),
        card=_CARD,
        max_batch_size=batch,
        batch_window_ms=60_000 if batch > 1 else 0,
        **kw,
    )


@pytest.fixture(scope="module", params=[c.values for c in CASES], ids=[c.id for c in CASES])
def case(request: pytest.FixtureRequest) -> tuple[str, str]:
    model, backend = request.param
    expert = _expert(model, backend)
    asyncio.run(expert.load())
    assert expert.backend_used == backend
    return model, backend


def _same(a: Generation, b: Generation) -> None:
    assert a.ok and b.ok, (a.error, b.error)
    assert (a.text, a.output_tokens, a.input_tokens, a.finish_reason) == (
        b.text,
        b.output_tokens,
        b.input_tokens,
        b.finish_reason,
    )


def _batch_sizes(expert: LocalHFExpert) -> list[int]:
    assert expert._loaded is not None
    return expert._loaded.batcher.batch_sizes


async def test_greedy_batch_equals_calls_made_alone(case: tuple[str, str]) -> None:
    model, backend = case
    prompts = PROMPTS[model]
    limits = [12, 4, 9, 12]  # per-row max_tokens
    alone = _expert(model, backend)
    singles = [await alone.generate(p, max_tokens=n) for p, n in zip(prompts, limits, strict=True)]
    batched = _expert(model, backend, batch=len(prompts))
    together = await asyncio.gather(
        *(batched.generate(p, max_tokens=n) for p, n in zip(prompts, limits, strict=True))
    )
    assert _batch_sizes(batched)[-1] == len(prompts)
    for one, many in zip(singles, together, strict=True):
        _same(one, many)
    assert together[1].output_tokens == 4 and together[1].finish_reason == "length"
    assert len({g.input_tokens for g in together}) > 1  # rows of different lengths: padding


async def test_seeded_samples_are_the_same_batched_or_alone(case: tuple[str, str]) -> None:
    model, backend = case
    prompt = PROMPTS[model][0]
    params = {"temperature": 1.2, "top_p": 0.95, "max_tokens": 10}
    seeds = [1, 2, 3]
    alone = _expert(model, backend)
    singles = [await alone.generate(prompt, seed=s, **params) for s in seeds]
    # Three samples of one prompt (one shared prefill) next to a greedy row of another.
    batched = _expert(model, backend, batch=len(seeds) + 1)
    *together, greedy = await asyncio.gather(
        *(batched.generate(prompt, seed=s, **params) for s in seeds),
        batched.generate(PROMPTS[model][1], max_tokens=6),
    )
    assert _batch_sizes(batched)[-1] == len(seeds) + 1
    for one, many in zip(singles, together, strict=True):
        _same(one, many)
    assert len({g.text for g in together}) > 1, "different seeds never varied"
    _same(greedy, await alone.generate(PROMPTS[model][1], max_tokens=6))


async def test_a_stop_string_in_one_row_does_not_stop_the_others(case: tuple[str, str]) -> None:
    model, backend = case
    prompt = PROMPTS[model][0]
    alone = _expert(model, backend)
    full = await alone.generate(prompt)
    word = "Tokyo" if model.startswith("smollm2") else "Paris"
    assert word in full.text
    batched = _expert(model, backend, batch=3)
    stopped, other, same = await asyncio.gather(
        batched.generate(prompt, stop=[word]),
        batched.generate(PROMPTS[model][2]),
        batched.generate(prompt),
    )
    assert stopped.ok and stopped.finish_reason == "stop"
    assert word not in stopped.text and full.text.startswith(stopped.text)
    assert stopped.output_tokens < full.output_tokens
    _same(same, full)
    _same(other, await alone.generate(PROMPTS[model][2]))


async def test_a_prompt_too_long_fails_while_its_batch_completes(case: tuple[str, str]) -> None:
    model, backend = case
    prompts = PROMPTS[model][:2]
    alone = _expert(model, backend)
    await alone.load()
    assert alone._loaded is not None and alone._loaded.context_limit is not None
    too_long = "word " * (alone._loaded.context_limit + 10)
    batched = _expert(model, backend, batch=len(prompts))
    first, failed, second = await asyncio.gather(
        batched.generate(prompts[0]), batched.generate(too_long), batched.generate(prompts[1])
    )
    assert failed.error is not None and failed.error.type == "context_window"
    assert "does not fit the context" in failed.error.message
    assert str(alone._loaded.context_limit) in failed.error.message
    assert _batch_sizes(batched)[-1] == len(prompts)
    _same(first, await alone.generate(prompts[0]))
    _same(second, await alone.generate(prompts[1]))


async def test_a_timed_out_row_leaves_its_batch_and_the_others_complete(
    case: tuple[str, str],
) -> None:
    model, backend = case
    prompts = PROMPTS[model][:2]
    # No newline stop for Gemma's completion prompts: the slow row must run long.
    alone = _expert(model, backend, completion_stop=())
    batched = _expert(model, backend, batch=3, completion_stop=())
    first, slow, second = await asyncio.gather(
        batched.generate(prompts[0]),
        batched.generate(COUNT, max_tokens=1500, timeout=3.0),
        batched.generate(prompts[1]),
    )
    assert slow.error is not None and slow.error.type == "timeout"
    _same(first, await alone.generate(prompts[0]))
    _same(second, await alone.generate(prompts[1]))


async def test_backends_agree_on_prompts_and_greedy_answers() -> None:
    """Same tokenizer and template on both paths: same prompt ids; greedy answers agree."""
    for model, prompt in (
        ("smollm2-135m", "What is the capital of Japan?"),
        ("gemma3-270m", "What is the capital of France?"),
    ):
        hf = await _expert(model, "transformers").generate(prompt)
        cpp = await _expert(model, "llama_cpp").generate(prompt)
        _same(hf, cpp)


async def test_auto_backend_prefers_llama_cpp_for_gguf_on_cpu() -> None:
    auto = LocalHFExpert("auto", "smollm2-135m", num_threads=1, device="cpu")
    await auto.load()
    assert auto.backend_used == "llama_cpp"
    gen = await auto.generate("What is the capital of Japan?", max_tokens=8)
    assert gen.ok and "Tokyo" in gen.text


def test_llama_cpp_loads_quietly() -> None:
    """llama.cpp logs dozens of lines per load (warnings too) unless we take its log over."""
    code = (
        "import asyncio\n"
        "from expertgraph.agents import LocalHFExpert\n"
        "e = LocalHFExpert('g', 'gemma3-270m', backend='llama_cpp', num_threads=1)\n"
        "asyncio.run(e.load())\n"
        "print(e.backend_used)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=600, check=True
    )
    assert done.stdout.strip() == "llama_cpp"
    lines = [line for line in done.stderr.splitlines() if "Warning" not in line]
    assert not [line for line in lines if "llama" in line or line.startswith("load")], lines
