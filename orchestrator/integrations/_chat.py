"""Chat in, answer out: the one way chat requests become tasks and finished runs become replies.

Shared by the HTTP server, the LangChain chat model, the LiteLLM provider and the LangGraph
node, so that they read params and stop sequences, name experts, count usage and report a run
without an answer the same way.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from expertgraph.core.errors import NoAnswerError
from expertgraph.core.tools import NamedToolChoice, ToolCall, ToolChoice, ToolSpec
from expertgraph.core.types import (
    AnswerFormat,
    Generation,
    Message,
    RunResult,
    Task,
    Usage,
    candidate_key,
)
from expertgraph.orchestrator.integrations.openai_schema import ChatMessage
from expertgraph.traces.redact import redact_text

# ---- request -> task -----------------------------------------------------------------------


@dataclass(frozen=True)
class StructuredOutput:
    """The client wants the answer as JSON, optionally matching a JSON schema."""

    kind: Literal["json_object", "json_schema"]
    schema: dict[str, Any] | None = None
    name: str | None = None


def structured_output(response_format: Any) -> StructuredOutput | None:
    """An OpenAI ``response_format`` mapping as our type; absent or ``text`` is None."""
    if not response_format:
        return None
    if not isinstance(response_format, Mapping) or response_format.get("type") not in (
        "json_object",
        "json_schema",
        "text",
    ):
        raise ValueError(
            f"response_format must be an OpenAI response_format mapping, got {response_format!r}"
        )
    if response_format["type"] == "text":
        return None
    spec = response_format.get("json_schema") or {}
    return StructuredOutput(
        kind=response_format["type"], schema=spec.get("schema"), name=spec.get("name")
    )


def structured_instruction(fmt: StructuredOutput) -> str:
    """The system instruction that asks experts for JSON (experts have no native JSON mode)."""
    if fmt.schema:
        return (
            "Answer with one JSON object and nothing else (no prose, no code fence). "
            "It must match this JSON schema:\n" + json.dumps(fmt.schema, sort_keys=True)
        )
    return "Answer with one JSON object and nothing else (no prose, no code fence)."


def stop_list(stop: str | Sequence[str] | None) -> list[str]:
    """OpenAI's ``stop`` (one string, a list, or none) as a list."""
    if stop is None:
        return []
    return [stop] if isinstance(stop, str) else list(stop)


def openai_messages(messages: Iterable[Message | Mapping[str, Any] | Any]) -> list[Message]:
    """OpenAI-style chat messages (mappings, or objects ``dict()`` accepts) as our messages."""
    return [
        m
        if isinstance(m, Message)
        else ChatMessage.model_validate(m if isinstance(m, Mapping) else dict(m)).to_core()
        for m in messages
    ]


class ToolRequestError(ValueError):
    """A request's ``tools`` / ``tool_choice`` cannot be honoured; ``param`` names the field."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


def tool_specs(tools: Sequence[Mapping[str, Any]] | None) -> list[ToolSpec] | None:
    """OpenAI ``tools`` (``{"type": "function", "function": {...}}``) as specs; none is None."""
    if not tools:
        return None
    specs: list[ToolSpec] = []
    for i, tool in enumerate(tools):
        fn = tool.get("function") if tool.get("type") == "function" else None
        if not isinstance(fn, Mapping) or not isinstance(fn.get("name"), str):
            raise ToolRequestError(f"tools.{i}", f"tools.{i}: expected a function tool")
        parameters = fn.get("parameters")
        if parameters is not None and (
            not isinstance(parameters, Mapping) or parameters.get("type", "object") != "object"
        ):
            raise ToolRequestError(
                f"tools.{i}.function.parameters",
                f"tools.{i}.function.parameters: must be a JSON schema of type object",
            )
        if parameters is not None:
            import jsonschema  # only requests that carry tools need it

            try:
                jsonschema.validators.validator_for(parameters).check_schema(parameters)
            except jsonschema.SchemaError as exc:
                raise ToolRequestError(
                    f"tools.{i}.function.parameters",
                    f"tools.{i}.function.parameters: not a valid JSON schema: {exc.message}",
                ) from None
        specs.append(
            ToolSpec(
                name=fn["name"],
                description=fn.get("description") or "",
                **({"parameters": dict(parameters)} if parameters is not None else {}),
            )
        )
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ToolRequestError("tools", f"tools: two tools share a name ({names})")
    return specs


def tool_choice(value: Any, tools: Sequence[ToolSpec] | None) -> ToolChoice:
    """OpenAI's ``tool_choice`` checked against the offered tools (absent is ``auto``)."""
    if value is None:
        return "auto"
    if isinstance(value, str) and value in ("auto", "none"):
        return value  # type: ignore[return-value]
    if not tools:
        raise ToolRequestError("tool_choice", "tool_choice: forcing a call needs tools")
    if isinstance(value, str):
        if value != "required":
            raise ToolRequestError("tool_choice", f"tool_choice: unknown mode {value!r}")
        return "required"
    name = (value.get("function") or {}).get("name") if isinstance(value, Mapping) else None
    if not isinstance(name, str):
        raise ToolRequestError("tool_choice", f"tool_choice: cannot read {value!r}")
    if name not in {t.name for t in tools}:
        raise ToolRequestError(
            "tool_choice", f"tool_choice: names {name!r}, which is not one of the tools"
        )
    return NamedToolChoice(name=name)


def chat_task(
    messages: Sequence[Message],
    request: Mapping[str, Any] | None = None,
    *,
    metadata: Mapping[str, Any] | None = None,
) -> Task:
    """A task for a chat: the messages as they are, plus an OpenAI-shaped request's params.

    ``request`` holds the request's OpenAI fields (``max_completion_tokens`` or ``max_tokens``,
    ``temperature``, ``top_p``, ``seed``, ``stop``, ``response_format``, ``user``, ``tools``,
    ``tool_choice``, ``parallel_tool_calls``); others are ignored. JSON output becomes a system
    instruction and the task's answer format; ``user`` goes into the task's metadata. Tools
    become the task's tool specs with no callables behind them, so a run that chooses to call
    one ends there and hands the calls back (:attr:`ChatReply.tool_calls`). Bad tools raise
    :class:`ToolRequestError`.
    """
    request = request or {}
    msgs = list(messages)
    answer_format = AnswerFormat()
    structured = structured_output(request.get("response_format"))
    if structured is not None:
        msgs = [Message(role="system", content=structured_instruction(structured)), *msgs]
        answer_format = AnswerFormat(kind="json", json_schema=structured.schema)
    params = {
        "max_tokens": request.get("max_completion_tokens") or request.get("max_tokens"),
        "temperature": request.get("temperature"),
        "top_p": request.get("top_p"),
        "seed": request.get("seed"),
        "stop": stop_list(request.get("stop")) or None,
        "parallel_tool_calls": request.get("parallel_tool_calls"),
    }
    tools = tool_specs(request.get("tools"))
    choice = tool_choice(request.get("tool_choice"), tools)
    user = request.get("user")
    return Task(
        messages=msgs,
        params={k: v for k, v in params.items() if v is not None},
        answer_format=answer_format,
        metadata={**(metadata or {}), **({"user": user} if user else {})},
        tools=tools,
        tool_choice=choice,
    )


# ---- finished run -> reply -----------------------------------------------------------------


def _answer_generations(result: RunResult) -> list[Generation]:
    """The generations whose answer the run returned (the last step's winners)."""
    for step in reversed(result.steps):
        if step.result is None or step.result.failed:
            continue
        winners = set(step.result.winner)
        chosen = [g for g in step.generations if candidate_key(g) in winners]
        if not chosen and result.answer is not None:
            chosen = [
                g for g in step.generations if g.ok and g.text.strip() == result.answer.strip()
            ]
        return chosen
    return []


def answer_experts(result: RunResult) -> list[str]:
    """Names of the experts whose answer was returned, in call order, without repeats."""
    names: list[str] = []
    for generation in _answer_generations(result):
        if generation.expert not in names:
            names.append(generation.expert)
    return names


def reply_model(model_id: str, result: RunResult) -> str:
    """``expertgraph/<config>:<expert>[+<expert>...]``; the bare model id when none answered."""
    experts = answer_experts(result)
    return f"{model_id}:{'+'.join(experts)}" if experts else model_id


def truncate_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """Cut ``text`` at the first stop sequence (experts such as callables may ignore ``stop``)."""
    cut = min((i for s in stops if s and (i := text.find(s)) >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


FinishReason = Literal["stop", "length", "tool_calls"]


def finish_reason(result: RunResult) -> Literal["stop", "length"]:
    """``length`` when the returned answer was cut by the token limit, else ``stop``."""
    generations = _answer_generations(result)
    return "length" if generations and generations[0].finish_reason == "length" else "stop"


@dataclass(frozen=True)
class ChatReply:
    """A finished run as every adapter reports it."""

    text: str
    """The answer, cut at the first of the task's stop sequences (with tool calls: any text
    the winning proposal said along with them, often none)."""
    finish_reason: FinishReason
    model: str
    """``expertgraph/<config>:<experts>`` (see :func:`reply_model`)."""
    experts: list[str]
    result: RunResult
    tool_calls: list[ToolCall] = field(default_factory=list)
    """The calls the run ended on, for the caller to execute (then ``finish_reason`` is
    ``tool_calls``)."""

    @property
    def usage(self) -> Usage:
        """Every expert call of the run, summed."""
        return self.result.usage

    def openai_usage(self) -> dict[str, int]:
        """``prompt_tokens``, ``completion_tokens``, ``total_tokens`` (OpenAI, LiteLLM)."""
        u = self.usage
        return {
            "prompt_tokens": u.input_tokens,
            "completion_tokens": u.output_tokens,
            "total_tokens": u.total_tokens,
        }

    def langchain_usage(self) -> dict[str, int]:
        """``input_tokens``, ``output_tokens``, ``total_tokens`` (LangChain ``usage_metadata``)."""
        u = self.usage
        return {
            "input_tokens": u.input_tokens,
            "output_tokens": u.output_tokens,
            "total_tokens": u.total_tokens,
        }


def chat_reply(model_id: str, result: RunResult) -> ChatReply:
    """The reply for a run served as ``model_id``; no answer raises :class:`NoAnswerError`."""
    # A reply leaves the process: credentials it repeats are redacted like every other sink.
    if result.tool_calls:
        return ChatReply(
            text=redact_text(result.answer or ""),
            finish_reason="tool_calls",
            model=reply_model(model_id, result),
            experts=answer_experts(result),
            result=result,
            tool_calls=list(result.tool_calls),
        )
    if result.answer is None:
        raise NoAnswerError(result)
    text, stopped = truncate_at_stop(
        redact_text(result.answer), stop_list(result.task.params.get("stop"))
    )
    return ChatReply(
        text=text,
        finish_reason="stop" if stopped else finish_reason(result),
        model=reply_model(model_id, result),
        experts=answer_experts(result),
        result=result,
    )


_PIECE = re.compile(r"\S+\s*|\s+")


def stream_pieces(text: str, words: int = 8) -> list[str]:
    """Split an answer into a few chunks of about ``words`` words, whitespace kept."""
    tokens = _PIECE.findall(text)
    return ["".join(tokens[i : i + words]) for i in range(0, len(tokens), words)] or [""]
