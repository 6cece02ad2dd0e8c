"""The store interface: where runs, claims, locks and leadership live.

Two implementations: `history.History` with `locks.Locks` (a SQLite file and flock locks in
the state dir: one host, the embedded default) and `pgstore.PgStore` (one PostgreSQL
database for a fleet of hosts, with a leader lease and fenced claims). The runner, the
service and the CLI see only these protocols; `open_store` picks one from the store URL.
psycopg is imported only when a PostgreSQL URL is given.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Protocol, Sequence

from cronpy.models import Finish, JobStats, RunRecord, RunStatus, Trigger

if TYPE_CHECKING:
    from cronpy.history import NewRun
    from cronpy.locks import Holder


class Store(Protocol):
    """Runs, claims and operator controls. Every method raises HistoryError when the store
    cannot be read or written."""

    #: Where the store is, for messages (a path, or a URL without its password).
    location: str
    #: True when claims are fenced by a leader epoch in the store itself. Then a claim that
    #: cannot be written must not run: another host may own the instant. Without fencing
    #: (SQLite behind a flock) the runner runs it and writes the row later.
    fenced: bool

    def close(self) -> None: ...
    def register_runner(self, role: str) -> None:
        """Announce a process that runs jobs (`run`, `trigger`): a fleet store keeps its heartbeat."""
        ...
    def __enter__(self) -> "Store": ...
    def __exit__(self, *exc: object) -> None: ...

    def start_run(self, job: str, trigger: Trigger, started_at: datetime, *, scheduled_for: datetime | None = None,
                  attempt: int = 1, parent_id: int | None = None, status: RunStatus = RunStatus.RUNNING,
                  error: str | None = None) -> int | None: ...
    def start_runs(self, runs: Sequence["NewRun"], *, wait: float | None = None) -> list[int | None]:
        """Claim: insert run rows in one durable transaction; each id, None where the instant
        was claimed already. `wait` bounds how long a busy store may hold the caller."""
        ...
    def set_pids(self, pids: Sequence[tuple[int, int]]) -> None: ...
    def finish_runs(self, items: Sequence[Finish]) -> None:
        """Complete run rows with their outcomes, in order, in one transaction (the writer's
        group commit). Raises HistoryError with nothing written if the store refuses it."""
        ...
    def finish_run(self, run_id: int, status: RunStatus, finished_at: datetime, *, duration: float | None,
                   exit_code: int | None = None, error: str | None = None, output: str | None = None,
                   result: Any = None) -> None: ...
    def mark_dead_runs(self, is_alive: Callable[[int], bool], now: datetime, *,
                       job_alive: Callable[[int, int], bool] | None = None) -> list[RunRecord]: ...
    def note_error(self, run_id: int, note: str) -> None: ...
    def prune(self, before: datetime) -> int: ...
    def pause(self, job: str, now: datetime) -> bool: ...
    def resume(self, job: str) -> bool: ...
    def paused(self) -> dict[str, datetime]: ...
    def request_cancel(self, run_id: int, now: datetime) -> None: ...
    def cancel_requested(self, run_id: int) -> bool: ...
    def last_success_started(self, job: str) -> datetime | None: ...
    def last_started(self, job: str, *, trigger: Trigger | None = None) -> datetime | None: ...
    def get(self, run_id: int) -> RunRecord: ...
    def running_of(self, job: str) -> list[RunRecord]: ...
    def query(self, job: str | None = None, *, status: RunStatus | None = None, since: datetime | None = None,
              limit: int | None = 50, with_output: bool = False, before_id: int | None = None) -> list[RunRecord]:
        """Runs newest first; with `before_id`, only ids below it (keyset paging)."""
        ...
    def last_runs(self) -> dict[str, RunRecord]: ...
    def last_scheduled(self, job: str) -> datetime | None: ...
    def last_scheduled_many(self, jobs: Sequence[str]) -> dict[str, datetime]:
        """last_scheduled of several jobs at once (the runner's start, a fleet's takeover)."""
        ...
    def recent(self, job: str, count: int = 20) -> list[tuple[RunStatus, float | None]]: ...
    def running(self) -> list[RunRecord]: ...
    def counts(self) -> dict[str, dict[RunStatus, int]]:
        """Runs per job and status over all of history (cheaper than stats: no durations)."""
        ...
    def daily(self, job: str, since: datetime) -> list[tuple[datetime, int, int]]:
        """(UTC day, finished runs, failures and timeouts) of a job since `since`, oldest first."""
        ...
    def stats(self, job: str | None = None, *, since: datetime | None = None) -> list[JobStats]: ...


class JobLock(Protocol):
    """One job's overlap lock: non-blocking, inter-process (and, on PostgreSQL, inter-host)."""

    @property
    def held(self) -> bool: ...
    def acquire(self, *, wait: float = 0.0, run_id: int | None = None, now: datetime | None = None,
                write_holder: bool = True) -> None: ...
    def set_holder(self, *, run_id: int | None = None, now: datetime | None = None) -> None: ...
    def release(self) -> None: ...
    def holder(self) -> "Holder | None": ...


class JobLocks(Protocol):
    def job(self, name: str) -> JobLock: ...


class Leadership(Protocol):
    """The right to schedule: one runner of a state dir (flock) or of a fleet (a lease)."""

    #: How often a standby runner asks again, in seconds.
    poll_interval: float

    def try_acquire(self) -> bool:
        """Become the scheduler if nobody is; never blocks for long."""
        ...

    def valid(self) -> bool:
        """True while this runner can still prove it is the scheduler."""
        ...

    def release(self) -> None: ...
    def holder(self) -> "Holder | None": ...

    def describe_loss(self) -> str:
        """Why leadership was lost (for the step-down log line)."""
        ...


def open_store(url: str | None, state_dir: Path, *, readonly: bool = False, lease: float = 10.0,
               skew: tuple[float, float] | None = None) -> Store:
    """The store named by `url` (PostgreSQL), else the SQLite history of `state_dir`. `skew`:
    the fleet's (clock_skew_warning, clock_skew_limit) in seconds."""
    if url:
        from cronpy.pgstore import PgStore

        return PgStore(url, lease=lease, readonly=readonly, skew=skew)
    from cronpy.history import History

    return History.open(state_dir, readonly=readonly)
