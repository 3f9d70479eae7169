"""Tool calls in a local model's text: Hermes/Qwen ``<tool_call>`` blocks and Llama-3.1 JSON.

Hermes and Qwen write ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``, one block
per call, possibly with text around them; Llama 3.1 writes one JSON object
``{"name": ..., "parameters": {...}}`` as its whole reply, optionally after
``<|python_tag|>``. A call that cannot be read keeps its place with ``invalid`` set, so a
malformed proposal is seen (and red-flagged) rather than mistaken for text.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from expertgraph.agents._tool_offer import new_call_id
from expertgraph.core.tools import ToolCall

HERMES_OPEN = "<tool_call>"
HERMES_CLOSE = "</tool_call>"
PYTHON_TAG = "<|python_tag|>"
MARKERS = (HERMES_OPEN, HERMES_CLOSE, PYTHON_TAG)
"""Tokens that must survive decoding, even where a tokenizer marks them special."""

# An unclosed block at the end counts: generation may stop before (or at) its closing tag.
_HERMES = re.compile(r"<tool_call>(.*?)(?:</tool_call>|\Z)", re.DOTALL)
_NAME = re.compile(r'"name"\s*:\s*"([^"\\]+)"')
_LLAMA_KEYS = frozenset({"name", "parameters", "arguments", "type"})


@dataclass(frozen=True)
class ParsedOutput:
    """A reply split into its text and its calls."""

    text: str
    tool_calls: list[ToolCall] = field(default_factory=list)


def parse_tool_output(text: str) -> ParsedOutput:
    """The calls in ``text`` (Hermes/Qwen blocks, else Llama-3.1 JSON) and the text outside."""
    if HERMES_OPEN in text:
        calls = [_from_json_text(m.group(1)) for m in _HERMES.finditer(text)]
        rest = _HERMES.sub("", text).replace(HERMES_CLOSE, "")
        return ParsedOutput(_tidy(rest), calls)
    stripped = text.strip()
    tagged = stripped.startswith(PYTHON_TAG)
    if tagged:
        stripped = stripped[len(PYTHON_TAG) :].strip()
    try:
        value = json.loads(stripped)
    except json.JSONDecodeError:
        value = None
    if isinstance(value, dict) and _looks_like_call(value):
        return ParsedOutput("", [_from_object(value)])
    if tagged:  # the model meant a call and wrote something unreadable
        return ParsedOutput("", [_from_json_text(stripped)])
    return ParsedOutput(text.strip())


def _looks_like_call(value: dict[str, Any]) -> bool:
    # A plain JSON answer ({"name": "Paris"}) is not a call: a call names a function and
    # gives its arguments, and has no other keys.
    return (
        isinstance(value.get("name"), str)
        and ("parameters" in value or "arguments" in value)
        and set(value) <= _LLAMA_KEYS
    )


def _from_json_text(body: str) -> ToolCall:
    try:
        value = json.loads(body.strip())
    except json.JSONDecodeError as exc:
        found = _NAME.search(body)
        return ToolCall(
            id=new_call_id(),
            name=found.group(1) if found else "",
            invalid=f"tool call is not JSON: {exc.msg}",
        )
    if not isinstance(value, dict):
        return ToolCall(id=new_call_id(), name="", invalid="tool call is not a JSON object")
    return _from_object(value)


def _from_object(value: dict[str, Any]) -> ToolCall:
    call_id = new_call_id()
    name = value.get("name")
    if not isinstance(name, str) or not name:
        return ToolCall(id=call_id, name="", invalid="the call names no tool")
    arguments = value.get("arguments", value.get("parameters"))
    if arguments is not None and not isinstance(arguments, (str, dict)):
        arguments = json.dumps(arguments)  # JSON, but not an object: parse says so
    return ToolCall.parse(call_id, name, arguments)


def _tidy(text: str) -> str:
    return re.sub(r"\n{3,}", "\n\n", text).strip()
