"""A throwaway PostgreSQL on loopback, for the test that runs two schedulers at once.

Airflow's scheduler HA relies on row locks (``SELECT ... FOR UPDATE SKIP LOCKED``); SQLite
ignores them, so two schedulers on SQLite are not a real HA set-up. This starts Debian's
``postgresql`` server binaries (``apt-get install postgresql``) on 127.0.0.1 and a free port,
with a data folder of its own and trust authentication for local connections only. As root
(PostgreSQL refuses to run as root) it runs them as the ``postgres`` user.

    python infra/devpostgres.py   # runs until Ctrl+C, prints the SQLAlchemy URL
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from infra.devstore import free_ports


class PostgresMissing(RuntimeError):
    """The PostgreSQL server binaries are not installed."""


def server_bindir() -> Path:
    """Where ``initdb`` and ``pg_ctl`` are: on PATH, or Debian's versioned folder."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)
    if versions:
        return Path(versions[0]).parent
    raise PostgresMissing(
        "PostgreSQL server binaries not found (no initdb on PATH or in /usr/lib/postgresql): "
        "apt-get install postgresql"
    )


@dataclass
class DevPostgres:
    database: str = "airflow"
    port: int = 0
    data_dir: Path | None = None
    _runas: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/{self.database}"

    def _run(self, *args: str | Path) -> None:
        subprocess.run(
            [*self._runas, *map(str, args)],
            check=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd="/",
        )

    def start(self, timeout: float = 60) -> DevPostgres:
        bindir = server_bindir()
        # Not under pytest's temp folder: that one is private to root, and the server may
        # run as another user.
        root = Path(tempfile.mkdtemp(prefix="edge-mailbox-pg-"))
        self.data_dir = root / "data"
        if os.geteuid() == 0:
            self._runas = ["runuser", "-u", "postgres", "--"]
            shutil.chown(root, "postgres")
        self.port = self.port or free_ports(1)[0]
        self._run(
            bindir / "initdb", "-D", self.data_dir, "-U", "postgres", "--auth=trust", "-E", "UTF8"
        )
        self._run(
            bindir / "pg_ctl",
            "-D",
            self.data_dir,
            "-l",
            root / "server.log",
            "-w",
            "-t",
            str(int(timeout)),
            "-o",
            f"-c listen_addresses=127.0.0.1 -p {self.port} -k {root} -c max_connections=200",
            "start",
        )
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._run(bindir / "createdb", "-h", "127.0.0.1", "-p", str(self.port),
                          "-U", "postgres", self.database)  # fmt: skip
                return self
            except subprocess.CalledProcessError as exc:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"createdb failed: {exc.stdout!r}") from exc
                time.sleep(0.2)

    def stop(self) -> None:
        if not self.data_dir:
            return
        with contextlib.suppress(subprocess.CalledProcessError):
            self._run(server_bindir() / "pg_ctl", "-D", self.data_dir, "-m", "fast", "stop")
        shutil.rmtree(self.data_dir.parent, ignore_errors=True)
        self.data_dir = None

    def __enter__(self) -> DevPostgres:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


if __name__ == "__main__":
    with DevPostgres() as pg:
        print(pg.url, flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
