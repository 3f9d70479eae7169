"""An orchestrator as a node of a user's own LangGraph graph, with its own nodes around it."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any, TypedDict

import pytest
from langchain_core.messages import AIMessage, HumanMessage
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, MessagesState, StateGraph
from serve_experts import write_config

from expertgraph.core.errors import NoAnswerError
from expertgraph.core.types import RunResult, Task
from expertgraph.orchestrator import Orchestrator
from expertgraph.orchestrator.integrations import answer_experts
from expertgraph.orchestrator.integrations.langgraph import add_orchestrator_node
from expertgraph.traces.schema import CallRecord, RunStart
from expertgraph.traces.store import iter_records

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def orch(tmp_path_factory: pytest.TempPathFactory) -> Orchestrator:
    root = tmp_path_factory.mktemp("subgraph")
    return Orchestrator.from_config(
        write_config(root, "pair", {"echo_a": "echo", "echo_b": "echo"}, trace_dir=root / "traces")
    )


@pytest.fixture(scope="module")
def down(tmp_path_factory: pytest.TempPathFactory) -> Orchestrator:
    root = tmp_path_factory.mktemp("subgraph-down")
    return Orchestrator.from_config(
        write_config(root, "down", {"broken": "broken"}, trace_dir=root / "traces")
    )


def _chat_graph(orch: Orchestrator, checkpointer: Any = None) -> Any:
    """clean (parent node) -> experts (orchestrator) -> sign (parent node)."""

    def clean(state: MessagesState) -> dict[str, Any]:
        last = state["messages"][-1]
        return {
            "messages": [HumanMessage(str(last.content).strip().lower(), id=last.id)]
        }  # replaces it

    def sign(state: MessagesState) -> dict[str, Any]:
        answer = state["messages"][-1]
        signed = AIMessage(
            f"{answer.content} -- desk", id=answer.id, response_metadata=answer.response_metadata
        )
        return {"messages": [signed]}

    builder = StateGraph(MessagesState)
    builder.add_node("clean", clean)
    add_orchestrator_node(builder, "experts", orch)
    builder.add_node("sign", sign)
    builder.add_edge(START, "clean")
    builder.add_edge("clean", "experts")
    builder.add_edge("experts", "sign")
    builder.add_edge("sign", END)
    return builder.compile(checkpointer=checkpointer)


def test_messages_state_sync_and_async(orch: Orchestrator) -> None:
    graph = _chat_graph(orch)
    out = graph.invoke({"messages": [HumanMessage("  HELLO There ")]})
    assert [m.content for m in out["messages"]] == ["hello there", "echo: hello there -- desk"]
    reply = out["messages"][-1]
    assert isinstance(reply, AIMessage)

    async_out = asyncio.run(graph.ainvoke({"messages": [HumanMessage("ASYNC")]}))
    assert async_out["messages"][-1].content == "echo: async -- desk"


def test_answer_metadata_points_at_the_trace(orch: Orchestrator) -> None:
    builder = StateGraph(MessagesState)
    add_orchestrator_node(builder, "experts", orch)
    builder.add_edge(START, "experts")
    builder.add_edge("experts", END)
    reply = builder.compile().invoke({"messages": [HumanMessage("traced")]})["messages"][-1]
    meta = reply.response_metadata
    assert meta["model_name"] == "expertgraph/pair:echo_a+echo_b"
    records = list(iter_records(meta["trace_path"]))
    assert isinstance(records[0], RunStart) and records[0].run_id == meta["run_id"]
    assert records[0].task.metadata["source"] == "langgraph"
    calls = [r for r in records if isinstance(r, CallRecord)]
    assert reply.usage_metadata["output_tokens"] == sum(c.generation.output_tokens for c in calls)


def test_subgraph_steps_stream_under_the_node(orch: Orchestrator) -> None:
    async def collect() -> list[tuple[tuple[str, ...], list[str]]]:
        graph = _chat_graph(orch)
        return [
            (ns, list(update))
            async for ns, update in graph.astream({"messages": [HumanMessage("x")]}, subgraphs=True)
        ]

    events = asyncio.run(collect())
    parent = [nodes[0] for ns, nodes in events if ns == ()]
    assert parent == ["clean", "experts", "sign"]
    inner = [nodes[0] for ns, nodes in events if ns and ns[0].startswith("experts:")]
    assert inner[:4] == ["route", "call", "call", "aggregate"] and inner[-1] == "route"


def test_checkpointed_conversation_keeps_history(orch: Orchestrator) -> None:
    graph = _chat_graph(orch, checkpointer=InMemorySaver())
    config = {"configurable": {"thread_id": "t1"}}
    graph.invoke({"messages": [HumanMessage("First")]}, config)
    out = graph.invoke({"messages": [HumanMessage("Second")]}, config)
    assert [m.content for m in out["messages"]] == [
        "first",
        "echo: first -- desk",
        "second",
        "echo: second -- desk",
    ]
    # The orchestrator saw the whole conversation on the second turn.
    run_id = out["messages"][-1].response_metadata["run_id"]
    start = next(iter(iter_records(Path(orch.trace_store.path_for(run_id)))))
    assert isinstance(start, RunStart)
    assert [m.content for m in start.task.messages or []] == [
        "first",
        "echo: first -- desk",
        "second",
    ]
    assert [m.role for m in start.task.messages or []] == ["user", "assistant", "user"]


class OpenAIChat(TypedDict):
    messages: list[Any]


def test_openai_style_dict_messages_are_read_like_an_openai_request(orch: Orchestrator) -> None:
    # Dicts in the state follow the server's rule: 'developer' is a system message, text parts
    # are joined.
    builder = StateGraph(OpenAIChat)
    add_orchestrator_node(builder, "experts", orch)
    builder.add_edge(START, "experts")
    builder.add_edge("experts", END)
    messages = [
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": t} for t in ("two", "parts")]},
    ]
    reply = builder.compile().invoke({"messages": messages})["messages"][-1]
    assert reply.content == "echo: two\nparts"
    start = next(iter(iter_records(reply.response_metadata["trace_path"])))
    assert isinstance(start, RunStart)
    assert [(m.role, m.content) for m in start.task.messages or []] == [
        ("system", "Be brief."),
        ("user", "two\nparts"),
    ]


class Ticket(TypedDict, total=False):
    question: str
    answer: str | None
    experts: list[str]
    route: str


def _ticket_graph(orch: Orchestrator) -> Any:
    def to_task(state: Ticket) -> Task:
        return Task(prompt=state["question"])

    def from_result(result: RunResult, state: Ticket) -> dict[str, Any]:
        return {"answer": result.answer, "experts": answer_experts(result)}

    def escalate(state: Ticket) -> dict[str, Any]:
        return {"route": "human"}

    def done(state: Ticket) -> dict[str, Any]:
        return {"route": "experts"}

    builder = StateGraph(Ticket)
    add_orchestrator_node(builder, "experts", orch, input=to_task, output=from_result)
    builder.add_node("escalate", escalate)
    builder.add_node("done", done)
    builder.add_edge(START, "experts")
    builder.add_conditional_edges(
        "experts", lambda s: "done" if s.get("answer") else "escalate", ["done", "escalate"]
    )
    builder.add_edge("escalate", END)
    builder.add_edge("done", END)
    return builder.compile()


def test_custom_state_mapping_and_parent_control_flow(
    orch: Orchestrator, down: Orchestrator
) -> None:
    ok = _ticket_graph(orch).invoke({"question": "refund"})
    assert ok == {
        "question": "refund",
        "answer": "echo: refund",
        "experts": ["echo_a", "echo_b"],
        "route": "experts",
    }
    failed = _ticket_graph(down).invoke({"question": "refund"})
    assert failed["answer"] is None and failed["experts"] == [] and failed["route"] == "human"


def test_default_output_raises_when_no_expert_answers(down: Orchestrator) -> None:
    builder = StateGraph(MessagesState)
    add_orchestrator_node(builder, "experts", down)
    builder.add_edge(START, "experts")
    builder.add_edge("experts", END)
    with pytest.raises(NoAnswerError):
        builder.compile().invoke({"messages": [HumanMessage("x")]})


def test_parallel_parent_runs_are_separate_runs(orch: Orchestrator) -> None:
    graph = _chat_graph(orch)
    outs = asyncio.run(graph.abatch([{"messages": [HumanMessage(f"q{i}")]} for i in range(5)]))
    assert [o["messages"][-1].content for o in outs] == [f"echo: q{i} -- desk" for i in range(5)]
    assert len({o["messages"][-1].response_metadata["run_id"] for o in outs}) == 5


def test_orchestrator_graph_itself_as_a_node(orch: Orchestrator) -> None:
    """A parent state with the orchestrator's own keys can add ``orchestrator.graph`` directly."""

    class Shared(TypedDict, total=False):
        task: Task
        answer: str | None
        note: str

    builder = StateGraph(Shared)
    builder.add_node("prepare", lambda s: {"task": Task(prompt=s["note"])})
    builder.add_node("experts", orch.graph)
    builder.add_node("after", lambda s: {"note": f"got {s['answer']}"})
    builder.add_edge(START, "prepare")
    builder.add_edge("prepare", "experts")
    builder.add_edge("experts", "after")
    builder.add_edge("after", END)
    out = asyncio.run(builder.compile().ainvoke({"note": "direct"}))
    assert out["answer"] == "echo: direct" and out["note"] == "got echo: direct"
    assert orch._graph._runs == {}  # the run the first route opened was closed at its end


def test_example_runs() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "langgraph_subgraph.py"),
         "--stream", "What is 12 * 7 - 5?"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[:2] == ["[desk] triage", "[experts] route"]
    final = json.loads(proc.stdout[proc.stdout.index("{") :])
    assert final["answer"] == "79" and final["experts"] == ["calculator", "checker"]
    assert final["note"] == "agreed by calculator and checker"
