"""An expert backed by a local Hugging Face causal LM: a model folder, a GGUF file or a
bundled model (``"smollm2-135m"``, ``"gemma3-270m"``).

torch and transformers are imported when a model loads, never when this module is imported.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from expertgraph.agents._bundled import (
    BUNDLED_MODELS,
    bundled_model,
    bundled_model_available,
    model_cache_dir,
    resolve_bundled,
)
from expertgraph.agents.base import Expert, ExpertCallError, RawOutput
from expertgraph.core.errors import ConfigError, ExpertLoadError
from expertgraph.core.types import ExpertCard, Message

__all__ = [
    "BUNDLED_MODELS",
    "LocalHFExpert",
    "bundled_model_available",
    "clear_model_cache",
    "completion_prompt",
    "model_cache_dir",
]

PromptFormat = Literal["auto", "chat", "completion"]
DType = Literal["auto", "float32", "bfloat16", "float16"]

_PROMPT_FORMATS = ("auto", "chat", "completion")
_DTYPES = ("auto", "float32", "bfloat16", "float16")
_INSTALL_LOCAL = "pip install 'expertgraph[local]'"


@dataclass(frozen=True)
class _Source:
    """Where a model's files are, resolved from what the user wrote."""

    directory: Path
    gguf_file: str | None
    label: str
    """What generations report as ``model``: the bundled short name or the path given."""


@dataclass
class _LoadedModel:
    """One set of weights with its tokenizer, shared by every expert that uses it."""

    model: Any
    tokenizer: Any
    device: str
    dtype: str
    has_chat_template: bool
    context_limit: int | None
    eos_token_ids: frozenset[int]
    load_s: float
    # HF models are not safe for concurrent generate(): one call at a time per set of weights.
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass(frozen=True)
class _Options:
    max_tokens: int
    temperature: float
    top_p: float | None
    stop: tuple[str, ...]
    seed: int | None


_Key = tuple[str, str | None, str, str]

# Cache: the weights loaded in this process, keyed by (folder, gguf file, dtype, device) and
# shared by every LocalHFExpert that resolves to the same key. Entries live until the process
# ends or clear_model_cache() is called. _CACHE_LOCK guards both dicts; the per-key lock in
# _LOADING makes one thread load a model while others wanting it wait, without blocking loads
# of other models.
_CACHE: dict[_Key, _LoadedModel] = {}
_LOADING: dict[_Key, threading.Lock] = {}
_CACHE_LOCK = threading.Lock()


def clear_model_cache() -> None:
    """Forget every loaded model; experts that hold one keep it until they are dropped."""
    with _CACHE_LOCK:
        _CACHE.clear()
        _LOADING.clear()


class LocalHFExpert(Expert):
    """A transformers ``AutoModelForCausalLM`` run in this process.

    ``model`` is a bundled short name (see :data:`BUNDLED_MODELS`), a model folder, a folder
    plus ``gguf_file``, or the path of a ``.gguf`` file. Prompts use the tokenizer's chat
    template, or for base models a completion prompt (``"Question: ...\\nAnswer:"``) that
    stops at a newline; ``prompt_format`` forces one. Weights load lazily on the first call or
    on ``await expert.load()``, once per process for each (model, gguf file, dtype, device).
    Calls on the same weights run one at a time, in a worker thread.

    Per-call params: ``max_tokens``, ``temperature`` (0 = greedy), ``top_p``, ``stop`` and
    ``seed`` (reproducible sampling); other params are ignored. Stop strings are looked for
    after any leading whitespace and cut from the text.

    ``num_threads`` sets torch's (process-wide) intra-op thread count at load and before each
    call. ``device="auto"`` uses CUDA when torch sees it. Loading takes seconds to minutes and
    counts toward the card's timeout when it happens inside a call: ``await expert.load()``
    first. Token costs come from the card.
    """

    kind = "local"

    def __init__(
        self,
        name: str,
        model: str,
        *,
        gguf_file: str | None = None,
        card: ExpertCard | None = None,
        prompt_format: PromptFormat = "auto",
        device: str = "auto",
        dtype: DType = "auto",
        num_threads: int | None = None,
        max_tokens: int = 64,
        temperature: float = 0.0,
        top_p: float | None = None,
        stop: Sequence[str] | None = None,
        completion_stop: Sequence[str] = ("\n",),
    ) -> None:
        super().__init__(name, card)
        if not model or not str(model).strip():
            raise ConfigError(f"expert {name!r}: 'model' must name a model", field="model")
        if prompt_format not in _PROMPT_FORMATS:
            raise ConfigError(
                f"expert {name!r}: prompt_format must be one of {_PROMPT_FORMATS}, "
                f"got {prompt_format!r}",
                field="prompt_format",
            )
        if not (device in ("auto", "cpu", "cuda") or device.startswith("cuda:")):
            raise ConfigError(
                f"expert {name!r}: device must be 'auto', 'cpu', 'cuda' or 'cuda:N', "
                f"got {device!r}",
                field="device",
            )
        if dtype not in _DTYPES:
            raise ConfigError(
                f"expert {name!r}: dtype must be one of {_DTYPES}, got {dtype!r}", field="dtype"
            )
        if num_threads is not None and num_threads < 1:
            raise ConfigError(
                f"expert {name!r}: num_threads must be >= 1, got {num_threads}", field="num_threads"
            )
        self.model_name = str(model)
        self.gguf_file = gguf_file
        self.prompt_format: PromptFormat = prompt_format
        self.device = device
        self.dtype: DType = dtype
        self.num_threads = num_threads
        self.completion_stop = tuple(completion_stop)
        self._defaults = _parse_options(
            {"max_tokens": max_tokens, "temperature": temperature, "top_p": top_p, "stop": stop},
            None,
        )
        self._loaded: _LoadedModel | None = None
        self._label = self.model_name

    # -- public helpers ------------------------------------------------------------------

    @property
    def loaded(self) -> bool:
        return self._loaded is not None

    @property
    def model(self) -> Any:
        """The loaded transformers model (shared with other experts), or None before loading."""
        return self._loaded.model if self._loaded else None

    @property
    def tokenizer(self) -> Any:
        return self._loaded.tokenizer if self._loaded else None

    @property
    def load_seconds(self) -> float | None:
        """How long the shared weights took to load (in whichever expert loaded them)."""
        return self._loaded.load_s if self._loaded else None

    def resolved_prompt_format(self) -> Literal["chat", "completion"]:
        """The prompt format calls use; needs the model loaded when ``prompt_format='auto'``."""
        if self.prompt_format != "auto":
            return self.prompt_format
        if self._loaded is None:
            raise RuntimeError(f"expert {self.name!r}: load the model first")
        return "chat" if self._loaded.has_chat_template else "completion"

    async def load(self) -> None:
        """Load (or reuse) the weights now; raises :class:`ExpertLoadError` on failure."""
        await asyncio.to_thread(self._ensure_loaded)

    # -- generation ----------------------------------------------------------------------

    async def _generate(self, messages: list[Message], params: dict[str, Any]) -> RawOutput:
        options = _parse_options(params, self._defaults)
        cancel = threading.Event()
        try:
            return await asyncio.to_thread(self._generate_sync, messages, options, cancel)
        except asyncio.CancelledError:
            # The worker thread cannot be killed; tell it to stop at the next token.
            cancel.set()
            raise

    def _ensure_loaded(self) -> _LoadedModel:
        if self._loaded is not None:
            return self._loaded
        source = _resolve_source(self.model_name, self.gguf_file)
        torch = _import_torch()
        device = _resolve_device(self.device, torch)
        dtype = _resolve_dtype(self.dtype, device, torch)
        key: _Key = (str(source.directory), source.gguf_file, dtype, device)
        loaded = _get_or_load(key, lambda: _load(source, device, dtype, self.num_threads))
        self._label = source.label
        self._loaded = loaded
        return loaded

    def _generate_sync(
        self, messages: list[Message], options: _Options, cancel: threading.Event
    ) -> RawOutput:
        loaded = self._ensure_loaded()
        torch = _import_torch()
        fmt = self.resolved_prompt_format()
        if fmt == "chat" and not loaded.has_chat_template:
            raise ExpertCallError(
                f"model {self._label!r} has no chat template; use prompt_format='completion'",
                type="prompt_error",
            )
        stops = options.stop + (self.completion_stop if fmt == "completion" else ())
        with loaded.lock:
            if cancel.is_set():
                raise ExpertCallError("cancelled before generation started", type="cancelled")
            if self.num_threads is not None:
                # Per call, in this worker thread: the setting must hold where generate runs.
                torch.set_num_threads(self.num_threads)
            inputs, continuing = _encode(loaded, messages, fmt)
            input_len = int(inputs["input_ids"].shape[1])
            max_new = options.max_tokens
            if loaded.context_limit is not None:
                room = loaded.context_limit - input_len
                if room < 1:
                    raise ExpertCallError(
                        f"prompt of {input_len} tokens does not fit the context of "
                        f"{loaded.context_limit} tokens of {self._label!r}",
                        type="context_length",
                    )
                max_new = min(max_new, room)
            output = _run_generate(loaded, inputs, input_len, max_new, options, stops, cancel)
        if cancel.is_set():
            raise ExpertCallError("cancelled during generation", type="cancelled")
        new_tokens = output[0, input_len:]
        n_out = int(new_tokens.shape[0])
        text = loaded.tokenizer.decode(new_tokens, skip_special_tokens=True)
        cut = _find_stop(text, stops)
        if cut is not None:
            text, finish = text[:cut], "stop"
        elif n_out and int(new_tokens[-1]) in loaded.eos_token_ids:
            finish = "stop"
        elif n_out >= max_new:
            finish = "length"
        else:
            finish = "stop"
        return RawOutput(
            text=text.rstrip() if continuing else text.strip(),
            finish_reason=finish,
            input_tokens=input_len,
            output_tokens=n_out,
            model=self._label,
            extra={"prompt_format": fmt, "device": loaded.device},
        )


# -- prompts ---------------------------------------------------------------------------------


def completion_prompt(messages: Sequence[Message]) -> str:
    """A plain-text prompt for base models: system text, then Question/Answer turns.

    Earlier user/assistant turns become few-shot pairs; the prompt ends with ``Answer:``
    (or with a final assistant message, which the model continues).
    """
    lines: list[str] = []
    for message in messages:
        content = message.content.strip()
        if message.role == "user":
            lines.append(f"Question: {content}")
        elif message.role == "assistant":
            lines.append(f"Answer: {content}")
        else:  # system and tool text go in as-is
            lines.append(content)
    if not messages or messages[-1].role != "assistant":
        lines.append("Answer:")
    return "\n".join(lines)


def _encode(loaded: _LoadedModel, messages: list[Message], fmt: str) -> tuple[dict[str, Any], bool]:
    """Token ids for the prompt, on the model's device; and whether it continues an answer."""
    tok = loaded.tokenizer
    continuing = bool(messages) and messages[-1].role == "assistant"
    try:
        if fmt == "chat":
            conversation = [{"role": m.role, "content": m.content} for m in messages]
            enc = tok.apply_chat_template(
                conversation,
                add_generation_prompt=not continuing,
                continue_final_message=continuing,
                return_tensors="pt",
                return_dict=True,
            )
        else:
            enc = tok(completion_prompt(messages), return_tensors="pt")
    except Exception as exc:  # noqa: BLE001 - templates raise anything (jinja errors too)
        raise ExpertCallError(
            f"could not build the {fmt} prompt: {exc}", type="prompt_error"
        ) from exc
    return {k: v.to(loaded.device) for k, v in dict(enc).items()}, continuing


def _find_stop(text: str, stops: Sequence[str]) -> int | None:
    """Index where the earliest stop string starts, ignoring leading whitespace."""
    start = len(text) - len(text.lstrip())
    hits = [i for i in (text.find(s, start) for s in stops if s) if i >= 0]
    return min(hits) if hits else None


# -- options ---------------------------------------------------------------------------------


def _parse_options(params: dict[str, Any], defaults: _Options | None) -> _Options:
    def pick(key: str, fallback: Any) -> Any:
        value = params.get(key)
        return fallback if value is None else value

    try:
        max_tokens = int(pick("max_tokens", defaults.max_tokens if defaults else 64))
        temperature = float(pick("temperature", defaults.temperature if defaults else 0.0))
        top_p_raw = pick("top_p", defaults.top_p if defaults else None)
        top_p = None if top_p_raw is None else float(top_p_raw)
        stop_raw = params.get("stop")
        if stop_raw is None:
            stop = defaults.stop if defaults else ()
        elif isinstance(stop_raw, str):
            stop = (stop_raw,)
        else:
            stop = tuple(str(s) for s in stop_raw)
        seed_raw = params.get("seed")
        seed = None if seed_raw is None else int(seed_raw)
    except (TypeError, ValueError) as exc:
        raise ExpertCallError(
            f"invalid generation parameter: {exc}", type="invalid_params"
        ) from exc
    if max_tokens < 1:
        raise ExpertCallError(f"max_tokens must be >= 1, got {max_tokens}", type="invalid_params")
    if temperature < 0:
        raise ExpertCallError(f"temperature must be >= 0, got {temperature}", type="invalid_params")
    if top_p is not None and not 0 < top_p <= 1:
        raise ExpertCallError(f"top_p must be in (0, 1], got {top_p}", type="invalid_params")
    return _Options(max_tokens, temperature, top_p, stop, seed)


# -- loading ---------------------------------------------------------------------------------


def _resolve_source(model: str, gguf_file: str | None) -> _Source:
    """Turn a short name or path into a folder (+ GGUF file name); raise ExpertLoadError."""
    if gguf_file is None:
        bundled = bundled_model(model)
        if bundled is not None:  # a short name wins; write "./name" for a folder of that name
            path = resolve_bundled(model)
            return _Source(path.parent, path.name, bundled.name)
    path = Path(model).expanduser()
    if gguf_file is not None:
        if not path.is_dir():
            raise ExpertLoadError(f"model folder {model!r} does not exist ({path.absolute()})")
        if not (path / gguf_file).is_file():
            raise ExpertLoadError(f"GGUF file {gguf_file!r} not found in model folder {model!r}")
        return _Source(path.absolute(), gguf_file, str(Path(model) / gguf_file))
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise ExpertLoadError(
                f"model {model!r} is a file but not a .gguf file; "
                "give a model folder or a GGUF file"
            )
        return _Source(path.absolute().parent, path.name, model)
    if path.is_dir():
        if (path / "config.json").is_file():
            return _Source(path.absolute(), None, model)
        ggufs = sorted(p.name for p in path.glob("*.gguf"))
        if len(ggufs) == 1:
            return _Source(path.absolute(), ggufs[0], model)
        if ggufs:
            raise ExpertLoadError(
                f"model folder {model!r} holds several GGUF files ({', '.join(ggufs)}); "
                "choose one with gguf_file"
            )
        raise ExpertLoadError(f"model folder {model!r} has neither a config.json nor a .gguf file")
    raise ExpertLoadError(
        f"model {model!r}: no such file or folder ({path.absolute()}), and not a bundled model "
        f"({', '.join(BUNDLED_MODELS)})"
    )


def _import_torch() -> Any:
    try:
        import torch
    except ImportError as exc:
        raise ExpertLoadError(f"local experts need torch; install with: {_INSTALL_LOCAL}") from exc
    return torch


def _resolve_device(device: str, torch: Any) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ExpertLoadError(f"device {device!r} asked for, but torch sees no CUDA device")
    return device


def _resolve_dtype(dtype: str, device: str, torch: Any) -> str:
    if dtype != "auto":
        return dtype
    if device.startswith("cuda"):
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    return "float32"  # half precision is slow or unsupported on most CPUs


def _get_or_load(key: _Key, loader: Callable[[], _LoadedModel]) -> _LoadedModel:
    with _CACHE_LOCK:
        hit = _CACHE.get(key)
        if hit is not None:
            return hit
        key_lock = _LOADING.setdefault(key, threading.Lock())
    with key_lock:
        with _CACHE_LOCK:
            hit = _CACHE.get(key)
        if hit is not None:  # another thread loaded it while we waited
            return hit
        loaded = loader()
        with _CACHE_LOCK:
            _CACHE[key] = loaded
        return loaded


def _load(source: _Source, device: str, dtype: str, num_threads: int | None) -> _LoadedModel:
    torch = _import_torch()
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:
        raise ExpertLoadError(
            f"local experts need transformers; install with: {_INSTALL_LOCAL}"
        ) from exc
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    # transformers draws tqdm bars while it dequantizes GGUF weights; a CLI run prints its own
    # progress, and a server's logs should not fill with bars.
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    where = source.directory / source.gguf_file if source.gguf_file else source.directory
    kwargs: dict[str, Any] = {"local_files_only": True}
    if source.gguf_file:
        kwargs["gguf_file"] = source.gguf_file
    started = time.perf_counter()
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(source.directory), **kwargs)
        model = AutoModelForCausalLM.from_pretrained(
            str(source.directory), dtype=getattr(torch, dtype), **kwargs
        )
        model = model.to(device).eval()
    except ImportError as exc:  # GGUF loading needs the gguf and accelerate packages
        raise ExpertLoadError(
            f"loading {source.label!r} ({where}) needs a missing package: {exc}; "
            f"install with: {_INSTALL_LOCAL}"
        ) from exc
    except Exception as exc:  # noqa: BLE001 - transformers raises OSError, ValueError, KeyError...
        raise ExpertLoadError(f"could not load model {source.label!r} from {where}: {exc}") from exc
    eos = model.generation_config.eos_token_id
    if eos is None:
        eos = tokenizer.eos_token_id
    eos_ids = frozenset(
        int(i) for i in (eos if isinstance(eos, (list, tuple)) else [eos]) if i is not None
    )
    limit = getattr(model.config, "max_position_embeddings", None)
    return _LoadedModel(
        model=model,
        tokenizer=tokenizer,
        device=device,
        dtype=dtype,
        has_chat_template=bool(getattr(tokenizer, "chat_template", None)),
        context_limit=int(limit) if limit else None,
        eos_token_ids=eos_ids,
        load_s=time.perf_counter() - started,
    )


# -- the generate call -----------------------------------------------------------------------


def _run_generate(
    loaded: _LoadedModel,
    inputs: dict[str, Any],
    input_len: int,
    max_new: int,
    options: _Options,
    stops: tuple[str, ...],
    cancel: threading.Event,
) -> Any:
    import torch
    from transformers import LogitsProcessorList, StoppingCriteriaList

    sampler_cls, stop_cls = _hf_classes()
    config = copy.deepcopy(loaded.model.generation_config)
    # Always decode greedily inside transformers; sampling, when asked, is done by our own
    # processor with a private torch.Generator so a seed reproduces a call whatever other
    # threads do with torch's global RNG.
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
    """Subclasses of transformers' hooks, built on first use so importing stays torch-free."""
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
                done = _find_stop(text, self.stops) is not None
            batch = input_ids.shape[0]
            return torch.full((batch,), done, dtype=torch.bool, device=input_ids.device)

    return SeededSampler, TextStop
