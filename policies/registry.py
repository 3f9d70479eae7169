"""Policies and aggregators by name, as the configuration selects them."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from expertgraph.core import Aggregator, Policy
from expertgraph.core.errors import ConfigError
from expertgraph.policies.aggregation.redflags import RedFlags


@dataclass
class BuildContext:
    """What a policy or aggregator may need when it is built from configuration."""

    experts: Mapping[str, Any] = field(default_factory=dict)
    """Live experts by name (an LLM router or fuser calls one of them)."""
    home: Path = Path(".expertgraph")


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
    from expertgraph.policies.embeddings.embedder import SentenceTransformerEmbedder
    from expertgraph.policies.routing.embedding import EmbeddingRouter

    return EmbeddingRouter(
        SentenceTransformerEmbedder(options.embedder),
        top_k=options.top_k,
        w_max=options.w_max,
        avoid_failing=options.avoid_failing,
    )


def _fixed(options: FixedOptions, ctx: BuildContext) -> Policy:
    from expertgraph.policies.routing.fixed import FixedPolicy

    missing = [n for n in options.experts if n not in ctx.experts]
    if missing:
        raise ConfigError(
            f"policy.experts names unknown experts {missing}; configured: {sorted(ctx.experts)}",
            field="policy.experts",
        )
    return FixedPolicy(options.experts)


def _all(options: NoOptions, ctx: BuildContext) -> Policy:
    from expertgraph.policies.routing.fixed import AllExperts

    return AllExperts()


def _majority(options: NoOptions, ctx: BuildContext) -> Aggregator:
    from expertgraph.policies.aggregation.voting import MajorityVote

    return MajorityVote()


# ---- aggregators: weighted, ahead-by-k, medoid, fusion, judge ------------------------------


class ReliabilityOptions(_Options):
    reliability: dict[str, float] | None = None
    """Expert -> measured accuracy (0..1)."""
    reliability_file: str | None = None
    """A JSON file {expert: accuracy}; relative paths resolve against the home folder."""
    red_flags: RedFlags | None = None


class WeightedOptions(ReliabilityOptions):
    weights: Literal["router", "reliability"] = "reliability"
    default_reliability: float = Field(0.6, gt=0, lt=1)


class AheadByKOptions(ReliabilityOptions):
    k: float = Field(2, gt=0)
    max_draws: int = Field(10, ge=1)
    source: Literal["next-expert", "same-expert"] = "same-expert"
    resample: bool = True
    temperature: float = Field(0.7, ge=0)
    weights: Literal["none", "router", "reliability"] = "none"


class MedoidOptions(_Options):
    embedder: str = "all-minilm-l6-v2"
    red_flags: RedFlags | None = None


class FusionOptions(_Options):
    expert: str
    max_tokens: int = Field(512, ge=1)
    temperature: float = Field(0.0, ge=0)
    max_candidate_chars: int | None = Field(4000, ge=1)
    skip_unanimous: bool = True


class JudgeOptions(_Options):
    expert: str
    mode: Literal["listwise", "pairwise"] = "listwise"
    swap: bool = False
    max_tokens: int = Field(256, ge=1)
    max_candidate_chars: int | None = Field(4000, ge=1)
    structured: bool | None = None
    """Ask for a JSON-schema verdict; unset: when the expert supports it."""


def _reliability(options: ReliabilityOptions, ctx: BuildContext) -> dict[str, float]:
    from expertgraph.policies.aggregation.voting import load_reliability

    table: dict[str, float] = {}
    if options.reliability_file:
        path = Path(options.reliability_file)
        table.update(load_reliability(path if path.is_absolute() else ctx.home / path))
    table.update(options.reliability or {})
    return table


def _weighted(options: WeightedOptions, ctx: BuildContext) -> Aggregator:
    from expertgraph.policies.aggregation.voting import WeightedVote

    return WeightedVote(
        options.weights,
        _reliability(options, ctx),
        default_reliability=options.default_reliability,
        red_flags=options.red_flags,
    )


def _ahead_by_k(options: AheadByKOptions, ctx: BuildContext) -> Aggregator:
    from expertgraph.policies.aggregation.ahead_by_k import AheadByK

    return AheadByK(
        options.k,
        max_draws=options.max_draws,
        source=options.source,
        resample=options.resample,
        temperature=options.temperature,
        weights=options.weights,
        reliability=_reliability(options, ctx),
        red_flags=options.red_flags,
    )


def _medoid(options: MedoidOptions, ctx: BuildContext) -> Aggregator:
    from expertgraph.policies.aggregation.medoid import MedoidAggregator
    from expertgraph.policies.embeddings.embedder import SentenceTransformerEmbedder

    return MedoidAggregator(
        SentenceTransformerEmbedder(options.embedder), red_flags=options.red_flags
    )


def _fusion(options: FusionOptions, ctx: BuildContext) -> Aggregator:
    from expertgraph.policies.aggregation.fusion import LLMFusion, expert_by_name

    return LLMFusion(
        expert_by_name(ctx.experts, options.expert, "aggregator.expert"),
        max_tokens=options.max_tokens,
        temperature=options.temperature,
        max_candidate_chars=options.max_candidate_chars,
        skip_unanimous=options.skip_unanimous,
    )


def _judge(options: JudgeOptions, ctx: BuildContext) -> Aggregator:
    from expertgraph.policies.aggregation.fusion import expert_by_name
    from expertgraph.policies.aggregation.judge import JudgeRanking

    return JudgeRanking(
        expert_by_name(ctx.experts, options.expert, "aggregator.expert"),
        mode=options.mode,
        swap=options.swap,
        max_tokens=options.max_tokens,
        max_candidate_chars=options.max_candidate_chars,
        structured=options.structured,
    )


# ---- online policies: LLM router, cascade, random, oracle (in routing/)


class LLMRouterOptions(_Options):
    expert: str = Field(min_length=1)
    """The configured expert that acts as the router."""
    fallback: dict[str, Any] = Field(default_factory=lambda: {"name": "embedding"})
    """The policy used when the router's answer is invalid: ``{name: ..., ...options}``."""
    top_k: int | None = Field(None, ge=1)
    allow_answer: bool = False
    max_output_chars: int = Field(2000, ge=1)
    max_raw_chars: int = Field(500, ge=0)
    params: dict[str, Any] = Field(default_factory=dict)
    structured: bool | None = None
    """Ask for a JSON-schema decision; unset: when the expert supports it."""


class CascadeOptions(_Options):
    path: str | None = None
    """A trained cascade's folder (`expertgraph train --policy cascade`); relative to home if
    not found. It brings its own aggregator and takes no other option."""
    order: list[str] | None = None
    predictor: dict[str, Any] | None = None
    """A policy exposing ``predict_quality`` (e.g. a trained one): ``{name: ..., ...options}``."""
    threshold: float | None = None


class CascadeAggregatorOptions(_Options):
    path: str | None = None
    """A trained cascade's folder: its stages and stopping rule (the policy's own aggregator)."""
    order: list[str] | None = None
    samples: int = Field(2, ge=0)
    temperature: float = Field(0.7, ge=0)
    threshold: float = Field(1.0, ge=0, le=1)
    sample_last: bool = False


class RandomOptions(_Options):
    seed: int = 0
    top_k: int | None = Field(None, ge=1)


class OracleOptions(_Options):
    allow: bool = False
    """The oracle reads the task's graded answers: evaluation only, refused unless true."""
    examples: str | None = None
    """A JSONL file of routing examples to look tasks up in (by id or prompt)."""
    scores_key: str = "scores"
    costs_key: str = "costs"
    lam: float = Field(0.0, ge=0)
    top_k: int | None = Field(None, ge=1)


def _check_names(names: list[str] | None, ctx: BuildContext, field_name: str) -> None:
    missing = [n for n in names or [] if ctx.experts and n not in ctx.experts]
    if missing:
        raise ConfigError(
            f"{field_name} names unknown experts {missing}; configured: {sorted(ctx.experts)}",
            field=field_name,
        )


def _sub_policy(spec: dict[str, Any], ctx: BuildContext, field_name: str) -> Policy:
    options = dict(spec)
    name = options.pop("name", None)
    if not isinstance(name, str) or not name:
        raise ConfigError(
            f"{field_name}.name: a policy name is required", field=f"{field_name}.name"
        )
    return build_policy(name, options, ctx)


def _llm_router(options: LLMRouterOptions, ctx: BuildContext) -> Policy:
    from expertgraph.policies.routing.llm_router import LLMRouter

    if options.expert not in ctx.experts:
        raise ConfigError(
            f"policy.expert: no configured expert {options.expert!r} to act as router; "
            f"configured: {sorted(ctx.experts)}",
            field="policy.expert",
        )
    return LLMRouter(
        ctx.experts[options.expert],
        _sub_policy(options.fallback, ctx, "policy.fallback"),
        top_k=options.top_k,
        allow_answer=options.allow_answer,
        max_output_chars=options.max_output_chars,
        max_raw_chars=options.max_raw_chars,
        params=options.params,
        structured=options.structured,
    )


def _trained_cascade(path_text: str, ctx: BuildContext, field_name: str) -> Any:
    """Load a trained cascade for the configured experts; errors name the field."""
    from expertgraph.core.errors import PolicyError
    from expertgraph.policies.routing.cascade import LearnedCascade

    path = Path(path_text).expanduser()
    if not path.is_absolute() and not path.exists():
        path = ctx.home / path
    try:
        return LearnedCascade.load(path, list(ctx.experts) if ctx.experts else None)
    except PolicyError as exc:
        raise ConfigError(f"{field_name}: {exc}", path=str(path), field=field_name) from None


def _cascade(options: CascadeOptions, ctx: BuildContext) -> Policy:
    from expertgraph.policies.routing.cascade import CascadePolicy, QualityPredictor

    if options.path is not None:
        others = sorted(k for k in options.model_fields_set if k != "path")
        if others:
            raise ConfigError(
                f"policy.{others[0]}: a trained cascade (policy.path) takes no other option",
                field=f"policy.{others[0]}",
            )
        return _trained_cascade(options.path, ctx, "policy.path")
    _check_names(options.order, ctx, "policy.order")
    predictor = None
    if options.predictor is not None:
        predictor = _sub_policy(options.predictor, ctx, "policy.predictor")
        if not isinstance(predictor, QualityPredictor):
            raise ConfigError(
                f"policy.predictor: {type(predictor).__name__} has no predict_quality/experts",
                field="policy.predictor",
            )
    if (predictor is None) != (options.threshold is None):
        raise ConfigError(
            "policy.threshold: give a predictor and a threshold together", field="policy.threshold"
        )
    return CascadePolicy(options.order, predictor=predictor, threshold=options.threshold)


def _cascade_aggregator(options: CascadeAggregatorOptions, ctx: BuildContext) -> Aggregator:
    from expertgraph.policies.aggregation.cascade import CascadeAggregator
    from expertgraph.policies.routing.cascade import cascade_order

    if options.path is not None:
        return _trained_cascade(options.path, ctx, "aggregator.path").paired_aggregator
    _check_names(options.order, ctx, "aggregator.order")
    order = options.order
    if order is None and ctx.experts:
        order = cascade_order({n: e.card for n, e in ctx.experts.items()})
    return CascadeAggregator(
        order,
        samples=options.samples,
        temperature=options.temperature,
        threshold=options.threshold,
        sample_last=options.sample_last,
    )


def _random(options: RandomOptions, ctx: BuildContext) -> Policy:
    from expertgraph.policies.routing.baselines import RandomPolicy

    return RandomPolicy(options.seed, top_k=options.top_k)


def _oracle(options: OracleOptions, ctx: BuildContext) -> Policy:
    from expertgraph.core.types import RoutingExample
    from expertgraph.policies.routing.baselines import OraclePolicy

    if not options.allow:
        raise ConfigError(
            "policy.allow: the oracle reads the graded answers of each task and is for "
            "evaluation only; set allow: true in an evaluation config",
            field="policy.allow",
        )
    kwargs: dict[str, Any] = dict(
        allow=True,
        scores_key=options.scores_key,
        costs_key=options.costs_key,
        lam=options.lam,
        top_k=options.top_k,
    )
    if options.examples is None:
        return OraclePolicy(**kwargs)
    path = Path(options.examples)
    if not path.is_absolute():
        path = ctx.home / path if not path.exists() else path
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
        examples = [RoutingExample.model_validate_json(line) for line in lines if line.strip()]
    except (OSError, ValidationError) as exc:
        raise ConfigError(
            f"policy.examples: cannot read {path}: {exc}", path=str(path), field="policy.examples"
        ) from exc
    return OraclePolicy.from_examples(examples, **kwargs)


class LearnedOptions(_Options):
    path: str = Field(min_length=1)
    """The trained artifact's folder (from `expertgraph train`); relative to home if not found."""
    lam: float | None = Field(None, ge=0)
    target_cost: float | None = Field(None, ge=0)
    top_k: int | None = Field(None, ge=1)
    costs: dict[str, float] | None = None
    avoid_failing: bool = True


def _learned(kind: str) -> Callable[[LearnedOptions, BuildContext], Policy]:
    def build(options: LearnedOptions, ctx: BuildContext) -> Policy:
        from expertgraph.core.errors import PolicyError
        from expertgraph.policies.routing.learned import LearnedRouter

        if options.lam is not None and options.target_cost is not None:
            raise ConfigError("policy: give lam or target_cost, not both", field="policy.lam")
        path = Path(options.path).expanduser()
        if not path.is_absolute() and not path.exists():
            path = ctx.home / path
        try:
            router = LearnedRouter.load(
                path,
                experts=list(ctx.experts) if ctx.experts else None,
                home=ctx.home,
                lam=options.lam,
                target_cost=options.target_cost,
                top_k=options.top_k,
                costs=options.costs,
                kind=kind,
            )
        except PolicyError as exc:
            raise ConfigError(f"policy.path: {exc}", path=str(path), field="policy.path") from exc
        router.avoid_failing = options.avoid_failing
        return router

    return build


@dataclass(frozen=True)
class Spec:
    options: type[BaseModel]
    build: Callable[[Any, BuildContext], Any]
    summary: str


# Static tables (not mutated at run time): names a config file may use.
POLICIES: dict[str, Spec] = {
    "embedding": Spec(
        EmbeddingOptions, _embedding, "zero-shot similarity of the step to expert cards"
    ),
    "fixed": Spec(FixedOptions, _fixed, "always the named expert(s)"),
    "all": Spec(NoOptions, _all, "every expert answers every step"),
    "llm-router": Spec(
        LLMRouterOptions,
        _llm_router,
        "an expert names the next expert(s) or finishes; validated, with fallback",
    ),
    "cascade": Spec(
        CascadeOptions,
        _cascade,
        "cheapest adequate expert first (pair with the cascade aggregator)",
    ),
    "random": Spec(RandomOptions, _random, "seeded uniform random choice (baseline)"),
    "oracle": Spec(OracleOptions, _oracle, "best expert from graded answers; evaluation only"),
    "knn": Spec(
        LearnedOptions,
        _learned("knn"),
        "trained: distance-weighted kNN over labelled prompts, quality - lam*cost",
    ),
    "cluster": Spec(
        LearnedOptions,
        _learned("cluster"),
        "trained: k-means clusters, per-cluster expert ranking (Avengers-Pro)",
    ),
    "logreg": Spec(
        LearnedOptions,
        _learned("logreg"),
        "trained: per-expert logistic success predictors on embeddings",
    ),
    "mlp": Spec(
        LearnedOptions, _learned("mlp"), "trained: small MLP predicting every expert's success"
    ),
    "mf": Spec(
        LearnedOptions, _learned("mf"), "trained: matrix factorisation (RouteLLM mf, N experts)"
    ),
    "task": Spec(
        LearnedOptions, _learned("task"), "trained: task classifier x per-task expert quality"
    ),
    "ensemble": Spec(
        LearnedOptions,
        _learned("ensemble"),
        "trained: mean of several trained routers' predictions",
    ),
}
AGGREGATORS: dict[str, Spec] = {
    "majority": Spec(NoOptions, _majority, "plurality over normalised answers"),
    "weighted": Spec(
        WeightedOptions, _weighted, "plurality weighted by reliability or router score"
    ),
    "ahead-by-k": Spec(
        AheadByKOptions, _ahead_by_k, "draw until one answer leads by k votes (MAKER)"
    ),
    "medoid": Spec(MedoidOptions, _medoid, "the candidate most similar to all others (embeddings)"),
    "fusion": Spec(FusionOptions, _fusion, "an expert writes one answer from the candidates"),
    "judge": Spec(JudgeOptions, _judge, "an expert ranks the candidates; the top one wins"),
    "cascade": Spec(
        CascadeAggregatorOptions,
        _cascade_aggregator,
        "self-consistency check, escalate to the next expert on disagreement",
    ),
}


def _build(
    kind: str, table: dict[str, Spec], name: str, options: Mapping[str, Any], ctx: BuildContext
) -> Any:
    if ":" in name:  # a user's own class, "package.module:Class", built with its options
        module_name, _, attr = name.partition(":")
        try:
            cls = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(
                f"{kind}.name: cannot import {name!r}: {exc}", field=f"{kind}.name"
            ) from exc
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


def build_policy(
    name: str, options: Mapping[str, Any] | None = None, ctx: BuildContext | None = None
) -> Policy:
    """Build a routing policy by its config name (or ``module:Class``).

    Every policy also takes ``sticky_margin``: keep the previous step's expert(s) unless
    another wins by that margin (see :class:`~expertgraph.policies.routing.sticky.StickyPolicy`).
    """
    opts = dict(options or {})
    margin = opts.pop("sticky_margin", None)
    policy = _build("policy", POLICIES, name, opts, ctx or BuildContext())
    if margin is None:
        return policy
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or margin < 0:
        raise ConfigError(
            f"policy.sticky_margin: a number >= 0 is required, got {margin!r}",
            field="policy.sticky_margin",
        )
    from expertgraph.policies.routing.sticky import StickyPolicy

    return StickyPolicy(policy, float(margin))


def build_aggregator(
    name: str, options: Mapping[str, Any] | None = None, ctx: BuildContext | None = None
) -> Aggregator:
    """Build an aggregator by its config name (or ``module:Class``)."""
    return _build("aggregator", AGGREGATORS, name, options or {}, ctx or BuildContext())
