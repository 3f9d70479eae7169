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
    builder.add_edge(START, "clean")
    builder.add_edge("clean", "experts")
    builder.add_edge("experts", END)
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

from expertgraph.core.types import Message, RunResult
from expertgraph.orchestrator.integrations._chat import chat_reply, chat_task, openai_messages
from expertgraph.orchestrator.integrations.catalog import PREFIX, model_id
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
        core = openai_messages(messages)
    else:
        from expertgraph.orchestrator.integrations.langchain import to_core_messages

        core = to_core_messages(list(messages))
    return chat_task(core, metadata={"source": "langgraph"})


def messages_out(
    result: RunResult, state: Any, key: str = "messages", model_id: str = PREFIX
) -> dict[str, Any]:
    """The answer appended to ``state[key]`` as an ``AIMessage``.

    A run without an answer raises :class:`NoAnswerError`.
    """
    from langchain_core.messages import AIMessage

    reply = chat_reply(model_id, result)
    message = AIMessage(
        content=reply.text,
        response_metadata={
            "model_name": reply.model,
            "run_id": result.run_id,
            "experts": reply.experts,
            "trace_path": result.trace_path,
        },
        usage_metadata=reply.langchain_usage(),  # type: ignore[arg-type]
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
    served_as = model_id(orchestrator.name)
    to_update: OutputMap = output or (
        lambda result, state: messages_out(result, state, model_id=served_as)
    )

    async def arun(state: Any) -> Mapping[str, Any]:
        result = await orchestrator.arun(to_task(state))
        return dict(to_update(result, state))

    def run(state: Any) -> Mapping[str, Any]:
        result = orchestrator.run(to_task(state))
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
