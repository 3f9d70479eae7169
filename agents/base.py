"""The one interface every expert has: a name, a card and ``async generate``."""

from __future__ import annotations

import asyncio
import contextvars
import time
import weakref
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from expertgraph.agents._tool_offer import message_from_openai, normalise_tool_params
from expertgraph.core.errors import ExpertCallError
from expertgraph.core.tools import ToolCall, ToolSpec
from expertgraph.core.types import ExpertCard, ExpertFailure, Generation, Message

MessageLike = Message | Mapping[str, Any]

# Failure types (``Generation.error.type``) that more than one kind of expert reports.
INVALID_PARAMS = "invalid_params"
"""A call parameter the expert cannot use (a bad value, a reserved name)."""
CONTEXT_WINDOW = "context_window"
"""The prompt does not fit the model's context."""
TIMEOUT = "timeout"
"""No answer within the call's (or an attempt's) timeout."""
TOOLS_UNSUPPORTED = "tools_unsupported"
"""The call offers tools, and this expert cannot take them (e.g. its chat template cannot)."""

# Context-local, not global: the timeout of the generate() call running in this task; the
# task that runs _generate inherits it.
_CALL_TIMEOUT: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "expertgraph_call_timeout", default=None
)


@dataclass
class RawOutput:
    """What a concrete expert returns to the base class; the base adds timing and errors."""

    text: str
    finish_reason: str | None = "stop"
    input_tokens: int = 0
    output_tokens: int = 0
    cost: float | None = None
    """None: the base class prices the tokens with the card."""
    attempts: int = 1
    model: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    tool_calls: list[ToolCall] = field(default_factory=list)
    """The calls the expert proposes, in its order (``text`` may then be empty)."""


def to_messages(messages: Sequence[MessageLike] | str) -> list[Message]:
    """Accept a prompt string, ``Message`` objects or OpenAI-style dicts (``tool_calls`` in
    OpenAI's wire shape included)."""
    if isinstance(messages, str):
        return [Message(role="user", content=messages)]
    out: list[Message] = []
    for item in messages:
        out.append(item if isinstance(item, Message) else message_from_openai(item))
    return out


def last_user_text(messages: Sequence[Message]) -> str:
    for message in reversed(messages):
        if message.role == "user":
            return message.content
    return messages[-1].content if messages else ""


def call_timeout_s() -> float | None:
    """The timeout of the :meth:`Expert.generate` call running in this context, else None."""
    return _CALL_TIMEOUT.get()


class Expert(ABC):
    """Base class of all experts.

    Subclasses implement :meth:`_generate`. The base class enforces the call's timeout (the
    ``timeout`` param, else the card's) and the card's concurrency limit, measures latency,
    prices tokens with the card when the subclass does not, and turns every exception into
    ``Generation.error``: :meth:`generate` never raises.
    """

    kind: str = "expert"
    secret_params: ClassVar[frozenset[str]] = frozenset()
    """Per-call params handed to :meth:`_generate` but never recorded (credentials)."""

    def __init__(self, name: str, card: ExpertCard | None = None) -> None:
        if not name or not name.strip():
            raise ValueError("an expert needs a non-empty name")
        self.name = name
        self.card = card or ExpertCard()
        # Semaphores bind to the loop that first uses them; runs may use several loops.
        self._semaphores: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, asyncio.Semaphore
        ] = weakref.WeakKeyDictionary()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"

    @abstractmethod
    async def _generate(self, messages: list[Message], params: dict[str, Any]) -> RawOutput:
        """Produce one answer; raise on failure (preferably :class:`ExpertCallError`).

        ``params`` are the call's, without ``sample`` and ``timeout``; the timeout, should
        the expert budget its own work, is :func:`call_timeout_s`.
        """

    async def load(self) -> None:
        """Load weights or open connections ahead of the first call (optional).

        :meth:`generate` awaits it before each call, outside the call's timeout, so it must
        be cheap once loaded. Failures raise and become ``Generation.error``.
        """

    async def aclose(self) -> None:
        """Release resources (optional)."""

    def _semaphore(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        sem = self._semaphores.get(loop)
        if sem is None:
            sem = asyncio.Semaphore(self.card.max_concurrency)
            self._semaphores[loop] = sem
        return sem

    async def generate(self, messages: Sequence[MessageLike] | str, **params: Any) -> Generation:
        """Answer ``messages``. Failures come back as ``Generation.error``, never raised."""
        sample = int(params.pop("sample", 0))
        timeout = params.pop("timeout", self.card.timeout_s)
        recorded = _jsonable(
            {k: _recordable(k, v) for k, v in params.items() if k not in self.secret_params}
        )
        timeout_s = self.card.timeout_s
        started = time.perf_counter()
        try:
            timeout_s = _seconds(timeout)
            msgs = to_messages(messages)
            params = normalise_tool_params(params)
            # Loading weights may take a minute once per process; it is not the call's time.
            await self.load()
            started = time.perf_counter()
            token = _CALL_TIMEOUT.set(timeout_s)
            try:
                async with self._semaphore():
                    raw = await asyncio.wait_for(self._generate(msgs, dict(params)), timeout_s)
            finally:
                _CALL_TIMEOUT.reset(token)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - every failure becomes data
            return Generation(
                expert=self.name,
                latency_s=time.perf_counter() - started,
                attempts=getattr(exc, "attempts", 1),
                error=_failure_from(exc, timeout_s),
                sample=sample,
                params=recorded,
            )
        cost = (
            raw.cost
            if raw.cost is not None
            else self.card.estimate_cost(raw.input_tokens, raw.output_tokens)
        )
        return Generation(
            expert=self.name,
            text=raw.text,
            finish_reason=raw.finish_reason,
            input_tokens=raw.input_tokens,
            output_tokens=raw.output_tokens,
            cost=cost,
            latency_s=time.perf_counter() - started,
            attempts=raw.attempts,
            model=raw.model,
            sample=sample,
            params=recorded,
            tool_calls=raw.tool_calls,
        )


def _seconds(value: Any) -> float:
    """The call's ``timeout`` param as seconds; an unusable value fails the call."""
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = float("nan")
    if not seconds > 0:  # NaN included
        raise ExpertCallError(
            f"timeout must be a positive number of seconds, got {value!r}",
            type=INVALID_PARAMS,
            attempts=0,
        )
    return seconds


def _failure_from(exc: BaseException, timeout_s: float) -> ExpertFailure:
    if isinstance(exc, ExpertCallError):
        return ExpertFailure(
            type=exc.type,
            message=str(exc),
            status_code=exc.status_code,
            retryable=exc.retryable,
        )
    if isinstance(exc, TimeoutError):
        return ExpertFailure(
            type=TIMEOUT, message=f"no answer within {timeout_s:g}s", retryable=True
        )
    return ExpertFailure(type=type(exc).__name__, message=str(exc) or repr(exc))


def _recordable(key: str, value: Any) -> Any:
    # Offered tools are recorded by name (their schemas are the task's, not the call's).
    if key == "tools" and isinstance(value, (list, tuple)):
        return [_tool_name(v) for v in value if isinstance(v, (ToolSpec, Mapping))]
    return value


def _tool_name(tool: ToolSpec | Mapping[str, Any]) -> str:
    if isinstance(tool, ToolSpec):
        return tool.name
    inner = tool.get("function")
    return str((inner if isinstance(inner, Mapping) else tool).get("name"))


def _jsonable(params: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in params.items():
        if isinstance(value, (str, int, float, bool)) or value is None:
            out[key] = value
        elif isinstance(value, (list, tuple)) and all(
            isinstance(v, (str, int, float)) for v in value
        ):
            out[key] = list(value)
    return out
