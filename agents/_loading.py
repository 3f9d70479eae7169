"""Loading local models: where the files are, which device and dtype, and the model cache.

A model is a bundled short name, a folder (``config.json`` or one ``.gguf`` file), a folder
plus a GGUF file name, or the path of a ``.gguf`` file. torch and transformers are imported
when a model loads, never when this module is imported.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from expertgraph.agents._batching import Batcher
from expertgraph.agents._bundled import (
    BUNDLED_MODELS,
    bundled_model,
    model_cache_dir,
    resolve_bundled,
)
from expertgraph.agents._generation import Engine, Request, decode_batch
from expertgraph.agents._transformers import TransformersEngine
from expertgraph.core.errors import ExpertLoadError

DType = Literal["auto", "float32", "bfloat16", "float16"]
Backend = Literal["auto", "transformers", "llama_cpp"]
"""``auto``: llama.cpp for a GGUF file on the CPU when ``llama_cpp`` is installed, else
transformers."""

INSTALL_LOCAL = "pip install 'expertgraph[local]'"
INSTALL_LLAMA = "pip install 'expertgraph[local,llama]'"


@dataclass(frozen=True)
class Source:
    """Where a model's files are, resolved from what the user wrote."""

    directory: Path
    gguf_file: str | None
    label: str
    """What generations report as ``model``: the bundled short name or the path given."""


@dataclass
class LoadedModel:
    """One set of weights with its tokenizer, shared by every expert that uses it.

    Calls go through ``batcher``: its one worker thread is the only user of the weights, and
    runs concurrent calls as one batch.
    """

    model: Any
    """The transformers model, or the ``llama_cpp.Llama``."""
    tokenizer: Any
    """The transformers tokenizer (both backends: the same prompts and token ids)."""
    device: str
    dtype: str
    has_chat_template: bool
    context_limit: int | None
    """The most tokens (prompt + answer) one call may hold."""
    eos_token_ids: frozenset[int]
    load_s: float
    new_engine: Callable[[], Engine]
    """A fresh forward pass over the weights, for one batch."""
    backend: Literal["transformers", "llama_cpp"] = "transformers"
    max_rows: int | None = None
    """The most rows one forward pass takes (None: any); a larger batch runs in parts."""
    set_threads: Callable[[int], None] | None = None
    """Sets the thread count before a batch; None: torch's."""
    batcher: Batcher = field(init=False)

    def __post_init__(self) -> None:
        self.batcher = Batcher(self._run_batch, self.backend)

    def _run_batch(self, requests: list[Request]) -> None:
        threads = requests[0].num_threads
        if threads is not None:
            # Before each batch: torch's setting is process-wide, and other code may change it.
            (self.set_threads or import_torch().set_num_threads)(threads)
        for part in self._parts(requests):
            decode_batch(self.new_engine(), part, self.tokenizer, self.eos_token_ids)

    def _parts(self, requests: list[Request]) -> list[list[Request]]:
        """``requests`` in order, in parts of at most ``max_rows``."""
        size = self.max_rows or len(requests)
        return [requests[i : i + size] for i in range(0, len(requests), size)]


_Key = tuple[str, str | None, str, str, str]

# Cache: the weights loaded in this process, keyed by (folder, gguf file, dtype, device) and
# shared by every expert that resolves to the same key. Entries live until the process ends
# or clear_model_cache() is called. _CACHE_LOCK guards both dicts; the per-key lock in
# _LOADING makes one thread load a model while others wanting it wait, without blocking loads
# of other models.
_CACHE: dict[_Key, LoadedModel] = {}
_LOADING: dict[_Key, threading.Lock] = {}
_CACHE_LOCK = threading.Lock()


def clear_model_cache() -> None:
    """Forget every loaded model; experts that hold one keep it until they are dropped."""
    with _CACHE_LOCK:
        _CACHE.clear()
        _LOADING.clear()


def import_torch() -> Any:
    """The ``torch`` module, or :class:`ExpertLoadError` naming the install command."""
    try:
        import torch
    except ImportError as exc:
        raise ExpertLoadError(f"local experts need torch; install with: {INSTALL_LOCAL}") from exc
    return torch


def resolve_source(model: str, gguf_file: str | None) -> Source:
    """Turn a short name or path into a folder (+ GGUF file name); raise ExpertLoadError."""
    if gguf_file is None:
        bundled = bundled_model(model)
        if bundled is not None:  # a short name wins; write "./name" for a folder of that name
            path = resolve_bundled(model)
            return Source(path.parent, path.name, bundled.name)
    path = Path(model).expanduser()
    if gguf_file is not None:
        if not path.is_dir():
            raise ExpertLoadError(f"model folder {model!r} does not exist ({path.absolute()})")
        if not (path / gguf_file).is_file():
            raise ExpertLoadError(f"GGUF file {gguf_file!r} not found in model folder {model!r}")
        return Source(path.absolute(), gguf_file, str(Path(model) / gguf_file))
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise ExpertLoadError(
                f"model {model!r} is a file but not a .gguf file; "
                "give a model folder or a GGUF file"
            )
        return Source(path.absolute().parent, path.name, model)
    if path.is_dir():
        if (path / "config.json").is_file():
            return Source(path.absolute(), None, model)
        ggufs = sorted(p.name for p in path.glob("*.gguf"))
        if len(ggufs) == 1:
            return Source(path.absolute(), ggufs[0], model)
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


def llama_cpp_installed() -> bool:
    """Whether the optional llama.cpp binding is importable (imports nothing)."""
    try:
        return importlib.util.find_spec("llama_cpp") is not None
    except (ImportError, ValueError):
        return False


def resolve_backend(backend: Backend, source: Source, device: str) -> str:
    """The backend that will run ``source`` on ``device`` (already resolved: cpu/cuda...)."""
    if backend == "transformers":
        return backend
    if backend == "llama_cpp":
        if source.gguf_file is None:
            raise ExpertLoadError(
                f"model {source.label!r}: backend 'llama_cpp' needs a GGUF file, "
                "not a transformers model folder"
            )
        if not llama_cpp_installed():
            raise ExpertLoadError(
                f"model {source.label!r}: backend 'llama_cpp' needs llama-cpp-python; "
                f"install with: {INSTALL_LLAMA}"
            )
        return backend
    if source.gguf_file is not None and device == "cpu" and llama_cpp_installed():
        return "llama_cpp"
    return "transformers"


def load_model(
    source: Source,
    device: str,
    dtype: DType,
    num_threads: int | None,
    backend: Backend = "auto",
) -> LoadedModel:
    """The weights of ``source`` on ``device`` ("auto": CUDA when torch sees it), cached."""
    torch = import_torch()
    device = _resolve_device(device, torch)
    chosen = resolve_backend(backend, source, device)
    if chosen == "llama_cpp":
        from expertgraph.agents._llama_cpp import load_llama

        key: _Key = (str(source.directory), source.gguf_file, "gguf", "cpu", chosen)
        return _get_or_load(key, lambda: load_llama(source, num_threads, load_tokenizer))
    resolved_dtype = _resolve_dtype(dtype, device, torch)
    key = (str(source.directory), source.gguf_file, resolved_dtype, device, chosen)
    return _get_or_load(key, lambda: _load(source, device, resolved_dtype, num_threads))


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


def _get_or_load(key: _Key, loader: Callable[[], LoadedModel]) -> LoadedModel:
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


def load_tokenizer(source: Source) -> Any:
    """The transformers tokenizer of ``source`` (its chat template included).

    A GGUF file's tokenizer is converted once (seconds to a minute for a large vocabulary)
    and saved as tokenizer files under :func:`model_cache_dir`; later loads read those.
    """
    with loading_errors(source):
        from transformers import AutoTokenizer

        cached = _tokenizer_cache(source)
        if cached is not None and (cached / "tokenizer_config.json").is_file():
            return AutoTokenizer.from_pretrained(str(cached), local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(str(source.directory), **_hf_kwargs(source))
        if cached is not None:
            _save_tokenizer(tokenizer, cached)
        return tokenizer


def _tokenizer_cache(source: Source) -> Path | None:
    """Where a GGUF file's converted tokenizer is kept: keyed by the file (path, size, mtime)
    and the transformers version that converted it."""
    if source.gguf_file is None:
        return None
    import transformers

    path = (source.directory / source.gguf_file).absolute()
    stat = path.stat()
    key = f"{path}|{stat.st_size}|{stat.st_mtime_ns}|{transformers.__version__}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:20]
    return model_cache_dir() / "tokenizers" / f"{path.stem}-{digest}"


def _save_tokenizer(tokenizer: Any, target: Path) -> None:
    """Save into a unique folder, then rename: a concurrent loader never reads half a save.
    A cache that cannot be written only costs the next load its time."""
    partial = target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex}")
    try:
        tokenizer.save_pretrained(str(partial))
        os.replace(partial, target)
    except OSError:
        pass
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def _hf_kwargs(source: Source) -> dict[str, Any]:
    # transformers draws tqdm bars while it dequantizes GGUF weights; a CLI run prints its own
    # progress, and a server's logs should not fill with bars.
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    kwargs: dict[str, Any] = {"local_files_only": True}
    if source.gguf_file:
        kwargs["gguf_file"] = source.gguf_file
    return kwargs


@contextlib.contextmanager
def loading_errors(source: Source) -> Iterator[None]:
    """Turn whatever loading raises into one :class:`ExpertLoadError` naming the files."""
    where = source.directory / source.gguf_file if source.gguf_file else source.directory
    try:
        yield
    except ExpertLoadError:
        raise
    except ImportError as exc:  # transformers itself, or GGUF loading's gguf and accelerate
        raise ExpertLoadError(
            f"loading {source.label!r} ({where}) needs a missing package: {exc}; "
            f"install with: {INSTALL_LOCAL}"
        ) from exc
    except Exception as exc:  # noqa: BLE001 - loaders raise OSError, ValueError, KeyError...
        raise ExpertLoadError(f"could not load model {source.label!r} from {where}: {exc}") from exc


def _load(source: Source, device: str, dtype: str, num_threads: int | None) -> LoadedModel:
    torch = import_torch()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    started = time.perf_counter()
    tokenizer = load_tokenizer(source)
    with loading_errors(source):
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(
            str(source.directory), dtype=getattr(torch, dtype), **_hf_kwargs(source)
        )
        model = model.to(device).eval()
    eos = model.generation_config.eos_token_id
    if eos is None:
        eos = tokenizer.eos_token_id
    eos_ids = frozenset(
        int(i) for i in (eos if isinstance(eos, (list, tuple)) else [eos]) if i is not None
    )
    limit = getattr(model.config, "max_position_embeddings", None)
    pad = model.generation_config.pad_token_id
    if pad is None:
        pad = tokenizer.pad_token_id
    pad_id = int(pad) if pad is not None else min(eos_ids, default=0)
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        device=device,
        dtype=dtype,
        has_chat_template=has_chat_template(tokenizer),
        context_limit=int(limit) if limit else None,
        eos_token_ids=eos_ids,
        load_s=time.perf_counter() - started,
        new_engine=lambda: TransformersEngine(model, device, pad_id),
    )


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))
