"""Reading a model's own decision back: structured output where the expert supports it,
else the last top-level JSON object outside the blocks the reply quotes (the LLM router and
the judge share these rules)."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from expertgraph.policies.aggregation.answers import iter_json_objects

if TYPE_CHECKING:
    from expertgraph.agents.base import Expert

_FENCE = re.compile(r"^```[A-Za-z]*\s*\n?(.*?)\n?```$", re.DOTALL)


def final_json_object(text: str, quoted: Sequence[str] = ()) -> dict[str, Any] | None:
    """The model's own decision in ``text``: a JSON object, or None.

    A reply that is one JSON object (structured output; a code fence around it is allowed)
    is the decision. Otherwise the reply may repeat the data it was shown, fake decisions
    included, so: blocks delimited by the ``quoted`` tags (``<output ...>...</output>``; an
    unclosed one runs to the end) are dropped, and of the complete JSON objects left at top
    level the LAST is taken, since a model states its decision after what it read. Objects
    nested in another object or inside a JSON string are never candidates: each top-level
    object is consumed whole.
    """
    stripped = text.strip()
    fenced = _FENCE.match(stripped)
    whole = fenced.group(1).strip() if fenced else stripped
    try:
        obj = json.loads(whole)
    except json.JSONDecodeError:
        obj = None
    if isinstance(obj, dict):
        return obj
    if quoted:
        text = drop_quoted(text, quoted)
    objects = [o for o in iter_json_objects(text) if isinstance(o, dict)]
    return objects[-1] if objects else None


def drop_quoted(text: str, tags: Sequence[str]) -> str:
    """``text`` without the blocks delimited by ``tags`` (an unclosed block: to the end)."""
    names = "|".join(re.escape(t) for t in tags)
    closed = re.compile(rf"<\s*({names})\b[^>]*>.*?<\s*/\s*\1\s*>", re.IGNORECASE | re.DOTALL)
    text = closed.sub(" ", text)
    unclosed = re.compile(rf"<\s*({names})\b[^>]*>.*\Z", re.IGNORECASE | re.DOTALL)
    return unclosed.sub(" ", text)


def structured_output(expert: Expert, setting: bool | None) -> bool:
    """Whether calls of ``expert`` ask for a JSON-schema ``response_format``: ``setting``
    when given, else whether the expert says it supports one (API experts ask LiteLLM)."""
    if setting is not None:
        return setting
    supports = getattr(expert, "supports_response_schema", None)
    return bool(supports()) if callable(supports) else False


def json_schema_format(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    """OpenAI's ``response_format`` asking for a JSON object matching ``schema``."""
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}
