"""Pydantic models of the OpenAI-compatible HTTP API that ``expertgraph serve`` speaks.

Requests accept the OpenAI chat-completions fields. Those expertgraph cannot honour are
narrowed in the schema, so a request outside it is a 400 naming the field (``n`` > 1,
``logprobs: true``, non-text content parts); the others are accepted and ignored where a model
may ignore them anyway (penalties, ``logit_bias``...). ``tools``, ``tool_choice`` and
``parallel_tool_calls`` are offered to the experts; a reply may then hold ``tool_calls`` for
the client to execute, and the next request carries their results as ``tool`` messages.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

from expertgraph.core.tools import TOOL_NAME, ToolCall
from expertgraph.core.types import Message


def _utf8(value: str) -> str:
    # JSON allows "\ud800" escapes; such a string cannot be written back as UTF-8 (traces,
    # responses), so it is refused at the door rather than failing later with a 500.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("text is not valid Unicode (it holds a lone surrogate)") from None
    return value


Text = Annotated[str, AfterValidator(_utf8)]


def _json_int(value: Any) -> Any:
    # JSON Schema's "integer" includes 5.0; it excludes "5" and true (which lax pydantic takes).
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _json_false(value: Any) -> Any:
    if not isinstance(value, bool):
        raise ValueError("Input should be a valid boolean")
    return value


Int = Annotated[int, BeforeValidator(_json_int)]
"""An integer as JSON Schema means it: ``5`` or ``5.0``, never ``"5"`` or ``true``. (With
constraints, put ``Field(ge=...)`` before the validator, or the schema says ``ge``.)"""


class _Open(BaseModel):
    """Request parts: unknown fields are accepted and ignored, as OpenAI clients send many
    optional ones; known fields are strict (no ``0`` for ``false``, no ``"3"`` for ``3``)."""

    model_config = ConfigDict(extra="allow", strict=True)


class _Closed(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ---- requests --------------------------------------------------------------------------------


class TextPart(_Open):
    """A text content part; other part types (images, audio, files) are not supported."""

    type: Literal["text"]
    text: Text


class FunctionCallIn(_Open):
    name: Text = Field(max_length=256)
    arguments: Text
    """The call's arguments as JSON text (as the expert wrote them; not always valid JSON)."""


class ToolCallIn(_Open):
    """A call an earlier assistant message made (the conversation so far)."""

    id: Text = Field(min_length=1, max_length=256)
    type: Literal["function"] = "function"
    function: FunctionCallIn


class ChatMessage(_Open):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Text | list[TextPart] | None = None
    name: Text | None = Field(None, max_length=256)
    tool_calls: list[ToolCallIn] | None = None
    tool_call_id: Text | None = None

    def to_core(self) -> Message:
        """As an expertgraph :class:`Message` (``developer`` is a system message)."""
        if isinstance(self.content, list):
            text = "\n".join(part.text for part in self.content)
        else:
            text = self.content or ""
        role = "system" if self.role == "developer" else self.role
        calls = [
            ToolCall.parse(c.id, c.function.name, c.function.arguments)
            for c in self.tool_calls or []
        ]
        return Message(
            role=role,
            content=text,
            name=self.name,
            tool_calls=calls or None,
            tool_call_id=self.tool_call_id,
        )


class FunctionDef(_Open):
    name: str = Field(pattern=TOOL_NAME)
    description: Text | None = None
    parameters: dict[str, Any] | None = None
    """The JSON schema of the arguments (an object schema); absent: no arguments."""
    strict: bool | None = None


class ToolDef(_Open):
    """A tool offered to the experts (OpenAI's ``tools`` item)."""

    type: Literal["function"]
    function: FunctionDef


class NamedFunction(_Open):
    name: Text = Field(min_length=1, max_length=256)


class NamedToolChoiceIn(_Open):
    """``tool_choice`` naming one of the offered functions: the experts must call it."""

    type: Literal["function"]
    function: NamedFunction


class StreamOptions(_Open):
    include_usage: bool | None = None


class JSONSchemaFormat(_Open):
    name: Text = Field(min_length=1, max_length=64)
    description: Text | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class TextFormat(_Open):
    type: Literal["text"]


class JSONObjectFormat(_Open):
    type: Literal["json_object"]


class JSONSchemaResponseFormat(_Open):
    type: Literal["json_schema"]
    json_schema: JSONSchemaFormat


ResponseFormat = Annotated[
    TextFormat | JSONObjectFormat | JSONSchemaResponseFormat, Field(discriminator="type")
]


# A forced tool_choice (``required`` or a named function) needs tools; a named one must name
# one of them, which no JSON schema can say (the server answers 400 naming ``tool_choice``).
_FORCED_CHOICE_NEEDS_TOOLS: dict[str, Any] = {
    "if": {
        "required": ["tool_choice"],
        "properties": {"tool_choice": {"anyOf": [{"const": "required"}, {"type": "object"}]}},
    },
    "then": {"required": ["tools"], "properties": {"tools": {"type": "array"}}},
}


class ChatCompletionRequest(_Open):
    """``POST /v1/chat/completions``. ``model`` picks the routing configuration."""

    model_config = ConfigDict(
        extra="allow", strict=True, json_schema_extra=_FORCED_CHOICE_NEEDS_TOOLS
    )

    model: Text = Field(min_length=1, max_length=256, examples=["expertgraph/default"])
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: Annotated[int, Field(ge=1), BeforeValidator(_json_int)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1), BeforeValidator(_json_int)] | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    n: Annotated[int, Field(ge=1, le=1), BeforeValidator(_json_int)] | None = Field(
        None, description="Only 1 is supported."
    )
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    stop: Text | list[Text] | None = None
    seed: Int | None = None
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    logprobs: Annotated[Literal[False], BeforeValidator(_json_false)] | None = Field(
        None, description="Not supported: only false or absent."
    )
    response_format: ResponseFormat | None = None
    tools: list[ToolDef] | None = Field(
        None,
        min_length=1,
        description="Offered to the experts; a reply may call them (`tool_calls`). Names are "
        "unique (a 400 names `tools` otherwise).",
        json_schema_extra={"uniqueItems": True},
    )
    tool_choice: Literal["auto", "none", "required"] | NamedToolChoiceIn | None = Field(
        None, description="Only with `tools`; a named function must be one of them."
    )
    parallel_tool_calls: bool | None = None
    user: Text | None = Field(None, max_length=256)
    metadata: dict[str, Any] | None = Field(
        None, description="`session_id` links the requests of one conversation in the traces."
    )


# ---- responses -------------------------------------------------------------------------------


class CompletionUsage(_Closed):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class RunInfo(_Closed):
    """What expertgraph adds to a completion: the run behind it."""

    run_id: str
    experts: list[str]
    """The experts whose answer was returned."""
    policy: str
    stop_reason: str
    steps: int
    calls: int
    cost: float


class FunctionCallOut(_Closed):
    name: str
    arguments: str
    """JSON text, as OpenAI sends it."""


class ToolCallOut(_Closed):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCallOut

    @classmethod
    def of(cls, call: ToolCall) -> ToolCallOut:
        wire = call.openai()
        return cls(id=wire["id"], function=FunctionCallOut(**wire["function"]))


class AssistantMessage(_Closed):
    role: Literal["assistant"] = "assistant"
    content: str | None
    """The answer; null when the reply only calls tools."""
    refusal: None = None
    tool_calls: list[ToolCallOut] | None = None


FinishReason = Literal["stop", "length", "tool_calls"]


class Choice(_Closed):
    index: int = 0
    message: AssistantMessage
    finish_reason: FinishReason
    logprobs: None = None


class ChatCompletion(_Closed):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    """``expertgraph/<config>:<expert>[+<expert>...]``: the experts whose answer was returned."""
    choices: list[Choice]
    usage: CompletionUsage
    system_fingerprint: str | None = None
    expertgraph: RunInfo


class FunctionDelta(_Closed):
    name: str | None = None
    arguments: str | None = None


class ToolCallDelta(_Closed):
    """A piece of a streamed call: the first names it (id, type, name), the next add arguments."""

    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: FunctionDelta | None = None


class ChunkDelta(_Closed):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None


class ChunkChoice(_Closed):
    index: int = 0
    delta: ChunkDelta
    finish_reason: FinishReason | None = None
    logprobs: None = None


class ChatCompletionChunk(_Closed):
    """One ``data:`` event of a streamed completion."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: CompletionUsage | None = None
    expertgraph: RunInfo | None = None


class ModelCard(_Closed):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "expertgraph"


class ModelList(_Closed):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class Health(_Closed):
    status: Literal["ok"] = "ok"


class ErrorBody(_Closed):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(_Closed):
    """The OpenAI error shape, for every non-2xx status and for a mid-stream error event."""

    error: ErrorBody
