"""Action ballots: what a candidate that calls tools votes for (and a label expects).

A candidate with tool calls votes for its action, the canonical form of its ordered calls
(:meth:`ToolCall.canonical`: name plus arguments with sorted keys and normalised numbers),
behind :data:`ACTION_PREFIX`: ``tool:add({"a":1,"b":2})``, or for parallel calls one
ordered set, ``tool:[add({...}),mul({...})]``. Text answers and actions are ballots in the
same count, so a text answer must never read as an action: one that starts like an action
ballot is escaped (:func:`text_ballot`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

from expertgraph.core.tools import ToolCall

ACTION_PREFIX = "tool:"
TEXT_ESCAPE = "text:"
# A text answer that would start like an action once its escapes are removed: it gets one
# more escape. Unescaped text ballots then never match this, escaped ones always do, and
# removing one escape inverts it: no two distinct answers share a ballot.
_MIMIC = re.compile(rf"(?:{TEXT_ESCAPE})*{ACTION_PREFIX}")
_HEAD = re.compile(r"([a-zA-Z0-9_-]{1,64})\(")
_DECODER = json.JSONDecoder()


def action_ballot(calls: Sequence[ToolCall]) -> str:
    """The ballot of an ordered list of calls (one call plainly, several as one set)."""
    if not calls:
        raise ValueError("an action ballot needs at least one call")
    forms = [c.canonical() for c in calls]
    body = forms[0] if len(forms) == 1 else "[" + ",".join(forms) + "]"
    return ACTION_PREFIX + body


def text_ballot(answer: str) -> str:
    """A text answer as a ballot: itself, unless it starts like an action (then escaped)."""
    return TEXT_ESCAPE + answer if _MIMIC.match(answer) else answer


def is_action(ballot: str | None) -> bool:
    """Whether a ballot (or a step's ``answer``) is an action."""
    return ballot is not None and ballot.startswith(ACTION_PREFIX)


def parse_action(ballot: str) -> list[ToolCall] | None:
    """The calls an action ballot stands for (ids ``call_0``...), or None if it is not one.

    Spaces inside the arguments are allowed, so a hand-written ballot (a label's expected
    action) reads back; :func:`action_ballot` of the result is its canonical form.
    """
    if not ballot.startswith(ACTION_PREFIX):
        return None
    body = ballot[len(ACTION_PREFIX) :].strip()
    many = body.startswith("[")
    pos = 1 if many else 0
    calls: list[ToolCall] = []
    while True:
        head = _HEAD.match(body, pos)
        if head is None:
            return None
        try:
            arguments, end = _DECODER.raw_decode(body, head.end())
        except json.JSONDecodeError:
            return None
        if not isinstance(arguments, dict) or body[end : end + 1] != ")":
            return None
        calls.append(ToolCall(id=f"call_{len(calls)}", name=head.group(1), arguments=arguments))
        pos = end + 1
        if not many:
            return calls if pos == len(body) else None
        if body[pos:] == "]":
            return calls
        if body[pos : pos + 1] != ",":
            return None
        pos += 1
