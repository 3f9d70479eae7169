"""Indexing a long run while it is written, in a process of its own.

Indexing a run when it ends reads its whole file back: for a million-step run that is minutes
of parsing, after the run, under the GIL of the process that ran it. So once a run's trace
passes ``live_index_after`` records, its store starts a *follower*: ``python -m
expertgraph.traces._follow DIR FILE PID``, which tails the file and writes the run's index
rows as they come (on another core), so the index is complete moments after the run ends.

While it works, the run's row in the index's ``files`` table is ``kind = 'live'`` with the
follower's pid as ``size`` and a heartbeat (``time_ns``) as ``mtime_ns``: readers'
:meth:`~expertgraph.traces.index.TraceIndex.sync` leaves such a file to the follower (and,
once the run has ended, waits for it), and re-reads the file itself when the heartbeat is
older than :data:`STALE_S` (a follower that died). The follower stops at the run's end, or
at the end of the file once the process it follows has gone (a killed run: what the file
holds is indexed, as an incomplete run). The JSONL file stays the record throughout.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from expertgraph.traces.schema import RunEnd, RunStart, TraceRecord
from expertgraph.traces.store import RunTrace, _Resolver

LIVE = "live"
"""``files.kind`` of a run a follower is indexing."""
HEARTBEAT_S = 1.0
"""How often a follower commits what it has and renews its heartbeat."""
STALE_S = 30.0
"""A live row whose heartbeat is older than this belongs to a follower that died."""
POLL_S = 0.1
"""How long a follower waits at the end of the file before reading again."""

_log = logging.getLogger(__name__)


def start_follower(directory: Path, path: Path) -> subprocess.Popen[bytes]:
    """Start the follower of ``path`` (a run's trace in the store at ``directory``)."""
    return subprocess.Popen(
        [sys.executable, "-m", __name__, str(directory), str(path), str(os.getpid())],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        # Its own session: a Ctrl-C meant for the run does not stop the indexing of what the
        # run wrote.
        start_new_session=True,
    )


def heartbeat_fresh(heartbeat_ns: int, now_ns: int | None = None) -> bool:
    """Whether a live row's heartbeat says its follower is still at work."""
    now = time.time_ns() if now_ns is None else now_ns
    return now - heartbeat_ns < STALE_S * 1e9


class _Tail:
    """The records of a growing trace file, in order, until the run ends or its writer's
    process is gone and the file is read to its end. ``idle`` is called while waiting."""

    def __init__(self, path: Path, parent: int, idle: Any) -> None:
        self.path = path
        self.parent = parent
        self.idle = idle
        self.offset = 0  # bytes of complete lines read
        self.caught_up = False

    def _parent_gone(self) -> bool:
        return os.getppid() != self.parent

    def records(self) -> Iterator[TraceRecord]:
        resolver = _Resolver(self.path)
        number = 0
        rest = b""
        ended = final = False
        with open(self.path, "rb") as handle:
            while True:
                block = handle.read(1 << 20)
                if block:
                    lines = (rest + block).split(b"\n")
                    rest = lines.pop()  # a line still being written
                    for position, raw in enumerate(lines, start=1 - len(lines)):
                        self.caught_up = position == 0  # the last line read so far
                        number += 1
                        self.offset += len(raw) + 1
                        if raw.strip():
                            record = resolver.record(number, raw)
                            ended = isinstance(record, RunEnd)
                            yield record
                    continue
                # The end of what is written: a run that ended is done; so is one whose
                # process is gone, once a read after noticing that found nothing more.
                if ended or final:
                    return
                if self._parent_gone():
                    final = True
                    continue
                self.idle()
                time.sleep(POLL_S)


class _LiveTrace(RunTrace):
    """A run trace whose records are read as they are written (:class:`_Tail`)."""

    def __init__(self, path: Path, tail: _Tail) -> None:
        super().__init__(path)
        self._tail = tail

    @property
    def start(self) -> RunStart:
        if self._start is None:
            self._start = RunTrace(self.path).start  # the first line, read on its own
        return self._start

    def iter_records(self) -> Iterator[TraceRecord]:
        return self._tail.records()


def follow(directory: Path, path: Path, parent: int) -> bool:
    """Index the run in ``path`` as it is written; returns False when another follower (or a
    rebuild) took the run over, True when the run is indexed."""
    from expertgraph.traces.index import _INSERT, TraceIndex, _rows

    index = TraceIndex(directory, keep_open=True)
    me = os.getpid()
    name = path.name
    pending: list[tuple[str, list[tuple[Any, ...]]]] = []
    last_commit = time.monotonic()
    owned = True

    def mine(conn: Any) -> bool:
        row = conn.execute("SELECT kind, size FROM files WHERE name = ?", (name,)).fetchone()
        return row is not None and row[0] == LIVE and row[1] == me

    def commit() -> None:
        nonlocal last_commit, owned

        def work(conn: Any) -> None:
            nonlocal owned
            owned = mine(conn)
            if not owned:
                return
            for table, batch in pending:
                conn.executemany(_INSERT[table], batch)
            conn.execute("UPDATE files SET mtime_ns = ? WHERE name = ?", (time.time_ns(), name))

        index._write(work)
        pending.clear()
        last_commit = time.monotonic()

    def idle() -> None:
        if time.monotonic() - last_commit >= HEARTBEAT_S:
            commit()
            if not owned:
                raise _TakenOver

    tail = _Tail(path, parent, idle)
    trace = _LiveTrace(path, tail)
    run_id = trace.run_id

    def begin(conn: Any) -> None:
        index._delete_run(conn, run_id)
        conn.execute(
            "INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?)",
            (name, LIVE, run_id, me, time.time_ns()),
        )

    try:
        index._write(begin)
        for table, batch in _rows(trace, drain=lambda: tail.caught_up):
            pending.append((table, batch))
            if time.monotonic() - last_commit >= HEARTBEAT_S:
                commit()
                if not owned:
                    return False
        commit()
        if not owned:
            return False

        def finish(conn: Any) -> None:
            nonlocal owned
            owned = mine(conn)
            if owned:
                # Size is what was read: anything written after it makes the next sync
                # read the file again.
                mtime = path.stat().st_mtime_ns
                conn.execute(
                    "INSERT OR REPLACE INTO files VALUES (?, 'trace', ?, ?, ?)",
                    (name, run_id, tail.offset, mtime),
                )

        index._write(finish)
        return owned
    except _TakenOver:
        return False
    except BaseException:
        # Give the file back to the readers' sync at once rather than after STALE_S.
        def release(conn: Any) -> None:
            if mine(conn):
                conn.execute("DELETE FROM files WHERE name = ?", (name,))

        try:
            index._write(release)
        finally:
            raise
    finally:
        index.close()


class _TakenOver(Exception):
    """Another follower, or a rebuild, owns the run's index rows now."""


def main(argv: list[str]) -> int:
    directory, path, parent = Path(argv[0]), Path(argv[1]), int(argv[2])
    try:
        follow(directory, path, parent)
    except Exception as exc:  # noqa: BLE001 - one line on stderr, the file stays the record
        print(f"expertgraph: live index of {path} stopped: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
