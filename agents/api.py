"""An expert behind any LiteLLM model string: hosted APIs or a local OpenAI-compatible server.

Retries belong to this expert alone (:mod:`._retry`; LiteLLM's and the OpenAI SDK's are
turned off). Every attempt has a finite timeout, and retries stop before the call's overall
timeout would cut them off.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from expertgraph.agents._api_errors import Failure, classify_error, safe_message
from expertgraph.agents._litellm import import_litellm, priced, without_unread_logging
from expertgraph.agents._retry import AttemptFailed, RetryLoop, RetrySettings
from expertgraph.agents._tool_offer import new_call_id, openai_message, take_tool_offer
from expertgraph.agents.base import (
    INVALID_PARAMS,
    Expert,
    MessageLike,
    RawOutput,
    call_timeout_s,
)
from expertgraph.core.errors import ExpertCallError
from expertgraph.core.tools import ToolCall
from expertgraph.core.types import DEFAULT_MAX_REPLY_CHARS, ExpertCard, Generation, Message
from expertgraph.traces.redact import register_secret

__all__ = ["APIExpert"]

FIRST_TOKEN_TIMEOUT = "first_token_timeout"
"""Failure type: a streamed reply sent no token within ``first_token_timeout_s``."""
IDLE_TIMEOUT = "idle_timeout"
"""Failure type: a streamed reply stalled longer than ``idle_timeout_s`` between chunks."""

# Parameters that carry credentials: used by a call, never recorded (see Expert.secret_params),
# and never stored on the expert.
_SECRET_PARAMS = frozenset(
    {
        "api_key",
        "azure_ad_token",
        "aws_access_key_id",
        "aws_secret_access_key",
        "aws_session_token",
        "vertex_credentials",
    }
)
# This expert owns retries, timeouts and the transport; params may not override these.
_RESERVED_PARAMS = frozenset(
    {"model", "messages", "num_retries", "max_retries", "api_base", "timeout"}
)


class APIExpert(Expert):
    """An expert answered by ``litellm.acompletion``.

    ``model`` is any LiteLLM model string (``"openai/gpt-4o-mini"``, ``"anthropic/..."``, or
    ``"openai/<name>"`` with ``api_base`` for any OpenAI-compatible server). The API key is
    read from the environment variable named ``api_key_env`` at each call and never stored;
    when ``api_key_env`` is None LiteLLM's own environment lookup applies. Credentials passed
    per call (``api_key`` ...) are used but never recorded.

    Cost comes from LiteLLM's bundled price map when it knows the model (``pricing="auto"``),
    else from the card's ``cost_per_1k_*``; ``pricing="card"`` always uses the card.
    ``params`` are default request parameters (``max_tokens``, ``temperature``, ``top_p``,
    ``stop``, ``seed`` or any other OpenAI parameter); per-call params override them.
    ``attempt_timeout_s`` (per call: ``attempt_timeout``) bounds each attempt; the whole call,
    retries included, is bounded by the card's ``timeout_s`` or the per-call ``timeout``.

    Tools (``tools``, ``tool_choice``, ``parallel_tool_calls``) go to the API in OpenAI's
    format and the reply's ``message.tool_calls`` come back as ``Generation.tool_calls``
    (arguments that are not a JSON object give ``invalid``). ``stream=True`` asks the API
    for a streamed reply and rebuilds it from the chunks (text, tool-call deltas by index,
    usage): for servers that answer only streamed, or stream faster; the Generation is the
    same either way. Callers cannot set ``stream`` per call. A streamed attempt fails as
    ``first_token_timeout`` when no text or tool-call token arrives within
    ``first_token_timeout_s`` of its start, and as ``idle_timeout`` when the stream then
    stalls for ``idle_timeout_s`` between chunks (both retryable, like any timeout).

    A reply longer than ``max_reply_chars`` (default 1 MB of text) is cut there and flagged
    (``Generation.truncated``, finish reason ``length``); a streamed one stops being read at
    the cap. The key (``api_key_env``'s value, or an ``api_key`` given per call) is registered
    as a secret (:func:`expertgraph.traces.redact.register_secret`) whenever it is read, so
    no trace, reply or error message shows it.
    """

    kind = "api"
    secret_params: ClassVar[frozenset[str]] = _SECRET_PARAMS

    def __init__(
        self,
        name: str,
        model: str,
        *,
        api_base: str | None = None,
        api_key_env: str | None = None,
        card: ExpertCard | None = None,
        params: Mapping[str, Any] | None = None,
        retry: RetrySettings | Mapping[str, Any] | None = None,
        attempt_timeout_s: float | None = None,
        pricing: Literal["auto", "card"] = "auto",
        stream: bool = False,
        max_reply_chars: int = DEFAULT_MAX_REPLY_CHARS,
        first_token_timeout_s: float | None = None,
        idle_timeout_s: float | None = None,
    ) -> None:
        super().__init__(name, card)
        if not model or not model.strip():
            raise ValueError(f"expert {name!r}: model must be a non-empty LiteLLM model string")
        if api_key_env is not None and not api_key_env.strip():
            raise ValueError(f"expert {name!r}: api_key_env must name an environment variable")
        if attempt_timeout_s is not None and not attempt_timeout_s > 0:
            raise ValueError(f"expert {name!r}: attempt_timeout_s must be > 0")
        if pricing not in ("auto", "card"):
            raise ValueError(f"expert {name!r}: pricing must be 'auto' or 'card', got {pricing!r}")
        if not max_reply_chars >= 1:
            raise ValueError(f"expert {name!r}: max_reply_chars must be >= 1")
        for field, value in (
            ("first_token_timeout_s", first_token_timeout_s),
            ("idle_timeout_s", idle_timeout_s),
        ):
            if value is not None and not value > 0:
                raise ValueError(f"expert {name!r}: {field} must be > 0")
            if value is not None and not stream:
                raise ValueError(f"expert {name!r}: {field} needs stream=True")
        defaults = dict(params or {})
        bad = _refused(defaults, _SECRET_PARAMS)
        if bad:
            raise ValueError(
                f"expert {name!r}: params may not set {', '.join(bad)}"
                " (use api_key_env for keys, api_base for the endpoint, retry for retries,"
                " card.timeout_s for the timeout)"
            )
        self.model = model
        self.api_base = api_base
        self.api_key_env = api_key_env
        self.params = defaults
        self.retry = (
            retry if isinstance(retry, RetrySettings) else RetrySettings.model_validate(retry or {})
        )
        self.attempt_timeout_s = attempt_timeout_s
        self.pricing = pricing
        self.stream = stream
        self.max_reply_chars = int(max_reply_chars)
        self.first_token_timeout_s = first_token_timeout_s
        self.idle_timeout_s = idle_timeout_s
        if api_key_env is not None and os.environ.get(api_key_env):
            # Known before the first call: a prompt quoting the key is redacted from run_start.
            register_secret(os.environ[api_key_env])

    def __repr__(self) -> str:
        # Names the key's environment variable, never its value.
        return (
            f"{type(self).__name__}(name={self.name!r}, model={self.model!r}, "
            f"api_base={self.api_base!r}, api_key_env={self.api_key_env!r})"
        )

    async def load(self) -> None:
        """Import LiteLLM ahead of the first call (it takes a few seconds)."""
        await asyncio.to_thread(import_litellm)

    def worst_case_cost(self, messages: Sequence[Message], params: Mapping[str, Any]) -> float:
        """The most one call may cost, priced as its reply will be (:func:`_litellm_cost`):
        the prompt counted by LiteLLM's ``token_counter`` (plus a margin, since providers
        count a little differently) and ``max_tokens`` of output, from LiteLLM's price map
        when it knows the model and ``pricing`` is ``auto``, else from the card."""
        litellm = import_litellm()
        call = {**self.params, **params}
        out = int(call.get("max_tokens") or 0)
        wire = [openai_message(m) for m in messages]
        try:
            offer = take_tool_offer(call)
            tools = [t.openai() for t in offer.tools] if offer is not None else None
            counted = int(litellm.token_counter(model=self.model, messages=wire, tools=tools))
        except Exception:  # noqa: BLE001 - no counter for it: about 2 characters a token
            counted = len(str(wire)) // 2 + len(str(call.get("tools") or "")) // 2
        prompt = math.ceil(counted * 1.1) + 8
        if self.pricing == "auto":
            cost = priced(litellm, self.model, prompt, out)
            if cost is not None:
                return cost
        return self.card.estimate_cost(prompt, out)  # not in the price map: the card prices it

    def supports_response_schema(self) -> bool:
        """Whether LiteLLM knows this model to take a JSON-schema ``response_format``."""
        try:
            return bool(import_litellm().supports_response_schema(model=self.model))
        except Exception:  # noqa: BLE001 - an unknown model: assume not
            return False

    async def generate(self, messages: Sequence[MessageLike] | str, **params: Any) -> Generation:
        """:meth:`Expert.generate`, the reply cut at ``max_reply_chars``."""
        return (await super().generate(messages, **params)).cut(self.max_reply_chars)

    async def _generate(self, messages: list[Message], params: dict[str, Any]) -> RawOutput:
        litellm = import_litellm()
        request, key = self._request(messages, params)
        watch = _Watchdogs(self.first_token_timeout_s, self.idle_timeout_s, self.max_reply_chars)
        attempt_timeout = params.get("attempt_timeout", self.attempt_timeout_s)
        # LiteLLM keys its cached HTTP clients by the timeout, so it gets a fixed one per
        # expert: a timeout that shrinks with the deadline would open a new connection pool
        # on every call. wait_for enforces the real bound of each attempt.
        client_timeout = float(attempt_timeout or self.card.timeout_s)
        loop = RetryLoop(self.retry, call_timeout_s() or self.card.timeout_s)
        try:
            async for attempt in loop:
                with attempt:
                    per_try = loop.time_left_s()
                    if attempt_timeout is not None:
                        per_try = min(per_try, float(attempt_timeout))
                    response = await _attempt(litellm, request, per_try, client_timeout, watch)
        except AttemptFailed as exc:
            f = exc.failure
            raise ExpertCallError(
                safe_message(
                    f"{f.type} after {loop.attempts} attempt(s){loop.gave_up}: {f.message}", key
                ),
                type=f.type,
                status_code=f.status_code,
                retryable=f.retryable,
                attempts=loop.attempts,
            ) from exc.__cause__
        return self._to_raw(litellm, response, loop.attempts)

    def _request(
        self, messages: list[Message], params: dict[str, Any]
    ) -> tuple[dict[str, Any], str | None]:
        """The keyword arguments of ``acompletion`` (timeout excluded) and the key used."""
        call = {**self.params, **params}
        call.pop("attempt_timeout", None)
        bad = _refused(call)
        if bad:
            raise ExpertCallError(
                f"expert {self.name!r}: params may not set {', '.join(bad)}",
                type=INVALID_PARAMS,
                attempts=0,
            )
        call.pop("stream", None)
        secrets = {k: call.pop(k) for k in list(call) if k in _SECRET_PARAMS}
        offer = take_tool_offer(call)
        if offer is not None:
            call["tools"] = [t.openai() for t in offer.tools]
            call["tool_choice"] = offer.openai_choice()
            if offer.parallel is not None:
                call["parallel_tool_calls"] = offer.parallel
        request: dict[str, Any] = {
            **call,
            "model": self.model,
            "messages": [openai_message(m) for m in messages],
            # One layer owns retries: ours. LiteLLM's num_retries and the OpenAI SDK's
            # max_retries would otherwise multiply the attempts and ignore our budget.
            "num_retries": 0,
            "max_retries": 0,
        }
        if self.api_base:
            request["api_base"] = self.api_base
        if self.stream:
            request["stream"] = True
            request["stream_options"] = {"include_usage": True}
        key: str | None = None
        if self.api_key_env is not None:
            key = os.environ.get(self.api_key_env)
            if not key:
                raise ExpertCallError(
                    f"expert {self.name!r}: environment variable {self.api_key_env} is not set",
                    type="missing_api_key",
                    attempts=0,
                )
            request["api_key"] = key
        request.update(secrets)  # a key given per call wins over the environment's
        if isinstance(secrets.get("api_key"), str):
            key = secrets["api_key"]
        for value in (key, *secrets.values()):
            if isinstance(value, str):
                register_secret(value)
        return request, key

    def _to_raw(self, litellm: Any, response: Any, attempts: int) -> RawOutput:
        choices = getattr(response, "choices", None) or []
        if not choices:
            raise ExpertCallError(
                f"expert {self.name!r}: the API answered without choices",
                type="bad_response",
                attempts=attempts,
            )
        choice = choices[0]
        message = getattr(choice, "message", None)
        usage = getattr(response, "usage", None)
        cost = None if self.pricing == "card" else _litellm_cost(litellm, response)
        text = getattr(message, "content", None) or ""
        return RawOutput(
            # One character over the cap is kept, so that generate() sees the reply was cut.
            text=text[: self.max_reply_chars + 1],
            tool_calls=_tool_calls(message),
            finish_reason=getattr(choice, "finish_reason", None),
            input_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
            output_tokens=int(getattr(usage, "completion_tokens", 0) or 0),
            cost=cost,  # None: the base class prices the tokens with the card
            attempts=attempts,
            model=getattr(response, "model", None) or self.model,
            extra={
                "response_id": getattr(response, "id", None),
                "price_source": "card" if cost is None else "litellm",
            },
        )


def _tool_calls(message: Any) -> list[ToolCall]:
    """The reply's ``message.tool_calls``; arguments are a JSON text on the wire."""
    out: list[ToolCall] = []
    for call in getattr(message, "tool_calls", None) or []:
        function = _field(call, "function")
        name = _field(function, "name")
        call_id = str(_field(call, "id") or new_call_id())
        if not isinstance(name, str) or not name:
            out.append(ToolCall(id=call_id, name="", invalid="the call names no tool"))
            continue
        arguments = _field(function, "arguments")
        if arguments is not None and not isinstance(arguments, (str, dict)):
            arguments = str(arguments)
        out.append(ToolCall.parse(call_id, name, arguments))
    return out


def _field(obj: Any, key: str) -> Any:
    # LiteLLM gives objects; some providers' passthroughs give plain dicts.
    return obj.get(key) if isinstance(obj, Mapping) else getattr(obj, key, None)


def _refused(params: Mapping[str, Any], also: frozenset[str] = frozenset()) -> list[str]:
    """The names in ``params`` this expert does not let callers set (streaming included)."""
    bad = set(params) & (_RESERVED_PARAMS | also)
    if params.get("stream"):
        bad.add("stream")
    return sorted(bad)


class _Stalled(Exception):
    """A streamed attempt's watchdog fired (``kind``: first-token or idle timeout)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class _Watchdogs:
    """How a streamed reply is read: the two stall limits and the reply cap."""

    first_token_s: float | None
    idle_s: float | None
    max_chars: int


async def _attempt(
    litellm: Any,
    request: dict[str, Any],
    timeout_s: float,
    client_timeout_s: float,
    watch: _Watchdogs,
) -> Any:
    """One call, bounded by ``timeout_s``; any failure comes out as :class:`AttemptFailed`."""
    try:
        async with asyncio.timeout(timeout_s):  # no extra task, unlike 3.11's wait_for
            return await _complete(litellm, request, client_timeout_s, watch)
    except asyncio.CancelledError:
        raise
    except _Stalled as exc:
        raise AttemptFailed(Failure(exc.kind, str(exc), None, True)) from exc
    except Exception as exc:  # noqa: BLE001 - every failure is classified
        raise AttemptFailed(classify_error(exc)) from exc


async def _complete(
    litellm: Any, request: dict[str, Any], client_timeout_s: float, watch: _Watchdogs
) -> Any:
    """One ``acompletion``; a streamed one is read (watched, up to the cap) and rebuilt as
    one response. LiteLLM's logging that nobody reads is skipped
    (:func:`~expertgraph.agents._litellm.without_unread_logging`)."""
    with without_unread_logging(litellm):
        return await _completion(litellm, request, client_timeout_s, watch)


async def _completion(
    litellm: Any, request: dict[str, Any], client_timeout_s: float, watch: _Watchdogs
) -> Any:
    if not request.get("stream"):
        return await litellm.acompletion(**request, timeout=client_timeout_s)
    started = time.monotonic()
    opening = litellm.acompletion(**request, timeout=client_timeout_s)
    response = await _within(opening, watch.first_token_s, FIRST_TOKEN_TIMEOUT, watch)
    chunks: list[Any] = []
    chars = 0
    tokens = False
    ended = False
    stream = response.__aiter__()
    try:
        while chars <= watch.max_chars:
            if tokens:
                limit, kind = watch.idle_s, IDLE_TIMEOUT
            else:
                left = None
                if watch.first_token_s is not None:
                    left = max(0.0, watch.first_token_s - (time.monotonic() - started))
                limit, kind = left, FIRST_TOKEN_TIMEOUT
            try:
                chunk = await _within(stream.__anext__(), limit, kind, watch)
            except StopAsyncIteration:
                ended = True
                break
            chunks.append(chunk)
            delta_chars, carries = _delta_size(chunk)
            chars += delta_chars
            tokens = tokens or carries
    finally:
        if not ended:  # cut at the cap, stalled or failed: stop the upstream sending
            await _close(response)
    if not chunks:
        raise ValueError("the API's stream ended without a chunk")
    return litellm.stream_chunk_builder(chunks, messages=request["messages"])


async def _within(awaitable: Any, limit_s: float | None, kind: str, watch: _Watchdogs) -> Any:
    """``awaitable``, failing as ``kind`` when it takes longer than ``limit_s``."""
    if limit_s is None:
        return await awaitable
    try:
        return await asyncio.wait_for(awaitable, limit_s)
    except TimeoutError as exc:
        if kind == FIRST_TOKEN_TIMEOUT:
            why = f"no token within first_token_timeout_s={watch.first_token_s:g}"
        else:
            why = f"the stream stalled between chunks for idle_timeout_s={watch.idle_s:g}"
        raise _Stalled(kind, why) from exc


def _delta_size(chunk: Any) -> tuple[int, bool]:
    """Characters of text and tool-call arguments a chunk adds, and whether it carries any
    token at all (a role-only or usage-only chunk does not)."""
    size = 0
    carries = False
    for choice in getattr(chunk, "choices", None) or []:
        delta = _field(choice, "delta")
        content = _field(delta, "content")
        if content:
            size += len(content)
            carries = True
        for call in _field(delta, "tool_calls") or []:
            carries = True
            function = _field(call, "function")
            size += len(_field(function, "arguments") or "") + len(_field(function, "name") or "")
    return size, carries


async def _close(response: Any) -> None:
    """Stop reading a stream early (its cap reached, or it stalled): drop the connection."""
    close = getattr(response, "aclose", None)
    if close is None:
        return
    try:
        await close()
    except Exception:  # noqa: BLE001, S110 - closing is best effort
        pass


def _litellm_cost(litellm: Any, response: Any) -> float | None:
    """Price from LiteLLM's local map; None when it does not know the model."""
    hidden = getattr(response, "_hidden_params", None) or {}
    if "response_cost" in hidden:
        cost = hidden["response_cost"]
    else:
        try:
            cost = litellm.completion_cost(completion_response=response)
        except Exception:  # noqa: BLE001 - unknown model: the card prices it
            cost = None
    if cost is None:
        return None
    try:
        value = float(cost)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) and value >= 0 else None
