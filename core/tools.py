"""Tools in the OpenAI shape: a tool's spec, a call an expert proposes, and the choice rule.

A :class:`ToolSpec` is what an expert is offered (name, description, JSON-schema
parameters); a :class:`ToolCall` is what it proposes. Both are plain data, traced as is;
the Python callable behind a tool lives with whoever executes it, never in a trace.
"""

from __future__ import annotations

import json
import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

TOOL_NAME = r"^[a-zA-Z0-9_-]{1,64}$"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ToolSpec(_Model):
    """A tool an expert may call: its name, what it does, the JSON schema of its arguments."""

    name: str = Field(pattern=TOOL_NAME)
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})

    def openai(self) -> dict[str, Any]:
        """The tool as OpenAI's ``tools`` list holds it."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": self.parameters,
            },
        }


class ToolCall(_Model):
    """One call an expert proposes: an id, the tool's name and its arguments.

    ``arguments`` is the parsed JSON object; when the expert's arguments were not a JSON
    object, ``arguments`` is empty and ``invalid`` says why (such a call never votes).
    """

    id: str
    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)
    invalid: str | None = None
    """Why the call is malformed as proposed (arguments not JSON, not an object)."""

    @classmethod
    def parse(cls, id: str, name: str, arguments: str | dict[str, Any] | None) -> ToolCall:
        """A call from the wire form, where ``arguments`` is a JSON text (or already a dict)."""
        if isinstance(arguments, dict):
            return cls(id=id, name=name, arguments=arguments)
        text = (arguments or "").strip() or "{}"
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            return cls(id=id, name=name, invalid=f"arguments are not JSON: {exc.msg}")
        if not isinstance(value, dict):
            return cls(id=id, name=name, invalid="arguments are not a JSON object")
        return cls(id=id, name=name, arguments=value)

    def openai(self) -> dict[str, Any]:
        """The call as an OpenAI assistant message's ``tool_calls`` holds it."""
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": json.dumps(self.arguments)},
        }

    def canonical(self) -> str:
        """The call as a ballot: name plus arguments with sorted keys and normalised numbers.

        Two calls that mean the same (``{"b": 2.0, "a": 1}`` and ``{"a": 1, "b": 2}``) have
        the same canonical form; the call id plays no part.
        """
        args = json.dumps(_normalise(self.arguments), sort_keys=True, separators=(",", ":"))
        return f"{self.name}({args})"


ToolChoiceMode = Literal["auto", "none", "required"]


class NamedToolChoice(_Model):
    """``tool_choice`` naming one function: the expert must call it."""

    name: str = Field(pattern=TOOL_NAME)


ToolChoice = ToolChoiceMode | NamedToolChoice


def _normalise(value: Any) -> Any:
    # Numbers compare by value: 2, 2.0 and 2.00 are one ballot; NaN/inf stay as they are.
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if math.isfinite(value) and value.is_integer():
            return int(value)
        return value
    if isinstance(value, dict):
        return {str(k): _normalise(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_normalise(v) for v in value]
    return value
