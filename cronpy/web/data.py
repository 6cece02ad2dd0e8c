"""What the dashboard shows, read from the jobs file and the store. No HTTP and no HTML here.

Every read goes through the `Store` read methods (query, get, stats, paused, running, daily,
last_scheduled_many) and the pure schedule code, so a page shows what `cronpy list`, `stats`,
`history`, `show` and `status` print. Nothing here writes: the store is opened read-only, and
neither the runner nor the service layer (which imports the runner) is imported.
"""

from __future__ import annotations

import json
import os
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterator

from cronpy.redact import redact_url  # re-exported for app.py: the one redaction (ping, webhook, store)
from cronpy.clock import Clock, SystemClock
from cronpy.errors import CronpyError, HistoryError
from cronpy.models import Attempt, JobSet, JobSpec, JobStats, RunRecord, RunStatus
from cronpy.reads import RUN_WINDOW
from cronpy.redact import redact_text, redact_url
from cronpy.paths import file_setting, file_state_dir, find_jobs_file, resolve_state_dir, resolve_store
from cronpy.schedule import next_fire
from cronpy.store import Store, open_store
from cronpy.words import describe

UTC = timezone.utc
#: Runs shown per page of a job's history, and in the jobs page's strip and sparkline.
PAGE = 50
RECENT = 20
#: Points of the durations chart on a job's page (the latest finished runs).
CHART_RUNS = 200
#: Days of the failure-rate-by-day table.
DAYS = 14
#: The runner's status file in the state dir (service.STATUS_FILE; not imported: see above).
STATUS_FILE = "runner.json"


@dataclass(frozen=True)
class JobRow:
    """One line of the jobs page."""

    name: str
    spec: JobSpec | None  #: None: the job has runs in the history but is not in the jobs file
    words: str | None
    next_run: datetime | None
    paused_since: datetime | None
    stats: JobStats | None
    recent: list[RunRecord]  #: the latest runs, oldest first (outcome strip and sparkline)
    #: the latest reads.RUN_WINDOW attempts, oldest first: runs after retries and health, as `cronpy stats`
    window: list[Attempt] = field(default_factory=list)

    @property
    def last(self) -> RunRecord | None:
        return self.recent[-1] if self.recent else None

    @property
    def state(self) -> str:
        """What the status filter matches: the last status, or paused/disabled/never."""
        if self.paused_since is not None:
            return "paused"
        if self.spec is not None and not self.spec.enabled:
            return "disabled"
        return self.last.status.value if self.last else "never"


@dataclass(frozen=True)
class Page:
    """A page of a job's history: `before` is the id to ask for the next (older) page."""

    runs: list[RunRecord]
    before: int | None


@dataclass
class Now:
    """The scheduler and what it is doing, as `cronpy status` reads it."""

    scheduler: dict[str, Any] | None
    store: str | None
    store_error: str | None
    fleet: list[dict[str, Any]]
    this_host: dict[str, Any] | None
    running: list[RunRecord]
    next_due: list[tuple[str, datetime]]
    paused: dict[str, datetime]
    failures: list[RunRecord]
    state_dir: Path


def shown_path(path: Path) -> str:
    """A path as the page shows it: relative to the working directory when it lies below it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except (ValueError, OSError):
        return str(path)


class Dashboard:
    """The jobs file and the store of one `cronpy web`, shared by every request.

    The jobs file is read again when its mtime changes; a file that no longer validates keeps
    the last good jobs and says why (as `cronpy run` does on a reload). The store is opened
    read-only on first use and again after an error, so the dashboard may start before the
    first run and outlive a database restart.
    """

    def __init__(self, file: str | None, state_dir: str | None, store: str | None, *,
                 clock: Clock | None = None) -> None:
        from cronpy.config import load_jobs

        self.clock = clock or SystemClock()
        self.path = find_jobs_file(file)
        self.state_dir = resolve_state_dir(state_dir, None if state_dir else file_state_dir(self.path))
        self.url = resolve_store(store, file_setting(self.path, "store"))
        self._lock = threading.Lock()
        self._jobs: JobSet = load_jobs(self.path, now=self.clock.now())  # ConfigError: exit 2 at start
        self._mtime = self._stat()
        self.config_error: str | None = None
        self._store: Store | None = None
        self.store_error: str | None = None
        self.no_history = False  #: the state dir has no history.db yet (nothing has run)
        self._words: dict[str, str | None] = {}
        self._cache_store: Store | None = None
        self._cache: dict[str, tuple[tuple[tuple[str, int], ...], tuple[list[RunRecord], list[Attempt]]]] = {}

    @property
    def location(self) -> str:
        return redact_url(self.url) if self.url else shown_path(self.state_dir / "history.db")

    def _stat(self) -> float | None:
        try:
            return self.path.stat().st_mtime
        except OSError:
            return None

    def jobs(self) -> JobSet:
        """The jobs file's jobs, re-read if the file changed since the last request."""
        from cronpy.config import load_jobs

        with self._lock:
            mtime = self._stat()
            if mtime != self._mtime:
                self._mtime = mtime
                try:
                    self._jobs = load_jobs(self.path, now=self.clock.now())
                    self.config_error = None
                except CronpyError as exc:
                    self.config_error = redact_text(f"{exc} (showing the jobs as last read)")
            return self._jobs

    @contextmanager
    def store(self) -> Iterator[Store | None]:
        """The store, or None while it cannot be opened (`store_error` says why)."""
        with self._lock:
            self.no_history = False
            if self._store is None and not self.url and not (self.state_dir / "history.db").exists():
                # Nothing has run with this state dir yet: an empty history, not a fault.
                self.no_history, self.store_error = True, None
            elif self._store is None:
                try:
                    self._store = open_store(self.url, self.state_dir, readonly=True)
                    self.store_error = None
                except HistoryError as exc:
                    self.store_error = redact_text(str(exc))
            st = self._store
        try:
            yield st
        except HistoryError as exc:
            # Reopen on the next request: the database may have been replaced or restarted.
            with self._lock:
                self.store_error = redact_text(str(exc))
                if self._store is st and st is not None:
                    self._store = None
                    st.close()
            raise

    def close(self) -> None:
        with self._lock:
            if self._store is not None:
                self._store.close()
                self._store = None

    def words(self, spec: JobSpec) -> str | None:
        key = f"{spec.schedule!r}"
        if key not in self._words:  # cron-descriptor takes ~1 ms an expression: once each
            self._words[key] = describe(spec.schedule)
        return self._words[key]

    # -- pages ---------------------------------------------------------------------------

    def job_rows(self, *, durations: bool = False) -> list[JobRow]:
        """Every job of the file and every job only the history knows, by name; with
        `durations`, each row's stats also has the duration figures (the API's)."""
        jobs = self.jobs()
        now = self.clock.now()
        with self.store() as h:
            if h is None:
                counts: dict[str, dict[RunStatus, int]] = {}
                paused: dict[str, datetime] = {}
                anchors: dict[str, datetime] = {}
            else:
                # Counts from the per-job totals the store keeps: stats() would also rank
                # durations (35 ms of a ~90 ms page on 1,000,000 rows, 130 ms on a loaded
                # machine) for figures this page does not show. Each job's latest runs are
                # one index walk (~0.1 ms), never a scan.
                counts = h.counts()
                paused = h.paused()
                anchors = h.last_scheduled_many(list(jobs.jobs))
            names = sorted(set(jobs.jobs) | set(counts)) if h is not None else sorted(jobs.jobs)
            windows = self._windows(h, names, counts) if h is not None else {}
            recent = {n: runs[-RECENT:] for n, (runs, _) in windows.items()}
            stats = {n: _stats(n, c, recent.get(n, [])) for n, c in counts.items()} if h is not None else {}
            if durations and h is not None:
                stats = {st.job: st for st in h.stats()}
        rows = []
        for name in names:
            spec = jobs.jobs.get(name)
            nxt = None
            if spec is not None and spec.enabled and name not in paused:
                nxt = next_fire(spec, now, anchors.get(name))
            rows.append(JobRow(name, spec, self.words(spec) if spec else None, nxt, paused.get(name),
                               stats.get(name), recent.get(name, []), windows.get(name, ([], []))[1]))
        return rows

    def _windows(self, h: Store, names: list[str], counts: dict[str, dict[RunStatus, int]]
                 ) -> dict[str, tuple[list[RunRecord], list[Attempt]]]:
        """Each job's latest runs (and as attempts, for reads.job_health), oldest first, read
        again only for jobs whose per-status counts changed since the last request: a run that starts, ends, is cancelled or pruned
        changes them. The page polls every few seconds; with 1,000 jobs reading every window
        cost ~0.7 s of CPU a poll (25,000 rows made into records), one index walk per job
        that changed costs ~0.3 ms. (Counts that come back exactly as they were, e.g. one run
        pruned while another of the same status ended, keep a window until the next change.)"""
        out: dict[str, tuple[list[RunRecord], list[Attempt]]] = {}
        with self._lock:
            if self._cache_store is not h:  # a reopened store: nothing cached holds
                self._cache_store, self._cache = h, {}
            cache = self._cache
        for name in names:
            key = tuple(sorted((s.value, n) for s, n in counts.get(name, {}).items()))
            hit = cache.get(name)
            if hit is not None and hit[0] == key:
                out[name] = hit[1]
                continue
            runs = list(reversed(h.query(name, limit=max(RECENT, RUN_WINDOW))))
            cache[name] = (key, (runs, [r.as_attempt() for r in runs]))
            out[name] = cache[name][1]
        for gone in set(cache) - set(names):
            cache.pop(gone, None)
        return out

    def job(self, name: str) -> tuple[JobSpec | None, JobStats | None, datetime | None, list[datetime]]:
        """A job's definition, stats, paused-since and next 10 instants; KeyError if unknown."""
        spec = self.jobs().jobs.get(name)
        now = self.clock.now()
        with self.store() as h:
            stats = h.stats(name) if h is not None else []
            paused = h.paused().get(name) if h is not None else None
            anchor = h.last_scheduled_many([name]).get(name) if h is not None and spec is not None else None
        if spec is None and not stats:
            raise KeyError(name)
        instants: list[datetime] = []
        if spec is not None:
            t, a = now, anchor
            while len(instants) < 10 and (nxt := next_fire(spec, t, a)) is not None:
                instants.append(nxt)
                t = a = nxt
        return spec, stats[0] if stats else None, paused, instants

    def history(self, name: str | None, *, status: RunStatus | None = None, since: datetime | None = None,
                before: int | None = None, limit: int = PAGE) -> Page:
        """One page of runs, newest first (keyset paging on the run id: no OFFSET scan)."""
        with self.store() as h:
            if h is None:
                return Page([], None)
            runs = h.query(name, status=status, since=since, limit=limit + 1, before_id=before)
        more = len(runs) > limit
        runs = runs[:limit]
        return Page(runs, runs[-1].id if more and runs else None)

    def chart_runs(self, name: str) -> list[RunRecord]:
        """The job's latest finished runs with a duration, oldest first (the durations chart)."""
        with self.store() as h:
            if h is None:
                return []
            runs = h.query(name, limit=CHART_RUNS * 2)
        done = [r for r in runs if r.duration is not None and r.status in (
            RunStatus.SUCCESS, RunStatus.FAILED, RunStatus.TIMEOUT)][:CHART_RUNS]
        return list(reversed(done))

    def daily(self, name: str) -> list[tuple[datetime, int, int]]:
        """The last DAYS UTC days, oldest first, each (day, finished runs, failures), zeros included."""
        today = self.clock.now().astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        start = today - timedelta(days=DAYS - 1)
        with self.store() as h:
            got = {d: (n, bad) for d, n, bad in h.daily(name, start)} if h is not None else {}
        days = [start + timedelta(days=i) for i in range(DAYS)]
        return [(d, *got.get(d, (0, 0))) for d in days]

    def run(self, run_id: int) -> RunRecord:
        """One run with its output, as `cronpy show` has it: a running run's tail comes from
        its live file (the history has output only once a run ends); RunNotFound if none."""
        from cronpy.outputs import with_live_output

        with self.store() as h:
            if h is None:
                from cronpy.errors import RunNotFound

                raise RunNotFound(run_id)
            rec = h.get(run_id)
        return rec if rec.status.finished else with_live_output(rec, self.state_dir)

    def kept_output(self, rec: RunRecord, limit: int) -> tuple[str, int] | None:
        """A finished run's whole output kept on disk (`output: keep`), as (its last `limit`
        bytes as text, its size), or None if it was not kept here (another host of a fleet)."""
        from cronpy.outputs import read_kept

        chunks = read_kept(self.state_dir, rec.job, rec.id) if rec.status.finished else None
        if chunks is None:
            return None
        buf, total = bytearray(), 0
        for chunk in chunks:
            total += len(chunk)
            buf += chunk
            if len(buf) > 2 * limit:  # keep memory bounded on a large file
                del buf[:len(buf) - limit]
        return bytes(buf[-limit:]).decode("utf-8", errors="replace"), total

    def output_chunks(self, rec: RunRecord) -> Iterator[bytes]:
        """Everything a run printed that this host has: the kept or live file, else the tail."""
        from cronpy.outputs import read_kept, run_paths

        kept = read_kept(self.state_dir, rec.job, rec.id)
        if kept is not None:
            return kept
        if not rec.status.finished:
            try:
                with open(run_paths(self.state_dir, rec.job, rec.id)[0], "rb") as fh:
                    return iter([fh.read()])
            except OSError:
                pass
        return iter([(rec.output or "").encode()])

    def now(self) -> Now:
        """Who schedules, what runs, what is due next, the latest failures (`cronpy status`)."""
        jobs = self.jobs()
        now = self.clock.now()
        local = self._local_runner()
        result = Now(None, redact_url(self.url) if self.url else None, None, [], None, [], [], {}, [],
                     self.state_dir)
        if local is not None:
            result.this_host = local.get("store")
        try:
            with self.store() as h:
                if h is None:
                    result.store_error = self.store_error
                    anchors: dict[str, datetime] = {}
                else:
                    result.running = h.running()
                    result.paused = h.paused()
                    failures = h.query(status=RunStatus.FAILED, limit=5) + h.query(status=RunStatus.TIMEOUT, limit=5)
                    result.failures = sorted(failures, key=lambda r: r.id, reverse=True)[:5]
                    anchors = h.last_scheduled_many(list(jobs.jobs))
                    # A fleet store names its leader and heartbeats; SQLite has neither (capability,
                    # not type: see ARCHITECTURE.md).
                    if h.capabilities.shared_across_hosts:
                        lead = h.leader()
                        result.scheduler = None if lead is None else {
                            "pid": lead.pid, "host": lead.host, "since": lead.since, "epoch": lead.epoch,
                            "expires_at": lead.expires_at}
                        result.fleet = h.fleet() or []
        except HistoryError as exc:
            result.store_error = redact_text(str(exc))
            anchors = {}
        if not self.url:
            result.scheduler = self._scheduler_lock()
        due = []
        for name, spec in jobs.jobs.items():
            if spec.enabled and name not in result.paused:
                if (t := next_fire(spec, now, anchors.get(name))) is not None:
                    due.append((name, t))
        result.next_due = sorted(due, key=lambda d: (d[1], d[0]))[:10]
        return result

    def _scheduler_lock(self) -> dict[str, Any] | None:
        """The holder of the state dir's scheduler lock, from its holder file.

        Never by trying the flock as `cronpy status` does: the dashboard polls every second,
        and a runner starting in the instant the lock was tried would stand by needlessly.
        A holder file outlives a runner killed with SIGKILL, so its pid must be alive.
        """
        from cronpy.locks import HOST, Locks

        holder = Locks(self.state_dir).scheduler().holder()
        if holder is None or (holder.host == HOST and not _alive(holder.pid)):
            return None
        return {"pid": holder.pid, "host": holder.host, "since": holder.since, "epoch": holder.epoch,
                "expires_at": holder.expires_at}

    def _local_runner(self) -> dict[str, Any] | None:
        """This host's runner.json, if the runner that wrote it is alive."""
        try:
            info: dict[str, Any] = json.loads((self.state_dir / STATUS_FILE).read_text())
        except (OSError, ValueError):
            return None
        pid = info.get("pid")
        return info if isinstance(pid, int) and _alive(pid) else None


def _stats(job: str, counts: dict[RunStatus, int], recent: list[RunRecord]) -> JobStats:
    """Counts as JobStats, without duration figures (the jobs page shows rates and counts)."""
    last = recent[-1] if recent else None
    return JobStats(job=job, runs=sum(counts.values()), successes=counts.get(RunStatus.SUCCESS, 0),
                    failures=counts.get(RunStatus.FAILED, 0), timeouts=counts.get(RunStatus.TIMEOUT, 0),
                    mean=None, p50=None, p95=None, max=None, last_started=last.started_at if last else None,
                    last_status=last.status if last else None)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process
    return True
