"""Tools the orchestrator runs itself: a :class:`~expertgraph.core.tools.ToolSpec` plus a callable.

A :class:`Tool` is what :class:`~expertgraph.orchestrator.Orchestrator` executes when a step's
vote chooses to call it. Build one from a function (``@tool`` or :meth:`Tool.from_function`:
the JSON schema of its arguments comes from the signature and type hints, via pydantic, and
the description from the docstring's first paragraph) or from an explicit spec
(``Tool(spec=ToolSpec(...), fn=...)``). :func:`execute` is the one way a call is run: it
never raises; an unknown tool, bad arguments, an exception or a timeout become the result's
text, which is what the next step's experts read.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import time
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, overload

from pydantic import BaseModel, ConfigDict, ValidationError, create_model
from pydantic_core import to_jsonable_python

from expertgraph.core.errors import ConfigError
from expertgraph.core.tools import ToolCall, ToolSpec
from expertgraph.core.types import Task

DEFAULT_TOOL_TIMEOUT_S = 30.0
"""How long a tool call may run when neither the tool nor the orchestrator sets a timeout."""


@dataclass(frozen=True)
class Tool:
    """A tool the orchestrator can execute: the spec experts are offered and its callable.

    ``fn`` is sync or async and is called with the call's arguments as keyword arguments
    (validated and coerced first when the tool was built from a signature). A sync ``fn`` runs
    in a worker thread; a timeout stops waiting for it but cannot stop the thread.
    ``timeout_s`` overrides the orchestrator's tool timeout for this tool.
    """

    spec: ToolSpec
    fn: Callable[..., Any]
    timeout_s: float | None = None
    arguments: type[BaseModel] | None = field(default=None, repr=False)
    """The pydantic model of the arguments when built from a signature: calls are validated."""

    def __post_init__(self) -> None:
        if not callable(self.fn):
            raise ConfigError(f"tool {self.spec.name!r}: {self.fn!r} is not callable", field="fn")
        if self.timeout_s is not None and not self.timeout_s > 0:
            raise ConfigError(f"tool {self.spec.name!r}: timeout_s must be > 0", field="timeout_s")

    @property
    def name(self) -> str:
        return self.spec.name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call the function directly, as if it were not a tool."""
        return self.fn(*args, **kwargs)

    @classmethod
    def from_function(
        cls,
        fn: Callable[..., Any],
        name: str | None = None,
        description: str | None = None,
        *,
        timeout_s: float | None = None,
    ) -> Tool:
        """A tool from a function: its name, docstring and typed parameters make the spec."""
        if not callable(fn):
            raise ConfigError(f"{fn!r} is not callable", field="fn")
        tool_name = name or getattr(fn, "__name__", "") or type(fn).__name__
        model = _arguments_model(fn, tool_name)
        schema = model.model_json_schema()
        schema.pop("title", None)
        for prop in schema.get("properties", {}).values():
            if isinstance(prop, dict):
                prop.pop("title", None)
        try:
            spec = ToolSpec(
                name=tool_name,
                description=_first_paragraph(fn) if description is None else description,
                parameters=schema,
            )
        except ValidationError as exc:
            raise ConfigError(f"invalid tool name {tool_name!r}: {exc.errors()[0]['msg']}") from exc
        return cls(spec=spec, fn=fn, timeout_s=timeout_s, arguments=model)

    async def ainvoke(self, arguments: Mapping[str, Any]) -> Any:
        """Run the tool on a call's arguments (validated when it has an arguments model)."""
        kwargs = dict(arguments)
        if self.arguments is not None:
            validated = self.arguments.model_validate(kwargs)
            kwargs = {k: getattr(validated, k) for k in type(validated).model_fields}
            kwargs.update(validated.model_extra or {})
        if inspect.iscoroutinefunction(self.fn) or inspect.iscoroutinefunction(
            getattr(self.fn, "__call__", None)
        ):
            return await self.fn(**kwargs)
        result = await asyncio.to_thread(self.fn, **kwargs)
        if inspect.isawaitable(result):
            result = await result
        return result


@overload
def tool(fn: Callable[..., Any], /) -> Tool: ...


@overload
def tool(
    *, name: str | None = None, description: str | None = None, timeout_s: float | None = None
) -> Callable[[Callable[..., Any]], Tool]: ...


def tool(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    timeout_s: float | None = None,
) -> Tool | Callable[[Callable[..., Any]], Tool]:
    """Decorator: ``@tool`` or ``@tool(name=..., description=..., timeout_s=...)``."""
    if fn is not None:
        return Tool.from_function(fn, name, description, timeout_s=timeout_s)

    def wrap(f: Callable[..., Any]) -> Tool:
        return Tool.from_function(f, name, description, timeout_s=timeout_s)

    return wrap


def as_tools(items: Sequence[Tool | Callable[..., Any]]) -> dict[str, Tool]:
    """Tools by name; plain functions become tools; two tools of one name are an error."""
    out: dict[str, Tool] = {}
    for item in items:
        t = item if isinstance(item, Tool) else Tool.from_function(item)
        if t.name in out:
            raise ConfigError(f"two tools are named {t.name!r}", field="tools")
        out[t.name] = t
    return out


def offer_tools(task: Task, tools: Mapping[str, Tool]) -> tuple[Task, dict[str, Tool]]:
    """The task as the run offers it, and the tools the run executes.

    A task that carries its own ``tools`` specs offers those (a call of one without a
    callable here is the caller's to execute); otherwise it offers the specs of ``tools``.
    Only offered tools are executed: a callable whose name the task does not offer is not.
    """
    if task.tools is None:
        if not tools:
            return task, {}
        task = task.model_copy(update={"tools": [t.spec for t in tools.values()]})
    offered = {s.name for s in task.tools or []}
    return task, {n: t for n, t in tools.items() if n in offered}


# ---- execution -------------------------------------------------------------------------------


@dataclass
class ToolResult:
    """What running one call gave: the text the experts read next, and the error, if any."""

    call: ToolCall
    content: str
    error: str | None = None
    latency_s: float = 0.0


async def execute(
    call: ToolCall, tool: Tool | None, timeout_s: float, known: Sequence[str] = ()
) -> ToolResult:
    """Run one call; never raises (but lets cancellation through).

    An unknown tool, arguments that are not a JSON object or fail the tool's schema, an
    exception and a timeout each become an ``error: ...`` result text, so the next step's
    experts see what went wrong and may try again. ``known`` names the tools there are, for
    the text of a call to one that is not.
    """
    started = time.perf_counter()

    def failed(error: str) -> ToolResult:
        return ToolResult(
            call=call,
            content=f"error: {error}",
            error=error,
            latency_s=time.perf_counter() - started,
        )

    if tool is None:
        names = f"; the tools are: {', '.join(known)}" if known else ""
        return failed(f"unknown tool {call.name!r}{names}")
    if call.invalid is not None:
        return failed(f"invalid arguments for {call.name}: {call.invalid}")
    try:
        value = await asyncio.wait_for(tool.ainvoke(call.arguments), timeout_s)
    except asyncio.CancelledError:
        raise
    except TimeoutError:
        return failed(f"tool {call.name!r} gave no result within {timeout_s:g}s")
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'arguments'}: {e['msg']}" for e in exc.errors()
        )
        return failed(f"invalid arguments for {call.name}: {problems}")
    except Exception as exc:  # noqa: BLE001 - a failing tool is a result, never a crash
        return failed(f"{type(exc).__name__}: {exc}")
    return ToolResult(call=call, content=_text(value), latency_s=time.perf_counter() - started)


def _text(value: Any) -> str:
    """A tool's return value as the text a tool message carries: str as is, else JSON."""
    if isinstance(value, str):
        return value
    try:
        return json.dumps(to_jsonable_python(value), ensure_ascii=False)
    except Exception:  # noqa: BLE001 - anything at all has a str()
        return str(value)


# ---- schema from a signature -------------------------------------------------------------------


def _arguments_model(fn: Callable[..., Any], name: str) -> type[BaseModel]:
    signature = inspect.signature(fn)
    try:
        hints = typing.get_type_hints(fn, include_extras=True)
    except Exception:  # noqa: BLE001 - unresolvable hints: fall back to the raw annotations
        hints = {}
    fields: dict[str, Any] = {}
    extra = "forbid"
    for param in signature.parameters.values():
        if param.kind is inspect.Parameter.VAR_KEYWORD:
            extra = "allow"
            continue
        if param.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.POSITIONAL_ONLY):
            raise ConfigError(
                f"tool {name!r}: parameter {param.name!r} cannot be passed by keyword",
                field=param.name,
            )
        annotation = hints.get(param.name, param.annotation)
        if annotation is inspect.Parameter.empty:
            annotation = Any
        default = ... if param.default is inspect.Parameter.empty else param.default
        fields[param.name] = (annotation, default)
    try:
        return create_model(  # type: ignore[call-overload,no-any-return]
            f"{name}_arguments", __config__=ConfigDict(extra=extra), **fields
        )
    except Exception as exc:  # noqa: BLE001 - pydantic's reason, as a config error
        raise ConfigError(f"tool {name!r}: cannot build its argument schema: {exc}") from exc


def _first_paragraph(fn: Callable[..., Any]) -> str:
    doc = inspect.getdoc(fn) or ""
    return " ".join(doc.strip().split("\n\n", 1)[0].split())
