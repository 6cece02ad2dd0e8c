"""The PostgreSQL store: one history for a fleet of hosts. Imported only for a postgresql:// URL.

What differs from SQLite: connections that reconnect with backoff (and keepalives, server-side
timeouts), timestamptz times, the `cronpy` schema with its migrations under an advisory lock,
claims carrying the leader's epoch (a trigger refuses a stale one: see fleet.py) and retried on
a fresh connection when one drops, and batches sent in one round trip (pipelines, unnest).
The lease, job locks, heartbeats and cancel requests are the small objects of fleet.py.
"""

from __future__ import annotations

import threading
import time
import uuid
import os
from contextlib import contextmanager
from datetime import datetime
from typing import Any, Callable, Iterator, Sequence

from cronpy.errors import HistoryDamaged, HistoryError, NoHistory, NotLeader, StoreTooNew, StoreUnreachable
from cronpy.locks import Holder
from cronpy.models import Attempt, RunStatus, Trigger
from cronpy.redact import cronpy_logger
from cronpy.redact import redact_url as redact
from cronpy.skew import ClockSkew
from cronpy.store.interfaces import HOST, Capabilities, Health, NewRun, Store, implements
from cronpy.store.migrations import POSTGRES as MIGRATIONS
from cronpy.store.retry import CLAIM, GaveUp
from cronpy.store.sql import CLAIM_WHERE, FINISHED_DURATION, SqlStore, Tx

try:
    import psycopg
except ImportError:  # pragma: no cover - the `postgres` extra is not installed
    psycopg = None  # type: ignore[assignment]

log = cronpy_logger()
FENCED = "CPF01"  # the SQLSTATE of the fencing trigger (a class of our own: "CP")
MIGRATION_LOCK = 0x63726F6E7079  # pg_advisory_xact_lock key: runners starting together queue


class _Cursor:
    """Tx over a psycopg cursor: `?` placeholders become `%s`."""

    def __init__(self, cur: Any) -> None:
        self.cur = cur

    def run(self, sql: str, params: Sequence[Any] = ()) -> Any:
        """See Tx.run."""
        return self.cur.execute(sql.replace("?", "%s"), params)


class Conn:
    """One PostgreSQL connection that reconnects, with backoff, after it is lost."""

    def __init__(self, url: str, location: str, options: dict[str, Any]) -> None:
        self.url, self.location, self.options = url, location, options
        self.lock = threading.RLock()
        self._conn: Any = None
        self._retry_at = 0.0
        self._backoff = 0.2
        self.lost_since: float | None = None  # time.time() of the first failure, for status
        self.last_error = ""
        self.on_connect: Callable[[Any], None] | None = None  # called with each new connection

    def get(self) -> Any:
        """The live connection, connecting if needed; StoreUnreachable while backing off."""
        if self._conn is not None and not self._conn.closed:
            return self._conn
        now = time.monotonic()
        if now < self._retry_at:
            raise StoreUnreachable(self.location, f"not connected (next attempt in {self._retry_at - now:.1f}s): "
                                                  f"{self.last_error}")
        try:
            self._conn = psycopg.connect(self.url, autocommit=True, **self.options)
        except psycopg.Error as exc:
            self._failed(exc)
            raise StoreUnreachable(self.location, f"cannot connect: {self.last_error}") from None
        if self.lost_since is not None:
            log.warning("store %s: connected again after %.1fs", self.location, time.time() - self.lost_since)
        self.lost_since = None
        self._backoff = 0.2
        if self.on_connect is not None:
            try:
                self.on_connect(self._conn)
            except psycopg.Error:
                pass  # the caller's own statement on this connection will report the trouble
        return self._conn

    def _failed(self, exc: BaseException) -> None:
        self.last_error = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if self.lost_since is None:
            self.lost_since = time.time()
            log.error("store %s: connection lost: %s", self.location, self.last_error)
        self._retry_at = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, 5.0)

    @contextmanager
    def use(self, *, transaction: bool = False) -> Iterator[Any]:
        """A psycopg cursor on a live connection; trouble becomes a CronpyError."""
        with self.lock:
            conn = self.get()
            try:
                if transaction:
                    with conn.transaction(), conn.cursor() as cur:
                        yield cur
                else:
                    with conn.cursor() as cur:
                        yield cur
            except psycopg.Error as exc:
                if getattr(exc, "sqlstate", None) == FENCED:
                    raise NotLeader(str(exc.diag.message_primary or exc)) from None
                if isinstance(exc, psycopg.OperationalError) or conn.closed or conn.broken:
                    self._failed(exc)
                    try:
                        conn.close()
                    except psycopg.Error:
                        pass
                    raise StoreUnreachable(self.location, f"connection lost: {self.last_error}") from None
                raise HistoryError(self.location, str(exc).strip()) from None

    def close(self) -> None:
        """Close the connection (the next get() reconnects)."""
        with self.lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


@implements(Store)
class PgStore(SqlStore):
    """History and claims in one PostgreSQL database; `leadership` and `locks` beside it."""

    capabilities = Capabilities(fenced=True, shared_across_hosts=True, supports_cancel_from_other_hosts=True)
    fenced = True
    lease: float

    def __init__(self, url: str, *, lease: float = 10.0, readonly: bool = False, role: str = "client",
                 skew: tuple[float, float] | None = None) -> None:
        if psycopg is None:
            raise HistoryError(redact(url), "the PostgreSQL store needs psycopg: pip install 'cronpy-runner[postgres]'")
        from cronpy.store.fleet import Fleet

        self.url, self.location, self.lease = url, redact(url), float(lease)
        # A client paused inside a claim's transaction would hold the lease row FOR SHARE and
        # block a takeover: the server ends such a session after half a lease. Keepalives and
        # tcp_user_timeout notice a silent network within ~10 s instead of TCP's 15 minutes.
        self.options = {
            "connect_timeout": 5, "application_name": "cronpy",
            "keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 2, "keepalives_count": 3,
            "tcp_user_timeout": 10000,
            "options": f"-c TimeZone=UTC -c search_path=cronpy"
                       f" -c idle_in_transaction_session_timeout={max(500, int(self.lease * 500))}"
                       f" -c statement_timeout={max(10000, int(self.lease * 1000))}",
        }
        #: this host's clock against the server's, measured at each connect and lease renewal
        self.skew = ClockSkew(self.location, *skew) if skew else ClockSkew(self.location)
        self._db = self.conn()
        self._prune_conn: Conn | None = None
        self.holder_id = f"{HOST}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        #: The lease, job locks, heartbeats and cancel requests (see fleet.py).
        self.coord = Fleet(self, role)
        self.leadership, self.locks = self.coord.lease, self.coord.locks
        try:
            self._check_schema() if readonly else self._migrate()
        except BaseException:
            self._db.close()
            raise

    def conn(self) -> Conn:
        """A new reconnecting connection to this store's database (measuring the clock skew)."""
        c = Conn(self.url, self.location, self.options)
        c.on_connect = self._measure_skew
        return c

    def _measure_skew(self, conn: Any) -> None:
        with conn.cursor() as cur:
            self.skew.measure(cur)

    def _migrate(self) -> None:
        with self._db.use(transaction=True) as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            cur.execute("CREATE SCHEMA IF NOT EXISTS cronpy")
            cur.execute("CREATE TABLE IF NOT EXISTS cronpy.schema_version (version integer NOT NULL)")
            cur.execute("SELECT coalesce(max(version), 0) FROM cronpy.schema_version")
            version = cur.fetchone()[0]
            self._refuse_newer(version)
            for i, (_name, script) in enumerate(MIGRATIONS[version:], start=version + 1):
                cur.execute(script)
                cur.execute("INSERT INTO cronpy.schema_version (version) VALUES (%s)", (i,))

    def _refuse_newer(self, version: int) -> None:
        if version > len(MIGRATIONS):
            raise StoreTooNew(self.location, f"schema version {version} is newer than this cronpy knows"
                              f" ({len(MIGRATIONS)}): a newer cronpy wrote it; nothing was changed")

    def _check_schema(self) -> None:
        if not self._read("SELECT to_regclass('cronpy.runs') IS NOT NULL")[0][0]:
            raise NoHistory(self.location, "no history yet (no runner has used this database)")
        self._refuse_newer(self._one("SELECT coalesce(max(version), 0) FROM cronpy.schema_version"))

    def close(self) -> None:
        self.coord.close()
        for c in (self._db, self._prune_conn):
            if c is not None:
                c.close()

    def register_runner(self, role: str) -> None:
        self.coord.heartbeats.register(role)

    def watch(self, *, on_lost: Callable[[], None] | None = None,
              on_cancel: Callable[[int], object] | None = None,
              on_damaged: Callable[[HistoryDamaged], object] | None = None) -> None:
        if on_lost is not None:
            self.coord.lease.on_lost = on_lost
        if on_cancel is not None:
            self.coord.cancels.on_cancel = on_cancel

    def health(self) -> Health:
        # The keeper's connection is used every third of a lease, so it says whether the store
        # can be reached now; the main one reconnects only at its next use.
        conn = self.coord.keeper_conn if self.coord.running else self._db
        lost = conn.lost_since
        return Health(connected=lost is None, disconnected_since=lost, epoch=self.coord.lease.epoch)

    def owner_reporting(self, run_id: int) -> bool:
        return self.coord.heartbeats.owner_reporting(run_id)

    def fleet(self) -> list[dict[str, Any]] | None:
        return self.coord.heartbeats.fleet()

    def leader(self) -> Holder | None:
        return self.coord.lease.holder()

    # -- the dialect -------------------------------------------------------------------------

    @contextmanager
    def _tx(self, *, one_statement: bool = False) -> Iterator[Tx]:
        # The connection autocommits: a lone statement is its own transaction.
        with self._db.use(transaction=not one_statement) as cur:
            yield _Cursor(cur)

    @contextmanager
    def _prune_tx(self) -> Iterator[Tx]:
        if self._prune_conn is None:
            self._prune_conn = self.conn()
        with self._prune_conn.use(transaction=True) as cur:
            yield _Cursor(cur)

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        with self._db.use() as cur:
            cur.execute(sql.replace("?", "%s"), params)
            return list(cur.fetchall())

    def _to_db(self, dt: datetime | None) -> datetime | None:
        return dt

    def _from_db(self, value: Any) -> datetime | None:
        return value  # psycopg returns timestamptz as aware datetimes

    _day_sql = "floor(extract(epoch FROM started_at) / 86400)::bigint"

    def _claim_extra(self) -> tuple[str, tuple[Any, ...]]:
        return ", epoch", (self.coord.lease.epoch,)

    def _insert_runs(self, tx: Tx, sql: str, rows: list[tuple[Any, ...]]) -> list[int | None]:
        assert isinstance(tx, _Cursor)  # this dialect's own transactions (_tx)
        cur = tx.cur
        if len(rows) == 1:  # a pipeline costs ~0.2 ms more for a single row
            found = tx.run(sql, rows[0]).fetchone()
            return [found[0] if found else None]
        # returning=True pipelines the rows (one round trip for a burst, not one a row) and
        # keeps one result per row: empty where ON CONFLICT found the instant claimed.
        cur.executemany(sql.replace("?", "%s"), rows, returning=True)
        ids: list[int | None] = []
        while True:
            found = cur.fetchone()
            ids.append(found[0] if found else None)
            if not cur.nextset():
                return ids

    def start_runs(self, runs: Sequence[NewRun], *, wait: float | None = None) -> list[int | None]:
        """As SqlStore.start_runs; a dropped connection is retried on a fresh one while the
        lease (and `wait`) lasts. A retry that finds an instant claimed checks whether the claim
        is this process's own (its commit landed but the reply was lost) and returns its id."""
        if not runs:
            return []
        tries = 0

        def attempt() -> list[int | None]:
            nonlocal tries
            tries += 1
            ids = super(PgStore, self).start_runs(runs)
            return self._own_claims(runs, ids) if tries > 1 else ids

        lease = self.coord.lease
        if lease.epoch is None:  # not the leader: no lease to retry within
            return attempt()
        until = time.monotonic() + wait if wait is not None else float("inf")
        try:
            return CLAIM.call(attempt, retry_on=(StoreUnreachable,), deadline=lambda: min(lease.deadline, until),
                              on_error=lambda n, exc: log.warning("claim of %d run(s) failed (try %d), retrying"
                                                                  " on a fresh connection: %s", len(runs), n, exc))
        except GaveUp as exc:
            raise exc.last from None

    def _own_claims(self, runs: Sequence[NewRun], ids: list[int | None]) -> list[int | None]:
        out = list(ids)
        for i, (r, run_id) in enumerate(zip(runs, ids)):
            if run_id is None and r.scheduled_for is not None:
                out[i] = self._one(f"SELECT id FROM runs WHERE job = ? AND scheduled_for = ? AND {CLAIM_WHERE}"
                                   " AND host = ? AND runner_pid = ? AND epoch = ?",
                                   (r.job, r.scheduled_for, HOST, os.getpid(), self.coord.lease.epoch))
        return out

    def _dead_elsewhere(self) -> list[tuple[Sequence[Any], str]]:
        return [(r, f"its runner (pid {r[15]} on {r[14]}) stopped reporting during the run")
                for r in self.coord.heartbeats.orphans()]

    def _prune_more(self, tx: Tx, cutoff: Any) -> None:
        tx.run("DELETE FROM runners WHERE last_seen < ?", (cutoff,))

    def last_scheduled_many(self, jobs: Sequence[str]) -> dict[str, datetime]:
        """Every job in one round trip; the server walks the claim index per job."""
        if not jobs:
            return {}
        rows = self._read(
            f"SELECT j, (SELECT scheduled_for FROM runs WHERE job = j AND {CLAIM_WHERE}"
            " AND trigger IN ('schedule', 'catchup') ORDER BY scheduled_for DESC LIMIT 1)"
            " FROM unnest(?::text[]) AS j", (list(jobs),))
        return {job: t for job, t in rows if t is not None}

    def recent_attempts(self, jobs: Sequence[str], *, since: datetime | None = None,
                        limit: int = 50) -> dict[str, list[Attempt]]:
        """Every job in one round trip (one query a job adds up on 1,000 jobs)."""
        if not jobs:
            return {}
        rows = self._read(
            "SELECT j, r.id, r.status, r.trigger, r.scheduled_for, r.duration FROM unnest(?::text[]) AS j"
            " CROSS JOIN LATERAL (SELECT id, status, trigger, scheduled_for, duration FROM runs WHERE job = j"
            " AND (?::timestamptz IS NULL OR started_at >= ?::timestamptz) ORDER BY id DESC LIMIT ?) AS r"
            " ORDER BY j, r.id", (list(jobs), since, since, limit))
        out: dict[str, list[Attempt]] = {}
        for job, i, st, tr, sf, d in rows:
            out.setdefault(job, []).append(Attempt(i, RunStatus(st), Trigger(tr), sf, d))
        return out

    def _nth_durations(self, walks: list[tuple[str, bool, int]]) -> list[float | None]:
        """One query a direction for all jobs (a round trip each would add up on 1,000 jobs)."""
        found: dict[tuple[str, bool, int], float | None] = {}
        for ascending in (True, False):
            items = [w for w in walks if w[1] is ascending]
            if items:
                names, offsets = [w[0] for w in items], [w[2] for w in items]
                for name, offset, d in self._read(
                        f"SELECT j, o, (SELECT duration FROM runs WHERE job = j AND {FINISHED_DURATION}"
                        f" ORDER BY duration {'ASC' if ascending else 'DESC'}"
                        " LIMIT 1 OFFSET o) FROM unnest(?::text[], ?::int[]) AS t(j, o)", (names, offsets)):
                    found[(name, ascending, offset)] = d
        return [found.get(w) for w in walks]
