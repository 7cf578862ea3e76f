"""A throwaway PostgreSQL server for end-to-end tests and benchmarks: Debian's `postgresql`
(installed when missing), a fresh cluster in a scratch folder, on a free loopback port, stopped
and removed at exit.

`initdb` refuses to run as root: as root (CI, this machine) the server's commands run as the
`postgres` user Debian's package creates; as anyone else, as that user.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

BIN = Path("/usr/lib/postgresql/15/bin")
SUPERUSER = "facesite"
DATABASE = "facesite"


def ensure_postgresql() -> None:
    """Install Debian's postgresql unless its server binaries are there."""
    if (BIN / "initdb").exists() and (BIN / "pg_ctl").exists():
        return
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        raise RuntimeError("the PostgreSQL tests need Debian's postgresql package (apt-get)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, timeout=600)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "postgresql"], check=True, env=env, timeout=900
    )


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class PostgresCluster:
    """One PostgreSQL server with one database, reachable at `url` (no password: it trusts
    loopback connections, and listens on nothing else)."""

    def __init__(self, max_connections: int = 300) -> None:
        ensure_postgresql()
        self.port = _free_port()
        # Not under pytest's 0700 temporary folders: the postgres user must reach it.
        self.root = Path(tempfile.mkdtemp(prefix="facesite-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self._as_postgres = os.geteuid() == 0
        if self._as_postgres:
            shutil.chown(self.root, "postgres", "postgres")
        self._run(
            BIN / "initdb",
            "-D",
            self.data,
            "-U",
            SUPERUSER,
            "--auth=trust",
            "--encoding=UTF8",
            "--no-sync",
        )
        # fsync off: the data is thrown away, and 2 cores are better spent on the test.
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
            f"-c max_connections={max_connections} -c fsync=off -c synchronous_commit=off"
        )
        self._run(BIN / "pg_ctl", "-D", self.data, "-l", self.log, "-o", options, "-w", "start")
        self._run(BIN / "createdb", "-h", "127.0.0.1", "-p", self.port, "-U", SUPERUSER, DATABASE)
        self.url = f"postgres://{SUPERUSER}@127.0.0.1:{self.port}/{DATABASE}"

    def _run(self, *argv: object) -> None:
        subprocess.run(
            [str(part) for part in argv],
            check=True,
            capture_output=True,
            timeout=120,
            user="postgres" if self._as_postgres else None,
            cwd=self.root,
        )

    def stop(self) -> None:
        try:
            self._run(BIN / "pg_ctl", "-D", self.data, "-m", "fast", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
