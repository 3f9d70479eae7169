"""Typed errors of expertgraph. Every error names what is wrong: the field, the file, the expert."""

from __future__ import annotations


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
        super().__init__(f"unknown expert {name!r}; configured experts: {', '.join(known) or 'none'}")

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
