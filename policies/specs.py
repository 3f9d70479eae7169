"""Policies and aggregators from what a user names: a registry name, a spec file, a trained
folder, or the options a recorded run's configuration gave them.

The trace tools (``expertgraph traces``) use these to rebuild live aggregators and policies for
attribution, replay and export without calling a model.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from expertgraph.core.errors import ConfigError, PolicyError
from expertgraph.core.protocols import Aggregator, Policy
from expertgraph.policies.registry import POLICIES, BuildContext, build_aggregator, build_policy
from expertgraph.traces.attribution import RunAttribution, attribute_run
from expertgraph.traces.schema import ExpertInfo
from expertgraph.traces.store import RunTrace, TraceStore


def _snapshot_options(trace: RunTrace | None, kind: str, name: str) -> dict[str, Any]:
    """The options the run's config gave ``kind`` (policy/aggregator) when it was ``name``."""
    if trace is None:
        return {}
    entry = trace.start.config.get(kind)
    if isinstance(entry, dict) and entry.get("name") == name:
        return {k: v for k, v in entry.items() if k != "name"}
    return {}


def aggregator_factory(trace: RunTrace | None = None) -> Callable[[str], Aggregator]:
    """``name -> Aggregator`` built from the registry, with the run's recorded options."""

    def build(name: str) -> Aggregator:
        return build_aggregator(name, _snapshot_options(trace, "aggregator", name), BuildContext())

    return build


def attribute_recorded(
    trace: RunTrace, labels: dict[Any, Any] | None = None, **kwargs: Any
) -> RunAttribution:
    """Shapley attribution of a run, replaying its recorded aggregator with recorded options."""
    return attribute_run(trace, aggregator_factory(trace), labels=labels, **kwargs)


def _load_spec_file(path: Path) -> dict[str, Any]:
    text = path.read_text(encoding="utf-8")
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot parse: {exc}", path=str(path)) from exc
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: expected a mapping with 'policy' and/or 'aggregator'", path=str(path)
        )
    return data


def _spec(entry: Any, where: str) -> tuple[str, dict[str, Any]]:
    if isinstance(entry, str):
        return entry, {}
    if isinstance(entry, dict) and isinstance(entry.get("name"), str):
        return entry["name"], {k: v for k, v in entry.items() if k != "name"}
    raise ConfigError(f"{where}: expected a name or a mapping with 'name'", field=where)


def recorded_experts(directory: Path) -> dict[str, ExpertInfo]:
    """Name -> recorded ExpertInfo of every expert in a trace directory's runs.

    Replay builds policies with these instead of live experts: no model is called, and a
    policy that tries to call one fails on that step, which is reported.
    """
    experts: dict[str, ExpertInfo] = {}
    for trace in TraceStore(directory, index=False):
        for info in trace.start.experts:
            experts.setdefault(info.name, info)
    return experts


def _artifact_kind(path: Path) -> str:
    """The registered policy that loads the trained folder ``path``: the kind in its meta."""
    from expertgraph.policies.learning import load_artifact

    try:
        kind = load_artifact(path).kind
    except PolicyError as exc:
        raise ConfigError(
            f"--policy {str(path)!r} is not a .yaml/.json/.toml spec nor a trained folder: {exc}",
            path=str(path),
            field="policy",
        ) from exc
    if kind not in POLICIES:
        raise ConfigError(
            f"--policy {str(path)!r}: a trained {kind!r} router, which no registered policy "
            f"loads (known: {', '.join(sorted(POLICIES))})",
            path=str(path),
            field="policy",
        )
    return kind


def build_replay_targets(
    policy: str | None,
    aggregator: str | None,
    options: dict[str, Any],
    experts: dict[str, Any] | None = None,
) -> tuple[Policy | None, Aggregator | None]:
    """Live policy and aggregator for ``traces replay`` from names, spec files or a trained folder.

    A trained folder (``expertgraph train --out``) is built as the policy of its kind.
    """
    ctx = BuildContext(experts=dict(experts or {}))
    policy_obj = aggregator_obj = None
    aggregator_spec: tuple[str, dict[str, Any]] | None = None
    if aggregator:
        aggregator_spec = (aggregator, {})
    if policy:
        path = Path(policy)
        if path.is_file() and path.suffix in (".yaml", ".yml", ".json", ".toml"):
            data = _load_spec_file(path)
            if "policy" in data or "aggregator" in data:
                if "policy" in data:
                    name, opts = _spec(data["policy"], f"{path}: policy")
                    policy_obj = build_policy(name, {**opts, **options}, ctx)
                if "aggregator" in data and aggregator_spec is None:
                    aggregator_spec = _spec(data["aggregator"], f"{path}: aggregator")
            else:
                name, opts = _spec(data, str(path))
                policy_obj = build_policy(name, {**opts, **options}, ctx)
        elif path.exists():
            policy_obj = build_policy(_artifact_kind(path), {"path": str(path), **options}, ctx)
        else:
            policy_obj = build_policy(policy, options, ctx)
    if aggregator_spec is not None:
        aggregator_obj = build_aggregator(aggregator_spec[0], aggregator_spec[1], ctx)
    if policy_obj is None and aggregator_obj is None:
        raise ConfigError("traces replay needs --policy and/or --aggregator", field="policy")
    return policy_obj, aggregator_obj
