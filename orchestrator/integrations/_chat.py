"""Chat in, answer out: how chat requests become tasks and finished runs become replies.

Shared by the HTTP server, the LangChain chat model and the LiteLLM provider so that the three
name experts, sum usage and treat structured output the same way.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from expertgraph.core.errors import ExpertGraphError
from expertgraph.core.types import AnswerFormat, Generation, Message, RunResult, Task, candidate_key

T = TypeVar("T")


@dataclass(frozen=True)
class StructuredOutput:
    """The client wants the answer as JSON, optionally matching a JSON schema."""

    kind: Literal["json_object", "json_schema"]
    schema: dict[str, Any] | None = None
    name: str | None = None


def structured_instruction(fmt: StructuredOutput) -> str:
    """The system instruction that asks experts for JSON (experts have no native JSON mode)."""
    if fmt.schema:
        return (
            "Answer with one JSON object and nothing else (no prose, no code fence). "
            "It must match this JSON schema:\n" + json.dumps(fmt.schema, sort_keys=True)
        )
    return "Answer with one JSON object and nothing else (no prose, no code fence)."


def chat_task(
    messages: Sequence[Message],
    *,
    params: Mapping[str, Any] | None = None,
    structured: StructuredOutput | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> Task:
    """A task for a chat: the messages as they are, generation params, JSON instructions."""
    msgs = list(messages)
    answer_format = AnswerFormat()
    if structured is not None:
        msgs = [Message(role="system", content=structured_instruction(structured)), *msgs]
        answer_format = AnswerFormat(kind="json", json_schema=structured.schema)
    return Task(
        messages=msgs,
        params={k: v for k, v in (params or {}).items() if v is not None},
        answer_format=answer_format,
        metadata=dict(metadata or {}),
    )


def _answer_generations(result: RunResult) -> list[Generation]:
    """The generations whose answer the run returned (the last step's winners)."""
    for step in reversed(result.steps):
        if step.result is None or step.result.failed:
            continue
        winners = set(step.result.winner)
        chosen = [g for g in step.generations if candidate_key(g) in winners]
        if not chosen and result.answer is not None:
            chosen = [g for g in step.generations if g.ok and g.text.strip() == result.answer.strip()]
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


def finish_reason(result: RunResult) -> Literal["stop", "length"]:
    """``length`` when the returned answer was cut by the token limit, else ``stop``."""
    generations = _answer_generations(result)
    return "length" if generations and generations[0].finish_reason == "length" else "stop"


_PIECE = re.compile(r"\S+\s*|\s+")


def stream_pieces(text: str, words: int = 8) -> list[str]:
    """Split an answer into a few chunks of about ``words`` words, whitespace kept."""
    tokens = _PIECE.findall(text)
    return ["".join(tokens[i : i + words]) for i in range(0, len(tokens), words)] or [""]


class NoAnswerError(ExpertGraphError, RuntimeError):
    """A run ended without an answer (every expert failed, or a budget ran out first)."""

    def __init__(self, result: RunResult) -> None:
        self.result = result
        super().__init__(
            f"no expert produced an answer (run {result.run_id}: {result.stop_reason or 'no result'})"
        )
