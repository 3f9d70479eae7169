"""What a learned router reads of a prompt: its embedding and a few surface features of the text."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from expertgraph.core.protocols import Embedder

SURFACE_VERSION = 1
"""Bumped when :func:`surface_features` changes: artifacts record the version they read."""
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_CODE = re.compile(r"\bdef |\breturn\b|```|\bimport ")
_OPTION = re.compile(r"(^|\n)\s*\(?[A-J][\).:]\s")


def surface_features(text: str) -> list[float]:
    """Twelve shape features of a prompt, roughly in [0, 1].

    Length, digits, capitals, question form, lines, code, LaTeX, lists, lettered options and
    numbers: the things an embedding of the first 256 tokens sees poorly, and that tell
    apart tasks which read alike (a short lower-case question vs. a capitalised quiz one).
    """
    n = max(len(text), 1)
    words = text.split()
    stripped = text.rstrip()
    return [
        math.log1p(len(text)) / 8.0,
        math.log1p(len(words)) / 6.0,
        5.0 * sum(c.isdigit() for c in text) / n,
        5.0 * sum(c.isupper() for c in text) / n,
        float(text[:1].islower()),
        float(stripped.endswith("?")),
        math.log1p(text.count("\n")) / 3.0,
        float(bool(_CODE.search(text))),
        float("$" in text or "\\" in text),
        text.count(",") / max(len(words), 1),
        float(bool(_OPTION.search(text))),
        math.log1p(len(_NUMBER.findall(text))) / 3.0,
    ]


N_SURFACE = len(surface_features("x"))


@dataclass
class Featurizer:
    """Prompt -> features: the embedding, optionally followed by the surface features."""

    embedder: Embedder

    def embed(self, prompts: Sequence[str]) -> np.ndarray:
        return np.asarray(self.embedder.encode(list(prompts)), dtype=np.float32)

    @staticmethod
    def surface(prompts: Sequence[str]) -> np.ndarray:
        return np.asarray([surface_features(p) for p in prompts], dtype=np.float32).reshape(
            -1, N_SURFACE
        )

    @staticmethod
    def combine(embeddings: np.ndarray, surface: np.ndarray, use_surface: bool) -> np.ndarray:
        return np.hstack([embeddings, surface]) if use_surface else embeddings
