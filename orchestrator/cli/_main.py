"""The ``expertgraph`` command line. Each subcommand lives in its own ``_<verb>`` module."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Iterator, Sequence

from expertgraph.core.errors import ExpertGraphError

# Each module has ``register(subparsers)``, which adds its parser(s) and sets
# ``func=handler(args) -> int`` as the parser default.
_COMMAND_MODULES = [
    "expertgraph.orchestrator.cli._run",
    "expertgraph.orchestrator.cli._traces",
    "expertgraph.orchestrator.cli._serve",
    "expertgraph.orchestrator.cli._train",
    "expertgraph.orchestrator.cli._eval",
    "expertgraph.orchestrator.cli._batch",
    "expertgraph.orchestrator.cli._collect",
]

# Read by the libraries when they are first imported: tqdm (every bar, e.g. transformers'
# "Converting and de-quantizing GGUF tensors"), huggingface_hub and transformers (its
# "Loading weights" bar follows huggingface_hub's switch) and transformers' logging.
_QUIET_ENV = {
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TQDM_DISABLE": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
}
_QUIET_LOGGERS = ("sentence_transformers", "transformers", "huggingface_hub")


def quiet_model_loading() -> None:
    """Keep model-loading progress bars and library logging out of the command's output.

    A variable the user set is left as it is. Libraries already imported (``main`` called
    from Python) read their switches at import, so they are also told through their APIs.
    """
    for name, value in _QUIET_ENV.items():
        os.environ.setdefault(name, value)
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()


def _parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """Every subcommand parser below ``parser``, at any depth (``traces replay``)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                yield child
                yield from _parsers(child)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="expertgraph",
        description="Whole LLMs as routed experts: run, train, evaluate, trace and serve.",
    )
    verbose = "show model-loading progress bars and library logging"
    parser.add_argument("--verbose", action="store_true", help=verbose)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in _COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    # Also after the subcommand (``expertgraph eval ... --verbose``); SUPPRESS keeps a
    # subcommand from resetting the flag given before it.
    for child in _parsers(parser):
        child.add_argument(
            "--verbose", action="store_true", default=argparse.SUPPRESS, help=verbose
        )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.verbose:
        quiet_model_loading()
    try:
        return int(args.func(args) or 0)
    except ExpertGraphError as exc:
        print(f"expertgraph: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
