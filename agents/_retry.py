"""When an API call is tried again: :class:`RetrySettings` and the deadline-bounded retry loop.

Exponential backoff with jitter, ``Retry-After`` honoured (capped), only retryable failures
retried, and no retry started that the call's overall timeout would cut off.
"""

from __future__ import annotations

import random
import time
from collections.abc import AsyncIterator

from pydantic import BaseModel, ConfigDict, Field, model_validator
from tenacity import AsyncRetrying, AttemptManager, RetryCallState, retry_if_exception

from expertgraph.agents._api_errors import Failure

# Attempts time out this long before the call's deadline, so that the failure is classified
# here (with its attempt count) rather than cut off by the base class's timeout.
_DEADLINE_MARGIN_S = 0.05
# Do not start an attempt with less time than this left before the deadline.
_MIN_ATTEMPT_S = 0.05


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


class AttemptFailed(Exception):
    """One classified failed attempt; the loop retries it when the failure is retryable."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.message)
        self.failure = failure


class RetryLoop:
    """The attempts of one call, all within ``timeout_s`` from now.

    ``async for attempt in loop: with attempt: ...`` raising :class:`AttemptFailed`; the last
    failure is re-raised when retries end. ``attempts`` counts the attempts started and
    ``gave_up`` says why retries stopped before ``max_attempts`` (empty otherwise).
    """

    def __init__(self, settings: RetrySettings, timeout_s: float) -> None:
        self.settings = settings
        self.timeout_s = timeout_s
        self.deadline = time.monotonic() + timeout_s
        self.attempts = 0
        self.gave_up = ""

    def time_left_s(self) -> float:
        """How long the current attempt may take, the margin before the deadline kept."""
        return max(_MIN_ATTEMPT_S, self.deadline - time.monotonic() - _DEADLINE_MARGIN_S)

    async def __aiter__(self) -> AsyncIterator[AttemptManager]:
        retrying = AsyncRetrying(
            stop=self._stop,
            wait=self._wait,
            retry=retry_if_exception(
                lambda e: isinstance(e, AttemptFailed) and e.failure.retryable
            ),
            reraise=True,
        )
        async for attempt in retrying:
            self.attempts = attempt.retry_state.attempt_number
            yield attempt

    def _stop(self, state: RetryCallState) -> bool:
        if state.attempt_number >= self.settings.max_attempts:
            return True
        # Give up now rather than sleep into the deadline: the caller gets the real failure
        # and attempt count instead of a bare timeout.
        left = self.deadline - time.monotonic() - _DEADLINE_MARGIN_S
        if state.upcoming_sleep + _MIN_ATTEMPT_S > left:
            self.gave_up = (
                f" (gave up: a wait of {state.upcoming_sleep:.2f}s would pass"
                f" the call's {self.timeout_s:g}s timeout)"
            )
            return True
        return False

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, AttemptFailed) and exc.failure.retry_after_s is not None:
            return min(self.settings.max_wait_s, exc.failure.retry_after_s)
        return self.settings.backoff_s(state.attempt_number)
