"""The run history: the only module that speaks SQL.

One row per attempt, written when the attempt starts and completed when it ends, so a crash
leaves a `running` row as evidence. Times are stored as UTC epoch seconds (REAL): compact,
indexable and free of any zone. Each scheduled (job, instant) can be claimed once: a partial
unique index refuses a second claim, whichever process or host makes it.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

from cronpy.errors import HistoryDamaged, HistoryError, NoHistory, RunNotFound
from cronpy.models import Finish, JobStats, RunRecord, RunStatus, Trigger
from cronpy.paths import create_private_file, private_dir

UTC = timezone.utc
HOST = socket.gethostname()

# Triggers whose instants are claimed: a scheduled instant runs once, whoever fires it.
CLAIMED_TRIGGERS = (Trigger.SCHEDULE, Trigger.CATCHUP, Trigger.START)
_CLAIM_WHERE = f"attempt = 1 AND trigger IN ({', '.join(repr(t.value) for t in CLAIMED_TRIGGERS)})"

# Outcomes that count in success rates and durations (not running, skipped or interrupted).
FINISHED_SQL = "'success', 'failed', 'timeout'"

MIGRATIONS: list[str] = [
    # 1: the runs table and the indexes its queries use.
    f"""
    CREATE TABLE runs (
        id INTEGER PRIMARY KEY,
        job TEXT NOT NULL,
        status TEXT NOT NULL,
        trigger TEXT NOT NULL,
        attempt INTEGER NOT NULL DEFAULT 1,
        scheduled_for REAL,
        started_at REAL NOT NULL,
        finished_at REAL,
        duration REAL,
        exit_code INTEGER,
        error TEXT,
        output TEXT,
        result TEXT,
        pid INTEGER,
        host TEXT,
        runner_pid INTEGER,
        parent_id INTEGER
    );
    CREATE UNIQUE INDEX runs_claim ON runs (job, scheduled_for) WHERE {_CLAIM_WHERE};
    CREATE INDEX runs_job_status ON runs (job, status, id);
    CREATE INDEX runs_status ON runs (status, id);
    CREATE INDEX runs_started ON runs (started_at);
    """,
    # 2: `stats` in O(jobs), not O(rows): per (job, status) totals kept by triggers, and the
    # finished durations indexed by job for percentiles and max.
    f"""
    CREATE INDEX runs_finished_duration ON runs (job, duration) WHERE status IN ({FINISHED_SQL});
    CREATE TABLE job_totals (
        job TEXT NOT NULL,
        status TEXT NOT NULL,
        runs INTEGER NOT NULL,
        duration_sum REAL NOT NULL,
        last_id INTEGER NOT NULL,
        PRIMARY KEY (job, status)
    ) WITHOUT ROWID;
    INSERT INTO job_totals (job, status, runs, duration_sum, last_id)
        SELECT job, status, count(*), coalesce(sum(duration), 0), max(id) FROM runs GROUP BY job, status;
    CREATE TRIGGER runs_totals_insert AFTER INSERT ON runs BEGIN
        INSERT INTO job_totals (job, status, runs, duration_sum, last_id)
            VALUES (NEW.job, NEW.status, 1, coalesce(NEW.duration, 0), NEW.id)
            ON CONFLICT (job, status) DO UPDATE SET runs = runs + 1,
                duration_sum = duration_sum + excluded.duration_sum, last_id = max(last_id, excluded.last_id);
    END;
    CREATE TRIGGER runs_totals_update AFTER UPDATE OF status, duration ON runs BEGIN
        UPDATE job_totals SET runs = runs - 1, duration_sum = duration_sum - coalesce(OLD.duration, 0)
            WHERE job = OLD.job AND status = OLD.status;
        INSERT INTO job_totals (job, status, runs, duration_sum, last_id)
            VALUES (NEW.job, NEW.status, 1, coalesce(NEW.duration, 0), NEW.id)
            ON CONFLICT (job, status) DO UPDATE SET runs = runs + 1,
                duration_sum = duration_sum + excluded.duration_sum, last_id = max(last_id, excluded.last_id);
    END;
    CREATE TRIGGER runs_totals_delete AFTER DELETE ON runs BEGIN
        UPDATE job_totals SET runs = runs - 1, duration_sum = duration_sum - coalesce(OLD.duration, 0)
            WHERE job = OLD.job AND status = OLD.status;
    END;
    """,
    # 3: operator controls that outlive a runner: paused jobs and cancel requests.
    """
    CREATE TABLE paused (job TEXT PRIMARY KEY, since REAL NOT NULL, host TEXT, pid INTEGER) WITHOUT ROWID;
    CREATE TABLE cancel_requests (run_id INTEGER PRIMARY KEY, at REAL NOT NULL);
    CREATE INDEX runs_job_id ON runs (job, id);
    """,
]

COLUMNS = (
    "id, job, status, trigger, attempt, scheduled_for, started_at, finished_at, duration, "
    "exit_code, error, output, result, pid, host"
)


@dataclass(frozen=True)
class NewRun:
    """A run row about to be written (see History.start_runs)."""

    job: str
    trigger: Trigger
    started_at: datetime
    scheduled_for: datetime | None = None
    attempt: int = 1
    parent_id: int | None = None
    status: RunStatus = RunStatus.RUNNING
    error: str | None = None


def result_json(result: Any) -> str | None:
    """A run's return value as stored: JSON, or the JSON of its repr if it is not serialisable."""
    if result is None:
        return None
    try:
        return json.dumps(result)
    except (TypeError, ValueError):
        return json.dumps(repr(result))


# SQLite's primary result codes for a damaged file: SQLITE_CORRUPT, SQLITE_NOTADB.
_DAMAGED = (11, 26)


def sqlite_error(path: str, exc: sqlite3.Error) -> HistoryError:
    """The HistoryError for a failed SQLite call: HistoryDamaged when the file is corrupt."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None and code & 0xFF in _DAMAGED:
        return HistoryDamaged(path, str(exc))
    return HistoryError(path, str(exc))


def _ts(dt: datetime | None) -> float | None:
    return dt.timestamp() if dt is not None else None


def _dt(ts: float | None) -> datetime | None:
    return datetime.fromtimestamp(ts, UTC) if ts is not None else None


def run_record(r: Sequence[Any], when: Callable[[Any], datetime | None]) -> RunRecord:
    """A RunRecord from a row of COLUMNS; `when` turns a stored time into an aware datetime."""
    result = r[12]
    if result is not None:
        try:
            result = json.loads(result)
        except ValueError:
            pass
    return RunRecord(
        id=r[0], job=r[1], status=RunStatus(r[2]), trigger=Trigger(r[3]), attempt=r[4],
        scheduled_for=when(r[5]), started_at=when(r[6]), finished_at=when(r[7]), duration=r[8],
        exit_code=r[9], error=r[10], output=r[11], result=result, pid=r[13], host=r[14],
    )


def _row(r: Sequence[Any]) -> RunRecord:
    return run_record(r, _dt)


def run_filters(job: str | None, status: RunStatus | None, since: datetime | None, *, mark: str,
                when: Callable[[datetime], Any]) -> tuple[str, list[Any]]:
    """The WHERE clause (with `mark` placeholders) and parameters of a history query;
    `when` turns a datetime into the stored form."""
    clauses: list[str] = []
    params: list[Any] = []
    if job is not None:
        clauses.append(f"job = {mark}")
        params.append(job)
    if status is not None:
        clauses.append(f"status = {mark}")
        params.append(status.value)
    if since is not None:
        clauses.append(f"started_at >= {mark}")
        params.append(when(since))
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), params


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


def _rank(n: int, q: float) -> int:
    """Nearest rank (1-based) of quantile q among n values: ceil(q * n), at least 1."""
    return min(n, max(1, -(-round(q * 100) * n // 100)))


def _percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile: the smallest value with at least q of the values at or below it."""
    if not sorted_values:
        return None
    return sorted_values[_rank(len(sorted_values), q) - 1]


class History:
    """A connection to STATE_DIR/history.db, safe to share between the runner's threads.

    The embedded store (see store.Store): claims are not fenced, because the scheduler's flock
    already makes one runner of the state dir the only one that claims.
    """

    fenced = False

    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        self.path = path
        self.location = str(path)
        self._lock = threading.RLock()
        try:
            if readonly:
                if not path.exists():
                    raise NoHistory(str(path), "no history yet (nothing has run with this state dir)")
                self._db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False,
                                           isolation_level=None, timeout=10.0)
            else:
                private_dir(path.parent)
                create_private_file(path)  # SQLite gives -wal and -shm the database's mode
                self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=10.0)
            self._db.execute("PRAGMA busy_timeout = 10000")
            if not readonly:
                # WAL: readers never block the runner. synchronous=FULL: a claimed instant is on
                # disk before its job starts, so a power cut cannot make it run twice.
                self._setup()
        except sqlite3.Error as exc:
            raise sqlite_error(str(path), exc) from None

    #: called once with the first HistoryDamaged error (the runner stops on it)
    on_damaged: Callable[[HistoryDamaged], None] | None = None
    damaged: HistoryDamaged | None = None

    def _damaged(self, err: HistoryError) -> HistoryError:
        if isinstance(err, HistoryDamaged) and self.damaged is None:
            self.damaged = err
            if self.on_damaged is not None:
                self.on_damaged(err)
        return err

    @classmethod
    def open(cls, state_dir: Path, *, readonly: bool = False) -> "History":
        """Open (creating and migrating unless `readonly`) the history of a state dir."""
        return cls(state_dir / "history.db", readonly=readonly)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def register_runner(self, role: str) -> None:
        """Nothing to do: on one host, liveness is the runner's pid (see mark_dead_runs)."""

    def __enter__(self) -> "History":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _setup(self) -> None:
        # Switching a new file to WAL needs an exclusive lock and SQLite does not call the busy
        # handler for it: runners starting together on a fresh state dir get "database is
        # locked" at once. Retry for as long as busy_timeout would have waited.
        deadline = time.monotonic() + 10.0
        delay = 0.005
        while True:
            try:
                self._db.execute("PRAGMA journal_mode = WAL")
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 0.1)
        self._db.execute("PRAGMA synchronous = FULL")
        self._migrate()

    def _migrate(self) -> None:
        with self._tx() as db:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > len(MIGRATIONS):
                raise HistoryError(str(self.path), f"schema version {version} is newer than this cronpy knows")
            for i, script in enumerate(MIGRATIONS[version:], start=version + 1):
                for statement in _statements(script):
                    db.execute(statement)
                db.execute(f"PRAGMA user_version = {i}")

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        # BEGIN IMMEDIATE takes the write lock up front, so two writers queue on busy_timeout
        # instead of one failing with "database is locked" when it upgrades a read lock.
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                raise self._damaged(sqlite_error(str(self.path), exc)) from None

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        with self._lock:
            try:
                return self._db.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise self._damaged(sqlite_error(str(self.path), exc)) from None

    # -- writing ---------------------------------------------------------------------------

    def start_run(
        self,
        job: str,
        trigger: Trigger,
        started_at: datetime,
        *,
        scheduled_for: datetime | None = None,
        attempt: int = 1,
        parent_id: int | None = None,
        status: RunStatus = RunStatus.RUNNING,
        error: str | None = None,
    ) -> int | None:
        """Insert a run row and return its id; None if (job, scheduled_for) was already claimed."""
        return self.start_runs([NewRun(job, trigger, started_at, scheduled_for, attempt, parent_id, status, error)])[0]

    def start_runs(self, runs: Sequence["NewRun"], *, wait: float | None = None) -> list[int | None]:
        """Insert several run rows in one transaction (one fsync for a burst of due jobs).

        Returns each row's id, or None where the (job, scheduled instant) was claimed already.
        `wait`: give up (HistoryError) after this many seconds if another process holds the
        database's write lock, instead of the usual 10 s (the runner's claims: a held lock
        must not stall the loop).
        """
        if wait is None:
            return self._start_runs(runs)
        with self._lock:
            self._db.execute(f"PRAGMA busy_timeout = {int(wait * 1000)}")
            try:
                return self._start_runs(runs)
            finally:
                self._db.execute("PRAGMA busy_timeout = 10000")

    def _start_runs(self, runs: Sequence["NewRun"]) -> list[int | None]:
        ids: list[int | None] = []
        with self._tx() as db:
            for r in runs:
                finished = _ts(r.started_at) if r.status.finished else None
                try:
                    cur = db.execute(
                        "INSERT INTO runs (job, status, trigger, attempt, scheduled_for, started_at, finished_at,"
                        " duration, error, host, runner_pid, parent_id) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                        (r.job, r.status.value, r.trigger.value, r.attempt, _ts(r.scheduled_for), _ts(r.started_at),
                         finished, 0.0 if finished is not None else None, r.error, HOST, os.getpid(), r.parent_id),
                    )
                except sqlite3.IntegrityError:
                    # Only the partial unique index can refuse a row: the instant is claimed.
                    ids.append(None)
                    continue
                ids.append(cur.lastrowid)
        return ids

    def set_pids(self, pids: Sequence[tuple[int, int]]) -> None:
        """Record the process ids of started attempts, (run id, pid) pairs, in one commit
        (to find orphans after a crash)."""
        if not pids:
            return
        with self._tx() as db:
            db.executemany("UPDATE runs SET pid = ? WHERE id = ?", [(pid, run_id) for run_id, pid in pids])

    def finish_run(
        self,
        run_id: int,
        status: RunStatus,
        finished_at: datetime,
        *,
        duration: float | None,
        exit_code: int | None = None,
        error: str | None = None,
        output: str | None = None,
        result: Any = None,
    ) -> None:
        """Complete a run row with its outcome."""
        with self._tx() as db:
            db.execute(
                "UPDATE runs SET status = ?, finished_at = ?, duration = ?, exit_code = ?, error = ?,"
                " output = ?, result = ? WHERE id = ?",
                (status.value, _ts(finished_at), duration, exit_code, error, output, result_json(result), run_id),
            )

    def finish_runs(self, items: Sequence[Finish]) -> None:
        """Complete several run rows with their outcomes, in order, in one transaction (the
        store writer's group commit: 0.045 ms a row in 100-row commits against 0.19-0.40 ms
        for a commit per row, measured in issue #12)."""
        if not items:
            return
        with self._tx() as db:
            db.executemany(
                "UPDATE runs SET status = ?, finished_at = ?, duration = ?, exit_code = ?, error = ?,"
                " output = ?, result = ? WHERE id = ?",
                [(f.status.value, _ts(f.finished_at), f.duration, f.exit_code, f.error, f.output,
                  result_json(f.result), f.run_id) for f in items])

    def mark_dead_runs(self, is_alive: Callable[[int], bool], now: datetime, *,
                       job_alive: Callable[[int, int], bool] | None = None) -> list[RunRecord]:
        """Mark `running` rows of this host whose runner process is gone as `interrupted`.

        With `job_alive(pid, run_id)`, a row whose job process is still alive is left running
        (a killed `cronpy trigger`'s job runs on, holding its lock): only runs truly over."""
        rows = self._read(
            f"SELECT {COLUMNS}, runner_pid FROM runs WHERE status = 'running' AND host = ?", (HOST,)
        )
        dead = [r for r in rows if (r[15] is None or not is_alive(r[15]))
                and not (job_alive is not None and r[13] is not None and job_alive(r[13], r[0]))]
        if dead:
            with self._tx() as db:
                for r in dead:
                    db.execute(
                        "UPDATE runs SET status = 'interrupted', finished_at = ?, duration = ? - started_at,"
                        " error = ? WHERE id = ? AND status = 'running'",
                        (_ts(now), _ts(now), f"the runner (pid {r[15]}) died during the run", r[0]),
                    )
        return [_row(r[:15]) for r in dead]

    def note_error(self, run_id: int, note: str) -> None:
        """Append a line to a run's error (e.g. what recovery did about it)."""
        with self._tx() as db:
            db.execute("UPDATE runs SET error = coalesce(error || char(10), '') || ? WHERE id = ?", (note, run_id))

    def prune(self, before: datetime) -> int:
        """Delete finished runs that started before `before`; return how many."""
        with self._tx() as db:
            cur = db.execute("DELETE FROM runs WHERE started_at < ? AND status != 'running'", (_ts(before),))
            return cur.rowcount

    def pause(self, job: str, now: datetime) -> bool:
        """Pause a job (its schedule stops firing; `trigger` still runs it); False if it was paused."""
        with self._tx() as db:
            cur = db.execute("INSERT OR IGNORE INTO paused (job, since, host, pid) VALUES (?, ?, ?, ?)",
                             (job, _ts(now), HOST, os.getpid()))
            return cur.rowcount == 1

    def resume(self, job: str) -> bool:
        """Resume a paused job; False if it was not paused."""
        with self._tx() as db:
            return db.execute("DELETE FROM paused WHERE job = ?", (job,)).rowcount == 1

    def paused(self) -> dict[str, datetime]:
        """Paused jobs and since when."""
        return {job: _dt(since) for job, since in self._read("SELECT job, since FROM paused")}  # type: ignore[misc]

    def request_cancel(self, run_id: int, now: datetime) -> None:
        """Note that run `run_id` is being cancelled, so its runner records `cancelled`, not `failed`."""
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO cancel_requests (run_id, at) VALUES (?, ?)", (run_id, _ts(now)))

    def cancel_requested(self, run_id: int) -> bool:
        return bool(self._read("SELECT 1 FROM cancel_requests WHERE run_id = ?", (run_id,)))

    def last_success_started(self, job: str) -> datetime | None:
        """When the job's latest successful run started."""
        rows = self._read("SELECT max(started_at) FROM runs WHERE job = ? AND status = 'success'", (job,))
        return _dt(rows[0][0]) if rows else None

    def last_started(self, job: str, *, trigger: Trigger | None = None) -> datetime | None:
        """When the job's latest run (of `trigger`, if given) started."""
        if trigger is None:
            rows = self._read("SELECT max(started_at) FROM runs WHERE job = ? AND status != 'skipped'", (job,))
        else:
            rows = self._read("SELECT max(started_at) FROM runs WHERE job = ? AND trigger = ?", (job, trigger.value))
        return _dt(rows[0][0]) if rows else None

    # -- reading ---------------------------------------------------------------------------

    def get(self, run_id: int) -> RunRecord:
        rows = self._read(f"SELECT {COLUMNS} FROM runs WHERE id = ?", (run_id,))
        if not rows:
            raise RunNotFound(run_id)
        return _row(rows[0])

    def running_of(self, job: str) -> list[RunRecord]:
        """The job's runs in progress (any runner, any `cronpy trigger`)."""
        return [_row(r) for r in self._read(
            f"SELECT {COLUMNS} FROM runs WHERE status = 'running' AND job = ? ORDER BY id", (job,))]

    def query(
        self,
        job: str | None = None,
        *,
        status: RunStatus | None = None,
        since: datetime | None = None,
        limit: int | None = 50,
        with_output: bool = False,
        before_id: int | None = None,
    ) -> list[RunRecord]:
        """Return runs newest first, filtered by job, status and start time; with `before_id`,
        only rows with id < before_id (keyset paging: the next page starts below the last id)."""
        where, params = self._filters(job, status, since)
        if before_id is not None:
            where += (" AND" if where else " WHERE") + " id < ?"
            params.append(before_id)
        cols = COLUMNS if with_output else COLUMNS.replace("output", "NULL")
        sql = f"SELECT {cols} FROM runs{where} ORDER BY id DESC"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        return [_row(r) for r in self._read(sql, params)]

    @staticmethod
    def _filters(job: str | None, status: RunStatus | None, since: datetime | None) -> tuple[str, list[Any]]:
        return run_filters(job, status, since, mark="?", when=datetime.timestamp)

    def last_runs(self) -> dict[str, RunRecord]:
        """Return the latest run of each job."""
        rows = self._read(
            f"SELECT {COLUMNS.replace('output', 'NULL')} FROM runs WHERE id IN (SELECT max(id) FROM runs GROUP BY job)"
        )
        return {r[1]: _row(r) for r in rows}

    def last_scheduled(self, job: str) -> datetime | None:
        """Return the latest claimed instant of a job (the cadence of an interval job)."""
        # The claim index's own WHERE clause, so that SQLite walks runs_claim backwards and
        # stops at the first row: `max()` with extra filters read every run of the job
        # (30 ms a job on a 1,000,000-row history; `stats` asks for every job).
        rows = self._read(
            f"SELECT scheduled_for FROM runs INDEXED BY runs_claim WHERE job = ? AND {_CLAIM_WHERE}"
            " AND trigger IN ('schedule', 'catchup') ORDER BY scheduled_for DESC LIMIT 1",
            (job,),
        )
        return _dt(rows[0][0]) if rows else None

    def last_scheduled_many(self, jobs: Sequence[str]) -> dict[str, datetime]:
        """last_scheduled of each job that has one (an index walk each, ~20 µs)."""
        return {job: t for job in jobs if (t := self.last_scheduled(job)) is not None}

    def recent(self, job: str, count: int = 20) -> list[tuple[RunStatus, float | None]]:
        """The job's latest `count` runs as (status, duration), oldest first (stats marks)."""
        rows = self._read("SELECT status, duration FROM runs INDEXED BY runs_job_id WHERE job = ?"
                          " ORDER BY id DESC LIMIT ?", (job, count))
        return [(RunStatus(st), d) for st, d in reversed(rows)]

    def running(self) -> list[RunRecord]:
        return [_row(r) for r in self._read(f"SELECT {COLUMNS} FROM runs WHERE status = 'running' ORDER BY id")]

    def counts(self) -> dict[str, dict[RunStatus, int]]:
        """Runs per job and status over all of history, from the totals the triggers keep
        (O(jobs): the dashboard's success rates without stats' duration percentiles)."""
        out: dict[str, dict[RunStatus, int]] = {}
        for job, status, n in self._read("SELECT job, status, runs FROM job_totals WHERE runs > 0"):
            out.setdefault(job, {})[RunStatus(status)] = n
        return out

    def daily(self, job: str, since: datetime) -> list[tuple[datetime, int, int]]:
        """The job's runs per UTC day since `since`, as (day, finished runs, failed or timed out),
        oldest first; skipped and interrupted runs are not counted, as in success rates."""
        # Walk the job's (job, id) index from the first id of the window on: ids grow with start
        # times (a row is written when its run starts), so the lowest id among the first runs
        # started from an hour before `since` bounds them with room to spare. Filtering the
        # job's whole history by started_at instead read every run it ever had: 211 ms against
        # 0.6 ms for a job of the 1,000,000-row benchmark (bench/web.py).
        rows = self._read(
            "SELECT CAST(started_at / 86400 AS INTEGER) AS day, count(*), sum(status != 'success')"
            " FROM runs INDEXED BY runs_job_id WHERE job = ? AND started_at >= ?"
            f" AND status IN ({FINISHED_SQL}) AND id >= coalesce((SELECT min(id) FROM runs INDEXED BY runs_started"
            " WHERE started_at = (SELECT min(started_at) FROM runs WHERE started_at >= ?)), 9e18)"
            " GROUP BY day ORDER BY day",
            (job, since.timestamp(), since.timestamp() - 3600))
        return [(datetime.fromtimestamp(day * 86400, UTC), n, bad) for day, n, bad in rows]

    def stats(self, job: str | None = None, *, since: datetime | None = None) -> list[JobStats]:
        """Return per-job aggregates over the runs that started since `since`."""
        where, params = self._filters(job, None, since)
        counts: dict[str, dict[str, int]] = {}
        last_ids: dict[str, int] = {}
        if since is None:
            # All of history: the totals the triggers keep, one row per (job, status).
            sql = "SELECT job, status, runs, last_id FROM job_totals WHERE runs > 0" + (" AND job = ?" if job else "")
            rows = self._read(sql, [job] if job else [])
        else:
            rows = self._read(f"SELECT job, status, count(*), max(id) FROM runs{where} GROUP BY job, status", params)
        for name, status, n, last_id in rows:
            counts.setdefault(name, {})[status] = n
            last_ids[name] = max(last_ids.get(name, 0), last_id)
        if not counts:
            return []
        durations = self._duration_stats(job, since)
        last = {r[0]: r for r in self._read(
            f"SELECT job, status, started_at FROM runs WHERE id IN ({','.join('?' * len(last_ids))})",
            list(last_ids.values()))}
        out = []
        for name in sorted(counts):
            c = counts[name]
            mean, p50, p95, longest = durations.get(name, (None, None, None, None))
            out.append(JobStats(
                job=name, runs=sum(c.values()), successes=c.get("success", 0), failures=c.get("failed", 0),
                timeouts=c.get("timeout", 0), mean=mean, p50=p50, p95=p95, max=longest,
                last_started=_dt(last[name][2]), last_status=RunStatus(last[name][1]),
            ))
        return out

    def _duration_stats(self, job: str | None, since: datetime | None) -> dict[str, tuple[float | None, ...]]:
        """{job: (mean, p50, p95, max)} of finished runs' durations."""
        if since is not None:
            # A window: rank the (usually few) durations in it here.
            where, params = self._filters(job, None, since)
            by_job: dict[str, list[float]] = {}
            for name, d in self._read(
                    f"SELECT job, duration FROM runs{where} AND status IN ({FINISHED_SQL})"
                    " AND duration IS NOT NULL ORDER BY job, duration", params):
                by_job.setdefault(name, []).append(d)
            return {n: (sum(v) / len(v), _percentile(v, 0.50), _percentile(v, 0.95), v[-1]) for n, v in by_job.items()}
        # All of history: aggregate and rank from the partial (job, duration) index; the ranked
        # look-ups step through the index in SQLite's C code, not through Python.
        job_clause, params = ("AND job = ?", [job]) if job is not None else ("", [])
        out: dict[str, tuple[float | None, ...]] = {}
        for name, n, total in self._read(
                f"SELECT job, sum(runs), sum(duration_sum) FROM job_totals WHERE status IN ({FINISHED_SQL})"
                f" {job_clause} GROUP BY job", params):
            if not n:
                continue
            ranked = [self._nth_duration(name, _rank(n, q), n) for q in (0.50, 0.95, 1.0)]
            out[name] = (total / n, ranked[0], ranked[1], ranked[2])
        return out

    def _nth_duration(self, job: str, rank: int, n: int) -> float | None:
        """The rank-th smallest finished duration of a job, walking the index from the nearer end."""
        ascending = rank <= n - rank + 1
        rows = self._read(
            f"SELECT duration FROM runs INDEXED BY runs_finished_duration WHERE job = ?"
            f" AND status IN ({FINISHED_SQL}) ORDER BY duration {'ASC' if ascending else 'DESC'} LIMIT 1 OFFSET ?",
            (job, rank - 1 if ascending else n - rank))
        return rows[0][0] if rows else None

    def integrity_check(self) -> str:
        return str(self._read("PRAGMA integrity_check")[0][0])

