"""expertgraph as a LiteLLM custom provider: ``litellm.completion(model="expertgraph/<config>")``.

In process::

    from expertgraph.orchestrator.integrations.litellm import register

    register(configs=["expertgraph.yaml"])        # or register(catalog) / register(orchestrator)
    litellm.completion(model="expertgraph/local", messages=[{"role": "user", "content": "Hi"}])

Behind the LiteLLM proxy (its own keys, budgets and logging), ``config.yaml``::

    litellm_settings:
      custom_provider_map:
        - {provider: expertgraph, custom_handler: expertgraph.orchestrator.integrations.litellm.proxy_handler}
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
from expertgraph.core._sync import run_sync
from expertgraph.core.errors import ConfigError
from expertgraph.core.types import RunResult, Task
from expertgraph.orchestrator.integrations._chat import (
    NoAnswerError,
    StructuredOutput,
    answer_experts,
    chat_task,
    finish_reason,
    reply_model,
    stream_pieces,
    truncate_at_stop,
)
from expertgraph.orchestrator.integrations.catalog import PREFIX, ModelCatalog, ServedModel
from expertgraph.orchestrator.integrations.openai_schema import ChatMessage
from expertgraph.orchestrator.orchestrator import Orchestrator

litellm = import_litellm()
from litellm import CustomLLM  # noqa: E402 - after the offline-safe import above
from litellm.types.utils import GenericStreamingChunk, ModelResponse, Usage  # noqa: E402

CONFIG_ENV = "EXPERTGRAPH_CONFIG"


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
        """The served configurations: given, or loaded once from ``configs`` / ``EXPERTGRAPH_CONFIG``."""
        if self._catalog is None:
            with self._lock:
                if self._catalog is None:
                    configs = self._configs
                    if configs is None:
                        raw = os.environ.get(CONFIG_ENV, "")
                        configs = [p for p in raw.split(os.pathsep) if p]
                    if not configs:
                        raise ConfigError(
                            f"expertgraph provider: no configuration; pass configs= to register() or set {CONFIG_ENV}",
                            field=CONFIG_ENV,
                        )
                    self._catalog = ModelCatalog.from_paths(configs, aliases=self._aliases)
        return self._catalog

    # ---- request -> task -----------------------------------------------------------------------

    def _prepare(self, model: str, messages: list[Any], optional_params: Mapping[str, Any]) -> tuple[ServedModel, Task, list[str]]:
        served = self.catalog().resolve(model if model.startswith(PREFIX) else f"{PREFIX}/{model}")
        stop = optional_params.get("stop")
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        fmt = optional_params.get("response_format")
        structured: StructuredOutput | None = None
        if isinstance(fmt, Mapping) and fmt.get("type") in ("json_object", "json_schema"):
            spec = fmt.get("json_schema") or {}
            structured = StructuredOutput(kind=fmt["type"], schema=spec.get("schema"), name=spec.get("name"))
        params = {
            "max_tokens": optional_params.get("max_completion_tokens") or optional_params.get("max_tokens"),
            "temperature": optional_params.get("temperature"),
            "top_p": optional_params.get("top_p"),
            "seed": optional_params.get("seed"),
            "stop": stops or None,
        }
        core = [ChatMessage.model_validate(m if isinstance(m, Mapping) else dict(m)).to_core() for m in messages]
        task = chat_task(core, params=params, structured=structured, metadata={"source": "litellm", "model": served.id})
        return served, task, stops

    # ---- run -> response -----------------------------------------------------------------------

    @staticmethod
    def _fill(response: ModelResponse, served: ServedModel, result: RunResult, stops: list[str]) -> ModelResponse:
        if result.answer is None:
            raise NoAnswerError(result)
        text, stopped = truncate_at_stop(result.answer, stops)
        choice = response.choices[0]
        choice.message.content = text  # type: ignore[union-attr]
        choice.finish_reason = "stop" if stopped else finish_reason(result)
        response.model = reply_model(served.id, result)
        response.id = f"chatcmpl-{result.run_id}"
        u = result.usage
        response.usage = Usage(  # type: ignore[attr-defined]
            prompt_tokens=u.input_tokens, completion_tokens=u.output_tokens, total_tokens=u.total_tokens
        )
        response._hidden_params["expertgraph"] = {
            "run_id": result.run_id,
            "experts": answer_experts(result),
            "trace_path": result.trace_path,
            "cost": u.cost,
            "calls": u.calls,
        }
        return response

    @staticmethod
    def _chunks(served: ServedModel, result: RunResult, stops: list[str]) -> Iterator[GenericStreamingChunk]:
        if result.answer is None:
            raise NoAnswerError(result)
        text, stopped = truncate_at_stop(result.answer, stops)
        pieces = stream_pieces(text)
        u = result.usage
        # LiteLLM stamps stream chunks with the requested model; the experts that answered
        # ride on the first chunk's delta.provider_specific_fields instead.
        about = {"model": reply_model(served.id, result), "run_id": result.run_id, "experts": answer_experts(result)}
        for i, piece in enumerate(pieces):
            last = i == len(pieces) - 1
            yield GenericStreamingChunk(
                provider_specific_fields=about if i == 0 else None,
                text=piece,
                is_finished=last,
                finish_reason=("stop" if stopped else finish_reason(result)) if last else "",
                usage={
                    "prompt_tokens": u.input_tokens,
                    "completion_tokens": u.output_tokens,
                    "total_tokens": u.total_tokens,
                }
                if last
                else None,
                index=0,
                tool_use=None,
            )

    def completion(self, model: str, messages: list[Any], *args: Any, **kwargs: Any) -> ModelResponse:  # type: ignore[override]
        served, task, stops = self._prepare(model, messages, kwargs.get("optional_params") or {})
        result = run_sync(served.orchestrator.arun(task))
        return self._fill(kwargs["model_response"], served, result, stops)

    async def acompletion(self, model: str, messages: list[Any], *args: Any, **kwargs: Any) -> ModelResponse:  # type: ignore[override]
        served, task, stops = self._prepare(model, messages, kwargs.get("optional_params") or {})
        result = await served.orchestrator.arun(task)
        return self._fill(kwargs["model_response"], served, result, stops)

    def streaming(self, model: str, messages: list[Any], *args: Any, **kwargs: Any) -> Iterator[GenericStreamingChunk]:  # type: ignore[override]
        served, task, stops = self._prepare(model, messages, kwargs.get("optional_params") or {})
        result = run_sync(served.orchestrator.arun(task))
        yield from self._chunks(served, result, stops)

    async def astreaming(self, model: str, messages: list[Any], *args: Any, **kwargs: Any) -> AsyncIterator[GenericStreamingChunk]:  # type: ignore[override]
        served, task, stops = self._prepare(model, messages, kwargs.get("optional_params") or {})
        result = await served.orchestrator.arun(task)
        for chunk in self._chunks(served, result, stops):
            yield chunk


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
