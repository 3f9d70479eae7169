"""The one interface every expert has: a name, a card and ``async generate``."""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time
import weakref
from abc import ABC, abstractmethod
from collections import deque
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


RATE_WINDOW_S = 60.0
"""The window of the cards' ``rpm``/``tpm`` limits, in seconds (a minute; tests shorten it)."""


class RateLimiter:
    """Requests and tokens per sliding window of one expert, shared by every run of the process.

    Thread-safe and loop-free (a ``threading.Lock`` and ``time.monotonic``), so runs on several
    event loops or threads share it. A call reserves its estimated tokens when it starts and
    settles its real count when it ends; a call whose estimate alone exceeds ``tpm`` still
    runs, alone in an empty window, rather than never.
    """

    def __init__(self, rpm: int | None, tpm: int | None, window_s: float) -> None:
        self.rpm = rpm
        self.tpm = tpm
        self.window_s = window_s
        self._lock = threading.Lock()
        self._calls: deque[list[float]] = deque()  # [started, tokens], oldest first

    def _wait_s(self, now: float, tokens: int) -> float:
        calls = self._calls
        while calls and calls[0][0] <= now - self.window_s:
            calls.popleft()
        wait = 0.0
        if self.rpm is not None and len(calls) >= self.rpm:
            wait = calls[len(calls) - self.rpm][0] + self.window_s - now
        if self.tpm is not None and calls:
            excess = sum(c[1] for c in calls) + tokens - self.tpm
            for started, used in calls:
                if excess <= 0:
                    break
                excess -= used
                wait = max(wait, started + self.window_s - now)
        return wait

    async def acquire(self, tokens: int) -> list[float]:
        """Wait until a call of ``tokens`` (estimated) fits the window; return its slot."""
        while True:
            with self._lock:
                now = time.monotonic()
                wait = self._wait_s(now, tokens)
                if wait <= 0:
                    slot = [now, float(tokens)]
                    self._calls.append(slot)
                    return slot
            await asyncio.sleep(max(wait, 0.001))

    def settle(self, slot: list[float], tokens: int) -> None:
        """The call of ``slot`` used ``tokens`` in all (0: keep the estimate)."""
        if tokens > 0:
            with self._lock:
                slot[1] = float(tokens)


# A cache of process-wide state, like expert health: one limiter per expert (kind, name,
# model) and limits, so every orchestrator of the process built from the same config shares it.
_LIMITERS: dict[tuple[str, str, str, int | None, int | None], RateLimiter] = {}
_LIMITERS_LOCK = threading.Lock()


def rate_limiter(expert: Expert) -> RateLimiter | None:
    """The process's limiter of ``expert``'s card ``rpm``/``tpm``; None when it has neither."""
    card = expert.card
    if card.rpm is None and card.tpm is None:
        return None
    key = (expert.kind, expert.name, str(getattr(expert, "model", "")), card.rpm, card.tpm)
    with _LIMITERS_LOCK:
        limiter = _LIMITERS.get(key)
        if limiter is None:
            limiter = _LIMITERS[key] = RateLimiter(card.rpm, card.tpm, RATE_WINDOW_S)
        return limiter


def estimate_tokens(messages: Sequence[Message]) -> int:
    """A call's input tokens before it runs, about 4 characters a token; like LiteLLM's
    ``tpm`` check, the output is counted once the call reports it."""
    return sum(len(m.content or "") for m in messages) // 4 + 1


def call_timeout_s() -> float | None:
    """The timeout of the :meth:`Expert.generate` call running in this context, else None."""
    return _CALL_TIMEOUT.get()


class Expert(ABC):
    """Base class of all experts.

    Subclasses implement :meth:`_generate`. The base class enforces the call's timeout (the
    ``timeout`` param, else the card's), the card's concurrency limit and its requests and
    tokens per minute (``rpm``/``tpm``, per process), measures latency (after those waits),
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

    def worst_case_cost(self, messages: Sequence[Message], params: Mapping[str, Any]) -> float:
        """The most one call with ``params`` may cost: its prompt (counted by the expert's
        tokenizer once one is loaded, else estimated) and ``params["max_tokens"]`` of output,
        priced as the call will be (here: by the card). The run's cost ceiling admits each
        call by it; an expert priced otherwise overrides it."""
        if not (self.card.cost_per_1k_input or self.card.cost_per_1k_output):
            return 0.0
        out = int(params.get("max_tokens") or 0)
        encode = getattr(getattr(self, "tokenizer", None), "encode", None)
        if callable(encode):
            # +8 a message: the chat template's role markers.
            prompt = sum(len(encode(m.content or "")) + 8 for m in messages)
        else:
            prompt = estimate_tokens(messages) + 4 * len(messages)
        prompt += sum(len(str(t)) for t in params.get("tools") or []) // 3
        return self.card.estimate_cost(prompt, out)

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
                    limiter = rate_limiter(self)
                    slot = None
                    if limiter is not None:
                        slot = await limiter.acquire(estimate_tokens(msgs))
                        started = time.perf_counter()  # waiting for the window is not the call
                    # asyncio.timeout, not wait_for: no extra task per call (3.11's wait_for
                    # wraps the call in one)
                    async with asyncio.timeout(timeout_s):
                        raw = await self._generate(msgs, dict(params))
                    if limiter is not None and slot is not None:
                        limiter.settle(slot, raw.input_tokens + raw.output_tokens)
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
