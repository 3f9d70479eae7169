"""The Ray executor of ``batch`` and ``collect``: tasks spread over a Ray cluster's workers.

Each worker is a Ray actor that builds the orchestrator from the same config once (on its
first task) and runs many tasks at a time on its event loop. The driver keeps the results
file, so resuming and the summary are exactly those of a single-process run; it hands each
task to the least busy worker and, when a worker dies under a task (killed, its node lost),
hands the task to another one, while Ray restarts the dead worker.

Local Hugging Face experts are not loaded by every worker: one actor per model per node
(``num_gpus=1`` on a node with a GPU) holds the model, and every worker of that node calls it
through a thin proxy expert. They are created by a host actor the driver owns, so they outlive
the workers that use them. Per-expert ``rpm``/``tpm``/``max_concurrency`` are split evenly
over the workers (each enforces its share); a hosted model enforces its own card for its node.
Traces are written by the workers into the configured trace directory (on one machine, or a
shared file system) and indexed there as each run closes.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from expertgraph.agents.base import Expert, RawOutput
from expertgraph.core.errors import ExpertCallError, MissingDependencyError
from expertgraph.core.types import ExpertCard, Generation, Message, RoutingExample
from expertgraph.orchestrator._batch import BatchResult, BatchTask, failed_result
from expertgraph.orchestrator.config.schema import (
    CheckpointConfig,
    ExpertGraphConfig,
    LocalExpertConfig,
)

NAMESPACE = "expertgraph"


def _ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise MissingDependencyError("ray", "ray") from exc
    return ray


def worker_card(card: ExpertCard, workers: int) -> ExpertCard:
    """One worker's share of an expert's limits (at least one of each)."""

    def share(value: int | None) -> int | None:
        return None if value is None else max(1, value // workers)

    return card.model_copy(
        update={
            "max_concurrency": share(card.max_concurrency),
            "rpm": share(card.rpm),
            "tpm": share(card.tpm),
        }
    )


def worker_config(cfg: ExpertGraphConfig, workers: int) -> ExpertGraphConfig:
    """The config a worker builds: API and callable experts with their share of the limits
    (hosted local experts keep theirs: their actor enforces them), and no checkpoints (a batch
    resumes by task id from the driver's results file; a task's run could never be resumed)."""
    experts = [
        e
        if isinstance(e, LocalExpertConfig)
        else e.model_copy(update={"card": worker_card(e.card, workers)})
        for e in cfg.experts
    ]
    return cfg.model_copy(
        update={"experts": experts, "checkpoint": CheckpointConfig(backend="none")}
    )


# ---- hosted local experts ------------------------------------------------------------------


class _HostedExpert:
    """A Ray actor holding one local model; the node's workers call :meth:`generate`."""

    def __init__(self, config: dict[str, Any]) -> None:
        from expertgraph.orchestrator.config.build import build_expert

        self.expert = build_expert(LocalExpertConfig.model_validate(config))

    async def load(self) -> None:
        await self.expert.load()

    def pid(self) -> int:
        return os.getpid()

    async def generate(self, messages: list[Message], params: dict[str, Any]) -> Generation:
        return await self.expert.generate(messages, **params)


class _ExpertHost:
    """Creates the hosted experts of a node on first request and owns them (they outlive the
    workers that call them)."""

    def __init__(self, configs: list[dict[str, Any]]) -> None:
        self.configs = configs
        self.nodes: dict[str, dict[str, Any]] = {}

    def experts_on(self, node_id: str, gpu: bool) -> dict[str, Any]:
        if node_id not in self.nodes:
            ray = _ray()
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            hosted = ray.remote(_HostedExpert)
            handles = {}
            for config in self.configs:
                handles[config["name"]] = hosted.options(
                    num_cpus=0,
                    num_gpus=1 if gpu else 0,
                    max_concurrency=64,
                    max_restarts=-1,
                    scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
                ).remote(config)
            self.nodes[node_id] = handles
        return self.nodes[node_id]

    async def hosted(self) -> dict[str, dict[str, int]]:
        """Node id -> expert -> the process id of the actor holding it."""
        out: dict[str, dict[str, int]] = {}
        for node_id, handles in self.nodes.items():
            out[node_id] = {name: await h.pid.remote() for name, h in handles.items()}
        return out


class RemoteExpert(Expert):
    """A worker's stand-in for a local expert hosted by its node's actor."""

    kind = "local"

    def __init__(self, name: str, card: ExpertCard, model: str, handle: Any) -> None:
        super().__init__(name, card)
        self.model = model
        self._handle = handle
        self._loaded = False

    async def load(self) -> None:
        # Once per worker: the hosted actor loads the weights (once per node).
        if not self._loaded:
            await self._handle.load.remote()
            self._loaded = True

    async def _generate(self, messages: list[Message], params: dict[str, Any]) -> RawOutput:
        gen: Generation = await self._handle.generate.remote(messages, params)
        if gen.error is not None:
            raise ExpertCallError(
                gen.error.message,
                type=gen.error.type,
                status_code=gen.error.status_code,
                retryable=gen.error.retryable,
                attempts=gen.attempts,
            )
        return RawOutput(
            text=gen.text,
            finish_reason=gen.finish_reason,
            input_tokens=gen.input_tokens,
            output_tokens=gen.output_tokens,
            cost=gen.cost,
            attempts=gen.attempts,
            model=gen.model,
            tool_calls=list(gen.tool_calls),
        )


# ---- workers -------------------------------------------------------------------------------


class _Worker:
    """A Ray actor: one orchestrator, built from the config on the first task."""

    def __init__(self, config: dict[str, Any], base_dir: str, host: Any) -> None:
        self.config = ExpertGraphConfig.model_validate(config)
        self.base_dir = base_dir
        self.host = host
        self.orch: Any = None
        self._lock = asyncio.Lock()

    def pid(self) -> int:
        return os.getpid()

    def cpu_s(self) -> float:
        return time.process_time()

    async def _orchestrator(self) -> Any:
        async with self._lock:
            if self.orch is None:
                from expertgraph.orchestrator.orchestrator import Orchestrator

                experts: dict[str, Expert] = {}
                if self.host is not None:
                    ray = _ray()
                    context = ray.get_runtime_context()
                    gpu = bool(ray.get_gpu_ids()) or _node_has_gpu(context.get_node_id())
                    handles = await self.host.experts_on.remote(context.get_node_id(), gpu)
                    for e in self.config.experts:
                        if isinstance(e, LocalExpertConfig):
                            experts[e.name] = RemoteExpert(e.name, e.card, e.model, handles[e.name])
                self.orch = Orchestrator.from_config(
                    self.config, base_dir=self.base_dir, experts=experts or None
                )
            return self.orch

    async def ready(self) -> dict[str, str | None]:
        """Build the orchestrator and load its experts; expert -> load error (None: loaded)."""
        return dict(await (await self._orchestrator()).aload())

    async def run_task(self, item: BatchTask) -> BatchResult:
        from expertgraph.orchestrator._batch import run_task

        return await run_task(await self._orchestrator(), item)

    async def run_tasks(self, items: list[BatchTask]) -> list[BatchResult]:
        """Several tasks in one actor call, concurrently (see ``RayExecutor.run_task``)."""
        from expertgraph.orchestrator._batch import run_task

        orch = await self._orchestrator()
        return list(await asyncio.gather(*(run_task(orch, item) for item in items)))

    async def collect_one(
        self, item: BatchTask, experts: list[str], scorer: str | None
    ) -> RoutingExample:
        from expertgraph.orchestrator._batch import collect_one, load_scorer

        orch = await self._orchestrator()
        return await collect_one(orch, item, experts, load_scorer(scorer) if scorer else None)

    async def aclose(self) -> None:
        if self.orch is not None:
            await self.orch.aclose()


def _node_has_gpu(node_id: str) -> bool:
    for node in _ray().nodes():
        if node.get("NodeID") == node_id:
            return float((node.get("Resources") or {}).get("GPU", 0)) > 0
    return False


def _python_path() -> str:
    """The driver's import path, so workers import what it can (callables of the config)."""
    entries = [str(Path(p).resolve()) for p in sys.path if p and Path(p).is_dir()]
    return os.pathsep.join(dict.fromkeys([str(Path.cwd()), *entries]))


CHUNK = 16
"""The most batch tasks one actor call carries."""
CHUNK_WAIT_S = 0.002
"""How long a task waits for others to share its actor call."""


class RayExecutor:
    """Runs ``batch`` and ``collect`` items on ``workers`` Ray actors.

    Joins a running Ray (``ray.init`` already called), else the cluster at ``address``, else
    starts a local one with a CPU per worker. ``retries``: how many other workers a task is
    handed to after the one running it died.
    """

    def __init__(
        self,
        cfg: ExpertGraphConfig,
        *,
        address: str | None = None,
        workers: int = 2,
        concurrency: int = 8,
        base_dir: str | Path | None = None,
        retries: int = 3,
    ) -> None:
        ray = _ray()
        self._started_ray = False
        if not ray.is_initialized():
            options: dict[str, Any] = {
                "namespace": NAMESPACE,
                "include_dashboard": False,
                "log_to_driver": False,
                "runtime_env": {"env_vars": {"PYTHONPATH": _python_path()}},
            }
            if address:
                options["address"] = address
            else:
                options["num_cpus"] = max(workers, os.cpu_count() or 1)
            ray.init(**options)
            self._started_ray = True
        self.retries = retries
        base = str(Path(base_dir or Path.cwd()).resolve())
        self.trace_dir = cfg.trace_dir(Path(base))
        self._index = cfg.trace.index
        local = [e.model_dump(mode="json") for e in cfg.experts if isinstance(e, LocalExpertConfig)]
        self._host = ray.remote(_ExpertHost).options(num_cpus=0).remote(local) if local else None
        config = worker_config(cfg, workers).model_dump(mode="json")
        actor = ray.remote(_Worker).options(
            num_cpus=1,
            max_restarts=-1,
            max_task_retries=0,
            max_concurrency=concurrency + 8,
            scheduling_strategy="SPREAD",
        )
        self.workers = [actor.remote(config, base, self._host) for _ in range(workers)]
        self._busy = [0] * workers
        # Batch tasks waiting to be sent, as chunks: one actor call carries up to CHUNK of
        # them, so Ray's fixed cost per call (both ends' serialisation, the raylet) is paid
        # once per chunk, not per task.
        self._waiting: list[tuple[BatchTask, asyncio.Future[BatchResult]]] = []
        self._send_soon: asyncio.TimerHandle | None = None
        self._sending: set[asyncio.Future[None]] = set()

    async def start(self) -> list[dict[str, str | None]]:
        """Have every worker build its orchestrator and load its experts now (else each does
        on its first task); each worker's expert -> load error."""
        return list(await asyncio.gather(*(w.ready.remote() for w in self.workers)))

    async def hosted(self) -> dict[str, dict[str, int]]:
        """Node id -> hosted local expert -> its actor's process id (empty without any)."""
        if self._host is None:
            return {}
        return dict(await self._host.hosted.remote())

    async def pids(self) -> list[int]:
        """The workers' process ids (for tests that kill one)."""
        return list(await asyncio.gather(*(w.pid.remote() for w in self.workers)))

    async def cpu_s(self) -> float:
        """CPU seconds the workers' processes have used so far, together (for benchmarks)."""
        return float(sum(await asyncio.gather(*(w.cpu_s.remote() for w in self.workers))))

    def _pick(self, avoid: int | None) -> int:
        order = sorted(range(len(self.workers)), key=lambda i: (i == avoid, self._busy[i], i))
        return order[0]

    async def _call(self, method: str, *args: Any, weight: int = 1) -> Any:
        ray = _ray()
        lost = (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError)
        avoid: int | None = None
        for attempt in range(self.retries + 1):
            index = self._pick(avoid)
            self._busy[index] += weight
            try:
                return await getattr(self.workers[index], method).remote(*args)
            except lost:
                if attempt == self.retries:
                    raise
                avoid = index
            finally:
                self._busy[index] -= weight
        raise AssertionError("unreachable")

    async def run_task(self, item: BatchTask) -> BatchResult:
        """Run one batch task on a worker; a failure is the task's result.

        Tasks handed in within :data:`CHUNK_WAIT_S` of each other travel together, up to
        :data:`CHUNK` in one actor call (a worker that dies takes the chunk elsewhere)."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[BatchResult] = loop.create_future()
        self._waiting.append((item, done))
        if len(self._waiting) >= CHUNK:
            self._send_waiting()
        elif self._send_soon is None:
            self._send_soon = loop.call_later(CHUNK_WAIT_S, self._send_waiting)
        return await done

    def _send_waiting(self) -> None:
        if self._send_soon is not None:
            self._send_soon.cancel()
            self._send_soon = None
        while self._waiting:
            chunk, self._waiting = self._waiting[:CHUNK], self._waiting[CHUNK:]
            sending = asyncio.ensure_future(self._send(chunk))
            self._sending.add(sending)  # held: the loop keeps only weak references to tasks
            sending.add_done_callback(self._sending.discard)

    async def _send(self, chunk: list[tuple[BatchTask, asyncio.Future[BatchResult]]]) -> None:
        items = [item for item, _ in chunk]
        try:
            results = await self._call("run_tasks", items, weight=len(items))
        except Exception as exc:  # noqa: BLE001 - every worker died under it: their results
            results = [failed_result(item, _cause(exc), 0.0) for item in items]
        for (_, done), result in zip(chunk, results, strict=True):
            if not done.done():
                done.set_result(result)

    async def collect_one(
        self, item: BatchTask, experts: Sequence[str], scorer: str | None = None
    ) -> RoutingExample:
        return await self._call("collect_one", item, list(experts), scorer)  # type: ignore[no-any-return]

    async def aclose(self) -> None:
        """Flush the workers' traces, bring the trace index up to date, stop the workers (and
        the hosted experts) and, if this executor started Ray, shut it down."""
        ray = _ray()
        await asyncio.gather(*(w.aclose.remote() for w in self.workers), return_exceptions=True)
        if self._index and self.trace_dir.is_dir():
            # A killed worker may not have indexed its last runs; their files are the record.
            from expertgraph.traces.index import TraceIndex

            await asyncio.to_thread(TraceIndex(self.trace_dir).sync)
        for worker in self.workers:
            ray.kill(worker, no_restart=True)
        if self._host is not None:
            ray.kill(self._host, no_restart=True)
        if self._started_ray:
            ray.shutdown()


def _cause(exc: BaseException) -> BaseException:
    """A worker's own exception rather than Ray's wrapper of it."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, BaseException) else exc
