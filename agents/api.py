"""An expert behind any LiteLLM model string: hosted APIs or a local OpenAI-compatible server.

Retries belong to this module alone (tenacity; LiteLLM's and the OpenAI SDK's are turned
off): exponential backoff with jitter, ``Retry-After`` honoured, and only failures that a
retry can fix (429, 5xx, timeouts, connection errors) are retried. Every attempt has a
finite timeout, and retries stop before the call's overall timeout would cut them off.
"""

from __future__ import annotations

import asyncio
import contextvars
import datetime
import email.utils
import math
import os
import random
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from expertgraph.agents._litellm import import_litellm
from expertgraph.agents.base import Expert, ExpertCallError, MessageLike, RawOutput
from expertgraph.core.types import ExpertCard, Generation, Message
from pydantic import BaseModel, ConfigDict, Field, model_validator
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception

# Per-call parameters that carry credentials. They are taken out of ``params`` before the
# base class records params on the Generation (and so in traces), and reach LiteLLM through
# the call's context instead.
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
# This module owns retries, timeouts and the transport; callers may not override these.
_RESERVED_PARAMS = frozenset(
    {"model", "messages", "num_retries", "max_retries", "api_base", "timeout"}
)
# Our own per-attempt timeout fires this long before the overall deadline, so that the
# failure is classified here (with its attempt count) rather than cut off by the base class.
_DEADLINE_MARGIN_S = 0.05
# Do not start an attempt with less time than this left before the deadline.
_MIN_ATTEMPT_S = 0.05
_MAX_MESSAGE_CHARS = 1000


class RetrySettings(BaseModel):
    """How failed attempts are retried (only 429, 5xx, timeouts and connection errors)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_attempts: int = Field(4, ge=1)
    """Attempts in all, the first included."""
    initial_wait_s: float = Field(0.5, ge=0)
    """Wait before the second attempt; doubles each time, plus jitter."""
    max_wait_s: float = Field(30.0, ge=0)
    """Cap of any single wait, ``Retry-After`` included."""
    jitter_s: float | None = Field(None, ge=0)
    """Random extra wait, uniform in [0, jitter_s]; None means ``initial_wait_s``."""

    @model_validator(mode="after")
    def _ordered(self) -> RetrySettings:
        if self.max_wait_s < self.initial_wait_s:
            raise ValueError("max_wait_s must be >= initial_wait_s")
        return self

    def backoff_s(self, attempts_done: int) -> float:
        """Wait after ``attempts_done`` failed attempts when the server gave no Retry-After."""
        jitter = self.initial_wait_s if self.jitter_s is None else self.jitter_s
        base = self.initial_wait_s * 2 ** max(0, attempts_done - 1)
        return min(self.max_wait_s, base + random.uniform(0.0, jitter))


@dataclass(frozen=True)
class _CallContext:
    """What :meth:`APIExpert.generate` hands to ``_generate`` outside the traced params."""

    timeout_s: float
    secrets: Mapping[str, Any]


# Context-local (not global) state: one value per generate() call, inherited by the task
# the base class creates for _generate.
_CALL: contextvars.ContextVar[_CallContext | None] = contextvars.ContextVar(
    "expertgraph_api_call", default=None
)


@dataclass(frozen=True)
class _Failure:
    type: str
    message: str
    status_code: int | None
    retryable: bool
    retry_after_s: float | None = None


class _AttemptFailed(Exception):
    """One classified failed attempt (internal: tenacity decides on it)."""

    def __init__(self, failure: _Failure) -> None:
        super().__init__(failure.message)
        self.failure = failure


class APIExpert(Expert):
    """An expert answered by ``litellm.acompletion``.

    ``model`` is any LiteLLM model string (``"openai/gpt-4o-mini"``, ``"anthropic/..."``, or
    ``"openai/<name>"`` with ``api_base`` for any OpenAI-compatible server). The API key is
    read from the environment variable named ``api_key_env`` at each call and never stored;
    when ``api_key_env`` is None LiteLLM's own environment lookup applies.

    Cost comes from LiteLLM's bundled price map when it knows the model (``pricing="auto"``),
    else from the card's ``cost_per_1k_*``; ``pricing="card"`` always uses the card.
    ``params`` are default request parameters (``max_tokens``, ``temperature``, ``top_p``,
    ``stop``, ``seed`` or any other OpenAI parameter); per-call params override them.
    ``attempt_timeout_s`` bounds each attempt; the whole call, retries included, is bounded by
    the card's ``timeout_s`` or the per-call ``timeout``.
    """

    kind = "api"

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
        defaults = dict(params or {})
        bad = sorted(set(defaults) & (_SECRET_PARAMS | _RESERVED_PARAMS | {"stream"}))
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
        self.retry = retry if isinstance(retry, RetrySettings) else RetrySettings.model_validate(retry or {})
        self.attempt_timeout_s = attempt_timeout_s
        self.pricing = pricing

    def __repr__(self) -> str:
        # Names the key's environment variable, never its value.
        return (
            f"{type(self).__name__}(name={self.name!r}, model={self.model!r}, "
            f"api_base={self.api_base!r}, api_key_env={self.api_key_env!r})"
        )

    async def load(self) -> None:
        """Import LiteLLM ahead of the first call (it takes a few seconds)."""
        await asyncio.to_thread(import_litellm)

    async def generate(
        self, messages: Sequence[MessageLike] | str, **params: Any
    ) -> Generation:
        """Answer ``messages``; see :meth:`Expert.generate`. Never raises.

        Credentials passed per call (``api_key`` ...) are used but never recorded.
        """
        secrets = {key: params.pop(key) for key in list(params) if key in _SECRET_PARAMS}
        try:
            timeout_s = float(params.get("timeout", self.card.timeout_s))
        except (TypeError, ValueError):
            timeout_s = self.card.timeout_s  # the base class reports the bad value
        token = _CALL.set(_CallContext(timeout_s=timeout_s, secrets=secrets))
        try:
            return await super().generate(messages, **params)
        finally:
            _CALL.reset(token)

    async def _generate(self, messages: list[Message], params: dict[str, Any]) -> RawOutput:
        ctx = _CALL.get() or _CallContext(timeout_s=self.card.timeout_s, secrets={})
        deadline = time.monotonic() + ctx.timeout_s
        litellm = import_litellm()
        request, key = self._request(messages, params, ctx.secrets)
        attempt_timeout = params.get("attempt_timeout", self.attempt_timeout_s)
        settings = self.retry

        stopped_early: list[str] = []

        def stop(state: RetryCallState) -> bool:
            if state.attempt_number >= settings.max_attempts:
                return True
            # Give up now rather than sleep into the deadline: the caller gets the real
            # failure and attempt count instead of a bare timeout.
            left = deadline - time.monotonic() - _DEADLINE_MARGIN_S
            if state.upcoming_sleep + _MIN_ATTEMPT_S > left:
                stopped_early.append(
                    f" (gave up: a wait of {state.upcoming_sleep:.2f}s would pass"
                    f" the call's {ctx.timeout_s:g}s timeout)"
                )
                return True
            return False

        def wait(state: RetryCallState) -> float:
            exc = state.outcome.exception() if state.outcome else None
            failure = exc.failure if isinstance(exc, _AttemptFailed) else None
            if failure is not None and failure.retry_after_s is not None:
                return min(settings.max_wait_s, failure.retry_after_s)
            return settings.backoff_s(state.attempt_number)

        retrying = AsyncRetrying(
            stop=stop,
            wait=wait,
            retry=retry_if_exception(
                lambda e: isinstance(e, _AttemptFailed) and e.failure.retryable
            ),
            reraise=True,
        )
        attempts = 0
        try:
            async for attempt in retrying:
                with attempt:
                    attempts = attempt.retry_state.attempt_number
                    left = deadline - time.monotonic() - _DEADLINE_MARGIN_S
                    per_try = max(_MIN_ATTEMPT_S, left)
                    if attempt_timeout is not None:
                        per_try = min(per_try, float(attempt_timeout))
                    client_timeout = float(attempt_timeout or self.card.timeout_s)
                    response = await _attempt(litellm, request, per_try, client_timeout)
        except _AttemptFailed as exc:
            f = exc.failure
            raise ExpertCallError(
                # Redact before truncating, so no prefix of the key survives a cut.
                _truncate(
                    _redact(
                        f"{f.type} after {attempts} attempt(s){''.join(stopped_early)}: {f.message}",
                        key,
                    )
                ),
                type=f.type,
                status_code=f.status_code,
                retryable=f.retryable,
                attempts=attempts,
            ) from exc.__cause__
        return self._to_raw(litellm, response, attempts)

    def _request(
        self, messages: list[Message], params: dict[str, Any], secrets: Mapping[str, Any]
    ) -> tuple[dict[str, Any], str | None]:
        """The keyword arguments of ``acompletion`` (timeout excluded) and the key used."""
        call = {**self.params, **params}
        call.pop("attempt_timeout", None)
        bad = sorted(set(call) & _RESERVED_PARAMS)
        if bad or call.get("stream"):
            raise ExpertCallError(
                f"expert {self.name!r}: params may not set {', '.join(bad) or 'stream'}",
                type="bad_params",
                attempts=0,
            )
        call.pop("stream", None)
        request: dict[str, Any] = {
            **call,
            "model": self.model,
            "messages": [m.model_dump(exclude_none=True) for m in messages],
            # One layer owns retries: ours. LiteLLM's num_retries and the OpenAI SDK's
            # max_retries would otherwise multiply the attempts and ignore our budget.
            "num_retries": 0,
            "max_retries": 0,
        }
        if self.api_base:
            request["api_base"] = self.api_base
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
        request.update(secrets)
        if isinstance(secrets.get("api_key"), str):
            key = secrets["api_key"]
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
        text = getattr(message, "content", None) or ""
        usage = getattr(response, "usage", None)
        input_tokens = int(getattr(usage, "prompt_tokens", 0) or 0)
        output_tokens = int(getattr(usage, "completion_tokens", 0) or 0)
        cost = None if self.pricing == "card" else _litellm_cost(litellm, response)
        return RawOutput(
            text=text,
            finish_reason=getattr(choice, "finish_reason", None),
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cost=cost,
            attempts=attempts,
            model=getattr(response, "model", None) or self.model,
            extra={
                "response_id": getattr(response, "id", None),
                "price_source": "card" if cost is None else "litellm",
            },
        )


async def _attempt(
    litellm: Any, request: dict[str, Any], timeout_s: float, client_timeout_s: float
) -> Any:
    """One call; any failure comes out classified as :class:`_AttemptFailed`.

    LiteLLM keys its cached HTTP clients by the timeout, so it gets a fixed one per expert
    (``client_timeout_s``): a timeout that shrinks with the deadline would open a new
    connection pool on every call. ``wait_for`` enforces the real bound of this attempt.
    """
    try:
        return await asyncio.wait_for(
            litellm.acompletion(**request, timeout=client_timeout_s), timeout_s
        )
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # noqa: BLE001 - every failure is classified
        raise _AttemptFailed(classify_error(exc)) from exc


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


# -- error classification ----------------------------------------------------------------

_STATUS_TYPES = {
    400: "bad_request",
    401: "authentication",
    402: "payment_required",
    403: "permission_denied",
    404: "not_found",
    408: "timeout",
    409: "conflict",
    413: "request_too_large",
    422: "unprocessable",
    429: "rate_limit",
}


def classify_error(exc: BaseException) -> _Failure:
    """Name a failure and say whether a retry can fix it.

    Retryable: 429, 408, 5xx, timeouts and connection errors. Never: other 4xx (bad request,
    authentication, permission, not found), context-window and content-policy errors, and
    errors raised on this side before any answer (a missing key, a bad argument).
    """
    import httpx
    import openai

    litellm = import_litellm()
    message = str(exc) or type(exc).__name__
    chain = list(_causes(exc))
    # LiteLLM's own classes are a mapping of the underlying error, and its status codes are
    # sometimes made up (InternalServerError 500 for a refused connection or a missing
    # key); the foreign causes are the evidence of what really happened.
    evidence = [e for e in chain if not type(e).__module__.startswith("litellm")]
    answered = any(isinstance(e, (httpx.HTTPStatusError, openai.APIStatusError)) for e in evidence)
    headers = _headers(chain)
    retry_after = parse_retry_after(headers)

    if not answered:
        if isinstance(exc, (asyncio.TimeoutError, litellm.Timeout)) or any(
            isinstance(e, (openai.APITimeoutError, httpx.TimeoutException, asyncio.TimeoutError))
            for e in evidence
        ):
            return _Failure("timeout", message, None, True, retry_after)
        if isinstance(exc, litellm.APIConnectionError) or any(
            isinstance(e, _connection_errors()) for e in evidence
        ):
            return _Failure("connection", message, None, True, retry_after)
        if evidence:
            # Raised here, not by the server (e.g. the OpenAI SDK refusing to run without a
            # key): the same call would fail the same way.
            return _Failure("client_error", message, None, False)

    status = _status_code(exc, evidence)
    if isinstance(exc, litellm.ContextWindowExceededError):
        return _Failure("context_window", message, status or 400, False)
    if isinstance(exc, litellm.ContentPolicyViolationError):
        return _Failure("content_policy", message, status or 400, False)
    if status is not None:
        if status == 429 or status == 408 or status >= 500:
            kind = _STATUS_TYPES.get(status, "server_error")
            return _Failure(kind, message, status, True, retry_after)
        if 400 <= status < 500:
            return _Failure(_STATUS_TYPES.get(status, "request_error"), message, status, False)
    if isinstance(exc, litellm.RateLimitError):
        return _Failure("rate_limit", message, status, True, retry_after)
    if isinstance(exc, (litellm.InternalServerError, litellm.ServiceUnavailableError)):
        return _Failure("server_error", message, status, True, retry_after)
    return _Failure(type(exc).__name__, message, status, False)


def _connection_errors() -> tuple[type[BaseException], ...]:
    import httpx
    import openai

    kinds: tuple[type[BaseException], ...] = (
        openai.APIConnectionError,
        httpx.TransportError,
        ConnectionError,
    )
    try:  # LiteLLM's default async transport; usually wrapped in httpx errors already
        import aiohttp
    except ImportError:  # pragma: no cover - optional dependency of litellm
        return kinds
    return (*kinds, aiohttp.ClientConnectionError)


def _causes(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen and len(seen) < 16:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _status_code(exc: BaseException, evidence: list[BaseException]) -> int | None:
    status = getattr(exc, "status_code", None)
    if isinstance(status, int) and 100 <= status <= 599:
        return status
    for e in evidence:
        response = getattr(e, "response", None)
        code = getattr(response, "status_code", None)
        if isinstance(code, int) and 100 <= code <= 599:
            return code
    return None


def _headers(chain: list[BaseException]) -> dict[str, str]:
    """Response headers carried anywhere on the exception chain, lower-cased keys."""
    out: dict[str, str] = {}
    for e in reversed(chain):  # the outermost wins
        sources = [
            getattr(e, "litellm_response_headers", None),
            getattr(e, "headers", None),
            getattr(getattr(e, "response", None), "headers", None),
        ]
        for source in sources:
            if source is None or not hasattr(source, "items"):
                continue
            try:
                out.update({str(k).lower(): str(v) for k, v in source.items()})
            except Exception:  # noqa: BLE001 - odd header containers are ignored
                continue
    return out


def parse_retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``Retry-After`` (seconds or HTTP date).

    ``headers`` must have lower-cased keys. None when absent or unreadable; never negative.
    """
    raw_ms = headers.get("retry-after-ms")
    if raw_ms is not None:
        try:
            ms = float(raw_ms)
        except ValueError:
            ms = math.nan
        if math.isfinite(ms) and ms >= 0:
            return ms / 1000.0
    raw = headers.get("retry-after")
    if raw is None:
        return None
    raw = raw.strip()
    try:
        seconds = float(raw)
    except ValueError:
        pass  # not a number: an HTTP date
    else:
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    if when.tzinfo is None:  # HTTP dates are GMT
        when = when.replace(tzinfo=datetime.timezone.utc)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _redact(text: str, secret: str | None) -> str:
    if secret and len(secret) >= 4 and secret in text:
        return text.replace(secret, "***")
    return text


def _truncate(text: str) -> str:
    return text if len(text) <= _MAX_MESSAGE_CHARS else text[: _MAX_MESSAGE_CHARS - 3] + "..."
