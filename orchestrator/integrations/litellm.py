"""expertgraph as a LiteLLM custom provider: ``litellm.completion(model="expertgraph/<config>")``.

In process::

    from expertgraph.orchestrator.integrations.litellm import register

    register(configs=["expertgraph.yaml"])        # or register(catalog) / register(orchestrator)
    litellm.completion(model="expertgraph/local", messages=[{"role": "user", "content": "Hi"}])

Behind the LiteLLM proxy (its own keys, budgets and logging), ``config.yaml``::

    litellm_settings:
      custom_provider_map:
        - provider: expertgraph
          custom_handler: expertgraph.orchestrator.integrations.litellm.proxy_handler
    model_list:
      - model_name: routed
        litellm_params: {model: expertgraph/local}
    general_settings:
      master_key: sk-...

with ``EXPERTGRAPH_CONFIG=path/to/config.yaml`` (several: separated by ``:``) in the proxy's
environment. The model after ``expertgraph/`` is resolved like the HTTP server resolves it
(:mod:`.catalog`). The response's ``model`` names the experts whose answer was returned and
``usage`` sums every expert call of the run.

This module imports litellm; ``expertgraph.orchestrator`` does not import it.
"""

from __future__ import annotations

import os
import threading
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from expertgraph.agents._litellm import import_litellm
from expertgraph.core.errors import ConfigError
from expertgraph.core.types import RunResult, Task
from expertgraph.orchestrator.integrations._chat import (
    ChatReply,
    chat_reply,
    chat_task,
    openai_messages,
    stream_pieces,
)
from expertgraph.orchestrator.integrations.catalog import PREFIX, ModelCatalog, ServedModel
from expertgraph.orchestrator.orchestrator import Orchestrator

litellm = import_litellm()
from litellm import CustomLLM  # noqa: E402 - after the offline-safe import above
from litellm.types.utils import (  # noqa: E402
    ChatCompletionMessageToolCall,
    GenericStreamingChunk,
    ModelResponse,
    Usage,
)

CONFIG_ENV = "EXPERTGRAPH_CONFIG"
# OpenAI's legacy function calling; ``tools`` replaced it and is what experts are offered.
_LEGACY_KEYS = frozenset({"functions", "function_call"})


class ExpertGraphLLM(CustomLLM):
    """Runs a routed task for each LiteLLM completion; sync, async and streaming."""

    def __init__(
        self,
        catalog: ModelCatalog | Orchestrator | None = None,
        *,
        configs: Sequence[str | Path] | None = None,
        aliases: bool = True,
    ) -> None:
        super().__init__()
        if isinstance(catalog, Orchestrator):
            catalog = ModelCatalog.from_orchestrators(catalog)
        self._catalog = catalog
        self._configs = list(configs) if configs is not None else None
        self._aliases = aliases
        self._lock = threading.Lock()

    def catalog(self) -> ModelCatalog:
        """The served configurations: given, or loaded once from ``configs`` or the environment."""
        if self._catalog is None:
            with self._lock:
                if self._catalog is None:
                    configs = self._configs
                    if configs is None:
                        raw = os.environ.get(CONFIG_ENV, "")
                        configs = [p for p in raw.split(os.pathsep) if p]
                    if not configs:
                        raise ConfigError(
                            "expertgraph provider: no configuration; "
                            f"pass configs= to register() or set {CONFIG_ENV}",
                            field=CONFIG_ENV,
                        )
                    self._catalog = ModelCatalog.from_paths(configs, aliases=self._aliases)
        return self._catalog

    # ---- request -> task -----------------------------------------------------------------------

    def _prepare(
        self, model: str, messages: list[Any], kwargs: Mapping[str, Any]
    ) -> tuple[ServedModel, Task]:
        served = self.catalog().resolve(model if model.startswith(PREFIX) else f"{PREFIX}/{model}")
        optional = kwargs.get("optional_params") or {}
        legacy = sorted(k for k in optional if k in _LEGACY_KEYS)
        if legacy:
            raise ConfigError(
                f"expertgraph provider: {', '.join(legacy)} (legacy function calling) is not "
                "supported; pass tools= and tool_choice=",
                field=legacy[0],
            )
        params = dict(optional)
        task = chat_task(
            openai_messages(messages), params, metadata={"source": "litellm", "model": served.id}
        )
        return served, task

    # ---- run -> response -----------------------------------------------------------------------

    @staticmethod
    def _fill(response: ModelResponse, served: ServedModel, result: RunResult) -> ModelResponse:
        reply = chat_reply(served.id, result)
        choice = response.choices[0]
        message = choice.message  # type: ignore[union-attr]
        message.content = reply.text or (None if reply.tool_calls else "")
        if reply.tool_calls:
            message.tool_calls = [  # type: ignore[union-attr]
                ChatCompletionMessageToolCall(**call.openai()) for call in reply.tool_calls
            ]
        choice.finish_reason = reply.finish_reason
        response.model = reply.model
        response.id = f"chatcmpl-{result.run_id}"
        response.usage = Usage(**reply.openai_usage())  # type: ignore[attr-defined]
        response._hidden_params["expertgraph"] = {
            "run_id": result.run_id,
            "experts": reply.experts,
            "trace_path": result.trace_path,
            "cost": reply.usage.cost,
            "calls": reply.usage.calls,
        }
        return response

    @staticmethod
    def _chunks(served: ServedModel, result: RunResult) -> Iterator[GenericStreamingChunk]:
        reply = chat_reply(served.id, result)
        if reply.tool_calls:
            yield from _tool_chunks(reply, result)
            return
        pieces = stream_pieces(reply.text)
        # LiteLLM stamps stream chunks with the requested model; the experts that answered
        # ride on the first chunk's delta.provider_specific_fields instead.
        about = {"model": reply.model, "run_id": result.run_id, "experts": reply.experts}
        for i, piece in enumerate(pieces):
            last = i == len(pieces) - 1
            yield GenericStreamingChunk(
                provider_specific_fields=about if i == 0 else None,
                text=piece,
                is_finished=last,
                finish_reason=reply.finish_reason if last else "",
                usage=reply.openai_usage() if last else None,  # type: ignore[typeddict-item]
                index=0,
                tool_use=None,
            )

    def completion(  # type: ignore[override]
        self, model: str, messages: list[Any], *args: Any, **kwargs: Any
    ) -> ModelResponse:
        served, task = self._prepare(model, messages, kwargs)
        return self._fill(kwargs["model_response"], served, served.orchestrator.run(task))

    async def acompletion(  # type: ignore[override]
        self, model: str, messages: list[Any], *args: Any, **kwargs: Any
    ) -> ModelResponse:
        served, task = self._prepare(model, messages, kwargs)
        return self._fill(kwargs["model_response"], served, await served.orchestrator.arun(task))

    def streaming(  # type: ignore[override]
        self, model: str, messages: list[Any], *args: Any, **kwargs: Any
    ) -> Iterator[GenericStreamingChunk]:
        served, task = self._prepare(model, messages, kwargs)
        yield from self._chunks(served, served.orchestrator.run(task))

    async def astreaming(  # type: ignore[override]
        self, model: str, messages: list[Any], *args: Any, **kwargs: Any
    ) -> AsyncIterator[GenericStreamingChunk]:
        served, task = self._prepare(model, messages, kwargs)
        for chunk in self._chunks(served, await served.orchestrator.arun(task)):
            yield chunk


def _tool_chunks(reply: ChatReply, result: RunResult) -> Iterator[GenericStreamingChunk]:
    """A reply that ends on tool calls, streamed: one chunk per call (OpenAI's delta shape),
    the last one finished with ``tool_calls`` and the run's usage."""
    about = {"model": reply.model, "run_id": result.run_id, "experts": reply.experts}
    last = len(reply.tool_calls) - 1
    for i, call in enumerate(reply.tool_calls):
        wire = call.openai()
        yield GenericStreamingChunk(
            provider_specific_fields=about if i == 0 else None,
            text=reply.text if i == 0 else "",
            is_finished=i == last,
            finish_reason="tool_calls" if i == last else "",
            usage=reply.openai_usage() if i == last else None,  # type: ignore[typeddict-item]
            index=0,
            tool_use={  # type: ignore[typeddict-item]
                "id": wire["id"],
                "type": "function",
                "function": wire["function"],
                "index": i,
            },
        )


def register(
    catalog: ModelCatalog | Orchestrator | None = None,
    *,
    configs: Sequence[str | Path] | None = None,
    aliases: bool = True,
    provider: str = PREFIX,
) -> ExpertGraphLLM:
    """Make ``litellm.completion(model="expertgraph/<name>")`` run routed tasks in this process.

    Replaces an earlier registration of the same provider; returns the handler.
    """
    handler = ExpertGraphLLM(catalog, configs=configs, aliases=aliases)
    others = [p for p in litellm.custom_provider_map if p.get("provider") != provider]
    litellm.custom_provider_map = [*others, {"provider": provider, "custom_handler": handler}]
    return handler


# For the LiteLLM proxy's custom_provider_map (see the module docstring). Its catalog is a
# cache built on the first request from EXPERTGRAPH_CONFIG.
proxy_handler = ExpertGraphLLM()
