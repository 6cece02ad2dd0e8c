"""What the commands do, wired from the core modules: logging, signals, the scheduler lock.

The CLI calls one function here per command and renders its result; this module owns the
process-level concerns (signal handlers, log format, the standby loop) that the core's pure,
testable pieces must not.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import FrameType
from typing import Callable

from cronpy.clock import Clock, StepDetector, SystemClock
from cronpy.config import MAX_DURATION, check_runnable, get_job, load_jobs
from cronpy.paths import private_dir, resolve_state_dir, resolve_store, secure_state_dir, write_private
from cronpy.redact import RedactingFilter, cronpy_logger, redact_text, redact_url
from cronpy.errors import (EXIT_LOCKED, EXIT_TIMEOUT, EXIT_USAGE, ConfigError, CronpyError, HistoryDamaged, HistoryError,
                           LockHeld, NoHistory, RunNotFound, StoreUnreachable)
from cronpy.executor import ensure_fd_budget, terminate_run
from cronpy.integrations import Integrations
from cronpy.locks import Holder, Locks
from cronpy.notify import Notifier
from cronpy import outputs
from cronpy.models import DEFAULT_OUTPUT_MAX, Every, JobSet, JobSpec, RunRecord, RunStatus
from cronpy.runner import MISFIRE_GRACE, Runner
from cronpy.runner.recorder import buffer_bounds
from cronpy.schedule import next_fire, parse_schedule
from cronpy.stateguard import StateGuard
from cronpy.store import HOST, JobLocks, Leadership, Store, open_backend as _open_backend, open_store
from cronpy.store.retry import OPEN, GaveUp
# Re-exported: `list` and `next` call service.describe; the web imports cronpy.words directly.
from cronpy.words import describe

log = cronpy_logger()
_print_lock = threading.Lock()

# Priorities of sd-daemon(3), for lines read by the journal.
_SYSLOG_LEVEL = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


class _JournalFormatter(logging.Formatter):
    """`<N>message`: the journal adds its own timestamp and reads N as the priority."""

    def format(self, record: logging.LogRecord) -> str:
        return f"<{_SYSLOG_LEVEL.get(record.levelno, 6)}>{super().format(record)}"


class _TextFormatter(logging.Formatter):
    """`TIME LEVEL message`, the time formatted once a second rather than once a line
    (strftime was a quarter of a line's cost; the runner logs two lines a run)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%dT%H:%M:%S%z")
        self._stamp: tuple[int, str] = (-1, "")  # (second, its text), replaced whole: thread-safe

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        second, text = self._stamp
        if int(record.created) != second:
            text = super().formatTime(record, datefmt)
            self._stamp = (int(record.created), text)
        return text


def setup_logging(verbose: bool = False) -> None:
    from cronpy import logfmt

    handler = logging.StreamHandler(sys.stderr)
    if logfmt.FORMAT == "json":
        handler.setFormatter(logfmt.JsonFormatter())
    elif os.environ.get("JOURNAL_STREAM"):
        handler.setFormatter(_JournalFormatter("%(message)s"))
    else:
        handler.setFormatter(_TextFormatter())
    # Whatever a log line quotes (a ping URL, a store's connection error), no secret in it
    # reaches the terminal or the journal.
    handler.addFilter(RedactingFilter())
    # No format here prints the caller's file and line, the thread or the process: not
    # computing them makes a record 13 -> 8 us (the runner logs two lines a run).
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    log.handlers[:] = [handler]
    log.setLevel(logging.DEBUG if verbose else logging.INFO)
    log.propagate = False


def _give_back_memory() -> None:
    """Return to the system what validating the jobs file freed: its YAML tree is gone, but
    glibc keeps the pages (1.4 MB of a runner's 31 MB with 1,000 jobs) for the process's life.
    And take what is alive now out of the garbage collector's full passes."""
    import gc

    gc.collect()
    # What is alive now (modules, the jobs, the stores) lives as long as the runner: the
    # collector need not walk it again at every full collection.
    gc.freeze()
    try:
        import ctypes

        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim, nothing lost
        pass


def _print_line(job: str, line: str) -> None:
    from cronpy import logfmt

    text = logfmt.json_line("info", line, job=job, output=True) if logfmt.FORMAT == "json" else f"{job} | {line}"
    with _print_lock:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()


def _runner_alive(pid: int) -> bool:
    """True if `pid` is a live cronpy process (a recycled pid running something else is not)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return b"cronpy" in fh.read()
    except FileNotFoundError:
        return False
    except OSError:
        return True  # cannot tell (another user's process): assume it is alive


def _install_signals(on_stop: Callable[[bool], None], on_reload: Callable[[], None] | None = None, *,
                     hangup_stops: bool = False) -> None:
    """SIGTERM/SIGINT: stop gracefully; a second SIGINT stops at once. SIGHUP: reload, or
    with `hangup_stops` (a foreground `trigger` whose terminal went away) stop like SIGTERM."""
    count = {"n": 0}

    def stop(signum: int, frame: FrameType | None) -> None:
        count["n"] += 1
        urgent = signum == signal.SIGINT and count["n"] > 1
        log.info("received %s: %s", signal.Signals(signum).name,
                 "stopping running jobs now" if urgent else "stopping (no new runs)")
        on_stop(urgent)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if hangup_stops:
        signal.signal(signal.SIGHUP, stop)
    elif on_reload is not None:
        signal.signal(signal.SIGHUP, lambda signum, frame: on_reload())


# How often the leader prunes the history (when `history_retention` is set), seconds.
PRUNE_EVERY = 3600.0


def _maintain(history: Store, runner: Runner, leadership: Leadership, retention: float | None,
              stop: threading.Event, clock: Clock, sd: Path) -> None:
    """Off the scheduling thread: prune the history (in small batches, see Store.prune) and
    kept output files hourly; on a store shared across hosts, also mark the runs of runners
    that stopped reporting `interrupted` every lease while leading, not only at takeover."""
    next_prune = 0.0
    every = history.lease if history.capabilities.shared_across_hosts and history.lease else PRUNE_EVERY
    while not stop.is_set():
        try:
            if retention and time.monotonic() >= next_prune:
                next_prune = time.monotonic() + PRUNE_EVERY
                removed = history.prune(clock.now() - timedelta(seconds=retention))
                if removed:
                    log.info("history: pruned %d run(s) older than the retention", removed)
                _prune_outputs(runner.jobs, sd, clock.now().timestamp() - retention)
            if history.capabilities.shared_across_hosts and leadership.valid():
                _recover(history, runner.jobs, clock.now())
        except Exception as exc:  # never let maintenance take the runner down
            log.error("history: maintenance failed: %s", exc)
        stop.wait(every)


def _prune_outputs(jobs: JobSet, sd: Path, older_than: float) -> None:
    try:
        caps = {name: spec.output_max for name, spec in jobs.jobs.items()}
        removed = outputs.prune(sd, older_than, caps, DEFAULT_OUTPUT_MAX)
        if removed:
            log.info("output: pruned %d kept output file(s) (retention, output_max)", removed)
    except Exception as exc:
        log.error("output: pruning failed: %s", exc)


class _Reloader:
    """Reload requests (SIGHUP, or a changed file with --watch), carried out on the loop thread."""

    def __init__(self, path: Path, runner: Runner, notifier: Notifier, clock: Clock, watch: bool) -> None:
        self.path = path
        self.runner = runner
        self.notifier = notifier
        self.clock = clock
        self.requested = threading.Event()
        self._mtime = self._stat()
        if watch:
            threading.Thread(target=self._watch, name="watch", daemon=True).start()

    def _stat(self) -> tuple[float, int] | None:
        try:
            st = self.path.stat()
            return (st.st_mtime, st.st_size)
        except OSError:
            return None

    def _watch(self) -> None:
        while not self.runner.stopping:
            time.sleep(1.0)
            current = self._stat()
            if current is not None and current != self._mtime:
                self._mtime = current
                log.info("%s changed: reloading", self.path)
                self.request()

    def request(self) -> None:
        self.requested.set()
        self.runner.wake.set()

    def __call__(self) -> None:
        if not self.requested.is_set():
            return
        self.requested.clear()
        self.notifier.reloading(time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000)
        try:
            jobs = load_jobs(self.path, now=self.clock.now())
        except ConfigError as exc:
            log.error("reload rejected, the old jobs keep running:\n%s", exc)
        else:
            added, removed, changed = self.runner.reload(jobs, self.clock.now())
            _fd_budget(jobs)
            log.info("reloaded %s: %d job(s); added %s, removed %s, changed %s", self.path, len(jobs.jobs),
                     ", ".join(added) or "none", ", ".join(removed) or "none", ", ".join(changed) or "none")
        self.notifier.ready(_summary(self.runner))


def _summary(runner: Runner) -> str:
    nxt = runner.next_due()
    when = f"{nxt.job} at {nxt.when.astimezone().isoformat(timespec='seconds')}" if nxt else "nothing scheduled"
    return f"{len(runner.jobs.jobs)} jobs, {runner.active_count} running, next: {when}"


def _recover(history: Store, jobs: JobSet, now: datetime) -> None:
    """Runs left `running` by a dead runner become `interrupted`; their process groups are stopped."""
    for rec in history.mark_dead_runs(_runner_alive, now):
        note = ""
        if rec.pid is not None and rec.host == HOST:  # another host's pid is not ours to signal
            spec = jobs.jobs.get(rec.job)
            if terminate_run(rec.pid, rec.id, spec.kill_grace if spec else 10.0):
                note = f"its process group {rec.pid} was still running and has been terminated"
                history.note_error(rec.id, note)
        log.warning("%s: run %d was left running by a runner that died; marked interrupted%s",
                    rec.job, rec.id, f" ({note})" if note else "")


def _fd_budget(jobs: JobSet) -> None:
    before, after, needed = ensure_fd_budget(jobs.max_concurrent)
    if after > before:
        log.debug("raised the open-files limit from %d to %d for max_concurrent %d", before, after, jobs.max_concurrent)
    if after < needed:
        log.warning("the open-files limit (%d) may be too low for max_concurrent %d; raise LimitNOFILE=",
                    after, jobs.max_concurrent)


STATUS_FILE = "runner.json"


def _store_state(history: Store, leading: bool) -> dict[str, object]:
    """The runner's view of its store, for `cronpy status` on its host."""
    state: dict[str, object] = {"location": history.location, "role": "leader" if leading else "standby"}
    if history.capabilities.shared_across_hosts:
        health = history.health()
        state["connected"] = health.connected
        state["epoch"] = health.epoch
        if health.disconnected_since is not None:
            state["disconnected_since"] = datetime.fromtimestamp(health.disconnected_since, timezone.utc).isoformat()
    return state


# The status file is rewritten at most this often, in seconds: renaming over an existing file
# forces a flush on ext4 (0.56 ms, 657 times in 25 s when it was written at every wake-up).
STATUS_EVERY = 1.0


class _StatusFile:
    """STATE_DIR/runner.json, written by a thread of its own at most once per STATUS_EVERY
    after the loop asks (update() only sets a flag): never on the critical path."""

    def __init__(self, sd: Path, runner: Runner, jobs_file: Path, since: datetime, history: Store) -> None:
        self.sd, self.runner, self.history, self.since = sd, runner, history, since
        self.jobs_file = str(jobs_file.resolve())
        self._leading = False
        self._dirty = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="status-file", daemon=True)
        self._thread.start()

    def update(self, *, leading: bool) -> None:
        self._leading = leading
        self._dirty.set()

    def close(self) -> None:
        self._stop.set()
        self._dirty.set()
        self._thread.join(5.0)

    def _loop(self) -> None:
        while True:
            self._dirty.wait()
            if self._stop.is_set():
                return
            self._dirty.clear()
            _write_status(self.sd, self.runner, self.jobs_file, self.since,
                          _store_state(self.history, self._leading), _backlog(self.runner))
            # A backlog's age changes while nothing wakes the loop: keep it current.
            if self.runner.backlog()[0]:
                self._dirty.set()
            self._stop.wait(STATUS_EVERY)


# How often a runner looks for runs whose runner died but whose job has ended since (a
# `cronpy trigger` killed with SIGKILL leaves its job running, holding the job lock).
JANITOR_EVERY = 5.0


class _Janitor:
    """Marks `interrupted` the runs of this host whose runner died and whose job has ended
    (one indexed read every JANITOR_EVERY seconds), through the writer's connection, on a
    thread of its own: such a run does not stay `running` until the next runner restart."""

    def __init__(self, store: Store, clock: Clock) -> None:
        self.store, self.clock = store, clock
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="janitor", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5.0)

    def _loop(self) -> None:
        while not self._stop.wait(JANITOR_EVERY):
            try:
                for rec in self.store.mark_dead_runs(_runner_alive, self.clock.now(), job_alive=_group_alive):
                    log.warning("%s: run %d was left running by a process that died (its job has ended "
                                "since); marked interrupted", rec.job, rec.id)
            except CronpyError as exc:
                log.debug("cannot look for dead runs: %s", exc)


def _group_alive(pid: int, run_id: int) -> bool:
    """True while a run's job process runs (a zombie nobody reaped yet has ended). A recycled
    pid errs on the safe side: the row stays `running` a little longer, nothing is signalled."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].split()[0] not in (b"Z", b"X")
    except FileNotFoundError:
        return False
    except (OSError, IndexError):
        return True  # cannot tell: assume it runs


def _backlog(runner: Runner) -> dict[str, object] | None:
    """The store writer's backlog, for `cronpy status`: how far behind the history is."""
    pending, oldest, failing = runner.backlog()
    if not pending:
        return None
    return {"pending": pending, "oldest_seconds": round(oldest or 0.0, 1),
            "failing_seconds": None if failing is None else round(failing, 1)}


def _write_status(sd: Path, runner: Runner, jobs_file: str, since: datetime,
                  store: dict[str, object] | None = None, backlog: dict[str, object] | None = None) -> None:
    """What `cronpy status` shows of the runner, written atomically to STATE_DIR/runner.json."""
    data = {
        "pid": os.getpid(), "host": HOST, "since": since.isoformat(), "jobs_file": jobs_file,
        "jobs": len(runner.jobs.jobs), "running": runner.active_count,
        "next": [{"job": d.job, "at": d.when.isoformat(), "trigger": d.trigger.value} for d in runner.upcoming(10)],
        "store": store, "history_behind": backlog,
    }
    try:
        private_dir(sd)
        write_private(sd / STATUS_FILE, json.dumps(data))
    except OSError as exc:
        log.debug("cannot write %s: %s", STATUS_FILE, exc)


def open_backend(jobs: JobSet, state_dir: Path | None, store: str | None = None, *,
                 readonly: bool = False) -> tuple[Store, JobLocks, Leadership, Path]:
    """The store of a jobs file with its job locks and leadership: PostgreSQL when a store URL
    is given (--store, $CRONPY_STORE, the file's `store`), else SQLite and flock in the state dir."""
    sd = resolve_state_dir(str(state_dir) if state_dir else None, jobs.state_dir)
    url = resolve_store(store, jobs.store)
    if not readonly:
        fixed = secure_state_dir(sd)
        if fixed:
            log.warning("state dir %s: made private to this user (%s)", sd, ", ".join(fixed))
    backend = _open_backend(url, sd, readonly=readonly, lease=jobs.leader_lease,
                            skew=(jobs.clock_skew_warning, jobs.clock_skew_limit))
    return backend.store, backend.locks, backend.leadership, sd


def run(jobs_file: Path, state_dir: Path | None, *, store: str | None = None, verbose: bool = False,
        watch: bool = False, metrics_port: int | None = None, metrics_address: str = "127.0.0.1",
        clock: Clock | None = None, jobs: JobSet | None = None) -> int:
    """`cronpy run`: validate, become the scheduler (or stand by), fire jobs until stopped.

    `jobs`: the file as the caller has just validated it (the CLI does, to check the state dir
    before anything starts), so that a large file is not validated twice (10,000 jobs: 1.5 s).

    With a fleet store, leadership can be lost (a pause longer than the lease, a partition):
    the runner steps down, lets its running jobs finish, and stands by again.
    """
    setup_logging(verbose)
    clock = clock or SystemClock()
    if jobs is None:
        jobs = load_jobs(jobs_file, now=clock.now())  # nothing starts unless the whole file is valid
    check_runnable(jobs)  # user:/group: need root, notify: needs Apprise: refuse before starting
    for warning in jobs.warnings:
        log.warning("%s", warning)
    _fd_budget(jobs)
    buffer_bounds()  # a malformed $CRONPY_HISTORY_BUFFER is refused here (exit 2), not in the writer
    backend = _open_when_reachable(jobs, state_dir, store)
    if backend is None:  # stopped while the store was unreachable
        return 0
    history, locks, leadership, sd = backend
    history.register_runner("standby")
    notifier = Notifier()
    integrations = Integrations(previous=_previous_status(history))
    # The store writer's own connection: a write waiting on a busy or broken store must not
    # hold the connection the loop claims through.
    writer = open_store(resolve_store(store, jobs.store), sd, lease=jobs.leader_lease,
                        skew=(jobs.clock_skew_warning, jobs.clock_skew_limit))
    runner = Runner(jobs, history, locks, clock, output=_print_line, observers=[integrations], state_dir=sd,
                    boot=outputs.BootMarks(sd), writer=writer)
    if isinstance(clock, SystemClock):
        runner.steps = StepDetector()
    _start_watchdog(notifier, runner)
    fatal, guard = _watch_faults(history, runner, sd)
    history.watch(on_lost=runner.wake.set, on_cancel=runner.cancel_run)
    metrics = None
    if metrics_port is not None:
        from cronpy.metrics import Metrics

        metrics = Metrics(metrics_port, metrics_address, lambda: runner.active_count,
                          lambda: {j: t.timestamp() for j, t in runner.next_per_job().items()})
        runner.observers.append(metrics)
        integrations.on_drop = metrics.notifications_dropped.inc
        log.info("metrics on http://%s:%d/metrics", metrics_address, metrics_port)
    reloader = _Reloader(jobs_file, runner, notifier, clock, watch)
    _install_signals(lambda urgent: runner.request_stop(now=urgent), reloader.request)
    # A fleet's failover takes up to a lease: an instant due meanwhile still fires, late.
    late_window = MISFIRE_GRACE + timedelta(seconds=jobs.leader_lease if history.fenced else 0)
    since = clock.now()
    stop_maintaining = threading.Event()
    maintaining = False
    retry_in = 1.0  # after a failed start, doubling to 30 s
    status_file = _StatusFile(sd, runner, jobs_file, since, history)
    janitor = None if history.fenced else _Janitor(writer, clock)
    _give_back_memory()
    try:
        while not runner.stopping:
            if not _stand_by(leadership, runner, notifier, history, status_file):
                break
            lock_file = leadership.lock_file()
            if guard is not None and lock_file is not None:
                guard.watch(*lock_file)
            try:
                _recover(history, runner.jobs, clock.now())  # runner.jobs: the file as last reloaded
                runner.start(clock.now(), late_window=late_window)
            except HistoryError as exc:
                runner.step_down()
                leadership.release()
                if isinstance(exc, HistoryDamaged):
                    fatal.append(str(exc))
                    break
                log.error("cannot load the schedule from the store, standing by (retrying in %.0fs): %s",
                          retry_in, exc)
                runner.wake.clear()
                runner.wake.wait(retry_in)  # a store that cannot be read now is not asked again at once
                retry_in = min(retry_in * 2, 30.0)
                continue
            retry_in = 1.0
            log.info("cronpy: %d job(s) from %s, %s %s; next: %s", len(runner.jobs.jobs), jobs.source,
                     "store" if history.fenced else "state dir", history.location if history.fenced else sd,
                     _summary(runner).split("next: ", 1)[1])
            notifier.ready(_summary(runner))
            if not maintaining:
                maintaining = True
                if jobs.history_retention or history.capabilities.shared_across_hosts:
                    threading.Thread(target=_maintain, args=(history, runner, leadership, jobs.history_retention,
                                                             stop_maintaining, clock, sd),
                                     daemon=True, name="maintain").start()

            def on_wake() -> None:
                reloader()
                notifier.status(_summary(runner))
                status_file.update(leading=True)

            if runner.run_forever(on_wake, leadership.valid):
                break
            log.warning("stepped down as the scheduler: %s; standing by", leadership.describe_loss())
            leadership.release()
        # Stopped while standing by after a step-down: the runs it kept get the same grace as
        # a leader's, and their outcomes are recorded (run_forever did this when it led).
        runner.shutdown(runner.jobs.shutdown_grace)
        runner.close()
        notifier.stopping()
        stop_maintaining.set()
        integrations.close()
        if fatal:
            log.error("cronpy: stopped: %s", fatal[0])
            return EXIT_USAGE
        log.info("cronpy: stopped")
    finally:
        status_file.close()
        if janitor is not None:
            janitor.close()
        try:
            (sd / STATUS_FILE).unlink()
        except OSError:
            pass
        leadership.release()
        if guard is not None:
            guard.close()
        notifier.close()
        if metrics is not None:
            metrics.close()
        writer.close()
        history.close()
    return 0


def _start_watchdog(notifier: Notifier, runner: Runner) -> None:
    """WATCHDOG=1 only while the scheduling loop itself is alive (see Runner.alive).

    The loop beats at least once per ping interval; a ping goes out only while the last beat
    is younger than two intervals, so a stuck loop (a hung reload, a blocked store) stops the
    pings and systemd restarts the service after WatchdogSec=.
    """
    interval = notifier.watchdog_interval
    if interval is None:
        return
    runner.max_sleep = interval
    notifier.start_watchdog(lambda: runner.alive(2 * interval))


def _watch_faults(history: Store, runner: Runner, sd: Path) -> tuple[list[str], StateGuard | None]:
    """Faults after which this runner must stop and exit 2 (a state-dir error): a damaged
    history database, or the state dir deleted or replaced under it. Returns the list their
    reasons are appended to, and the guard to close (None with a fleet store)."""
    fatal: list[str] = []

    def on_damaged(exc: HistoryDamaged) -> None:
        # A corrupt database never heals: stop (running jobs get their grace) and exit 2 with
        # one clear error, instead of standing by and retrying in a loop.
        fatal.append(str(exc))
        runner.request_stop()

    history.watch(on_damaged=on_damaged)
    if history.fenced:
        return fatal, None
    # The state dir deleted or swapped under us: this runner's flock and database are no
    # longer the ones a new runner would use. Stop scheduling, loudly, and exit 2.
    guard = StateGuard()
    guard.watch(Path(history.location))

    def on_state_lost(why: str) -> None:
        log.error("the state dir %s was changed under this runner (%s): it no longer holds the scheduler"
                  " lock or history there, so it stops scheduling now and exits with status 2 once its"
                  " running jobs end; start it again to use the new state dir", sd, why)
        fatal.append(f"the state dir {sd} was changed under this runner ({why})")
        runner.request_stop()

    guard.start(on_state_lost)
    return fatal, guard


def _open_when_reachable(jobs: JobSet, state_dir: Path | None,
                         store: str | None) -> tuple[Store, JobLocks, Leadership, Path] | None:
    """open_backend, waiting (backing off up to 10 s) while a fleet store cannot be reached, as
    a runner that loses its store does later; None if SIGTERM/SIGINT came first."""
    stop = threading.Event()
    _install_signals(lambda urgent: stop.set())

    def said(attempt: int, exc: BaseException) -> None:
        if attempt == 1:
            log.error("cannot reach the store, waiting for it (retrying with backoff): %s", exc)

    try:
        return OPEN.call(lambda: open_backend(jobs, state_dir, store), retry_on=(StoreUnreachable,),
                         on_error=said, stop=stop)
    except GaveUp:
        log.info("cronpy: stopped before the store could be reached")
        return None


def _stand_by(leadership: Leadership, runner: Runner, notifier: Notifier, history: Store,
              status_file: "_StatusFile") -> bool:
    """Wait until this runner is the scheduler (True) or is asked to stop (False)."""
    said = ""  # what was last logged, so that a long standby logs each change once
    while not runner.stopping:
        runner.reap()  # runs kept after a step-down: their outcomes, to the writer
        runner.beat()  # standing by is the loop alive too (the watchdog)
        try:
            if leadership.try_acquire():
                if said:
                    log.info("took over the scheduler %s", "lease" if history.fenced else "lock")
                return True
            refused = leadership.refused  # a fleet host whose clock is off
            holder = None if refused else leadership.holder()
            why = refused or str(LockHeld("the scheduler", holder.describe() if holder else None))
        except CronpyError as exc:  # the store cannot be reached: nobody here can prove leadership
            why = f"cannot reach the store: {exc}"
        if why != said and not (why.startswith("cannot reach") and said.startswith("cannot reach")):
            log.info("standby: %s; taking over when it stops", why)
            notifier.ready(f"standby: {why}")
            said = why
        status_file.update(leading=False)
        # flock is released by the kernel when the holder dies (even by SIGKILL); a lease
        # expires a lease length after its last renewal: poll either.
        runner.wake.wait(leadership.poll_interval)
        runner.wake.clear()
    return False


def trigger(jobs: JobSet, name: str, state_dir: Path | None, *, store: str | None = None, wait: float = 0.0,
            chain: bool = False, report: Callable[[RunRecord], None] | None = None) -> int:
    """`cronpy trigger`: run one job now through the runner's own path; return its exit status.

    On a terminal the job's output streams under a line showing the elapsed time. With
    `report` (`--json`), the run is passed to it and the job's output goes to stderr.
    """
    setup_logging()
    get_job(jobs, name)
    check_runnable(jobs, only=None if chain else name)  # a chain may run any job of the file
    history, locks, _, sd = open_backend(jobs, state_dir, store)
    with history:
        history.register_runner("trigger")
        from cronpy import logfmt

        live = _LiveTrigger(name) if sys.stdout.isatty() and report is None and logfmt.FORMAT == "text" else None
        integrations = Integrations(previous=_previous_status(history))
        output = live.line if live else _err_line if report is not None else _raw_line
        runner = Runner(jobs, history, locks, SystemClock(), output=output,
                        observers=[integrations], chains=chain, state_dir=sd)
        history.watch(on_cancel=runner.cancel_run)
        # A closed SSH session sends SIGHUP: the default action killed cronpy like kill -9 and
        # left the run `running`; stop the job and record it as for SIGTERM instead.
        _install_signals(lambda urgent: runner.request_stop(now=True), hangup_stops=True)
        try:
            if live:
                live.start()
            run_id = runner.run_foreground(name, wait=wait)
        finally:
            runner.close()
            if live:
                live.stop()
            integrations.close()
        if run_id is None:
            return EXIT_LOCKED
        # The run's outcome as this process saw it end: the exit status is the job's, whatever
        # the store's writer or another process has done to the row since.
        last = runner.last_record
        rec = last if last is not None and last.id == run_id else history.get(run_id)
        if report is not None:
            report(rec)
        if chain and rec.job != name:
            # The chain's last run was a dependent; the exit status is the worst of the chain.
            failed = [r for r in history.query(since=rec.started_at, limit=None) if r.status is not RunStatus.SUCCESS
                      and r.trigger.value in ("manual", "retry", "dependency")]
            rec = failed[0] if failed else rec
    if rec.status is RunStatus.SUCCESS:
        return 0
    if rec.status is RunStatus.TIMEOUT:
        return EXIT_TIMEOUT
    if rec.status is RunStatus.SKIPPED:
        return EXIT_LOCKED
    if rec.exit_code is not None and rec.exit_code > 0:
        return rec.exit_code
    return 1


def _previous_status(history: Store) -> Callable[[str, int], RunStatus | None]:
    """How a job's last finished run before run `run_id` ended (for `notify: recovery`)."""
    def previous(job: str, run_id: int) -> RunStatus | None:
        for rec in history.query(job, limit=20, before_id=run_id):  # keyset: only earlier runs
            if rec.id < run_id and rec.status.finished and rec.status is not RunStatus.SKIPPED:
                return rec.status
        return None

    return previous


def _raw_line(job: str, line: str) -> None:
    from cronpy import logfmt

    if logfmt.FORMAT == "json":
        return _print_line(job, line)
    with _print_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def _err_line(job: str, line: str) -> None:
    with _print_lock:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()


class _LiveTrigger:
    """`cronpy trigger` on a terminal: output above, a spinner with the elapsed time below."""

    def __init__(self, name: str) -> None:
        from rich.console import Console

        self.name = name
        self.console = Console()
        from rich.text import Text

        # A job name is data, never markup (`[/x]` must not raise MarkupError).
        self._status = self.console.status(Text(f"{name}: running"))
        self._stop = threading.Event()
        self._started = time.monotonic()

    def start(self) -> None:
        # Log records print through the live console, above the spinner: written straight to
        # stderr they would land on the spinner's line of the same terminal.
        console = self.console

        class _Above(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                console.print(self.format(record), markup=False, highlight=False, soft_wrap=True)

        handler = _Above()
        handler.setFormatter(log.handlers[0].formatter if log.handlers else None)
        self._saved = log.handlers[:]
        log.handlers[:] = [handler]
        self._status.start()
        threading.Thread(target=self._tick, daemon=True).start()

    def _tick(self) -> None:
        while not self._stop.wait(0.1):
            from rich.text import Text

            self._status.update(Text(f"{self.name}: running, {time.monotonic() - self._started:.1f}s"))

    def line(self, job: str, line: str) -> None:
        prefix = "" if job == self.name else f"{job} | "
        self.console.print(prefix + line, markup=False, highlight=False, soft_wrap=True)

    def stop(self) -> None:
        self._stop.set()
        self._status.stop()
        log.handlers[:] = getattr(self, "_saved", log.handlers)
        self.console.print(f"{self.name}: finished in {time.monotonic() - self._started:.1f}s", style="dim",
                           highlight=False, markup=False)


def next_for_job(jobs: JobSet, name: str, start: datetime, count: int) -> tuple[list[datetime], str | None]:
    spec = get_job(jobs, name)
    return _next(spec, start, count)


def next_for_expr(expr: str, tz: str, start: datetime, count: int,
                  name: str = "expr") -> tuple[list[datetime], str | None]:
    """`cronpy next --expr`: `name` is the job name `H` fields hash, as in a jobs file."""
    from cronpy.errors import UsageError
    from cronpy.schedule import zone

    try:
        zone(tz)
        sched = parse_schedule(expr)
        if isinstance(sched, Every) and sched.seconds > MAX_DURATION:
            raise ValueError(f"an interval must be at most {MAX_DURATION / 86400:g}d, got {expr!r}")
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return _next(JobSpec(name=name, schedule=sched, timezone=tz), start, count)


def _next(spec: JobSpec, start: datetime, count: int) -> tuple[list[datetime], str | None]:
    from cronpy.schedule import zone

    if start.tzinfo is None:
        start = start.replace(tzinfo=zone(spec.timezone))
    tz = zone(spec.timezone)
    times: list[datetime] = []
    t, anchor = start, None
    while len(times) < count:
        try:
            nxt = next_fire(spec, t, anchor)
        except (OverflowError, ValueError):  # past datetime's year 9999: the calendar ends here
            break
        if nxt is None:
            break
        times.append(nxt.astimezone(tz))
        t = anchor = nxt
    words = describe(spec.schedule)
    if words:
        words = f"{words} ({spec.timezone})"
    return times, words


def pause(jobs: JobSet, name: str, state_dir: Path | None, store: str | None = None) -> str:
    """`cronpy pause`: the schedule stops firing the job (persisted); `trigger` still runs it."""
    get_job(jobs, name)
    with open_backend(jobs, state_dir, store)[0] as h:
        if h.pause(name, datetime.now(timezone.utc)):
            return f"paused {name}: its schedule will not fire it until `cronpy resume {name}`"
        return f"{name} was already paused"


def resume(jobs: JobSet, name: str, state_dir: Path | None, store: str | None = None) -> str:
    """`cronpy resume`: the job's schedule fires it again from its next instant."""
    get_job(jobs, name)
    with open_backend(jobs, state_dir, store)[0] as h:
        if h.resume(name):
            return f"resumed {name}"
        return f"{name} was not paused"


def cancel(jobs: JobSet, target: str, state_dir: Path | None, store: str | None = None) -> list[str]:
    """`cronpy cancel NAME|RUN_ID`: TERM each matching run's process group, KILL after its grace."""
    with open_backend(jobs, state_dir, store)[0] as h:
        if target.isdigit():
            if int(target) >= 2**63:  # past the store's 64-bit ids (SQLite raised OverflowError)
                raise RunNotFound(int(target))
            rec = h.get(int(target))
            if rec.status is not RunStatus.RUNNING:
                raise NothingToDo(f"run {rec.id} of {rec.job} is not running (it is {rec.status.value})")
            runs = [rec]
        else:
            get_job(jobs, target)
            runs = h.running_of(target)
            if not runs:
                raise NothingToDo(f"no run of {target} is in progress")
        done = []
        for rec in runs:
            if h.capabilities.supports_cancel_from_other_hosts and rec.pid is not None:
                h.request_cancel(rec.id, datetime.now(timezone.utc))
                if h.owner_reporting(rec.id):
                    # Its runner, on whichever host, stops it: it knows its own process group.
                    spec = jobs.jobs.get(rec.job)
                    done.append(_await_cancel(h, rec, (h.lease or 0.0) / 3 + (spec.kill_grace if spec else 10.0) + 2.0))
                    continue
            if rec.host != HOST:
                done.append(f"run {rec.id} of {rec.job} runs on {rec.host}: cancel it there")
                continue
            if rec.pid is None:
                done.append(f"run {rec.id} of {rec.job} has not started its process yet; try again")
                continue
            h.request_cancel(rec.id, datetime.now(timezone.utc))
            spec = jobs.jobs.get(rec.job)
            if terminate_run(rec.pid, rec.id, spec.kill_grace if spec else 10.0):
                done.append(f"cancelled run {rec.id} of {rec.job} (process group {rec.pid})")
            else:
                done.append(f"run {rec.id} of {rec.job} had already ended")
        return done


def _await_cancel(h: Store, rec: RunRecord, timeout: float) -> str:
    """Wait (bounded) for a run's own runner to stop it after a cancel request."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        now = h.get(rec.id)
        if now.status is not RunStatus.RUNNING:
            return f"cancelled run {rec.id} of {rec.job} on {rec.host} (it ended {now.status.value})"
        time.sleep(0.25)
    return (f"asked the runner of run {rec.id} of {rec.job} on {rec.host} to cancel it;"
            f" it has not ended after {timeout:.0f}s (see `cronpy show {rec.id}`)")


def recover(sd: Path) -> list[str]:
    """`cronpy recover`: with the scheduler lock held (no runner of this state dir is running),
    move a damaged history.db aside and salvage what SQLite can still read into a fresh one."""
    from cronpy.recover import recover as salvage

    lock = Locks(sd).scheduler()
    try:
        lock.acquire(wait=0.0)
    except LockHeld as exc:
        raise LockHeld("the scheduler", f"{exc.holder or 'another process'}; stop the runners of {sd} first") from None
    try:
        done = salvage(sd)
    finally:
        lock.release()
    lines = [f"moved the damaged history database to {done.damaged}"]
    if done.was_ok:
        lines.append("note: SQLite found nothing wrong with it; it was recovered anyway")
    lines.append(f"recovered {done.runs} run(s) into a fresh {done.path}")
    if done.unreadable_ranges:
        spans = ", ".join(f"{a}" if b - a == 1 else f"{a}-{b - 1}" for a, b in done.unreadable_ranges[:10])
        more = f" and {len(done.unreadable_ranges) - 10} more" if len(done.unreadable_ranges) > 10 else ""
        lines.append(f"unreadable, lost: run ids {spans}{more} (up to {done.lost_estimate} run(s))")
    if done.after is not None:
        lines.append("unreadable, lost: every run (the runs table's first page is gone)" if done.after == 0 and
                     not done.runs else f"unreadable, lost: the end of the runs table (runs after id {done.after})")
    for table in done.tables_lost:
        lines.append(f"unreadable, lost: the {table} table ({'paused jobs' if table == 'paused' else 'cancel requests'})")
    return lines


class NothingToDo(CronpyError):
    """Raised when a command finds nothing to act on (no run in progress to cancel)."""


@dataclass
class Status:
    """What `cronpy status` shows, read from the state dir (and the fleet's store, if any)."""

    state_dir: Path
    scheduler: Holder | None
    scheduler_live: bool
    runner: dict[str, object] | None
    running: list[RunRecord]
    failures: list[RunRecord]
    paused: dict[str, datetime]
    store: str | None = None  #: the fleet store's location (no password); None for SQLite
    fleet: list[dict[str, object]] | None = None  #: processes with a recent heartbeat
    store_error: str | None = None  #: why the store could not be read


def _local_runner(sd: Path) -> dict[str, object] | None:
    """This host's runner.json, if the runner that wrote it is alive."""
    try:
        info: dict[str, object] = json.loads((sd / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return None
    pid = info.get("pid")
    return info if isinstance(pid, int) and _runner_alive(pid) else None


def status(file: Path | None, state_dir: Path | None, store: str | None = None) -> Status:
    """`cronpy status`: who schedules, runs in progress, next due runs, latest failures."""
    from cronpy.paths import file_setting, file_state_dir, find_jobs_file

    path = find_jobs_file(str(file) if file else None)
    sd = resolve_state_dir(str(state_dir) if state_dir else None, None if state_dir else file_state_dir(path))
    url = resolve_store(store, file_setting(path, "store"))
    if url:
        return _fleet_status(url, sd)
    lock = Locks(sd).scheduler()
    live = lock.is_locked_elsewhere() if lock.path.exists() else False
    runner_info = None
    if live:
        try:
            runner_info = json.loads((sd / STATUS_FILE).read_text())
        except (OSError, ValueError):
            runner_info = None
    try:
        h = _open_backend(None, sd, readonly=True).store
    except NoHistory:
        return Status(sd, lock.holder() if live else None, live, runner_info, [], [], {})
    with h:  # a history that cannot be read raises StoreUnavailable: exit 69, no empty answer
        return Status(sd, lock.holder() if live else None, live, runner_info, h.running(),
                      h.query(status=RunStatus.FAILED, limit=5) + h.query(status=RunStatus.TIMEOUT, limit=5),
                      h.paused())


def _fleet_status(url: str, sd: Path) -> Status:
    """Status from a fleet store; a store that cannot be read is reported (store_error) beside
    this host's runner.json, and the command exits 69."""

    local = _local_runner(sd)
    try:
        backend = _open_backend(url, sd, readonly=True)
        with backend.store as h:
            holder = backend.leadership.holder()
            return Status(sd, holder, holder is not None, local, h.running(),
                          h.query(status=RunStatus.FAILED, limit=5) + h.query(status=RunStatus.TIMEOUT, limit=5),
                          h.paused(), store=h.location, fleet=h.fleet())
    except HistoryError as exc:
        return Status(sd, None, False, local, [], [], {}, store=redact_url(url),
                      store_error=redact_text(str(exc)))
