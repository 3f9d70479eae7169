"""An expert backed by any Python function: tools, programs, tests."""

from __future__ import annotations

import asyncio
import importlib
import inspect
from collections.abc import Callable
from typing import Any

from expertgraph.agents.base import Expert, RawOutput, last_user_text
from expertgraph.core.errors import ExpertCallError
from expertgraph.core.types import ExpertCard, Generation, Message


class CallableExpert(Expert):
    """Wraps a sync or async function.

    The function receives ``messages`` (a list of :class:`Message`) when it has a parameter of
    that name, else the text of the last user message. It may also accept ``**params``. It
    returns a string, a dict with ``text`` (and optionally ``input_tokens``,
    ``output_tokens``, ``cost``, ``finish_reason``) or a :class:`Generation`. Sync functions
    run in a worker thread so they never block the event loop.
    """

    kind = "callable"

    def __init__(self, name: str, fn: Callable[..., Any], card: ExpertCard | None = None) -> None:
        super().__init__(name, card)
        if not callable(fn):
            raise TypeError(f"expert {name!r}: {fn!r} is not callable")
        self.fn = fn
        signature = inspect.signature(fn)
        self._wants_messages = "messages" in signature.parameters
        self._accepts_kwargs = any(
            p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values()
        )
        self._is_async = inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
            getattr(fn, "__call__", None)
        )

    @classmethod
    def from_import_path(
        cls, name: str, path: str, card: ExpertCard | None = None
    ) -> CallableExpert:
        """Build from ``"package.module:function"``."""
        module_name, _, attr = path.partition(":")
        if not module_name or not attr:
            raise ValueError(
                f"expert {name!r}: callable must look like 'module:function', got {path!r}"
            )
        module = importlib.import_module(module_name)
        try:
            fn = getattr(module, attr)
        except AttributeError as exc:
            raise ValueError(f"expert {name!r}: module {module_name!r} has no {attr!r}") from exc
        return cls(name, fn, card)

    async def _generate(self, messages: list[Message], params: dict[str, Any]) -> RawOutput:
        arg: Any = messages if self._wants_messages else last_user_text(messages)
        kwargs = params if self._accepts_kwargs else {}
        if self._is_async:
            result = await self.fn(arg, **kwargs)
        else:
            result = await asyncio.to_thread(self.fn, arg, **kwargs)
            if inspect.isawaitable(result):
                result = await result
        return _to_raw(result, self.name)


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
        )
    if isinstance(result, dict):
        if "text" not in result:
            raise TypeError(f"expert {name!r}: a dict result needs a 'text' key")
        return RawOutput(
            text=str(result["text"]),
            finish_reason=result.get("finish_reason", "stop"),
            input_tokens=int(result.get("input_tokens", 0)),
            output_tokens=int(result.get("output_tokens", 0)),
            cost=result.get("cost"),
        )
    if result is None:
        raise TypeError(f"expert {name!r}: the function returned None")
    return RawOutput(text=str(result))
