"""expertgraph inside other tools: an OpenAI-compatible server, LangChain, LiteLLM and LangGraph."""

from typing import TYPE_CHECKING

from expertgraph.core._lazy import lazy_exports

if TYPE_CHECKING:
    from expertgraph.orchestrator.integrations._chat import answer_experts
    from expertgraph.orchestrator.integrations.catalog import ModelCatalog, ServedModel
    from expertgraph.orchestrator.integrations.langchain import ChatExpertGraph
    from expertgraph.orchestrator.integrations.langgraph import (
        add_orchestrator_node,
        orchestrator_node,
    )
    from expertgraph.orchestrator.integrations.litellm import ExpertGraphLLM
    from expertgraph.orchestrator.integrations.server import (
        ServerThread,
        ServeSettings,
        create_app,
        serve,
    )

_EXPORTS = {
    "ChatExpertGraph": "expertgraph.orchestrator.integrations.langchain",
    "ExpertGraphLLM": "expertgraph.orchestrator.integrations.litellm",
    "ModelCatalog": "expertgraph.orchestrator.integrations.catalog",
    "ServeSettings": "expertgraph.orchestrator.integrations.server",
    "ServedModel": "expertgraph.orchestrator.integrations.catalog",
    "ServerThread": "expertgraph.orchestrator.integrations.server",
    "add_orchestrator_node": "expertgraph.orchestrator.integrations.langgraph",
    "answer_experts": "expertgraph.orchestrator.integrations._chat",
    "create_app": "expertgraph.orchestrator.integrations.server",
    "orchestrator_node": "expertgraph.orchestrator.integrations.langgraph",
    "serve": "expertgraph.orchestrator.integrations.server",
}

__all__ = [
    "ChatExpertGraph",
    "ExpertGraphLLM",
    "ModelCatalog",
    "ServeSettings",
    "ServedModel",
    "ServerThread",
    "add_orchestrator_node",
    "answer_experts",
    "create_app",
    "orchestrator_node",
    "serve",
]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
