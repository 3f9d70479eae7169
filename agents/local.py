"""An expert backed by a local causal LM (transformers or llama.cpp): a model folder, a GGUF
file or a bundled model (``"smollm2-135m"``, ``"gemma3-270m"``).

torch, transformers and llama_cpp are imported when a model loads, never when this module is
imported.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

from expertgraph.agents._generation import (
    Options,
    Request,
    find_stop,
    parse_options,
)
from expertgraph.agents._loading import (
    Backend,
    DType,
    LoadedModel,
    load_model,
    resolve_source,
)
from expertgraph.agents._prompting import (
    PROMPT_ERROR,
    PromptFormat,
    continues_answer,
    encode_ids,
    template_takes_tools,
)
from expertgraph.agents._tool_offer import ToolOffer, take_tool_offer
from expertgraph.agents._tool_parsing import MARKERS, parse_tool_output
from expertgraph.agents.base import CONTEXT_WINDOW, TOOLS_UNSUPPORTED, Expert, RawOutput
from expertgraph.core.errors import ConfigError, ExpertCallError
from expertgraph.core.tools import ToolCall
from expertgraph.core.types import ExpertCard, Message

__all__ = ["LocalHFExpert"]

_PROMPT_FORMATS = get_args(PromptFormat)
_DTYPES = get_args(DType)
_BACKENDS = get_args(Backend)


class LocalHFExpert(Expert):
    """A local causal LM run in this process, through transformers or llama.cpp.

    ``model`` is a bundled short name (see :data:`expertgraph.agents.BUNDLED_MODELS`), a model
    folder, a folder plus ``gguf_file``, or the path of a ``.gguf`` file. Prompts use the
    tokenizer's chat template, or for base models a completion prompt
    (``"Question: ...\\nAnswer:"``) that stops at a newline; ``prompt_format`` forces one.
    Weights load lazily on the first call or on ``await expert.load()``, once per process for
    each (model, gguf file, dtype, device, backend).

    ``backend``: ``"transformers"``, ``"llama_cpp"`` (GGUF files; ``pip install
    'expertgraph[local,llama]'``) or ``"auto"``: llama.cpp for a GGUF file on the CPU when it
    is installed, else transformers; :attr:`backend_used` says which once loaded. Both use
    the transformers tokenizer, so prompts, chat templates and token counts are the same.

    Concurrent calls on the same weights are batched: a worker thread gathers them for up to
    ``batch_window_ms`` and generates up to ``max_batch_size`` rows together (left-padded,
    each with its own stop strings, token limit and sampling seed, so a batched answer equals
    the same call made alone); calls with the same prompt share its prefill. The card's
    ``max_concurrency`` bounds how many calls of one expert are in flight.

    Per-call params: ``max_tokens``, ``temperature`` (0 = greedy), ``top_p``, ``stop`` and
    ``seed`` (reproducible sampling); other params are ignored. Stop strings are looked for
    after any leading whitespace and cut from the text.

    ``num_threads`` sets torch's (process-wide) intra-op thread count at load and before each
    call. ``device="auto"`` uses CUDA when torch sees it. Loading takes seconds to minutes and
    counts toward the card's timeout when it happens inside a call: ``await expert.load()``
    first. Token costs come from the card.

    Tools (``tools``, ``tool_choice``) are rendered by the chat template when its text takes
    ``tools``, and the reply's Hermes/Qwen ``<tool_call>`` blocks or Llama-3.1 JSON become
    ``Generation.tool_calls``; the text outside them stays the text. Once loaded, such a
    model's card says it can call tools (unless the card given sets ``tools``). A model
    whose template cannot take tools fails a call that offers them (``tools_unsupported``);
    ``tool_choice="none"`` answers in text without them. A local model cannot be forced to
    call: ``"required"`` or a named choice may still get text.
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
        backend: Backend = "auto",
        max_batch_size: int = 8,
        batch_window_ms: float = 5.0,
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
        if backend not in _BACKENDS:
            raise ConfigError(
                f"expert {name!r}: backend must be one of {_BACKENDS}, got {backend!r}",
                field="backend",
            )
        if max_batch_size < 1:
            raise ConfigError(
                f"expert {name!r}: max_batch_size must be >= 1, got {max_batch_size}",
                field="max_batch_size",
            )
        if not batch_window_ms >= 0:
            raise ConfigError(
                f"expert {name!r}: batch_window_ms must be >= 0, got {batch_window_ms}",
                field="batch_window_ms",
            )
        if num_threads is not None and num_threads < 1:
            raise ConfigError(
                f"expert {name!r}: num_threads must be >= 1, got {num_threads}", field="num_threads"
            )
        try:
            self._defaults = parse_options(
                {"max_tokens": max_tokens, "temperature": temperature, "top_p": top_p, "stop": stop}
            )
        except ExpertCallError as exc:
            raise ConfigError(f"expert {name!r}: {exc}") from exc
        self.model_name = str(model)
        self.gguf_file = gguf_file
        self.prompt_format: PromptFormat = prompt_format
        self.device = device
        self.dtype: DType = dtype
        self.num_threads = num_threads
        self.completion_stop = tuple(completion_stop)
        self.backend: Backend = backend
        self.max_batch_size = max_batch_size
        self.batch_window_ms = batch_window_ms
        self._loaded: LoadedModel | None = None
        self._label = self.model_name

    # -- public helpers ------------------------------------------------------------------

    @property
    def loaded(self) -> bool:
        return self._loaded is not None

    @property
    def model(self) -> Any:
        """The loaded model (shared with other experts), or None before loading: a
        transformers model, or llama.cpp's model and context handles."""
        return self._loaded.model if self._loaded else None

    @property
    def backend_used(self) -> str | None:
        """``"transformers"`` or ``"llama_cpp"`` once loaded, else None."""
        return self._loaded.backend if self._loaded else None

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
        offer = take_tool_offer(params)
        options = parse_options(params, self._defaults)
        loaded, request, prepared = await asyncio.to_thread(self._prepare, messages, options, offer)
        future = loaded.batcher.submit(request)
        try:
            new_tokens = await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            # The worker cannot be interrupted; the row leaves its batch at the next token.
            request.cancel.set()
            raise
        return self._output(loaded, request, prepared, new_tokens, messages)

    def _ensure_loaded(self) -> LoadedModel:
        if self._loaded is None:
            source = resolve_source(self.model_name, self.gguf_file)
            loaded = load_model(source, self.device, self.dtype, self.num_threads, self.backend)
            self._label = source.label
            self._loaded = loaded
            if "tools" not in self.card.model_fields_set and self._takes_tools(loaded):
                self.card = self.card.model_copy(update={"tools": True})
        return self._loaded

    def _takes_tools(self, loaded: LoadedModel) -> bool:
        return (
            self.prompt_format != "completion"
            and loaded.has_chat_template
            and template_takes_tools(loaded.tokenizer)
        )

    def _prepare(
        self, messages: list[Message], options: Options, offer: ToolOffer | None
    ) -> tuple[LoadedModel, Request, _Prepared]:
        """The call's tokenized prompt and limits; raises for a call that cannot run."""
        loaded = self._ensure_loaded()
        fmt = self.resolved_prompt_format()
        if fmt == "chat" and not loaded.has_chat_template:
            raise ExpertCallError(
                f"model {self._label!r} has no chat template; use prompt_format='completion'",
                type=PROMPT_ERROR,
            )
        tools = offer is not None and offer.active
        if tools and not (fmt == "chat" and template_takes_tools(loaded.tokenizer)):
            where = "its chat template" if fmt == "chat" else "a completion prompt"
            raise ExpertCallError(
                f"model {self._label!r} cannot be offered tools: {where} does not render them",
                type=TOOLS_UNSUPPORTED,
            )
        stops = options.stop + (self.completion_stop if fmt == "completion" else ())
        specs = [t.openai() for t in offer.tools] if tools and offer else None
        prompt = encode_ids(loaded.tokenizer, messages, fmt, specs)
        max_new = options.max_tokens
        if loaded.context_limit is not None:
            room = loaded.context_limit - len(prompt)
            if room < 1:
                raise ExpertCallError(
                    f"prompt of {len(prompt)} tokens does not fit the context of "
                    f"{loaded.context_limit} tokens of {self._label!r}",
                    type=CONTEXT_WINDOW,
                )
            max_new = min(max_new, room)
        request = Request(
            prompt=prompt,
            max_new=max_new,
            options=options,
            stops=stops,
            num_threads=self.num_threads,
            max_batch_size=self.max_batch_size,
            batch_window_s=self.batch_window_ms / 1000.0,
        )
        return loaded, request, _Prepared(fmt, tools)

    def _output(
        self,
        loaded: LoadedModel,
        request: Request,
        prepared: _Prepared,
        new_tokens: list[int],
        messages: list[Message],
    ) -> RawOutput:
        n_out = len(new_tokens)
        if prepared.tools:
            text = _decode_keeping_markers(loaded.tokenizer, new_tokens)
        else:
            text = loaded.tokenizer.decode(new_tokens, skip_special_tokens=True)
        cut = find_stop(text, request.stops)
        if cut is not None:
            text, finish = text[:cut], "stop"
        elif n_out and new_tokens[-1] in loaded.eos_token_ids:
            finish = "stop"
        elif n_out >= request.max_new:
            finish = "length"
        else:
            finish = "stop"
        calls: list[ToolCall] = []
        if prepared.tools:
            parsed = parse_tool_output(text)
            text, calls = parsed.text, parsed.tool_calls
            finish = "tool_calls" if calls else finish
        return RawOutput(
            # A continued answer keeps its leading space: it follows the given text.
            text=text.rstrip() if continues_answer(messages) else text.strip(),
            tool_calls=calls,
            finish_reason=finish,
            input_tokens=len(request.prompt),
            output_tokens=n_out,
            model=self._label,
            extra={
                "prompt_format": prepared.fmt,
                "device": loaded.device,
                "backend": loaded.backend,
            },
        )


@dataclass(frozen=True)
class _Prepared:
    fmt: Literal["chat", "completion"]
    tools: bool


def _decode_keeping_markers(tokenizer: Any, ids: Any) -> str:
    """The new text without special tokens, except tool-call markers some tokenizers mark
    special (Llama's ``<|python_tag|>``)."""
    special = set(getattr(tokenizer, "all_special_ids", None) or [])
    kept = [
        i
        for i in (int(t) for t in ids)
        if i not in special or tokenizer.convert_ids_to_tokens(i) in MARKERS
    ]
    return str(tokenizer.decode(kept, skip_special_tokens=False))
