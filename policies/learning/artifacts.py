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


def load_artifact(folder: str | Path) -> Artifact:
    """Read an artifact folder; a missing or foreign file is a :class:`PolicyError`."""
    source = Path(folder)
    meta_path = source / META_FILE
    if not meta_path.is_file():
        raise PolicyError(
            f"{source}: not a trained router (no {META_FILE}); train one with `expertgraph train`"
        )
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise PolicyError(f"{meta_path}: not JSON ({exc})") from None
    if meta.get("format") != FORMAT:
        raise PolicyError(f"{meta_path}: format {meta.get('format')!r} is not {FORMAT!r}")
    if int(meta.get("format_version", 0)) > FORMAT_VERSION:
        raise PolicyError(
            f"{meta_path}: format version {meta['format_version']} is newer than this expertgraph "
            f"reads ({FORMAT_VERSION}); upgrade expertgraph"
        )
    for key in ("kind", "experts"):
        if key not in meta:
            raise PolicyError(f"{meta_path}: missing field {key!r}")
    weights = source / WEIGHTS_FILE
    arrays: dict[str, np.ndarray] = {}
    if weights.is_file():
        try:
            with np.load(weights, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files}
        except ValueError as exc:  # e.g. an object array, which would need pickle
            raise PolicyError(
                f"{weights}: cannot be read without pickle ({exc}); refusing it"
            ) from None
    return Artifact(meta=meta, arrays=arrays, path=source)


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
