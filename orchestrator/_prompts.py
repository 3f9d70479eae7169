"""How a step's instruction, the task and earlier results become an expert's messages."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from expertgraph.core.types import Message, Step, Task

_PLACEHOLDER = re.compile(r"\{step(\d+)\}")


def _seen(step: Step) -> str:
    """What a later step sees of an earlier one: its output, or why there is none."""
    if step.result is None:
        return "(no result)"
    if step.result.failed:
        return "(failed: no expert produced a usable answer)"
    return step.result.output or ""


def fill_placeholders(instruction: str, steps: list[Step]) -> tuple[str, bool]:
    """Replace ``{stepN}`` (1-based) by step N's answer; say whether any was used."""
    used = False

    def repl(match: re.Match[str]) -> str:
        nonlocal used
        index = int(match.group(1)) - 1
        if 0 <= index < len(steps):
            used = True
            return _seen(steps[index])
        return match.group(0)

    return _PLACEHOLDER.sub(repl, instruction), used


def _acted(step: Step) -> bool:
    return step.result is not None and bool(step.result.tool_calls)


def agent_turns(steps: Sequence[Step], results: Mapping[int, Sequence[str]]) -> list[Message]:
    """The conversation of the steps that acted: each one's assistant message with its
    ``tool_calls``, then one ``tool`` message per call with the result text it got."""
    out: list[Message] = []
    for step in steps:
        if not _acted(step):
            continue
        assert step.result is not None
        calls = list(step.result.tool_calls)
        texts = results.get(step.index, ())
        out.append(Message(role="assistant", content=step.result.text, tool_calls=calls))
        for i, call in enumerate(calls):
            content = texts[i] if i < len(texts) else "error: the call was not executed"
            out.append(Message(role="tool", content=content, tool_call_id=call.id))
    return out


def build_messages(
    task: Task,
    steps: list[Step],
    instruction: str,
    tool_results: Mapping[int, Sequence[str]] | None = None,
) -> list[Message]:
    """Messages for one expert call.

    A chat task keeps its messages. A plan step sees the earlier steps' results, either
    where its instruction names them (``{step1}``) or, when it names none, as a short
    context block before the instruction (MAKER-style decomposition: each step is small and
    self-contained). Steps that acted (called tools) are no context line: they follow the
    prompt as the agent's turns, an assistant message with the calls and one ``tool``
    message per result (``tool_results``: step index -> result texts in call order).
    """
    turns = agent_turns(steps, tool_results or {})
    told = [s for s in steps if not _acted(s)]
    text, used_placeholders = fill_placeholders(instruction, steps)
    out: list[Message] = []
    if task.system:
        out.append(Message(role="system", content=task.system))
    if task.messages and not task.plan:
        history = [m for m in task.messages if m.role != "system" or not task.system]
        if text.strip() == task.text.strip():
            return out + history + turns
        out.extend(history)
    parts: list[str] = []
    if task.plan and task.prompt:
        parts.append(f"Overall task: {task.prompt}")
    if told and not used_placeholders:
        lines = [f"{s.index + 1}. {s.instruction} -> {_seen(s)}" for s in told]
        parts.append("Results of earlier steps:\n" + "\n".join(lines))
    parts.append(text)
    out.append(Message(role="user", content="\n\n".join(parts)))
    return out + turns
