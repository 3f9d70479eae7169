"""An orchestrator as one node of your own LangGraph ``StateGraph``.

The node maps your state to a task, runs the orchestrator's graph inside the node (so its
``route``/``call``/``aggregate`` steps show up with ``stream(..., subgraphs=True)`` and share your
callbacks), and maps the run's result back into a state update::

    from langgraph.graph import StateGraph, MessagesState, START, END
    from expertgraph.orchestrator import Orchestrator
    from expertgraph.orchestrator.integrations.langgraph import add_orchestrator_node

    builder = StateGraph(MessagesState)
    builder.add_node("clean", clean)                          # your own nodes
    add_orchestrator_node(builder, "experts", Orchestrator.from_config("expertgraph.yaml"))
    builder.add_edge(START, "clean"); builder.add_edge("clean", "experts"); builder.add_edge("experts", END)
    graph = builder.compile()

Defaults fit ``MessagesState``: the task is the conversation in ``state["messages"]`` and the
answer is appended there as an ``AIMessage`` (its ``response_metadata`` names the experts and
the run id). Pass ``input=`` (state -> prompt, mapping or :class:`Task`) and ``output=``
(``RunResult``, state -> update) for any other state. Each call is one traced run.

A state that already is the orchestrator's own (a ``task`` key holding a :class:`Task`) can also
add ``orchestrator.graph`` itself as the node: its first ``route`` opens the run.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from expertgraph.core._sync import run_sync
from expertgraph.core.types import Message, RunResult
from expertgraph.orchestrator.integrations._chat import (
    NoAnswerError,
    answer_experts,
    chat_task,
    reply_model,
)
from expertgraph.orchestrator.orchestrator import Orchestrator, TaskLike

InputMap = Callable[[Any], TaskLike]
OutputMap = Callable[[RunResult, Any], Mapping[str, Any]]


def _get(state: Any, key: str) -> Any:
    return state[key] if isinstance(state, Mapping) else getattr(state, key)


def messages_in(state: Any, key: str = "messages") -> TaskLike:
    """The task for a chat state: its messages (LangChain messages or OpenAI-style dicts)."""
    messages: Sequence[Any] = _get(state, key)
    if not messages:
        raise ValueError(f"state[{key!r}] is empty: nothing to ask the experts")
    if all(isinstance(m, (Message, Mapping)) for m in messages):
        core = [m if isinstance(m, Message) else Message.model_validate(dict(m)) for m in messages]
    else:
        from expertgraph.orchestrator.integrations.langchain import to_core_messages

        core = to_core_messages(list(messages))
    return chat_task(core, metadata={"source": "langgraph"})


def messages_out(result: RunResult, state: Any, key: str = "messages", model_id: str = "expertgraph") -> dict[str, Any]:
    """The answer appended to ``state[key]`` as an ``AIMessage``; no answer raises :class:`NoAnswerError`."""
    from langchain_core.messages import AIMessage

    if result.answer is None:
        raise NoAnswerError(result)
    message = AIMessage(
        content=result.answer,
        response_metadata={
            "model_name": reply_model(model_id, result),
            "run_id": result.run_id,
            "experts": answer_experts(result),
            "trace_path": result.trace_path,
        },
        usage_metadata={
            "input_tokens": result.usage.input_tokens,
            "output_tokens": result.usage.output_tokens,
            "total_tokens": result.usage.total_tokens,
        },
    )
    return {key: [message]}


def orchestrator_node(
    orchestrator: Orchestrator,
    *,
    input: InputMap | None = None,
    output: OutputMap | None = None,
    name: str = "expertgraph",
) -> Any:
    """A runnable (sync and async) to pass to ``StateGraph.add_node``; see the module docstring."""
    from langchain_core.runnables import RunnableLambda

    to_task: InputMap = input or messages_in
    model_id = f"expertgraph/{orchestrator.name}"
    to_update: OutputMap = output or (lambda result, state: messages_out(result, state, model_id=model_id))

    async def arun(state: Any) -> Mapping[str, Any]:
        result = await orchestrator.arun(to_task(state))
        return dict(to_update(result, state))

    def run(state: Any) -> Mapping[str, Any]:
        result = run_sync(orchestrator.arun(to_task(state)))
        return dict(to_update(result, state))

    return RunnableLambda(run, afunc=arun, name=name)


def add_orchestrator_node(
    graph: Any,
    name: str,
    orchestrator: Orchestrator,
    *,
    input: InputMap | None = None,
    output: OutputMap | None = None,
) -> Any:
    """``graph.add_node(name, orchestrator_node(...))``; returns ``graph`` for chaining."""
    graph.add_node(name, orchestrator_node(orchestrator, input=input, output=output, name=name))
    return graph
