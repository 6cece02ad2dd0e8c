"""The one SQL core of both stores: columns, status sets, every query, nearest-rank stats.

One row per attempt, written when the attempt starts and completed when it ends, so a crash
leaves a `running` row as evidence. Each scheduled (job, instant) can be claimed once: a
partial unique index refuses a second claim, whichever process or host makes it.

The SQL here is written once, with `?` placeholders and unqualified table names; a dialect
(sqlite.py, postgres.py) supplies the connection, turns `?` into its own placeholder, converts
times (SQLite stores UTC epoch seconds, PostgreSQL timestamptz) and overrides the few
methods where one database has a much faster way (SQLite's trigger-kept totals, PostgreSQL's
one-round-trip batches). A behaviour fixed here is fixed in both.
"""

from __future__ import annotations

import json
import os
import time
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Callable, Iterator, Protocol, Sequence

from cronpy.errors import RunNotFound
from cronpy.models import Attempt, Finish, JobStats, RunRecord, RunStatus, Trigger
from cronpy.store.interfaces import CLAIMED_TRIGGERS, HOST, Capabilities, Health, NewRun, Store, implements

if TYPE_CHECKING:
    from cronpy.errors import HistoryDamaged
    from cronpy.locks import Holder

CLAIMED_SQL = ", ".join(f"'{t.value}'" for t in CLAIMED_TRIGGERS)
CLAIM_WHERE = f"attempt = 1 AND trigger IN ({CLAIMED_SQL})"
# Outcomes that count in success rates and durations (not running, skipped or interrupted).
FINISHED = (RunStatus.SUCCESS, RunStatus.FAILED, RunStatus.TIMEOUT)
FINISHED_SQL = ", ".join(f"'{s.value}'" for s in FINISHED)
_FINISHED_VALUES = frozenset(s.value for s in FINISHED)
FINISHED_DURATION = f"status IN ({FINISHED_SQL}) AND duration IS NOT NULL"

COLUMNS = ("id, job, status, trigger, attempt, scheduled_for, started_at, finished_at, duration, "
           "exit_code, error, output, result, pid, host")
_NO_OUTPUT = COLUMNS.replace("output", "NULL")
_FINISH_COLUMNS = ("status", "finished_at", "duration", "exit_code", "error", "output", "result")


def claim_sql(columns: str, values: str, returning: str = "id") -> str:
    """INSERT of `values` into runs that claims instants: ON CONFLICT on the claim index, a
    claimed instant yields no row, in the same statement (no exception, so the rest of the
    batch goes on in the same transaction)."""
    return (f"INSERT INTO runs ({columns}) VALUES {values}"
            f" ON CONFLICT (job, scheduled_for) WHERE {CLAIM_WHERE} DO NOTHING RETURNING {returning}")


_INSERT_COLUMNS = ("job, status, trigger, attempt, scheduled_for, started_at, finished_at, duration, error, host,"
                   " runner_pid, parent_id")

#: Stored values to enums by dict lookup: RunStatus(value) (an Enum call, ~1 us) was most of
#: the time of reading 2,500 attempts for `stats`.
_STATUS: dict[str, RunStatus] = {s.value: s for s in RunStatus}
_TRIGGER: dict[str, Trigger] = {t.value: t for t in Trigger}

#: The quantiles `stats` reports, in percent: p50, p95 and max.
QUANTILES = (50, 95, 100)
#: A prune deletes in batches sized to hold the writer about PRUNE_TARGET seconds each: on this
#: 2-core machine a 500-row batch took 12-20 ms on SQLite (six indexes and the totals
#: trigger), so batches start at 200 rows and halve or double (PRUNE_BATCH .. PRUNE_MAX_BATCH)
#: to stay near the target. Between batches it pauses as long as the batch took (at least
#: PRUNE_PAUSE), so the runner's writes wait at most one batch for the lock.
PRUNE_TARGET = 0.004
PRUNE_BATCH = 200
PRUNE_MIN_BATCH = 20
PRUNE_MAX_BATCH = 5000
PRUNE_PAUSE = 0.002


def rank(n: int, q: int) -> int:
    """Nearest rank (1-based) of the q-th percentile among n values: ceil(q n / 100), 1..n."""
    return min(n, max(1, (q * n + 99) // 100))


def result_json(result: Any) -> str | None:
    """A run's return value as stored: JSON, or the JSON of its repr if it is not serialisable."""
    if result is None:
        return None
    try:
        return json.dumps(result)
    except (TypeError, ValueError):
        return json.dumps(repr(result))


class Tx(Protocol):
    """A cursor-like handle inside a transaction (see SqlStore._tx)."""

    def run(self, sql: str, params: Sequence[Any] = ()) -> Any:
        """Execute one statement (`?` placeholders); a cursor with fetchone/fetchall/rowcount."""
        ...


@implements(Store)
class SqlStore:
    """The store on top of a dialect's connection (see the module docstring).

    A dialect implements `_tx`, `_read`, `_to_db`, `_from_db`, `_insert_runs` and `_prune_tx`;
    everything else is shared.
    """

    capabilities = Capabilities(fenced=False, shared_across_hosts=False, supports_cancel_from_other_hosts=False)
    #: capabilities.fenced, as an attribute the runner reads on its path.
    fenced = False
    location: str = ""
    lease: float | None = None
    #: `INDEXED BY name` where the dialect lets a query name its index (SQLite's planner may
    #: otherwise scan a job's every row); "" elsewhere.
    _indexed_by: Callable[[str], str] = staticmethod(lambda name: "")

    # -- what a dialect provides -----------------------------------------------------------

    @contextmanager
    def _tx(self, *, one_statement: bool = False) -> Iterator[Tx]:
        """A write transaction on the store's connection, committed when the block ends.
        `one_statement`: the block runs exactly one statement, so a dialect whose connection
        autocommits may send it alone (atomic by itself) instead of BEGIN, it, COMMIT."""
        raise NotImplementedError
        yield  # pragma: no cover

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        raise NotImplementedError

    def _to_db(self, dt: datetime | None) -> Any:
        raise NotImplementedError

    def _from_db(self, value: Any) -> datetime | None:
        raise NotImplementedError

    def _insert_runs(self, tx: Tx, sql: str, rows: list[tuple[Any, ...]]) -> list[int | None]:
        """Run the INSERT … RETURNING id once per row; each row's id or None."""
        out: list[int | None] = []
        for row in rows:
            found = tx.run(sql, row).fetchone()
            out.append(found[0] if found else None)
        return out

    @contextmanager
    def _prune_tx(self) -> Iterator[Tx]:
        """A transaction on a connection of its own (pruning never holds the runner's)."""
        raise NotImplementedError
        yield  # pragma: no cover

    def _claim_extra(self) -> tuple[str, tuple[Any, ...]]:
        """Extra columns and values of every inserted row (PostgreSQL: the leader epoch)."""
        return "", ()

    # -- the common surface ----------------------------------------------------------------

    def __enter__(self) -> "SqlStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        raise NotImplementedError

    def register_runner(self, role: str) -> None:
        """Nothing to do on one host: liveness is the runner's pid (see mark_dead_runs)."""

    def watch(self, *, on_lost: Callable[[], None] | None = None,
              on_cancel: Callable[[int], object] | None = None,
              on_damaged: Callable[["HistoryDamaged"], object] | None = None) -> None:
        """Only what a dialect can have cause for (SQLite: on_damaged; PostgreSQL: the keeper's)."""

    def health(self) -> Health:
        return Health()

    def owner_reporting(self, run_id: int) -> bool:
        return False

    def fleet(self) -> list[dict[str, Any]] | None:
        return None

    def leader(self) -> "Holder | None":
        return None

    def _record(self, r: Sequence[Any]) -> RunRecord:
        result = r[12]
        if result is not None:
            try:
                result = json.loads(result)
            except ValueError:
                pass
        when = self._from_db
        return RunRecord(
            id=r[0], job=r[1], status=RunStatus(r[2]), trigger=Trigger(r[3]), attempt=r[4],
            scheduled_for=when(r[5]), started_at=when(r[6]), finished_at=when(r[7]),
            duration=r[8], exit_code=r[9], error=r[10], output=r[11], result=result, pid=r[13], host=r[14],
        )

    def _one(self, sql: str, params: Sequence[Any] = ()) -> Any:
        rows = self._read(sql, params)
        return rows[0][0] if rows else None

    # -- writing ---------------------------------------------------------------------------

    def start_run(self, job: str, trigger: Trigger, started_at: datetime, *, scheduled_for: datetime | None = None,
                  attempt: int = 1, parent_id: int | None = None, status: RunStatus = RunStatus.RUNNING,
                  error: str | None = None) -> int | None:
        return self.start_runs([NewRun(job, trigger, started_at, scheduled_for, attempt, parent_id, status, error)])[0]

    def start_runs(self, runs: Sequence[NewRun], *, wait: float | None = None) -> list[int | None]:
        if not runs:
            return []
        extra_cols, extra = self._claim_extra()
        pid = os.getpid()
        rows = []
        for r in runs:
            finished = r.started_at if r.status.finished else None
            rows.append((r.job, r.status.value, r.trigger.value, r.attempt, self._to_db(r.scheduled_for),
                         self._to_db(r.started_at), self._to_db(finished), 0.0 if finished is not None else None,
                         r.error, HOST, pid, r.parent_id, *extra))
        sql = claim_sql(_INSERT_COLUMNS + extra_cols, "(" + ",".join("?" * len(rows[0])) + ")")
        # One row is one INSERT: on PostgreSQL one round trip instead of three (BEGIN, INSERT,
        # COMMIT): one-row claims 1,202-1,344/s -> 1,749-1,817/s (bench/fleet.py claims).
        with self._tx(one_statement=len(rows) == 1) as tx:
            return self._insert_runs(tx, sql, rows)

    def set_pids(self, pids: Sequence[tuple[int, int]]) -> None:
        if not pids:
            return
        with self._tx() as tx:
            self._update_runs(tx, ("pid",), pids)

    def finish_run(self, run_id: int, status: RunStatus, finished_at: datetime, *, duration: float | None,
                   exit_code: int | None = None, error: str | None = None, output: str | None = None,
                   result: Any = None) -> None:
        self.finish_runs([Finish(run_id, status, finished_at, duration, exit_code, error, output, result)])

    def finish_runs(self, items: Sequence[Finish]) -> None:
        if not items:
            return
        to_db = self._to_db
        with self._tx() as tx:
            self._update_runs(tx, _FINISH_COLUMNS, [
                (f.run_id, f.status.value, to_db(f.finished_at), f.duration, f.exit_code, f.error, f.output,
                 result_json(f.result)) for f in items])

    def _update_runs(self, tx: Tx, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        """Set `columns` of each run to a row's values: (id, *values) per row."""
        sql = "UPDATE runs SET " + ", ".join(f"{c} = ?" for c in columns) + " WHERE id = ?"
        for row in rows:
            tx.run(sql, (*row[1:], row[0]))

    def _running_rows(self, where: str, params: Sequence[Any]) -> list[Any]:
        return self._read(f"SELECT {COLUMNS}, runner_pid FROM runs WHERE status = 'running' AND {where}", params)

    def _dead_elsewhere(self) -> list[tuple[Sequence[Any], str]]:
        """`running` rows of runners on other hosts that stopped reporting (shared stores)."""
        return []

    def mark_dead_runs(self, is_alive: Callable[[int], bool], now: datetime, *,
                       job_alive: Callable[[int, int], bool] | None = None) -> list[RunRecord]:
        dead: list[tuple[Sequence[Any], str]] = [
            (r, f"the runner (pid {r[15]}) died during the run")
            for r in self._running_rows("host = ?", (HOST,)) if (r[15] is None or not is_alive(r[15]))
            and not (job_alive is not None and r[13] is not None and job_alive(r[13], r[0]))]
        dead += self._dead_elsewhere()
        if dead:
            with self._tx() as tx:
                for r, why in dead:
                    started = self._from_db(r[6])
                    elapsed = (now - started).total_seconds() if started else None
                    tx.run("UPDATE runs SET status = 'interrupted', finished_at = ?, duration = ?, error = ?"
                           " WHERE id = ? AND status = 'running'", (self._to_db(now), elapsed, why, r[0]))
        return [self._record(r[:15]) for r, _ in dead]

    def note_error(self, run_id: int, note: str) -> None:
        with self._tx() as tx:
            tx.run("UPDATE runs SET error = coalesce(error || ?, '') || ? WHERE id = ?", ("\n", note, run_id))

    def prune(self, before: datetime) -> int:
        removed, batch = 0, PRUNE_BATCH
        cutoff = self._to_db(before)
        while True:
            began = time.monotonic()
            with self._prune_tx() as tx:
                n = tx.run("DELETE FROM runs WHERE id IN (SELECT id FROM runs WHERE started_at < ?"
                           " AND status <> 'running' ORDER BY started_at LIMIT ?)", (cutoff, batch)).rowcount
            took = time.monotonic() - began
            removed += n
            if n < batch:
                break
            if took > PRUNE_TARGET * 1.5:
                batch = max(PRUNE_MIN_BATCH, batch // 2)
            elif took < PRUNE_TARGET / 2:
                batch = min(PRUNE_MAX_BATCH, batch * 2)
            time.sleep(max(PRUNE_PAUSE, took))
        with self._prune_tx() as tx:
            tx.run("DELETE FROM cancel_requests WHERE NOT EXISTS (SELECT 1 FROM runs r WHERE r.id = run_id)")
            self._prune_more(tx, cutoff)
        return removed

    def _prune_more(self, tx: Tx, cutoff: Any) -> None:
        """What else a dialect keeps that ages out (PostgreSQL: heartbeats of gone runners)."""

    def pause(self, job: str, now: datetime) -> bool:
        with self._tx() as tx:
            return bool(tx.run("INSERT INTO paused (job, since, host, pid) VALUES (?, ?, ?, ?)"
                               " ON CONFLICT (job) DO NOTHING", (job, self._to_db(now), HOST, os.getpid())).rowcount == 1)

    def resume(self, job: str) -> bool:
        with self._tx() as tx:
            return bool(tx.run("DELETE FROM paused WHERE job = ?", (job,)).rowcount == 1)

    def paused(self) -> dict[str, datetime]:
        rows = [(job, self._from_db(since)) for job, since in self._read("SELECT job, since FROM paused")]
        return {job: since for job, since in rows if since is not None}  # `since` is NOT NULL

    def request_cancel(self, run_id: int, now: datetime) -> None:
        with self._tx() as tx:
            tx.run("INSERT INTO cancel_requests (run_id, at) VALUES (?, ?)"
                   " ON CONFLICT (run_id) DO UPDATE SET at = excluded.at", (run_id, self._to_db(now)))

    def cancel_requested(self, run_id: int) -> bool:
        return bool(self._read("SELECT 1 FROM cancel_requests WHERE run_id = ?", (run_id,)))

    # -- reading ---------------------------------------------------------------------------

    def last_success_started(self, job: str) -> datetime | None:
        return self._from_db(self._one("SELECT max(started_at) FROM runs WHERE job = ? AND status = 'success'", (job,)))

    def last_started(self, job: str, *, trigger: Trigger | None = None) -> datetime | None:
        if trigger is None:
            return self._from_db(self._one(
                "SELECT max(started_at) FROM runs WHERE job = ? AND status <> 'skipped'", (job,)))
        return self._from_db(self._one("SELECT max(started_at) FROM runs WHERE job = ? AND trigger = ?",
                                       (job, trigger.value)))

    def get(self, run_id: int) -> RunRecord:
        rows = self._read(f"SELECT {COLUMNS} FROM runs WHERE id = ?", (run_id,))
        if not rows:
            raise RunNotFound(run_id)
        return self._record(rows[0])

    def running_of(self, job: str) -> list[RunRecord]:
        return [self._record(r) for r in self._read(
            f"SELECT {COLUMNS} FROM runs WHERE status = 'running' AND job = ? ORDER BY id", (job,))]

    def running(self) -> list[RunRecord]:
        return [self._record(r) for r in self._read(f"SELECT {COLUMNS} FROM runs WHERE status = 'running' ORDER BY id")]

    def _filters(self, job: str | None, status: RunStatus | None, since: datetime | None,
                 before_id: int | None = None) -> tuple[str, list[Any]]:
        clauses: list[str] = []
        params: list[Any] = []
        for clause, value in (("job = ?", job), ("status = ?", status.value if status else None),
                              ("started_at >= ?", self._to_db(since) if since else None), ("id < ?", before_id)):
            if value is not None:
                clauses.append(clause)
                params.append(value)
        return (" WHERE " + " AND ".join(clauses) if clauses else ""), params

    def query(self, job: str | None = None, *, status: RunStatus | None = None, since: datetime | None = None,
              limit: int | None = 50, with_output: bool = False, before_id: int | None = None) -> list[RunRecord]:
        where, params = self._filters(job, status, since, before_id)
        sql = f"SELECT {COLUMNS if with_output else _NO_OUTPUT} FROM runs{where} ORDER BY id DESC"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        return [self._record(r) for r in self._read(sql, params)]

    def last_runs(self) -> dict[str, RunRecord]:
        rows = self._read(f"SELECT {_NO_OUTPUT} FROM runs WHERE id IN (SELECT max(id) FROM runs GROUP BY job)")
        return {r[1]: self._record(r) for r in rows}

    def last_scheduled(self, job: str) -> datetime | None:
        # The claim index's own WHERE clause, so that the database walks runs_claim backwards
        # and stops at the first row (`max()` read every run of the job: 30 ms a job on a
        # 1,000,000-row SQLite history; `stats` asks for every job).
        return self._from_db(self._one(
            f"SELECT scheduled_for FROM runs {self._indexed_by('runs_claim')} WHERE job = ? AND {CLAIM_WHERE}"
            " AND trigger IN ('schedule', 'catchup') ORDER BY scheduled_for DESC LIMIT 1", (job,)))

    def last_scheduled_many(self, jobs: Sequence[str]) -> dict[str, datetime]:
        return {job: t for job in jobs if (t := self.last_scheduled(job)) is not None}

    def recent_attempts(self, jobs: Sequence[str], *, since: datetime | None = None,
                        limit: int = 50) -> dict[str, list[Attempt]]:
        # A job at a time down its (job, id) index, stopping at `limit`: a window function over
        # the whole table would number every row of the history.
        out: dict[str, list[Attempt]] = {}
        # tuple.__new__, not Attempt(...): a namedtuple's own __new__ is a Python function, one
        # frame a row.
        new, status, trigger = tuple.__new__, _STATUS, _TRIGGER
        for job in jobs:
            where, params = self._filters(job, None, since)
            rows = self._read(f"SELECT id, status, trigger, scheduled_for, duration FROM runs"
                              f" {'' if since else self._indexed_by('runs_job_id')}{where}"
                              " ORDER BY id DESC LIMIT ?", [*params, limit])
            if rows:
                out[job] = [new(Attempt, (i, status[st], trigger[tr], sf, d)) for i, st, tr, sf, d in reversed(rows)]
        return out

    #: The UTC day of `started_at` as whole days since the epoch, in the dialect's SQL.
    _day_sql = "CAST(started_at / 86400 AS INTEGER)"

    def counts(self) -> dict[str, dict[RunStatus, int]]:
        out: dict[str, dict[RunStatus, int]] = {}
        for job, status, n, _, _ in self._totals(None, None):
            if n:
                out.setdefault(job, {})[RunStatus(status)] = n
        return out

    def daily(self, job: str, since: datetime) -> list[tuple[datetime, int, int]]:
        # Walk the job's (job, id) index from the first id of the window on: ids grow with start
        # times (a row is written when its run starts), so the lowest id among the first runs
        # started from an hour before `since` bounds them with room to spare. Filtering the
        # job's whole history by started_at instead read every run it ever had: 211 ms against
        # 0.6 ms for a job of the 1,000,000-row SQLite benchmark (bench/web.py).
        rows = self._read(
            f"SELECT {self._day_sql} AS day, count(*), sum(CASE WHEN status <> 'success' THEN 1 ELSE 0 END)"
            f" FROM runs {self._indexed_by('runs_job_id')} WHERE job = ? AND started_at >= ?"
            f" AND status IN ({FINISHED_SQL}) AND id >= coalesce((SELECT min(id) FROM runs"
            f" {self._indexed_by('runs_started')} WHERE started_at = (SELECT min(started_at) FROM runs"
            " WHERE started_at >= ?)), 9e18) GROUP BY day ORDER BY day",
            (job, self._to_db(since), self._to_db(since - timedelta(hours=1))))
        return [(datetime.fromtimestamp(int(day) * 86400, timezone.utc), n, bad) for day, n, bad in rows]

    # -- stats -----------------------------------------------------------------------------

    def _totals(self, job: str | None, since: datetime | None) -> list[tuple[str, str, int, float, int]]:
        """(job, status, runs, duration sum, last id) of runs started since `since`."""
        where, params = self._filters(job, None, since)
        return self._read(f"SELECT job, status, count(*), coalesce(sum(duration), 0), max(id) FROM runs{where}"
                          " GROUP BY job, status", params)

    def stats(self, job: str | None = None, *, since: datetime | None = None) -> list[JobStats]:
        counts: dict[str, dict[str, int]] = {}
        sums: dict[str, tuple[int, float]] = {}
        last_ids: dict[str, int] = {}
        totals = self._totals(job, since)
        for name, status, n, total, last_id in totals:
            if not n:
                continue
            counts.setdefault(name, {})[status] = n
            last_ids[name] = max(last_ids.get(name, 0), last_id)
            if status in _FINISHED_VALUES:
                k, s = sums.get(name, (0, 0.0))
                sums[name] = (k + n, s + total)
        if not counts:
            return []
        # Each job's totals row by row: what its quantiles depend on (see SqliteStore._ranked).
        prints: dict[str, list[Any]] = {}
        for name, status, n, total, last_id in sorted(totals):
            prints.setdefault(name, []).append([status, n, total, last_id])
        ranked = self._ranked(job, since, {name: k for name, (k, _) in sums.items()}, prints)
        last = {r[0]: r for r in self._read(
            f"SELECT id, status, started_at FROM runs WHERE id IN ({','.join('?' * len(last_ids))})",
            list(last_ids.values()))}
        out = []
        for name in sorted(counts):
            c, q, (k, total), row = counts[name], ranked.get(name, {}), sums.get(name, (0, 0.0)), last[last_ids[name]]
            out.append(JobStats(
                job=name, runs=sum(c.values()), successes=c.get("success", 0), failures=c.get("failed", 0),
                timeouts=c.get("timeout", 0), mean=total / k if k else None, p50=q.get(50), p95=q.get(95),
                max=q.get(100), last_started=self._from_db(row[2]),
                last_status=RunStatus(row[1])))
        return out

    def _ranked(self, job: str | None, since: datetime | None, finished: dict[str, int],
                prints: dict[str, list[Any]] | None = None) -> dict[str, dict[int, float]]:
        """{job: {50: p50, 95: p95, 100: max}}, nearest rank over finished durations. `prints`:
        each job's totals rows, which change whenever its runs do (a dialect may reuse figures
        it computed for the same rows)."""
        ranked: dict[str, dict[int, float]] = {}
        if since is not None:
            # A window: rank the (usually few) durations in it here.
            where, params = self._filters(job, None, since)
            by_job: dict[str, list[float]] = {}
            for name, d in self._read(f"SELECT job, duration FROM runs{where} AND {FINISHED_DURATION}"
                                      " ORDER BY job, duration", params):
                by_job.setdefault(name, []).append(d)
            return {name: {q: v[rank(len(v), q) - 1] for q in QUANTILES} for name, v in by_job.items()}
        # All of history: walk the partial (job, duration) index from its nearer end for each
        # rank (no sort of the history).
        walks = []
        for name, n in finished.items():
            for q in QUANTILES:
                r = rank(n, q)
                ascending = r <= n - r + 1
                walks.append((name, q, ascending, r - 1 if ascending else n - r))
        for (name, q, _, _), d in zip(walks, self._nth_durations([(w[0], w[2], w[3]) for w in walks])):
            if d is not None:
                ranked.setdefault(name, {})[q] = d
        return ranked

    def _nth_durations(self, walks: list[tuple[str, bool, int]]) -> list[float | None]:
        """For each (job, ascending, offset): the offset-th finished duration in that order."""
        out = []
        for name, ascending, offset in walks:
            out.append(self._one(
                f"SELECT duration FROM runs {self._indexed_by('runs_finished_duration')} WHERE job = ?"
                f" AND {FINISHED_DURATION} ORDER BY duration {'ASC' if ascending else 'DESC'} LIMIT 1 OFFSET ?",
                (name, offset)))
        return out
