"""`cronpy recover`: move a damaged history database aside and salvage what SQLite can read
into a fresh one at the usual place. The reading and copying (all the SQL) is
cronpy/store/salvage.py; this module owns the files: what is moved where, in what order, and
that the result is durable before it is reported.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from cronpy.errors import CronpyError
from cronpy.store.salvage import quick_check, salvage


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


def recover(state_dir: Path, now: datetime | None = None) -> Recovery:
    """Move STATE_DIR/history.db (with its WAL) aside and salvage its rows into a fresh one.

    The caller holds the state dir's scheduler lock, so no runner writes meanwhile.
    """
    db = state_dir / "history.db"
    if not db.exists():
        raise NothingToRecover(f"{db}: no history database here")
    stamp = (now or datetime.now(timezone.utc)).strftime("%Y%m%dT%H%M%SZ")
    aside = db.with_name(f"history.db.damaged-{stamp}")
    was_ok = quick_check(db)
    # The WAL holds committed transactions not yet in the main file: it moves with it (SQLite
    # finds it by name), and the shared-memory index is rebuilt from it.
    os.replace(db, aside)
    for suffix in ("-wal", "-shm"):
        side = db.with_name(db.name + suffix)
        if side.exists():
            os.replace(side, aside.with_name(aside.name + suffix))
    fresh = db.with_name("history.db.recovering")
    for leftover in (fresh, fresh.with_name(fresh.name + "-wal"), fresh.with_name(fresh.name + "-shm")):
        leftover.unlink(missing_ok=True)
    copied = salvage(aside, fresh)
    result = Recovery(db, aside, runs=copied.runs, unreadable_ranges=copied.unreadable_ranges,
                      tables_lost=copied.tables_lost, was_ok=was_ok, after=copied.after)
    os.replace(fresh, db)
    for suffix in ("-wal", "-shm"):
        fresh.with_name(fresh.name + suffix).unlink(missing_ok=True)
    fd = os.open(state_dir, os.O_RDONLY)
    try:
        os.fsync(fd)  # the renames are durable before we say it is done
    finally:
        os.close(fd)
    return result
