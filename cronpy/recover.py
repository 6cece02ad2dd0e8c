"""`cronpy recover`: move a damaged history database aside and salvage what SQLite can read.

Debian's sqlite3 shell (3.40) is built without the sqlite_dbpage table that `.recover`
needs, and Python's sqlite3 module has no recovery API. So the salvage is done here, through
the same SQLite: rows are read by ranges of rowid, and a range that fails ("database disk
image is malformed") is split in halves until the unreadable rows are isolated. A rowid seek
descends from the table's root, so every leaf page still reachable from an intact root and
interior page is kept; rows under a destroyed interior page are lost (they are counted).
Indexes are not read: the fresh database rebuilds them, and its triggers rebuild the
per-job totals of `stats` from the salvaged rows.
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from cronpy.errors import CronpyError, HistoryError

# The runs table's columns, as migration 1 created them. Named here rather than read from
# the damaged schema, which may be one of the unreadable pages.
RUN_COLUMNS = ("id, job, status, trigger, attempt, scheduled_for, started_at, finished_at, duration, exit_code, "
               "error, output, result, pid, host, runner_pid, parent_id")
# The small tables holding operator controls: read whole, or lost whole.
SMALL_TABLES = {"paused": "job, since, host, pid", "cancel_requests": "run_id, at"}
# Rowids are allocated upwards from 1; 2**62 bounds any id SQLite hands out in practice.
MAX_ROWID = 2 ** 62
# Rows read and written at a time: memory stays bounded (a run holds at most a 64 KiB output
# tail) whatever the size of the history.
BATCH = 2000
# Failed reads before giving up on what is left: each isolates rows of a damaged page in
# about log2(range) reads, so this is ample for hundreds of bad pages, and it bounds the time
# (~1 s) when a page everything hangs from is gone.
MAX_FAILURES = 100_000


class NothingToRecover(CronpyError):
    """Raised when the state dir has no history database to recover."""

    exit_code = 2


@dataclass
class Recovery:
    """What `cronpy recover` did."""

    path: Path  #: the fresh database, at the usual place
    damaged: Path  #: where the damaged file was moved
    runs: int = 0  #: runs salvaged
    unreadable_ranges: list[tuple[int, int]] = field(default_factory=list)  #: rowid ranges lost
    tables_lost: list[str] = field(default_factory=list)
    was_ok: bool = False  #: integrity_check found nothing wrong before the move
    #: the table's last pages were unreadable: runs with ids above this one may be lost
    after: int | None = None

    @property
    def lost_estimate(self) -> int:
        """Run ids inside the unreadable ranges (an upper bound on the runs lost there)."""
        return sum(hi - lo for lo, hi in self.unreadable_ranges)


def _salvage(src: sqlite3.Connection, table: str, columns: str, lo: int, hi: int,
             lost: list[tuple[int, int]]) -> Iterator[list[tuple[Any, ...]]]:
    """Yield the readable rows with lo <= rowid < hi, in rowid order, BATCH at a time (the
    first column is the rowid); append the unreadable ranges to `lost`."""
    stack = [(lo, hi)]
    failures = 0
    while stack:
        a, b = stack.pop()
        try:
            rows = src.execute(f"SELECT {columns} FROM {table} WHERE rowid >= ? AND rowid < ? ORDER BY rowid"
                               f" LIMIT {BATCH}", (a, b)).fetchall()
        except sqlite3.DatabaseError:
            failures += 1
            if failures > MAX_FAILURES:  # a destroyed root or interior page: nothing more to find
                lost.append((a, b))
                lost.extend(stack)
                return
            if b - a <= 1:
                lost.append((a, b))
                continue
            mid = (a + b) // 2
            stack.append((mid, b))  # popped second: rows stay in rowid order
            stack.append((a, mid))
            continue
        if len(rows) == BATCH:
            stack.append((rows[-1][0] + 1, b))  # the rest of this range, next
        if rows:
            yield rows


def _merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for a, b in sorted(ranges):
        if merged and merged[-1][1] >= a:
            merged[-1] = (merged[-1][0], max(merged[-1][1], b))
        else:
            merged.append((a, b))
    return merged


def recover(state_dir: Path, now: datetime | None = None) -> Recovery:
    """Move STATE_DIR/history.db (with its WAL) aside and salvage its rows into a fresh one.

    The caller holds the state dir's scheduler lock, so no runner writes meanwhile.
    """
    from cronpy.history import History

    db = state_dir / "history.db"
    if not db.exists():
        raise NothingToRecover(f"{db}: no history database here")
    stamp = (now or datetime.now(timezone.utc)).strftime("%Y%m%dT%H%M%SZ")
    aside = db.with_name(f"history.db.damaged-{stamp}")
    was_ok = False
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            was_ok = con.execute("PRAGMA quick_check").fetchone()[0] == "ok"
        finally:
            con.close()
    except sqlite3.DatabaseError:
        pass
    # The WAL holds committed transactions not yet in the main file: it moves with it (SQLite
    # finds it by name), and the shared-memory index is rebuilt from it.
    os.replace(db, aside)
    for suffix in ("-wal", "-shm"):
        side = db.with_name(db.name + suffix)
        if side.exists():
            os.replace(side, aside.with_name(aside.name + suffix))
    result = Recovery(db, aside, was_ok=was_ok)
    fresh = db.with_name("history.db.recovering")
    for leftover in (fresh, fresh.with_name(fresh.name + "-wal"), fresh.with_name(fresh.name + "-shm")):
        leftover.unlink(missing_ok=True)
    lost: list[tuple[int, int]] = []
    try:
        src = sqlite3.connect(f"file:{aside}?mode=ro", uri=True)
    except sqlite3.DatabaseError as exc:
        raise HistoryError(str(aside), f"cannot be opened at all ({exc}); it is kept there") from None
    History(fresh).close()  # the current schema, indexes and triggers
    out = sqlite3.connect(fresh, isolation_level=None)
    top = 0
    try:
        out.execute("BEGIN")
        marks = ", ".join("?" * len(RUN_COLUMNS.split(", ")))
        try:  # the rightmost path of the table is intact: rowids end there
            hi = int(src.execute("SELECT max(rowid) FROM runs").fetchone()[0] or 0) + 1
        except sqlite3.DatabaseError:
            hi = MAX_ROWID
        for rows in _salvage(src, "runs", RUN_COLUMNS, 1, hi, lost):
            # OR IGNORE: a damaged page can leave a row that breaks the claim index's uniqueness.
            cur = out.executemany(f"INSERT OR IGNORE INTO runs ({RUN_COLUMNS}) VALUES ({marks})", rows)
            result.runs += cur.rowcount if cur.rowcount >= 0 else len(rows)
            top = rows[-1][0]
        for table, columns in SMALL_TABLES.items():
            try:
                rows = src.execute(f"SELECT {columns} FROM {table}").fetchall()
            except sqlite3.DatabaseError:
                result.tables_lost.append(table)
                continue
            out.executemany(f"INSERT OR IGNORE INTO {table} ({columns}) VALUES "
                            f"({', '.join('?' * len(columns.split(', ')))})", rows)
        out.execute("COMMIT")
        check = out.execute("PRAGMA integrity_check").fetchone()[0]
        if check != "ok":
            raise HistoryError(str(fresh), f"the recovered database fails its integrity check: {check}")
        out.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        out.close()
        src.close()
    ranges = _merge(lost)
    if hi == MAX_ROWID:  # where the table ends is unknown: what lies past the last row read is not counted
        result.after = top if any(b > top + 1 for _, b in ranges) else None
        ranges = [(a, min(b, top + 1)) for a, b in ranges if a <= top]
    result.unreadable_ranges = ranges
    os.replace(fresh, db)
    for suffix in ("-wal", "-shm"):
        fresh.with_name(fresh.name + suffix).unlink(missing_ok=True)
    fd = os.open(state_dir, os.O_RDONLY)
    try:
        os.fsync(fd)  # the renames are durable before we say it is done
    finally:
        os.close(fd)
    return result
