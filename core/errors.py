"""Typed errors of expertgraph. Every error names what is wrong: the field, the file, the expert.

One hierarchy; catch ``ExpertGraphError`` for all of them::

    ExpertGraphError
    ├── ConfigError (ValueError)           a configuration file or object is invalid
    │   └── UnknownModelError (KeyError)   a model id that names no served configuration
    ├── UnknownExpertError (KeyError)      a name that refers to no configured expert
    ├── ExpertLoadError (RuntimeError)     an expert could not be loaded
    ├── ExpertCallError                    a concrete expert's classified call failure
    ├── CalculatorError (ValueError)       text the calculator tool cannot evaluate
    ├── PolicyError (RuntimeError)         a policy/aggregator cannot be built, trained, loaded
    │   └── InvalidRouterAnswer (ValueError)   an LLM router's answer that cannot be used
    ├── DatasetError (ValueError)          a routing dataset is missing or malformed
    │   └── ZeroEvalError                  a ZeroEval folder that does not fit the layout
    ├── TraceError (RuntimeError)          a trace could not be written or read
    │   └── TraceCorruptionError           a record that does not parse (file and line named)
    ├── NoAnswerError (RuntimeError)       a run ended without an answer (adapters raise it)
    ├── NoExpertAvailable (RuntimeError)   every expert a step may use is cooling down
    ├── CheckpointError (RuntimeError)     a run's checkpoint cannot be opened, found or resumed
    └── MissingDependencyError (ImportError)   an optional extra is needed

Expert failures inside a run are data (``Generation.error``), never raised into the run.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from expertgraph.core.types import RunResult


class ExpertGraphError(Exception):
    """Base class of every error expertgraph raises on purpose."""


class ConfigError(ExpertGraphError, ValueError):
    """A configuration file or object is invalid; the message names the file and field."""

    def __init__(self, message: str, *, path: str | None = None, field: str | None = None) -> None:
        self.path = path
        self.field = field
        super().__init__(message)


class UnknownExpertError(ExpertGraphError, KeyError):
    """A name refers to an expert that is not configured."""

    def __init__(self, name: str, known: list[str]) -> None:
        self.name = name
        self.known = known
        super().__init__(
            f"unknown expert {name!r}; configured experts: {', '.join(known) or 'none'}"
        )

    def __str__(self) -> str:  # KeyError would quote the whole message
        return self.args[0]


class ExpertLoadError(ExpertGraphError, RuntimeError):
    """An expert could not be loaded (missing model files, missing extra)."""


class PolicyError(ExpertGraphError, RuntimeError):
    """A routing policy or aggregator could not be built, trained or loaded."""


class TraceError(ExpertGraphError, RuntimeError):
    """A trace could not be written or read."""


class TraceCorruptionError(TraceError):
    """A trace file holds a record that does not parse (not just a torn final line)."""

    def __init__(self, message: str, *, path: str, line: int) -> None:
        self.path = path
        self.line = line
        super().__init__(f"{path}:{line}: {message}")


class MissingDependencyError(ExpertGraphError, ImportError):
    """An optional dependency (an extra) is needed for this feature."""

    def __init__(self, package: str, extra: str) -> None:
        super().__init__(
            f"{package} is needed for this; install it with: pip install 'expertgraph[{extra}]'"
        )


class ExpertCallError(ExpertGraphError):
    """Raised by a concrete expert for a failure it has already classified."""

    def __init__(
        self,
        message: str,
        *,
        type: str = "error",
        status_code: int | None = None,
        retryable: bool = False,
        attempts: int = 1,
    ) -> None:
        super().__init__(message)
        self.type = type
        self.status_code = status_code
        self.retryable = retryable
        self.attempts = attempts


class CalculatorError(ExpertGraphError, ValueError):
    """The text holds no arithmetic the calculator can evaluate."""


class InvalidRouterAnswer(PolicyError, ValueError):
    """The router's answer cannot be used; the message says why."""


class DatasetError(ExpertGraphError, ValueError):
    """A routing dataset is missing, malformed, or asked for a split it does not have."""


class ZeroEvalError(DatasetError):
    """A ZeroEval folder is missing, empty or holds records that do not fit the layout."""


class NoAnswerError(ExpertGraphError, RuntimeError):
    """A run ended without an answer (every expert failed, or a budget ran out first)."""

    def __init__(self, result: RunResult) -> None:
        self.result = result
        reason = result.stop_reason or "no result"
        super().__init__(f"no expert produced an answer (run {result.run_id}: {reason})")


class NoExpertAvailable(ExpertGraphError, RuntimeError):
    """Every expert a step may use is cooling down; the message says when the first recovers."""

    def __init__(self, cooling: dict[str, float]) -> None:
        self.cooling = dict(cooling)
        """Expert name -> seconds until it may be called again (0: a probe call decides)."""
        self.recovers_in_s = min(self.cooling.values(), default=0.0)
        first = min(self.cooling, key=self.cooling.__getitem__, default="?")
        each = ", ".join(f"{n} ({s:.3g}s)" for n, s in sorted(self.cooling.items()))
        self.recovers_at = time.time() + self.recovers_in_s
        at = time.strftime("%H:%M:%S UTC", time.gmtime(self.recovers_at))
        super().__init__(
            f"no expert available: every expert is cooling down after failures ({each}); "
            f"the first, {first}, recovers in {self.recovers_in_s:.3g}s (at {at})"
        )


class CheckpointError(ExpertGraphError, RuntimeError):
    """A run's checkpoint store cannot be opened, or a run cannot be resumed from it."""


class UnknownModelError(ConfigError, KeyError):
    """A model id that names no served routing configuration."""

    def __init__(self, model: str, known: Sequence[str]) -> None:
        self.model = model
        self.known = list(known)
        super().__init__(f"unknown model {model!r}; served models: {', '.join(known) or 'none'}")

    def __str__(self) -> str:  # KeyError would quote the whole message
        return self.args[0]
