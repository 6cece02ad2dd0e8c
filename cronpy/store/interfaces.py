"""The store's contracts: what the runner, the service and the CLI may ask of a backend.

Two backends implement them: SQLite in the state dir with flock locks (one host) and
PostgreSQL (a fleet of hosts, a leader lease, fenced claims). Callers ask a backend what it
can do through `Capabilities`; they never test its class.

Errors, for every method unless it says otherwise: `StoreUnavailable` (exit status 69) when
the store cannot be read or written (file locked or unreadable, disk full, database down),
`StoreUnreachable` (a subclass) when a fleet store's connection failed or was lost, and
`NotLeader` when a fenced store refuses a claim.
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, NamedTuple, Protocol, Sequence, TypeVar

from cronpy.models import Attempt, Finish, JobStats, RunRecord, RunStatus, Trigger

if TYPE_CHECKING:
    from cronpy.errors import HistoryDamaged
    from cronpy.locks import Holder

#: The host name written into run rows, locks and heartbeats. $CRONPY_HOST overrides it, so
#: that two runners on one machine can act as two hosts of a fleet (tests, staging).
# os.uname().nodename is what socket.gethostname() returns on POSIX (both are uname(2)), without
# importing socket (~3 ms of every read-only command's start-up, issue #16).
HOST = os.environ.get("CRONPY_HOST") or os.uname().nodename

# Triggers whose instants are claimed: a scheduled instant runs once, whoever fires it.
CLAIMED_TRIGGERS = (Trigger.SCHEDULE, Trigger.CATCHUP, Trigger.START)


class NewRun(NamedTuple):
    """A run row about to be written (see Store.start_runs)."""

    job: str
    trigger: Trigger
    started_at: datetime
    scheduled_for: datetime | None = None
    attempt: int = 1
    parent_id: int | None = None
    status: RunStatus = RunStatus.RUNNING
    error: str | None = None


class Capabilities(NamedTuple):
    """What a backend can do, declared by the backend itself."""

    #: Claims are fenced by a leader epoch in the store: a claim that cannot be written must
    #: not run (another host may own the instant). Without fencing (SQLite behind the
    #: scheduler's flock) the runner runs it and writes the row later.
    fenced: bool
    #: Runners on several hosts share this store (locks and leadership are rows, not flocks).
    shared_across_hosts: bool
    #: `cronpy cancel` on any host reaches the run's own runner (it polls cancel requests).
    supports_cancel_from_other_hosts: bool


class Health(NamedTuple):
    """How the store's connection fares, for `cronpy status` (see Store.health)."""

    connected: bool = True
    disconnected_since: float | None = None  #: time.time() since when it cannot be reached
    epoch: int | None = None  #: the leader lease's epoch this process holds, if any


class Store(Protocol):
    """Runs, claims and operator controls.

    Thread safety: every method may be called from any thread; calls are serialised on the
    backend's connection (a fleet store's keeper has a connection of its own).
    """

    #: Where the store is, for messages (a path, or a URL without its password).
    location: str
    capabilities: Capabilities
    @property
    def lease(self) -> float | None:
        """How long a silent fleet runner keeps its lease and locks, seconds (None: no lease)."""
        ...

    #: capabilities.fenced, as an attribute the runner reads on its path.
    fenced: bool

    def close(self) -> None:
        """Release what this process holds in the store and close it; never raises."""
        ...

    def __enter__(self) -> "Store": ...
    def __exit__(self, *exc: object) -> None: ...

    def register_runner(self, role: str) -> None:
        """Announce a process that runs jobs (`run`, `trigger`): a fleet store keeps its
        heartbeat until close(); a single-host store does nothing (liveness is the pid)."""
        ...

    def watch(self, *, on_lost: Callable[[], None] | None = None,
              on_cancel: Callable[[int], object] | None = None,
              on_damaged: Callable[["HistoryDamaged"], object] | None = None) -> None:
        """Callbacks: `on_lost` (keeper thread) when the leader lease is lost; `on_cancel(run_id)`
        (keeper thread) for each run of this process that `cronpy cancel` asked to stop from
        another host; `on_damaged(error)` (the calling thread) once, the first time the store
        finds its file corrupt (SQLite). A backend calls only those it can have cause for. Each
        callback given replaces the previous one of its kind; one not given is left as it was."""
        ...

    def health(self) -> Health:
        """The connection's state; never raises, never waits on the network."""
        ...

    def start_run(self, job: str, trigger: Trigger, started_at: datetime, *, scheduled_for: datetime | None = None,
                  attempt: int = 1, parent_id: int | None = None, status: RunStatus = RunStatus.RUNNING,
                  error: str | None = None) -> int | None:
        """start_runs of one row."""
        ...

    def start_runs(self, runs: Sequence[NewRun], *, wait: float | None = None) -> list[int | None]:
        """Insert run rows in one durable transaction, in order; each row's id, or None where
        its (job, scheduled instant) was claimed already (claims: attempt 1 of CLAIMED_TRIGGERS).
        `wait` bounds, in seconds, how long a busy store may hold the caller (the runner's
        claims: a held lock must not stall the loop). A fenced store retries a dropped
        connection on a fresh one while the lease (and `wait`) lasts, and raises NotLeader if the
        lease is lost: then nothing of the batch was written."""
        ...

    def set_pids(self, pids: Sequence[tuple[int, int]]) -> None:
        """Record (run id, pid) pairs of started attempts in one commit (to find orphans)."""
        ...

    def finish_run(self, run_id: int, status: RunStatus, finished_at: datetime, *, duration: float | None,
                   exit_code: int | None = None, error: str | None = None, output: str | None = None,
                   result: Any = None) -> None:
        """finish_runs of one outcome."""
        ...

    def finish_runs(self, items: Sequence[Finish]) -> None:
        """Complete run rows with their outcomes, in order, in one transaction: all or none."""
        ...

    def mark_dead_runs(self, is_alive: Callable[[int], bool], now: datetime, *,
                       job_alive: Callable[[int, int], bool] | None = None) -> list[RunRecord]:
        """`running` rows whose runner is gone become `interrupted`, and are returned: on this
        host, a runner pid for which `is_alive` is False, unless `job_alive(pid, run_id)` says
        its job runs on (a killed `cronpy trigger`'s job, holding its lock); on a shared store,
        also rows of a runner on another host whose heartbeat is older than three leases."""
        ...

    def note_error(self, run_id: int, note: str) -> None:
        """Append a line to a run's error (e.g. what recovery did about it)."""
        ...

    def prune(self, before: datetime) -> int:
        """Delete finished runs that started before `before`, and what refers to them (cancel
        requests; on a fleet store also stale heartbeats); return how many runs. Deletes in
        small batches on a connection of its own, so that no batch holds the writer for more
        than a few milliseconds."""
        ...

    def pause(self, job: str, now: datetime) -> bool:
        """Pause a job's schedule (persisted); False if it was paused already."""
        ...

    def resume(self, job: str) -> bool:
        """Resume a paused job; False if it was not paused."""
        ...

    def paused(self) -> dict[str, datetime]:
        """Paused jobs and since when."""
        ...

    def request_cancel(self, run_id: int, now: datetime) -> None:
        """Note that run `run_id` is being cancelled, so that its runner records `cancelled`."""
        ...

    def cancel_requested(self, run_id: int) -> bool:
        """True if `cronpy cancel` asked for run `run_id` to stop."""
        ...

    def owner_reporting(self, run_id: int) -> bool:
        """True if the process running `run_id` will see a cancel request for it (its heartbeat
        is recent). Always False on a store without cancel from other hosts."""
        ...

    def last_success_started(self, job: str) -> datetime | None:
        """When the job's latest successful run started."""
        ...

    def last_started(self, job: str, *, trigger: Trigger | None = None) -> datetime | None:
        """When the job's latest run (not skipped; or of `trigger`, if given) started."""
        ...

    def get(self, run_id: int) -> RunRecord:
        """One run, with its output; RunNotFound if there is none with that id."""
        ...

    def running_of(self, job: str) -> list[RunRecord]:
        """The job's runs in progress (any runner, any host), oldest first."""
        ...

    def running(self) -> list[RunRecord]:
        """Every run in progress, oldest first."""
        ...

    def query(self, job: str | None = None, *, status: RunStatus | None = None, since: datetime | None = None,
              limit: int | None = 50, with_output: bool = False, before_id: int | None = None) -> list[RunRecord]:
        """Runs newest first (by id), filtered by job, status, start time; `before_id` pages on:
        only rows with id < before_id (keyset paging: pass the last id of the previous page)."""
        ...

    def last_runs(self) -> dict[str, RunRecord]:
        """The latest run of each job (without output)."""
        ...

    def last_scheduled(self, job: str) -> datetime | None:
        """The latest claimed scheduled/catch-up instant of a job (an interval job's cadence)."""
        ...

    def last_scheduled_many(self, jobs: Sequence[str]) -> dict[str, datetime]:
        """last_scheduled of several jobs at once (the runner's start, a fleet's takeover)."""
        ...

    def recent_attempts(self, jobs: Sequence[str], *, since: datetime | None = None,
                        limit: int = 50) -> dict[str, list[Attempt]]:
        """Each job's latest `limit` attempts started since `since`, oldest first (jobs without
        any are left out): what `stats` and the dashboard group into runs after retries."""
        ...

    def stats(self, job: str | None = None, *, since: datetime | None = None) -> list[JobStats]:
        """Per-job aggregates over runs started since `since`; p50/p95/max are nearest-rank
        over finished runs (success, failed, timeout), identical on every backend."""
        ...

    def counts(self) -> dict[str, dict[RunStatus, int]]:
        """Runs per job and status over all of history (cheaper than stats: no durations)."""
        ...

    def daily(self, job: str, since: datetime) -> list[tuple[datetime, int, int]]:
        """(UTC day, finished runs, failures and timeouts) of a job since `since`, oldest first;
        skipped and interrupted runs are not counted, as in success rates."""
        ...

    def leader(self) -> "Holder | None":
        """Who holds a shared store's leader lease (None on a store without one: a single host's
        scheduler lock is a file in its state dir)."""
        ...

    def fleet(self) -> list[dict[str, Any]] | None:
        """Processes with a recent heartbeat (holder, host, pid, role, started_at,
        last_seen_ago); None on a store that keeps no heartbeats."""
        ...


class JobLock(Protocol):
    """One job's overlap lock: non-blocking, inter-process (and, on a shared store, inter-host).
    Safe to use from any thread; one JobLock object per job per process."""

    @property
    def held(self) -> bool:
        """True while this process holds it."""
        ...

    def acquire(self, *, wait: float = 0.0, run_id: int | None = None, now: datetime | None = None,
                write_holder: bool = True) -> None:
        """Take the lock within `wait` seconds or raise LockHeld naming the holder. OSError if
        the lock cannot be reached at all (an unopenable file, a lost connection)."""
        ...

    def set_holder(self, *, run_id: int | None = None, now: datetime | None = None,
                   job_pid: int | None = None) -> None:
        """Name the run holding it, and the job's process if known (for LockHeld messages and
        `status`); OSError on failure. A lock kept in a store names the run only."""
        ...

    def release(self) -> None:
        """Let go; never raises. A fleet lock whose release fails is released later by the
        keeper, and expires within a lease if the process dies."""
        ...

    def holder(self) -> "Holder | None":
        """Who holds it now, if anyone (None also when that cannot be read)."""
        ...


class JobLocks(Protocol):
    def job(self, name: str) -> JobLock:
        """The lock of job `name` (the same object each time)."""
        ...


class Leadership(Protocol):
    """The right to schedule: one runner of a state dir (flock) or of a fleet (a lease)."""

    #: How often a standby runner asks again, in seconds.
    poll_interval: float
    #: Why the last try_acquire refused to lead although nobody else leads (a fleet host whose
    #: clock is off), else None. Read after try_acquire returned False.
    refused: str | None

    def lock_file(self) -> "tuple[Path, tuple[int, int] | None] | None":
        """The file whose loss means the loss of leadership, with the (device, inode) it had
        when opened, for the state-dir guard; None when leadership is not a file (a lease).
        No I/O."""
        ...

    def try_acquire(self) -> bool:
        """Become the scheduler if nobody is; never blocks for long. StoreUnavailable if the
        store cannot be asked."""
        ...

    def valid(self) -> bool:
        """True while this runner can still prove it is the scheduler; no I/O."""
        ...

    def release(self) -> None:
        """Step down now (a standby takes over at its next poll); never raises."""
        ...

    def holder(self) -> "Holder | None":
        """Who schedules now, if anyone."""
        ...

    def describe_loss(self) -> str:
        """Why leadership was lost (for the step-down log line)."""
        ...


C = TypeVar("C", bound=type)


def implements(*protocols: type) -> Callable[[C], C]:
    """Class decorator: each public method without a docstring gets its protocol's, so that
    help() and the source show the contract on the implementation too (written once)."""
    def apply(cls: C) -> C:
        for name, member in vars(cls).items():
            if name.startswith("_") or not callable(member) or member.__doc__:
                continue
            for protocol in protocols:
                doc = getattr(getattr(protocol, name, None), "__doc__", None)
                if doc:
                    member.__doc__ = doc
                    break
        return cls
    return apply


class Backend(NamedTuple):
    """What a jobs file's store resolves to: the store, its job locks and leadership."""

    store: Store
    locks: JobLocks
    leadership: Leadership
