"""Judge ranking: a chosen expert ranks the candidates (listwise) or compares them two at a
time (pairwise knockout); the top one is returned.

The judge sees candidates as quoted data, like the fuser (:mod:`.fusion`), and falls back to
a majority vote when it fails, answers something that names no candidate, or the run's
budget refuses its call. Only the judge's own verdict is read: structured output where the
expert supports it, else the last JSON object outside the candidate blocks it may repeat
(:func:`~expertgraph.policies._structured.final_json_object`), so a verdict planted in
a candidate does not steer the ranking.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Literal

from expertgraph.agents.base import Expert
from expertgraph.core import AggregationContext
from expertgraph.core.actions import is_action
from expertgraph.core.protocols import refused
from expertgraph.core.types import Generation, StepResult
from expertgraph.policies._structured import (
    drop_quoted,
    final_json_object,
    json_schema_format,
    structured_output,
)
from expertgraph.policies.aggregation._ballots import Ballot, cast_ballots, count, tally
from expertgraph.policies.aggregation.fusion import (
    DATA_RULE,
    _Call,
    _ExpertAggregator,
    call_meta,
    calls_usage,
    candidate_block,
    quote,
    refusal_reason,
)

# The quote blocks of the judge's prompts: a reply's copies of them are data, not verdicts.
_QUOTED = ("candidate", "task")
_RANKING_FORMAT = json_schema_format(
    "ranking",
    {
        "type": "object",
        "properties": {"ranking": {"type": "array", "items": {"type": "string"}}},
        "required": ["ranking"],
        "additionalProperties": False,
    },
)
_WINNER_FORMAT = json_schema_format(
    "winner",
    {
        "type": "object",
        "properties": {"winner": {"type": "string", "enum": ["A", "B"]}},
        "required": ["winner"],
        "additionalProperties": False,
    },
)


def _distinct(ballots: Sequence[Ballot]) -> list[Ballot]:
    """One ballot per answer, in first-seen order (a judge ranks answers, not copies)."""
    seen: dict[str, Ballot] = {}
    for b in ballots:
        seen.setdefault(b.answer, b)
    return list(seen.values())


_PICK = re.compile(r"\b(?:candidate|answer|id|option)?\s*#?\s*\"?(\d+)\"?", re.I)


def parse_ranking(text: str, ids: Sequence[str]) -> list[str] | None:
    """The judge's ranking (best first) as candidate ids, or None when it cannot be read.

    Reads the judge's own ``{"ranking": [...]}`` or ``{"best": id}`` (its last JSON object
    outside repeated candidate blocks) first, then a ``Ranking: 3 > 1 > 2`` style list after
    the last "ranking"; unknown ids are dropped, missing ones appended in the given order.
    """
    valid = list(ids)
    found: list[str] = []
    obj = final_json_object(text, _QUOTED)
    if obj is not None:
        raw = obj.get("ranking", obj.get("order"))
        best = obj.get("best", obj.get("winner"))
        if isinstance(raw, list):
            found = [str(x).strip() for x in raw]
        elif best is not None:
            found = [str(best).strip()]
    if not found:
        own = drop_quoted(text, _QUOTED)
        at = own.lower().rfind("ranking")
        body = own[at:] if at >= 0 else own
        found = [m.group(1) for m in _PICK.finditer(body)]
    ranked = [i for i in dict.fromkeys(found) if i in valid]
    if not ranked:
        return None
    return ranked + [i for i in valid if i not in ranked]


def parse_choice_ab(text: str) -> str | None:
    """``"A"`` or ``"B"`` from a pairwise judge's own verdict (read like
    :func:`parse_ranking`: its last JSON object, then its last "winner is ..."), or None."""
    obj = final_json_object(text, _QUOTED)
    if obj is not None:
        value = str(obj.get("winner", obj.get("better", ""))).strip().upper()
        if value in ("A", "B"):
            return value
    own = drop_quoted(text, _QUOTED)
    matches = list(
        re.finditer(
            r"(?:winner|better|answer|choice)\W{0,5}(?:is\W{0,3})?(?:candidate\s*)?\b([AB])\b",
            own,
            re.I,
        )
    )
    if matches:
        return matches[-1].group(1).upper()
    letters = re.findall(r"\b([AB])\b", own)
    return letters[0] if len(set(letters)) == 1 else None


class JudgeRanking(_ExpertAggregator):
    """A chosen expert ranks the candidates; the top one is returned.

    ``mode="listwise"``: one call shows every distinct answer and asks for a ranking.
    ``mode="pairwise"``: a knockout -- the current best meets each other candidate in turn
    (one call per match; with ``swap`` two, with the order reversed, and a split decision
    keeps the current best). Calls stop at the step's budget. Candidates that agree are
    judged once: the judge ranks distinct answers, not copies.
    """

    name = "judge"
    role = "judge"

    def __init__(
        self,
        expert: Expert,
        *,
        mode: Literal["listwise", "pairwise"] = "listwise",
        swap: bool = False,
        structured: bool | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("max_tokens", 256)
        super().__init__(expert, **kwargs)
        self.mode = mode
        self.swap = swap
        self.structured = structured
        """Ask for a JSON-schema ``response_format``; None: when the expert supports it."""

    async def _ask(
        self, system: str, user: str, context: AggregationContext, **params: Any
    ) -> Generation:
        """One judge call; asks for the verdict's JSON schema where the expert supports it."""
        if structured_output(self.expert, self.structured):
            pairwise = self.mode == "pairwise"
            params["response_format"] = _WINNER_FORMAT if pairwise else _RANKING_FORMAT
        return await super()._ask(system, user, context, **params)

    def _system(self) -> str:
        return (
            "You are a strict judge of answers to a task. Judge correctness first, then "
            "completeness and clarity. " + DATA_RULE
        )

    def listwise_prompt(
        self, shown: Sequence[Generation], context: AggregationContext
    ) -> tuple[str, str]:
        blocks = "\n".join(
            candidate_block(str(i + 1), g.text, self.max_candidate_chars)
            for i, g in enumerate(shown)
        )
        user = (
            f"Task:\n<task>\n{quote(context.instruction.strip())}\n</task>\n\n"
            f"Candidates ({len(shown)}):\n{blocks}\n\n"
            "Rank the candidates from best to worst. "
            'Reply with JSON only: {"ranking": [ids, best first]}.'
        )
        return self._system(), user

    def pairwise_prompt(
        self, a: Generation, b: Generation, context: AggregationContext
    ) -> tuple[str, str]:
        user = (
            f"Task:\n<task>\n{quote(context.instruction.strip())}\n</task>\n\n"
            f"{candidate_block('A', a.text, self.max_candidate_chars)}\n"
            f"{candidate_block('B', b.text, self.max_candidate_chars)}\n\n"
            "Which candidate answers the task better? "
            'Reply with JSON only: {"winner": "A"} or {"winner": "B"}.'
        )
        return self._system(), user

    async def acombine(
        self, candidates: list[Generation], context: AggregationContext
    ) -> StepResult:
        ballots, excluded = cast_ballots(candidates, context, flags=self.red_flags)
        if not ballots:
            return self._fallback(ballots, excluded, context, "no usable candidate to judge", [])
        if any(is_action(b.answer) for b in ballots):
            # The judge reads prose; whether to call a tool, and which call, is voted on.
            result = tally(ballots, excluded, context, self.name)
            result.stop_reason = f"actions are left to the vote: {result.stop_reason}"
            return result
        distinct = _distinct(ballots)
        if len(distinct) == 1:
            result = tally(ballots, excluded, context, self.name)
            result.stop_reason = "candidates agree; no judge call"
            return result
        if context.calls_left <= 0:
            return self._fallback(
                ballots, excluded, context, "no call left in the step's budget", []
            )
        if self.mode == "pairwise":
            return await self._pairwise(ballots, distinct, excluded, context)
        return await self._listwise(ballots, distinct, excluded, context)

    async def _listwise(
        self,
        ballots: list[Ballot],
        distinct: list[Ballot],
        excluded: list[Any],
        context: AggregationContext,
    ) -> StepResult:
        shown = [b.generation for b in distinct]
        system, user = self.listwise_prompt(shown, context)
        consulted = await self._consult(system, user, ballots, excluded, context)
        if isinstance(consulted, StepResult):
            return consulted
        gen, calls = consulted
        ids = [str(i + 1) for i in range(len(shown))]
        ranking = parse_ranking(gen.text, ids)
        if ranking is None:
            return self._fallback(
                ballots, excluded, context, "judge reply names no candidate", calls
            )
        ranked = [distinct[int(i) - 1] for i in ranking]
        return self._chosen(
            ballots, excluded, context, ranked[0], calls, {"ranking": [b.key for b in ranked]}
        )

    async def _pairwise(
        self,
        ballots: list[Ballot],
        distinct: list[Ballot],
        excluded: list[Any],
        context: AggregationContext,
    ) -> StepResult:
        # The most supported answer starts as champion, so an unfinished knockout keeps it.
        support, _ = count(ballots)
        order = sorted(distinct, key=lambda b: -support[b.answer])
        champion = order[0]
        calls: list[_Call] = []
        matches: list[dict[str, Any]] = []
        budget = context.calls_left
        refusal: str | None = None
        for challenger in order[1:]:
            need = 2 if self.swap else 1
            if len(calls) + need > budget:
                matches.append({"skipped": challenger.key, "reason": "step budget"})
                break
            verdicts: list[str | None] = []
            for first, second in [(champion, challenger), (challenger, champion)][:need]:
                system, user = self.pairwise_prompt(first.generation, second.generation, context)
                gen = await self._ask(system, user, context)
                if refused(gen):  # not made: the knockout ends where the budget does
                    refusal = refusal_reason(gen)
                    break
                calls.append(_Call(gen))
                pick = parse_choice_ab(gen.text) if gen.error is None else None
                verdicts.append(
                    None if pick is None else (first.key if pick == "A" else second.key)
                )
            if refusal is not None:
                matches.append({"skipped": challenger.key, "reason": refusal})
                break
            wins = sum(v == challenger.key for v in verdicts)
            read = [v for v in verdicts if v is not None]
            matches.append(
                {"champion": champion.key, "challenger": challenger.key, "verdicts": verdicts}
            )
            if read and wins == len(verdicts):
                champion = challenger
        if not any(v is not None for m in matches for v in m.get("verdicts", [])):
            reason = refusal or "judge replies name no candidate"
            return self._fallback(ballots, excluded, context, reason, calls)
        return self._chosen(ballots, excluded, context, champion, calls, {"matches": matches})

    def _chosen(
        self,
        ballots: list[Ballot],
        excluded: list[Any],
        context: AggregationContext,
        best: Ballot,
        calls: list[_Call],
        meta: dict[str, Any],
    ) -> StepResult:
        result = tally(ballots, excluded, context, self.name)
        total = sum(result.votes.values())
        result.text = best.generation.text.strip()
        result.answer = best.answer
        result.winner = result.supporters.get(best.answer, [best.key])
        result.confidence = result.votes.get(best.answer, 0.0) / total if total else 0.0
        result.margin = 0.0
        result.extra_calls = len(calls)
        result.stop_reason = f"judge ({self.mode})"
        result.usage = calls_usage(calls)
        result.meta.update(
            {
                "judge": self.expert.name,
                "mode": self.mode,
                **call_meta(calls),
                **meta,
            }
        )
        return result
