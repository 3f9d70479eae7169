"""Policies and aggregators by name, as the configuration selects them."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from expertgraph.core.errors import ConfigError
from expertgraph.policies.base import Aggregator, Policy


@dataclass
class BuildContext:
    """What a policy or aggregator may need when it is built from configuration."""

    experts: Mapping[str, Any] = field(default_factory=dict)
    """Live experts by name (an LLM router or fuser calls one of them)."""
    home: Path = Path(".expertgraph")
    top_k: int = 1


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EmbeddingOptions(_Options):
    embedder: str = "all-minilm-l6-v2"
    top_k: int | None = Field(None, ge=1)
    w_max: float = Field(0.7, ge=0, le=1)
    avoid_failing: bool = True


class FixedOptions(_Options):
    experts: list[str] = Field(min_length=1)


class NoOptions(_Options):
    pass


def _embedding(options: EmbeddingOptions, ctx: BuildContext) -> Policy:
    from expertgraph.policies.embedder import SentenceTransformerEmbedder
    from expertgraph.policies.embedding import EmbeddingRouter

    return EmbeddingRouter(
        SentenceTransformerEmbedder(options.embedder),
        top_k=options.top_k,
        w_max=options.w_max,
        avoid_failing=options.avoid_failing,
    )


def _fixed(options: FixedOptions, ctx: BuildContext) -> Policy:
    from expertgraph.policies.fixed import FixedPolicy

    missing = [n for n in options.experts if n not in ctx.experts]
    if missing:
        raise ConfigError(
            f"policy.experts names unknown experts {missing}; configured: {sorted(ctx.experts)}",
            field="policy.experts",
        )
    return FixedPolicy(options.experts)


def _all(options: NoOptions, ctx: BuildContext) -> Policy:
    from expertgraph.policies.fixed import AllExperts

    return AllExperts()


def _majority(options: NoOptions, ctx: BuildContext) -> Aggregator:
    from expertgraph.policies.voting import MajorityVote

    return MajorityVote()


@dataclass(frozen=True)
class Spec:
    options: type[BaseModel]
    build: Callable[[Any, BuildContext], Any]
    summary: str


# Static tables (not mutated at run time): names a config file may use.
POLICIES: dict[str, Spec] = {
    "embedding": Spec(EmbeddingOptions, _embedding, "zero-shot similarity of the step to expert cards"),
    "fixed": Spec(FixedOptions, _fixed, "always the named expert(s)"),
    "all": Spec(NoOptions, _all, "every expert answers every step"),
}
AGGREGATORS: dict[str, Spec] = {
    "majority": Spec(NoOptions, _majority, "plurality over normalised answers"),
}


def _build(kind: str, table: dict[str, Spec], name: str, options: Mapping[str, Any], ctx: BuildContext) -> Any:
    if ":" in name:  # a user's own class, "package.module:Class", built with its options
        module_name, _, attr = name.partition(":")
        try:
            cls = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"{kind}.name: cannot import {name!r}: {exc}", field=f"{kind}.name") from exc
        return cls(**options)
    spec = table.get(name)
    if spec is None:
        raise ConfigError(
            f"{kind}.name: unknown {kind} {name!r}; known: {', '.join(sorted(table))}",
            field=f"{kind}.name",
        )
    try:
        parsed = spec.options.model_validate(dict(options))
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            field_name = ".".join(str(p) for p in err["loc"])
            msg = "unknown option" if err["type"] == "extra_forbidden" else err["msg"]
            problems.append(f"{kind}.{field_name}: {msg}")
        first = ".".join(str(p) for p in exc.errors()[0]["loc"])
        raise ConfigError(
            f"invalid options for {kind} {name!r}: " + "; ".join(problems), field=f"{kind}.{first}"
        ) from None
    return spec.build(parsed, ctx)


def build_policy(name: str, options: Mapping[str, Any] | None = None, ctx: BuildContext | None = None) -> Policy:
    """Build a routing policy by its config name (or ``module:Class``)."""
    return _build("policy", POLICIES, name, options or {}, ctx or BuildContext())


def build_aggregator(
    name: str, options: Mapping[str, Any] | None = None, ctx: BuildContext | None = None
) -> Aggregator:
    """Build an aggregator by its config name (or ``module:Class``)."""
    return _build("aggregator", AGGREGATORS, name, options or {}, ctx or BuildContext())
