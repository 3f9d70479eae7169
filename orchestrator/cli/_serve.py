"""``expertgraph serve``: the OpenAI-compatible HTTP server (needs fastapi and uvicorn)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from expertgraph.core.errors import MissingDependencyError

if TYPE_CHECKING:
    from expertgraph.orchestrator.integrations.catalog import ModelCatalog


def _aliases(value: str) -> bool | list[str]:
    if value == "all":
        return True
    if value == "none":
        return False
    return [v.strip() for v in value.split(",") if v.strip()]


def _catalog(configs: list[str] | None, aliases: bool | list[str]) -> ModelCatalog:
    """The ``--config`` files, else what ``expertgraph run`` uses: ./expertgraph.yaml or the
    built-in configuration."""
    from expertgraph.orchestrator.cli._run import resolve_config
    from expertgraph.orchestrator.integrations.catalog import ModelCatalog

    if configs:
        return ModelCatalog.from_paths(configs, aliases=aliases)
    cfg, source = resolve_config(None)
    path = source if Path(source).is_file() else None
    return ModelCatalog.from_configs([(cfg, path)], aliases=aliases)


def _cmd_serve(args: argparse.Namespace) -> int:
    try:
        from expertgraph.orchestrator.integrations.server import (
            ServeSettings,
            check_bind,
            load_api_keys,
            serve,
        )
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise MissingDependencyError(exc.name or "fastapi", "serve") from exc
    settings = ServeSettings(
        api_keys=load_api_keys(args.api_key_file),
        max_body_bytes=args.max_body_bytes,
        max_tokens_limit=args.max_tokens_limit,
    )
    # Checked before any config is loaded: a refused bind should not wait for models.
    check_bind(args.host, settings)
    catalog = _catalog(args.config, _aliases(args.aliases))
    auth = "API keys required" if settings.api_keys else "no API keys (loopback only)"
    where = f"http://{args.host}:{args.port}/v1"
    print(
        f"expertgraph: serving {', '.join(catalog.ids())} on {where} ({auth})",
        file=sys.stderr,
        flush=True,
    )
    serve(
        catalog,
        host=args.host,
        port=args.port,
        settings=settings,
        log_level=args.log_level,
        access_log=not args.no_access_log,
    )
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "serve",
        help="serve routing configurations as an OpenAI-compatible chat API",
        description=(
            "Serve one or more routing configurations at /v1/chat/completions (default: "
            "./expertgraph.yaml, else the built-in configuration). Each config is "
            "the model 'expertgraph/<name>'; registered policies are also served as "
            "'expertgraph/<policy>' over the first config's experts. API keys come from "
            "EXPERTGRAPH_API_KEYS and/or --api-key-file; they are required unless the host is "
            "loopback."
        ),
    )
    p.add_argument(
        "--config",
        action="append",
        metavar="CONFIG",
        help="a config file or a directory of them (repeatable; default: ./expertgraph.yaml, "
        "else the built-in configuration)",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key-file", dest="api_key_file", help="file with one API key per line")
    p.add_argument(
        "--aliases",
        default="all",
        help="policy aliases expertgraph/<policy>: 'all' (default), 'none' or a comma list",
    )
    p.add_argument("--max-body-bytes", dest="max_body_bytes", type=int, default=1_000_000)
    p.add_argument("--max-tokens-limit", dest="max_tokens_limit", type=int, default=4096)
    p.add_argument(
        "--log-level",
        dest="log_level",
        default="info",
        choices=["critical", "error", "warning", "info", "debug"],
    )
    p.add_argument("--no-access-log", dest="no_access_log", action="store_true")
    p.set_defaults(func=_cmd_serve)
