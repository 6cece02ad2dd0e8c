"""Shared fixtures: a state dir, a history database, jobs written as inline YAML, the real CLI."""

from __future__ import annotations

import fcntl
import os
import signal
import sqlite3
import struct
import subprocess
import sys
import termios
import textwrap
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import pytest

from cronpy.clock import FakeClock
from cronpy.config import parse_jobs
from cronpy.store.sqlite import SqliteStore as History
from cronpy.locks import Locks
from cronpy.models import JobSet
from cronpy.runner import Runner
from cronpy.store import Store

UTC = timezone.utc


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    d = tmp_path / "state"
    d.mkdir()
    return d


@pytest.fixture(scope="session")
def pg_server():
    """A throwaway PostgreSQL server on loopback for the whole session (see pgserver.py).

    Without PostgreSQL's binaries the PostgreSQL tests are skipped, unless
    $CRONPY_REQUIRE_POSTGRES is set (CI sets it): then they fail.
    """
    from pgserver import PgServer, find_bindir

    if find_bindir() is None:
        if os.environ.get("CRONPY_REQUIRE_POSTGRES"):
            pytest.fail("PostgreSQL server binaries not found and $CRONPY_REQUIRE_POSTGRES is set")
        pytest.skip("PostgreSQL server binaries not found (apt-get install postgresql)")
    server = PgServer()
    yield server
    server.stop()


@pytest.fixture
def pg_url(pg_server) -> str:
    """A fresh, empty database on the session's server."""
    return pg_server.new_database()


@pytest.fixture(params=["sqlite", "postgres"])
def store_kind(request) -> str:
    return request.param


@pytest.fixture
def open_store(store_kind: str, state_dir: Path, request) -> Callable[[], Store]:
    """Open the store under test, as many times as a test likes (each a connection of its own).

    On PostgreSQL the first store opened takes the leader lease, and later ones write under
    its epoch, as connections of one leader would: claims are fenced.
    """
    opened: list[Store] = []
    url = request.getfixturevalue("pg_url") if store_kind == "postgres" else None

    def make() -> Store:
        if url is None:
            s: Store = History.open(state_dir)
        else:
            from cronpy.store.postgres import PgStore

            s = pg = PgStore(url, lease=30)
            if not opened:
                assert pg.leadership.try_acquire()
            else:
                leader = opened[0].leadership  # type: ignore[attr-defined]
                pg.leadership.epoch, pg.leadership.deadline = leader.epoch, leader.deadline
        opened.append(s)
        return s

    yield make
    for s in reversed(opened):
        s.close()


@pytest.fixture
def history_db(open_store: Callable[[], Store]) -> Store:
    """The store under test, SQLite and PostgreSQL in turn."""
    return open_store()


@pytest.fixture
def jobs_file(tmp_path: Path) -> Callable[[str], Path]:
    def write(text: str, name: str = "jobs.yaml") -> Path:
        p = tmp_path / name
        p.write_text(textwrap.dedent(text).lstrip())
        return p

    return write


def jobset(text: str, base_dir: Path | None = None) -> JobSet:
    return parse_jobs(textwrap.dedent(text), "jobs.yaml", base_dir=base_dir)


class Harness:
    """A Runner on a FakeClock with real processes, real SQLite and real locks."""

    def __init__(self, jobs: JobSet, state_dir: Path, start: datetime) -> None:
        self.clock = FakeClock(start)
        self.history = History.open(state_dir)
        self.lines: list[tuple[str, str]] = []
        self.runner = Runner(jobs, self.history, Locks(state_dir), self.clock,
                             output=lambda j, l: self.lines.append((j, l)))

    def start(self) -> "Harness":
        self.runner.start(self.clock.now())
        return self

    def step(self) -> datetime | None:
        """Jump to the next due instant and tick there; wait for the runs it started."""
        when = self.runner.next_wakeup()
        if when is None:
            return None
        self.clock.set(when)
        self.runner.tick(when)
        assert self.runner.wait_idle(20), "runs did not finish"
        return when

    def run_until(self, end: datetime) -> None:
        while (w := self.runner.next_wakeup()) is not None and w <= end:
            self.step()
        self.clock.set(end)

    def rows(self, job: str | None = None):
        return list(reversed(self.history.query(job, limit=None, with_output=True)))


@pytest.fixture
def harness(state_dir: Path):
    made: list[Harness] = []

    def make(text: str, start: datetime, base_dir: Path | None = None) -> Harness:
        h = Harness(jobset(text, base_dir), state_dir, start)
        made.append(h)
        return h

    yield make
    for h in made:
        h.runner.shutdown(0)
        h.history.close()


def cronpy(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
           timeout: float = 60, input: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run the real CLI in a child interpreter."""
    full_env = dict(os.environ)
    full_env.pop("CRONPY_STATE_DIR", None)
    full_env.pop("CRONPY_FILE", None)
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "cronpy", *args], cwd=cwd, env=full_env, text=True,
                          capture_output=True, timeout=timeout, input=input)


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0, interval: float = 0.02) -> bool:
    """Poll until `predicate()` is true; a bounded wait, never a bare sleep."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def stop(*procs: subprocess.Popen[bytes]) -> None:
    """SIGTERM each runner (SIGCONT first, in case a test paused it), wait; SIGKILL after 30 s."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGCONT)
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()


def pid_gone(pid: int) -> bool:
    """True if the process is gone or a zombie nobody has reaped yet (it is no longer running)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def runner(jobs: Path, *extra: str, env: dict[str, str] | None = None, log: Path | None = None) -> subprocess.Popen[bytes]:
    """A real `cronpy run JOBS` in the background, its stderr appended to `log`."""
    full = dict(os.environ)
    full.pop("CRONPY_STATE_DIR", None)
    full.update(env or {})
    err = open(log, "ab") if log else subprocess.DEVNULL
    return subprocess.Popen([sys.executable, "-m", "cronpy", "run", str(jobs), *extra],
                            stdout=subprocess.DEVNULL, stderr=err, env=full, cwd=jobs.parent)


def query(db: Path, sql: str) -> list[tuple]:
    """Rows of `sql` on a SQLite file, [] while it does not exist or cannot answer yet."""
    if not db.exists():
        return []
    con = sqlite3.connect(db, timeout=10)
    try:
        return con.execute(sql).fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        con.close()


def on_pty(*args: str, cols: int = 80, cwd: Path | None = None, env: dict[str, str] | None = None,
           timeout: float = 60) -> tuple[str, int]:
    """Run the CLI on a pseudo-terminal sized `cols` x 50 (TIOCSWINSZ, no $COLUMNS), as a person
    would; return the screen text (colours removed) and the exit status."""
    import pty

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, cols, 0, 0))
    full = dict(os.environ, TERM="xterm", **(env or {}))
    for var in ("COLUMNS", "LINES", "CRONPY_STATE_DIR", "CRONPY_FILE", "NO_COLOR"):
        full.pop(var, None)
    proc = subprocess.Popen([sys.executable, "-m", "cronpy", *args], stdin=slave, stdout=slave, stderr=slave,
                            cwd=cwd, env=full)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    code = proc.wait(timeout)
    os.close(master)
    return b"".join(chunks).decode(errors="replace").replace("\r\n", "\n"), code
