"""Trained router artifacts on disk: ``weights.npz`` plus ``meta.json``. Nothing is pickled.

``meta.json`` names the model kind, the experts (in column order), the embedder and the
features, the hyper-parameters, the per-expert costs and calibration curve, and where the
weights came from (dataset name, split, row count, sha256 of the training rows, creation
time, expertgraph version). Arrays are read with ``allow_pickle=False``. Loading for a
configuration checks the experts: an artifact trained for other experts is refused with a
:class:`PolicyError` that names the missing and the extra ones.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import zipfile
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from expertgraph.core.errors import PolicyError

FORMAT = "expertgraph-router"
FORMAT_VERSION = 1
META_FILE = "meta.json"
WEIGHTS_FILE = "weights.npz"


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("expertgraph")
    except Exception:  # not installed (a source checkout): the version is unknown, not an error
        return "unknown"


_NUMBER_LIST = re.compile(r"\[\s*(-?[\d.eE+-]+(?:,\s*-?[\d.eE+-]+)*)\s*\]")


def _dumps(meta: Mapping[str, Any]) -> str:
    """Indented JSON with lists of numbers kept on one line (a curve stays readable)."""
    text = json.dumps(meta, indent=2)
    return _NUMBER_LIST.sub(
        lambda m: "[" + ", ".join(x.strip() for x in m.group(1).split(",")) + "]", text
    )


class _Arrays(dict[str, np.ndarray]):
    """The arrays of ``weights.npz``; a model asking for one it lacks gets a clear error."""

    def __init__(self, arrays: Mapping[str, np.ndarray], source: Path) -> None:
        super().__init__(arrays)
        self.source = source

    def __missing__(self, key: str) -> np.ndarray:
        raise PolicyError(
            f"{self.source}: no array {key!r} (it holds {', '.join(sorted(self)) or 'none'}); "
            "the artifact is damaged or from another version: retrain it"
        )


@dataclass
class Artifact:
    """A loaded artifact: its metadata and its arrays by name."""

    meta: dict[str, Any]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    path: Path | None = None

    @property
    def kind(self) -> str:
        return str(self.meta["kind"])

    @property
    def experts(self) -> list[str]:
        return list(self.meta["experts"])


def save_artifact(
    folder: str | Path, meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray]
) -> Path:
    """Write ``weights.npz`` and ``meta.json`` into ``folder`` (created if needed).

    Each file is written to a temporary name and renamed, so a reader never sees half a file.
    """
    target = Path(folder)
    target.mkdir(parents=True, exist_ok=True)
    full = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "expertgraph_version": _version(),
        **meta,
    }
    for name, arr in arrays.items():
        if np.asarray(arr).dtype == object:
            raise PolicyError(
                f"artifact array {name!r} has dtype object; only numeric arrays are stored"
            )
    fd, tmp = tempfile.mkstemp(dir=target, suffix=".npz.tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            np.savez(handle, **{k: np.asarray(v) for k, v in arrays.items()})
        os.replace(tmp, target / WEIGHTS_FILE)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    fd, tmp = tempfile.mkstemp(dir=target, suffix=".json.tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(_dumps(full) + "\n")
        os.replace(tmp, target / META_FILE)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def _line(text: str, key: str) -> int:
    """The 1-based line of ``"key":`` in a JSON text (1 when it is not there)."""
    at = text.find(f'"{key}"')
    return text.count("\n", 0, at) + 1 if at >= 0 else 1


def _read_meta(meta_path: Path) -> dict[str, Any]:
    """``meta.json`` as a mapping whose required fields have the right types."""
    try:
        text = meta_path.read_text(encoding="utf-8")
        meta = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PolicyError(f"{meta_path}:{exc.lineno}: not JSON ({exc.msg})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError(f"{meta_path}: cannot be read ({exc})") from None
    if not isinstance(meta, dict):
        raise PolicyError(
            f"{meta_path}:1: must be a JSON object of the artifact's fields, "
            f"not a {type(meta).__name__}"
        )

    def bad(key: str, why: str) -> PolicyError:
        return PolicyError(f"{meta_path}:{_line(text, key)}: {key}: {why}")

    if meta.get("format") != FORMAT:
        raise bad("format", f"{meta.get('format')!r} is not {FORMAT!r}")
    version = meta.get("format_version", 0)
    if not isinstance(version, int) or isinstance(version, bool):
        raise bad("format_version", f"must be an integer, not {version!r}")
    if version > FORMAT_VERSION:
        raise bad(
            "format_version",
            f"{version} is newer than this expertgraph reads ({FORMAT_VERSION}); "
            "upgrade expertgraph",
        )
    for key in ("kind", "experts"):
        if key not in meta:
            raise PolicyError(f"{meta_path}: missing field {key!r}")
    if not isinstance(meta["kind"], str):
        raise bad("kind", f"must be a string, not {meta['kind']!r}")
    experts = meta["experts"]
    if not isinstance(experts, list) or not all(isinstance(e, str) for e in experts):
        raise bad("experts", "must be a list of expert names")
    return meta


def _read_weights(weights: Path) -> _Arrays:
    if not weights.is_file():
        raise PolicyError(
            f"{weights}: missing; the artifact is incomplete (retrain it with `expertgraph train`)"
        )
    try:
        with np.load(weights, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except ValueError as exc:
        if "pickle" in str(exc):  # e.g. an object array, which would need pickle
            raise PolicyError(
                f"{weights}: cannot be read without pickle ({exc}); refusing it"
            ) from None
        raise PolicyError(f"{weights}: damaged ({exc}); retrain the router") from None
    except (OSError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as exc:
        raise PolicyError(
            f"{weights}: damaged or truncated ({type(exc).__name__}: {exc}); retrain the router"
        ) from None
    return _Arrays(arrays, weights)


def load_artifact(folder: str | Path) -> Artifact:
    """Read an artifact folder; a missing, foreign or damaged file is a :class:`PolicyError`
    that names the file, the line and the field."""
    source = Path(folder)
    meta_path = source / META_FILE
    if not meta_path.is_file():
        raise PolicyError(
            f"{source}: not a trained router (no {META_FILE}); train one with `expertgraph train`"
        )
    meta = _read_meta(meta_path)
    return Artifact(meta=meta, arrays=_read_weights(source / WEIGHTS_FILE), path=source)


def check_experts(
    trained: Iterable[str], configured: Iterable[str], *, where: str = "artifact"
) -> None:
    """Refuse an artifact whose experts differ from the configured ones.

    ``missing``: trained for but not configured; ``extra``: configured but unknown to the
    model (it could never route to them, or would score them with another model's weights).
    """
    trained_list = list(trained)
    configured_list = list(configured)
    missing = [n for n in trained_list if n not in configured_list]
    extra = [n for n in configured_list if n not in trained_list]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"trained for experts that are not configured: {', '.join(missing)}")
        if extra:
            parts.append(f"configured experts it was not trained for: {', '.join(extra)}")
        raise PolicyError(
            f"{where} does not match the configured experts ({'; '.join(parts)}); "
            "retrain it on data for these experts or change the configuration"
        )
