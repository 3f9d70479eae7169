"""Votes on actions: tool calls as ballots, their red flags, and attribution of an action vote."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from expertgraph.agents.callable import CallableExpert
from expertgraph.core import AggregationContext
from expertgraph.core.actions import (
    ACTION_PREFIX,
    action_ballot,
    is_action,
    parse_action,
    text_ballot,
)
from expertgraph.core.tools import NamedToolChoice, ToolCall, ToolChoice, ToolSpec
from expertgraph.core.types import AnswerFormat, ExpertFailure, Generation, Task
from expertgraph.orchestrator.orchestrator import Orchestrator
from expertgraph.policies.aggregation.ahead_by_k import AheadByK
from expertgraph.policies.aggregation.cascade import CascadeAggregator
from expertgraph.policies.aggregation.fusion import LLMFusion
from expertgraph.policies.aggregation.judge import JudgeRanking
from expertgraph.policies.aggregation.medoid import MedoidAggregator
from expertgraph.policies.aggregation.redflags import RedFlags
from expertgraph.policies.aggregation.replay import replay_step
from expertgraph.policies.aggregation.voting import MajorityVote, WeightedVote
from expertgraph.policies.routing.fixed import AllExperts
from expertgraph.policies.specs import aggregator_factory
from expertgraph.traces.attribution import StepGame, attribute_run, shapley_values
from expertgraph.traces.labels import Reference

NUMBER = AnswerFormat(kind="number")
PAIR = {
    "type": "object",
    "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
    "required": ["a", "b"],
    "additionalProperties": False,
}
TOOLS = [
    ToolSpec(name="add", description="a + b", parameters=PAIR),
    ToolSpec(name="mul", description="a * b", parameters=PAIR),
]
ADD = 'tool:add({"a":1,"b":2})'


def call(name: str, arguments: str | dict[str, Any] | None, id: str = "c1") -> ToolCall:
    return ToolCall.parse(id, name, arguments)


def gen(expert: str, *calls: ToolCall, text: str = "", sample: int = 0, **kw: Any) -> Generation:
    return Generation(expert=expert, text=text, sample=sample, tool_calls=list(calls), **kw)


def ctx(
    scores: dict[str, float] | None = None,
    *,
    choice: ToolChoice = "auto",
    tools: list[ToolSpec] | None = TOOLS,
    fmt: AnswerFormat = NUMBER,
    calls_left: int = 8,
    order: list[str] | None = None,
) -> AggregationContext:
    scores = scores or {}
    return AggregationContext(
        task=Task(prompt="What is 1 + 2?", tools=tools, tool_choice=choice),
        instruction="What is 1 + 2?",
        answer_format=fmt,
        scores=scores,
        order=order if order is not None else sorted(scores, key=lambda n: -scores[n]),
        calls_left=calls_left,
    )


def reasons(candidates: list[Generation], context: AggregationContext) -> dict[str, str]:
    result = MajorityVote().combine(candidates, context)
    return {e.expert: e.reason for e in result.excluded}


# ---- the ballot ------------------------------------------------------------------------------


def test_equal_calls_cast_one_ballot_whatever_their_key_order_numbers_or_ids() -> None:
    one = call("add", '{"b": 2.0, "a": 1}', id="x")
    two = call("add", {"a": 1, "b": 2}, id="y")
    assert action_ballot([one]) == action_ballot([two]) == ADD
    assert action_ballot([call("add", {"a": 1, "b": 2.5})]) != ADD
    # Parallel calls are one ordered set: the same calls in another order are another ballot.
    pair = [call("add", {"a": 1, "b": 2}), call("mul", {"a": 3, "b": 4})]
    assert action_ballot(pair) == 'tool:[add({"a":1,"b":2}),mul({"a":3,"b":4})]'
    assert action_ballot(pair[::-1]) != action_ballot(pair)
    with pytest.raises(ValueError):
        action_ballot([])


def test_a_text_answer_never_reads_as_an_action() -> None:
    # An expert that writes the action as text casts a text ballot, not the action's.
    text = gen("t", text=ADD)
    result = MajorityVote().combine([text], ctx(fmt=AnswerFormat(kind="json")))
    assert result.excluded == [] and result.answer is not None
    assert not is_action(result.answer) and result.tool_calls == []
    # The escape is one-to-one: distinct answers stay distinct ballots.
    answers = ["tool:x", "text:tool:x", "text:text:tool:x", "text:x", "42", "toolx"]
    ballots = [text_ballot(a) for a in answers]
    assert len(set(ballots)) == len(answers)
    assert not any(b.startswith(ACTION_PREFIX) for b in ballots)
    assert ballots[-3:] == ["text:x", "42", "toolx"]  # only look-alikes change


def test_parse_action_reads_ballots_back() -> None:
    pair = [call("add", {"a": 1, "b": 2}), call("mul", {"a": 3, "b": [1, {"c": ")"}]})]
    ballot = action_ballot(pair)
    parsed = parse_action(ballot)
    assert parsed is not None and action_ballot(parsed) == ballot
    handwritten = parse_action('tool:add({"b": 2.0, "a": 1})')
    assert handwritten is not None and action_ballot(handwritten) == ADD
    for bad in ["add({})", "tool:add(", 'tool:add({"a":1}) x', "tool:[add({})", "tool:add([1])"]:
        assert parse_action(bad) is None, bad


# ---- red flags -------------------------------------------------------------------------------


def test_each_red_flag_on_an_action_names_its_reason() -> None:
    good = gen("good", call("add", {"a": 1, "b": 2}))
    cands = [
        good,
        gen("unknown", call("sub", {"a": 1, "b": 2})),
        gen("not_json", call("add", "{a: 1")),
        gen("not_object", call("add", "[1, 2]")),
        gen("schema_type", call("add", {"a": "one", "b": 2})),
        gen("schema_missing", call("add", {"a": 1})),
        gen("schema_extra", call("add", {"a": 1, "b": 2, "c": 3})),
        # One bad call in a parallel set flags the whole action.
        gen("parallel", call("add", {"a": 1, "b": 2}), call("mul", {"a": 1})),
    ]
    result = MajorityVote().combine(cands, ctx())
    assert result.answer == ADD and result.winner == ["good#0"]
    got = {e.expert: e.reason for e in result.excluded}
    assert got["unknown"] == "red flag: call to unknown tool 'sub' (offered: add, mul)"
    assert got["not_json"].startswith(
        "red flag: call to 'add' is malformed: arguments are not JSON"
    )
    assert got["not_object"] == (
        "red flag: call to 'add' is malformed: arguments are not a JSON object"
    )
    assert got["schema_type"].startswith("red flag: arguments of 'add' fail its schema: 'one'")
    assert got["schema_type"].endswith("(at a)")
    assert "'b' is a required property" in got["schema_missing"]
    assert "Additional properties are not allowed ('c'" in got["schema_extra"]
    assert got["parallel"].startswith("red flag: arguments of 'mul' fail its schema")
    assert "'b' is a required property" in got["parallel"]
    # No tools offered at all: every call is to an unknown tool.
    assert reasons([good], ctx(tools=None)) == {
        "good": "red flag: call to unknown tool 'add' (offered: none)"
    }
    # The tool's own schema is broken: nothing can be checked against it, so no vote.
    broken = [ToolSpec(name="add", parameters={"type": "object", "required": "a"})]
    assert reasons([good], ctx(tools=broken)) == {
        "good": "red flag: the JSON schema of tool 'add' is invalid: 'a' is not of type 'array'"
    }


def test_tool_choice_flags_text_and_calls_that_break_it() -> None:
    text = gen("text", text="The answer is 3")
    add = gen("add", call("add", {"a": 1, "b": 2}))
    mul = gen("mul", call("mul", {"a": 1, "b": 2}))
    assert reasons([text, add, mul], ctx(choice="auto")) == {}
    assert reasons([text, add, mul], ctx(choice="required")) == {
        "text": "red flag: answered in text though tool_choice is 'required'"
    }
    named = ctx(choice=NamedToolChoice(name="add"))
    assert reasons([text, add, mul], named) == {
        "text": "red flag: answered in text though tool_choice names 'add'",
        "mul": "red flag: called 'mul' though tool_choice names 'add'",
    }
    none = MajorityVote().combine([text, add, mul], ctx(choice="none"))
    assert {e.expert: e.reason for e in none.excluded} == {
        "add": "red flag: called 'add' though tool_choice is 'none'",
        "mul": "red flag: called 'mul' though tool_choice is 'none'",
    }
    assert none.answer == "3" and none.tool_calls == []
    # A task that offers no tools cannot require a call: text answers vote.
    assert reasons([text], ctx(choice="required", tools=None)) == {}


def test_failures_and_reply_shape_flags_still_apply_to_actions() -> None:
    failed = gen(
        "failed", call("add", {"a": 1, "b": 2}), error=ExpertFailure(type="timeout", message="5s")
    )
    truncated = gen("cut", call("add", {"a": 1, "b": 2}), finish_reason="length")
    ok = gen("ok", call("mul", {"a": 1, "b": 2}))
    result = MajorityVote(red_flags=RedFlags()).combine([failed, truncated, ok], ctx())
    assert {e.expert: e.reason for e in result.excluded} == {
        "failed": "failed: timeout: 5s",
        "cut": "red flag: truncated at the token limit",
    }
    assert result.answer == 'tool:mul({"a":1,"b":2})'
    # The answer pattern is about text answers; an action is not held to it.
    pattern = MajorityVote(red_flags=RedFlags(answer_pattern=r"\d+")).combine([ok], ctx())
    assert pattern.excluded == [] and pattern.tool_calls == ok.tool_calls


# ---- votes -----------------------------------------------------------------------------------


def test_text_and_action_compete_in_one_count() -> None:
    cands = [
        gen("a", call("add", {"a": 1, "b": 2}, id="a1"), text="Let me add."),
        gen("b", text="The answer is 3"),
        gen("c", call("add", '{"b": 2, "a": 1.0}', id="c1")),
        gen("d", text="3"),
        gen("e", text="So it is 3."),
    ]
    scores = {"a": 0.2, "b": 0.5, "c": 0.9, "d": 0.1, "e": 0.3}
    text_wins = MajorityVote().combine(cands, ctx(scores))
    assert text_wins.votes == {ADD: 2.0, "3": 3.0}
    assert text_wins.answer == "3" and text_wins.tool_calls == []
    assert text_wins.text == "The answer is 3"  # the best-scored supporter's text
    assert text_wins.supporters == {ADD: ["a#0", "c#0"], "3": ["b#0", "d#0", "e#0"]}

    action_wins = MajorityVote().combine(cands[:4], ctx(scores))
    assert action_wins.votes == {ADD: 2.0, "3": 2.0}
    # A tie goes to the router's favourite supporter: c, whose calls (and empty text) win.
    assert action_wins.answer == ADD and action_wins.stop_reason == "tie broken by router score"
    assert action_wins.tool_calls == cands[2].tool_calls and action_wins.tool_calls[0].id == "c1"
    assert action_wins.text == "" and not action_wins.failed
    assert action_wins.winner == ["a#0", "c#0"]
    assert action_wins.confidence == 0.5 and action_wins.margin == 0.0
    assert action_wins.comparable == ADD


def test_parallel_calls_vote_as_one_ordered_set() -> None:
    pair = [call("add", {"a": 1, "b": 2}, id="p1"), call("mul", {"a": 3, "b": 4}, id="p2")]
    swapped = pair[::-1]
    cands = [
        gen("a", *pair),
        gen("b", *[c.model_copy(update={"id": c.id + "b"}) for c in pair]),
        gen("c", *swapped),
        gen("d", pair[0]),
    ]
    result = MajorityVote().combine(cands, ctx({"a": 0.9, "b": 0.1, "c": 0.5, "d": 0.5}))
    ballot = action_ballot(pair)
    assert result.votes == {ballot: 2.0, action_ballot(swapped): 1.0, ADD: 1.0}
    assert result.answer == ballot and [c.id for c in result.tool_calls] == ["p1", "p2"]


def test_weighted_vote_on_actions() -> None:
    cands = [
        gen("weak1", call("mul", {"a": 1, "b": 2})),
        gen("weak2", call("mul", {"a": 1, "b": 2})),
        gen("strong", call("add", {"a": 1, "b": 2})),
    ]
    reliability = {"weak1": 0.55, "weak2": 0.55, "strong": 0.95}
    result = WeightedVote(reliability=reliability).combine(cands, ctx())
    assert result.answer == ADD and result.tool_calls == cands[2].tool_calls
    assert result.votes[ADD] > result.votes['tool:mul({"a":1,"b":2})']
    assert MajorityVote().combine(cands, ctx()).answer == 'tool:mul({"a":1,"b":2})'


def test_ahead_by_k_draws_actions_until_one_leads() -> None:
    add = call("add", {"a": 1, "b": 2})
    agg = AheadByK(2, source="next-expert")
    context = ctx(order=["a", "b", "c", "d"])
    first = agg.combine([gen("a", add), gen("b", call("mul", {"a": 1, "b": 2}))], context)
    assert first.more is not None and first.more.experts == ["c", "d"]
    cands = [
        gen("a", add),
        gen("b", call("mul", {"a": 1, "b": 2})),
        gen("c", call("add", {"b": 2.0, "a": 1})),
        gen("x", call("nope", {})),  # flagged: does not vote, recorded with its flag
        gen("d", call("add", '{"a": 1, "b": 2}')),
    ]
    done = agg.combine(cands, context)
    assert done.more is None and done.stop_reason == "ahead by 2"
    assert done.answer == ADD and done.tool_calls == [add]
    assert done.winner == ["a#0", "c#0", "d#0"]
    draws = done.meta["draws"]
    assert [d["answer"] for d in draws][:2] == [ADD, 'tool:mul({"a":1,"b":2})']
    assert draws[3]["flag"].startswith("red flag: call to unknown tool 'nope'")
    assert [d["lead"] for d in draws] == [1.0, 0.0, 1.0, 1.0, 2.0]


def test_ahead_by_k_replays_a_text_against_action_race() -> None:
    # Same-expert resampling, as the orchestrator would draw them, from recorded replies.
    replies = {
        "m": [
            gen("m", text="It is 3", sample=0),
            gen("m", call("add", {"a": 1, "b": 2}), sample=1),
            gen("m", call("add", {"a": 1, "b": 2}), sample=2),
            gen("m", call("add", {"a": 1.0, "b": 2}), sample=3),
        ]
    }

    def source(expert: str, sample: int, params: Any) -> Generation | None:
        items = replies.get(expert, [])
        return items[sample] if sample < len(items) else None

    out = replay_step(AheadByK(2), ctx({"m": 1.0}), ["m"], source)
    assert out.calls == 4 and out.result.answer == ADD
    assert out.result.tool_calls == replies["m"][1].tool_calls
    assert out.result.votes == {"3": 1.0, ADD: 3.0}


def test_cascade_accepts_agreeing_actions() -> None:
    cands = [gen("a", call("add", {"a": 1, "b": 2}), sample=i) for i in range(3)]
    result = CascadeAggregator(samples=2).combine(cands, ctx({"a": 1.0, "b": 0.5}))
    assert result.answer == ADD and result.tool_calls == cands[0].tool_calls


# ---- aggregators that read prose leave actions to the vote -----------------------------------


def _never(text: str) -> str:
    raise AssertionError("a fuser or judge must not be asked about actions")


class _NoEmbedder:
    name = "none"

    def encode(self, texts: list[str]) -> Any:
        raise AssertionError("actions are not embedded")


def test_medoid_fusion_and_judge_leave_actions_to_the_vote() -> None:
    cands = [
        gen("a", call("add", {"a": 1, "b": 2})),
        gen("b", call("add", {"b": 2, "a": 1})),
        gen("c", text="The answer is 4"),
        gen("d", call("unknown", {})),
    ]
    context = ctx({"a": 0.5, "b": 0.4, "c": 0.9, "d": 0.1})
    expected = MajorityVote().combine(cands, context)
    for agg in [
        MedoidAggregator(_NoEmbedder()),  # type: ignore[arg-type]
        LLMFusion(CallableExpert("fuser", _never)),
        JudgeRanking(CallableExpert("judge", _never)),
    ]:
        result = agg.combine(cands, context)
        assert result.aggregator == agg.name
        assert result.answer == expected.answer == ADD, agg.name
        assert result.tool_calls == cands[0].tool_calls
        assert result.excluded == expected.excluded and len(result.excluded) == 1
        assert result.stop_reason == "actions are left to the vote: majority"
        assert result.extra_calls == 0


def test_medoid_and_fusion_drop_text_that_breaks_a_required_call() -> None:
    cands = [gen("a", text="three"), gen("b", text="3")]
    context = ctx({"a": 0.5, "b": 0.4}, choice="required", fmt=AnswerFormat(kind="text"))
    medoid = MedoidAggregator(_NoEmbedder()).combine(cands, context)  # type: ignore[arg-type]
    fused = LLMFusion(CallableExpert("fuser", _never)).combine(cands, context)
    for result in (medoid, fused):
        assert result.answer is None and result.failed
        assert {e.reason for e in result.excluded} == {
            "red flag: answered in text though tool_choice is 'required'"
        }


# ---- attribution -----------------------------------------------------------------------------


def test_attribution_of_an_action_vote_gives_the_wrong_proposer_nothing() -> None:
    cands = [
        gen("right1", call("add", '{"a": 1, "b": 2}', id="r1")),
        gen("right2", call("add", '{"b": 2.0, "a": 1}', id="r2")),
        gen("wrong", call("mul", '{"a": 1, "b": 2}', id="w1")),
    ]
    # The wrong proposer is the router's favourite: it wins every tie it is in, and still
    # loses the vote and every credit.
    context = ctx({"right1": 0.2, "right2": 0.1, "wrong": 0.9})
    step = MajorityVote().combine(cands, context)
    assert step.answer == ADD and step.comparable == ADD
    assert step.tool_calls == cands[0].tool_calls  # right1: the better-scored supporter
    game = StepGame(cands, MajorityVote(), context, Reference("agreement", step.comparable))
    res = shapley_values(game.players, game.value)
    assert res.v_all == 1.0 and res.v_none == 0.0
    # Against "wrong" alone, each right proposer ties and loses: only the two together win.
    assert res.shapley["wrong"] < 0
    assert res.leave_one_out == {"right1": 1.0, "right2": 1.0, "wrong": 0.0}
    assert sum(res.shapley.values()) == pytest.approx(res.v_all - res.v_none)
    # With the router preferring the right proposers, the wrong one is a null player.
    fair = ctx({"right1": 0.9, "right2": 0.8, "wrong": 0.1})
    game = StepGame(cands, MajorityVote(), fair, Reference("agreement", ADD))
    res = shapley_values(game.players, game.value)
    assert res.shapley == pytest.approx({"right1": 0.5, "right2": 0.5, "wrong": 0.0})
    assert res.leave_one_out["wrong"] == 0.0


def _proposer(name: str, tool: str, arguments: str | dict[str, Any]) -> CallableExpert:
    def propose(text: str, tools: list[ToolSpec] | None = None) -> dict[str, Any]:
        assert tools is not None and [t.name for t in tools] == ["add", "mul"]
        return {"tool_calls": [{"name": tool, "arguments": arguments}]}

    return CallableExpert(name, propose)


def test_a_recorded_action_vote_is_attributed_from_its_trace(tmp_path: Path) -> None:
    experts = [
        _proposer("right1", "add", '{"a": 1, "b": 2}'),
        _proposer("right2", "add", {"b": 2.0, "a": 1}),
        _proposer("wrong", "mul", {"a": 1, "b": 2}),
    ]
    orch = Orchestrator(experts, AllExperts(), MajorityVote(), trace_dir=tmp_path)
    run = orch.run(Task(prompt="What is 1 + 2?", tools=TOOLS))
    step = run.steps[0].result
    assert step is not None and step.answer == ADD
    assert step.votes == {ADD: 2.0, 'tool:mul({"a":1,"b":2})': 1.0}
    assert [c.name for c in step.tool_calls] == ["add"] and step.tool_calls[0].arguments == {
        "a": 1,
        "b": 2,
    }
    trace = orch.trace_store.load(run.run_id)
    recorded = trace.steps()[0]
    assert {g.expert: [c.name for c in g.tool_calls] for g in recorded.generations} == {
        "right1": ["add"],
        "right2": ["add"],
        "wrong": ["mul"],
    }
    attributed = attribute_run(trace, aggregator_factory(trace))
    assert not attributed.skipped
    (only,) = attributed.steps
    assert only.answer == ADD and only.value_source == "agreement"
    assert only.result.v_all == 1.0
    assert only.result.shapley == pytest.approx({"right1": 0.5, "right2": 0.5, "wrong": 0.0})
    assert only.result.leave_one_out["wrong"] == 0.0


def test_a_label_that_expects_an_action_credits_the_expert_that_proposed_it(
    tmp_path: Path,
) -> None:
    # The vote went wrong (two proposers of mul outvote one of add); the label names the
    # right action by hand, with its own key order and spacing: attribution must value
    # each coalition's action against it, so only the add proposer earns credit.
    from expertgraph.traces import label_run
    from expertgraph.traces.attribution import attribute_stored_run

    experts = [
        _proposer("wrong1", "mul", {"a": 1, "b": 2}),
        _proposer("wrong2", "mul", {"b": 2, "a": 1}),
        _proposer("right", "add", {"a": 1, "b": 2}),
    ]
    orch = Orchestrator(experts, AllExperts(), MajorityVote(), trace_dir=tmp_path)
    run = orch.run(Task(prompt="What is 1 + 2?", tools=TOOLS))
    assert run.steps[0].result is not None and run.steps[0].result.answer != ADD
    label_run(tmp_path, run.run_id, 0.0, step=0, expected='tool:add({"b": 2.0, "a": 1})')
    attributed = attribute_stored_run(tmp_path, run.run_id, aggregator_factory(None))
    (only,) = attributed.steps
    assert only.value_source == "label-expected"
    assert only.result.v_all == 0.0
    assert only.result.leave_one_out == pytest.approx(
        {"wrong1": -0.0, "wrong2": -0.0, "right": 0.0}
    )
    assert only.result.shapley["right"] > 0 > only.result.shapley["wrong1"]
