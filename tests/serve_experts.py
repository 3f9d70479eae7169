"""Experts that answer at once, for the serve / LangChain / LiteLLM / subgraph tests.

Not a test module: configs name these as ``callable: serve_experts:<function>`` (pytest puts
``tests/`` on ``sys.path``; subprocesses get it through ``PYTHONPATH``). Each reports token
counts so usage sums can be checked.
"""

from __future__ import annotations

import json
from typing import Any

from expertgraph.core.types import Message


def _last_user(messages: list[Message]) -> str:
    for message in reversed(messages):
        if message.role == "user":
            return message.content
    return ""


def _count(messages: list[Message]) -> int:
    return sum(len(m.content.split()) for m in messages) + len(messages)


async def echo(messages: list[Message], **params: Any) -> dict[str, Any]:
    """``echo: <last user text>``; ``max_tokens`` cuts the reply to that many words."""
    text = "echo: " + _last_user(messages)
    words = text.split(" ")
    limit = params.get("max_tokens")
    finish = "stop"
    if isinstance(limit, int) and len(words) > limit:
        words, finish = words[:limit], "length"
    return {
        "text": " ".join(words),
        "input_tokens": _count(messages),
        "output_tokens": len(words),
        "finish_reason": finish,
    }


async def shout(messages: list[Message]) -> dict[str, Any]:
    """The last user text in capitals."""
    text = _last_user(messages).upper() or "(SILENCE)"
    return {"text": text, "input_tokens": _count(messages), "output_tokens": len(text.split())}


def params_seen(messages: list[Message], **params: Any) -> str:
    """Answers with the generation params it was called with, as JSON (sorted keys)."""
    return json.dumps({k: params[k] for k in sorted(params)}, sort_keys=True)


def broken(text: str) -> str:
    """Always fails, like an expert whose backend is down."""
    raise RuntimeError("backend unavailable")


def _instance(schema: dict[str, Any], defs: dict[str, Any], topic: str) -> Any:
    """A value that validates against a (simple) JSON schema: objects, strings, numbers, lists."""
    if "$ref" in schema:
        return _instance(defs[schema["$ref"].rsplit("/", 1)[-1]], defs, topic)
    for key in ("anyOf", "oneOf", "allOf"):
        if key in schema:
            options = [s for s in schema[key] if s.get("type") != "null"] or schema[key]
            return _instance(options[0], defs, topic)
    kind = schema.get("type", "object")
    if kind == "object":
        props = schema.get("properties", {})
        return {name: _instance(sub, defs, f"{topic} {name}") for name, sub in props.items()}
    if kind == "array":
        return [_instance(schema.get("items", {}), defs, topic)]
    if kind == "integer":
        return 42
    if kind == "number":
        return 4.2
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    return topic.strip()


def json_writer(messages: list[Message]) -> dict[str, Any]:
    """Writes the JSON the system message asks for: an instance of the schema it quotes.

    Always a JSON object (so it answers any request, JSON asked or not)."""
    schema: Any = None
    asked = False
    for message in messages:
        if message.role == "system" and "JSON" in message.content:
            asked = True
            head, sep, tail = message.content.partition("JSON schema:\n")
            if sep:
                schema = json.loads(tail)
    topic = _last_user(messages)
    value: Any = None
    if isinstance(schema, dict):
        try:
            value = _instance(schema, schema.get("$defs", {}), topic[:40])
        except (KeyError, TypeError, AttributeError, IndexError, RecursionError):
            value = None  # a schema this little writer does not understand
        if not isinstance(value, dict):
            value = {"value": value}
    elif asked:
        value = {"setup": topic, "punchline": "because it could"}
    else:
        value = {"text": topic}
    text = json.dumps(value)
    return {"text": text, "input_tokens": _count(messages), "output_tokens": len(text.split())}


async def slow(messages: list[Message]) -> dict[str, Any]:
    """Answers after 0.4 s without blocking the event loop (concurrency checks)."""
    import asyncio

    await asyncio.sleep(0.4)
    return {"text": "slow: " + _last_user(messages), "input_tokens": 1, "output_tokens": 2}


def write_config(
    directory: Any,
    name: str,
    experts: dict[str, str],
    *,
    policy: str = "all",
    trace_dir: Any = None,
    extra: str = "",
) -> Any:
    """Write ``<directory>/<name>.yaml``: callable experts (name -> function here), a policy.

    ``policy`` is ``all`` or ``fixed:<expert>``. Returns the path.
    """
    from pathlib import Path

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    # Runtime output (checkpoints, caches) stays in the test's folder, not the repo's home.
    lines = [f"name: {name}", f"home: {directory / '.expertgraph'}", "experts:"]
    for expert, fn in experts.items():
        lines += [f"  - name: {expert}", "    kind: callable", f"    callable: serve_experts:{fn}"]
    if policy.startswith("fixed:"):
        lines += ["policy:", "  name: fixed", f"  experts: [{policy.split(':', 1)[1]}]"]
    else:
        lines += ["policy:", f"  name: {policy}"]
    lines += ["trace:", f"  dir: {trace_dir or directory / 'traces'}"]
    path = directory / f"{name}.yaml"
    path.write_text("\n".join(lines) + "\n" + extra, encoding="utf-8")
    return path


def reply(messages: list[Message]) -> dict[str, Any]:
    """JSON when a system message asks for it (like :func:`json_writer`), else ``echo: <text>``."""
    if any(m.role == "system" and "JSON" in m.content for m in messages):
        return json_writer(messages)
    text = "echo: " + (_last_user(messages) or "(nothing)")
    return {"text": text, "input_tokens": _count(messages), "output_tokens": len(text.split())}
