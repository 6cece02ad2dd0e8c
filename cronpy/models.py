"""The data cronpy passes around: runs and their outcomes here; job specifications and
schedules in cronpy.jobspec, re-exported here.

The job-spec dataclasses (JobSpec alone has 40 fields) take ~8 ms to build at import, which
`history` and `show` (a ~60 ms budget, issue #16) never use: `from cronpy.models import JobSpec`
still works, loading cronpy.jobspec on first use (PEP 562 module `__getattr__`).
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    # Explicit re-exports (`X as X`), so that mypy checks each name imported from here.
    from cronpy.jobspec import DEFAULT_OUTPUT_MAX as DEFAULT_OUTPUT_MAX
    from cronpy.jobspec import At as At
    from cronpy.jobspec import Backoff as Backoff
    from cronpy.jobspec import Cron as Cron
    from cronpy.jobspec import Every as Every
    from cronpy.jobspec import JobSet as JobSet
    from cronpy.jobspec import JobSpec as JobSpec
    from cronpy.jobspec import Notify as Notify
    from cronpy.jobspec import NotifyWhen as NotifyWhen
    from cronpy.jobspec import Overlap as Overlap
    from cronpy.jobspec import Schedule as Schedule

_JOBSPEC_NAMES = frozenset(("Overlap", "Backoff", "Cron", "Every", "At", "Schedule", "NotifyWhen", "Notify",
                            "DEFAULT_OUTPUT_MAX", "JobSpec", "JobSet"))


if not TYPE_CHECKING:  # hidden from mypy, which would otherwise accept any name from here as Any
    def __getattr__(name: str) -> Any:
        if name in _JOBSPEC_NAMES:
            from cronpy import jobspec

            return getattr(jobspec, name)
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class RunStatus(enum.StrEnum):
    """The outcome of one attempt of a job; the value is what history.db stores."""

    RUNNING = "running"  #: started and not yet finished (or its runner died: see INTERRUPTED)
    SUCCESS = "success"  #: exited 0, or the Python entry point returned
    FAILED = "failed"  #: exited non-zero, raised, or could not be started
    TIMEOUT = "timeout"  #: killed after exceeding its `timeout`
    INTERRUPTED = "interrupted"  #: stopped by a shutdown, or found running after its runner died
    SKIPPED = "skipped"  #: due, but not run (overlap, lock held elsewhere); `error` says why
    CANCELLED = "cancelled"  #: stopped by `cronpy cancel`; not retried

    @property
    def finished(self) -> bool:
        return self is not RunStatus.RUNNING


class Trigger(enum.StrEnum):
    """Why a run started."""

    SCHEDULE = "schedule"  #: its schedule came due
    MANUAL = "manual"  #: `cronpy trigger`
    RETRY = "retry"  #: an earlier attempt of the same run failed
    START = "start"  #: `run_on_start: true` when the runner started
    CATCHUP = "catchup"  #: fired once after downtime for instants missed (`catch_up: true`)
    DEPENDENCY = "dependency"  #: every job in its `after:` list succeeded since its last run
    BOOT = "boot"  #: `run_on_boot: true` (cron's @reboot): the first runner start of a machine boot


class RunRecord(NamedTuple):
    """One row of history: one attempt of one job."""

    id: int
    job: str
    status: RunStatus
    trigger: Trigger
    attempt: int
    scheduled_for: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    duration: float | None
    exit_code: int | None
    error: str | None
    output: str | None
    result: Any
    pid: int | None
    host: str | None

    def to_json(self, *, with_output: bool = True) -> dict[str, Any]:
        """Return the run as JSON-ready data: ISO 8601 times with offset, duration in seconds."""

        def iso(dt: datetime | None) -> str | None:
            return dt.isoformat() if dt else None

        data: dict[str, Any] = {
            "id": self.id,
            "job": self.job,
            "status": self.status.value,
            "trigger": self.trigger.value,
            "attempt": self.attempt,
            "scheduled_for": iso(self.scheduled_for),
            "started_at": iso(self.started_at),
            "finished_at": iso(self.finished_at),
            "duration": self.duration,
            "exit_code": self.exit_code,
            "error": self.error,
            "result": self.result,
            "pid": self.pid,
            "host": self.host,
        }
        if with_output:
            data["output"] = self.output
        return data

    def as_attempt(self) -> Attempt:
        """The columns that group attempts into runs (see reads.run_outcomes)."""
        return Attempt(self.id, self.status, self.trigger, self.scheduled_for, self.duration)


class Attempt(NamedTuple):
    """The few columns of a run that `stats` groups into runs after retries (see
    Store.recent_attempts): reading whole rows for 50 jobs x 50 runs cost `stats` ~20 ms."""

    id: int
    status: RunStatus
    trigger: Trigger
    #: The scheduled instant as the store keeps it (equal for the attempts of one instant, and
    #: only compared): converting 2,500 of them to datetimes was a tenth of `stats`' run time.
    instant: object
    duration: float | None


class JobStats(NamedTuple):
    """Aggregates of one job's runs over a period."""

    job: str
    runs: int
    successes: int
    failures: int
    timeouts: int
    mean: float | None
    p50: float | None
    p95: float | None
    max: float | None
    last_started: datetime | None
    last_status: RunStatus | None

    @property
    def finished(self) -> int:
        return self.successes + self.failures + self.timeouts

    @property
    def success_rate(self) -> float | None:
        return self.successes / self.finished if self.finished else None

    @property
    def health(self) -> str:
        """healthy at >= 95 % success, warning at >= 80 %, else unhealthy; unknown with no runs."""
        return health_of(self.success_rate)


def health_of(rate: float | None) -> str:
    """healthy at >= 95 % success, warning at >= 80 %, else unhealthy; unknown without a rate."""
    if rate is None:
        return "unknown"
    if rate >= 0.95:
        return "healthy"
    if rate >= 0.80:
        return "warning"
    return "unhealthy"


class Finish(NamedTuple):
    """The outcome of one run, as the store writer commits it (see Store.finish_runs)."""

    run_id: int
    status: RunStatus
    finished_at: datetime
    duration: float | None
    exit_code: int | None = None
    error: str | None = None
    output: str | None = None
    result: Any = None
