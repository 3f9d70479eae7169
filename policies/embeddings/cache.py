"""An on-disk cache of sentence embeddings, keyed by embedder name and text hash.

Embedding thousands of prompts costs minutes on a small CPU; training, evaluation and the
benchmarks embed the same prompts again and again. :class:`CachedEmbedder` wraps any
:class:`~expertgraph.policies.embeddings.embedder.Embedder` and keeps every vector it computes under
``<home>/cache/embeddings/<embedder>/`` as append-only ``.npz`` shards (``keys``: the
sha256 of each text, ``vectors``: float32). Nothing is pickled: shards are read with
``allow_pickle=False``. A new shard is written atomically (temporary file, then rename),
so concurrent writers never leave a torn file; many shards are merged into one on load.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import threading
import uuid
from pathlib import Path

import numpy as np

from expertgraph.core.protocols import Embedder

_MERGE_AT = 16
"""Merge the small shards of a folder into one when there are at least this many."""
_SMALL = 256
"""A shard of at most this many vectors counts as small (online use writes one per prompt)."""


def text_key(text: str) -> str:
    """The cache key of a text: the hex sha256 of its UTF-8 bytes."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _slug(name: str) -> str:
    """A folder name for an embedder: its name, path separators and odd characters replaced."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", name.strip()).strip("._") or "embedder"
    if slug != name:  # keep distinct names distinct after the replacement
        slug = f"{slug[:80]}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"
    return slug


class EmbeddingStore:
    """The vectors of one embedder on disk: a folder of ``.npz`` shards, loaded lazily."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        # The in-memory index of this store (key -> vector); it only grows, under the lock,
        # and mirrors the shards on disk. _shard_keys: shard file name -> the keys it holds.
        self._index: dict[str, np.ndarray] = {}
        self._shard_keys: dict[str, list[str]] = {}
        self._lock = threading.Lock()

    def _shards(self) -> list[Path]:
        return sorted(self.folder.glob("shard-*.npz")) if self.folder.is_dir() else []

    def _read(self, path: Path) -> None:
        try:
            with np.load(path, allow_pickle=False) as data:
                keys = data["keys"]
                vectors = np.asarray(data["vectors"], dtype=np.float32)
        except (OSError, ValueError, KeyError):
            return  # a shard another process is replacing; the next load sees the merged one
        names = [k if isinstance(k, str) else k.decode() for k in keys.tolist()]
        for key, vector in zip(names, vectors, strict=True):
            self._index[key] = vector
        self._shard_keys[path.name] = names

    def refresh(self) -> None:
        """Read the shards written since the last call (by this or another process)."""
        with self._lock:
            for path in self._shards():
                if path.name not in self._shard_keys:
                    self._read(path)
            self._merge_small()

    def _merge_small(self) -> None:
        """Rewrite the small shards as one, so that per-prompt writes do not pile up files.

        Large shards (a dataset embedded at once) are left alone: merging stays cheap. A
        reader that loses the race with a merge recomputes the vectors it missed.
        """
        small = [name for name, keys in self._shard_keys.items() if len(keys) <= _SMALL]
        if len(small) < _MERGE_AT:
            return
        keys = list(dict.fromkeys(k for name in small for k in self._shard_keys[name]))
        merged = self._write(keys, np.stack([self._index[k] for k in keys]))
        for name in small:
            (self.folder / name).unlink(missing_ok=True)
            del self._shard_keys[name]
        self._shard_keys[merged.name] = keys

    def _write(self, keys: list[str], vectors: np.ndarray) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        name = f"shard-{uuid.uuid4().hex}.npz"
        fd, tmp = tempfile.mkstemp(dir=self.folder, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                np.savez(
                    handle, keys=np.array(keys, dtype="U64"), vectors=vectors.astype(np.float32)
                )
            os.replace(tmp, self.folder / name)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return self.folder / name

    def get(self, keys: list[str]) -> list[np.ndarray | None]:
        """The cached vector of each key, or None."""
        with self._lock:
            return [self._index.get(k) for k in keys]

    def put(self, keys: list[str], vectors: np.ndarray) -> None:
        """Store new vectors as one new shard."""
        if not keys:
            return
        with self._lock:
            path = self._write(keys, np.asarray(vectors, dtype=np.float32))
            for key, vector in zip(keys, np.asarray(vectors, dtype=np.float32), strict=True):
                self._index[key] = vector
            self._shard_keys[path.name] = list(keys)
            self._merge_small()

    def __len__(self) -> int:
        with self._lock:
            return len(self._index)


class CachedEmbedder:
    """An :class:`Embedder` that looks every text up on disk before computing it.

    ``name`` is the wrapped embedder's name, so artifacts record the real model. Texts are
    keyed by their sha256; only the misses are sent to the wrapped embedder, in one batch.
    """

    def __init__(self, embedder: Embedder, cache_dir: str | Path) -> None:
        self.embedder = embedder
        self.name = embedder.name
        self.store = EmbeddingStore(Path(cache_dir) / _slug(embedder.name))
        self._refreshed = False
        self.hits = 0
        self.misses = 0

    def encode(self, texts: list[str]) -> np.ndarray:
        """``(n, d)`` float32 unit vectors, from the cache where possible."""
        if not self._refreshed:
            self.store.refresh()
            self._refreshed = True
        keys = [text_key(t) for t in texts]
        found = self.store.get(keys)
        missing = sorted(
            {k: i for i, (k, v) in enumerate(zip(keys, found, strict=True)) if v is None}.values()
        )
        self.hits += len(texts) - len(missing)
        self.misses += len(missing)
        if missing:
            fresh = np.asarray(self.embedder.encode([texts[i] for i in missing]), dtype=np.float32)
            self.store.put([keys[i] for i in missing], fresh)
            by_key = dict(zip([keys[i] for i in missing], fresh, strict=True))
            found = [v if v is not None else by_key[k] for k, v in zip(keys, found, strict=True)]
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        return np.stack(found).astype(np.float32, copy=False)  # type: ignore[arg-type]


def default_cache_dir(home: str | Path) -> Path:
    """Where embeddings are cached for an expertgraph home folder."""
    return Path(home) / "cache" / "embeddings"


def cached_embedder(
    name: str = "all-minilm-l6-v2", home: str | Path = ".expertgraph", *, threads: int | None = None
) -> CachedEmbedder:
    """The bundled (or named local) sentence-transformers embedder behind the disk cache."""
    from expertgraph.policies.embeddings.embedder import SentenceTransformerEmbedder

    if threads is not None:
        import torch  # the embedder loads it anyway; set before its first use

        torch.set_num_threads(threads)
    return CachedEmbedder(SentenceTransformerEmbedder(name), default_cache_dir(home))
