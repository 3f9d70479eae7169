"""Per-process expert health: cooldowns like LiteLLM's router, shared by every run of a process.

One failure more than ``allowed_fails`` within ``window_s`` seconds (as in LiteLLM's router)
and the expert cools for ``cooldown_time`` seconds: every policy skips it
(``RoutingState.candidates``) and the run's call path does not call it. When the cooldown
ends, one probe call (only one at a time, whichever run makes it) decides: a success clears
the expert, a failure cools it again.

:data:`HEALTH` is the one process-global mutable state of expertgraph besides caches, on
purpose: the orchestrator, ``serve`` and the adapters all call through it, so an expert that
failed for one run is skipped by the next. It is thread-safe and keyed by the expert object
(weakly, so a dropped expert takes its health with it): two orchestrators with different
experts of the same name never share health; orchestrators over the same live experts (a
served catalog) do.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from expertgraph.core.types import ExpertFailure

COOLING = "cooling"
"""``ExpertFailure.type`` of a call not made because its expert is cooling down."""

# Failures that say nothing about the expert's health: the call's own fault, or not made.
_NOT_HEALTH = frozenset(
    {
        "budget",
        COOLING,
        "invalid_params",
        "context_window",
        "tools_unsupported",
        "bad_request",
        "content_policy",
        "unprocessable",
        "request_too_large",
        "cancelled",
    }
)

State = Literal["ok", "cooling", "probing", "half_open"]


class CooldownSettings(BaseModel):
    """When an expert cools down (LiteLLM's router's ``allowed_fails`` and ``cooldown_time``)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    allowed_fails: int = Field(3, ge=0)
    """Failures within ``window_s`` an expert is allowed; one more starts a cooldown."""
    cooldown_time: float = Field(5.0, gt=0)
    """Seconds the expert is skipped; then one probe call decides."""
    window_s: float = Field(60.0, gt=0)
    """Failures older than this many seconds no longer count."""


def counts_against(failure: ExpertFailure | None) -> bool:
    """Whether a call's failure counts against its expert's health (a bad request does not)."""
    return failure is not None and failure.type not in _NOT_HEALTH


@dataclass(frozen=True)
class Ticket:
    """The admission of one call: made normally, made as the probe, or refused (why)."""

    probe: bool = False
    refused: str | None = None


@dataclass(frozen=True)
class ExpertStatus:
    """A snapshot of one expert's process-wide health, for display (CLI, server, trace)."""

    state: State
    failures_in_window: int
    cooling_until: float | None
    """Wall-clock time (epoch seconds) the cooldown ends; None when not cooling."""
    cooling_s: float | None
    """Seconds until it may be called again (0 while a probe decides); None when callable."""
    calls: int
    failures: int
    cooldowns: int
    probes: int
    last_error: str | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "failures_in_window": self.failures_in_window,
            "cooling_until": self.cooling_until,
            "cooling_s": self.cooling_s,
            "calls": self.calls,
            "failures": self.failures,
            "cooldowns": self.cooldowns,
            "probes": self.probes,
            "last_error": self.last_error,
        }


@dataclass
class _Entry:
    settings: CooldownSettings = field(default_factory=CooldownSettings)
    failures: deque[float] = field(default_factory=deque)
    cooling_until: float | None = None
    """Monotonic time the cooldown ends; kept (in the past) until a probe clears it."""
    probing: bool = False
    calls: int = 0
    errors: int = 0
    cooldowns: int = 0
    probes: int = 0
    last_error: str | None = None
    history: deque[tuple[float, float]] = field(default_factory=lambda: deque(maxlen=1024))
    """Recent cooldowns as monotonic (start, end): a bounded record for benchmarks and tests."""


class HealthRegistry:
    """Cooldown state of every expert this process calls (see the module docstring)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._weak: weakref.WeakKeyDictionary[Any, _Entry] = weakref.WeakKeyDictionary()
        self._strong: dict[int, _Entry] = {}  # experts that cannot be weakly referenced

    def _entry(self, expert: Any) -> _Entry:
        try:
            entry = self._weak.get(expert)
            if entry is None:
                entry = self._weak[expert] = _Entry()
            return entry
        except TypeError:  # unhashable or no weak references: keyed by identity
            return self._strong.setdefault(id(expert), _Entry())

    def configure(self, expert: Any, settings: CooldownSettings) -> None:
        """Set an expert's cooldown settings (the config's ``cooldown``, or its own)."""
        with self._lock:
            self._entry(expert).settings = settings

    def settings(self, expert: Any) -> CooldownSettings:
        with self._lock:
            return self._entry(expert).settings

    def reset(self, expert: Any) -> None:
        """Forget an expert's failures and cooldown, keeping its settings."""
        with self._lock:
            entry = self._entry(expert)
            settings = entry.settings
            entry.__dict__.update(_Entry(settings=settings).__dict__)

    # ---- the call path -------------------------------------------------------------------

    def begin(self, expert: Any) -> Ticket:
        """Admit one call of ``expert`` now: normally, as the one probe, or refused."""
        now = time.monotonic()
        with self._lock:
            entry = self._entry(expert)
            if entry.cooling_until is None or not entry.settings.enabled:
                return Ticket()
            if now < entry.cooling_until:
                left = entry.cooling_until - now
                return Ticket(refused=f"cooling down for {left:.3g}s more")
            if entry.probing:
                return Ticket(refused="cooled down; a probe call is deciding")
            entry.probing = True
            entry.probes += 1
            return Ticket(probe=True)

    def end(self, expert: Any, ticket: Ticket, failure: ExpertFailure | None) -> None:
        """Count a call admitted by :meth:`begin`; its failure may start a cooldown."""
        if ticket.refused is not None:
            return
        now = time.monotonic()
        with self._lock:
            entry = self._entry(expert)
            settings = entry.settings
            entry.calls += 1
            counted = counts_against(failure)
            if counted:
                assert failure is not None
                entry.errors += 1
                entry.last_error = failure.message
            if ticket.probe:
                entry.probing = False
                if counted:
                    self._cool(entry, now)
                elif failure is None:
                    entry.cooling_until = None
                    entry.failures.clear()
                return
            if not counted or not settings.enabled:
                return
            entry.failures.append(now)
            while entry.failures and entry.failures[0] <= now - settings.window_s:
                entry.failures.popleft()
            cooling = entry.cooling_until is not None and now < entry.cooling_until
            if len(entry.failures) > settings.allowed_fails and not cooling:
                self._cool(entry, now)

    def cancel(self, expert: Any, ticket: Ticket) -> None:
        """Release a ticket whose call was not made after all (e.g. the budget refused it)."""
        if ticket.probe:
            with self._lock:
                self._entry(expert).probing = False

    @staticmethod
    def _cool(entry: _Entry, now: float) -> None:
        entry.cooling_until = now + entry.settings.cooldown_time
        entry.failures.clear()
        entry.cooldowns += 1
        entry.history.append((now, entry.cooling_until))

    # ---- reading -------------------------------------------------------------------------

    def blocked_for(self, expert: Any) -> float | None:
        """Seconds until ``expert`` may be called (0.0 while a probe decides); None: now."""
        now = time.monotonic()
        with self._lock:
            entry = self._entry(expert)
            if entry.cooling_until is None or not entry.settings.enabled:
                return None
            if now < entry.cooling_until:
                return entry.cooling_until - now
            return 0.0 if entry.probing else None

    def status(self, expert: Any) -> ExpertStatus:
        now = time.monotonic()
        wall = time.time()
        with self._lock:
            entry = self._entry(expert)
            window = entry.settings.window_s
            recent = sum(1 for t in entry.failures if t > now - window)
            until = entry.cooling_until if entry.settings.enabled else None
            state: State = "ok"
            cooling_s: float | None = None
            if until is not None and now < until:
                state, cooling_s = "cooling", until - now
            elif until is not None:
                state = "probing" if entry.probing else "half_open"
                cooling_s = 0.0 if entry.probing else None
            return ExpertStatus(
                state=state,
                failures_in_window=recent,
                cooling_until=None if until is None else wall + (until - now),
                cooling_s=cooling_s,
                calls=entry.calls,
                failures=entry.errors,
                cooldowns=entry.cooldowns,
                probes=entry.probes,
                last_error=entry.last_error,
            )

    def describe(self, expert: Any) -> str:
        """One line for a table: the state, recent failures against the allowance, last error."""
        status = self.status(expert)
        settings = self.settings(expert)
        if not settings.enabled:
            return "no cooldown"
        line = {
            "ok": f"ok ({status.failures_in_window} failures in {settings.window_s:g}s, "
            f"{settings.allowed_fails} allowed)",
            "cooling": f"cooling {status.cooling_s or 0:.3g}s more",
            "probing": "cooled down; a probe call is deciding",
            "half_open": "cooled down; the next call probes",
        }[status.state]
        if status.last_error and status.state != "ok":
            line += f"; last error: {status.last_error[:80]}"
        return line

    def summary(self, experts: Any) -> dict[str, Any]:
        """How many of ``experts`` are cooling down and when the first recovers (no names)."""
        unique = list({id(e): e for e in experts}.values())
        blocked = [s for s in (self.blocked_for(e) for e in unique) if s is not None]
        return {
            "experts": len(unique),
            "cooling": len(blocked),
            "recovers_in_s": round(min(blocked), 3) if blocked else None,
        }

    def history(self, expert: Any) -> list[tuple[float, float]]:
        """Recent cooldowns of ``expert`` as monotonic ``(start, end)`` times."""
        with self._lock:
            return list(self._entry(expert).history)


HEALTH = HealthRegistry()
"""The process's registry (module docstring): the one global mutable state besides caches."""
