"""One ``generate`` of a local model under our options: greedy or seeded sampling, stop strings.

Sampling uses a private ``torch.Generator`` per call, so a seed reproduces a call whatever
other threads do with torch's global RNG. Stop strings are checked on the decoded new text,
and a cancelled call stops at the next token.
"""

from __future__ import annotations

import copy
import functools
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from expertgraph.agents._loading import LoadedModel
from expertgraph.agents.base import INVALID_PARAMS, ExpertCallError


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


def run_generate(
    loaded: LoadedModel,
    inputs: dict[str, Any],
    max_new: int,
    options: Options,
    stops: tuple[str, ...],
    cancel: threading.Event,
) -> Any:
    """The ids of prompt and answer (batch of one); the caller holds ``loaded.lock``."""
    import torch
    from transformers import LogitsProcessorList, StoppingCriteriaList

    sampler_cls, stop_cls = _hf_classes()
    input_len = int(inputs["input_ids"].shape[1])
    config = copy.deepcopy(loaded.model.generation_config)
    # Always decode greedily inside transformers; sampling, when asked, is our own processor.
    config.do_sample = False
    for attr in ("temperature", "top_p", "top_k", "min_p", "typical_p"):
        setattr(config, attr, None)
    config.max_new_tokens = max_new
    config.max_length = None
    if config.pad_token_id is None:
        pad = loaded.tokenizer.pad_token_id
        config.pad_token_id = pad if pad is not None else min(loaded.eos_token_ids, default=0)
    processors = LogitsProcessorList()
    if options.temperature > 0:
        from transformers import TemperatureLogitsWarper, TopPLogitsWarper

        processors.append(TemperatureLogitsWarper(options.temperature))
        if options.top_p is not None and options.top_p < 1:
            processors.append(TopPLogitsWarper(options.top_p))
        processors.append(sampler_cls(options.seed))
    # Our own stop-string check: transformers' stop_strings re-indexes the whole vocabulary
    # on every call (~1.5 s for Gemma's 262k tokens); decoding a few new tokens is cheap.
    criteria = StoppingCriteriaList([stop_cls(loaded.tokenizer, input_len, stops, cancel)])
    with torch.inference_mode():
        return loaded.model.generate(
            **inputs,
            generation_config=config,
            logits_processor=processors,
            stopping_criteria=criteria,
        )


@functools.cache
def _hf_classes() -> tuple[type, type]:
    """Subclasses of transformers' hooks, built on first use so importing stays torch-free.

    Cached for the process (functools.cache): the classes are built once.
    """
    import torch
    from transformers import LogitsProcessor, StoppingCriteria

    class SeededSampler(LogitsProcessor):
        """Draws the next token with a private generator; masks every other token."""

        def __init__(self, seed: int | None) -> None:
            self.seed = seed
            self.generator: Any = None

        def __call__(self, input_ids: Any, scores: Any) -> Any:
            if self.generator is None:
                self.generator = torch.Generator(device=scores.device)
                if self.seed is None:
                    self.generator.seed()
                else:
                    self.generator.manual_seed(self.seed)
            probs = torch.softmax(scores.float(), dim=-1)
            chosen = torch.multinomial(probs, 1, generator=self.generator)
            masked = torch.full_like(scores, float("-inf"))
            return masked.scatter_(1, chosen, 0.0)

    class TextStop(StoppingCriteria):
        """Stops when the new text holds a stop string, or when the caller gave up."""

        def __init__(
            self, tokenizer: Any, prompt_len: int, stops: Sequence[str], cancel: threading.Event
        ) -> None:
            self.tokenizer = tokenizer
            self.prompt_len = prompt_len
            self.stops = tuple(s for s in stops if s)
            self.cancel = cancel

        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            done = self.cancel.is_set()
            if not done and self.stops:
                text = self.tokenizer.decode(
                    input_ids[0, self.prompt_len :], skip_special_tokens=True
                )
                done = find_stop(text, self.stops) is not None
            batch = input_ids.shape[0]
            return torch.full((batch,), done, dtype=torch.bool, device=input_ids.device)

    return SeededSampler, TextStop
