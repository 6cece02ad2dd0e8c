"""Every error cronpy raises on purpose, each with the exit status the CLI maps it to."""

from __future__ import annotations

import re
from typing import NamedTuple

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 69  # EX_UNAVAILABLE from sysexits.h: the store cannot be read or written
EXIT_LOCKED = 75  # EX_TEMPFAIL from sysexits.h: try again later
EXIT_TIMEOUT = 124  # as coreutils timeout(1)


class CronpyError(Exception):
    """Raised for any failure cronpy reports to the user rather than as a traceback."""

    exit_code: int = EXIT_FAILED


# C0 and C1 controls except newline and tab, DEL, and the bidi overrides that reorder a line.
# Compiled when first needed: every command imports this module, few print an error.
_CONTROL = "[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]"


def visible(text: str) -> str:
    """`text` with control characters written as escapes (`\\x1b`), so that a name or value
    from a jobs file cannot recolour, retitle or rewrite the terminal it is reported on."""
    if text.isprintable():  # False for every character _CONTROL matches
        return text
    return re.sub(_CONTROL, lambda m: repr(m.group())[1:-1], text)


class Problem(NamedTuple):
    """One thing wrong with a jobs file, located by line and dotted key."""

    line: int | None
    key: str
    message: str

    def format(self, source: str) -> str:
        where = f"{source}:{self.line}" if self.line is not None else source
        text = f"{where}: {self.key}: {self.message}" if self.key else f"{where}: {self.message}"
        return visible(text)


class ConfigError(CronpyError):
    """Raised when a jobs file cannot be read or is invalid; carries every problem found."""

    exit_code = EXIT_USAGE

    def __init__(self, source: str, problems: list[Problem]) -> None:
        self.source = source
        self.problems = sorted(problems, key=lambda p: (p.line or 0, p.key))
        lines = [p.format(source) for p in self.problems]
        count = len(lines)
        header = f"{visible(source)}: {count} problem{'s' if count != 1 else ''} found"
        super().__init__(header + "\n" + "\n".join(lines))


class UsageError(CronpyError):
    """Raised when a command's arguments are wrong, e.g. a job name the file does not define."""

    exit_code = EXIT_USAGE


class LockHeld(CronpyError):
    """Raised when a job (or the scheduler) is locked by another run or process."""

    exit_code = EXIT_LOCKED

    def __init__(self, what: str, holder: str | None = None) -> None:
        self.what = what
        self.holder = holder
        detail = f" (held by {holder})" if holder else ""
        super().__init__(f"{what} is already running elsewhere{detail}")


class NotLeader(CronpyError):
    """Raised when the store refuses a claim because this runner no longer holds the leader
    lease (its epoch is stale): another runner schedules now."""

    exit_code = EXIT_LOCKED

    def __init__(self, reason: str) -> None:
        super().__init__(f"not the scheduler any more: {reason}")


class HistoryError(CronpyError):
    """Raised when the store (the history database) cannot be opened, migrated, read or
    written. Exit status 69 (EX_UNAVAILABLE), never 1, which means a job failed."""

    exit_code = EXIT_UNAVAILABLE

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        super().__init__(f"history database {path}: {reason}")


class StoreUnavailable(HistoryError):
    """Raised when the store cannot be read or written at all: the SQLite file cannot be
    opened or is locked, the disk is full, the database server is down. Every command that
    reads the store fails with it (exit status 69) rather than print invented defaults."""


class HistoryDamaged(HistoryError):
    """Raised when SQLite finds the history database corrupt ("database disk image is
    malformed", "file is not a database"): retrying cannot help; `cronpy recover` moves the
    file aside and keeps what can still be read. Exit status 2, as other state-dir errors."""

    exit_code = EXIT_USAGE

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(path, f"{reason}: the file is damaged. Stop the runners of this state dir and run"
                               f" `cronpy recover --state-dir {_parent(path)}`: it moves the file aside"
                               f" and recovers what can still be read into a fresh one")


def _parent(path: str) -> str:
    return path.rsplit("/", 1)[0] if "/" in path else "."


class StoreUnreachable(StoreUnavailable):
    """Raised when a fleet store's database cannot be reached: a connection failed or was lost.
    Unlike other history errors it passes: a runner waits and tries again."""


class NoHistory(HistoryError):
    """Raised when a history is opened read-only before anything was recorded in it (no
    database file yet, or no tables in the fleet's database). The CLI shows an empty answer;
    elsewhere it exits 2 (often a wrong state dir)."""

    exit_code = EXIT_USAGE


class StoreTooNew(HistoryError):
    """Raised when the store's schema is newer than this cronpy knows (a newer cronpy migrated
    it): nothing is changed, and the command exits 2."""

    exit_code = EXIT_USAGE


class RunNotFound(CronpyError):
    """Raised when `cronpy show` is given a run id that is not in the history."""

    exit_code = EXIT_USAGE

    def __init__(self, run_id: int) -> None:
        super().__init__(f"no run with id {run_id}")
