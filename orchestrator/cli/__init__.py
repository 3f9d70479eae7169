"""The ``expertgraph`` command line: one module per verb."""

from typing import TYPE_CHECKING

from expertgraph.core._lazy import lazy_exports

if TYPE_CHECKING:
    from expertgraph.orchestrator.cli._main import main

_EXPORTS = {
    "main": "expertgraph.orchestrator.cli._main",
}

__all__ = ["main"]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
