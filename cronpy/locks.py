"""File locks in the state dir: one per job while it runs, and the scheduler (leader) lock.

Locks are flock(2)-based (filelock's UnixFileLock): the kernel releases them when the holder
dies, even by SIGKILL, so a lock is never left stale. Next to each lock file a small JSON file
names the holder (pid, host, since) for error messages and `cronpy status`.
"""

from __future__ import annotations

import json
import os
import re
import socket
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from cronpy.errors import LockHeld
from cronpy.paths import PRIVATE_FILE_MODE, private_dir, write_private

HOST = socket.gethostname()


@dataclass(frozen=True)
class Holder:
    """Who holds a lock."""

    pid: int
    host: str
    since: datetime
    run_id: int | None = None
    epoch: int | None = None  #: the leader lease's fencing token (PostgreSQL store)
    expires_at: datetime | None = None  #: when a lease or lock row lapses unless renewed

    def describe(self) -> str:
        run = f", run {self.run_id}" if self.run_id is not None else ""
        epoch = f", epoch {self.epoch}" if self.epoch is not None else ""
        return f"pid {self.pid} on {self.host} since {self.since.isoformat(timespec='seconds')}{run}{epoch}"


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


class Lock:
    """One non-blocking, inter-process lock with holder information."""

    def __init__(self, path: Path, what: str) -> None:
        self.path = path
        self.info_path = path.with_suffix(".holder")
        self.what = what
        # thread_local=False: the runner takes a job lock in one thread and may release it in
        # another; is_singleton=False so two Lock objects on one path conflict like processes.
        self._lock = FileLock(str(path), thread_local=False, mode=PRIVATE_FILE_MODE)
        self._held = threading.Event()
        self._dir_made = False

    def acquire(self, *, wait: float = 0.0, run_id: int | None = None, now: datetime | None = None,
                write_holder: bool = True) -> None:
        """Take the lock or raise LockHeld naming the holder; `wait` seconds at most.

        A Lock object is not reentrant: taking one this process already holds raises LockHeld,
        exactly as another process would see it.
        """
        if self._held.is_set():
            holder = self.holder()
            raise LockHeld(self.what, holder.describe() if holder else None)
        if not self._dir_made:
            private_dir(self.path.parent)
            self._dir_made = True
        try:
            self._lock.acquire(timeout=wait, poll_interval=0.05)
        except Timeout:
            holder = self.holder()
            raise LockHeld(self.what, holder.describe() if holder else None) from None
        self._held.set()
        if write_holder:
            self.set_holder(run_id=run_id, now=now)

    def set_holder(self, *, run_id: int | None = None, now: datetime | None = None) -> None:
        when = now or datetime.now(timezone.utc)
        data = {"pid": os.getpid(), "host": HOST, "since": when.isoformat(), "run_id": run_id}
        write_private(self.info_path, json.dumps(data))

    def release(self) -> None:
        if self._held.is_set():
            self._held.clear()
            try:
                self.info_path.unlink()
            except FileNotFoundError:
                pass
            self._lock.release(force=True)

    @property
    def held(self) -> bool:
        return self._held.is_set()

    def opened_identity(self) -> tuple[int, int] | None:
        """(st_dev, st_ino) of the lock file this process holds open; None if not held (see
        stateguard: the file at the path may since have been deleted or replaced)."""
        fd = getattr(getattr(self._lock, "_context", None), "lock_file_fd", None)
        if not self.held or not isinstance(fd, int):
            return None
        st = os.fstat(fd)
        return (st.st_dev, st.st_ino)

    def is_locked_elsewhere(self) -> bool:
        """True if another process (or Lock object) holds it; never blocks."""
        if self.held:
            return False
        try:
            self._lock.acquire(timeout=0)
        except Timeout:
            return True
        self._lock.release(force=True)
        return False

    def holder(self) -> Holder | None:
        """Return who holds the lock, from its holder file (None if unknown)."""
        try:
            data: dict[str, Any] = json.loads(self.info_path.read_text())
            return Holder(pid=int(data["pid"]), host=str(data["host"]),
                          since=datetime.fromisoformat(data["since"]), run_id=data.get("run_id"))
        except (OSError, ValueError, KeyError, TypeError):
            return None


class FileLeadership:
    """The scheduler lock of a state dir as a Leadership: flock, so the kernel releases it when
    the holder dies and it stays valid for as long as this process holds it."""

    poll_interval = 0.25

    def __init__(self, lock: Lock) -> None:
        self.lock = lock

    def try_acquire(self) -> bool:
        try:
            self.lock.acquire(wait=0.0)
        except LockHeld:
            return False
        return True

    def valid(self) -> bool:
        return self.lock.held

    def release(self) -> None:
        self.lock.release()

    def holder(self) -> Holder | None:
        return self.lock.holder()

    def describe_loss(self) -> str:
        return "the scheduler lock was released"


class Locks:
    """The locks of one state dir."""

    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir / "locks"
        self._jobs: dict[str, Lock] = {}

    def job(self, name: str) -> Lock:
        """The lock of job `name` (one object per job and Locks, reused run after run)."""
        lock = self._jobs.get(name)
        if lock is None:
            lock = self._jobs[name] = Lock(self.dir / f"job-{_safe(name)}.lock", f"job {name!r}")
        return lock

    def scheduler(self) -> Lock:
        return Lock(self.dir / "scheduler.lock", "the scheduler")

    def leadership(self) -> FileLeadership:
        return FileLeadership(self.scheduler())
