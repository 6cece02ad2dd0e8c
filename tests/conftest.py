"""Shared fixtures: a state dir, a history database, jobs written as inline YAML, the real CLI."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import pytest

from cronpy.clock import FakeClock
from cronpy.config import parse_jobs
from cronpy.history import History
from cronpy.locks import Locks
from cronpy.models import JobSet
from cronpy.runner import Runner

UTC = timezone.utc


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    d = tmp_path / "state"
    d.mkdir()
    return d


@pytest.fixture
def history_db(state_dir: Path):
    with History.open(state_dir) as h:
        yield h


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


def pid_gone(pid: int) -> bool:
    """True if the process is gone or a zombie nobody has reaped yet (it is no longer running)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True
