"""Salvage the readable rows of a damaged SQLite history into a fresh database (the SQL of
`cronpy recover`, whose user-facing flow is cronpy/recover.py).

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

import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from cronpy.errors import HistoryError

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



@dataclass
class Salvaged:
    """What salvage() copied."""

    runs: int = 0  #: runs copied
    unreadable_ranges: list[tuple[int, int]] = field(default_factory=list)  #: rowid ranges lost, merged
    tables_lost: list[str] = field(default_factory=list)
    #: the table's last pages were unreadable: runs with ids above this one may be lost
    after: int | None = None


def quick_check(path: Path) -> bool:
    """True if SQLite's quick_check finds nothing wrong with the file (read-only); False if it
    finds damage or cannot read the file at all."""
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            return bool(con.execute("PRAGMA quick_check").fetchone()[0] == "ok")
        finally:
            con.close()
    except sqlite3.DatabaseError:
        return False


def salvage(damaged: Path, fresh: Path) -> Salvaged:
    """Create `fresh` with the current schema and copy into it every row of `damaged` that can
    be read (runs by rowid ranges, the small tables whole), in one transaction; then check its
    integrity and checkpoint its WAL. Raises HistoryError if `damaged` cannot be opened at all
    or the copy fails its integrity check (`fresh` is then left for the caller to remove)."""
    from cronpy.store.sqlite import SqliteStore

    result = Salvaged()
    lost: list[tuple[int, int]] = []
    try:
        src = sqlite3.connect(f"file:{damaged}?mode=ro", uri=True)
    except sqlite3.DatabaseError as exc:
        raise HistoryError(str(damaged), f"cannot be opened at all ({exc}); it is kept there") from None
    SqliteStore(fresh).close()  # the current schema, indexes and triggers
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
    return result


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
