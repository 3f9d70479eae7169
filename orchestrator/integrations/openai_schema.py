"""Pydantic models of the OpenAI-compatible HTTP API that ``expertgraph serve`` speaks.

Requests accept the OpenAI chat-completions fields. Those expertgraph cannot honour are
narrowed in the schema, so a request outside it is a 400 naming the field (``n`` > 1,
``logprobs: true``, a forced ``tool_choice``, non-text content parts); the others are accepted
and ignored where a model may ignore them anyway (penalties, ``logit_bias``, ``metadata``...).
``tools`` is accepted and ignored too: tools are not passed to experts, so no reply holds a
tool call.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

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


class ChatMessage(_Open):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Text | list[TextPart] | None = None
    name: Text | None = Field(None, max_length=256)
    tool_call_id: Text | None = None

    def to_core(self) -> Message:
        """As an expertgraph :class:`Message` (``developer`` is a system message)."""
        if isinstance(self.content, list):
            text = "\n".join(part.text for part in self.content)
        else:
            text = self.content or ""
        role = "system" if self.role == "developer" else self.role
        return Message(role=role, content=text, name=self.name)


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


class ChatCompletionRequest(_Open):
    """``POST /v1/chat/completions``. ``model`` picks the routing configuration."""

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
    tools: list[dict[str, Any]] | None = Field(
        None,
        description="Accepted and ignored: tools are not passed to experts, no reply calls one.",
    )
    tool_choice: Literal["auto", "none"] | None = Field(
        None, description="Only 'auto' or 'none': no reply calls a tool."
    )
    user: Text | None = Field(None, max_length=256)


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


class AssistantMessage(_Closed):
    role: Literal["assistant"] = "assistant"
    content: str
    refusal: None = None


FinishReason = Literal["stop", "length"]


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


class ChunkDelta(_Closed):
    role: Literal["assistant"] | None = None
    content: str | None = None


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
