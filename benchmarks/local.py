"""Local experts at hardware speed: batched generation and the llama.cpp backend.

For each bundled model (SmolLM2-135M, Gemma 3 270M) and each installed backend
(transformers, llama.cpp), with 1 thread, in the same run: load time, peak RSS, the first
answer's time from a cold start (load + first call), and greedy tokens/s for ``--requests``
requests made one after another vs all at once (one dynamic batch). Batched and sequential
answers are checked to be equal. Each (model, backend) runs in its own process, so its load
time and peak RSS are its own (``--in-process`` shares this one: faster, RSS then covers
everything loaded so far). Gemma runs without its newline stop so every row generates
``--max-tokens`` tokens.

Figures are ratios against baselines measured in the same run: ``batched_speedup`` is
batched over sequential tokens/s of the same backend; ``llama_cpp_vs_transformers`` is
llama.cpp's over transformers' tokens/s (sequential, one stream each; per model, and their
geometric mean at the top level). The last line printed is one JSON object:
``{"smollm2": {"batched_speedup": X, ...}, "gemma3": {...}, "llama_cpp_vs_transformers": Y}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import resource
import subprocess
import sys
import time
from typing import Any

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "1")

from expertgraph.agents import LocalHFExpert  # noqa: E402
from expertgraph.agents._loading import llama_cpp_installed  # noqa: E402
from expertgraph.core.types import ExpertCard  # noqa: E402

MODELS = {"smollm2": "smollm2-135m", "gemma3": "gemma3-270m"}
BACKENDS = ("transformers", "llama_cpp")
PROMPTS = [
    "Tell me about the history of Rome.",
    "Describe how bees make honey.",
    "Explain why the sky is blue.",
    "Write a short story about a lighthouse keeper.",
    "What are the planets of the solar system?",
    "Describe a walk through a forest in autumn.",
    "How does a bicycle work?",
    "Tell me about the ocean and its animals.",
]


def _expert(model: str, backend: str, batch: int) -> LocalHFExpert:
    return LocalHFExpert(
        f"bench-{batch}",
        MODELS[model],
        backend=backend,  # type: ignore[arg-type]
        num_threads=1,
        completion_stop=(),
        card=ExpertCard(max_concurrency=max(batch, 1), timeout_s=3600),
        max_batch_size=batch,
        batch_window_ms=50.0,
    )


async def _measure(model: str, backend: str, requests: int, max_tokens: int) -> dict[str, Any]:
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(requests)]
    alone = _expert(model, backend, 1)
    started = time.perf_counter()
    await alone.load()
    load_s = time.perf_counter() - started
    first = await alone.generate(prompts[0], max_tokens=8)
    first_answer_s = time.perf_counter() - started
    if not first.ok:
        raise SystemExit(f"{model}/{backend}: {first.error}")
    started = time.perf_counter()
    singles = [await alone.generate(p, max_tokens=max_tokens) for p in prompts]
    seq_s = time.perf_counter() - started
    batched = _expert(model, backend, requests)
    started = time.perf_counter()
    together = await asyncio.gather(*(batched.generate(p, max_tokens=max_tokens) for p in prompts))
    batch_s = time.perf_counter() - started
    for one, many in zip(singles, together, strict=True):
        if not (one.ok and many.ok):
            raise SystemExit(f"{model}/{backend}: {one.error or many.error}")
    tokens_seq = sum(g.output_tokens for g in singles)
    tokens_batch = sum(g.output_tokens for g in together)
    return {
        "load_s": round(load_s, 3),
        "first_answer_s": round(first_answer_s, 3),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "sequential_tok_s": round(tokens_seq / seq_s, 2),
        "batched_tok_s": round(tokens_batch / batch_s, 2),
        "batched_equals_sequential": all(
            a.text == b.text and a.output_tokens == b.output_tokens
            for a, b in zip(singles, together, strict=True)
        ),
    }


def _run_one(model: str, backend: str, args: argparse.Namespace) -> dict[str, Any]:
    if args.in_process:
        return asyncio.run(_measure(model, backend, args.requests, args.max_tokens))
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        model,
        backend,
        "--requests",
        str(args.requests),
        "--max-tokens",
        str(args.max_tokens),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{model}/{backend} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS))
    parser.add_argument("--requests", type=int, default=8, help="concurrent requests")
    parser.add_argument("--max-tokens", type=int, default=32, dest="max_tokens")
    parser.add_argument("--quick", action="store_true", help="SmolLM2, 2 requests, 4 tokens")
    parser.add_argument("--in-process", action="store_true", dest="in_process")
    parser.add_argument("--worker", nargs=2, metavar=("MODEL", "BACKEND"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        model, backend = args.worker
        print(json.dumps(asyncio.run(_measure(model, backend, args.requests, args.max_tokens))))
        return 0
    if args.quick:
        args.models, args.requests, args.max_tokens = ["smollm2"], 2, 4
    backends = [b for b in args.backends if b != "llama_cpp" or llama_cpp_installed()]
    if len(backends) < len(args.backends):
        print("llama-cpp-python is not installed: llama.cpp figures are null")
    summary: dict[str, Any] = {}
    speedups: list[float] = []
    for model in args.models:
        per: dict[str, Any] = {b: _run_one(model, b, args) for b in backends}
        figures: dict[str, Any] = {}
        for backend, fig in per.items():
            gain = _ratio(fig["batched_tok_s"], fig["sequential_tok_s"])
            key = "batched_speedup" if backend == "transformers" else f"{backend}_batched_speedup"
            figures[key] = gain
            print(
                f"{model:8} {backend:12} load {fig['load_s']:6.2f}s  first answer "
                f"{fig['first_answer_s']:6.2f}s  peak RSS {fig['peak_rss_mb']:7.1f} MB  "
                f"{fig['sequential_tok_s']:7.2f} tok/s alone  {fig['batched_tok_s']:7.2f} tok/s "
                f"batched x{args.requests} (x{gain} of alone; same answers: "
                f"{fig['batched_equals_sequential']})"
            )
        hf, cpp = per.get("transformers"), per.get("llama_cpp")
        vs = _ratio(cpp and cpp["sequential_tok_s"], hf and hf["sequential_tok_s"])
        figures["llama_cpp_vs_transformers"] = vs
        figures["llama_cpp_vs_transformers_batched"] = _ratio(
            cpp and cpp["batched_tok_s"], hf and hf["batched_tok_s"]
        )
        figures["load_ratio_llama_cpp_vs_transformers"] = _ratio(
            cpp and cpp["load_s"], hf and hf["load_s"]
        )
        figures["rss_ratio_llama_cpp_vs_transformers"] = _ratio(
            cpp and cpp["peak_rss_mb"], hf and hf["peak_rss_mb"]
        )
        figures.update(per)
        if vs:
            speedups.append(vs)
        summary[model] = figures
    overall = math.exp(sum(map(math.log, speedups)) / len(speedups)) if speedups else None
    summary["llama_cpp_vs_transformers"] = round(overall, 3) if overall else None
    summary["requests"] = args.requests
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
