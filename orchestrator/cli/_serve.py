"""``expertgraph serve``: the OpenAI-compatible HTTP server (needs fastapi and uvicorn).

With ``--workers N`` the server runs as N processes (uvicorn's supervisor over one listening
socket): the parent checks the bind and the configs, then hands each worker what it needs to
build the same app through :func:`worker_app` (an import-string factory, as uvicorn's worker
processes need) in the environment variable ``EXPERTGRAPH_SERVE_WORKER``: config paths and
limits, never a key (workers read keys from the same environment and key file).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from expertgraph.core.errors import ConfigError, MissingDependencyError

if TYPE_CHECKING:
    from fastapi import FastAPI

    from expertgraph.orchestrator.integrations.catalog import ModelCatalog

WORKER_ENV = "EXPERTGRAPH_SERVE_WORKER"
WORKER_FACTORY = "expertgraph.orchestrator.cli._serve:worker_app"


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


def _check_configs(configs: list[str] | None) -> None:
    """Parse every config before workers start, so a bad one is one error, not N crashes."""
    from expertgraph.orchestrator.cli._run import resolve_config
    from expertgraph.orchestrator.config.schema import load_config
    from expertgraph.orchestrator.integrations.catalog import config_files

    if configs:
        for path in config_files(configs):
            load_config(path)
    else:
        resolve_config(None)


def worker_app() -> FastAPI:
    """The app of one ``serve --workers`` process, from what the parent put in the environment."""
    from expertgraph.orchestrator.integrations.server import (
        ServeSettings,
        create_app,
        load_api_keys,
    )

    raw = os.environ.get(WORKER_ENV)
    if not raw:
        raise ConfigError(f"{WORKER_ENV} is not set: worker_app runs under `serve --workers`")
    spec: dict[str, Any] = json.loads(raw)
    settings = ServeSettings(
        api_keys=load_api_keys(spec["api_key_file"]),
        max_body_bytes=spec["max_body_bytes"],
        max_tokens_limit=spec["max_tokens_limit"],
        created=spec["created"],  # one value for every worker's /v1/models
    )
    return create_app(_catalog(spec["config"], spec["aliases"]), settings)


def _cmd_serve(args: argparse.Namespace) -> int:
    try:
        from expertgraph.orchestrator.integrations.server import (
            ServeSettings,
            check_bind,
            load_api_keys,
            serve,
            serve_workers,
        )
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise MissingDependencyError(exc.name or "fastapi", "serve") from exc
    if args.workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {args.workers}", field="workers")
    settings = ServeSettings(
        api_keys=load_api_keys(args.api_key_file),
        max_body_bytes=args.max_body_bytes,
        max_tokens_limit=args.max_tokens_limit,
    )
    # Checked before any config is loaded: a refused bind should not wait for models.
    check_bind(args.host, settings)
    auth = "API keys required" if settings.api_keys else "no API keys (loopback only)"
    where = f"http://{args.host}:{args.port}/v1"
    if args.workers > 1:
        _check_configs(args.config)
        os.environ[WORKER_ENV] = json.dumps(
            {
                "config": [str(Path(c).resolve()) for c in args.config] if args.config else None,
                "aliases": _aliases(args.aliases),
                "api_key_file": str(Path(args.api_key_file).resolve())
                if args.api_key_file
                else None,
                "max_body_bytes": args.max_body_bytes,
                "max_tokens_limit": args.max_tokens_limit,
                "created": settings.created,
            }
        )
        print(
            f"expertgraph: serving on {where} with {args.workers} worker processes ({auth})",
            file=sys.stderr,
            flush=True,
        )
        serve_workers(
            WORKER_FACTORY,
            workers=args.workers,
            host=args.host,
            port=args.port,
            log_level=args.log_level,
            access_log=not args.no_access_log,
        )
        return 0
    catalog = _catalog(args.config, _aliases(args.aliases))
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
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="worker processes on one port (default 1); they share the trace directory",
    )
    p.set_defaults(func=_cmd_serve)
