"""Turn a validated configuration into live experts, a policy, an aggregator and an orchestrator."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from expertgraph.agents.base import Expert
from expertgraph.core.errors import ConfigError
from expertgraph.orchestrator.config.schema import (
    APIExpertConfig,
    CallableExpertConfig,
    ExpertConfig,
    ExpertGraphConfig,
    LocalExpertConfig,
)
from expertgraph.policies.registry import BuildContext, build_aggregator, build_policy

if TYPE_CHECKING:
    from expertgraph.orchestrator.orchestrator import Orchestrator


def build_expert(cfg: ExpertConfig) -> Expert:
    """Build one expert from its config entry. Nothing heavy is loaded here."""
    if isinstance(cfg, CallableExpertConfig):
        from expertgraph.agents.callable import CallableExpert

        try:
            return CallableExpert.from_import_path(cfg.name, cfg.callable, cfg.card)
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
        )
    raise ConfigError(f"unknown expert kind in {cfg!r}", field="experts.kind")


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
    built = [live[e.name] if e.name in live else build_expert(e) for e in cfg.experts]
    home = Path(cfg.home)
    if base_dir is not None and not home.is_absolute():
        home = base_dir / home
    ctx = BuildContext(experts={e.name: e for e in built}, home=home)
    policy = build_policy(cfg.policy.name, cfg.policy.options, ctx)
    aggregator = build_aggregator(cfg.aggregator.name, cfg.aggregator.options, ctx)
    snapshot: dict[str, Any] = cfg.model_dump(
        mode="json", exclude={"experts": {"__all__": {"card"}}}
    )
    return cls(
        built,
        policy,
        aggregator,
        top_k=cfg.top_k,
        budget=cfg.budget,
        trace_dir=cfg.trace_dir(base_dir),
        fsync=cfg.trace.fsync,
        trace_options=cfg.trace.store_options(),
        defaults=cfg.defaults,
        expert_params={e.name: e.params for e in cfg.experts if e.params},
        name=cfg.name,
        config_snapshot=snapshot,
    )
