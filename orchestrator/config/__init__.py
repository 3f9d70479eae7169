"""The one configuration file (YAML or TOML): its schema, loading with file/line/field errors,
and building.
"""

from typing import TYPE_CHECKING

from expertgraph.core._lazy import lazy_exports

if TYPE_CHECKING:
    from expertgraph.orchestrator.config.build import build_expert, build_from_config
    from expertgraph.orchestrator.config.schema import (
        AggregatorConfig,
        APIExpertConfig,
        CallableExpertConfig,
        ExpertGraphConfig,
        LocalExpertConfig,
        PolicyConfig,
        TraceConfig,
        load_config,
        parse_config,
    )

_EXPORTS = {
    "APIExpertConfig": "expertgraph.orchestrator.config.schema",
    "AggregatorConfig": "expertgraph.orchestrator.config.schema",
    "CallableExpertConfig": "expertgraph.orchestrator.config.schema",
    "ExpertGraphConfig": "expertgraph.orchestrator.config.schema",
    "LocalExpertConfig": "expertgraph.orchestrator.config.schema",
    "PolicyConfig": "expertgraph.orchestrator.config.schema",
    "TraceConfig": "expertgraph.orchestrator.config.schema",
    "build_expert": "expertgraph.orchestrator.config.build",
    "build_from_config": "expertgraph.orchestrator.config.build",
    "load_config": "expertgraph.orchestrator.config.schema",
    "parse_config": "expertgraph.orchestrator.config.schema",
}

__all__ = [
    "APIExpertConfig",
    "AggregatorConfig",
    "CallableExpertConfig",
    "ExpertGraphConfig",
    "LocalExpertConfig",
    "PolicyConfig",
    "TraceConfig",
    "build_expert",
    "build_from_config",
    "load_config",
    "parse_config",
]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
