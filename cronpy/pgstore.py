"""The PostgreSQL store: one history, one leader and per-job locks for a fleet of hosts.

Imported only when the jobs file (or --store, $CRONPY_STORE) names a postgresql:// URL.

Leadership is a lease row with an epoch (a fencing token). The leader renews the lease every
third of its length on a connection of its own; a standby takes it over once it has expired,
and the takeover adds one to the epoch. Every claimed (job, instant) row carries the epoch it
was claimed under, and a trigger in the database refuses it unless that epoch holds a lease
that has not expired by the database's own clock. The trigger reads the lease row FOR SHARE,
so a takeover waits for claims in flight to commit, and a leader that wakes up from a pause
(SIGSTOP, a frozen VM, a partition) can never claim an instant after it lost the lease:
whatever its own clock believes, the database says no.

Per-job overlap locks are rows with an expiry, renewed with the lease; a lock whose holder
stops renewing (dead host, lost network) expires after one lease length. Every process that
runs jobs also keeps a heartbeat row, which is how a new leader tells runs left `running` by
a dead host from runs of a host that is merely slow.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any, Callable, Iterator, Sequence

from cronpy.redact import redact_url as redact
from cronpy.errors import CronpyError, HistoryError, LockHeld, NoHistory, NotLeader, RunNotFound, StoreUnreachable
from cronpy.history import CLAIMED_TRIGGERS, COLUMNS, HOST, NewRun, result_json, run_filters, run_record
from cronpy.locks import Holder
from cronpy.models import Finish, JobStats, RunRecord, RunStatus, Trigger
from cronpy.skew import ClockSkew

try:
    import psycopg
except ImportError:  # pragma: no cover - the `postgres` extra is not installed
    psycopg = None  # type: ignore[assignment]

log = logging.getLogger("cronpy")
UTC = timezone.utc

# The SQLSTATE the fencing trigger raises (a class of our own: "CP").
FENCED = "CPF01"
# pg_advisory_xact_lock key that serialises migrations of runners starting together.
MIGRATION_LOCK = 0x63726F6E7079  # "cronpy"

_CLAIMED_SQL = ", ".join(f"'{t.value}'" for t in CLAIMED_TRIGGERS)
_CLAIM_WHERE = f"attempt = 1 AND trigger IN ({_CLAIMED_SQL})"
_FINISHED_SQL = "'success', 'failed', 'timeout'"

MIGRATIONS: list[str] = [
    # 1: runs (as in SQLite, with real timestamps and the claim's epoch), the lease, job
    # locks, runner heartbeats, operator controls, and the fencing trigger.
    f"""
    CREATE TABLE cronpy.runs (
        id bigserial PRIMARY KEY,
        job text NOT NULL,
        status text NOT NULL,
        trigger text NOT NULL,
        attempt integer NOT NULL DEFAULT 1,
        scheduled_for timestamptz,
        started_at timestamptz NOT NULL,
        finished_at timestamptz,
        duration double precision,
        exit_code integer,
        error text,
        output text,
        result text,
        pid integer,
        host text,
        runner_pid integer,
        parent_id bigint,
        epoch bigint
    );
    CREATE UNIQUE INDEX runs_claim ON cronpy.runs (job, scheduled_for) WHERE {_CLAIM_WHERE};
    CREATE INDEX runs_job_id ON cronpy.runs (job, id);
    CREATE INDEX runs_job_status_id ON cronpy.runs (job, status, id);
    CREATE INDEX runs_status_id ON cronpy.runs (status, id);
    CREATE INDEX runs_started ON cronpy.runs (started_at);

    CREATE TABLE cronpy.leader (
        id integer PRIMARY KEY CHECK (id = 1),
        epoch bigint NOT NULL,
        holder text,
        host text,
        pid integer,
        since timestamptz,
        expires_at timestamptz NOT NULL
    );
    INSERT INTO cronpy.leader (id, epoch, expires_at) VALUES (1, 0, '-infinity');

    CREATE TABLE cronpy.job_locks (
        job text PRIMARY KEY,
        holder text NOT NULL,
        host text NOT NULL,
        pid integer NOT NULL,
        run_id bigint,
        since timestamptz NOT NULL,
        expires_at timestamptz NOT NULL
    );
    CREATE TABLE cronpy.runners (
        holder text PRIMARY KEY,
        host text NOT NULL,
        pid integer NOT NULL,
        role text NOT NULL,
        started_at timestamptz NOT NULL,
        last_seen timestamptz NOT NULL
    );
    CREATE TABLE cronpy.paused (job text PRIMARY KEY, since timestamptz NOT NULL, host text, pid integer);
    CREATE TABLE cronpy.cancel_requests (run_id bigint PRIMARY KEY, at timestamptz NOT NULL);

    CREATE FUNCTION cronpy.fence_claim() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF NEW.attempt = 1 AND NEW.trigger IN ({_CLAIMED_SQL}) THEN
            -- FOR SHARE: a takeover (an UPDATE of this row) waits until this claim commits.
            PERFORM 1 FROM cronpy.leader
                WHERE id = 1 AND epoch = NEW.epoch AND expires_at > clock_timestamp() FOR SHARE;
            IF NOT FOUND THEN
                RAISE EXCEPTION 'claim of % at % refused: epoch % does not hold the leader lease',
                    NEW.job, NEW.scheduled_for, NEW.epoch USING ERRCODE = '{FENCED}';
            END IF;
        END IF;
        RETURN NEW;
    END $$;
    CREATE TRIGGER runs_fence BEFORE INSERT ON cronpy.runs
        FOR EACH ROW EXECUTE FUNCTION cronpy.fence_claim();
    """,
    # 2: `stats` over all of history without sorting it: finished durations indexed by job,
    # walked from the nearer end for each nearest rank (as the SQLite store does).
    f"""
    CREATE INDEX runs_finished_duration ON cronpy.runs (job, duration)
        WHERE status IN ({_FINISHED_SQL}) AND duration IS NOT NULL;
    """,
]

def _row(r: Sequence[Any]) -> RunRecord:
    return run_record(r, lambda t: t)  # psycopg returns timestamptz as aware datetimes


class _Conn:
    """One PostgreSQL connection that reconnects, with backoff, after it is lost."""

    def __init__(self, url: str, location: str, options: dict[str, Any]) -> None:
        self.url = url
        self.location = location
        self.options = options
        self.lock = threading.RLock()
        self._conn: Any = None
        self._retry_at = 0.0
        self._backoff = 0.2
        self.lost_since: float | None = None  # time.time() of the first failure, for status
        self.last_error = ""
        self.on_connect: Callable[[Any], None] | None = None  # called with each new connection

    def get(self) -> Any:
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
        """A cursor on a live connection; connection trouble becomes HistoryError."""
        with self.lock:
            conn = self.get()
            try:
                if transaction:
                    with conn.transaction():
                        with conn.cursor() as cur:
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
        with self.lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


class PgStore:
    """History, claims, the leader lease and job locks in one PostgreSQL database."""

    fenced = True

    def __init__(self, url: str, *, lease: float = 10.0, readonly: bool = False, role: str = "client",
                 skew: tuple[float, float] | None = None) -> None:
        if psycopg is None:
            raise HistoryError(redact(url), "the PostgreSQL store needs psycopg: pip install 'cronpy-runner[postgres]'")
        self.url = url
        self.location = redact(url)
        self.lease = float(lease)
        self.holder_id = f"{HOST}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.role = role
        # A client paused inside a claim's transaction would hold the lease row FOR SHARE and
        # block a takeover: the server ends such a session after half a lease. Keepalives and
        # tcp_user_timeout notice a silent network within ~10 s instead of TCP's 15 minutes.
        idle_ms = max(500, int(self.lease * 500))
        options = {
            "connect_timeout": 5,
            "application_name": "cronpy",
            "keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 2, "keepalives_count": 3,
            "tcp_user_timeout": 10000,
            "options": f"-c TimeZone=UTC -c idle_in_transaction_session_timeout={idle_ms}"
                       f" -c statement_timeout={max(10000, int(self.lease * 1000))}",
        }
        self._db = _Conn(url, self.location, options)
        self._hb = _Conn(url, self.location, options)  # the keeper thread's own
        #: this host's clock against the server's, measured at each connect and renewal
        self.skew = ClockSkew(self.location, *skew) if skew else ClockSkew(self.location)
        self._db.on_connect = self._hb.on_connect = self._measure_skew
        #: why the last try_acquire refused to lead although it could have (clock skew)
        self.refused: str | None = None
        self._epoch: int | None = None
        self._deadline = 0.0  # time.monotonic() until which the lease is surely ours
        self._renewed = 0.0  # time.monotonic() when the last successful renewal was sent
        self._loss = ""
        self._locks: dict[str, PgJobLock] = {}
        self._keeper: threading.Thread | None = None
        self._stop = threading.Event()
        self.on_lost: Callable[[], None] | None = None  # called (keeper thread) when the lease is lost
        #: called (keeper thread) with the id of each of this process's runs that `cronpy cancel`
        #: asked to stop, from any host
        self.on_cancel: Callable[[int], None] | None = None
        self.poll_interval = min(0.25, self.lease / 8)
        if readonly:
            self._check_schema()
        else:
            self._migrate()

    # -- set-up ------------------------------------------------------------------------------

    def _migrate(self) -> None:
        with self._db.use(transaction=True) as cur:
            # Runners starting together on a new database queue here instead of racing.
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            cur.execute("CREATE SCHEMA IF NOT EXISTS cronpy")
            cur.execute("CREATE TABLE IF NOT EXISTS cronpy.schema_version (version integer NOT NULL)")
            cur.execute("SELECT coalesce(max(version), 0) FROM cronpy.schema_version")
            version = cur.fetchone()[0]
            if version > len(MIGRATIONS):
                raise HistoryError(self.location, f"schema version {version} is newer than this cronpy knows")
            for i, script in enumerate(MIGRATIONS[version:], start=version + 1):
                cur.execute(script)
                cur.execute("INSERT INTO cronpy.schema_version (version) VALUES (%s)", (i,))

    def _check_schema(self) -> None:
        with self._db.use() as cur:
            cur.execute("SELECT to_regclass('cronpy.runs') IS NOT NULL")
            if not cur.fetchone()[0]:
                raise NoHistory(self.location, "no history yet (no runner has used this database)")

    def close(self) -> None:
        self._stop.set()
        if self._keeper is not None:
            self._keeper.join(5)
        for lock in list(self._locks.values()):
            lock.release()
        try:
            with self._db.use() as cur:
                cur.execute("DELETE FROM cronpy.runners WHERE holder = %s", (self.holder_id,))
        except CronpyError:
            pass
        self._db.close()
        self._hb.close()

    def __enter__(self) -> "PgStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def connected(self) -> bool:
        return self._db.lost_since is None and self._hb.lost_since is None

    @property
    def disconnected_since(self) -> float | None:
        """time.time() since when the store cannot be reached (None while it can)."""
        times = [t for t in (self._db.lost_since, self._hb.lost_since) if t is not None]
        return min(times) if times else None

    # -- the keeper: lease, lock and heartbeat renewals ----------------------------------------

    def register_runner(self, role: str) -> None:
        """Heartbeat as a process that runs jobs (`run`, `trigger`) until close()."""
        self.role = role
        self._heartbeat()
        self._ensure_keeper()

    def _ensure_keeper(self) -> None:
        if self._keeper is None:
            self._keeper = threading.Thread(target=self._keep, name="store-keeper", daemon=True)
            self._keeper.start()

    def _keep(self) -> None:
        while not self._stop.wait(self.lease / 3):
            self._renew()

    def _measure_skew(self, conn: Any) -> None:
        with conn.cursor() as cur:
            self.skew.measure(cur)

    def _renew(self) -> None:
        epoch = self._epoch
        sent = time.monotonic()
        try:
            with self._hb.use() as cur:
                self.skew.measure(cur)
                refusal = self.skew.refusal()
                if epoch is not None and refusal is not None:
                    # A leader whose clock drifted past the limit hands the lease back now.
                    cur.execute("UPDATE cronpy.leader SET expires_at = clock_timestamp()"
                                " WHERE id = 1 AND epoch = %s AND holder = %s", (epoch, self.holder_id))
                    self._lose(epoch, refusal)
                    epoch = None
                if epoch is not None:
                    cur.execute(
                        "UPDATE cronpy.leader SET expires_at = clock_timestamp() + %s * interval '1 second'"
                        " WHERE id = 1 AND epoch = %s AND holder = %s RETURNING epoch",
                        (self.lease, epoch, self.holder_id))
                    if cur.fetchone() is None:
                        cur.execute("SELECT epoch, host, pid FROM cronpy.leader WHERE id = 1")
                        now_epoch, host, pid = cur.fetchone()
                        self._lose(epoch, f"the lease was taken over (epoch {now_epoch}, pid {pid} on {host})")
                    elif self._epoch == epoch:
                        self._renewed = sent
                        self._deadline = sent + self.lease * 0.9
                cur.execute("UPDATE cronpy.job_locks SET expires_at = clock_timestamp() + %s * interval '1 second'"
                            " WHERE holder = %s", (self.lease, self.holder_id))
                self._heartbeat_on(cur)
                cancels: list[int] = []
                if self.on_cancel is not None:
                    cur.execute("SELECT c.run_id FROM cronpy.cancel_requests c JOIN cronpy.runs r ON r.id = c.run_id"
                                " WHERE r.status = 'running' AND r.host = %s AND r.runner_pid = %s",
                                (HOST, os.getpid()))
                    cancels = [row[0] for row in cur.fetchall()]
            for run_id in cancels:
                self.on_cancel(run_id)  # type: ignore[misc]
        except CronpyError as exc:
            if epoch is not None and time.monotonic() >= self._deadline:
                self._lose(epoch, f"the lease ran out: the store cannot be reached: {exc}")

    def _heartbeat(self) -> None:
        with self._db.use() as cur:
            self._heartbeat_on(cur)

    def _heartbeat_on(self, cur: Any) -> None:
        role = "leader" if self._epoch is not None else self.role
        cur.execute(
            "INSERT INTO cronpy.runners (holder, host, pid, role, started_at, last_seen)"
            " VALUES (%s, %s, %s, %s, clock_timestamp(), clock_timestamp())"
            " ON CONFLICT (holder) DO UPDATE SET role = excluded.role, last_seen = excluded.last_seen",
            (self.holder_id, HOST, os.getpid(), role))

    def _lose(self, epoch: int, why: str) -> None:
        if self._epoch != epoch:
            return
        self._epoch = None
        self._loss = why
        callback = self.on_lost
        if callback is not None:
            callback()

    # -- Leadership -------------------------------------------------------------------------

    def try_acquire(self) -> bool:
        sent = time.monotonic()
        with self._db.use() as cur:
            self.skew.measure(cur)
            self.refused = self.skew.refusal()
            if self.refused is not None:
                return False
            # Free when expired by the database's clock, or still ours (a runner that stepped
            # down on its own clock may start a new term at once). Either way a new epoch.
            cur.execute(
                "UPDATE cronpy.leader SET epoch = epoch + 1, holder = %s, host = %s, pid = %s,"
                " since = clock_timestamp(), expires_at = clock_timestamp() + %s * interval '1 second'"
                " WHERE id = 1 AND (expires_at <= clock_timestamp() OR holder = %s) RETURNING epoch",
                (self.holder_id, HOST, os.getpid(), self.lease, self.holder_id))
            row = cur.fetchone()
            if row is None:
                return False
            self._epoch = int(row[0])
            self._renewed = sent
            self._deadline = sent + self.lease * 0.9
            self._loss = ""
            self._heartbeat_on(cur)
        self._ensure_keeper()
        return True

    def valid(self) -> bool:
        return self._epoch is not None and time.monotonic() < self._deadline

    @property
    def epoch(self) -> int | None:
        return self._epoch

    def describe_loss(self) -> str:
        if self._epoch is not None and time.monotonic() >= self._deadline:
            ago = time.monotonic() - self._renewed
            why = (f"the store cannot be reached: {self._hb.last_error}" if self._hb.lost_since is not None
                   else "this process was paused or too slow to renew it")
            return f"the lease ran out: last renewed {ago:.1f}s ago, for {self.lease:g}s ({why})"
        return self._loss or "the lease was lost"

    def release(self) -> None:
        epoch, self._epoch = self._epoch, None
        if epoch is None:
            return
        try:
            with self._db.use() as cur:
                # Expire it now: a standby takes over at its next poll, not a lease later.
                cur.execute("UPDATE cronpy.leader SET expires_at = clock_timestamp()"
                            " WHERE id = 1 AND epoch = %s AND holder = %s", (epoch, self.holder_id))
        except CronpyError as exc:
            log.warning("could not hand the lease back (it expires on its own): %s", exc)

    def holder(self) -> Holder | None:
        """Who holds an unexpired lease."""
        with self._db.use() as cur:
            cur.execute("SELECT pid, host, since, epoch, expires_at FROM cronpy.leader"
                        " WHERE id = 1 AND expires_at > clock_timestamp()")
            row = cur.fetchone()
        if row is None or row[0] is None:
            return None
        return Holder(pid=row[0], host=row[1], since=row[2], epoch=row[3], expires_at=row[4])

    def fleet(self) -> list[dict[str, Any]]:
        """Every process with a recent heartbeat: holder, host, pid, role, last_seen (seconds ago)."""
        with self._db.use() as cur:
            cur.execute("SELECT holder, host, pid, role, started_at,"
                        " extract(epoch FROM clock_timestamp() - last_seen)::float8 FROM cronpy.runners"
                        " WHERE last_seen > clock_timestamp() - %s * interval '1 second' ORDER BY started_at",
                        (self.lease * 6,))
            return [{"holder": h, "host": host, "pid": pid, "role": role, "started_at": started.isoformat(),
                     "last_seen_ago": round(ago, 1)} for h, host, pid, role, started, ago in cur.fetchall()]

    def owner_reporting(self, run_id: int) -> bool:
        """True if the process running `run_id` has sent a heartbeat within two leases (so it
        will see a cancel request for it)."""
        rows = self._read(
            "SELECT 1 FROM cronpy.runs r JOIN cronpy.runners x ON x.host = r.host AND x.pid = r.runner_pid"
            " WHERE r.id = %s AND x.last_seen > clock_timestamp() - %s * interval '1 second'",
            (run_id, self.lease * 2))
        return bool(rows)

    # -- job locks --------------------------------------------------------------------------

    def job(self, name: str) -> "PgJobLock":
        lock = self._locks.get(name)
        if lock is None:
            lock = self._locks[name] = PgJobLock(self, name)
        return lock

    # -- writing ----------------------------------------------------------------------------

    def start_run(self, job: str, trigger: Trigger, started_at: datetime, *, scheduled_for: datetime | None = None,
                  attempt: int = 1, parent_id: int | None = None, status: RunStatus = RunStatus.RUNNING,
                  error: str | None = None) -> int | None:
        return self.start_runs([NewRun(job, trigger, started_at, scheduled_for, attempt, parent_id, status, error)])[0]

    def start_runs(self, runs: Sequence[NewRun], *, wait: float | None = None) -> list[int | None]:
        """Insert run rows in one transaction; None where the instant is claimed already.

        Claims carry this runner's epoch; NotLeader if the database refuses it (stale lease).
        """
        if not runs:
            return []
        ids: list[int | None] = []
        epoch, pid = self._epoch, os.getpid()
        params = []
        for r in runs:
            finished = r.started_at if r.status.finished else None
            params.append((r.job, r.status.value, r.trigger.value, r.attempt, r.scheduled_for, r.started_at, finished,
                           0.0 if finished is not None else None, r.error, HOST, pid, r.parent_id, epoch))
        sql = ("INSERT INTO cronpy.runs (job, status, trigger, attempt, scheduled_for, started_at, finished_at,"
               " duration, error, host, runner_pid, parent_id, epoch) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)"
               f" ON CONFLICT (job, scheduled_for) WHERE {_CLAIM_WHERE} DO NOTHING RETURNING id")
        with self._db.use(transaction=True) as cur:
            if len(params) == 1:  # a pipeline costs ~0.2 ms more for a single row
                cur.execute(sql, params[0])
                row = cur.fetchone()
                return [row[0] if row else None]
            # returning=True pipelines the rows (one round trip for a burst, not one a row)
            # and keeps one result per row: empty where ON CONFLICT found the instant claimed.
            cur.executemany(sql, params, returning=True)
            while True:
                row = cur.fetchone()
                ids.append(row[0] if row else None)
                if not cur.nextset():
                    break
        return ids

    def set_pids(self, pids: Sequence[tuple[int, int]]) -> None:
        if not pids:
            return
        with self._db.use(transaction=True) as cur:
            cur.executemany("UPDATE cronpy.runs SET pid = %s WHERE id = %s", [(pid, rid) for rid, pid in pids])

    def finish_run(self, run_id: int, status: RunStatus, finished_at: datetime, *, duration: float | None,
                   exit_code: int | None = None, error: str | None = None, output: str | None = None,
                   result: Any = None) -> None:
        with self._db.use() as cur:
            cur.execute(
                "UPDATE cronpy.runs SET status = %s, finished_at = %s, duration = %s, exit_code = %s, error = %s,"
                " output = %s, result = %s WHERE id = %s",
                (status.value, finished_at, duration, exit_code, error, output, result_json(result), run_id))

    def finish_runs(self, items: Sequence[Finish]) -> None:
        """Complete several run rows with their outcomes, in order, in one transaction."""
        if not items:
            return
        with self._db.use(transaction=True) as cur:
            cur.executemany(
                "UPDATE cronpy.runs SET status = %s, finished_at = %s, duration = %s, exit_code = %s, error = %s,"
                " output = %s, result = %s WHERE id = %s",
                [(f.status.value, f.finished_at, f.duration, f.exit_code, f.error, f.output, result_json(f.result),
                  f.run_id) for f in items])

    def mark_dead_runs(self, is_alive: Callable[[int], bool], now: datetime, *,
                       job_alive: Callable[[int, int], bool] | None = None) -> list[RunRecord]:
        """`running` rows whose runner is gone become `interrupted`: on this host, a dead pid
        (unless `job_alive(pid, run_id)` says its job runs on); on another host, a runner
        without a heartbeat for three lease lengths."""
        with self._db.use() as cur:
            cur.execute(f"SELECT {COLUMNS}, runner_pid FROM cronpy.runs WHERE status = 'running' AND host = %s",
                        (HOST,))
            local = [r for r in cur.fetchall() if (r[15] is None or not is_alive(r[15]))
                     and not (job_alive is not None and r[13] is not None and job_alive(r[13], r[0]))]
            cur.execute(
                f"SELECT {COLUMNS}, runner_pid FROM cronpy.runs r WHERE status = 'running' AND host <> %s"
                " AND NOT EXISTS (SELECT 1 FROM cronpy.runners x WHERE x.host = r.host AND x.pid = r.runner_pid"
                " AND x.last_seen > clock_timestamp() - %s * interval '1 second')", (HOST, self.lease * 3))
            remote = cur.fetchall()
        dead = [(r, f"the runner (pid {r[15]}) died during the run") for r in local]
        dead += [(r, f"its runner (pid {r[15]} on {r[14]}) stopped reporting during the run") for r in remote]
        if dead:
            with self._db.use(transaction=True) as cur:
                for r, why in dead:
                    cur.execute("UPDATE cronpy.runs SET status = 'interrupted', finished_at = %s,"
                                " duration = extract(epoch FROM %s - started_at), error = %s"
                                " WHERE id = %s AND status = 'running'", (now, now, why, r[0]))
        return [_row(r[:15]) for r, _ in dead]

    def note_error(self, run_id: int, note: str) -> None:
        with self._db.use() as cur:
            cur.execute("UPDATE cronpy.runs SET error = coalesce(error || chr(10), '') || %s WHERE id = %s",
                        (note, run_id))

    def prune(self, before: datetime) -> int:
        with self._db.use(transaction=True) as cur:
            cur.execute("DELETE FROM cronpy.runs WHERE started_at < %s AND status <> 'running'", (before,))
            removed = int(cur.rowcount)
            cur.execute("DELETE FROM cronpy.cancel_requests c WHERE NOT EXISTS"
                        " (SELECT 1 FROM cronpy.runs r WHERE r.id = c.run_id)")
            cur.execute("DELETE FROM cronpy.runners WHERE last_seen < %s", (before,))
        return removed

    def pause(self, job: str, now: datetime) -> bool:
        with self._db.use() as cur:
            cur.execute("INSERT INTO cronpy.paused (job, since, host, pid) VALUES (%s, %s, %s, %s)"
                        " ON CONFLICT (job) DO NOTHING", (job, now, HOST, os.getpid()))
            return cur.rowcount == 1

    def resume(self, job: str) -> bool:
        with self._db.use() as cur:
            cur.execute("DELETE FROM cronpy.paused WHERE job = %s", (job,))
            return cur.rowcount == 1

    def paused(self) -> dict[str, datetime]:
        return dict(self._read("SELECT job, since FROM cronpy.paused"))

    def request_cancel(self, run_id: int, now: datetime) -> None:
        with self._db.use() as cur:
            cur.execute("INSERT INTO cronpy.cancel_requests (run_id, at) VALUES (%s, %s)"
                        " ON CONFLICT (run_id) DO UPDATE SET at = excluded.at", (run_id, now))

    def cancel_requested(self, run_id: int) -> bool:
        return bool(self._read("SELECT 1 FROM cronpy.cancel_requests WHERE run_id = %s", (run_id,)))

    def last_success_started(self, job: str) -> datetime | None:
        return self._one("SELECT max(started_at) FROM cronpy.runs WHERE job = %s AND status = 'success'", (job,))

    def last_started(self, job: str, *, trigger: Trigger | None = None) -> datetime | None:
        if trigger is None:
            return self._one("SELECT max(started_at) FROM cronpy.runs WHERE job = %s AND status <> 'skipped'", (job,))
        return self._one("SELECT max(started_at) FROM cronpy.runs WHERE job = %s AND trigger = %s",
                         (job, trigger.value))

    # -- reading ----------------------------------------------------------------------------

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        with self._db.use() as cur:
            cur.execute(sql, params)
            return cur.fetchall()

    def _one(self, sql: str, params: Sequence[Any] = ()) -> Any:
        rows = self._read(sql, params)
        return rows[0][0] if rows else None

    def get(self, run_id: int) -> RunRecord:
        rows = self._read(f"SELECT {COLUMNS} FROM cronpy.runs WHERE id = %s", (run_id,))
        if not rows:
            raise RunNotFound(run_id)
        return _row(rows[0])

    def running_of(self, job: str) -> list[RunRecord]:
        return [_row(r) for r in self._read(
            f"SELECT {COLUMNS} FROM cronpy.runs WHERE status = 'running' AND job = %s ORDER BY id", (job,))]

    def running(self) -> list[RunRecord]:
        return [_row(r) for r in self._read(f"SELECT {COLUMNS} FROM cronpy.runs WHERE status = 'running' ORDER BY id")]

    def counts(self) -> dict[str, dict[RunStatus, int]]:
        """As History.counts: runs per job and status."""
        out: dict[str, dict[RunStatus, int]] = {}
        for job, status, n in self._read("SELECT job, status, count(*) FROM cronpy.runs GROUP BY job, status"):
            out.setdefault(job, {})[RunStatus(status)] = n
        return out

    def daily(self, job: str, since: datetime) -> list[tuple[datetime, int, int]]:
        """As History.daily: finished runs and failures per UTC day since `since`."""
        rows = self._read(
            "SELECT date_trunc('day', started_at AT TIME ZONE 'UTC') AS day, count(*),"
            " count(*) FILTER (WHERE status <> 'success') FROM cronpy.runs"
            f" WHERE job = %s AND started_at >= %s AND status IN ({_FINISHED_SQL}) GROUP BY day ORDER BY day",
            (job, since))
        return [(day.replace(tzinfo=timezone.utc), n, bad) for day, n, bad in rows]

    @staticmethod
    def _filters(job: str | None, status: RunStatus | None, since: datetime | None) -> tuple[str, list[Any]]:
        return run_filters(job, status, since, mark="%s", when=lambda t: t)

    def query(self, job: str | None = None, *, status: RunStatus | None = None, since: datetime | None = None,
              limit: int | None = 50, with_output: bool = False, before_id: int | None = None) -> list[RunRecord]:
        where, params = self._filters(job, status, since)
        if before_id is not None:
            where += (" AND" if where else " WHERE") + " id < %s"
            params.append(before_id)
        cols = COLUMNS if with_output else COLUMNS.replace("output", "NULL")
        sql = f"SELECT {cols} FROM cronpy.runs{where} ORDER BY id DESC"
        if limit is not None:
            sql += " LIMIT %s"
            params.append(limit)
        return [_row(r) for r in self._read(sql, params)]

    def last_runs(self) -> dict[str, RunRecord]:
        rows = self._read(f"SELECT DISTINCT ON (job) {COLUMNS.replace('output', 'NULL')} FROM cronpy.runs"
                          " ORDER BY job, id DESC")
        return {r[1]: _row(r) for r in rows}

    def last_scheduled(self, job: str) -> datetime | None:
        return self._one(f"SELECT scheduled_for FROM cronpy.runs WHERE job = %s AND {_CLAIM_WHERE}"
                         " AND trigger IN ('schedule', 'catchup') ORDER BY scheduled_for DESC LIMIT 1", (job,))

    def last_scheduled_many(self, jobs: Sequence[str]) -> dict[str, datetime]:
        """last_scheduled of every job in one round trip; the server walks the claim index per job."""
        if not jobs:
            return {}
        rows = self._read(
            "SELECT j, (SELECT scheduled_for FROM cronpy.runs WHERE job = j AND "
            f"{_CLAIM_WHERE} AND trigger IN ('schedule', 'catchup') ORDER BY scheduled_for DESC LIMIT 1)"
            " FROM unnest(%s::text[]) AS j", (list(jobs),))
        return {job: t for job, t in rows if t is not None}

    def recent(self, job: str, count: int = 20) -> list[tuple[RunStatus, float | None]]:
        rows = self._read("SELECT status, duration FROM cronpy.runs WHERE job = %s ORDER BY id DESC LIMIT %s",
                          (job, count))
        return [(RunStatus(st), d) for st, d in reversed(rows)]

    def stats(self, job: str | None = None, *, since: datetime | None = None) -> list[JobStats]:
        """Per-job aggregates; percentiles are nearest-rank, as the SQLite store computes them."""
        where, params = self._filters(job, None, since)
        counts = self._read(
            "SELECT job, count(*), count(*) FILTER (WHERE status = 'success'),"
            " count(*) FILTER (WHERE status = 'failed'), count(*) FILTER (WHERE status = 'timeout'),"
            f" avg(duration) FILTER (WHERE status IN ({_FINISHED_SQL})), max(id)"
            f" FROM cronpy.runs{where} GROUP BY job ORDER BY job", params)
        if not counts:
            return []
        ranked = self._ranked_durations(where, params, since is None)
        last = {r[0]: r for r in self._read(
            "SELECT id, status, started_at FROM cronpy.runs WHERE id = ANY(%s)", ([c[6] for c in counts],))}
        out = []
        for name, runs, ok, failed, timeout, mean, last_id in counts:
            q = ranked.get(name, {})
            out.append(JobStats(
                job=name, runs=runs, successes=ok, failures=failed, timeouts=timeout, mean=mean,
                p50=q.get(50), p95=q.get(95), max=q.get(100),
                last_started=last[last_id][2], last_status=RunStatus(last[last_id][1])))
        return out


    def _ranked_durations(self, where: str, params: list[Any], everything: bool) -> dict[str, dict[int, float]]:
        """{job: {50: p50, 95: p95, 100: max}} of finished durations, nearest rank."""
        finished = f"status IN ({_FINISHED_SQL}) AND duration IS NOT NULL"
        ranked: dict[str, dict[int, float]] = {}
        if not everything:
            # A window: rank the rows in it (usually few) in one sort.
            cond = " AND ".join(filter(None, [where.removeprefix(" WHERE "), finished]))
            for name, q, d in self._read(
                    "SELECT job, q, duration FROM (SELECT job, duration,"
                    " row_number() OVER (PARTITION BY job ORDER BY duration) AS rn,"
                    " count(*) OVER (PARTITION BY job) AS n FROM cronpy.runs"
                    f" WHERE {cond}) s, (VALUES (50), (95), (100)) AS qs(q)"
                    " WHERE rn = greatest(1, (q * n + 99) / 100)", params):
                ranked.setdefault(name, {})[q] = d
            return ranked
        # All of history: n per job from the partial index, then each rank by walking that
        # index from its nearer end, all jobs in one query a direction (no sort of history).
        job_clause = " AND job = %s" if params else ""
        walks: dict[bool, list[tuple[str, int, int]]] = {True: [], False: []}
        for name, n in self._read(f"SELECT job, count(*) FROM cronpy.runs WHERE {finished}{job_clause}"
                                  " GROUP BY job", params):
            for q in (50, 95, 100):
                rank = max(1, (q * n + 99) // 100)  # ceil(q n / 100), in integers
                ascending = rank <= n - rank + 1
                walks[ascending].append((name, q, rank - 1 if ascending else n - rank))
        for ascending, items in walks.items():
            if not items:
                continue
            names, qs, offsets = zip(*items)
            for name, q, d in self._read(
                    f"SELECT j, q, (SELECT duration FROM cronpy.runs WHERE job = j AND {finished}"
                    f" ORDER BY duration {'ASC' if ascending else 'DESC'} LIMIT 1 OFFSET o)"
                    " FROM unnest(%s::text[], %s::int[], %s::int[]) AS t(j, q, o)",
                    (list(names), list(qs), list(offsets))):
                ranked.setdefault(name, {})[q] = d
        return ranked


class PgJobLock:
    """A job's overlap lock as a row with an expiry, shared by every host on the database."""

    def __init__(self, store: PgStore, job: str) -> None:
        self.store = store
        self.job = job
        self.what = f"job {job!r}"
        self._held = threading.Event()

    @property
    def held(self) -> bool:
        return self._held.is_set()

    def acquire(self, *, wait: float = 0.0, run_id: int | None = None, now: datetime | None = None,
                write_holder: bool = True) -> None:
        """Take the lock or raise LockHeld naming the holder (host, pid, run); `wait` seconds at most.

        Connection trouble raises OSError, as an unopenable lock file does: that run fails.
        """
        if self.held:
            holder = self.holder()
            raise LockHeld(self.what, holder.describe() if holder else None)
        deadline = time.monotonic() + wait
        s = self.store
        while True:
            try:
                with s._db.use() as cur:
                    cur.execute(
                        "INSERT INTO cronpy.job_locks (job, holder, host, pid, run_id, since, expires_at)"
                        " VALUES (%s, %s, %s, %s, %s, clock_timestamp(), clock_timestamp() + %s * interval '1 second')"
                        " ON CONFLICT (job) DO UPDATE SET holder = excluded.holder, host = excluded.host,"
                        " pid = excluded.pid, run_id = excluded.run_id, since = excluded.since,"
                        " expires_at = excluded.expires_at WHERE cronpy.job_locks.expires_at <= clock_timestamp()"
                        " RETURNING 1", (self.job, s.holder_id, HOST, os.getpid(), run_id, s.lease))
                    taken = cur.fetchone() is not None
            except HistoryError as exc:
                raise OSError(str(exc)) from None
            if taken:
                self._held.set()
                s._ensure_keeper()
                return
            if time.monotonic() >= deadline:
                holder = self.holder()
                raise LockHeld(self.what, holder.describe() if holder else None)
            time.sleep(min(0.25, max(0.0, deadline - time.monotonic())))

    def set_holder(self, *, run_id: int | None = None, now: datetime | None = None) -> None:
        try:
            with self.store._db.use() as cur:
                cur.execute("UPDATE cronpy.job_locks SET run_id = %s WHERE job = %s AND holder = %s",
                            (run_id, self.job, self.store.holder_id))
        except HistoryError as exc:
            raise OSError(str(exc)) from None

    def release(self) -> None:
        if not self.held:
            return
        self._held.clear()
        try:
            with self.store._db.use() as cur:
                cur.execute("DELETE FROM cronpy.job_locks WHERE job = %s AND holder = %s",
                            (self.job, self.store.holder_id))
        except HistoryError as exc:
            log.warning("%s: could not release its lock now (it expires within %gs): %s", self.job,
                        self.store.lease, exc)

    def holder(self) -> Holder | None:
        try:
            with self.store._db.use() as cur:
                cur.execute("SELECT pid, host, since, run_id FROM cronpy.job_locks"
                            " WHERE job = %s AND expires_at > clock_timestamp()", (self.job,))
                row = cur.fetchone()
        except HistoryError:
            return None
        return Holder(pid=row[0], host=row[1], since=row[2], run_id=row[3]) if row else None
