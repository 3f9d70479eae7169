"""The tools a call offers, read once from its params, and messages in OpenAI's wire shape.

``Expert.generate`` normalises ``tools`` / ``tool_choice`` / ``parallel_tool_calls`` here
(:func:`normalise_tool_params`); each concrete expert then takes them out of its params with
:func:`take_tool_offer`.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import ValidationError

from expertgraph.core.errors import ExpertCallError
from expertgraph.core.tools import NamedToolChoice, ToolCall, ToolChoice, ToolSpec
from expertgraph.core.types import Message

TOOL_PARAMS = ("tools", "tool_choice", "parallel_tool_calls")
_MODES = ("auto", "none", "required")
_INVALID_PARAMS = "invalid_params"  # == base.INVALID_PARAMS; base imports this module


@dataclass(frozen=True)
class ToolOffer:
    """What one call offers the expert: tools, the choice rule, parallel calls or not."""

    tools: tuple[ToolSpec, ...]
    choice: ToolChoice = "auto"
    parallel: bool | None = None
    """None: the expert's own default."""

    @property
    def active(self) -> bool:
        """Whether the expert may call a tool in this call."""
        return bool(self.tools) and self.choice != "none"

    def openai_choice(self) -> str | dict[str, Any]:
        """``tool_choice`` as OpenAI's request holds it."""
        if isinstance(self.choice, NamedToolChoice):
            return {"type": "function", "function": {"name": self.choice.name}}
        return self.choice


def new_call_id() -> str:
    """An id for a call whose expert gave none (OpenAI's ``call_...`` shape)."""
    return f"call_{uuid.uuid4().hex[:24]}"


def normalise_tool_params(params: dict[str, Any]) -> dict[str, Any]:
    """``params`` with ``tools`` as :class:`ToolSpec` list and ``tool_choice`` as ToolChoice.

    Accepts ToolSpec objects or dicts (OpenAI's ``{"type": "function", "function": {...}}``
    or the bare function), and OpenAI's forms of ``tool_choice``. Raises
    :class:`ExpertCallError` (``invalid_params``) for a value that cannot be read, or a named
    choice that names no offered tool.
    """
    if not any(key in params for key in TOOL_PARAMS):
        return params
    out = dict(params)
    tools = [_spec(t) for t in (out.get("tools") or [])]
    names = [t.name for t in tools]
    if len(set(names)) != len(names):
        raise _invalid(f"tools: duplicate tool names in {names}")
    if "tools" in out:
        out["tools"] = tools
    if out.get("tool_choice") is not None:
        choice = _choice(out["tool_choice"])
        if isinstance(choice, NamedToolChoice) and choice.name not in names:
            raise _invalid(f"tool_choice: names {choice.name!r}, which is not an offered tool")
        out["tool_choice"] = choice
    else:
        out.pop("tool_choice", None)
    parallel = out.get("parallel_tool_calls")
    if parallel is None:
        out.pop("parallel_tool_calls", None)
    elif not isinstance(parallel, bool):
        raise _invalid(f"parallel_tool_calls must be true or false, got {parallel!r}")
    return out


def take_tool_offer(params: dict[str, Any]) -> ToolOffer | None:
    """Remove the tool params from ``params``; the offer they make, or None without tools."""
    values = {key: params.pop(key) for key in TOOL_PARAMS if key in params}
    if not values.get("tools"):
        return None
    norm = normalise_tool_params(values)
    return ToolOffer(
        tools=tuple(norm["tools"]),
        choice=norm.get("tool_choice", "auto"),
        parallel=norm.get("parallel_tool_calls"),
    )


def openai_message(
    message: Message, arguments: Literal["json", "object"] = "json"
) -> dict[str, Any]:
    """``message`` as an OpenAI chat message dict.

    ``arguments="json"``: call arguments as JSON text (the HTTP wire); ``"object"``: as dicts
    (what Hugging Face chat templates expect).
    """
    out: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.name is not None:
        out["name"] = message.name
    if message.tool_calls:
        calls = [call.openai() for call in message.tool_calls]
        if arguments == "object":
            for call, source in zip(calls, message.tool_calls, strict=True):
                call["function"]["arguments"] = source.arguments
        out["tool_calls"] = calls
        if not message.content:
            out["content"] = None  # OpenAI's form of "calls, no text"
    if message.tool_call_id is not None:
        out["tool_call_id"] = message.tool_call_id
    return out


def message_from_openai(item: Mapping[str, Any]) -> Message:
    """A :class:`Message` from an OpenAI message dict (``tool_calls`` in the wire shape too)."""
    data = dict(item)
    if data.get("content") is None:
        data["content"] = ""
    calls = data.get("tool_calls")
    if calls:
        data["tool_calls"] = [
            _call_from_openai(c) if isinstance(c, Mapping) and "function" in c else c for c in calls
        ]
    return Message.model_validate(data)


def _call_from_openai(call: Mapping[str, Any]) -> ToolCall:
    function = call.get("function") or {}
    return ToolCall.parse(
        str(call.get("id") or new_call_id()),
        str(function.get("name") or ""),
        function.get("arguments"),
    )


def _spec(tool: Any) -> ToolSpec:
    if isinstance(tool, ToolSpec):
        return tool
    if isinstance(tool, Mapping):
        data = tool.get("function") if tool.get("type") == "function" else tool
        try:
            return ToolSpec.model_validate(data)
        except ValidationError as exc:
            raise _invalid(f"tools: cannot read {tool!r}: {exc.errors()[0]['msg']}") from exc
    raise _invalid(f"tools: expected a ToolSpec or a dict, got {type(tool).__name__}")


def _choice(value: Any) -> ToolChoice:
    if isinstance(value, NamedToolChoice):
        return value
    if isinstance(value, str) and value in _MODES:
        return value  # type: ignore[return-value]
    if isinstance(value, Mapping):
        name = (value.get("function") or {}).get("name") if "function" in value else None
        name = name if name is not None else value.get("name")
        if isinstance(name, str):
            try:
                return NamedToolChoice(name=name)
            except ValidationError as exc:
                raise _invalid(f"tool_choice: bad function name {name!r}") from exc
    raise _invalid(
        "tool_choice must be 'auto', 'none', 'required' or "
        f"{{'type': 'function', 'function': {{'name': ...}}}}, got {value!r}"
    )


def _invalid(message: str) -> ExpertCallError:
    return ExpertCallError(message, type=_INVALID_PARAMS, attempts=0)
