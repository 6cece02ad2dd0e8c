"""File locks in the state dir: one per job while it runs, and the scheduler (leader) lock.

Locks are flock(2) on a file of their own: the kernel releases one when every descriptor of
it is closed, even by SIGKILL, so a lock is never left stale. The holder (pid, host, since,
run) is written into the lock file itself once it is taken: one pwrite, no holder file to
create, rename and unlink per run (0.4-0.6 ms a run, measured in issue #12).

A job lock is handed to the job: its descriptor is inherited by the job's process (see
Lock.fd), so the lock lives as long as the job does, not as long as the process that started
it. A `cronpy trigger` killed by SIGKILL leaves its job holding the lock; the next run of an
`overlap: skip` job cannot overlap it.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cronpy.errors import LockHeld
from cronpy.paths import PRIVATE_FILE_MODE, private_dir
from cronpy.store.interfaces import HOST  # one host name for run rows, heartbeats and lock holders

_PID = os.getpid()  # read once: a getpid() per lock per run showed up in issue #12's traces
_POLL = 0.05  # seconds between tries while waiting for a lock (`trigger --wait`)


@dataclass(frozen=True)
class Holder:
    """Who holds a lock."""

    pid: int
    host: str
    since: datetime
    run_id: int | None = None
    epoch: int | None = None  #: the leader lease's fencing token (PostgreSQL store)
    expires_at: datetime | None = None  #: when a lease or lock row lapses unless renewed
    job_pid: int | None = None  #: the job's process, which holds a job lock while it runs

    def describe(self) -> str:
        """One line for LockHeld messages and `status`: pid, host, since, run, job process, epoch."""
        run = f", run {self.run_id}" if self.run_id is not None else ""
        job = f", job process {self.job_pid}" if self.job_pid is not None else ""
        epoch = f", epoch {self.epoch}" if self.epoch is not None else ""
        return f"pid {self.pid} on {self.host} since {self.since.isoformat(timespec='seconds')}{run}{job}{epoch}"


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


class Lock:
    """One non-blocking, inter-process lock with holder information."""

    def __init__(self, path: Path, what: str) -> None:
        self.path = path
        self.what = what
        self._fd = -1
        self._mutex = threading.Lock()  # taken in one thread, released in another
        self._dir_made = False

    def _open(self) -> int:
        flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC  # never O_TRUNC: it would erase the holder
        try:
            return os.open(self.path, flags, PRIVATE_FILE_MODE)
        except FileNotFoundError:
            if self._dir_made:
                raise
            private_dir(self.path.parent)
            self._dir_made = True
            return os.open(self.path, flags, PRIVATE_FILE_MODE)

    def acquire(self, *, wait: float = 0.0, run_id: int | None = None, now: datetime | None = None,
                write_holder: bool = True) -> None:
        """Take the lock or raise LockHeld naming the holder; `wait` seconds at most.

        A Lock object is not reentrant: taking one this process already holds raises LockHeld,
        exactly as another process would see it.
        """
        if self._fd >= 0:
            holder = self.holder()
            raise LockHeld(self.what, holder.describe() if holder else None)
        fd = self._open()
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    holder = self.holder()
                    raise LockHeld(self.what, holder.describe() if holder else None) from None
                time.sleep(_POLL)
            except OSError:
                os.close(fd)
                raise
        with self._mutex:
            self._fd = fd
        if write_holder:
            self.set_holder(run_id=run_id, now=now)

    def set_holder(self, *, run_id: int | None = None, now: datetime | None = None,
                   job_pid: int | None = None) -> None:
        """Write who holds the lock into the lock file (one truncate and one pwrite)."""
        when = now or datetime.now(timezone.utc)
        data = {"pid": _PID, "host": HOST, "since": when.isoformat(), "run_id": run_id}
        if job_pid is not None:
            data["job_pid"] = job_pid
        raw = json.dumps(data).encode()
        # Under the mutex: the supervisor may release the lock (close the fd) meanwhile, and a
        # closed descriptor's number may already name another file.
        with self._mutex:
            if self._fd < 0:
                return
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, raw, 0)

    @property
    def fd(self) -> int:
        """The held lock's descriptor (-1 if not held), for the job to inherit: flock belongs
        to the open file, so the lock stays taken while any process keeps it open."""
        return self._fd

    def release(self) -> None:
        """Release the lock, also for a job that inherited it (flock's LOCK_UN acts on the
        shared open file): called once the job's leader has exited."""
        with self._mutex:
            fd, self._fd = self._fd, -1
        if fd >= 0:
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)

    @property
    def held(self) -> bool:
        """True while this process holds it (no I/O)."""
        return self._fd >= 0

    def opened_identity(self) -> tuple[int, int] | None:
        """(st_dev, st_ino) of the lock file this process holds open; None if not held (see
        stateguard: the file at the path may since have been deleted or replaced)."""
        with self._mutex:
            if self._fd < 0:
                return None
            st = os.fstat(self._fd)
        return (st.st_dev, st.st_ino)

    def is_locked_elsewhere(self) -> bool:
        """True if another process (or Lock object) holds it; never blocks."""
        if self.held:
            return False
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)  # closing drops a lock taken here
        return False

    def holder(self) -> Holder | None:
        """Return who holds the lock, from the lock file (None if unknown)."""
        try:
            data: dict[str, Any] = json.loads(self.path.read_bytes())
            return Holder(pid=int(data["pid"]), host=str(data["host"]),
                          since=datetime.fromisoformat(data["since"]), run_id=data.get("run_id"),
                          job_pid=data.get("job_pid"))
        except (OSError, ValueError, KeyError, TypeError):
            return None


class FileLeadership:
    """The scheduler lock of a state dir as a Leadership: flock, so the kernel releases it when
    the holder dies and it stays valid for as long as this process holds it."""

    poll_interval = 0.25
    refused: str | None = None  # a file lock is refused only by being held

    def __init__(self, lock: Lock) -> None:
        self.lock = lock

    def lock_file(self) -> tuple[Path, tuple[int, int] | None] | None:
        """The scheduler lock's path and the (device, inode) it had when opened (Leadership)."""
        return self.lock.path, self.lock.opened_identity()

    def try_acquire(self) -> bool:
        """Take the scheduler lock without waiting; False if another process holds it (Leadership)."""
        try:
            self.lock.acquire(wait=0.0)
        except LockHeld:
            return False
        return True

    def valid(self) -> bool:
        """True while this process holds the lock: a flock lasts as long as the process (Leadership)."""
        return self.lock.held

    def release(self) -> None:
        """Let the lock go; never raises (Leadership)."""
        self.lock.release()

    def holder(self) -> Holder | None:
        """Who holds the scheduler lock, from its file (Leadership)."""
        return self.lock.holder()

    def describe_loss(self) -> str:
        """Why leadership was lost: only by releasing the lock (Leadership)."""
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
        """The state dir's scheduler lock (a new object each call)."""
        return Lock(self.dir / "scheduler.lock", "the scheduler")

    def leadership(self) -> FileLeadership:
        """The scheduler lock as a Leadership (see cronpy.store.interfaces)."""
        return FileLeadership(self.scheduler())
