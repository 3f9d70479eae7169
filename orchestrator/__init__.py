"""The orchestrator: a LangGraph graph that routes each step to experts, votes, and traces.

Importing this package imports neither torch nor litellm.
"""

from expertgraph.orchestrator.config import ExpertGraphConfig, load_config, parse_config
from expertgraph.orchestrator.orchestrator import Orchestrator, RunEvent

__all__ = ["ExpertGraphConfig", "Orchestrator", "RunEvent", "load_config", "parse_config"]
