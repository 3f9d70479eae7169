"""Turn a validated configuration into live experts, a policy, an aggregator and an orchestrator."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from expertgraph.agents.base import Expert
from expertgraph.core.errors import ConfigError
from expertgraph.core.health import HEALTH
from expertgraph.orchestrator.config.schema import (
    APIExpertConfig,
    CallableExpertConfig,
    ExpertConfig,
    ExpertGraphConfig,
    LocalExpertConfig,
)
from expertgraph.policies.registry import BuildContext, build_aggregator, build_policy
from expertgraph.traces.redact import register_secret

if TYPE_CHECKING:
    from expertgraph.orchestrator.orchestrator import Orchestrator


def build_expert(cfg: ExpertConfig) -> Expert:
    """Build one expert from its config entry. Nothing heavy is loaded here."""
    if isinstance(cfg, CallableExpertConfig):
        from expertgraph.agents.callable import CallableExpert

        try:
            return CallableExpert.from_import_path(
                cfg.name, cfg.callable, cfg.card, max_reply_chars=cfg.max_reply_chars
            )
        except (ImportError, ValueError) as exc:
            raise ConfigError(
                f"expert {cfg.name!r}: callable {cfg.callable!r}: {exc}", field="experts.callable"
            ) from exc
    if isinstance(cfg, LocalExpertConfig):
        from expertgraph.agents.local import LocalHFExpert

        return LocalHFExpert(
            cfg.name,
            model=cfg.model,
            gguf_file=cfg.gguf_file,
            card=cfg.card,
            num_threads=cfg.num_threads,
            device=cfg.device,
            dtype=cfg.dtype,
            prompt_format=cfg.prompt_format,
            backend=cfg.backend,
            max_batch_size=cfg.max_batch_size,
            batch_window_ms=cfg.batch_window_ms,
        )
    if isinstance(cfg, APIExpertConfig):
        from expertgraph.agents.api import APIExpert

        return APIExpert(
            cfg.name,
            model=cfg.model,
            api_base=cfg.api_base,
            api_key_env=cfg.api_key_env,
            card=cfg.card,
            retry=cfg.retry,
            attempt_timeout_s=cfg.attempt_timeout_s,
            pricing=cfg.pricing,
            stream=cfg.stream,
            max_reply_chars=cfg.max_reply_chars,
            first_token_timeout_s=cfg.first_token_timeout_s,
            idle_timeout_s=cfg.idle_timeout_s,
        )
    raise ConfigError(f"unknown expert kind in {cfg!r}", field="experts.kind")


def _check_api_keys(cfg: ExpertGraphConfig, live: Mapping[str, Expert]) -> None:
    """Every ``api_key_env`` of an expert to build must be set now, not found at call time."""
    unset = [
        str(
            cfg.error(
                ("experts", i, "api_key_env"),
                f"environment variable {e.api_key_env} is not set "
                f"(expert {e.name!r} reads its API key from it)",
            )
        )
        for i, e in enumerate(cfg.experts)
        if isinstance(e, APIExpertConfig)
        and e.api_key_env
        and e.name not in live
        and not os.environ.get(e.api_key_env)
    ]
    if unset:
        raise ConfigError("\n".join(unset), field="api_key_env")


def build_from_config(
    cfg: ExpertGraphConfig,
    cls: type[Orchestrator],
    *,
    base_dir: Path | None = None,
    experts: Mapping[str, Expert] | None = None,
) -> Orchestrator:
    """Build an orchestrator (or a subclass) from a parsed configuration.

    ``experts``: live experts by name, used instead of building those configured experts.
    """
    names = [e.name for e in cfg.experts]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"experts: duplicate names {duplicates}", field="experts")
    live = experts or {}
    _check_api_keys(cfg, live)
    built = [live[e.name] if e.name in live else build_expert(e) for e in cfg.experts]
    for expert, entry in zip(built, cfg.experts, strict=True):
        HEALTH.configure(expert, entry.cooldown or cfg.cooldown)
    home = Path(cfg.home)
    if base_dir is not None and not home.is_absolute():
        home = base_dir / home
    ctx = BuildContext(experts={e.name: e for e in built}, home=home)
    policy = build_policy(cfg.policy.name, cfg.policy.options, ctx)
    aggregator = build_aggregator(cfg.aggregator.name, cfg.aggregator.options, ctx)
    if policy.paired_aggregator is not None and "aggregator" not in cfg.model_fields_set:
        aggregator = policy.paired_aggregator  # a trained cascade's own stages
    # The DSN may hold a password and OTel headers hold credentials: they stay out of the
    # snapshot every trace records.
    snapshot: dict[str, Any] = cfg.model_dump(
        mode="json",
        exclude={
            "experts": {"__all__": {"card"}},
            "checkpoint": {"dsn"},
            "trace": {"otel_headers"},
        },
    )
    for value in cfg.trace.otel_headers.values():
        register_secret(value)
    return cls(
        built,
        policy,
        aggregator,
        top_k=cfg.top_k,
        history_window=cfg.history_window,
        budget=cfg.budget,
        trace_dir=cfg.trace_dir(base_dir),
        fsync=cfg.trace.fsync,
        trace_options=cfg.trace.store_options(),
        defaults=cfg.defaults,
        expert_params={e.name: e.params for e in cfg.experts if e.params},
        name=cfg.name,
        config_snapshot=snapshot,
        checkpointer=cfg.checkpoint.location(home, base_dir),
        durability=cfg.checkpoint.durability,
    )
