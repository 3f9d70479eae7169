"""How a step's instruction, the task and earlier results become an expert's messages."""

from __future__ import annotations

import re

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


def build_messages(task: Task, steps: list[Step], instruction: str) -> list[Message]:
    """Messages for one expert call.

    A chat task keeps its messages. A plan step sees the earlier steps' results, either
    where its instruction names them (``{step1}``) or, when it names none, as a short
    context block before the instruction (MAKER-style decomposition: each step is small and
    self-contained).
    """
    text, used_placeholders = fill_placeholders(instruction, steps)
    out: list[Message] = []
    if task.system:
        out.append(Message(role="system", content=task.system))
    if task.messages and not task.plan:
        history = [m for m in task.messages if m.role != "system" or not task.system]
        if text.strip() == task.text.strip():
            return out + history
        out.extend(history)
    parts: list[str] = []
    if task.plan and task.prompt:
        parts.append(f"Overall task: {task.prompt}")
    if steps and not used_placeholders:
        lines = [f"{s.index + 1}. {s.instruction} -> {_seen(s)}" for s in steps]
        parts.append("Results of earlier steps:\n" + "\n".join(lines))
    parts.append(text)
    out.append(Message(role="user", content="\n\n".join(parts)))
    return out
