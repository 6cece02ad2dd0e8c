"""The SQLite store: STATE_DIR/history.db, one host (the scheduler's flock makes one runner
the only one that claims, so claims need no fencing).

What differs from PostgreSQL: the connection (WAL, synchronous=FULL, busy_timeout, BEGIN
IMMEDIATE), times as UTC epoch seconds, PRAGMA user_version for migrations, and `stats` over
all of history read from the trigger-kept job_totals table.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from _thread import RLock  # threading.RLock itself, without importing threading (~1 ms of `stats`)
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from cronpy.errors import HistoryDamaged, HistoryError, NoHistory, StoreTooNew, StoreUnavailable
from cronpy.paths import create_private_file, private_dir, write_private
from cronpy.store.migrations import SQLITE as MIGRATIONS
from cronpy.store.retry import GaveUp, RetryPolicy
from cronpy.store.interfaces import NewRun, Store, implements
from cronpy.store.sql import _INSERT_COLUMNS, SqlStore, Tx, claim_sql

UTC = timezone.utc
# busy_timeout: a writer waits this long for another's transaction (a prune batch, another
# runner's claim) before the write fails.
BUSY_SECONDS = 10.0
# Switching a new file to WAL needs an exclusive lock and SQLite does not call the busy handler
# for it: runners starting together on a fresh state dir retry for as long as busy_timeout.
_WAL_RETRY = RetryPolicy(first=0.005, cap=0.1)
# SQLite's primary result codes for a damaged file: SQLITE_CORRUPT, SQLITE_NOTADB.
_DAMAGED = (11, 26)


def sqlite_error(path: str, exc: sqlite3.Error) -> HistoryError:
    """The error for a failed SQLite call: HistoryDamaged when the file is corrupt (retrying
    cannot help: exit 2, `cronpy recover`), else StoreUnavailable (locked, full, unopenable: 69)."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None and code & 0xFF in _DAMAGED:
        return HistoryDamaged(path, str(exc))
    return StoreUnavailable(path, str(exc))


class _Cursor:
    """Tx over a sqlite3 connection."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def run(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        """See Tx.run."""
        return self.db.execute(sql, params)


def _statements(script: str) -> list[str]:
    """Split a migration into statements; a `;` inside a trigger body does not end one."""
    out, current = [], ""
    for piece in script.split(";"):
        current += piece + ";"
        if sqlite3.complete_statement(current):
            if current.strip(" \n;"):
                out.append(current.strip())
            current = ""
    return out


@implements(Store)
class SqliteStore(SqlStore):
    """A connection to STATE_DIR/history.db, safe to share between the runner's threads."""

    _indexed_by = staticmethod(lambda name: f"INDEXED BY {name}")

    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        self.path = path
        self.location = str(path)
        self.readonly = readonly
        self._lock = RLock()
        self._prune_db: sqlite3.Connection | None = None
        #: called once with the first HistoryDamaged error (the runner stops on it)
        self.on_damaged: Callable[[HistoryDamaged], object] | None = None
        self.damaged: HistoryDamaged | None = None
        if readonly and not path.exists():
            raise NoHistory(str(path), "no history yet (nothing has run with this state dir)")
        try:
            self._db = self._connect()
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version > len(MIGRATIONS):
                self._db.close()
                raise StoreTooNew(str(path), f"schema version {version} is newer than this cronpy knows"
                                  f" ({len(MIGRATIONS)}): a newer cronpy wrote it; nothing was changed")
            if not readonly:
                self._setup()
        except sqlite3.Error as exc:
            raise sqlite_error(str(path), exc) from None
        except OSError as exc:  # the state dir cannot be created or made private
            raise StoreUnavailable(str(path), exc.strerror or str(exc)) from None

    @classmethod
    def open(cls, state_dir: Path, *, readonly: bool = False) -> "SqliteStore":
        """Open (creating and migrating unless `readonly`) the history of a state dir."""
        return cls(state_dir / "history.db", readonly=readonly)

    def _connect(self) -> sqlite3.Connection:
        if self.readonly:
            db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False,
                                 isolation_level=None, timeout=BUSY_SECONDS)
        else:
            private_dir(self.path.parent)
            create_private_file(self.path)  # SQLite gives -wal and -shm the database's mode
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=BUSY_SECONDS)
        db.execute(f"PRAGMA busy_timeout = {int(BUSY_SECONDS * 1000)}")
        # synchronous=FULL: a claimed instant is on disk before its job starts, so a power cut
        # cannot make it run twice.
        db.execute("PRAGMA synchronous = FULL")
        return db

    def _setup(self) -> None:
        def wal() -> None:
            try:
                self._db.execute("PRAGMA journal_mode = WAL")  # readers never block the runner
            except sqlite3.OperationalError as exc:
                if "locked" in str(exc):
                    raise StoreUnavailable(self.location, str(exc)) from None
                raise

        deadline = time.monotonic() + BUSY_SECONDS
        try:
            _WAL_RETRY.call(wal, retry_on=(StoreUnavailable,), deadline=lambda: deadline)
        except GaveUp as exc:
            raise exc.last from None
        with self._tx() as tx:
            version = tx.run("PRAGMA user_version").fetchone()[0]
            for i, (_name, script) in enumerate(MIGRATIONS[version:], start=version + 1):
                for statement in _statements(script):
                    tx.run(statement)
                tx.run(f"PRAGMA user_version = {i}")

    def close(self) -> None:
        with self._lock:
            self._db.close()
            if self._prune_db is not None:
                self._prune_db.close()

    @contextmanager
    def _begin(self, db: sqlite3.Connection) -> Iterator[_Cursor]:
        # BEGIN IMMEDIATE takes the write lock up front, so two writers queue on busy_timeout
        # instead of one failing with "database is locked" when it upgrades a read lock.
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield _Cursor(db)
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            raise self._failed(exc) from None

    @contextmanager
    def _tx(self, *, one_statement: bool = False) -> Iterator[_Cursor]:
        # Always BEGIN IMMEDIATE (see _begin), even for one statement: the write lock up front.
        with self._lock, self._begin(self._db) as cur:
            yield cur

    @contextmanager
    def _prune_tx(self) -> Iterator[_Cursor]:
        # A connection of its own: a batch never waits behind the runner's connection lock, and
        # the runner's writes wait at most one batch (busy_timeout) for the file's write lock.
        if self._prune_db is None:
            try:
                self._prune_db = self._connect()
                # No fsync per batch (WAL syncs at checkpoints): an fsync is 5-10 ms here, longer
                # than the batch, and a prune lost to a power cut is simply done again.
                self._prune_db.execute("PRAGMA synchronous = NORMAL")
            except sqlite3.Error as exc:
                raise StoreUnavailable(self.location, str(exc)) from None
        with self._begin(self._prune_db) as cur:
            yield cur

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        with self._lock:
            try:
                return self._db.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise self._failed(exc) from None

    def _failed(self, exc: sqlite3.Error) -> HistoryError:
        err = sqlite_error(self.location, exc)
        if isinstance(err, HistoryDamaged) and self.damaged is None:
            self.damaged = err
            if self.on_damaged is not None:
                self.on_damaged(err)
        return err

    def watch(self, *, on_lost: Callable[[], None] | None = None,
              on_cancel: Callable[[int], object] | None = None,
              on_damaged: Callable[[HistoryDamaged], object] | None = None) -> None:
        """Only on_damaged: one host has no lease to lose, and sees cancel requests itself."""
        if on_damaged is not None:
            self.on_damaged = on_damaged

    def _to_db(self, dt: datetime | None) -> float | None:
        return dt.timestamp() if dt is not None else None

    # A burst's rows in a few statements rather than one each: a statement is a GIL hand-over
    # for a thread that is spawning (the writer's commits, the loop's claims), and SQLite does
    # less work per row. 100 at a time, CPU a row: claims 30 -> 21 us, outcomes 22-27 -> 20-22 us
    # (issue #12). ROWS_PER_STATEMENT keeps a statement's parameters under 999, the
    # smallest limit a SQLite build may have.

    ROWS_PER_STATEMENT = 70

    def _insert_runs(self, tx: Tx, sql: str, rows: list[tuple[Any, ...]]) -> list[int | None]:
        if len(rows) < 2:
            return super()._insert_runs(tx, sql, rows)
        # RETURNING gives the inserted rows in no promised order, and none for a claimed
        # instant: each row is found again by what identifies it. Rows alike in all of that
        # are alike in whether they could be inserted, and the first of them gets the first id.
        ids: dict[tuple[Any, ...], list[int]] = {}
        one = "(" + ",".join("?" * len(rows[0])) + ")"
        for start in range(0, len(rows), self.ROWS_PER_STATEMENT):
            chunk = rows[start:start + self.ROWS_PER_STATEMENT]
            found = tx.run(claim_sql(_INSERT_COLUMNS, ",".join([one] * len(chunk)),
                                     "id, job, status, trigger, attempt, scheduled_for"),
                           [v for row in chunk for v in row]).fetchall()
            for run_id, *key in sorted(found):
                ids.setdefault(tuple(key), []).append(run_id)
        out: list[int | None] = []
        for row in rows:
            same = ids.get(row[:5])
            out.append(same.pop(0) if same else None)
        return out

    def _update_runs(self, tx: Tx, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        if len(rows) < 2:
            return super()._update_runs(tx, columns, rows)
        # One VALUES row per run: of two for the same run, UPDATE … FROM would apply either.
        rows = list({row[0]: row for row in rows}.values())  # the later one, as one by one
        sets = ", ".join(f"{c} = v.column{i + 2}" for i, c in enumerate(columns))
        one = "(" + ",".join("?" * (len(columns) + 1)) + ")"
        step = self.ROWS_PER_STATEMENT
        for start in range(0, len(rows), step):
            chunk = rows[start:start + step]
            tx.run(f"UPDATE runs SET {sets} FROM (VALUES {','.join([one] * len(chunk))}) AS v"
                   " WHERE runs.id = v.column1", [v for row in chunk for v in row])

    def _from_db(self, value: Any) -> datetime | None:
        return datetime.fromtimestamp(value, UTC) if value is not None else None

    def start_runs(self, runs: Sequence[NewRun], *, wait: float | None = None) -> list[int | None]:
        """As SqlStore.start_runs; `wait` is the busy timeout of this one transaction."""
        if wait is None:
            return super().start_runs(runs)
        with self._lock:
            self._db.execute(f"PRAGMA busy_timeout = {int(wait * 1000)}")
            try:
                return super().start_runs(runs)
            finally:
                self._db.execute(f"PRAGMA busy_timeout = {int(BUSY_SECONDS * 1000)}")

    def _totals(self, job: str | None, since: datetime | None) -> list[tuple[str, str, int, float, int]]:
        if since is not None:
            return super()._totals(job, since)
        # All of history: the totals the triggers keep, one row per (job, status): O(jobs).
        return self._read("SELECT job, status, runs, duration_sum, last_id FROM job_totals WHERE runs > 0"
                          + (" AND job = ?" if job else ""), [job] if job else [])

    #: Where `stats` over all of history keeps each job's p50/p95/max with the totals they were
    #: computed from (beside history.db). The medians walk half of each job's durations in the
    #: index: 29 of the ~60 ms budget of `stats` on 50 jobs x 2,000 runs (issue #16), ten times
    #: that on 1,000,000 rows. A job whose runs have not changed since (same totals row by row,
    #: same database file) reuses its figures; the others are walked again.
    STATS_MEMO = "stats-memo.json"

    def _ranked(self, job: str | None, since: datetime | None, finished: dict[str, int],
                prints: dict[str, list[Any]] | None = None) -> dict[str, dict[int, float]]:
        if since is not None or prints is None:
            return super()._ranked(job, since, finished, prints)
        memo_path = self.path.with_name(self.STATS_MEMO)
        try:
            st = os.stat(self.path)
        except OSError:
            return super()._ranked(job, since, finished, prints)
        key = [1, st.st_dev, st.st_ino]
        memo: dict[str, Any] = {}
        try:
            with open(memo_path, "rb") as fh:
                data = json.loads(fh.read())
            if isinstance(data, dict) and data.get("key") == key and isinstance(data.get("jobs"), dict):
                memo = data["jobs"]
        except (OSError, ValueError):
            pass
        ranked: dict[str, dict[int, float]] = {}
        for name in finished:
            entry = memo.get(name)
            if isinstance(entry, list) and len(entry) == 2 and entry[0] == prints.get(name) \
                    and isinstance(entry[1], dict):
                try:
                    ranked[name] = {int(q): float(v) for q, v in entry[1].items()}
                except (TypeError, ValueError):  # not what this code wrote: walk again
                    pass
        todo = {name: n for name, n in finished.items() if name not in ranked}
        if not todo:
            return ranked
        fresh = super()._ranked(job, since, todo, prints)
        ranked.update(fresh)
        if job is None:  # every job was asked for: forget those that have no runs any more
            memo = {name: entry for name, entry in memo.items() if name in finished}
        memo.update({name: [prints[name], fresh[name]] for name in fresh})
        try:
            write_private(memo_path, json.dumps({"key": key, "jobs": memo}, separators=(",", ":")))
        except OSError:  # a reader without write access to the state dir: no memo, same figures
            pass
        return ranked

    def integrity_check(self) -> str:
        """SQLite's own check of the file: "ok", or what is wrong."""
        return str(self._read("PRAGMA integrity_check")[0][0])
