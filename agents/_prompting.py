"""How a local model is prompted: its tokenizer's chat template, or a completion prompt.

Base models without a chat template get ``Question: ...\\nAnswer:`` prompts. A final
assistant message is continued rather than answered, in both formats. Tools are rendered by
the chat template, when it takes them (:func:`template_takes_tools`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from expertgraph.agents._tool_offer import openai_message
from expertgraph.agents.base import ExpertCallError
from expertgraph.core.types import Message

PromptFormat = Literal["auto", "chat", "completion"]
"""``auto``: the chat template when the tokenizer has one, else a completion prompt."""

PROMPT_ERROR = "prompt_error"

_TOOLS_WORD = re.compile(r"\btools\b")


def template_takes_tools(tokenizer: Any) -> bool:
    """Whether the tokenizer's chat template renders ``tools`` (its text names them)."""
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, Mapping):  # several named templates (e.g. "default", "tool_use")
        template = " ".join(str(t) for t in template.values())
    return bool(template) and bool(_TOOLS_WORD.search(str(template)))


def completion_prompt(messages: Sequence[Message]) -> str:
    """A plain-text prompt for base models: system text, then Question/Answer turns.

    Earlier user/assistant turns become few-shot pairs; the prompt ends with ``Answer:``
    (or with a final assistant message, which the model continues).
    """
    lines: list[str] = []
    for message in messages:
        content = message.content.strip()
        if message.role == "user":
            lines.append(f"Question: {content}")
        elif message.role == "assistant":
            lines.append(f"Answer: {content}")
        else:  # system and tool text go in as-is
            lines.append(content)
    if not messages or messages[-1].role != "assistant":
        lines.append("Answer:")
    return "\n".join(lines)


def continues_answer(messages: Sequence[Message]) -> bool:
    """Whether the prompt ends with an assistant message, which the model continues."""
    return bool(messages) and messages[-1].role == "assistant"


def encode(
    tokenizer: Any,
    device: str,
    messages: list[Message],
    fmt: Literal["chat", "completion"],
    tools: Sequence[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Token ids (and attention mask) of the prompt, on ``device``; ``tools`` (OpenAI's
    dicts) go to the chat template."""
    continuing = continues_answer(messages)
    try:
        if fmt == "chat":
            conversation = [_template_message(m) for m in messages]
            extra = {"tools": list(tools)} if tools else {}
            enc = tokenizer.apply_chat_template(
                conversation,
                add_generation_prompt=not continuing,
                continue_final_message=continuing,
                return_tensors="pt",
                return_dict=True,
                **extra,
            )
        else:
            enc = tokenizer(completion_prompt(messages), return_tensors="pt")
    except Exception as exc:  # noqa: BLE001 - templates raise anything (jinja errors too)
        raise ExpertCallError(
            f"could not build the {fmt} prompt: {exc}", type=PROMPT_ERROR
        ) from exc
    return {k: v.to(device) for k, v in dict(enc).items()}


def encode_ids(
    tokenizer: Any,
    messages: list[Message],
    fmt: Literal["chat", "completion"],
    tools: Sequence[dict[str, Any]] | None = None,
) -> tuple[int, ...]:
    """The prompt's token ids, as :func:`encode` makes them (every backend prompts alike)."""
    return tuple(int(i) for i in encode(tokenizer, "cpu", messages, fmt, tools)["input_ids"][0])


def _template_message(message: Message) -> dict[str, Any]:
    # Templates know role and content (a name is not rendered), and, when they take tools,
    # an assistant's tool_calls (arguments as objects) and a tool result's tool_call_id.
    out: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.tool_calls or message.tool_call_id is not None:
        wire = openai_message(message, arguments="object")
        for key in ("tool_calls", "tool_call_id"):
            if key in wire:
                out[key] = wire[key]
    return out
