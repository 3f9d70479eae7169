"""Answer extraction: read a comparable answer out of an expert's text, for voting."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from fractions import Fraction

from expertgraph.core.types import AnswerFormat

_NUMBER = re.compile(r"[-+]?\$?\d[\d,]*(?:\.\d+)?|[-+]?\.\d+")
_CHOICE_PATTERNS = [
    re.compile(r"(?:answer|choice|option)\s*(?:is|:)?\s*\(?([A-J])\)?\b", re.I),
    re.compile(r"^\s*\(?([A-J])\)?(?:[.):\s]|$)"),
    re.compile(r"\b([A-J])\)"),
]


@dataclass(frozen=True)
class Extracted:
    """An answer read out of a text, or the reason none could be."""

    answer: str | None
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.answer is not None


def normalize_text(text: str) -> str:
    """Lower-case, collapse whitespace, strip surrounding punctuation and quotes."""
    text = re.sub(r"\s+", " ", text.strip().lower())
    return text.strip(" .,;:!?\"'`*")


def _format_number(value: Fraction) -> str:
    if value.denominator == 1:
        return str(value.numerator)
    as_float = float(value)
    return repr(round(as_float, 6)).rstrip("0").rstrip(".")


def extract_number(text: str) -> Extracted:
    """The last number in the text, as a canonical string (``"1,000.50"`` -> ``"1000.5"``)."""
    matches = _NUMBER.findall(text)
    if not matches:
        return Extracted(None, "no number in the text")
    raw = matches[-1].replace(",", "").replace("$", "")
    try:
        return Extracted(_format_number(Fraction(raw)))
    except (ValueError, ZeroDivisionError):
        return Extracted(None, f"not a number: {raw!r}")


def extract_choice(text: str, choices: list[str] | None = None) -> Extracted:
    """A multiple-choice letter, or one of ``choices`` named in the text."""
    for pattern in _CHOICE_PATTERNS:
        match = pattern.search(text)
        if match:
            return Extracted(match.group(1).upper())
    if choices:
        norm = normalize_text(text)
        hits = [c for c in choices if normalize_text(c) and normalize_text(c) in norm]
        if len(hits) == 1:
            return Extracted(hits[0])
        if len(hits) > 1:
            return Extracted(None, f"names several choices: {hits}")
    return Extracted(None, "no choice letter in the text")


def extract_json_field(text: str, field_name: str | None) -> Extracted:
    """The value of ``field_name`` in the first JSON object of the text (or the whole object)."""
    start = text.find("{")
    if start < 0:
        return Extracted(None, "no JSON object in the text")
    decoder = json.JSONDecoder()
    try:
        obj, _ = decoder.raw_decode(text[start:])
    except json.JSONDecodeError as exc:
        return Extracted(None, f"invalid JSON: {exc.msg}")
    if field_name is None:
        return Extracted(json.dumps(obj, sort_keys=True))
    if not isinstance(obj, dict) or field_name not in obj:
        return Extracted(None, f"JSON has no field {field_name!r}")
    value = obj[field_name]
    return Extracted(value if isinstance(value, str) else json.dumps(value, sort_keys=True))


def extract_answer(text: str, fmt: AnswerFormat) -> Extracted:
    """Extract an answer in the given format; an empty text never yields an answer."""
    if not text or not text.strip():
        return Extracted(None, "empty output")
    if fmt.regex:
        match = re.search(fmt.regex, text)
        if not match:
            return Extracted(None, f"no match for regex {fmt.regex!r}")
        text = match.group(1) if match.groups() else match.group(0)
    if fmt.kind == "number":
        return extract_number(text)
    if fmt.kind == "choice":
        return extract_choice(text, fmt.choices)
    if fmt.kind == "json":
        return extract_json_field(text, fmt.json_field)
    norm = normalize_text(text)
    return Extracted(norm) if norm else Extracted(None, "only punctuation")
