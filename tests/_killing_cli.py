"""``expertgraph`` that SIGKILLs itself right after a LangGraph checkpoint save: fault injection
for the resume tests (run as ``python tests/_killing_cli.py run ...``).

``EXPERTGRAPH_KILL_AFTER=put:N`` kills the process as the N-th checkpoint of the process is
saved (a superstep boundary: ``aput`` returned); ``writes:N`` as the N-th task's writes are
saved (``aput_writes`` returned: one finished expert call inside a superstep). Both savers
(SQLite and PostgreSQL) are patched; nothing else changes.
"""

from __future__ import annotations

import functools
import os
import signal
import sys
from typing import Any

from expertgraph.orchestrator.cli import main

_counts = {"put": 0, "writes": 0}


def _kill_after(kind: str, limit: int, method: Any) -> Any:
    @functools.wraps(method)
    async def patched(self: Any, *args: Any, **kwargs: Any) -> Any:
        result = await method(self, *args, **kwargs)
        _counts[kind] += 1
        if _counts[kind] == limit:
            os.kill(os.getpid(), signal.SIGKILL)
        return result

    return patched


def _install(spec: str) -> None:
    kind, _, count = spec.partition(":")
    method = {"put": "aput", "writes": "aput_writes"}[kind]
    from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

    savers: list[type] = [AsyncSqliteSaver]
    try:
        from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
    except ImportError:
        pass
    else:
        savers.append(AsyncPostgresSaver)
    for saver in savers:
        setattr(saver, method, _kill_after(kind, int(count), getattr(saver, method)))


if __name__ == "__main__":
    if os.environ.get("EXPERTGRAPH_KILL_AFTER"):
        _install(os.environ["EXPERTGRAPH_KILL_AFTER"])
    sys.exit(main(sys.argv[1:]))
