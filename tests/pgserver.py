"""A throwaway PostgreSQL server on loopback for the tests and benchmarks.

It runs Debian's (or any) PostgreSQL binaries from a fresh `initdb` in a temporary folder on
a free port, as the `postgres` user when run as root (the server refuses root). Nothing is
installed or left behind: stop() removes the cluster.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path


def find_bindir() -> Path | None:
    """The folder holding initdb and postgres: $PG_BINDIR, PATH, then Debian's layout."""
    if os.environ.get("PG_BINDIR"):
        return Path(os.environ["PG_BINDIR"])
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]), reverse=True)
    for d in candidates:
        if Path(d, "initdb").exists() and Path(d, "postgres").exists():
            return Path(d)
    initdb = shutil.which("initdb")
    if initdb and shutil.which("postgres"):
        return Path(os.path.realpath(initdb)).parent
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PgServer:
    """initdb + postgres on 127.0.0.1:<free port>, trust auth for user `cronpy`."""

    def __init__(self, *, fsync: bool = False) -> None:
        bindir = find_bindir()
        if bindir is None:
            raise RuntimeError("PostgreSQL server binaries not found (apt-get install postgresql)")
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="cronpy-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()
        self._preexec = None
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            os.chown(self.root, user.pw_uid, user.pw_gid)

            def drop() -> None:
                os.setgid(user.pw_gid)
                os.setuid(user.pw_uid)

            self._preexec = drop
        self._run([str(bindir / "initdb"), "-D", str(self.data), "-U", "cronpy", "--auth=trust", "-E", "UTF8",
                   "--no-sync", "--no-instructions"])
        settings = {
            "listen_addresses": "127.0.0.1", "port": str(self.port), "unix_socket_directories": str(self.root),
            "max_connections": "200", "fsync": "on" if fsync else "off",
            "synchronous_commit": "on" if fsync else "off", "full_page_writes": "on" if fsync else "off",
        }
        self._args = [a for k, v in settings.items() for a in ("-c", f"{k}={v}")]
        self.start()

    def start(self) -> None:
        """Start the server (again, after crash()), on the same port and data."""
        self.proc = subprocess.Popen([str(self.bindir / "postgres"), "-D", str(self.data), *self._args],
                                     stdout=subprocess.DEVNULL, stderr=open(self.root / "server.log", "ab"),
                                     preexec_fn=self._preexec, cwd=self.root)
        self._wait_ready()

    def crash(self) -> None:
        """Stop the server as `pg_ctl stop -m immediate` does (SIGQUIT: every backend quits at
        once, no checkpoint; clients see their connections drop), keeping its data."""
        self.proc.send_signal(3)
        self.proc.wait(30)

    def _run(self, cmd: list[str]) -> None:
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                       preexec_fn=self._preexec, cwd=self.root)

    def _wait_ready(self, timeout: float = 30.0) -> None:
        import psycopg

        end = time.monotonic() + timeout
        while True:
            try:
                psycopg.connect(self.url("postgres"), connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                if self.proc.poll() is not None or time.monotonic() > end:
                    log = (self.root / "server.log").read_text(errors="replace")
                    raise RuntimeError(f"PostgreSQL did not start:\n{log[-2000:]}") from None
                time.sleep(0.05)

    def url(self, database: str) -> str:
        return f"postgresql://cronpy@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A fresh, empty database; its URL."""
        import psycopg

        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def execute(self, sql: str, database: str = "postgres") -> None:
        import psycopg

        with psycopg.connect(self.url(database), autocommit=True) as conn:
            conn.execute(sql)  # type: ignore[arg-type]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(2)  # SIGINT: fast shutdown
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        shutil.rmtree(self.root, ignore_errors=True)
