"""Durable runs: a real ``expertgraph run`` subprocess SIGKILLed at every superstep boundary of
a 5-step plan (and inside a superstep, after one expert's result was saved), then
``--resume``d, on SQLite and on a real PostgreSQL server; the Python API's ``resume=True``;
the graph state through the checkpointer's serializer; the errors of a bad resume.

Each expert asks its own loopback OpenAI-compatible server, which counts the calls it saw.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from openai_server import OpenAIServer, RecordedRequest, Reply

from expertgraph.agents import CallableExpert
from expertgraph.core import CheckpointError, PlanStep, Task
from expertgraph.orchestrator import Orchestrator, tool
from expertgraph.orchestrator._checkpoint import open_saver, serializer, thread
from expertgraph.policies import AllExperts, MajorityVote
from expertgraph.traces.schema import CallRecord, RunEnd, RunStart
from expertgraph.traces.store import load_run

TESTS = Path(__file__).parent
KILLING_CLI = TESTS / "_killing_cli.py"
STEPS = 5
SUPERSTEPS = 2 + 3 * STEPS + 1
"""Checkpoints of a run: its input, the input applied, route/call/aggregate per step, the
final route."""


def _step_of(text: str) -> int:
    """The step a prompt asks: its instruction comes last and ends with ``Q<n>``."""
    return int(re.findall(r"Q(\d+)", text)[-1])


def answer(request: RecordedRequest) -> Reply:
    text = request.last_user_text
    step = _step_of(text)
    if step < STEPS:
        return Reply(text=f"code-{7 * step}")
    return Reply(text="+".join(re.findall(r"code-\d+", text)))


def plan_file(tmp: Path) -> Path:
    steps = [f"Say the code of Q{i}." for i in range(1, STEPS)]
    steps.append("Join " + " ".join(f"{{step{i}}}" for i in range(1, STEPS)) + f" for Q{STEPS}.")
    path = tmp / "plan.yaml"
    path.write_text(yaml.safe_dump({"steps": steps}), encoding="utf-8")
    return path


EXPECTED = "+".join(f"code-{7 * i}" for i in range(1, STEPS))


def config_file(
    tmp: Path, checkpoint: dict[str, Any], experts: list[dict[str, Any]], detail: str = "full"
) -> Path:
    path = tmp / "expertgraph.yaml"
    config = {
        "name": "resume",
        "home": str(tmp / "home"),
        "experts": experts,
        "policy": {"name": "all"},
        "aggregator": {"name": "majority"},
        "checkpoint": checkpoint,
        "trace": {"detail": detail},
    }
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


CALLABLE_EXPERTS = [
    {"name": "a", "kind": "callable", "callable": "_resume_experts:ask_a"},
    {"name": "b", "kind": "callable", "callable": "_resume_experts:ask_b"},
]


class Experts:
    """The two loopback servers, the config and plan files, and the CLI runner."""

    def __init__(
        self,
        tmp: Path,
        checkpoint: dict[str, Any],
        experts: list[dict[str, Any]],
        detail: str = "full",
    ):
        self.tmp = tmp
        self.a = OpenAIServer(answer).start()
        self.b = OpenAIServer(answer).start()
        self.config = config_file(tmp, checkpoint, experts, detail)
        self.plan = plan_file(tmp)

    def close(self) -> None:
        self.a.stop()
        self.b.stop()

    def cli(self, *args: str, kill: str | None = None) -> subprocess.CompletedProcess[str]:
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
            "RESUME_SERVER_A": self.a.url,
            "RESUME_SERVER_B": self.b.url,
        }
        env.pop("EXPERTGRAPH_KILL_AFTER", None)
        if kill:
            env["EXPERTGRAPH_KILL_AFTER"] = kill
        command = [sys.executable, str(KILLING_CLI), "run", "--config", str(self.config)]
        return subprocess.run(
            [*command, "--json", "--quiet", *args],
            cwd=self.tmp,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )

    def start(self, run_id: str, kill: str | None = None) -> subprocess.CompletedProcess[str]:
        return self.cli("--plan", str(self.plan), "--run-id", run_id, kill=kill)

    def calls(self) -> dict[str, Counter[int]]:
        """Per server, how many calls it saw for each step."""
        return {
            name: Counter(_step_of(r.last_user_text) for r in server.requests)
            for name, server in (("a", self.a), ("b", self.b))
        }


def _json(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def uninterrupted(experts: Experts) -> dict[str, Any]:
    """A run nobody kills: its answer, then the servers forget it."""
    result = _json(experts.start("baseline"))
    assert result["answer"] == EXPECTED
    assert experts.calls() == {n: Counter(range(1, STEPS + 1)) for n in "ab"}
    experts.a.reset()
    experts.b.reset()
    return result


def kill_at_every_boundary(experts: Experts, run_id: str) -> dict[str, Any]:
    """Kill the run as each checkpoint is saved, resume it, kill the resumed run as its own
    first checkpoint is saved, and so on: one kill at each superstep boundary, in order."""
    proc = experts.start(run_id, kill="put:1")
    kills = 0
    while proc.returncode == -9:
        kills += 1
        assert kills <= SUPERSTEPS + 1, "the run never ends"
        proc = experts.cli("--resume", run_id, kill="put:1")
    result = _json(proc)
    assert kills == SUPERSTEPS, proc.stderr[-2000:]
    return result


def check_trace(path: str, experts: int = 2) -> None:
    """One run in one trace: a start, every step with all its candidates, one answer."""
    trace = load_run(path)
    assert sum(isinstance(r, RunStart) for r in trace.records) == 1
    assert [r.answer for r in trace.records if isinstance(r, RunEnd)] == [EXPECTED]
    steps = trace.steps()
    assert [len(s.generations) for s in steps] == [experts] * STEPS
    assert trace.result().answer == EXPECTED


@pytest.fixture
def sqlite_experts(tmp_path: Path) -> Iterator[Experts]:
    experts = Experts(tmp_path, {"backend": "sqlite"}, CALLABLE_EXPERTS)
    yield experts
    experts.close()


def test_sigkill_at_every_superstep_boundary_then_resume_sqlite(sqlite_experts: Experts) -> None:
    baseline = uninterrupted(sqlite_experts)
    result = kill_at_every_boundary(sqlite_experts, "killed")
    assert result["answer"] == baseline["answer"]
    assert [s["answer"] for s in result["steps"]] == [s["answer"] for s in baseline["steps"]]
    # Each expert's server saw each step's call once, over all the kills.
    assert sqlite_experts.calls() == {n: Counter(range(1, STEPS + 1)) for n in "ab"}
    assert (sqlite_experts.tmp / "home" / "checkpoints.sqlite").is_file()
    check_trace(result["trace"])


@pytest.mark.parametrize(
    ("backend", "detail"), [("sqlite", "full"), ("sqlite", "decisions"), ("postgres", "full")]
)
def test_sigkill_inside_a_superstep_keeps_the_saved_call(
    tmp_path: Path, backend: str, detail: str, request: pytest.FixtureRequest
) -> None:
    """Killed once expert a's step-2 answer is saved while b's step-2 call is in flight:
    resumed, a is not asked again, b (whose answer never came) is. At ``decisions`` detail
    the trace held a's record for the vote when the run died: the resume writes it."""
    checkpoint: dict[str, Any] = {"backend": backend}
    if backend == "postgres":
        checkpoint["dsn"] = request.getfixturevalue("postgres")
    experts = Experts(tmp_path, checkpoint, CALLABLE_EXPERTS, detail)
    b_received = {step: threading.Event() for step in range(1, STEPS + 1)}
    stalled: set[int] = set()

    def answer_a(request: RecordedRequest) -> Reply:
        # a answers a step only once b has its call of the step: b is then in flight.
        b_received[_step_of(request.last_user_text)].wait(timeout=30)
        return answer(request)

    def answer_b(request: RecordedRequest) -> Reply:
        step = _step_of(request.last_user_text)
        b_received[step].set()
        if step == 2 and step not in stalled:
            stalled.add(step)
            return Reply(text=answer(request).text, delay_s=5)
        return answer(request)

    experts.a.handler, experts.b.handler = answer_a, answer_b
    try:
        # Saved writes: 1 the input, 2 step-1 route, 3-4 its calls, 5 its vote, 6 step-2 route,
        # 7 a's step-2 call.
        killed = experts.start("inside", kill="writes:7")
        assert killed.returncode == -9, killed.stderr[-2000:]
        assert experts.calls()["a"][2] == 1 and experts.calls()["b"][2] == 1
        result = _json(experts.cli("--resume", "inside"))
        assert result["answer"] == EXPECTED
        calls = experts.calls()
        assert calls["a"] == Counter(range(1, STEPS + 1))
        assert calls["b"] == Counter(range(1, STEPS + 1)) + Counter({2: 1})
        trace = load_run(result["trace"])
        step2 = [r for r in trace.records if isinstance(r, CallRecord) and r.step == 1]
        # a's saved answer is in the trace once; b's answer of the resumed call once.
        assert sorted(r.generation.expert for r in step2) == ["a", "b"]
        check_trace(result["trace"])
    finally:
        experts.close()


def test_api_experts_resume_after_sigkill(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same with real API experts (LiteLLM to the loopback servers), killed mid-plan."""
    monkeypatch.setenv("RESUME_TEST_KEY", "sk-test")
    experts = Experts(tmp_path, {"backend": "sqlite"}, [])
    experts.config = config_file(
        tmp_path,
        {"backend": "sqlite"},
        [
            {
                "name": name,
                "kind": "api",
                "model": f"openai/{name}",
                "api_base": server.url + "/v1",
                "api_key_env": "RESUME_TEST_KEY",
                "retry": {"max_attempts": 1},
            }
            for name, server in (("a", experts.a), ("b", experts.b))
        ],
    )
    try:
        killed = experts.start("api", kill="put:8")
        assert killed.returncode == -9, killed.stderr[-2000:]
        result = _json(experts.cli("--resume", "api"))
        assert result["answer"] == EXPECTED
        assert experts.calls() == {n: Counter(range(1, STEPS + 1)) for n in "ab"}
        check_trace(result["trace"])
    finally:
        experts.close()


@pytest.fixture(scope="module")
def postgres() -> Iterator[str]:
    from _postgres import INSTALL_HINT, PostgresServer, server_bin_dir

    if server_bin_dir() is None:
        pytest.fail(f"PostgreSQL is needed for the shared checkpointer test: {INSTALL_HINT}")
    with PostgresServer() as server:
        yield server.dsn


def test_sigkill_at_every_superstep_boundary_then_resume_postgres(
    tmp_path: Path, postgres: str
) -> None:
    experts = Experts(tmp_path, {"backend": "postgres", "dsn": postgres}, CALLABLE_EXPERTS)
    try:
        baseline = uninterrupted(experts)
        result = kill_at_every_boundary(experts, "killed-pg")
        assert result["answer"] == baseline["answer"]
        assert experts.calls() == {n: Counter(range(1, STEPS + 1)) for n in "ab"}
        assert not (tmp_path / "home" / "checkpoints.sqlite").exists()
        check_trace(result["trace"])
    finally:
        experts.close()


# ---- the Python API ---------------------------------------------------------------------


def _plan() -> Task:
    return Task(plan=[PlanStep(instruction=f"Say the code of Q{i}.") for i in range(1, 4)])


async def test_arun_resume_continues_a_cancelled_run(tmp_path: Path) -> None:
    """A run cancelled in step 2 (its process went away): a new orchestrator resumes it with
    ``arun(run_id=..., resume=True)``; step 1 is not asked again, spend is the run's."""
    seen: Counter[tuple[str, int]] = Counter()
    block = asyncio.Event()

    def expert(name: str) -> CallableExpert:
        async def answer_step(prompt: str) -> dict[str, Any]:
            step = _step_of(prompt)
            seen[(name, step)] += 1
            if step == 2 and not block.is_set():
                await asyncio.Event().wait()  # hangs until cancelled
            return {"text": f"code-{7 * step}", "cost": 0.01}

        return CallableExpert(name, answer_step)

    def orchestrator() -> Orchestrator:
        return Orchestrator(
            [expert("a"), expert("b")],
            AllExperts(),
            MajorityVote(),
            trace_dir=tmp_path / "traces",
            checkpointer=tmp_path / "checkpoints.sqlite",
        )

    run = asyncio.create_task(orchestrator().arun(_plan(), run_id="api-run"))
    while seen[("a", 2)] + seen[("b", 2)] < 2:
        await asyncio.sleep(0.01)
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    block.set()
    result = await orchestrator().arun(run_id="api-run", resume=True)
    assert result.answer == "code-21"
    assert [s.result.output for s in result.steps if s.result] == ["code-7", "code-14", "code-21"]
    assert seen == Counter({(n, s): 1 for n in "ab" for s in (1, 3)} | {("a", 2): 2, ("b", 2): 2})
    # Spend: the calls answered (the cancelled ones never answered, so never cost).
    assert result.usage.cost == pytest.approx(0.06)
    assert result.trace_path == str(tmp_path / "traces" / "api-run.jsonl")
    # Resuming an ended run gives its result again and calls nobody.
    again = await orchestrator().arun(_plan(), run_id="api-run", resume=True)
    assert again.answer == "code-21" and sum(seen.values()) == 8


async def test_bad_resumes_are_clear_errors(tmp_path: Path) -> None:
    experts = [CallableExpert("a", lambda prompt: "code-7")]
    durable = Orchestrator(
        experts, trace_dir=tmp_path / "t", checkpointer=tmp_path / "c.sqlite", policy=AllExperts()
    )
    with pytest.raises(CheckpointError, match="no checkpoint of run 'nope'"):
        await durable.arun(run_id="nope", resume=True)
    await durable.arun("Say the code of Q1.", run_id="once")
    with pytest.raises(CheckpointError, match="already has a checkpoint"):
        await durable.arun("Say the code of Q1.", run_id="once")
    with pytest.raises(CheckpointError, match="started with another task"):
        await durable.arun("Something else Q2", run_id="once", resume=True)
    entered = asyncio.Event()

    async def hang(prompt: str) -> str:
        entered.set()
        await asyncio.Event().wait()
        return "never"

    hanging = Orchestrator(
        [CallableExpert("a", hang)],
        trace_dir=tmp_path / "t",
        checkpointer=tmp_path / "c.sqlite",
        policy=AllExperts(),
    )
    cancelled = asyncio.create_task(hanging.arun("Say Q1", run_id="other-experts"))
    await entered.wait()
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    renamed = Orchestrator(
        [CallableExpert("z", lambda prompt: "1")],
        trace_dir=tmp_path / "t",
        checkpointer=tmp_path / "c.sqlite",
        policy=AllExperts(),
    )
    with pytest.raises(CheckpointError, match="was started with experts a; this configuration"):
        await renamed.arun(run_id="other-experts", resume=True)
    memory = Orchestrator(experts, trace_dir=tmp_path / "t", policy=AllExperts())
    with pytest.raises(CheckpointError, match="needs a checkpointer"):
        await memory.arun(run_id="once", resume=True)


def test_cli_resume_errors(sqlite_experts: Experts) -> None:
    unknown = sqlite_experts.cli("--resume", "no-such-run")
    assert unknown.returncode == 2
    assert "no checkpoint of run 'no-such-run'" in unknown.stderr
    assert "Traceback" not in unknown.stderr
    both = sqlite_experts.cli("--resume", "x", "--plan", str(sqlite_experts.plan))
    assert both.returncode == 2 and "--resume continues the run's own task" in both.stderr


def test_checkpoint_none_writes_no_checkpoint(tmp_path: Path) -> None:
    experts = Experts(tmp_path, {"backend": "none"}, CALLABLE_EXPERTS)
    try:
        assert _json(experts.start("plain"))["answer"] == EXPECTED
        assert not (tmp_path / "home" / "checkpoints.sqlite").exists()
        resumed = experts.cli("--resume", "plain")
        assert resumed.returncode == 2 and "needs a checkpointer" in resumed.stderr
    finally:
        experts.close()


def test_served_configs_checkpoint_only_when_the_file_asks(tmp_path: Path) -> None:
    """A served request cannot be resumed by its client: serve and the adapters save no
    checkpoint unless the configuration names a ``checkpoint:`` section itself."""
    from expertgraph.orchestrator.integrations.catalog import ModelCatalog

    base = "experts:\n  - {name: e, kind: callable, callable: 'serve_experts:broken'}\n"
    plain = tmp_path / "plain.yaml"
    plain.write_text(f"home: {tmp_path / 'a'}\n{base}", encoding="utf-8")
    asked = tmp_path / "asked.yaml"
    asked.write_text(
        f"home: {tmp_path / 'b'}\ncheckpoint: {{backend: sqlite}}\n{base}", encoding="utf-8"
    )
    assert Orchestrator.from_config(plain).checkpointer is not None  # `run` saves by default
    catalog = ModelCatalog.from_paths([plain, asked], aliases=False)
    saved = {m.name: m.orchestrator.checkpointer is not None for m in catalog}
    assert saved == {"plain": False, "asked": True}


# ---- the state through the serializer -----------------------------------------------------


@tool
def price(item: str) -> int:
    """The price of one item, in cents."""
    return {"apple": 40, "pear": 90}[item]


async def test_graph_state_round_trips_through_the_checkpoint_serializer(tmp_path: Path) -> None:
    """Every channel of a finished agent run (tool calls and results included) comes back from
    the saved checkpoint as the same values of the same types, with no pickle."""

    def agent(messages: list[Any], tools: Any) -> Any:
        results = [m.content for m in messages if m.role == "tool"]
        if results:
            return f"A pear costs {results[-1]} cents."
        return {"tool_calls": [{"name": "price", "arguments": {"item": "pear"}}]}

    orch = Orchestrator(
        [CallableExpert("agent", agent)],
        AllExperts(),
        tools=[price],
        trace_dir=tmp_path / "traces",
        checkpointer=tmp_path / "c.sqlite",
    )
    result = await orch.arun("How much is a pear?", run_id="agent")
    assert result.answer == "A pear costs 90 cents."
    assert serializer().pickle_fallback is False
    async with open_saver(orch.checkpointer) as saver:  # type: ignore[arg-type]
        snapshot = await orch._graph.with_checkpointer(saver).aget_state(thread("agent"))
        saved = await saver.aget_tuple(thread("agent"))
    values = snapshot.values
    assert saved is not None
    assert {type(s.result.tool_calls[0]).__name__ for s in values["steps"][:1]} == {"ToolCall"}
    assert type(values["tool_results"][0]).__name__ == "ToolRecord"
    for key, value in values.items():
        back = serializer().loads_typed(serializer().dumps_typed(value))
        assert back == value and type(back) is type(value), key
    assert values["answer"] == result.answer
    assert [type(s).__name__ for s in values["steps"]] == ["Step", "Step"]


async def test_a_reopened_recorder_rebuilds_spend_and_health_from_the_trace(
    tmp_path: Path,
) -> None:
    """Spend, each step's spend and health come back from the trace's calls; a run already
    past its cost ceiling makes no further call once resumed."""
    from expertgraph.core import Budget
    from expertgraph.orchestrator._recorder import RunRecorder
    from expertgraph.traces.store import TraceWriter

    def costly(prompt: str) -> dict[str, Any]:
        return {"text": "code-7", "cost": 0.01, "input_tokens": 3, "output_tokens": 2}

    def broken(prompt: str) -> str:
        raise RuntimeError("down")

    orch = Orchestrator(
        [CallableExpert("a", costly), CallableExpert("b", broken)],
        AllExperts(),
        trace_dir=tmp_path / "traces",
    )
    done = await orch.arun(_plan())
    records = load_run(done.trace_path).records
    task = Task(prompt="x", budget=Budget(max_cost=0.02))
    recorder = RunRecorder.reopen(
        records, run_id="r", task=task, writer=TraceWriter(tmp_path / "r.jsonl")
    )
    assert recorder.usage.cost == pytest.approx(done.usage.cost) == pytest.approx(0.03)
    assert recorder.usage.total_tokens == done.usage.total_tokens
    assert [recorder.end_step(i).cost for i in range(3)] == pytest.approx([0.01] * 3)
    assert (recorder.health["a"].calls, recorder.health["a"].errors) == (3, 0)
    b_calls = sum(isinstance(r, CallRecord) and r.generation.expert == "b" for r in records)
    assert b_calls >= 1
    assert (recorder.health["b"].calls, recorder.health["b"].errors) == (b_calls, b_calls)
    assert recorder.health["b"].last_error and "down" in recorder.health["b"].last_error
    assert recorder.overrun is not None and recorder.overrun.startswith("budget_overrun")
    refused = await recorder.call(
        CallableExpert("a", costly), [], role="candidate", step=3, instruction="more"
    )
    assert refused.error is not None and refused.attempts == 0


async def test_an_unreachable_postgres_is_one_clear_error_without_the_password(
    tmp_path: Path,
) -> None:
    from openai_server import free_port

    dsn = f"postgresql://eg:s3cret-pw@127.0.0.1:{free_port()}/expertgraph"
    orch = Orchestrator(
        [CallableExpert("a", lambda prompt: "1")],
        AllExperts(),
        trace_dir=tmp_path,
        checkpointer=dsn,
    )
    with pytest.raises(CheckpointError, match=r"cannot connect to the checkpoint database") as err:
        await orch.arun("Say Q1")
    assert "s3cret-pw" not in str(err.value) and "eg:***@127.0.0.1" in str(err.value)


def test_a_sqlite_checkpointed_run_keeps_only_its_latest_checkpoints(tmp_path: Path) -> None:
    import sqlite3

    from expertgraph.orchestrator._checkpoint import PRUNE_EVERY

    database = tmp_path / "checkpoints.sqlite"
    orch = Orchestrator(
        [CallableExpert("a", lambda prompt: "ok")],
        AllExperts(),
        MajorityVote(),
        trace_dir=tmp_path / "traces",
        checkpointer=database,
    )
    steps = 60  # about 120 supersteps, each saved
    result = orch.run(Task(plan=[PlanStep(instruction=f"step {i}") for i in range(steps)]))
    assert len(result.steps) == steps
    with sqlite3.connect(database) as conn:
        kept = conn.execute(
            "SELECT COUNT(*) FROM checkpoints WHERE thread_id = ?", (result.run_id,)
        ).fetchone()[0]
    assert 2 <= kept <= PRUNE_EVERY + 2
    # The latest checkpoint is whole: the finished run answers again from it.
    again = orch.run(run_id=result.run_id, resume=True)
    assert again.answer == result.answer and len(again.steps) == steps
