"""Shared pydantic types: the contracts between experts, policies, aggregators and traces.

Every package of expertgraph imports these and nothing else of each other's internals, so
a trace written today can be read back into the same objects next month.
"""

from __future__ import annotations

import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from expertgraph.core.tools import ToolCall, ToolChoice, ToolSpec

Role = Literal["system", "user", "assistant", "tool"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Message(_Model):
    """One chat message, in the OpenAI shape."""

    role: Role
    content: str = ""
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    """An assistant message's calls (its content may then be empty)."""
    tool_call_id: str | None = None
    """A ``tool`` message: the id of the call whose result it carries."""


class Usage(_Model):
    """Tokens and money spent; sums of several calls add up field by field."""

    input_tokens: int = 0
    output_tokens: int = 0
    cost: float = 0.0
    calls: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            cost=self.cost + other.cost,
            calls=self.calls + other.calls,
        )

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


class ExpertFailure(_Model):
    """Why an expert call failed, after retries. Carried as data, never raised into a run."""

    type: str
    message: str
    status_code: int | None = None
    retryable: bool = False


DEFAULT_MAX_REPLY_CHARS = 1_000_000
"""The longest reply an expert returns by default (1 MB of text); longer ones are cut."""


class Generation(_Model):
    """The result of one expert call."""

    expert: str
    text: str = ""
    finish_reason: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cost: float = 0.0
    latency_s: float = 0.0
    attempts: int = 1
    error: ExpertFailure | None = None
    model: str | None = None
    sample: int = 0
    """0 for the first call of an expert in a step, 1.. for extra samples asked by a voter."""
    params: dict[str, Any] = Field(default_factory=dict)
    tool_calls: list[ToolCall] = Field(default_factory=list)
    """The calls the expert proposes instead of (or besides) text; in the order it gave."""
    truncated: bool = False
    """The reply was longer than the expert's ``max_reply_chars`` and was cut there."""

    @property
    def ok(self) -> bool:
        return self.error is None

    def cut(self, max_chars: int) -> Generation:
        """This generation with its text cut at ``max_chars`` (flagged, finish ``length``)."""
        if len(self.text) <= max_chars:
            return self
        return self.model_copy(
            update={"text": self.text[:max_chars], "truncated": True, "finish_reason": "length"}
        )

    @property
    def usage(self) -> Usage:
        return Usage(
            input_tokens=self.input_tokens,
            output_tokens=self.output_tokens,
            cost=self.cost,
            calls=1,
        )


class ExpertCard(_Model):
    """What an expert is good at and what it costs; routers read it."""

    description: str = ""
    skills: list[str] = Field(default_factory=list)
    examples: list[str] = Field(default_factory=list)
    cost_per_1k_input: float = Field(0.0, ge=0)
    cost_per_1k_output: float = Field(0.0, ge=0)
    context_limit: int | None = Field(None, gt=0)
    max_concurrency: int = Field(4, ge=1)
    rpm: int | None = Field(None, ge=1)
    """Requests per minute this expert may take in this process (LiteLLM's ``rpm``); None: no
    limit."""
    tpm: int | None = Field(None, ge=1)
    """Tokens (input + output) per minute this expert may use in this process (``tpm``)."""
    timeout_s: float = Field(60.0, gt=0)
    tools: bool = False
    """Whether the expert can call tools; a step that offers tools is never routed to one
    that cannot."""

    def estimate_cost(self, input_tokens: int, output_tokens: int) -> float:
        return (
            input_tokens * self.cost_per_1k_input + output_tokens * self.cost_per_1k_output
        ) / 1000.0


class AnswerFormat(_Model):
    """How a step's answer is read out of an expert's text for voting."""

    kind: Literal["text", "number", "choice", "json"] = "text"
    choices: list[str] | None = None
    json_field: str | None = None
    json_schema: dict[str, Any] | None = None
    regex: str | None = None


class Budget(_Model):
    """Limits of one run; the run stops cleanly, with a reason, before crossing one."""

    max_steps: int | None = Field(None, ge=1)
    """None: a plan's own length, or 8 steps for an open task."""
    max_cost: float | None = Field(None, ge=0)
    deadline_s: float | None = Field(None, gt=0)
    max_calls_per_step: int = Field(16, ge=1)


OPEN_TASK_MAX_STEPS = 8


class PlanStep(_Model):
    """One explicit sub-step of a plan."""

    instruction: str = Field(min_length=1)
    answer_format: AnswerFormat | None = None
    experts: list[str] | None = None
    """Restrict routing of this step to these experts (the router still scores them)."""
    top_k: int | None = Field(None, ge=1)


class Task(_Model):
    """What a run is asked to do: a prompt or messages, optionally a plan."""

    id: str = Field(default_factory=lambda: uuid.uuid4().hex)
    prompt: str | None = None
    messages: list[Message] | None = None
    plan: list[PlanStep] | None = None
    answer_format: AnswerFormat = Field(default_factory=AnswerFormat)
    budget: Budget = Field(default_factory=Budget)
    system: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    """Generation params for every call of this task (max_tokens, temperature, stop...), over
    the orchestrator's defaults and each expert's own params."""
    metadata: dict[str, Any] = Field(default_factory=dict)
    tools: list[ToolSpec] | None = None
    """Tools offered to the experts at every step (OpenAI's ``tools``)."""
    tool_choice: ToolChoice = "auto"

    @model_validator(mode="after")
    def _needs_content(self) -> Task:
        if not self.prompt and not self.messages and not self.plan:
            raise ValueError("a task needs a prompt, messages or a plan")
        return self

    @property
    def max_steps(self) -> int:
        """The step limit of this task: the budget's, else the plan's length, else 8."""
        if self.budget.max_steps is not None:
            return self.budget.max_steps
        return len(self.plan) if self.plan else OPEN_TASK_MAX_STEPS

    @property
    def text(self) -> str:
        """The task as one text: the prompt, else the last user message."""
        if self.prompt:
            return self.prompt
        for message in reversed(self.messages or []):
            if message.role == "user":
                return message.content
        return ""


class Decision(_Model):
    """A routing policy's choice for the next step."""

    action: Literal["call", "finish"] = "call"
    instruction: str | None = None
    experts: list[str] = Field(default_factory=list)
    scores: dict[str, float] = Field(default_factory=dict)
    mode: Literal["top1", "topk", "all", "cascade", "fixed"] = "topk"
    rationale: str = ""
    policy: str = ""
    answer: str | None = None
    """With action 'finish': the final answer, when the policy writes it itself."""
    usage: Usage = Field(default_factory=Usage)
    """What making this decision cost (an LLM router's own call); added to the run's spend."""
    meta: dict[str, Any] = Field(default_factory=dict)


class Exclusion(_Model):
    """A candidate that did not vote, and why."""

    expert: str
    sample: int = 0
    reason: str


class SampleRequest(_Model):
    """An aggregator asking the orchestrator for more candidates within the same step."""

    experts: list[str]
    params: dict[str, Any] = Field(default_factory=dict)
    reason: str = ""


class StepResult(_Model):
    """What an aggregator makes of a step's candidates."""

    aggregator: str
    text: str = ""
    answer: str | None = None
    votes: dict[str, float] = Field(default_factory=dict)
    supporters: dict[str, list[str]] = Field(default_factory=dict)
    """Answer -> the candidate keys (``expert#sample``) that voted for it."""
    winner: list[str] = Field(default_factory=list)
    """Candidate keys whose answer was returned."""
    confidence: float = 0.0
    margin: float = 0.0
    excluded: list[Exclusion] = Field(default_factory=list)
    extra_calls: int = 0
    usage: Usage = Field(default_factory=Usage)
    """What the aggregator's own calls cost (a fuser's or judge's); added to the step's spend."""
    more: SampleRequest | None = None
    stop_reason: str = ""
    meta: dict[str, Any] = Field(default_factory=dict)
    tool_calls: list[ToolCall] = Field(default_factory=list)
    """The action the vote chose when it chose to call tools (the winner's calls, in order);
    then ``answer`` is the action's canonical form and ``text`` the winner's text, if any."""

    @property
    def failed(self) -> bool:
        """No answer and no text: no candidate survived (every expert failed or was excluded)."""
        return self.answer is None and not self.text

    @property
    def output(self) -> str | None:
        """What the step says, as a reader (or the next step) gets it: the text, else the answer."""
        return self.text or self.answer

    @property
    def comparable(self) -> str | None:
        """What the step answers, as a label compares it: the extracted answer, else the text."""
        return self.answer if self.answer is not None else (self.text or None)


class Step(_Model):
    """One finished step of a run."""

    index: int
    instruction: str
    decision: Decision
    generations: list[Generation] = Field(default_factory=list)
    result: StepResult | None = None
    usage: Usage = Field(default_factory=Usage)


class RunResult(_Model):
    """The outcome of a run."""

    run_id: str
    task: Task
    answer: str | None = None
    steps: list[Step] = Field(default_factory=list)
    usage: Usage = Field(default_factory=Usage)
    stop_reason: str = ""
    trace_path: str | None = None
    latency_s: float = 0.0
    tool_calls: list[ToolCall] = Field(default_factory=list)
    """Calls the run ended on, for its caller to execute (a client-driven agent's turn)."""

    @property
    def ok(self) -> bool:
        return self.answer is not None


def candidate_key(generation: Generation) -> str:
    """Stable name of one candidate inside a step: ``expert#sample``."""
    return f"{generation.expert}#{generation.sample}"


class RoutingExample(_Model):
    """One row of a routing dataset: a prompt and how well (and at what cost) each expert did.

    Stored as JSONL, one example per line. ``expertgraph train`` reads it, ``expertgraph
    eval`` measures policies on it, and ``expertgraph traces export`` writes it from traces.
    """

    id: str
    prompt: str
    scores: dict[str, float]
    """Expert name -> quality of its answer (1/0 for correct/wrong, or a graded score)."""
    costs: dict[str, float] = Field(default_factory=dict)
    """Expert name -> cost of answering this prompt (money or a price-weighted token count)."""
    responses: dict[str, str] = Field(default_factory=dict)
    task: str | None = None
    """A task label (benchmark name), when known."""
    meta: dict[str, Any] = Field(default_factory=dict)
