"""The one sync-over-async wrapper: every ``run``/``decide``/``combine`` that wraps a coroutine."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to the end from sync code, also when this thread has a running loop.

    Inside a running loop (a notebook, an async app calling sync code) the coroutine runs on a
    fresh loop in a worker thread, so the caller's loop is never re-entered and retries with
    ``asyncio.sleep`` inside the coroutine still work.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        running = False
    else:
        running = True
    if not running:
        # Outside the ``except``: a coroutine run inside it would see the "no running event
        # loop" error as the context of every exception it raises.
        return asyncio.run(coro)
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(coro)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=target, name="expertgraph-run-sync")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]
