"""Dynamic batching: requests on one set of weights are gathered and generated together.

A worker thread per set of weights takes the first waiting request, gathers others for up to
its ``batch_window_s`` (counted from when it arrived, so requests that queued behind a
running batch go at once) until ``max_batch_size``, and hands the batch to the backend. The
weights are only ever used by that thread, one batch at a time.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future

from expertgraph.agents._generation import Request, cancelled_error

RunBatch = Callable[[list[Request]], None]
"""Generates a batch; must settle every request's future."""


class Batcher:
    """Gathers :class:`Request` objects into batches for ``run_batch``, in a daemon thread."""

    def __init__(self, run_batch: RunBatch, name: str) -> None:
        self._run_batch = run_batch
        self._name = name
        self._queue: queue.Queue[tuple[float, Request]] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self.batch_sizes: list[int] = []
        """Sizes of the batches run so far (newest last, the last 1000 kept): for tests."""

    def submit(self, request: Request) -> Future[list[int]]:
        """Queue ``request``; its future settles when its row is done."""
        self._ensure_thread()
        self._queue.put((time.monotonic(), request))
        return request.future

    def _ensure_thread(self) -> None:
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._work, name=f"expertgraph-batch-{self._name}", daemon=True
                )
                self._thread.start()

    def _work(self) -> None:
        while True:
            batch = self._gather()
            live = [r for r in batch if not self._drop_cancelled(r)]
            if not live:
                continue
            self.batch_sizes = [*self.batch_sizes[-999:], len(live)]
            try:
                self._run_batch(live)
            except BaseException as exc:  # noqa: BLE001 - the worker must outlive one batch
                for request in live:
                    if not request.future.done():
                        request.future.set_exception(exc)

    def _gather(self) -> list[Request]:
        arrived, first = self._queue.get()
        batch = [first]
        deadline = arrived + first.batch_window_s
        while len(batch) < first.max_batch_size:
            remaining = deadline - time.monotonic()
            try:
                if remaining > 0:
                    _, request = self._queue.get(timeout=remaining)
                else:
                    _, request = self._queue.get_nowait()
            except queue.Empty:
                break
            batch.append(request)
        return batch

    @staticmethod
    def _drop_cancelled(request: Request) -> bool:
        """Marks the request's future running (it can no longer be cancelled: its row stops
        through ``request.cancel``), or drops a request cancelled while it queued."""
        if not request.future.set_running_or_notify_cancel():
            return True
        if request.cancel.is_set():
            request.future.set_exception(cancelled_error())
            return True
        return False
