"""Durable runs: the LangGraph checkpointer each run saves its supersteps to.

A run's LangGraph thread is its run id. A checkpointer is given as a live
:class:`~langgraph.checkpoint.base.BaseCheckpointSaver` (used as it is), a PostgreSQL DSN
(``postgresql://...``) or a SQLite file path; the last two are opened for each run and closed
after it, so one orchestrator serves any number of event loops.

State is saved with LangGraph's msgpack serializer, never pickle, and it rebuilds only the
project's own pydantic types (an allowlist), each validated back into its class.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
from pydantic import BaseModel

from expertgraph.core.errors import CheckpointError, MissingDependencyError

Checkpointer = BaseCheckpointSaver | str | Path
"""A live saver, a PostgreSQL DSN or a SQLite file path."""
Durability = Literal["sync", "async", "exit"]
"""LangGraph's durability mode: ``sync`` saves each superstep before the next one starts."""

_POSTGRES_SCHEMES = ("postgresql://", "postgres://")
# Cache: DSNs whose checkpoint tables this process already created or migrated.
_POSTGRES_READY: set[str] = set()


def is_postgres(location: str) -> bool:
    return location.startswith(_POSTGRES_SCHEMES)


def describe(checkpointer: Checkpointer) -> str:
    """Where checkpoints go, for messages: a path, a DSN without its password, a class."""
    if isinstance(checkpointer, BaseCheckpointSaver):
        return type(checkpointer).__name__
    location = str(checkpointer)
    if not is_postgres(location):
        return location
    parts = urlsplit(location)
    if parts.password is None:
        return location
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def thread(run_id: str) -> dict[str, Any]:
    """The LangGraph config that names a run's thread."""
    return {"configurable": {"thread_id": run_id}}


def inside_a_graph() -> bool:
    """Whether this runs inside a LangGraph node: the parent graph's run then owns
    checkpointing (as for any subgraph), and the run keeps none of its own."""
    from langchain_core.runnables.config import var_child_runnable_config

    config = var_child_runnable_config.get() or {}
    return "checkpoint_ns" in (config.get("configurable") or {})


@functools.cache
def serializer() -> JsonPlusSerializer:
    """LangGraph's msgpack serializer, allowed to rebuild only the state's own types.

    The allowlist is every pydantic model of the modules whose types the graph state holds,
    so a type added there is covered without a list to keep in step.
    """
    from expertgraph.core import tools, types
    from expertgraph.traces import schema

    allowed = sorted(
        (module.__name__, name)
        for module in (types, tools, schema)
        for name, value in vars(module).items()
        if isinstance(value, type)
        and issubclass(value, BaseModel)
        and value.__module__ == module.__name__
    )
    return JsonPlusSerializer(pickle_fallback=False, allowed_msgpack_modules=allowed)


@asynccontextmanager
async def open_saver(checkpointer: Checkpointer) -> AsyncIterator[BaseCheckpointSaver]:
    """The async saver of one run, open for the block and closed after it."""
    if isinstance(checkpointer, BaseCheckpointSaver):
        yield checkpointer
        return
    location = str(checkpointer)
    opener = _postgres if is_postgres(location) else _sqlite
    async with opener(location) as saver:
        yield saver


@asynccontextmanager
async def _sqlite(location: str) -> AsyncIterator[BaseCheckpointSaver]:
    import aiosqlite

    path = Path(location).expanduser()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = await aiosqlite.connect(path, timeout=30)
    except (OSError, aiosqlite.Error) as exc:
        raise CheckpointError(f"cannot open the checkpoint file {path}: {exc}") from exc
    try:
        # WAL (set by the saver) with NORMAL sync: a commit survives the process being
        # killed; only a power loss can lose the last ones (like the trace's fsync: false).
        await conn.execute("PRAGMA synchronous=NORMAL")
        yield _pruning_sqlite_saver()(conn, serde=serializer())
    finally:
        await conn.close()


PRUNE_EVERY = 8
"""A SQLite-saved run deletes its older checkpoints every this many saves."""


@functools.cache
def _pruning_sqlite_saver() -> type[BaseCheckpointSaver]:
    """LangGraph's async SQLite saver, keeping only each run's latest checkpoints.

    LangGraph keeps every superstep's checkpoint (its time travel); a run here resumes from
    its latest, and a long run would otherwise grow its file by a full state per superstep
    (gigabytes over a million steps). Every :data:`PRUNE_EVERY` saves, a thread's checkpoints
    (and their pending writes) older than the new checkpoint's parent are deleted, so the
    latest and the one before it stay. Savers passed in by the caller are not changed.
    """
    from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

    class PruningSqliteSaver(AsyncSqliteSaver):
        _saves = 0

        async def aput(self, config: Any, checkpoint: Any, metadata: Any, new_versions: Any) -> Any:
            saved = await super().aput(config, checkpoint, metadata, new_versions)
            self._saves += 1
            parent = config["configurable"].get("checkpoint_id")
            if parent and self._saves % PRUNE_EVERY == 0:
                key = (
                    str(config["configurable"]["thread_id"]),
                    config["configurable"].get("checkpoint_ns", ""),
                    parent,
                )
                async with self.lock:
                    for table in ("checkpoints", "writes"):
                        await self.conn.execute(
                            f"DELETE FROM {table} WHERE thread_id = ? AND checkpoint_ns = ? "
                            "AND checkpoint_id < ?",
                            key,
                        )
                    await self.conn.commit()
            return saved

    return PruningSqliteSaver


@asynccontextmanager
async def _postgres(location: str) -> AsyncIterator[BaseCheckpointSaver]:
    try:
        from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
        from psycopg import AsyncConnection, Error
        from psycopg.rows import dict_row
    except ImportError as exc:
        raise MissingDependencyError("langgraph-checkpoint-postgres", "postgres") from exc
    try:
        conn = await AsyncConnection.connect(
            location, autocommit=True, prepare_threshold=0, row_factory=dict_row
        )
    except Error as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"cannot connect to the checkpoint database {describe(location)}: {first}"
        ) from None
    try:
        saver = AsyncPostgresSaver(conn, serde=serializer())  # type: ignore[arg-type]
        if location not in _POSTGRES_READY:
            await saver.setup()
            _POSTGRES_READY.add(location)
        yield saver
    finally:
        await conn.close()
