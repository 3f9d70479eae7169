"""How a local model is prompted: its tokenizer's chat template, or a completion prompt.

Base models without a chat template get ``Question: ...\\nAnswer:`` prompts. A final
assistant message is continued rather than answered, in both formats.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from expertgraph.agents.base import ExpertCallError
from expertgraph.core.types import Message

PromptFormat = Literal["auto", "chat", "completion"]
"""``auto``: the chat template when the tokenizer has one, else a completion prompt."""

PROMPT_ERROR = "prompt_error"


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
    tokenizer: Any, device: str, messages: list[Message], fmt: Literal["chat", "completion"]
) -> dict[str, Any]:
    """Token ids (and attention mask) of the prompt, on ``device``."""
    continuing = continues_answer(messages)
    try:
        if fmt == "chat":
            # Templates know role and content; other fields (a name) are not rendered.
            conversation = [{"role": m.role, "content": m.content} for m in messages]
            enc = tokenizer.apply_chat_template(
                conversation,
                add_generation_prompt=not continuing,
                continue_final_message=continuing,
                return_tensors="pt",
                return_dict=True,
            )
        else:
            enc = tokenizer(completion_prompt(messages), return_tensors="pt")
    except Exception as exc:  # noqa: BLE001 - templates raise anything (jinja errors too)
        raise ExpertCallError(
            f"could not build the {fmt} prompt: {exc}", type=PROMPT_ERROR
        ) from exc
    return {k: v.to(device) for k, v in dict(enc).items()}
