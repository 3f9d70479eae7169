"""Generating from a local model, for a batch of rows at once: options, sampling, stops.

One decoding loop serves every backend: a backend (:class:`Engine`) only runs the model
forward. Each row samples with its own ``torch.Generator`` seeded from its request, so a
seeded row draws the same tokens in a batch as alone, whatever other threads do with torch's
global RNG. Rows with the same prompt share one prefill. Stop strings are checked on each
row's decoded new text; a finished or cancelled row leaves the batch at once.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Protocol

from expertgraph.agents.base import INVALID_PARAMS, ExpertCallError

CANCELLED = "cancelled"


@dataclass(frozen=True)
class Options:
    """The generation params a local expert honours."""

    max_tokens: int
    temperature: float
    """0: greedy."""
    top_p: float | None
    stop: tuple[str, ...]
    seed: int | None


def parse_options(params: Mapping[str, Any], defaults: Options | None = None) -> Options:
    """Options from ``params``, where a param that is absent or None takes its default.

    Raises :class:`ExpertCallError` (``invalid_params``) for a missing or unusable value.
    """

    def given(key: str) -> Any:
        value = params.get(key)
        return getattr(defaults, key) if value is None and defaults is not None else value

    try:
        max_tokens = int(given("max_tokens"))
        temperature = float(given("temperature"))
        top_p_raw = given("top_p")
        top_p = None if top_p_raw is None else float(top_p_raw)
        stop_raw = given("stop")
        if stop_raw is None:
            stop: tuple[str, ...] = ()
        elif isinstance(stop_raw, str):
            stop = (stop_raw,)
        else:
            stop = tuple(str(s) for s in stop_raw)
        seed_raw = given("seed")
        seed = None if seed_raw is None else int(seed_raw)
    except (TypeError, ValueError) as exc:
        raise ExpertCallError(f"invalid generation parameter: {exc}", type=INVALID_PARAMS) from exc
    if max_tokens < 1:
        raise ExpertCallError(f"max_tokens must be >= 1, got {max_tokens}", type=INVALID_PARAMS)
    if temperature < 0:
        raise ExpertCallError(f"temperature must be >= 0, got {temperature}", type=INVALID_PARAMS)
    if top_p is not None and not 0 < top_p <= 1:
        raise ExpertCallError(f"top_p must be in (0, 1], got {top_p}", type=INVALID_PARAMS)
    return Options(max_tokens, temperature, top_p, stop, seed)


def find_stop(text: str, stops: Sequence[str]) -> int | None:
    """Index where the earliest stop string starts, ignoring leading whitespace."""
    start = len(text) - len(text.lstrip())
    hits = [i for i in (text.find(s, start) for s in stops if s) if i >= 0]
    return min(hits) if hits else None


@dataclass
class Request:
    """One row to generate: a tokenized prompt and how to continue it.

    ``future`` gets the new token ids (an end-of-sequence token included), or the error.
    """

    prompt: tuple[int, ...]
    max_new: int
    options: Options
    stops: tuple[str, ...]
    cancel: threading.Event = field(default_factory=threading.Event)
    num_threads: int | None = None
    max_batch_size: int = 8
    batch_window_s: float = 0.005
    future: Future[list[int]] = field(default_factory=Future)


class Engine(Protocol):
    """A backend's forward pass over the rows of one batch; logits are float32 tensors."""

    def start(self, prompts: list[tuple[int, ...]], rows: list[int]) -> Any:
        """Prefill each distinct prompt once; row ``i`` continues ``prompts[rows[i]]``.

        Returns the next-token logits, one row per row: shape ``(len(rows), vocab)``.
        """

    def step(self, tokens: list[int]) -> Any:
        """Feed one token per live row; the next-token logits of each."""

    def keep(self, rows: list[int]) -> None:
        """Drop every live row not in ``rows`` (indices into the live rows, in order)."""


def cancelled_error() -> ExpertCallError:
    return ExpertCallError("cancelled during generation", type=CANCELLED)


def decode_batch(
    engine: Engine, requests: Sequence[Request], tokenizer: Any, eos_ids: frozenset[int]
) -> None:
    """Generate every request's tokens as one batch; settles each request's future."""
    import torch

    prompts: dict[tuple[int, ...], int] = {}
    rows = [prompts.setdefault(r.prompt, len(prompts)) for r in requests]
    live = list(range(len(requests)))
    new: list[list[int]] = [[] for _ in requests]
    generators = [_generator(r.options) for r in requests]
    try:
        with torch.inference_mode():
            logits = engine.start(list(prompts), rows)
            while True:
                chosen = _choose(logits, [requests[i] for i in live], [generators[i] for i in live])
                kept: list[int] = []
                for j, (i, token) in enumerate(zip(live, chosen, strict=True)):
                    new[i].append(token)
                    if _finished(requests[i], new[i], token, tokenizer, eos_ids):
                        _settle(requests[i], new[i])
                    else:
                        kept.append(j)
                if not kept:
                    return
                if len(kept) < len(live):
                    engine.keep(kept)
                    live = [live[j] for j in kept]
                logits = engine.step([new[i][-1] for i in live])
    except BaseException as exc:
        for request in requests:
            if not request.future.done():
                request.future.set_exception(exc)
        if not isinstance(exc, Exception):
            raise


def _generator(options: Options) -> Any:
    if options.temperature <= 0:
        return None
    import torch

    generator = torch.Generator()  # on the CPU: rows sample there on every device
    if options.seed is None:
        generator.seed()
    else:
        generator.manual_seed(options.seed)
    return generator


def _choose(logits: Any, requests: list[Request], generators: list[Any]) -> list[int]:
    """The next token of each live row: argmax, or a draw from its own generator."""
    import torch

    chosen: list[int] = logits.argmax(dim=-1).tolist()
    sampled = [j for j, r in enumerate(requests) if r.options.temperature > 0]
    if sampled:
        rows = logits[sampled].float().cpu()
        for k, j in enumerate(sampled):
            options = requests[j].options
            scores = rows[k] / options.temperature
            if options.top_p is not None and options.top_p < 1:
                scores = _top_p(scores, options.top_p)
            probs = torch.softmax(scores, dim=-1)
            chosen[j] = int(torch.multinomial(probs, 1, generator=generators[j]))
    return chosen


def _top_p(scores: Any, top_p: float) -> Any:
    """Keep the smallest set of most likely tokens whose probability reaches ``top_p``."""
    import torch

    ordered, order = torch.sort(scores, descending=False)
    cumulative = ordered.softmax(dim=-1).cumsum(dim=-1)
    drop = cumulative <= 1 - top_p
    drop[-1] = False  # the most likely token always stays
    return scores.masked_fill(drop.scatter(0, order, drop), float("-inf"))


def _finished(
    request: Request, ids: list[int], token: int, tokenizer: Any, eos_ids: frozenset[int]
) -> bool:
    if request.cancel.is_set():
        return True
    if token in eos_ids or len(ids) >= request.max_new:
        return True
    if request.stops:
        text = tokenizer.decode(ids, skip_special_tokens=True)
        return find_stop(text, request.stops) is not None
    return False


def _settle(request: Request, ids: list[int]) -> None:
    if request.cancel.is_set():
        request.future.set_exception(cancelled_error())
    else:
        request.future.set_result(list(ids))
