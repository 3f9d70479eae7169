"""Red flags: warning signs that drop a sample before it votes (MAKER, arXiv 2511.09030).

MAKER's observation: a sample that is too long or badly formatted is more often wrong, and
its errors are correlated with other samples' errors, so discarding it (and drawing another)
beats letting it vote. A flagged sample stays in the step record with its reason.

A sample that calls tools is flagged by :func:`tool_flag` when its action cannot be taken:
a call to a tool the task does not offer, arguments that are not JSON or fail the tool's
JSON schema, or a break of the task's ``tool_choice`` (text where a call is required, a
call where none is allowed). Those flags always apply, whatever :class:`RedFlags` says.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from expertgraph.core.tools import NamedToolChoice, ToolCall, ToolSpec
from expertgraph.core.types import Generation, Task
from expertgraph.policies.aggregation.answers import Extracted

_REFUSAL = re.compile(
    r"^\W*(?:i'?m sorry|i am sorry|sorry, (?:but )?i"
    r"|i (?:can(?:no|')t|cannot|won'?t|am unable to|'m unable to)"
    r"|as an ai\b|i apologi[sz]e)",
    re.I,
)


class RedFlags(BaseModel):
    """Which warning signs exclude a sample from the vote (all optional but the defaults)."""

    model_config = ConfigDict(extra="forbid")

    unparseable: bool = True
    """No answer could be extracted (always excluded; the flag only names the reason)."""
    truncated: bool = True
    """The expert stopped at its token limit (``finish_reason == "length"``)."""
    refusal: bool = True
    """The reply opens with a refusal ("I'm sorry, but I can't ...")."""
    max_chars: int | None = Field(None, ge=1)
    """Replies longer than this many characters."""
    max_output_tokens: int | None = Field(None, ge=1)
    """Replies longer than this many output tokens (when the expert reports tokens)."""
    max_length_ratio: float | None = Field(None, gt=0)
    """Replies longer than this multiple of the expert's typical length (``typical_chars``)."""
    typical_chars: dict[str, float] = Field(default_factory=dict)
    """Expert -> typical reply length in characters (e.g. the median on held-out data)."""
    answer_pattern: str | None = None
    """A regex every extracted answer must match in full (e.g. ``-?\\d+`` for integer answers)."""

    def check(self, generation: Generation, extracted: Extracted | None) -> str | None:
        """The reason this sample is flagged, or None when it may vote."""
        return red_flag(generation, extracted, self)


def red_flag(
    generation: Generation, extracted: Extracted | None, flags: RedFlags | None
) -> str | None:
    """Why ``generation`` must not vote, or None. Failed calls and unreadable answers always do."""
    if generation.error is not None:
        return f"failed: {generation.error.type}: {generation.error.message}"
    if generation.tool_calls:
        # An action has no extracted answer; only the reply's shape can flag it here.
        return _shape_flag(generation, flags) if flags is not None else None
    if extracted is None or extracted.answer is None:
        if extracted is None:
            return "unparseable: no answer extracted"
        return (
            f"unparseable: {extracted.reason}"
            if flags is None or flags.unparseable
            else extracted.reason
        )
    if flags is None:
        return None
    shape = _shape_flag(generation, flags)
    if shape is not None:
        return shape
    if flags.answer_pattern is not None and not re.fullmatch(
        flags.answer_pattern, extracted.answer
    ):
        return f"red flag: answer {extracted.answer!r} does not match {flags.answer_pattern!r}"
    return None


def _shape_flag(generation: Generation, flags: RedFlags) -> str | None:
    """Flags on the reply itself, whatever it answers: truncated, a refusal, too long."""
    text = generation.text
    if flags.truncated and generation.finish_reason == "length":
        return "red flag: truncated at the token limit"
    if flags.refusal and _REFUSAL.search(text):
        return "red flag: refusal"
    if flags.max_chars is not None and len(text) > flags.max_chars:
        return f"red flag: too long ({len(text)} > {flags.max_chars} chars)"
    if (
        flags.max_output_tokens is not None
        and generation.output_tokens
        and generation.output_tokens > flags.max_output_tokens
    ):
        return f"red flag: too long ({generation.output_tokens} > {flags.max_output_tokens} tokens)"
    if flags.max_length_ratio is not None:
        typical = flags.typical_chars.get(generation.expert)
        if typical and len(text) > flags.max_length_ratio * typical:
            return (
                f"red flag: too long ({len(text)} chars > {flags.max_length_ratio:g} x "
                f"typical {typical:.0f})"
            )
    return None


def tool_flag(generation: Generation, task: Task) -> str | None:
    """Why ``generation``'s action (its calls, or its text answer) breaks the task's tools."""
    choice = task.tool_choice
    calls = generation.tool_calls
    if not calls:
        if not task.tools:  # nothing offered, nothing to require: text is the only answer
            return None
        if choice == "required":
            return "red flag: answered in text though tool_choice is 'required'"
        if isinstance(choice, NamedToolChoice):
            return f"red flag: answered in text though tool_choice names {choice.name!r}"
        return None
    if choice == "none":
        return f"red flag: called {calls[0].name!r} though tool_choice is 'none'"
    specs = {spec.name: spec for spec in task.tools or []}
    for call in calls:
        if isinstance(choice, NamedToolChoice) and call.name != choice.name:
            return f"red flag: called {call.name!r} though tool_choice names {choice.name!r}"
        spec = specs.get(call.name)
        if spec is None:
            offered = ", ".join(sorted(specs)) or "none"
            return f"red flag: call to unknown tool {call.name!r} (offered: {offered})"
        if call.invalid is not None:
            return f"red flag: call to {call.name!r} is malformed: {call.invalid}"
        problem = schema_error(spec, call)
        if problem is not None:
            return f"red flag: {problem}"
    return None


def schema_error(spec: ToolSpec, call: ToolCall) -> str | None:
    """How ``call``'s arguments break ``spec``'s JSON schema (the first way), or None.

    A schema that is itself invalid checks nothing, so it fails every call, saying so.
    """
    import jsonschema  # only steps that offer tools need it (~50 ms to import)

    validator, invalid = _validator(json.dumps(spec.parameters, sort_keys=True))
    if validator is None:
        return f"the JSON schema of tool {spec.name!r} is invalid: {invalid}"
    error = jsonschema.exceptions.best_match(validator.iter_errors(call.arguments))
    if error is None:
        return None
    where = "/".join(str(p) for p in error.absolute_path)
    return f"arguments of {call.name!r} fail its schema: {error.message}" + (
        f" (at {where})" if where else ""
    )


def typical_lengths(texts: Mapping[str, list[str]]) -> dict[str, float]:
    """Median reply length per expert, for ``RedFlags.typical_chars``."""
    out: dict[str, float] = {}
    for expert, items in texts.items():
        lengths = sorted(len(t) for t in items)
        if lengths:
            mid = len(lengths) // 2
            out[expert] = float(
                lengths[mid] if len(lengths) % 2 else (lengths[mid - 1] + lengths[mid]) / 2
            )
    return out


@functools.lru_cache(maxsize=256)
def _validator(schema_json: str) -> tuple[Any, str | None]:
    """A checked validator for one schema (cached: every candidate of every step asks), or
    None and why the schema itself is invalid."""
    import jsonschema

    schema = json.loads(schema_json)
    cls = jsonschema.validators.validator_for(schema)
    try:
        cls.check_schema(schema)
    except jsonschema.SchemaError as exc:
        return None, exc.message
    return cls(schema), None
