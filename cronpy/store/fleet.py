"""A fleet's coordination in its PostgreSQL store: the leader lease, job locks, heartbeats and
cancel requests, each a small object, renewed together by one keeper thread.

Leadership is a lease row with an epoch (a fencing token). The leader renews the lease every
third of its length on the keeper's own connection; a standby takes it over once it has
expired, and the takeover adds one to the epoch. Every claimed (job, instant) row carries the
epoch it was claimed under, and a trigger in the database refuses it unless that epoch holds a
lease that has not expired by the database's own clock. The trigger reads the lease row FOR
SHARE, so a takeover waits for claims in flight to commit, and a leader that wakes up from a
pause (SIGSTOP, a frozen VM, a partition) can never claim an instant after it lost the lease.

Job locks are rows with an expiry, renewed with the lease while their run goes on; a lock
whose holder stops renewing (dead host, lost network) expires after one lease. A release that
fails is retried by the keeper until it lands. Every process that runs jobs keeps a heartbeat
row: the leader marks `interrupted` the runs of a runner whose heartbeat is three leases old.
"""

from __future__ import annotations

import os
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from cronpy.errors import CronpyError, LockHeld
from cronpy.locks import Holder
from cronpy.redact import cronpy_logger
from cronpy.store.interfaces import HOST, JobLock, JobLocks, Leadership, implements

if TYPE_CHECKING:
    from cronpy.store.postgres import Conn, PgStore

log = cronpy_logger()
_EXPIRES = "clock_timestamp() + %s * interval '1 second'"


@implements(Leadership)
class Lease:
    """Leadership of the fleet (see the module docstring)."""

    def __init__(self, store: "PgStore") -> None:
        self.store = store
        self.epoch: int | None = None
        self.deadline = 0.0  # time.monotonic() until which the lease is surely ours
        self._renewed = 0.0  # time.monotonic() when the last successful renewal was sent
        self._loss = ""
        self.on_lost: Callable[[], None] | None = None  # called (keeper thread) when the lease is lost
        #: why the last try_acquire refused to lead although it could have (clock skew)
        self.refused: str | None = None
        self.poll_interval = min(0.25, store.lease / 8)

    def try_acquire(self) -> bool:
        s, sent = self.store, time.monotonic()
        with s._db.use() as cur:
            s.skew.measure(cur)
            self.refused = s.skew.refusal()
            if self.refused is not None:
                return False
            # Free when expired by the database's clock, or still ours (a runner that stepped
            # down on its own clock may start a new term at once). Either way a new epoch.
            cur.execute(
                "UPDATE cronpy.leader SET epoch = epoch + 1, holder = %s, host = %s, pid = %s,"
                f" since = clock_timestamp(), expires_at = {_EXPIRES}"
                " WHERE id = 1 AND (expires_at <= clock_timestamp() OR holder = %s) RETURNING epoch",
                (s.holder_id, HOST, os.getpid(), s.lease, s.holder_id))
            row = cur.fetchone()
            if row is None:
                return False
            self.epoch, self._renewed, self.deadline, self._loss = int(row[0]), sent, sent + s.lease * 0.9, ""
            s.coord.heartbeats.beat_on(cur)
        s.coord.start_keeper()
        return True

    def renew_on(self, cur: Any) -> None:
        """Extend the lease (keeper thread); lose it if another runner took it over."""
        epoch, sent, s = self.epoch, time.monotonic(), self.store
        s.skew.measure(cur)
        refusal = s.skew.refusal()
        if epoch is not None and refusal is not None:
            # A leader whose clock drifted past the limit hands the lease back now.
            cur.execute("UPDATE cronpy.leader SET expires_at = clock_timestamp()"
                        " WHERE id = 1 AND epoch = %s AND holder = %s", (epoch, s.holder_id))
            self.lose(epoch, refusal)
            return
        if epoch is None:
            return
        cur.execute(f"UPDATE cronpy.leader SET expires_at = {_EXPIRES}"
                    " WHERE id = 1 AND epoch = %s AND holder = %s RETURNING epoch", (s.lease, epoch, s.holder_id))
        if cur.fetchone() is None:
            cur.execute("SELECT epoch, host, pid FROM cronpy.leader WHERE id = 1")
            now_epoch, host, pid = cur.fetchone()
            self.lose(epoch, f"the lease was taken over (epoch {now_epoch}, pid {pid} on {host})")
        elif self.epoch == epoch:
            self._renewed, self.deadline = sent, sent + s.lease * 0.9

    def renewal_failed(self, exc: Exception) -> None:
        """The keeper could not reach the store: the lease is lost once it has run out."""
        if self.epoch is not None and time.monotonic() >= self.deadline:
            self.lose(self.epoch, f"the lease ran out: the store cannot be reached: {exc}")

    def lose(self, epoch: int, why: str) -> None:
        """Leadership of `epoch` is over (for `why`); calls on_lost once."""
        if self.epoch != epoch:
            return
        self.epoch, self._loss = None, why
        if self.on_lost is not None:
            self.on_lost()

    def valid(self) -> bool:
        return self.epoch is not None and time.monotonic() < self.deadline

    def lock_file(self) -> tuple[Path, tuple[int, int] | None] | None:
        return None  # a lease in the database: nothing in the state dir to guard

    def describe_loss(self) -> str:
        if self.epoch is not None and time.monotonic() >= self.deadline:
            keeper = self.store.coord.keeper_conn
            why = (f"the store cannot be reached: {keeper.last_error}" if keeper.lost_since is not None
                   else "this process was paused or too slow to renew it")
            return (f"the lease ran out: last renewed {time.monotonic() - self._renewed:.1f}s ago,"
                    f" for {self.store.lease:g}s ({why})")
        return self._loss or "the lease was lost"

    def release(self) -> None:
        epoch, self.epoch = self.epoch, None
        if epoch is None:
            return
        try:
            with self.store._db.use() as cur:
                # Expire it now: a standby takes over at its next poll, not a lease later.
                cur.execute("UPDATE cronpy.leader SET expires_at = clock_timestamp()"
                            " WHERE id = 1 AND epoch = %s AND holder = %s", (epoch, self.store.holder_id))
        except CronpyError as exc:
            log.warning("could not hand the lease back (it expires on its own): %s", exc)

    def holder(self) -> Holder | None:
        """Who holds an unexpired lease."""
        with self.store._db.use() as cur:
            cur.execute("SELECT pid, host, since, epoch, expires_at FROM cronpy.leader"
                        " WHERE id = 1 AND expires_at > clock_timestamp()")
            row = cur.fetchone()
        if row is None or row[0] is None:
            return None
        return Holder(pid=row[0], host=row[1], since=row[2], epoch=row[3], expires_at=row[4])


@implements(JobLock)
class JobLockRow:
    """A job's overlap lock as a row with an expiry, shared by every host on the database."""

    def __init__(self, locks: "JobLockRows", job: str) -> None:
        self.locks, self.store, self.job, self.what = locks, locks.store, job, f"job {job!r}"
        self._held = threading.Event()

    @property
    def held(self) -> bool:
        """True while this process holds it."""
        return self._held.is_set()

    def acquire(self, *, wait: float = 0.0, run_id: int | None = None, now: datetime | None = None,
                write_holder: bool = True) -> None:
        if self.held:
            holder = self.holder()
            raise LockHeld(self.what, holder.describe() if holder else None)
        deadline, s = time.monotonic() + wait, self.store
        while True:
            try:
                with s._db.use() as cur:
                    cur.execute(
                        "INSERT INTO cronpy.job_locks (job, holder, host, pid, run_id, since, expires_at)"
                        f" VALUES (%s, %s, %s, %s, %s, clock_timestamp(), {_EXPIRES})"
                        " ON CONFLICT (job) DO UPDATE SET holder = excluded.holder, host = excluded.host,"
                        " pid = excluded.pid, run_id = excluded.run_id, since = excluded.since,"
                        " expires_at = excluded.expires_at WHERE cronpy.job_locks.expires_at <= clock_timestamp()"
                        " OR cronpy.job_locks.holder = excluded.holder RETURNING 1",
                        (self.job, s.holder_id, HOST, os.getpid(), run_id, s.lease))
                    taken = cur.fetchone() is not None
            except CronpyError as exc:
                raise OSError(str(exc)) from None
            if taken:
                self.locks.unreleased.discard(self.job)  # ours again: not to be deleted later
                self._held.set()
                s.coord.start_keeper()
                return
            if time.monotonic() >= deadline:
                holder = self.holder()
                raise LockHeld(self.what, holder.describe() if holder else None)
            time.sleep(min(0.25, max(0.0, deadline - time.monotonic())))

    def set_holder(self, *, run_id: int | None = None, now: datetime | None = None,
                   job_pid: int | None = None) -> None:
        try:
            with self.store._db.use() as cur:
                cur.execute("UPDATE cronpy.job_locks SET run_id = %s WHERE job = %s AND holder = %s",
                            (run_id, self.job, self.store.holder_id))
        except CronpyError as exc:
            raise OSError(str(exc)) from None

    def release(self) -> None:
        if not self.held:
            return
        self._held.clear()  # from now on the keeper stops renewing it
        try:
            with self.store._db.use() as cur:
                cur.execute("DELETE FROM cronpy.job_locks WHERE job = %s AND holder = %s",
                            (self.job, self.store.holder_id))
        except CronpyError as exc:
            self.locks.unreleased.add(self.job)
            log.warning("%s: could not release its lock now (retried, and it expires within %gs): %s", self.job,
                        self.store.lease, exc)

    def holder(self) -> Holder | None:
        try:
            with self.store._db.use() as cur:
                cur.execute("SELECT pid, host, since, run_id FROM cronpy.job_locks"
                            " WHERE job = %s AND expires_at > clock_timestamp()", (self.job,))
                row = cur.fetchone()
        except CronpyError:
            return None
        return Holder(pid=row[0], host=row[1], since=row[2], run_id=row[3]) if row else None


@implements(JobLocks)
class JobLockRows:
    """The JobLocks of a fleet store: renews only the locks still held (runs still running)
    and deletes the rows whose release failed."""

    def __init__(self, store: "PgStore") -> None:
        self.store = store
        self._locks: dict[str, JobLockRow] = {}
        self.unreleased: set[str] = set()

    def job(self, name: str) -> JobLockRow:
        lock = self._locks.get(name)
        if lock is None:
            lock = self._locks[name] = JobLockRow(self, name)
        return lock

    def renew_on(self, cur: Any) -> None:
        """Extend the locks still held; delete the rows whose release failed (keeper thread)."""
        s = self.store
        held = [name for name, lock in list(self._locks.items()) if lock.held]
        if held:
            cur.execute(f"UPDATE cronpy.job_locks SET expires_at = {_EXPIRES} WHERE holder = %s AND job = ANY(%s)",
                        (s.lease, s.holder_id, held))
        gone = [name for name in list(self.unreleased) if not self._locks[name].held]
        if gone:
            cur.execute("DELETE FROM cronpy.job_locks WHERE holder = %s AND job = ANY(%s)", (s.holder_id, gone))
            self.unreleased.difference_update(gone)

    def release_all(self) -> None:
        """Release every lock this process holds (at close)."""
        for lock in list(self._locks.values()):
            lock.release()


class Heartbeats:
    """Each process that runs jobs keeps a row with its last sign of life."""

    def __init__(self, store: "PgStore", role: str) -> None:
        self.store, self.role = store, role

    def register(self, role: str) -> None:
        """Start heartbeating as `role` (run, trigger) until the store is closed."""
        self.role = role
        with self.store._db.use() as cur:
            self.beat_on(cur)
        self.store.coord.start_keeper()

    def beat_on(self, cur: Any) -> None:
        """Write this process's heartbeat row (role: leader while it holds the lease)."""
        s = self.store
        role = "leader" if s.coord.lease.epoch is not None else self.role
        cur.execute("INSERT INTO cronpy.runners (holder, host, pid, role, started_at, last_seen)"
                    " VALUES (%s, %s, %s, %s, clock_timestamp(), clock_timestamp())"
                    " ON CONFLICT (holder) DO UPDATE SET role = excluded.role, last_seen = excluded.last_seen",
                    (s.holder_id, HOST, os.getpid(), role))

    def remove(self) -> None:
        """Delete this process's heartbeat row (at close); never raises."""
        try:
            with self.store._db.use() as cur:
                cur.execute("DELETE FROM cronpy.runners WHERE holder = %s", (self.store.holder_id,))
        except CronpyError:
            pass

    def orphans(self) -> list[Any]:
        """`running` rows of another host whose runner's heartbeat is three leases old."""
        with self.store._db.use() as cur:
            cur.execute(
                "SELECT id, job, status, trigger, attempt, scheduled_for, started_at, finished_at, duration,"
                " exit_code, error, output, result, pid, host, runner_pid FROM cronpy.runs r"
                " WHERE status = 'running' AND host <> %s AND NOT EXISTS (SELECT 1 FROM cronpy.runners x"
                " WHERE x.host = r.host AND x.pid = r.runner_pid AND x.last_seen > clock_timestamp()"
                " - %s * interval '1 second')", (HOST, self.store.lease * 3))
            return list(cur.fetchall())

    def owner_reporting(self, run_id: int) -> bool:
        """True if the process running `run_id` sent a heartbeat within two leases."""
        with self.store._db.use() as cur:
            cur.execute("SELECT 1 FROM cronpy.runs r JOIN cronpy.runners x ON x.host = r.host"
                        " AND x.pid = r.runner_pid WHERE r.id = %s"
                        " AND x.last_seen > clock_timestamp() - %s * interval '1 second'", (run_id, self.store.lease * 2))
            return cur.fetchone() is not None

    def fleet(self) -> list[dict[str, Any]]:
        """Every process with a recent heartbeat: holder, host, pid, role, last_seen (seconds ago)."""
        with self.store._db.use() as cur:
            cur.execute("SELECT holder, host, pid, role, started_at,"
                        " extract(epoch FROM clock_timestamp() - last_seen)::float8 FROM cronpy.runners"
                        " WHERE last_seen > clock_timestamp() - %s * interval '1 second' ORDER BY started_at",
                        (self.store.lease * 6,))
            return [{"holder": h, "host": host, "pid": pid, "role": role, "started_at": started.isoformat(),
                     "last_seen_ago": round(ago, 1)} for h, host, pid, role, started, ago in cur.fetchall()]


class Cancels:
    """Cancel requests for this process's runs, made by `cronpy cancel` on any host."""

    def __init__(self) -> None:
        self.on_cancel: Callable[[int], object] | None = None

    def poll_on(self, cur: Any) -> list[int]:
        """Ids of this process's running runs that `cronpy cancel` asked to stop."""
        if self.on_cancel is None:
            return []
        cur.execute("SELECT c.run_id FROM cronpy.cancel_requests c JOIN cronpy.runs r ON r.id = c.run_id"
                    " WHERE r.status = 'running' AND r.host = %s AND r.runner_pid = %s", (HOST, os.getpid()))
        return [row[0] for row in cur.fetchall()]


class Fleet:
    """The four objects above and the keeper thread that renews them every third of a lease."""

    def __init__(self, store: "PgStore", role: str) -> None:
        self.store = store
        self.lease = Lease(store)
        self.locks = JobLockRows(store)
        self.heartbeats = Heartbeats(store, role)
        self.cancels = Cancels()
        self.keeper_conn: Conn = store.conn()
        self._keeper: threading.Thread | None = None
        self._stop = threading.Event()

    @property
    def running(self) -> bool:
        """True while the keeper thread renews (see start_keeper)."""
        return self._keeper is not None and not self._stop.is_set()

    def start_keeper(self) -> None:
        """Start the keeper thread (once)."""
        if self._keeper is None:
            self._keeper = threading.Thread(target=self._keep, name="store-keeper", daemon=True)
            self._keeper.start()

    def _keep(self) -> None:
        while not self._stop.wait(self.store.lease / 3):
            self.renew()

    def renew(self) -> None:
        """One keeper round on the keeper's own connection: lease, locks, heartbeat, cancels."""
        try:
            with self.keeper_conn.use() as cur:
                self.lease.renew_on(cur)
                self.locks.renew_on(cur)
                self.heartbeats.beat_on(cur)
                cancels = self.cancels.poll_on(cur)
            callback = self.cancels.on_cancel
            for run_id in cancels:
                if callback is not None:
                    callback(run_id)
        except CronpyError as exc:
            self.lease.renewal_failed(exc)

    def stop_keeper(self) -> None:
        """Stop the keeper thread (what a paused or cut-off host looks like to the others)."""
        self._stop.set()
        if self._keeper is not None:
            self._keeper.join(5)

    def close(self) -> None:
        """Stop the keeper, release locks, remove the heartbeat; never raises."""
        self.stop_keeper()
        self.locks.release_all()
        self.heartbeats.remove()
        self.keeper_conn.close()
