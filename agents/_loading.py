"""Loading local models: where the files are, which device and dtype, and the model cache.

A model is a bundled short name, a folder (``config.json`` or one ``.gguf`` file), a folder
plus a GGUF file name, or the path of a ``.gguf`` file. torch and transformers are imported
when a model loads, never when this module is imported.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from expertgraph.agents._bundled import BUNDLED_MODELS, bundled_model, resolve_bundled
from expertgraph.core.errors import ExpertLoadError

DType = Literal["auto", "float32", "bfloat16", "float16"]

_INSTALL_LOCAL = "pip install 'expertgraph[local]'"


@dataclass(frozen=True)
class Source:
    """Where a model's files are, resolved from what the user wrote."""

    directory: Path
    gguf_file: str | None
    label: str
    """What generations report as ``model``: the bundled short name or the path given."""


@dataclass
class LoadedModel:
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


_Key = tuple[str, str | None, str, str]

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
        raise ExpertLoadError(f"local experts need torch; install with: {_INSTALL_LOCAL}") from exc
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


def load_model(source: Source, device: str, dtype: DType, num_threads: int | None) -> LoadedModel:
    """The weights of ``source`` on ``device`` ("auto": CUDA when torch sees it), cached."""
    torch = import_torch()
    device = _resolve_device(device, torch)
    resolved_dtype = _resolve_dtype(dtype, device, torch)
    key: _Key = (str(source.directory), source.gguf_file, resolved_dtype, device)
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


def _load(source: Source, device: str, dtype: str, num_threads: int | None) -> LoadedModel:
    torch = import_torch()
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
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        device=device,
        dtype=dtype,
        has_chat_template=bool(getattr(tokenizer, "chat_template", None)),
        context_limit=int(limit) if limit else None,
        eos_token_ids=eos_ids,
        load_s=time.perf_counter() - started,
    )
