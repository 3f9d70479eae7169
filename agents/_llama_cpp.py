"""The llama.cpp backend (optional: ``pip install 'expertgraph[local,llama]'``) for GGUF files.

llama-cpp-python's high-level ``Llama`` decodes one sequence at a time (it sets
``n_seq_max`` only for embeddings), so this module uses its low-level binding: one context
holds one sequence per row of a batch, each with its own KV cache and positions (no
padding), and a prompt sampled several times is prefilled once and its cache copied to the
other rows. Each prompt, and each row's next token, is its own decode call: llama.cpp rounds
a multi-sequence call (or a unified KV cache) differently from a one-sequence call, and a
batched row must equal the same row alone. Prompts are tokenized and answers decoded by the
transformers tokenizer, as on the transformers path, so both backends see the same ids.
"""

from __future__ import annotations

import ctypes
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from expertgraph.agents._loading import (
    LoadedModel,
    Source,
    has_chat_template,
    loading_errors,
)
from expertgraph.core.errors import ExpertCallError

_SEQ_CONTEXT = 2048
"""Tokens (prompt + answer) of one call: each row's own KV cache (the model's limit when
smaller)."""
_MAX_SEQUENCES = 4
"""Rows one context holds at once; a larger batch runs in parts (rows decode one by one
anyway, so parts cost no speed, and each row's cache costs memory)."""
_UBATCH = 512


@dataclass
class _Weights:
    """The model, its one context and the handles the engine needs; freed with the process."""

    llama: Any
    """The ``llama_cpp`` module."""
    model: Any
    context: Any
    memory: Any
    n_vocab: int
    n_ctx: int
    """Tokens of one sequence."""
    n_seq: int
    path: str

    def __repr__(self) -> str:
        return f"llama.cpp model {self.path}"


def load_llama(
    source: Source, num_threads: int | None, load_tokenizer: Callable[[Source], Any]
) -> LoadedModel:
    """Load ``source`` (a GGUF file) into llama.cpp, with the transformers tokenizer."""
    assert source.gguf_file is not None
    path = str(source.directory / source.gguf_file)
    started = time.perf_counter()
    tokenizer = load_tokenizer(source)
    with loading_errors(source):
        import llama_cpp

        _quiet_llama_logs(llama_cpp)
        weights = _open(llama_cpp, path, num_threads)
    vocab = llama_cpp.llama_model_get_vocab(weights.model)
    eos = {int(llama_cpp.llama_vocab_eos(vocab)), int(llama_cpp.llama_vocab_eot(vocab))}
    if tokenizer.eos_token_id is not None:
        eos.add(int(tokenizer.eos_token_id))
    eos_ids = frozenset(i for i in eos if i >= 0)
    return LoadedModel(
        model=weights,
        tokenizer=tokenizer,
        device="cpu",
        dtype="gguf",
        has_chat_template=has_chat_template(tokenizer),
        context_limit=weights.n_ctx,
        eos_token_ids=eos_ids,
        load_s=time.perf_counter() - started,
        new_engine=lambda: LlamaEngine(weights),
        backend="llama_cpp",
        max_rows=weights.n_seq,
        set_threads=lambda n: llama_cpp.llama_set_n_threads(weights.context, n, n),
    )


_LOG = logging.getLogger("expertgraph.llama_cpp")
_LOG_LOCK = threading.Lock()
# Cache: the log callback handed to llama.cpp, set once per process (ctypes must keep it alive).
_LOG_CALLBACK: list[Any] = []


def _quiet_llama_logs(llama_cpp: Any) -> None:
    """Send llama.cpp's log lines (every load prints dozens, warnings included: the binding's
    own callback maps the levels wrongly) to the ``expertgraph.llama_cpp`` logger, at debug."""
    with _LOG_LOCK:
        if _LOG_CALLBACK:
            return

        @llama_cpp.llama_log_callback
        def forward(level: int, text: bytes, user_data: Any) -> None:
            _LOG.debug("%s", text.decode("utf-8", "replace").rstrip("\n"))

        llama_cpp.llama_log_set(forward, ctypes.c_void_p(0))
        _LOG_CALLBACK.append(forward)


def _open(llama_cpp: Any, path: str, num_threads: int | None) -> _Weights:
    llama_cpp.llama_backend_init()
    model_params = llama_cpp.llama_model_default_params()
    model_params.n_gpu_layers = 0
    # No repacked weights: their batched and one-row kernels round differently, and a batched
    # row must equal the same row alone (Q4_K files such as Gemma's are repacked otherwise).
    model_params.use_extra_bufts = False
    model = llama_cpp.llama_model_load_from_file(path.encode(), model_params)
    if not model:
        raise ValueError(f"llama.cpp could not load {path}")
    n_seq = min(_MAX_SEQUENCES, int(llama_cpp.llama_max_parallel_sequences()))
    per_seq = min(_SEQ_CONTEXT, int(llama_cpp.llama_model_n_ctx_train(model)) or _SEQ_CONTEXT)
    params = llama_cpp.llama_context_default_params()
    params.n_ctx = per_seq * n_seq
    params.n_batch = per_seq  # a prompt goes in one decode call
    params.n_ubatch = _UBATCH
    params.n_seq_max = n_seq
    params.kv_unified = False
    if num_threads is not None:
        params.n_threads = params.n_threads_batch = num_threads
    context = llama_cpp.llama_init_from_model(model, params)
    if not context:
        llama_cpp.llama_model_free(model)
        raise ValueError(f"llama.cpp could not create a context for {path}")
    vocab = llama_cpp.llama_model_get_vocab(model)
    return _Weights(
        llama=llama_cpp,
        model=model,
        context=context,
        memory=llama_cpp.llama_get_memory(context),
        n_vocab=int(llama_cpp.llama_vocab_n_tokens(vocab)),
        n_ctx=int(llama_cpp.llama_n_ctx_seq(context)),
        n_seq=n_seq,
        path=path,
    )


class LlamaEngine:
    """:class:`~expertgraph.agents._generation.Engine` over one llama.cpp context: row ``i``
    of a batch is sequence ``i``."""

    def __init__(self, weights: _Weights) -> None:
        self._w = weights
        self._seqs: list[int] = []
        self._next_pos: list[int] = []

    def start(self, prompts: list[tuple[int, ...]], rows: list[int]) -> Any:
        import torch

        llama = self._w.llama
        llama.llama_memory_clear(self._w.memory, True)
        first = {p: rows.index(p) for p in range(len(prompts))}  # the row that prefills p
        logits = []
        for p, prompt in enumerate(prompts):
            # One decode call per prompt: prompts decoded together land in ubatches of other
            # shapes, whose kernels round differently (Gemma's rows then drift from alone).
            batch = llama.llama_batch_init(len(prompt), 0, 1)
            try:
                for pos, token in enumerate(prompt):
                    self._put(batch, pos, token, pos, first[p], pos == len(prompt) - 1)
                batch.n_tokens = len(prompt)
                logits.append(self._decode(batch, 1))
            finally:
                llama.llama_batch_free(batch)
        for row, p in enumerate(rows):
            if row != first[p]:  # the same prompt again: copy its cache, not its compute
                llama.llama_memory_seq_cp(self._w.memory, first[p], row, -1, -1)
        self._seqs = list(range(len(rows)))
        self._next_pos = [len(prompts[p]) for p in rows]
        return torch.cat(logits)[rows]

    def step(self, tokens: list[int]) -> Any:
        import torch

        llama = self._w.llama
        logits = []
        # One decode call per row: llama.cpp rounds a multi-sequence call differently from a
        # one-sequence call (Gemma's batched rows drift from the same rows alone within a few
        # dozen tokens), and on a CPU such a call is barely faster (see benchmarks/local.py).
        batch = llama.llama_batch_init(1, 0, 1)
        try:
            for k, (token, seq) in enumerate(zip(tokens, self._seqs, strict=True)):
                self._put(batch, 0, token, self._next_pos[k], seq, True)
                batch.n_tokens = 1
                logits.append(self._decode(batch, 1))
        finally:
            llama.llama_batch_free(batch)
        self._next_pos = [p + 1 for p in self._next_pos]
        return torch.cat(logits)

    def keep(self, rows: list[int]) -> None:
        kept = set(rows)
        for k, seq in enumerate(self._seqs):
            if k not in kept:  # free the row's cells for the rows still decoding
                self._w.llama.llama_memory_seq_rm(self._w.memory, seq, -1, -1)
        self._seqs = [self._seqs[k] for k in rows]
        self._next_pos = [self._next_pos[k] for k in rows]

    @staticmethod
    def _put(batch: Any, k: int, token: int, pos: int, seq: int, logits: bool) -> None:
        batch.token[k] = token
        batch.pos[k] = pos
        batch.n_seq_id[k] = 1
        batch.seq_id[k][0] = seq
        batch.logits[k] = logits

    def _decode(self, batch: Any, n_outputs: int) -> Any:
        import numpy as np
        import torch

        llama = self._w.llama
        status = llama.llama_decode(self._w.context, batch)
        if status != 0:
            raise ExpertCallError(f"llama.cpp decode failed (status {status}) in {self._w.path}")
        pointer = llama.llama_get_logits(self._w.context)
        out = np.ctypeslib.as_array(pointer, shape=(n_outputs, self._w.n_vocab))
        return torch.from_numpy(out.copy())
