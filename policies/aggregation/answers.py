"""Answer extraction: read a comparable answer out of an expert's text, for voting.

Every voter (majority, weighted, ahead-by-k, medoid, the fusion fallback) and the
benchmarks read answers through :func:`extract_answer`, so two candidates that say the
same thing in different words (``"$1,000"``, ``"1000 dollars"``, ``"\\boxed{1000}"``)
count as one answer. An answer that cannot be read comes back as ``Extracted(None,
reason)``; the caller keeps the candidate in its record with that reason and does not let
it vote.

Where the answer is looked for, in order (the first place that has one wins):

1. ``AnswerFormat.regex`` (group 1, else the whole match), when set;
2. ``AnswerFormat.json_field`` of a JSON object in the text, when set;
3. the last LaTeX ``\\boxed{...}``;
4. the ``"answer"`` field of a JSON object;
5. a marker: ``Final answer: ...``, ``The answer is ...``, ``#### ...``;
6. the whole text (for numbers: its last number).
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from expertgraph.core.types import AnswerFormat

_CHOICE_PATTERNS = [
    # Only the keywords ignore case: a lower-case "a" is a word, not a choice.
    re.compile(
        r"(?i:answer|choice|option)\s*(?i:is|:)?\s*(?:(?i:option)\s*)?\(?([A-J])\)?(?![A-Za-z])"
    ),
    re.compile(r"^\s*\(?([A-J])[.):]"),
    re.compile(r"\(([A-J])\)"),
    re.compile(r"\b([A-J])\)"),
]
_BARE_CHOICE = re.compile(r"^\s*\(?([A-J])\)?\s*[.:]?\s*$")

# A number as people write it: thousands separated by commas (only when grouped by three,
# so "3,4" stays two numbers), an optional decimal part, an optional sign.
_NUM = r"(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+"
_SIGN = r"(?:(?<![\w.])[-−–](?=\s?[$€£¥]?\s?\.?\d))?"
_NUMBER = re.compile(
    rf"(?P<sign>{_SIGN})\s?[$€£¥]?\s?(?P<num>{_NUM})"
    rf"(?:\s*/\s*(?P<den>\d+(?:\.\d+)?)(?![\d.]))?"
    rf"(?P<pct>\s?(?:%|percent\b))?"
)
_MIXED = re.compile(
    rf"(?<![\d.,/])(?P<sign>{_SIGN})(?P<whole>\d+)\s+(?P<num>\d+)\s*/\s*(?P<den>\d+)(?![\d./])"
)
_LATEX_FRAC = re.compile(r"\\[dt]?frac\s*\{\s*([-−]?[\d.,]+)\s*\}\s*\{\s*([\d.,]+)\s*\}")
_LATEX_NOISE = re.compile(
    r"\\(?:text|mathrm|mbox|textbf|mathbf)\s*\{([^{}]*)\}|\\[,;!: ]|\\(?:left|right)|\\%|\\\$"
)
_MARKERS = re.compile(
    r"(?:final\s+answer|the\s+answer\s+is|answer\s*[:=]|answer\s+is|####)"
    r"\s*[:=]?\s*(?P<span>[^\n]*)",
    re.I,
)
_WORD_NUMBERS = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
    "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13,
    "fourteen": 14, "fifteen": 15, "sixteen": 16, "seventeen": 17, "eighteen": 18,
    "nineteen": 19, "twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60,
    "seventy": 70, "eighty": 80, "ninety": 90, "hundred": 100, "thousand": 1000,
}  # fmt: skip
_WORD_NUMBER = re.compile(r"\b(" + "|".join(_WORD_NUMBERS) + r")\b", re.I)


@dataclass(frozen=True)
class Extracted:
    """An answer read out of a text, or the reason none could be.

    ``source`` says where the answer was found (``"regex"``, ``"json:answer"``,
    ``"boxed"``, ``"marker"``, ``"text"``); traces keep it so a wrong vote can be explained.
    """

    answer: str | None
    reason: str = ""
    source: str = ""

    @property
    def ok(self) -> bool:
        return self.answer is not None


def normalize_text(text: str) -> str:
    """Lower-case, fold Unicode look-alikes, collapse whitespace, strip punctuation and quotes."""
    text = unicodedata.normalize("NFKC", text)
    text = re.sub(r"\s+", " ", text.strip().lower())
    return text.strip(" .,;:!?\"'`*")


# ---- numbers ------------------------------------------------------------------------------


def format_number(value: Fraction) -> str:
    """Canonical text of a number: integers plainly, others to at most six decimals."""
    if value.denominator == 1:
        return str(value.numerator)
    text = f"{float(value):.6f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def _to_fraction(raw: str) -> Fraction:
    return Fraction(raw.replace(",", ""))


def _clean_math(span: str) -> str:
    """Undo LaTeX and Unicode hiding numbers: ``\\frac{1}{2}`` -> ``1/2``, ``\\text{cm}`` -> cm."""
    span = unicodedata.normalize("NFKC", span).replace("{,}", ",")
    span = _LATEX_FRAC.sub(lambda m: f"{m.group(1)}/{m.group(2)}", span)
    for _ in range(3):  # nested \text{\textbf{..}}
        new = _LATEX_NOISE.sub(lambda m: m.group(1) or (" " if m.group(0) != "\\%" else "%"), span)
        if new == span:
            break
        span = new
    return span.replace("\\$", "$").replace("−", "-").replace("–", "-")


@dataclass(frozen=True)
class _NumberMatch:
    value: Fraction
    start: int


def _numbers(span: str) -> list[_NumberMatch]:
    """Every number in a span, in order: mixed numbers, fractions, percents, currency."""
    found: list[_NumberMatch] = []
    taken: list[tuple[int, int]] = []
    for m in _MIXED.finditer(span):
        den = int(m.group("den"))
        if den == 0:
            continue
        value = int(m.group("whole")) + Fraction(int(m.group("num")), den)
        found.append(_NumberMatch(-value if m.group("sign") else value, m.start()))
        taken.append(m.span())
    for m in _NUMBER.finditer(span):
        if any(a <= m.start() < b for a, b in taken):
            continue
        try:
            value = _to_fraction(m.group("num"))
            if m.group("den"):
                den = _to_fraction(m.group("den"))
                if den == 0:
                    continue
                value /= den
        except (ValueError, ZeroDivisionError):
            continue
        found.append(_NumberMatch(-value if m.group("sign") else value, m.start()))
    found.sort(key=lambda n: n.start)
    return found


def _word_number(span: str) -> Fraction | None:
    match = _WORD_NUMBER.search(span)
    return Fraction(_WORD_NUMBERS[match.group(1).lower()]) if match else None


def number_in_span(span: str, *, last: bool = False) -> Extracted:
    """The number a short answer span states.

    In an equation (``"3 * 6 = 18"``) the result after the last ``=`` counts. Otherwise the
    first number (``"20 cups"``, ``"$1,000.50"``, ``"45%"``, ``"1 1/2"``), or the last
    one with ``last=True`` (for a whole response, whose conclusion comes at the end).
    A span without digits may still name a small number in words (``"five"``).
    """
    span = _clean_math(span)
    if "=" in span and not last:
        tail = span.rsplit("=", 1)[1]
        if _numbers(tail):
            span = tail
    numbers = _numbers(span)
    if not numbers:
        word = _word_number(span) if len(span) <= 40 else None
        if word is not None:
            return Extracted(format_number(word))
        return Extracted(None, "no number in the text")
    chosen = numbers[-1] if last else numbers[0]
    return Extracted(format_number(chosen.value))


def extract_number(text: str) -> Extracted:
    """The last number in the text, as a canonical string (``"1,000.50"`` -> ``"1000.5"``)."""
    return number_in_span(text, last=True)


def numbers_equal(a: str | None, b: str | None, *, rel_tol: float = 1e-6) -> bool:
    """Whether two canonical number strings name the same number (to a relative tolerance)."""
    if a is None or b is None:
        return False
    try:
        x, y = Fraction(a), Fraction(b)
    except (ValueError, ZeroDivisionError):
        return normalize_text(a) == normalize_text(b)
    if x == y:
        return True
    return abs(x - y) <= rel_tol * max(abs(x), abs(y), Fraction(1))


# ---- places an answer is stated ------------------------------------------------------------


def find_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` (or ``\\fbox{...}``), braces balanced."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    brace = text.find("{", start)
    if brace < 0 or not re.fullmatch(r"\\(?:boxed|fbox)\s*", text[start:brace]):
        return None
    depth = 0
    for i in range(brace, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[brace + 1 : i]
    return None


_DECODER = json.JSONDecoder(strict=False)  # strict=False: models put raw newlines in strings


def iter_json_objects(text: str) -> list[Any]:
    """Every JSON object that parses in the text (inside code fences or not), in order."""
    out: list[Any] = []
    pos = 0
    while True:
        start = text.find("{", pos)
        if start < 0:
            return out
        try:
            obj, end = _DECODER.raw_decode(text, start)
        except json.JSONDecodeError:
            pos = start + 1
            continue
        out.append(obj)
        pos = end


def _value_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def find_json_field(text: str, field_name: str) -> str | None:
    """The value of ``field_name`` in the first JSON object that has it.

    Falls back to a ``"field": value`` pattern for JSON that does not parse (unescaped
    quotes, a truncated reply), as models often write it.
    """
    for obj in iter_json_objects(text):
        if isinstance(obj, dict) and field_name in obj:
            return _value_text(obj[field_name])
    key = re.escape(field_name)
    matches = re.findall(rf'"{key}"\s*:\s*"((?:[^"\\]|\\.)*)"', text)
    if matches:
        return matches[-1].replace('\\"', '"')
    matches = re.findall(rf'"{key}"\s*:\s*([^\s,}}"][^,}}\n]*)', text)
    if matches:
        return matches[-1].strip()
    return None


def find_marker(text: str) -> str | None:
    """The text after the last ``Final answer:`` / ``The answer is`` / ``####`` marker."""
    # The marker's sentence only: "The answer is 12. Check: 12 * 2 = 24" states 12.
    spans = [
        re.split(r"\.(?=\s|$)", m.group("span"), maxsplit=1)[0].strip()
        for m in _MARKERS.finditer(text)
    ]
    spans = [s for s in spans if s]
    return spans[-1] if spans else None


# ---- by format -----------------------------------------------------------------------------


def extract_choice(text: str, choices: list[str] | None = None) -> Extracted:
    """A multiple-choice letter, or one of ``choices`` named in the text."""
    bare = _BARE_CHOICE.match(text)
    if bare:
        return Extracted(bare.group(1).upper())
    for pattern in _CHOICE_PATTERNS:
        matches = list(pattern.finditer(text))
        if matches:
            # The conclusion comes last: "A) is wrong ... the answer is C".
            return Extracted(matches[-1].group(1).upper())
    if choices:
        norm = normalize_text(text)
        hits = [c for c in choices if normalize_text(c) and normalize_text(c) in norm]
        if len(hits) == 1:
            return Extracted(hits[0])
        if len(hits) > 1:
            return Extracted(None, f"names several choices: {hits}")
    return Extracted(None, "no choice letter in the text")


def extract_json_field(text: str, field_name: str | None) -> Extracted:
    """The value of ``field_name`` in the text's JSON (or the first whole object, canonical)."""
    if field_name is None:
        objects = iter_json_objects(text)
        if not objects:
            return Extracted(
                None, "no JSON object in the text" if "{" not in text else "invalid JSON"
            )
        return Extracted(json.dumps(objects[0], sort_keys=True))
    value = find_json_field(text, field_name)
    if value is None:
        return Extracted(
            None,
            f"JSON has no field {field_name!r}" if "{" in text else "no JSON object in the text",
        )
    return Extracted(value)


def _by_kind(span: str, fmt: AnswerFormat, *, whole_text: bool) -> Extracted:
    if fmt.kind == "number":
        return number_in_span(span, last=whole_text)
    if fmt.kind == "choice":
        return extract_choice(span, fmt.choices)
    norm = normalize_text(span)
    return Extracted(norm) if norm else Extracted(None, "only punctuation")


def _with_source(extracted: Extracted, source: str) -> Extracted:
    return Extracted(extracted.answer, extracted.reason, source)


def extract_answer(text: str, fmt: AnswerFormat) -> Extracted:
    """Extract an answer in the given format; an empty text never yields an answer."""
    if not text or not text.strip():
        return Extracted(None, "empty output")
    if fmt.regex:
        match = re.search(fmt.regex, text)
        if not match:
            return Extracted(None, f"no match for regex {fmt.regex!r}")
        span = match.group(1) if match.groups() else match.group(0)
        if fmt.kind == "json":
            return _with_source(extract_json_field(span, fmt.json_field), "regex")
        return _with_source(_by_kind(span, fmt, whole_text=False), "regex")
    if fmt.kind == "json":
        return _with_source(
            extract_json_field(text, fmt.json_field), f"json:{fmt.json_field or '*'}"
        )

    reasons: list[str] = []
    places: list[tuple[str, str | None]] = []
    if fmt.json_field:
        places.append((f"json:{fmt.json_field}", find_json_field(text, fmt.json_field)))
    places.append(("boxed", find_boxed(text)))
    if fmt.json_field != "answer":
        places.append(("json:answer", find_json_field(text, "answer")))
    places.append(("marker", find_marker(text)))
    for i, (source, span) in enumerate(places):
        if span is None:
            continue
        found = _by_kind(span, fmt, whole_text=False) if span.strip() else Extracted(None, "empty")
        if found.ok:
            return _with_source(found, source)
        if i == 0 and fmt.json_field:
            # The reply fills the field it was asked for with no answer ("cannot be
            # determined"): it declined; a number elsewhere in its reasoning is not its answer.
            return Extracted(
                None, f"field {fmt.json_field!r} holds no answer: {found.reason}", source
            )
        reasons.append(f"{source}: {found.reason}")
    found = _by_kind(text, fmt, whole_text=True)
    if found.ok:
        return _with_source(found, "text")
    reasons.append(found.reason)
    return Extracted(None, "; ".join(dict.fromkeys(reasons)), "")
