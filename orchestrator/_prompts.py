"""How a step's instruction, the task and earlier results become an expert's messages."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from expertgraph.core.types import Message, Step, Task

_PLACEHOLDER = re.compile(r"\{step(\d+)\}")

HISTORY_WINDOW = 16
"""How many recent steps the graph keeps for the prompts (a policy or aggregator may declare
more with a ``history_window`` attribute): the context block of a plan step lists at most
these, and an agent's earlier turns are those of these steps. Older steps live in the trace."""


def referenced_steps(task: Task) -> frozenset[int]:
    """The step indexes (0-based) that a plan's instructions name as ``{stepN}``: the graph
    keeps what those steps answered after they leave the history window."""
    return frozenset(
        int(m.group(1)) - 1 for s in task.plan or () for m in _PLACEHOLDER.finditer(s.instruction)
    )


def seen(step: Step) -> str:
    """What a later step sees of an earlier one: its output, or why there is none."""
    if step.result is None:
        return "(no result)"
    if step.result.failed:
        return "(failed: no expert produced a usable answer)"
    return step.result.output or ""


def fill_placeholders(
    instruction: str, steps: Sequence[Step], pinned: Mapping[int, str] | None = None
) -> tuple[str, bool]:
    """Replace ``{stepN}`` (1-based) by step N's answer; say whether any was used.

    ``steps`` are the recent steps (each knows its index); ``pinned`` what older steps that
    the plan names answered. A name of a step in neither stays as written."""
    if "{step" not in instruction:
        return instruction, False
    used = False
    by_index = {s.index: s for s in steps}

    def repl(match: re.Match[str]) -> str:
        nonlocal used
        index = int(match.group(1)) - 1
        step = by_index.get(index)
        if step is not None:
            used = True
            return seen(step)
        if pinned and index in pinned:
            used = True
            return pinned[index]
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
    steps: Sequence[Step],
    instruction: str,
    tool_results: Mapping[int, Sequence[str]] | None = None,
    pinned: Mapping[int, str] | None = None,
) -> list[Message]:
    """Messages for one expert call.

    A chat task keeps its messages. A plan step sees the earlier steps' results, either
    where its instruction names them (``{step1}``) or, when it names none, as a short
    context block before the instruction (MAKER-style decomposition: each step is small and
    self-contained). Steps that acted (called tools) are no context line: they follow the
    prompt as the agent's turns, an assistant message with the calls and one ``tool``
    message per result (``tool_results``: step index -> result texts in call order).

    ``steps`` are the run's recent steps (its history window), ``pinned`` the answers of
    older steps the plan names (see :func:`fill_placeholders`).
    """
    turns = agent_turns(steps, tool_results or {})
    told = [s for s in steps if not _acted(s)]
    text, used_placeholders = fill_placeholders(instruction, steps, pinned)
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
        lines = [f"{s.index + 1}. {s.instruction} -> {seen(s)}" for s in told]
        parts.append("Results of earlier steps:\n" + "\n".join(lines))
    parts.append(text)
    out.append(Message(role="user", content="\n\n".join(parts)))
    return out + turns
