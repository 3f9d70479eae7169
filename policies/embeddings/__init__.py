"""Sentence embedders (the bundled all-MiniLM-L6-v2 by default) and their on-disk cache."""

from typing import TYPE_CHECKING

from expertgraph.core._lazy import lazy_exports

if TYPE_CHECKING:
    from expertgraph.policies.embeddings.cache import (
        CachedEmbedder,
        EmbeddingStore,
        cached_embedder,
        default_cache_dir,
    )
    from expertgraph.policies.embeddings.embedder import (
        BUNDLED_EMBEDDER,
        SentenceTransformerEmbedder,
    )

_EXPORTS = {
    "BUNDLED_EMBEDDER": "expertgraph.policies.embeddings.embedder",
    "CachedEmbedder": "expertgraph.policies.embeddings.cache",
    "EmbeddingStore": "expertgraph.policies.embeddings.cache",
    "SentenceTransformerEmbedder": "expertgraph.policies.embeddings.embedder",
    "cached_embedder": "expertgraph.policies.embeddings.cache",
    "default_cache_dir": "expertgraph.policies.embeddings.cache",
}

__all__ = [
    "BUNDLED_EMBEDDER",
    "CachedEmbedder",
    "EmbeddingStore",
    "SentenceTransformerEmbedder",
    "cached_embedder",
    "default_cache_dir",
]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
