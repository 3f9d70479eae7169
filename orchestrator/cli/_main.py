"""The ``expertgraph`` command line. Each subcommand lives in its own ``cli_*`` module."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from expertgraph.core.errors import ExpertGraphError

# Each module has ``register(subparsers)``, which adds its parser(s) and sets
# ``func=handler(args) -> int`` as the parser default.
_COMMAND_MODULES = [
    "expertgraph.orchestrator.cli._run",
    "expertgraph.orchestrator.cli._traces",
    "expertgraph.orchestrator.cli._serve",
    "expertgraph.orchestrator.cli._train",
    "expertgraph.orchestrator.cli._eval",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="expertgraph",
        description="Whole LLMs as routed experts: run, train, evaluate, trace and serve.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in _COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ExpertGraphError as exc:
        print(f"expertgraph: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
