"""The orchestrator's own agent loop: route, propose, vote on the action, act, route again."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Annotated, Any, Literal

import pytest
from pydantic import Field

from expertgraph.agents import CallableExpert
from expertgraph.core import (
    AggregationContext,
    Aggregator,
    Budget,
    ExpertCard,
    Generation,
    Message,
    StepResult,
    Task,
    ToolCall,
    ToolSpec,
)
from expertgraph.core.errors import ConfigError
from expertgraph.orchestrator import Orchestrator, Tool, tool
from expertgraph.orchestrator.tools import execute
from expertgraph.policies import AllExperts, FixedPolicy, MajorityVote
from expertgraph.traces.attribution import attribute_run
from expertgraph.traces.schema import CallRecord, RunEnd
from expertgraph.traces.store import load_run

PRICES = {"apples": 4, "pears": 9}


def add(a: int, b: int) -> int:
    """Add two integers.

    Only the first paragraph becomes the description.
    """
    return a + b


async def lookup(key: str) -> str:
    """The price of a fruit."""
    return str(PRICES[key])


def _results(messages: list[Message]) -> list[str]:
    return [m.content for m in messages if m.role == "tool"]


def _call(name: str, **arguments: Any) -> dict[str, Any]:
    return {"text": "", "tool_calls": [{"name": name, "arguments": arguments}]}


def _agent(wrong: bool = False) -> Any:
    """An expert by rule: look up the apples' price, add 3 to it, then answer the sum.

    ``wrong`` proposes the pears instead (a wrong call the vote must outvote).
    """

    def fn(messages: list[Message], tools: list[ToolSpec] | None = None) -> Any:
        assert tools is not None and {t.name for t in tools} == {"add", "lookup"}
        results = _results(messages)
        if not results:
            return _call("lookup", key="pears" if wrong else "apples")
        if len(results) == 1:
            return _call("add", a=int(results[0]), b=3)
        return {"text": f"The answer is {results[-1]}."}

    return fn


def _orchestrator(tmp_path: Path, experts: list[CallableExpert], **kw: Any) -> Orchestrator:
    kw.setdefault("tools", [add, lookup])
    return Orchestrator(
        experts,
        kw.pop("policy", AllExperts()),
        kw.pop("aggregator", MajorityVote()),
        trace_dir=tmp_path / "traces",
        **kw,
    )


def test_the_vote_picks_the_right_call_the_tool_runs_and_the_next_step_answers(
    tmp_path: Path,
) -> None:
    experts = [
        CallableExpert("a", _agent()),
        CallableExpert("b", _agent()),
        CallableExpert("c", _agent(wrong=True)),
    ]
    orch = _orchestrator(tmp_path, experts)
    result = orch.run("What do apples cost, plus 3?")

    assert result.answer == "The answer is 7.", result.stop_reason
    assert [s.result.tool_calls[0].name for s in result.steps[:2] if s.result] == ["lookup", "add"]
    first = result.steps[0].result
    assert first is not None and first.tool_calls[0].arguments == {"key": "apples"}
    assert first.supporters[first.answer or ""] == ["a#0", "b#0"]
    assert len(result.steps) == 3 and not result.steps[2].result.tool_calls  # type: ignore[union-attr]
    assert result.tool_calls == []

    trace = load_run(result.trace_path or "")
    proposals = [r for r in trace.records if isinstance(r, CallRecord)]
    assert [(r.step, r.generation.expert) for r in proposals] == [
        (s, e) for s in range(3) for e in "abc"
    ]
    wrong = next(r for r in proposals if r.step == 0 and r.generation.expert == "c")
    assert wrong.generation.tool_calls[0].arguments == {"key": "pears"}
    executed = trace.tool_records()
    assert [(r.step, r.name, r.arguments, r.result, r.error) for r in executed] == [
        (0, "lookup", {"key": "apples"}, "4", None),
        (1, "add", {"a": 4, "b": 3}, "7", None),
    ]
    assert all(r.latency_s >= 0 and r.call_id for r in executed)
    # The tool records sit between a step's end and the next step's route.
    kinds = [r.type for r in trace.records]
    assert kinds.index("tool") > kinds.index("step_end")
    # The second step's experts saw the first action and its result as messages.
    seen = next(r for r in proposals if r.step == 1).generation
    assert seen.tool_calls[0].name == "add"
    assert trace.result().answer == result.answer
    # Attribution of the first step: the wrong proposer gets no credit.
    first_step = attribute_run(trace, lambda name: MajorityVote()).steps[0]
    assert first_step.result.shapley == {"a": 0.5, "b": 0.5, "c": 0.0}


def test_the_next_step_sees_the_assistant_call_and_the_tool_message(tmp_path: Path) -> None:
    seen: list[list[Message]] = []

    def fn(messages: list[Message], tools: list[ToolSpec] | None = None) -> Any:
        seen.append(list(messages))
        if not _results(messages):
            return {
                "text": "",
                "tool_calls": [{"id": "c1", "name": "add", "arguments": '{"a":1,"b":2}'}],
            }
        return {"text": "done"}

    orch = _orchestrator(tmp_path, [CallableExpert("solo", fn)], policy=FixedPolicy(["solo"]))
    result = orch.run(Task(messages=[Message(role="user", content="1+2?")]))
    assert result.answer == "done"
    roles = [(m.role, m.tool_call_id) for m in seen[1]]
    assert roles == [("user", None), ("assistant", None), ("tool", "c1")]
    assert seen[1][1].tool_calls and seen[1][1].tool_calls[0].arguments == {"a": 1, "b": 2}
    assert seen[1][2].content == "3"


def _one_call(name: str, **arguments: Any) -> Any:
    """An expert that calls ``name`` once, then answers with the result it got."""

    def fn(messages: list[Message], tools: list[ToolSpec] | None = None) -> Any:
        results = _results(messages)
        return {"text": f"got: {results[-1]}"} if results else _call(name, **arguments)

    return fn


def test_a_tool_that_raises_becomes_its_result_text(tmp_path: Path) -> None:
    def broken(x: int) -> int:
        raise ValueError("no such row")

    orch = _orchestrator(
        tmp_path,
        [CallableExpert("solo", _one_call("broken", x=1))],
        policy=FixedPolicy(["solo"]),
        tools=[broken],
    )
    result = orch.run("use it")
    assert result.answer == "got: error: ValueError: no such row"
    (record,) = load_run(result.trace_path or "").tool_records()
    assert record.error == "ValueError: no such row"


def test_a_tool_that_hangs_times_out_and_the_run_goes_on(tmp_path: Path) -> None:
    async def hang() -> str:
        await asyncio.sleep(60)
        return "never"

    orch = _orchestrator(
        tmp_path,
        [CallableExpert("solo", _one_call("hang"))],
        policy=FixedPolicy(["solo"]),
        tools=[hang],
        tool_timeout_s=0.2,
    )
    started = time.perf_counter()
    result = orch.run("use it")
    assert time.perf_counter() - started < 10
    assert result.answer == "got: error: tool 'hang' gave no result within 0.2s"
    (record,) = load_run(result.trace_path or "").tool_records()
    assert record.error and "within 0.2s" in record.error and record.latency_s >= 0.2


def test_a_tool_timeout_of_its_own_wins_over_the_orchestrators(tmp_path: Path) -> None:
    async def slow() -> str:
        await asyncio.sleep(60)
        return "never"

    orch = _orchestrator(
        tmp_path,
        [CallableExpert("solo", _one_call("slow"))],
        policy=FixedPolicy(["solo"]),
        tools=[Tool.from_function(slow, timeout_s=0.1)],
    )
    assert orch.run("use it").answer == "got: error: tool 'slow' gave no result within 0.1s"


class FirstCandidate(Aggregator):
    """Takes the first candidate's action as is, unchecked: lets a bad call reach the act node."""

    name = "first"

    def combine(self, candidates: list[Generation], context: AggregationContext) -> StepResult:
        first = candidates[0]
        return StepResult(
            aggregator=self.name,
            text=first.text,
            answer=first.text or first.tool_calls[0].canonical(),
            tool_calls=list(first.tool_calls),
            winner=[f"{first.expert}#{first.sample}"],
        )


def test_a_call_to_a_tool_that_does_not_exist_becomes_an_error_result(tmp_path: Path) -> None:
    orch = _orchestrator(
        tmp_path,
        [CallableExpert("solo", _one_call("nope", q=1))],
        policy=FixedPolicy(["solo"]),
        aggregator=FirstCandidate(),
    )
    result = orch.run("use it")
    assert result.answer == "got: error: unknown tool 'nope'; the tools are: add, lookup"
    (record,) = load_run(result.trace_path or "").tool_records()
    assert record.name == "nope" and record.error and record.error.startswith("unknown tool")


def test_arguments_that_fail_the_signature_become_an_error_result() -> None:
    t = tool(add)
    bad = asyncio.run(execute(ToolCall(id="1", name="add", arguments={"a": "x"}), t, 1.0))
    assert (
        bad.error and "invalid arguments for add" in bad.error and "b: Field required" in bad.error
    )
    not_json = ToolCall.parse("2", "add", "{oops")
    result = asyncio.run(execute(not_json, t, 1.0))
    assert result.error and result.error.startswith(
        "invalid arguments for add: arguments are not JSON"
    )
    assert (
        asyncio.run(
            execute(ToolCall(id="3", name="add", arguments={"a": "2", "b": 3}), t, 1.0)
        ).content
        == "5"
    )


def test_an_expert_that_cannot_call_tools_is_never_called_on_a_tool_step(tmp_path: Path) -> None:
    plain = CallableExpert("plain", lambda prompt: "I cannot call tools")
    assert plain.card.tools is False
    agent = CallableExpert("agent", _one_call("add", a=1, b=1))
    orch = _orchestrator(tmp_path, [plain, agent])
    result = orch.run("1+1?")
    assert result.answer == "got: 2"
    calls = [r for r in load_run(result.trace_path or "").records if isinstance(r, CallRecord)]
    assert {r.generation.expert for r in calls} == {"agent"}


def test_a_run_where_no_expert_can_call_tools_stops_with_a_clear_reason(tmp_path: Path) -> None:
    plain = CallableExpert("plain", lambda prompt: "text", ExpertCard(tools=False))
    orch = _orchestrator(tmp_path, [plain], policy=FixedPolicy(["plain"]))
    result = orch.run("1+1?")
    assert result.answer is None and result.steps == []
    assert result.stop_reason.startswith("no expert can call tools: the step offers add, lookup")
    trace = load_run(result.trace_path or "")
    assert not [r for r in trace.records if isinstance(r, CallRecord)]
    assert trace.end is not None and trace.end.stop_reason == result.stop_reason


def test_a_task_with_specs_but_no_callables_returns_the_chosen_calls(tmp_path: Path) -> None:
    weather = ToolSpec(
        name="weather",
        description="Today's weather in a city.",
        parameters={"type": "object", "properties": {"city": {"type": "string"}}},
    )
    experts = [CallableExpert(n, _one_call("weather", city="Lima")) for n in ("a", "b")]
    orch = _orchestrator(tmp_path, experts, tools=[])
    result = orch.run(Task(prompt="Weather in Lima?", tools=[weather]))
    assert result.stop_reason == "tool calls for the caller"
    assert [(c.name, c.arguments) for c in result.tool_calls] == [("weather", {"city": "Lima"})]
    assert result.answer is None and len(result.steps) == 1
    trace = load_run(result.trace_path or "")
    assert trace.tool_records() == []
    assert isinstance(trace.end, RunEnd) and trace.end.tool_calls == result.tool_calls
    assert trace.result().tool_calls == result.tool_calls


def test_the_task_tools_win_over_the_orchestrators_and_run_tools_replace_them(
    tmp_path: Path,
) -> None:
    expert = CallableExpert("solo", _one_call("add", a=2, b=2))
    orch = _orchestrator(tmp_path, [expert], policy=FixedPolicy(["solo"]), tools=[lookup])
    # The run's tools replace the orchestrator's: add is offered and runs.
    assert orch.run("2+2?", tools=[add]).answer == "got: 4"
    # The orchestrator's tools: add is not offered, so the expert's call is red-flagged.
    result = orch.run("2+2?")
    assert [s.name for s in result.task.tools or []] == ["lookup"]
    assert result.answer is None


def test_max_steps_ends_an_agent_that_never_answers(tmp_path: Path) -> None:
    def loop(messages: list[Message], tools: list[ToolSpec] | None = None) -> Any:
        return _call("add", a=1, b=len(_results(messages)))

    orch = _orchestrator(tmp_path, [CallableExpert("loop", loop)], policy=FixedPolicy(["loop"]))
    result = orch.run(Task(prompt="go", budget=Budget(max_steps=3)))
    assert result.stop_reason == "max_steps reached (3)"
    assert result.answer is None  # an action is no answer
    assert len(load_run(result.trace_path or "").tool_records()) == 3


def test_a_required_tool_choice_holds_until_the_run_has_acted(tmp_path: Path) -> None:
    choices: list[Any] = []

    def fn(
        messages: list[Message],
        tools: Any = None,
        tool_choice: Any = None,
        parallel_tool_calls: Any = None,
    ) -> Any:
        choices.append((tool_choice, parallel_tool_calls))
        return {"text": "2"} if _results(messages) else _call("add", a=1, b=1)

    orch = _orchestrator(tmp_path, [CallableExpert("solo", fn)], policy=FixedPolicy(["solo"]))
    result = orch.run(Task(prompt="1+1", tool_choice="required"))
    assert result.answer == "2" and choices == [("required", True), ("auto", True)]


def test_content_capture_off_keeps_tool_names_but_not_arguments_or_results(tmp_path: Path) -> None:
    def shout(word: str) -> str:
        return word.upper() + "!"

    orch = _orchestrator(
        tmp_path,
        [CallableExpert("solo", _one_call("shout", word="zanzibar"))],
        policy=FixedPolicy(["solo"]),
        tools=[shout],
        trace_options={"capture_content": False},
    )
    result = orch.run("shout it")
    assert result.answer == "got: ZANZIBAR!"
    text = Path(result.trace_path or "").read_text()
    assert "zanzibar" not in text.lower()
    (record,) = load_run(result.trace_path or "").tool_records()
    assert (record.name, record.result, record.arguments) == (
        "shout",
        "[omitted]",
        {"word": "[omitted]"},
    )


def test_the_report_shows_the_agents_turns(tmp_path: Path) -> None:
    from expertgraph.traces.report import write_report

    experts = [CallableExpert(n, _agent(wrong=n == "c")) for n in "abc"]
    result = _orchestrator(tmp_path, experts).run("What do apples cost, plus 3?")
    out = tmp_path / "report.html"
    write_report(tmp_path / "traces", result.run_id, out)
    page = out.read_text()
    assert "Agent turns" in page
    assert "lookup" in page and "{&quot;key&quot;: &quot;apples&quot;}" in page
    assert "<td><pre>7</pre></td>" in page


# ---- tools from functions ----------------------------------------------------------------


def test_tool_schemas_come_from_signatures_and_docstrings() -> None:
    t = tool(add)
    assert t.name == "add" and t.spec.description == "Add two integers."
    assert t.spec.parameters == {
        "type": "object",
        "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
        "required": ["a", "b"],
        "additionalProperties": False,
    }
    assert t(2, 3) == 5  # still callable as the function

    @tool(name="convert", description="Convert a temperature.")
    def to_unit(
        value: float,
        unit: Literal["c", "f"] = "c",
        notes: Annotated[list[str] | None, Field(description="free text")] = None,
    ) -> float:
        return value

    assert to_unit.name == "convert" and to_unit.spec.description == "Convert a temperature."
    props = to_unit.spec.parameters["properties"]
    assert props["value"] == {"type": "number"}
    assert props["unit"] == {"default": "c", "enum": ["c", "f"], "type": "string"}
    assert props["notes"]["description"] == "free text"
    assert to_unit.spec.parameters["required"] == ["value"]

    def anything(x, **extra):  # type: ignore[no-untyped-def]
        return x

    loose = Tool.from_function(anything)
    assert loose.spec.description == ""
    assert loose.spec.parameters["additionalProperties"] is True
    assert loose.spec.parameters["properties"] == {"x": {}}
    json.dumps(loose.spec.openai())  # the spec is plain JSON


def test_bad_tool_definitions_are_config_errors() -> None:
    def positional(a: int, /) -> int:
        return a

    with pytest.raises(ConfigError, match="cannot be passed by keyword"):
        tool(positional)
    with pytest.raises(ConfigError, match="invalid tool name"):
        Tool.from_function(add, name="has space")
    with pytest.raises(ConfigError, match="two tools are named 'add'"):
        Orchestrator([CallableExpert("x", lambda p: p)], FixedPolicy(["x"]), tools=[add, add])


def test_an_explicit_spec_tool_runs_with_the_arguments_as_given() -> None:
    spec = ToolSpec(name="echo", parameters={"type": "object", "properties": {}})
    t = Tool(spec=spec, fn=lambda **kw: kw)
    call = ToolCall(id="1", name="echo", arguments={"x": [1, 2]})
    assert asyncio.run(execute(call, t, 1.0)).content == '{"x": [1, 2]}'


def test_the_deadline_cuts_a_hanging_tool_short_and_ends_the_run(tmp_path: Path) -> None:
    async def hang() -> str:
        await asyncio.sleep(60)
        return "never"

    orch = _orchestrator(
        tmp_path,
        [CallableExpert("solo", _one_call("hang"))],
        policy=FixedPolicy(["solo"]),
        tools=[hang],
    )
    started = time.perf_counter()
    result = orch.run(Task(prompt="go", budget=Budget(deadline_s=0.5)))
    assert time.perf_counter() - started < 10
    assert result.stop_reason == "deadline reached (0.5s)" and result.answer is None
    (record,) = load_run(result.trace_path or "").tool_records()
    assert record.error and "gave no result" in record.error


def test_the_cost_ceiling_ends_the_loop_after_an_action(tmp_path: Path) -> None:
    def costly(messages: list[Message], tools: Any = None) -> Any:
        return {**_call("add", a=1, b=1), "cost": 1.0}

    orch = _orchestrator(tmp_path, [CallableExpert("x", costly)], policy=FixedPolicy(["x"]))
    result = orch.run(Task(prompt="go", budget=Budget(max_cost=0.5)))
    # The expert reports a cost of 1 against a worst case of 0: an overrun ends the run.
    assert result.stop_reason.startswith("budget_overrun: x reported usage costing 1")
    assert len(result.steps) == 1 and len(load_run(result.trace_path or "").tool_records()) == 1


def test_astream_reports_the_act_node(tmp_path: Path) -> None:
    orch = _orchestrator(
        tmp_path, [CallableExpert("solo", _one_call("add", a=1, b=2))], policy=FixedPolicy(["solo"])
    )

    async def nodes() -> tuple[list[str], Any]:
        seen = [event async for event in orch.astream("1+2?")]
        return [e.node for e in seen], seen[-1].result

    names, result = asyncio.run(nodes())
    # A step with one expert makes its call inside the route node: no separate call node.
    assert names == ["route", "aggregate", "act", "route", "aggregate", "route", "end"]
    assert result.answer == "got: 3"


def test_tool_executions_are_otel_execute_tool_spans_inside_their_step(tmp_path: Path) -> None:
    from expertgraph.traces.otel import run_spans, span_id

    experts = [CallableExpert(n, _agent()) for n in "ab"]
    result = _orchestrator(tmp_path, experts).run("What do apples cost, plus 3?")
    trace = load_run(result.trace_path or "")
    spans = run_spans(trace)
    tools = [s for s in spans if s["name"].startswith("execute_tool")]
    assert [s["name"] for s in tools] == ["execute_tool lookup", "execute_tool add"]

    def attr(span: dict[str, Any], key: str) -> Any:
        value = next(a["value"] for a in span["attributes"] if a["key"] == key)
        return next(iter(value.values()))

    executed = trace.tool_records()
    for span, record in zip(tools, executed, strict=True):
        assert span["parentSpanId"] == span_id(trace.run_id, f"step/{record.step}")
        assert attr(span, "gen_ai.operation.name") == "execute_tool"
        assert attr(span, "gen_ai.tool.call.id") == record.call_id
        assert attr(span, "output.value") == record.result
        assert span["status"]["code"] == 1
