"""``ChatExpertGraph``: an expertgraph orchestrator as a LangChain chat model.

Chains, ``with_structured_output`` and agents that take a ``BaseChatModel`` can use routed
experts as their model, in process (no server)::

    from expertgraph.orchestrator.integrations.langchain import ChatExpertGraph

    llm = ChatExpertGraph(config="expertgraph.yaml")          # or orchestrator=Orchestrator(...)
    llm.invoke("What is the capital of France?").content
    llm.with_structured_output(Answer).invoke("...")           # JSON asked of the experts, parsed

* ``model`` picks the routing configuration like the HTTP server does (``expertgraph/<name>``,
  ``expertgraph/<policy>``); ``invoke(..., model=...)`` overrides it per call.
* ``response_metadata["model_name"]`` is ``expertgraph/<config>:<experts>`` (the experts whose
  answer was returned), ``usage_metadata`` sums every expert call of the run, and
  ``response_metadata`` carries ``run_id`` and ``trace_path``.
* Streaming yields the final answer in a few chunks once the run has decided it: votes need
  every candidate before anything can be said.
* ``bind_tools`` offers tools to the experts that can call them (card ``tools: true``); a run
  whose vote chooses to call tools ends there, and the calls come back as
  ``AIMessage.tool_calls`` (``tool_call_chunks`` when streamed) for the caller (an agent
  loop) to execute; ``ToolMessage`` results in the input go back to the experts.
* ``with_structured_output`` asks for JSON (the schema goes to the experts as a system
  instruction) and parses it; ``method="function_calling"`` binds the schema as a forced tool
  and parses the call's arguments instead.

This module imports ``langchain_core``; ``expertgraph.orchestrator`` does not import it.
"""

from __future__ import annotations

import json
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from operator import itemgetter
from typing import Any, Literal

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.language_models.base import LangSmithParams
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    ChatMessage,
    FunctionMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.messages.tool import ToolCall as LCToolCall
from langchain_core.messages.tool import ToolCallChunk, tool_call, tool_call_chunk
from langchain_core.output_parsers import JsonOutputParser, PydanticOutputParser
from langchain_core.output_parsers.openai_tools import (
    JsonOutputKeyToolsParser,
    PydanticToolsParser,
)
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable, RunnableMap, RunnablePassthrough
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_json_schema, convert_to_openai_tool
from langchain_core.utils.pydantic import is_basemodel_subclass
from pydantic import ConfigDict, Field, PrivateAttr

from expertgraph.core.tools import ToolCall
from expertgraph.core.types import Message, RunResult, Task
from expertgraph.orchestrator.integrations._chat import (
    ChatReply,
    chat_reply,
    chat_task,
    stream_pieces,
)
from expertgraph.orchestrator.integrations.catalog import ModelCatalog, ServedModel
from expertgraph.orchestrator.orchestrator import Orchestrator

_ROLES: dict[str, Literal["system", "user", "assistant", "tool"]] = {
    "system": "system",
    "developer": "system",
    "human": "user",
    "user": "user",
    "ai": "assistant",
    "assistant": "assistant",
    "tool": "tool",
    "function": "tool",
}


def to_core_messages(messages: Sequence[BaseMessage]) -> list[Message]:
    """LangChain messages as expertgraph messages (text content only)."""
    out: list[Message] = []
    for message in messages:
        if isinstance(message, SystemMessage):
            role = "system"
        elif isinstance(message, HumanMessage):
            role = "user"
        elif isinstance(message, AIMessage):
            role = "assistant"
        elif isinstance(message, (ToolMessage, FunctionMessage)):
            role = "tool"
        elif isinstance(message, ChatMessage) and message.role in _ROLES:
            role = _ROLES[message.role]
        elif message.type in _ROLES:
            role = _ROLES[message.type]
        else:
            raise ValueError(
                f"cannot send a {type(message).__name__} (role {message.type!r}) to experts"
            )
        calls = (
            [
                ToolCall(id=c.get("id") or f"call_{i}", name=c["name"], arguments=c["args"])
                for i, c in enumerate(message.tool_calls)
            ]
            if isinstance(message, AIMessage)
            else []
        )
        out.append(
            Message(
                role=role,
                content=message.text,
                name=getattr(message, "name", None),
                tool_calls=calls or None,
                tool_call_id=message.tool_call_id if isinstance(message, ToolMessage) else None,
            )
        )
    return out


def openai_tool_choice(choice: Any, tools: Sequence[Mapping[str, Any]]) -> Any:
    """LangChain's ``tool_choice`` in OpenAI's form: ``any``/``True`` force a call (the one
    tool when only one is bound), a tool's name names it, OpenAI's forms pass as they are."""
    if choice is None or isinstance(choice, Mapping) or choice in ("auto", "none", "required"):
        return choice
    if choice is True or choice == "any":
        if len(tools) == 1 and choice is True:
            return {"type": "function", "function": {"name": tools[0]["function"]["name"]}}
        return "required"
    if choice is False:
        return "none"
    if isinstance(choice, str):
        return {"type": "function", "function": {"name": choice}}
    raise ValueError(
        f"tool_choice must be a tool name, 'auto', 'any', 'none' or a mapping: {choice!r}"
    )


def _lc_calls(calls: Sequence[ToolCall]) -> list[LCToolCall]:
    return [tool_call(name=c.name, args=c.arguments, id=c.id) for c in calls]


def _lc_chunks(calls: Sequence[ToolCall]) -> list[ToolCallChunk]:
    return [
        tool_call_chunk(name=c.name, args=json.dumps(c.arguments), id=c.id, index=i)
        for i, c in enumerate(calls)
    ]


class ChatExpertGraph(BaseChatModel):
    """A LangChain chat model backed by routed experts (see the module docstring)."""

    model_config = ConfigDict(populate_by_name=True, arbitrary_types_allowed=True, extra="forbid")

    model: str = Field(default="expertgraph", alias="model_name")
    """The routing configuration: ``expertgraph/<name>``, ``expertgraph/<policy>`` or
    ``expertgraph`` (the first configuration)."""
    config: str | list[str] | None = None
    """Config file(s) or a directory of them; built on first use. Or pass ``orchestrator``."""
    orchestrator: Orchestrator | ModelCatalog | None = Field(default=None, exclude=True)
    """A live orchestrator (or a catalog of several) to use instead of ``config``."""
    aliases: bool = True
    """With ``config``: also serve ``expertgraph/<policy>`` over the first config's experts."""
    temperature: float | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    stop: list[str] | None = None
    timeout: float | None = Field(default=None, gt=0)
    """Run deadline in seconds (the run stops cleanly, with the best answer so far)."""
    max_retries: int | None = None
    """Accepted for drop-in use; retries belong to each expert (API experts retry themselves)."""
    streaming: bool = False
    stream_words: int = Field(default=8, ge=1)

    _catalog: ModelCatalog | None = PrivateAttr(default=None)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    # ---- LangChain plumbing ------------------------------------------------------------------

    @property
    def _llm_type(self) -> str:
        return "expertgraph"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model": self.model, "config": self.config}

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = LangSmithParams(
            ls_provider="expertgraph",
            ls_model_name=str(kwargs.get("model") or self.model),
            ls_model_type="chat",
        )
        temperature = kwargs.get("temperature", self.temperature)
        if temperature is not None:
            params["ls_temperature"] = temperature
        max_tokens = kwargs.get("max_tokens", self.max_tokens)
        if max_tokens is not None:
            params["ls_max_tokens"] = max_tokens
        stops = stop if stop is not None else self.stop
        if stops:
            params["ls_stop"] = list(stops)
        return params

    # ---- routing configuration --------------------------------------------------------------

    def catalog(self) -> ModelCatalog:
        """The routing configurations this model can use (built once, on first use)."""
        if self._catalog is None:
            with self._lock:
                if self._catalog is None:
                    self._catalog = self._build_catalog()
        return self._catalog

    def _build_catalog(self) -> ModelCatalog:
        if isinstance(self.orchestrator, ModelCatalog):
            return self.orchestrator
        if isinstance(self.orchestrator, Orchestrator):
            return ModelCatalog.from_orchestrators(self.orchestrator)
        if self.config is None:
            raise ValueError(
                "ChatExpertGraph needs config=<file or directory> or orchestrator=<Orchestrator>"
            )
        paths = [self.config] if isinstance(self.config, str) else list(self.config)
        return ModelCatalog.from_paths(paths, aliases=self.aliases)

    # ---- runs ----------------------------------------------------------------------------------

    def _prepare(
        self, messages: Sequence[BaseMessage], stop: list[str] | None, kwargs: Mapping[str, Any]
    ) -> tuple[ServedModel, Task]:
        served = self.catalog().resolve(kwargs.get("model") or self.model)
        request = {
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            **kwargs,
            "stop": stop if stop is not None else self.stop,
        }
        task = chat_task(
            to_core_messages(messages),
            request,
            metadata={"source": "langchain", "model": served.id},
        )
        timeout = kwargs.get("timeout", self.timeout)
        budget = served.orchestrator.budget
        if timeout is not None:
            budget = budget.model_copy(update={"deadline_s": float(timeout)})
        return served, task.model_copy(update={"budget": budget})

    @staticmethod
    def _message(served: ServedModel, result: RunResult) -> tuple[ChatReply, dict[str, Any]]:
        reply = chat_reply(served.id, result)
        metadata = {
            "model_name": reply.model,
            "finish_reason": reply.finish_reason,
            "run_id": result.run_id,
            "trace_path": result.trace_path,
            "experts": reply.experts,
            "stop_reason": result.stop_reason,
            "cost": reply.usage.cost,
        }
        return reply, metadata

    def _result(self, served: ServedModel, result: RunResult) -> ChatResult:
        reply, metadata = self._message(served, result)
        usage = reply.langchain_usage()
        message = AIMessage(
            content=reply.text,
            id=f"run-{result.run_id}",
            response_metadata=metadata,
            usage_metadata=usage,  # type: ignore[arg-type]
            tool_calls=_lc_calls(reply.tool_calls),
        )
        return ChatResult(
            generations=[
                ChatGeneration(
                    message=message, generation_info={"finish_reason": reply.finish_reason}
                )
            ],
            llm_output={"model_name": reply.model, "token_usage": usage, "run_id": result.run_id},
        )

    def _chunks(self, served: ServedModel, result: RunResult) -> Iterator[ChatGenerationChunk]:
        reply, metadata = self._message(served, result)
        pieces = stream_pieces(reply.text, self.stream_words)
        if reply.tool_calls:
            # The calls come last, in one chunk that also ends the message.
            pieces = [p for p in pieces if p] + [""]
        for i, piece in enumerate(pieces):
            last = i == len(pieces) - 1
            yield ChatGenerationChunk(
                message=AIMessageChunk(
                    content=piece,
                    id=f"run-{result.run_id}",
                    response_metadata=metadata if last else {},
                    usage_metadata=reply.langchain_usage() if last else None,  # type: ignore[arg-type]
                    tool_call_chunks=_lc_chunks(reply.tool_calls) if last else [],
                    chunk_position="last" if last else None,
                ),
                generation_info={"finish_reason": reply.finish_reason} if last else None,
            )

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        served, task = self._prepare(messages, stop, kwargs)
        return self._result(served, served.orchestrator.run(task))

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        served, task = self._prepare(messages, stop, kwargs)
        return self._result(served, await served.orchestrator.arun(task))

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        served, task = self._prepare(messages, stop, kwargs)
        for chunk in self._chunks(served, served.orchestrator.run(task)):
            if run_manager is not None:
                run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            yield chunk

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        served, task = self._prepare(messages, stop, kwargs)
        for chunk in self._chunks(served, await served.orchestrator.arun(task)):
            if run_manager is not None:
                await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            yield chunk

    # ---- tools -------------------------------------------------------------------------------

    def bind_tools(
        self,
        tools: Sequence[Mapping[str, Any] | type | Callable[..., Any] | BaseTool],
        *,
        tool_choice: str | bool | Mapping[str, Any] | None = None,
        parallel_tool_calls: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Offer ``tools`` (LangChain tools, functions, pydantic models or OpenAI dicts) to the
        experts. ``tool_choice``: ``auto``, ``none``, ``any``/``required`` (force a call),
        ``True`` (force the one tool) or a tool's name."""
        formatted = [convert_to_openai_tool(t) for t in tools]
        choice = openai_tool_choice(tool_choice, formatted)
        extra = {
            k: v
            for k, v in (("tool_choice", choice), ("parallel_tool_calls", parallel_tool_calls))
            if v is not None
        }
        return super().bind(tools=formatted, **extra, **kwargs)

    # ---- structured output -------------------------------------------------------------------

    def with_structured_output(  # type: ignore[override]
        self,
        schema: dict[str, Any] | type,
        *,
        method: Literal["json_schema", "json_mode", "function_calling"] = "json_schema",
        include_raw: bool = False,
        strict: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, Any]:
        """Ask the experts for JSON matching ``schema`` and parse it (a pydantic object or a dict).

        ``json_schema`` sends the schema and asks for a matching object; ``json_mode`` asks for
        a JSON object and also sends the schema as a hint; ``function_calling`` binds the
        schema as a tool the experts must call and parses the call's arguments.
        """
        if kwargs:
            raise ValueError(f"unsupported arguments {sorted(kwargs)}")
        if method not in ("json_schema", "json_mode", "function_calling"):
            raise ValueError(
                f"method must be 'json_schema', 'json_mode' or 'function_calling', got {method!r}"
            )
        is_model = isinstance(schema, type) and is_basemodel_subclass(schema)
        parser: Runnable[Any, Any]
        llm: Runnable[Any, Any]
        format_kwargs = {"kwargs": {"method": method, "strict": strict}, "schema": schema}
        if method == "function_calling":
            tool = convert_to_openai_tool(schema, strict=strict)
            name = tool["function"]["name"]
            llm = self.bind_tools(
                [tool], tool_choice=name, ls_structured_output_format=format_kwargs
            )
            parser = (
                PydanticToolsParser(tools=[schema], first_tool_only=True)  # type: ignore[list-item]
                if is_model
                else JsonOutputKeyToolsParser(key_name=name, first_tool_only=True)
            )
            return self._structured(llm, parser, include_raw)
        json_schema = convert_to_json_schema(schema)
        response_format = {
            "type": "json_object" if method == "json_mode" else "json_schema",
            "json_schema": {
                "name": json_schema.get("title", "answer"),
                "schema": json_schema,
                "strict": strict,
            },
        }
        llm = self.bind(response_format=response_format, ls_structured_output_format=format_kwargs)
        if is_model:
            parser = PydanticOutputParser(pydantic_object=schema)  # type: ignore[arg-type]
        else:
            parser = JsonOutputParser()
        return self._structured(llm, parser, include_raw)

    @staticmethod
    def _structured(
        llm: Runnable[Any, Any], parser: Runnable[Any, Any], include_raw: bool
    ) -> Runnable[LanguageModelInput, Any]:
        if not include_raw:
            return llm | parser
        parse = RunnablePassthrough.assign(
            parsed=itemgetter("raw") | parser, parsing_error=lambda _: None
        )
        none = RunnablePassthrough.assign(parsed=lambda _: None)
        return RunnableMap(raw=llm) | parse.with_fallbacks([none], exception_key="parsing_error")
