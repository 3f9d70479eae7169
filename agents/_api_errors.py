"""What went wrong with an API call: failures named, judged retryable or not, made safe to show.

Only failures that a retry can fix count as retryable: 429, 408, 5xx, timeouts and connection
errors. httpx, openai and litellm are imported when a failure is classified, never on import.
"""

from __future__ import annotations

import asyncio
import datetime
import email.utils
import math
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from expertgraph.agents._litellm import import_litellm
from expertgraph.agents.base import CONTEXT_WINDOW, TIMEOUT
from expertgraph.traces.redact import redact_text

_MAX_MESSAGE_CHARS = 1000

_STATUS_TYPES = {
    400: "bad_request",
    401: "authentication",
    402: "payment_required",
    403: "permission_denied",
    404: "not_found",
    408: TIMEOUT,
    409: "conflict",
    413: "request_too_large",
    422: "unprocessable",
    429: "rate_limit",
}


@dataclass(frozen=True)
class Failure:
    """One failed attempt, classified."""

    type: str
    message: str
    status_code: int | None
    retryable: bool
    retry_after_s: float | None = None
    """What the server asked us to wait (``Retry-After``), if it did."""


def classify_error(exc: BaseException) -> Failure:
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
    retry_after = parse_retry_after(_headers(chain))

    if not answered:
        if isinstance(exc, (asyncio.TimeoutError, litellm.Timeout)) or any(
            isinstance(e, (openai.APITimeoutError, httpx.TimeoutException, asyncio.TimeoutError))
            for e in evidence
        ):
            return Failure(TIMEOUT, message, None, True, retry_after)
        if isinstance(exc, litellm.APIConnectionError) or any(
            isinstance(e, _connection_errors()) for e in evidence
        ):
            return Failure("connection", message, None, True, retry_after)
        if evidence:
            # Raised here, not by the server (e.g. the OpenAI SDK refusing to run without a
            # key): the same call would fail the same way.
            return Failure("client_error", message, None, False)

    status = _status_code(exc, evidence)
    if isinstance(exc, litellm.ContextWindowExceededError):
        return Failure(CONTEXT_WINDOW, message, status or 400, False)
    if isinstance(exc, litellm.ContentPolicyViolationError):
        return Failure("content_policy", message, status or 400, False)
    if status is not None:
        if status == 429 or status == 408 or status >= 500:
            kind = _STATUS_TYPES.get(status, "server_error")
            return Failure(kind, message, status, True, retry_after)
        if 400 <= status < 500:
            return Failure(_STATUS_TYPES.get(status, "request_error"), message, status, False)
    if isinstance(exc, litellm.RateLimitError):
        return Failure("rate_limit", message, status, True, retry_after)
    if isinstance(exc, (litellm.InternalServerError, litellm.ServiceUnavailableError)):
        return Failure("server_error", message, status, True, retry_after)
    return Failure(type(exc).__name__, message, status, False)


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


def safe_message(text: str, secret: str | None) -> str:
    """``text`` with ``secret`` masked, cut to a length fit for a trace."""
    # Redact before truncating, so no prefix of the secret survives a cut.
    if secret and len(secret) >= 4 and secret in text:
        text = text.replace(secret, "***")
    text = redact_text(text)  # and every other secret the process knows
    return text if len(text) <= _MAX_MESSAGE_CHARS else text[: _MAX_MESSAGE_CHARS - 3] + "..."


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
    """``exc`` and its explicit causes (``raise ... from``), outermost first.

    An implicit ``__context__`` is followed only from one error of the call's own stack to
    another (LiteLLM and the OpenAI SDK wrap the transport's error while handling it, without
    ``from``, so their chain is all context). Any other context, e.g. an error that was being
    handled when the call started (``asyncio.run`` inside an ``except``), is never read as
    the call's failure.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen and len(seen) < 16:
        seen.add(id(current))
        yield current
        if current.__cause__ is not None:
            current = current.__cause__
        elif current.__suppress_context__:
            current = None
        else:
            context = current.__context__
            linked = context is not None and _transport_error(current) and _transport_error(context)
            current = context if linked else None


def _transport_error(exc: BaseException) -> bool:
    """An error of the call's own stack: httpx, the OpenAI SDK, LiteLLM, aiohttp, sockets."""
    module = type(exc).__module__
    roots = ("httpx", "httpcore", "openai", "litellm", "aiohttp", "anyio", "ssl", "socket")
    if module.split(".")[0] in roots:
        return True
    return isinstance(exc, (OSError, TimeoutError, asyncio.TimeoutError))


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
