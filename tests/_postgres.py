"""A real PostgreSQL server for tests: ``initdb`` in a temporary folder, a free loopback port,
stopped and removed afterwards.

Not a test module: ``from _postgres import PostgresServer`` (pytest puts ``tests/`` on
``sys.path``). Needs PostgreSQL's server binaries (Debian: ``apt-get install -y postgresql``,
which provides ``/usr/lib/postgresql/<version>/bin``); as root, the server runs as the
``postgres`` user, since ``initdb`` refuses root.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

from openai_server import free_port

INSTALL_HINT = "apt-get install -y postgresql"


def server_bin_dir() -> Path | None:
    """The folder of ``initdb``/``pg_ctl``: on PATH, else Debian's newest version."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(os.path.realpath(found)).parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)
    return Path(versions[0]).parent if versions else None


class PostgresServer:
    """``with PostgresServer() as pg: pg.dsn`` -> ``postgresql://expertgraph@127.0.0.1:PORT/postgres``."""

    def __init__(self) -> None:
        bin_dir = server_bin_dir()
        if bin_dir is None:
            raise RuntimeError(f"PostgreSQL server binaries not found; install: {INSTALL_HINT}")
        self.bin_dir = bin_dir
        self.port = free_port()
        self.user = "expertgraph"
        self.root = Path(tempfile.mkdtemp(prefix="expertgraph-pg-"))
        self.data = self.root / "data"
        self._run_as: list[str] = []
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")
            os.chown(self.root, owner.pw_uid, owner.pw_gid)
            self._run_as = ["runuser", "-u", "postgres", "--"]

    @property
    def dsn(self) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/postgres"

    def _cmd(self, tool: str, *args: str) -> None:
        command = [*self._run_as, str(self.bin_dir / tool), *args]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"{tool} failed ({done.returncode}): {done.stderr or done.stdout}")

    def start(self) -> PostgresServer:
        self._cmd("initdb", "-D", str(self.data), "-U", self.user, "--auth=trust", "-E", "UTF8")
        # fsync off: the tests kill clients, never the server, and want speed.
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -F"
        log = str(self.root / "server.log")
        self._cmd("pg_ctl", "-D", str(self.data), "-l", log, "-o", options, "-w", "start")
        return self

    def stop(self) -> None:
        if self.data.exists():
            try:
                self._cmd("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
            except RuntimeError:
                pass  # not running
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()
