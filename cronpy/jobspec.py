"""The jobs file's data after validation: job specifications, schedules, retries, notifications.

Reached through cronpy.models (which loads this module on first use of one of its names): the
read-only commands (`history`, `show`) never pay for building these classes; see models.py.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Mapping


class Overlap(enum.StrEnum):
    """What to do when a job comes due while a run of it is still going."""

    SKIP = "skip"  #: record the new run as skipped (the default, like a systemd timer)
    QUEUE = "queue"  #: run it as soon as the current one ends; at most one waits
    ALLOW = "allow"  #: run both at once


@dataclass(frozen=True)
class Backoff:
    """Exponential delay between retries: initial * factor**(n-1), capped at max, with jitter."""

    initial: float = 10.0
    factor: float = 2.0
    max: float = 600.0
    jitter: float = 0.1  #: each delay is stretched by a random fraction in [0, jitter)

    def delay(self, retry: int, rand: float = 0.0) -> float:
        """Return the delay before retry number `retry` (1-based); `rand` in [0, 1)."""
        base = min(self.max, self.initial * self.factor ** (retry - 1))
        return base * (1.0 + self.jitter * rand)


@dataclass(frozen=True)
class Cron:
    """A cron expression: 5 fields, 6 with leading seconds, or a translated @preset."""

    expr: str
    text: str  #: as written in the file (e.g. "@daily")


@dataclass(frozen=True)
class Every:
    """A fixed interval, counted in elapsed time from the previous scheduled instant."""

    seconds: float
    text: str


@dataclass(frozen=True)
class At:
    """A one-shot instant."""

    when: datetime  #: aware
    text: str


Schedule = Cron | Every | At


class NotifyWhen(enum.StrEnum):
    """When a job's `notify:` URLs are sent a message about a finished run."""

    FAILURE = "failure"  #: failed, timed out, interrupted or cancelled (and not retried)
    RECOVERY = "recovery"  #: the first success after a failure
    SUCCESS = "success"  #: every success
    ALWAYS = "always"  #: every finished run
    OUTPUT = "output"  #: the run printed something (cron's MAILTO)


@dataclass(frozen=True)
class Notify:
    """Apprise URLs and the outcomes that are sent to them."""

    urls: tuple[str, ...]
    when: frozenset[NotifyWhen] = frozenset({NotifyWhen.FAILURE})


DEFAULT_OUTPUT_MAX = 100 * 1024 * 1024  #: bytes of kept output per job (`output_max`)


@dataclass(frozen=True)
class JobSpec:
    """One job of a jobs file, with defaults merged in; immutable once loaded."""

    name: str
    schedule: Schedule | None = None
    command: str | tuple[str, ...] | None = None  #: a str runs under /bin/sh -c, a tuple is exec'd
    python: str | None = None  #: "package.module:function"
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""
    enabled: bool = True
    timezone: str = "UTC"
    timeout: float | None = None
    kill_grace: float = 10.0  #: seconds between SIGTERM and SIGKILL of the process group
    retries: int = 0
    backoff: Backoff = Backoff()
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    run_on_start: bool = False
    overlap: Overlap = Overlap.SKIP
    priority: int = 0
    jitter: float = 0.0
    catch_up: bool = False
    after: tuple[str, ...] = ()  #: run when each of these jobs has succeeded since this one last ran
    on_failure: str | None = None  #: shell commands run after a run ends (values in the environment)
    on_success: str | None = None
    on_retry: str | None = None
    ping: str | None = None  #: healthchecks.io-style URL: /start, success, /fail or /<exit code>
    webhook: str | None = None  #: a JSON POST of each finished run
    shell: str | None = None  #: runs a command string as [shell, "-c", command]; None: /bin/sh
    user: str | None = None  #: run as this user (the runner must be root), with a login-like env
    group: str | None = None  #: run with this group instead of the user's primary group
    stdin: str | None = None  #: text fed to the job's standard input; None: /dev/null
    run_on_boot: bool = False  #: run once per machine boot (cron's @reboot), not per runner start
    notify: Notify | None = None  #: Apprise notifications
    keep_output: bool = False  #: `output: keep`: each run's whole output in a file in the state dir
    output_max: int = DEFAULT_OUTPUT_MAX  #: bytes of kept output per job (older runs' files go first)
    line: int | None = None  #: where the job is defined in its file

    @property
    def kind(self) -> str:
        return "python" if self.python else "command"


@dataclass(frozen=True)
class JobSet:
    """A whole jobs file after validation."""

    jobs: Mapping[str, JobSpec]
    source: Path | None = None
    timezone: str = "UTC"
    state_dir: Path | None = None  #: as the file says, resolved against its folder
    max_concurrent: int = 4
    history_retention: float | None = 30 * 86400.0
    shutdown_grace: float = 30.0
    store: str | None = None  #: a postgresql:// URL shared by a fleet; None: SQLite in the state dir
    leader_lease: float = 10.0  #: seconds a fleet leader's lease lasts unless renewed
    clock_skew_warning: float = 1.0  #: seconds off the fleet database's clock that a host warns about
    clock_skew_limit: float = 5.0  #: seconds off the fleet database's clock beyond which a host will not lead
    #: "file:line: key: message" for what is valid but probably not meant (`cronpy validate` prints them)
    warnings: tuple[str, ...] = ()

    @property
    def base_dir(self) -> Path:
        return self.source.parent if self.source else Path.cwd()
