"""An expert backed by any Python function: tools, programs, tests."""

from __future__ import annotations

import asyncio
import importlib
import inspect
import json
import traceback
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from expertgraph.agents._tool_offer import TOOL_PARAMS, new_call_id
from expertgraph.agents.base import Expert, MessageLike, RawOutput, last_user_text
from expertgraph.core.errors import ExpertCallError
from expertgraph.core.tools import ToolCall
from expertgraph.core.types import DEFAULT_MAX_REPLY_CHARS, ExpertCard, Generation, Message


class CallableExpert(Expert):
    """Wraps a sync or async function.

    The function receives ``messages`` (a list of :class:`Message`) when it has a parameter of
    that name, else the text of the last user message. It may also accept ``**params``. It
    returns a string, a dict with ``text`` (and optionally ``input_tokens``,
    ``output_tokens``, ``cost``, ``finish_reason``) or a :class:`Generation`. Sync functions
    run in a worker thread so they never block the event loop.

    Tools: the function is passed ``tools`` (a list of :class:`ToolSpec`), ``tool_choice``
    and ``parallel_tool_calls`` only when its signature accepts them (by name or
    ``**params``). It may return calls as ``{"text": ..., "tool_calls": [{"id": optional,
    "name": ..., "arguments": dict or JSON text}, ...]}`` (``text`` is then optional; missing
    ids are generated); a call whose arguments are not a JSON object comes back with
    ``invalid`` set. A function that names a ``tools`` parameter can call tools: its card
    says so unless the card given sets ``tools``.

    A reply longer than ``max_reply_chars`` (default 1 MB of text) is cut there and flagged
    (``Generation.truncated``, finish reason ``length``).
    """

    kind = "callable"

    def __init__(
        self,
        name: str,
        fn: Callable[..., Any],
        card: ExpertCard | None = None,
        *,
        max_reply_chars: int = DEFAULT_MAX_REPLY_CHARS,
    ) -> None:
        super().__init__(name, card)
        if not callable(fn):
            raise TypeError(f"expert {name!r}: {fn!r} is not callable")
        if not max_reply_chars >= 1:
            raise ValueError(f"expert {name!r}: max_reply_chars must be >= 1")
        self.fn = fn
        self.max_reply_chars = int(max_reply_chars)
        signature = inspect.signature(fn)
        self._wants_messages = "messages" in signature.parameters
        self._accepts_kwargs = any(
            p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values()
        )
        self._tool_params = frozenset(k for k in TOOL_PARAMS if k in signature.parameters)
        if "tools" in self._tool_params and "tools" not in self.card.model_fields_set:
            self.card = self.card.model_copy(update={"tools": True})
        self._is_async = inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
            getattr(fn, "__call__", None)
        )

    @classmethod
    def from_import_path(
        cls,
        name: str,
        path: str,
        card: ExpertCard | None = None,
        *,
        max_reply_chars: int = DEFAULT_MAX_REPLY_CHARS,
    ) -> CallableExpert:
        """Build from ``"package.module:function"``.

        A module that cannot be imported (a syntax error, an exception at import) raises a
        one-line :class:`ValueError` naming the file and line.
        """
        module_name, _, attr = path.partition(":")
        if not module_name or not attr:
            raise ValueError(
                f"expert {name!r}: callable must look like 'module:function', got {path!r}"
            )
        module = _import(name, module_name)
        try:
            fn = getattr(module, attr)
        except AttributeError as exc:
            raise ValueError(f"expert {name!r}: module {module_name!r} has no {attr!r}") from exc
        return cls(name, fn, card, max_reply_chars=max_reply_chars)

    async def generate(self, messages: Sequence[MessageLike] | str, **params: Any) -> Generation:
        """:meth:`Expert.generate`, the reply cut at ``max_reply_chars``."""
        return (await super().generate(messages, **params)).cut(self.max_reply_chars)

    async def _generate(self, messages: list[Message], params: dict[str, Any]) -> RawOutput:
        arg: Any = messages if self._wants_messages else last_user_text(messages)
        if self._accepts_kwargs:
            kwargs = params
        else:
            kwargs = {k: v for k, v in params.items() if k in self._tool_params}
        if self._is_async:
            result = await self.fn(arg, **kwargs)
        else:
            result = await asyncio.to_thread(self.fn, arg, **kwargs)
            if inspect.isawaitable(result):
                result = await result
        return _to_raw(result, self.name)


def _import(name: str, module_name: str) -> Any:
    """Import the callable's module; a broken one gives one line naming file and line."""
    try:
        return importlib.import_module(module_name)
    except ImportError:
        raise  # "No module named ...": already one line
    except SyntaxError as exc:  # IndentationError included
        where = f"{exc.filename or module_name}:{exc.lineno or '?'}"
        raise ValueError(f"expert {name!r}: {where}: {type(exc).__name__}: {exc.msg}") from None
    except Exception as exc:  # noqa: BLE001 - whatever the module raised at import
        frames = [f for f in traceback.extract_tb(exc.__traceback__) if "<frozen" not in f.filename]
        last = frames[-1] if frames else None
        where = f"{last.filename}:{last.lineno}" if last is not None else module_name
        raise ValueError(
            f"expert {name!r}: {where}: importing {module_name!r} raised "
            f"{type(exc).__name__}: {exc}"
        ) from None


def _to_raw(result: Any, name: str) -> RawOutput:
    if isinstance(result, Generation):
        if result.error is not None:
            raise ExpertCallError(result.error.message, type=result.error.type)
        return RawOutput(
            text=result.text,
            finish_reason=result.finish_reason,
            input_tokens=result.input_tokens,
            output_tokens=result.output_tokens,
            cost=result.cost,
            tool_calls=list(result.tool_calls),
        )
    if isinstance(result, dict):
        calls = _calls(result.get("tool_calls"), name)
        if "text" not in result and not calls:
            raise TypeError(f"expert {name!r}: a dict result needs a 'text' or 'tool_calls' key")
        text = result.get("text")
        return RawOutput(
            text="" if text is None else str(text),
            finish_reason=result.get("finish_reason", "tool_calls" if calls else "stop"),
            input_tokens=int(result.get("input_tokens", 0)),
            output_tokens=int(result.get("output_tokens", 0)),
            cost=result.get("cost"),
            tool_calls=calls,
        )
    if result is None:
        raise TypeError(f"expert {name!r}: the function returned None")
    return RawOutput(text=str(result))


def _calls(raw: Any, name: str) -> list[ToolCall]:
    """The calls of a dict result; malformed arguments give ``invalid``, never an exception."""
    if raw is None:
        return []
    if not isinstance(raw, (list, tuple)):
        raise TypeError(f"expert {name!r}: 'tool_calls' must be a list, got {type(raw).__name__}")
    out: list[ToolCall] = []
    for item in raw:
        if isinstance(item, ToolCall):
            out.append(item)
            continue
        if not isinstance(item, Mapping):
            raise TypeError(f"expert {name!r}: a tool call must be a dict, got {item!r}")
        call_id = str(item.get("id") or new_call_id())
        body = item["function"] if isinstance(item.get("function"), Mapping) else item
        tool = body.get("name")  # OpenAI's {"function": {...}} shape is read too
        arguments = body.get("arguments")
        if not isinstance(tool, str) or not tool:
            out.append(ToolCall(id=call_id, name="", invalid="the call names no tool"))
        elif arguments is None or isinstance(arguments, (str, dict)):
            out.append(ToolCall.parse(call_id, tool, arguments))
        else:  # a list, a number...: JSON, but not an object
            out.append(ToolCall.parse(call_id, tool, json.dumps(arguments, default=str)))
    return out
