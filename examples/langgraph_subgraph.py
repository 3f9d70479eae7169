"""An expertgraph orchestrator as one node of your own LangGraph graph.

The parent graph is a small support desk with its own nodes around the experts:

    START -> triage -> experts (routed orchestrator) -> review -> END
                  \\-> canned reply -------------------------/

* ``triage`` (yours) answers greetings itself and sends real questions on;
* ``experts`` is the orchestrator, added with ``add_orchestrator_node``: the parent state is
  mapped to a task going in, and the run's answer, experts and trace id are mapped back;
* ``review`` (yours) flags answers that came from a single expert.

Run it with the built-in instant experts (no model download, answers at once)::

    python examples/langgraph_subgraph.py "What is 12 * 7 - 5?"

or with any configuration file, e.g. the bundled local models::

    python examples/langgraph_subgraph.py --config orchestrator/config/default.yaml \\
        "Capital of Italy?"

Pass ``--stream`` to watch the orchestrator's own route/call/aggregate steps as a subgraph.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
from typing import Any, TypedDict

from langgraph.graph import END, START, StateGraph

from expertgraph.agents import CallableExpert
from expertgraph.agents.tools import calculator
from expertgraph.core.types import ExpertCard, RunResult, Task
from expertgraph.orchestrator import Orchestrator
from expertgraph.orchestrator.integrations import answer_experts
from expertgraph.orchestrator.integrations.langgraph import add_orchestrator_node
from expertgraph.policies.routing.fixed import AllExperts


class Desk(TypedDict, total=False):
    """The parent graph's own state; the orchestrator never sees it whole."""

    question: str
    answer: str
    experts: list[str]
    run_id: str
    note: str


# ---- the parent's own nodes -----------------------------------------------------------------


def triage(state: Desk) -> Desk:
    return {"question": state["question"].strip()}


def is_greeting(state: Desk) -> str:
    return (
        "canned" if state["question"].lower().rstrip("!. ") in {"hi", "hello", "hey"} else "experts"
    )


def canned(state: Desk) -> Desk:
    return {"answer": "Hello! Ask me a question.", "experts": [], "note": "answered by triage"}


def review(state: Desk) -> Desk:
    experts = state.get("experts") or []
    note = (
        "agreed by " + " and ".join(experts)
        if len(experts) > 1
        else f"single expert: {', '.join(experts)}"
    )
    return {"note": note}


# ---- state mapping in and out of the orchestrator -------------------------------------------


def to_task(state: Desk) -> Task:
    return Task(prompt=state["question"], metadata={"source": "support-desk"})


def from_result(result: RunResult, state: Desk) -> Desk:
    return {
        "answer": result.answer or "(no expert could answer)",
        "experts": answer_experts(result),
        "run_id": result.run_id,
    }


# ---- the built-in instant experts -----------------------------------------------------------


def _arith(prompt: str) -> str:
    try:
        return calculator(prompt)
    except ValueError:
        return "I only do arithmetic."


def _second_opinion(prompt: str) -> str:
    # Another exact calculator, so the two agree on arithmetic and the vote shows it.
    return _arith(prompt)


def instant_orchestrator(trace_dir: str) -> Orchestrator:
    experts = [
        CallableExpert("calculator", _arith, ExpertCard(description="exact arithmetic")),
        CallableExpert("checker", _second_opinion, ExpertCard(description="checks arithmetic")),
    ]
    return Orchestrator(experts, AllExperts(), trace_dir=trace_dir, name="desk")


def build(orchestrator: Orchestrator) -> Any:
    builder = StateGraph(Desk)
    builder.add_node("triage", triage)
    builder.add_node("canned", canned)
    add_orchestrator_node(builder, "experts", orchestrator, input=to_task, output=from_result)
    builder.add_node("review", review)
    builder.add_edge(START, "triage")
    builder.add_conditional_edges("triage", is_greeting, ["canned", "experts"])
    builder.add_edge("experts", "review")
    builder.add_edge("review", END)
    builder.add_edge("canned", END)
    return builder.compile()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("question")
    parser.add_argument(
        "--config", help="an expertgraph config file (default: two instant calculators)"
    )
    parser.add_argument(
        "--stream", action="store_true", help="print each node, subgraph steps included"
    )
    args = parser.parse_args()
    orchestrator = (
        Orchestrator.from_config(args.config)
        if args.config
        else instant_orchestrator(tempfile.mkdtemp(prefix="desk-traces-"))
    )
    graph = build(orchestrator)
    if args.stream:
        async for namespace, update in graph.astream({"question": args.question}, subgraphs=True):
            where = "/".join(n.split(":")[0] for n in namespace) or "desk"
            print(f"[{where}] {', '.join(update)}")
    final = await graph.ainvoke({"question": args.question})
    print(json.dumps(final, indent=2))
    await orchestrator.aclose()


if __name__ == "__main__":
    asyncio.run(main())
