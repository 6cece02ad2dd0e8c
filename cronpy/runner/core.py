"""The runner: composes the agenda, admission, the claimer, the supervisor and the writer.

`Runner.tick(now)` does one pass: it takes every due entry off the agenda, decides for each
(admission: overlap, concurrency, priority; then the job locks), claims the whole batch in
one durable store transaction (the claimer), and spawns the claimed runs, which the one
supervisor thread then watches. `run_forever()` sleeps until the earliest instant (or until
woken by a signal or a finished run) and ticks again.

The critical path, instant to spawn and exit to supervision, touches the store only for the
claim. Pids, outcomes and skipped rows go to the store writer (recorder.py), which cannot
stall it; a finished run frees its slot and its job lock the moment its child exits.
"""

from __future__ import annotations

import collections
import heapq
import logging
import os
import random
import threading
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Callable, Deque, Sequence

from cronpy.clock import Clock, Step, StepDetector
from cronpy.errors import CronpyError, HistoryError, LockHeld
from cronpy.executor import Attempt, AttemptResult, RunContext
from cronpy.integrations import Observer
from cronpy.models import At, Every, Finish, JobSet, JobSpec, Overlap, RunRecord, RunStatus, Trigger
from cronpy.redact import cronpy_logger
from cronpy.runner.admission import admit
from cronpy.runner.agenda import LEAD, MISFIRE_GRACE, Agenda, Due
from cronpy.runner.burst import Burst
from cronpy.runner.claimer import Claimed, Claimer, ClaimResult, Refused, Taken, Unrecorded
from cronpy.runner.recorder import CANCELLED_ERROR, Call, Late, Outcome, Pids, Recorder
from cronpy.runner.supervisor import Supervisor
from cronpy.schedule import latest_fire
from cronpy.store import HOST, JobLock, JobLocks, NewRun, Store
from cronpy.outputs import BootMarks, RunOutput
from cronpy.schedule import compile_cron, latest_fire, next_fire

__all__ = ["FIRST_BATCH", "LEAD", "MISFIRE_GRACE", "Due", "OutputSink", "Runner"]

log = cronpy_logger()

# Runs of a burst claimed (and so started) before the rest are claimed; see _dispatch.
FIRST_BATCH = 4
#: While a burst spawns, how often the loop notes the instants of the exits (runner.burst).
COLLECT_EVERY = 0.001

# How long a foreground `cronpy trigger` waits for a busy store to take its claim (seconds).
FOREGROUND_CLAIM_WAIT = 10.0

# How long stopping waits for the store writer to write what is left, in seconds.
FLUSH_ON_STOP = 30.0

OutputSink = Callable[[str, str], None]  # (job name, line)


@dataclass(slots=True)
class _Active:
    key: int  # this process's own number for the run (a run may have no row yet)
    due: Due
    claim: Claimed | Unrecorded
    lock: JobLock | None
    spec: JobSpec
    started_at: datetime
    attempt: Attempt | None = None

    output: RunOutput | None = None  # the run's whole output on disk (`logs -f`, `output: keep`)
    run_id: int | None = field(init=False)  # its row's id (None: not recorded yet)

    def __post_init__(self) -> None:
        self.run_id = self.claim.run_id if isinstance(self.claim, Claimed) else None


def _file_lock_fd(lock: JobLock | None) -> int | None:
    """The descriptor of a flock-based job lock (handed to the job), None for a lock kept in
    a store (a fleet's lock rows), whose writes go through the store writer instead."""
    fd = getattr(lock, "fd", None)
    return fd if isinstance(fd, int) else None


class Runner:
    """Fires the jobs of one JobSet; see the module docstring."""

    def __init__(
        self,
        jobs: JobSet,
        history: Store,
        locks: JobLocks,
        clock: Clock,
        *,
        output: OutputSink | None = None,
        rng: random.Random | None = None,
        observers: Sequence[Observer] = (),
        chains: bool = True,
        writer: Store | None = None,
        state_dir: Path | None = None,
        boot: BootMarks | None = None,
    ) -> None:
        self.jobs = jobs
        # Where each run's whole output goes while it runs (`cronpy logs -f`, `output: keep`).
        self.state_dir = state_dir
        self.boot = boot  # once-per-boot marks of run_on_boot jobs; None: they never run
        self.observers = list(observers)
        self._base_env = dict(os.environ)  # jobs' environment: the runner's, as it started
        self.chains = chains  # fire `after:` dependents when a job succeeds
        self.history = history
        self.locks = locks
        self.clock = clock
        self.output = output
        self.rng = rng or random.Random()
        self.agenda = Agenda(self.rng)
        self._pending: list[tuple[int, datetime, int, Due]] = []  # waiting for a free slot
        self._queued: dict[str, Due] = {}  # overlap: queue, waiting for the job to finish
        self._active: dict[int, _Active] = {}  # by _Active.key
        self._running: collections.Counter[str] = collections.Counter()  # active runs per job: O(1)
        self._finished: Deque[tuple[_Active, AttemptResult, datetime]] = collections.deque()
        self._keys = 0
        self._lock = threading.RLock()
        self._ended = threading.Event()  # a run ended (what wait_idle waits on)
        self.wake = threading.Event()
        self._never = threading.Event()  # what _until sleeps on: only the clock ends that wait
        self._stopping = False
        self._cancel_all = False
        self._prelocked: dict[str, JobLock] = {}  # job locks taken before dispatch (foreground trigger)
        self._leading = True  # False once a fenced claim is refused: stop firing (see step_down)
        self._started = False  # run_on_start runs once per process, not again after a step-down
        self._dependents = self._dependents_of(jobs)
        # Start instants of this runner's latest runs and successes per job, for `after:`
        # (their rows may still be in the writer's buffer).
        self._last_start: dict[str, datetime] = {}
        self._last_success: dict[str, datetime] = {}
        #: The last run to end, as this runner saw it (`trigger` exits with its status without
        #: waiting on a read of the store, which may still be catching up).
        self.last_record: RunRecord | None = None
        self._writer_store = writer  # a connection of its own keeps claims unblocked (else history's)
        self._recorder: Recorder | None = None
        # The writer and the supervisor start on first use, which may come from two threads at
        # once (the loop queues a pid while the supervisor queues a `true` job's outcome): one
        # lock of their own, never the runner's (a tick holds that while it spawns a burst).
        self._start_lock = threading.Lock()
        self.claimer = Claimer()
        self._supervisor: Supervisor | None = None
        #: closed while _dispatch spawns back to back: the supervisor and the writer wait
        self.burst = Burst()
        #: monotonic time of the loop's last pass (standby included): the watchdog's evidence
        self.heartbeat = time.monotonic()
        #: the longest the loop sleeps between passes (None: the clock's own bound); the service
        #: sets it to the watchdog interval so that an idle loop still beats often enough
        self.max_sleep: float | None = None
        #: wall-clock step detector, consulted once per pass (None: steps are not looked for)
        self.steps: StepDetector | None = None

    @property
    def recorder(self) -> Recorder:
        """The store writer (started on first use, once, whichever thread needs it first)."""
        recorder = self._recorder
        if recorder is None:
            with self._start_lock:
                if self._recorder is None:
                    self._recorder = Recorder(self._writer_store or self.history, burst=self.burst)
                recorder = self._recorder
        return recorder

    @property
    def supervisor(self) -> Supervisor:
        supervisor = self._supervisor
        if supervisor is None:
            with self._start_lock:
                if self._supervisor is None:
                    self._supervisor = Supervisor(self.burst)
                supervisor = self._supervisor
        return supervisor

    @staticmethod
    def _dependents_of(jobs: JobSet) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for spec in jobs.jobs.values():
            for dep in spec.after:
                out.setdefault(dep, []).append(spec.name)
        return out

    # -- the agenda ----------------------------------------------------------------------------

    def _push(self, when: datetime, job: str, trigger: Trigger, scheduled_for: datetime,
              attempt: int = 1, parent_id: int | None = None, *, late: bool = False) -> None:
        with self._lock:
            self.agenda.push(when, job, trigger, scheduled_for, attempt, parent_id, late=late)
        self.wake.set()

    def _schedule_next(self, spec: JobSpec, after: datetime) -> None:
        with self._lock:
            self.agenda.schedule_next(spec, after)
        self.wake.set()

    def start(self, now: datetime, *, late_window: timedelta = MISFIRE_GRACE) -> None:
        """Load the schedule: the first instant of every enabled job, and run_on_start runs.

        An instant that fell due while no runner was scheduling (a restart, a takeover after
        the leader died) still fires, once, if it is at most `late_window` old; older ones
        are left to catch_up. A fleet passes its lease plus the grace: a failover takes up to
        a lease.
        """
        self._leading = True
        if self.steps is not None:
            self.steps.check()  # a step before now is in `now` already: the plan below starts from it
        first_start, self._started = not self._started, True
        enabled = [spec for spec in self.jobs.jobs.values() if spec.enabled]
        # One query for every job: on a fleet store this is a takeover's critical path.
        lasts = self.history.last_scheduled_many([spec.name for spec in enabled])
        for spec in enabled:
            last = lasts.get(spec.name)
            if isinstance(spec.schedule, Every) and last is not None:
                # Continue the cadence of the last recorded run rather than restarting it.
                self.agenda.anchors[spec.name] = last
            missed = self._missed_while_down(spec, now, last)
            late = None if missed is not None else self._missed_lately(spec, now, late_window, last)
            if missed is not None:
                self._push(now, spec.name, Trigger.CATCHUP, missed)
            elif late is not None:
                log.info("%s: firing the run due at %s late (no runner was scheduling then)",
                         spec.name, late.isoformat())
                self._push(now, spec.name, Trigger.SCHEDULE, late, late=True)
            if isinstance(spec.schedule, Every) and (missed or late):
                self.agenda.anchors[spec.name] = missed or late  # type: ignore[assignment]
            self._schedule_next(spec, now)
            if spec.run_on_start and first_start:
                self._push(now, spec.name, Trigger.START, now)
            if spec.run_on_boot and first_start and self.boot is not None and self.boot.claim(spec.name):
                self._push(now, spec.name, Trigger.BOOT, now)

    def _missed_while_down(self, spec: JobSpec, now: datetime, last: datetime | None) -> datetime | None:
        """With catch_up, the latest instant missed since the last claimed one, `last` (like
        systemd's Persistent=); None if nothing was missed or the job does not catch up."""
        if not spec.catch_up:
            return None
        if last is None:
            # Never ran: only a one-shot whose time has passed is owed a run.
            if isinstance(spec.schedule, At) and spec.schedule.when <= now:
                return spec.schedule.when.astimezone(now.tzinfo)
            return None
        return latest_fire(spec, last, now - MISFIRE_GRACE)

    def _missed_lately(self, spec: JobSpec, now: datetime, window: timedelta,
                       last: datetime | None) -> datetime | None:
        """The latest instant after the last claimed one, `last`, if it is no older than `window`."""
        if spec.schedule is None or isinstance(spec.schedule, At):
            return None
        if last is None:
            return None
        missed = latest_fire(spec, last, now)
        if missed is None or missed <= last or now - missed > window:
            return None
        return missed.astimezone(now.tzinfo)

    def reload(self, jobs: JobSet, now: datetime) -> tuple[list[str], list[str], list[str]]:
        """Switch to a new JobSet without touching running jobs; return (added, removed, changed)."""
        def same(a: JobSpec, b: JobSpec) -> bool:
            return replace(a, line=None) == replace(b, line=None)

        with self._lock:
            old = self.jobs.jobs
            added = sorted(n for n in jobs.jobs if n not in old)
            removed = sorted(n for n in old if n not in jobs.jobs)
            changed = sorted(n for n in jobs.jobs if n in old and not same(old[n], jobs.jobs[n]))
            resched = set(added) | set(changed)
            gone = set(removed) | set(changed)
            # Scheduled entries of removed and changed jobs go; their retries and runs stay.
            self.agenda.drop(gone, removed)
            self._pending = [p for p in self._pending if p[3].job not in removed]
            heapq.heapify(self._pending)
            for name in removed:
                self._queued.pop(name, None)
            self.jobs = jobs
            self._dependents = self._dependents_of(jobs)
            for name in sorted(resched):
                spec = jobs.jobs[name]
                if not isinstance(spec.schedule, Every):
                    self.agenda.anchors.pop(name, None)
                if spec.enabled:
                    self.agenda.schedule_next(spec, now)
        self.wake.set()
        return added, removed, changed

    def clock_stepped(self, step: Step, now: datetime) -> None:
        """Re-plan the heap after a wall-clock step, by cron(8)'s rules for time changes.

        Intervals count elapsed time, which a step does not change: their entries (and retries
        and other delayed entries) move with the step, so they keep their cadence and never
        replay. Cron jobs follow the new wall time from `now`; after a forward step of less than
        3 hours a fixed-time job whose instant was skipped runs once, now. After a step back,
        a fixed-time job is not repeated (its next instant stays the one after the old time),
        and no claimed instant ever runs twice. A suspend is time that passed: nothing moves,
        and what fell due while asleep is handled as any late instant (see tick).
        """
        log.warning("%s; re-planning the schedule as cron(8) does", step.describe())
        shift = timedelta(seconds=0 if step.suspended else step.seconds)
        with self._lock:
            entries, self.agenda.heap = self.agenda.heap, []
            for d in entries:
                spec = self.jobs.jobs.get(d.job)
                if spec is None:
                    continue
                scheduled = d.trigger is Trigger.SCHEDULE and not d.late
                if scheduled and isinstance(spec.schedule, At):
                    heapq.heappush(self.agenda.heap, d)  # a one-shot keeps its wall time
                    continue
                if not scheduled or isinstance(spec.schedule, Every):
                    d.when += shift  # a retry's delay, an interval: elapsed time, kept
                    if scheduled:
                        d.scheduled_for += shift
                        self.agenda.anchors[spec.name] = d.scheduled_for
                    heapq.heappush(self.agenda.heap, d)
                    continue
                fixed = not compile_cron(spec.schedule.expr, spec.name).wildcard  # type: ignore[union-attr]
                if step.seconds < 0 and fixed and not step.big:
                    heapq.heappush(self.agenda.heap, d)  # not repeated: still the instant after the old time
                    continue
                if step.seconds > 0 and fixed and not step.big and d.scheduled_for <= now:
                    skipped = latest_fire(spec, d.scheduled_for - timedelta(microseconds=1), now) or d.scheduled_for
                    log.info("%s: running the instant %s skipped by the step, once", spec.name,
                             skipped.isoformat())
                    heapq.heappush(self.agenda.heap, replace(d, when=now, scheduled_for=skipped, late=True))
                nxt = next_fire(spec, now)
                if nxt is not None:
                    delay = d.when - d.scheduled_for  # keep its jitter
                    heapq.heappush(self.agenda.heap, replace(d, when=nxt + delay, scheduled_for=nxt, late=False))
        self.wake.set()

    def next_wakeup(self) -> datetime | None:
        """Return when the next tick is due (None: nothing scheduled)."""
        with self._lock:
            return self.agenda.next_wakeup()

    def upcoming(self, count: int) -> list[Due]:
        """The next `count` entries of the agenda, soonest first (status, metrics)."""
        with self._lock:
            return self.agenda.upcoming(count)

    def next_per_job(self) -> dict[str, datetime]:
        """Each job's earliest instant on the agenda."""
        with self._lock:
            return self.agenda.next_per_job()

    def next_due(self) -> Due | None:
        with self._lock:
            heap = self.agenda.heap
            return heap[0] if heap else None

    def run_foreground(self, name: str, *, wait: float = 0.0) -> int | None:
        """Run job `name` now, with its retries, through the same dispatch as scheduled runs.

        Takes the job lock first (waiting up to `wait` seconds; LockHeld if it stays taken),
        then ticks until the run and its retries are over and their outcomes are written.
        Returns the last run's id (None if it has no row: the store could not be written).
        """
        spec = self.jobs.jobs[name]
        # No cadence to keep here: wait for a busy store as long as any command does.
        self.claimer.wait = FOREGROUND_CLAIM_WAIT
        lock = None
        if spec.overlap is not Overlap.ALLOW:
            lock = self.locks.job(name)
            try:
                lock.acquire(wait=wait, now=self.clock.now())
            except OSError as exc:  # an unopenable lock file, an unreachable store
                raise HistoryError(self.history.location, f"cannot take the lock of job {name!r}: {exc}") from None
            self._prelocked[name] = lock
        last: int | None = None
        try:
            self._push(self.clock.now(), name, Trigger.MANUAL, self.clock.now())
            while True:
                self.wake.clear()
                started = self.tick(self.clock.now())
                last = started[-1] if started else last
                with self._lock:
                    if not self._active and not self._finished and (not self.agenda.heap or self._stopping):
                        break
                self.clock.sleep_until(self.next_wakeup(), self.wake)
            self.shutdown(0.0 if self._cancel_all else self.jobs.shutdown_grace)
        finally:
            self._prelocked.pop(name, None)
            if lock:
                lock.release()
        return last

    # -- one pass ----------------------------------------------------------------------------

    def tick(self, now: datetime, *, lead: timedelta = timedelta(0)) -> list[int]:
        """Start what is due at `now`; return the ids of the runs started (with a row).

        With `lead`, what falls due up to `now + lead` is claimed now and spawned at its
        instant (run_forever passes LEAD).
        """
        with self._lock:
            self._reap()
            due = self.agenda.pop_due(now + lead)
            candidates = []
            reschedule: list[tuple[JobSpec, datetime]] = []
            for d in due:
                spec = self.jobs.jobs.get(d.job)
                if spec is None:
                    continue
                if d.trigger is Trigger.SCHEDULE and not d.late:
                    # The next instant comes after now: instants that passed while this one was
                    # late (a paused runner, a slow store) are never replayed back to back.
                    reschedule.append((spec, max(d.scheduled_for, now)))
                    late_by = now - d.scheduled_for
                    if late_by > MISFIRE_GRACE + timedelta(seconds=spec.jitter):
                        # The loop came round too late for this instant (the process was paused
                        # or blocked, the machine slept; steps are logged by clock_stepped).
                        # cron(8) skips it; with catch_up it runs once, however many were missed.
                        if not spec.catch_up:
                            log.warning("%s: missed the run due at %s: the scheduler came round %.1fs late",
                                        d.job, d.scheduled_for.isoformat(), late_by.total_seconds())
                            continue
                        d.trigger = Trigger.CATCHUP
                        d.scheduled_for = latest_fire(spec, d.scheduled_for, now - MISFIRE_GRACE) or d.scheduled_for
                candidates.append(d)
            if self._stopping or not self._leading:
                self._reschedule(reschedule)
                return []
            # Runs that were waiting on a finished job or a free slot compete again.
            for job in list(self._queued):
                if not self._running[job]:
                    candidates.append(self._queued.pop(job))
            candidates += [p[3] for p in self._pending]
            self._pending.clear()
            candidates = self._without_paused(candidates)
            started = self._dispatch(candidates, now)
            # The next instants are computed after the spawns: a burst of 200 due jobs starts
            # ~20 ms sooner, and the agenda is whole again before this tick returns.
            self._reschedule(reschedule)
            return started

    def _reschedule(self, items: list[tuple[JobSpec, datetime]]) -> None:
        for spec, after in items:
            self.agenda.schedule_next(spec, after)

    def _without_paused(self, candidates: list[Due]) -> list[Due]:
        """Drop what a paused job's schedule fired; a paused job still runs when triggered by hand."""
        automatic = [d for d in candidates if d.trigger not in (Trigger.MANUAL, Trigger.RETRY)]
        if not automatic:
            return candidates
        try:
            paused = self.history.paused()
        except CronpyError as exc:
            log.error("cannot read paused jobs, firing as scheduled: %s", exc)
            return candidates
        if not paused:
            return candidates
        kept = []
        for d in candidates:
            if d.job in paused and d.trigger not in (Trigger.MANUAL, Trigger.RETRY):
                log.info("%s: paused since %s; not running the %s run", d.job,
                         paused[d.job].isoformat(timespec="seconds"), d.trigger.value)
            else:
                kept.append(d)
        return kept

    def _dispatch(self, candidates: list[Due], now: datetime) -> list[int]:
        """Admit, take the locks of queued jobs, claim in one transaction, then lock and spawn
        each run back to back. Everything that can wait (pids, skipped rows, holder writes,
        notifications) happens after the last child has been spawned, and off this thread."""
        jobs = self.jobs.jobs
        decision = admit(candidates, jobs, self._running, self._queued.keys(),
                         self.jobs.max_concurrent - len(self._active))
        for d in decision.queued:
            self._queued[d.job] = d
        for d in decision.pending:
            heapq.heappush(self._pending, (-jobs[d.job].priority, d.when, d.seq, d))
        to_start: list[Due] = []
        prelocked: dict[int, JobLock] = {}  # by Due.seq: overlap=queue jobs lock before claiming
        for d in decision.start:
            if jobs[d.job].overlap is Overlap.QUEUE and d.job not in self._prelocked:
                # A queued run waits for a lock held elsewhere instead of being skipped, so it
                # must not claim its instant before it has the lock.
                queue_lock = self.locks.job(d.job)
                try:
                    queue_lock.acquire(now=now, write_holder=False)
                except (LockHeld, OSError) as exc:
                    if isinstance(exc, OSError):
                        log.error("%s: cannot take the job lock, retrying on the next tick: %s", d.job, exc)
                    if d.job not in self._queued:
                        self._queued[d.job] = d  # retried on the next tick that finds it free
                    continue
                prelocked[d.seq] = queue_lock
            to_start.append(d)
        skipped = decision.skipped
        spawned: list[_Active] = []
        not_started: list[tuple[Due, NewRun, ClaimResult, RunStatus, str]] = []
        # Claim a small first batch alone, so the first child starts after a one-row commit
        # (~1 ms) instead of after the whole burst's (~20 ms for 200 rows); skipped rows ride
        # with the last batch.
        batches = [to_start[:FIRST_BATCH], to_start[FIRST_BATCH:]] if len(to_start) > FIRST_BATCH else [to_start]
        # The supervisor and the writer wait while this spawns back to back (runner.burst).
        burst = self.burst if len(to_start) > 1 else None
        next_look = 0.0
        try:
            for n, batch in enumerate(batches):
                last = n == len(batches) - 1
                rows = [NewRun(d.job, d.trigger, max(now, d.when), d.scheduled_for, d.attempt, d.parent_id)
                        for d in batch]
                if last:
                    rows += [NewRun(d.job, d.trigger, now, d.scheduled_for, d.attempt, d.parent_id,
                                    RunStatus.SKIPPED, reason) for d, reason in skipped]
                results = self.claimer.claim(self.history, rows)
                if any(isinstance(r, Refused) and r.lost_lead for r in results):
                    self._leading = False
                    self.wake.set()
                for d, row, result in zip(batch, rows, results):
                    lock = prelocked.get(d.seq) or self._prelocked.get(d.job)
                    if not isinstance(result, (Claimed, Unrecorded)):
                        if isinstance(result, Taken):
                            log.info("%s: instant %s already claimed (by another runner, or before the wall clock"
                                     " was stepped back); not running it",
                                     d.job, d.scheduled_for.isoformat())
                        if lock is not None and lock is not self._prelocked.get(d.job):
                            self._release(lock)
                        continue
                    spec = jobs[d.job]
                    if lock is None and spec.overlap is Overlap.SKIP:
                        lock = self.locks.job(d.job)
                        try:
                            lock.acquire(now=now, write_holder=False)
                        except LockHeld as exc:
                            # Claimed, then found running in another process (a `cronpy trigger`).
                            not_started.append((d, row, result, RunStatus.SKIPPED, str(exc)))
                            continue
                        except OSError as exc:  # no descriptors left, an unwritable state dir, no store
                            not_started.append((d, row, result, RunStatus.FAILED, f"could not take the job lock: {exc}"))
                            continue
                    self._until(d.when)
                    if burst is not None and not burst.on:
                        burst.begin()  # from the first spawn on, not while waiting for the instant
                    spawned.append(self._spawn(spec, d, result, lock, max(now, d.when)))
                    if burst is not None and (t := time.monotonic()) >= next_look:
                        # The instants of the exits so far, to the millisecond (a look is one
                        # epoll_wait: every 3-4 spawns, not after each).
                        self.supervisor.collect()
                        next_look = t + COLLECT_EVERY
                if last:
                    for (d, reason), row, result in zip(skipped, rows[len(batch):], results[len(batch):]):
                        if isinstance(result, Unrecorded):
                            self.recorder.put(Late(row))
                        if isinstance(result, (Claimed, Unrecorded)):
                            log.warning("%s: skipped run%s (%s): %s", d.job, _id(result), d.trigger.value, reason)
        finally:
            if burst is not None:
                burst.end()
        # Off the path from here: after the last spawn, through the writer.
        pids = tuple((a.run_id, a.attempt.pid) for a in spawned
                     if a.run_id is not None and a.attempt is not None and a.attempt.pid is not None)
        if pids:
            self.recorder.put(Pids(pids))
        for active in spawned:
            # Logged after the last spawn: ~25 us a line, 5 ms of a burst of 200 otherwise.
            d = active.due
            log.info("%s: started run%s (%s, attempt %d)", d.job, _id(active.claim), d.trigger.value, d.attempt)
            self._set_holder(active)
            self._notify(lambda o, a=active: o.run_started(a.spec, a.run_id or 0))  # type: ignore[misc]
        for d, row, result, status, reason in not_started:
            if isinstance(result, Claimed):
                self.recorder.put(Outcome(Finish(result.run_id, status, now, 0.0, error=reason)))
            else:
                self.recorder.put(Late(row._replace(status=status, error=reason)))
            if status is RunStatus.SKIPPED:
                log.warning("%s: skipped run%s (%s): %s", d.job, _id(result), d.trigger.value, reason)
            else:
                log.error("%s: run%s (%s) failed to start: %s", d.job, _id(result), d.trigger.value, reason)
        return [a.run_id for a in spawned if a.run_id is not None]

    def _until(self, when: datetime) -> None:
        """Wait for the instant of a run claimed ahead of it (see LEAD): never start early."""
        while (left := when - self.clock.now()) > timedelta(0):
            if left > 2 * LEAD + timedelta(seconds=1):
                return  # the wall clock was stepped back while waiting: the instant is due, run it
            self.clock.sleep_until(when, self._never)

    def _spawn(self, spec: JobSpec, d: Due, result: Claimed | Unrecorded, lock: JobLock | None,
               now: datetime) -> _Active:
        sink = None
        if self.output is not None:
            out = self.output
            sink = lambda line: out(spec.name, line)  # noqa: E731
        run_id = result.run_id if isinstance(result, Claimed) else None
        ctx = RunContext(spec.name, run_id, d.scheduled_for, d.attempt, d.trigger.value)
        fd = _file_lock_fd(lock)
        self._keys += 1
        active = _Active(self._keys, d, result, lock, spec, now)  # the started_at written to history
        if self.state_dir is not None and run_id is not None:
            # Opens its file on the first byte, on the supervisor's thread: nothing here on the path.
            active.output = RunOutput(self.state_dir, spec.name, run_id, spec.output_max, spec.keep_output)
        # The job inherits its lock: it stays taken while the job runs, even if this process dies.
        attempt = active.attempt = Attempt(spec, ctx, sink=sink, base_dir=self.jobs.base_dir,
                                           base_env=self._base_env, raw=active.output,
                                           inherit_fds=(fd,) if fd is not None and fd >= 0 else ())
        self._active[active.key] = active
        self._running[spec.name] += 1
        self._last_start[spec.name] = now
        if self._cancel_all:
            attempt.cancel()
        self.supervisor.watch(attempt, lambda a, r, act=active: self._on_done(act, r))  # type: ignore[misc]
        return active

    def _set_holder(self, active: _Active) -> None:
        """Name the run and the job's process in its lock (`status`, a LockHeld message)."""
        lock = active.lock
        if lock is None:
            return
        pid = active.attempt.pid if active.attempt else None
        if _file_lock_fd(lock) is not None:
            try:
                lock.set_holder(run_id=active.run_id, now=active.started_at, job_pid=pid)
            except OSError as exc:  # who holds the lock is for `status`; the run goes on
                log.warning("%s: cannot write the lock holder: %s", active.spec.name, exc)
        else:
            run_id = active.run_id
            self.recorder.put(Call(f"{active.spec.name}: naming the lock holder",
                                   lambda: lock.set_holder(run_id=run_id)))

    def _release(self, lock: JobLock) -> None:
        """Release a job lock: a file lock at once (microseconds), a store's through the writer."""
        if _file_lock_fd(lock) is not None:
            lock.release()
        else:
            self.recorder.put(Call("releasing a job lock", lock.release))

    # -- the end of a run ----------------------------------------------------------------------

    def _on_done(self, active: _Active, result: AttemptResult) -> None:
        """The supervisor saw the attempt end: free its slot and lock now, record it later."""
        finished = self.clock.now()
        output = active.output
        if output is not None:
            output.finish()  # every byte on disk before the outcome: `logs -f` ends there
        settle = None
        if output is not None and output.opened:  # a run that printed nothing has no file to settle
            limit = active.spec.output_max
            settle = lambda: output.settle(limit)  # noqa: E731
        self._record(active, result, finished, settle)
        lock = active.lock
        if lock is not None and lock is not self._prelocked.get(active.spec.name):
            try:
                self._release(lock)
            except OSError as exc:
                log.error("%s: cannot release the job lock: %s", active.spec.name, exc)
        # Never the runner's lock here: a tick holds it while it spawns a burst, and every
        # other run's exit would wait behind it (their durations grew by the whole tick). A
        # deque append is atomic; the loop takes it from there at once (wake).
        self._finished.append((active, result, finished))
        # The loop reaps it at once (retries, chains, observers: metrics, pings); a tick with
        # nothing due costs no store access. An event already set is not set again (a lock
        # and a notify each, for every run of a burst): whoever clears one reaps after
        # clearing it, so this run is reaped either way.
        if not self._ended.is_set():
            self._ended.set()
        if not self.wake.is_set():
            self.wake.set()

    def reap(self) -> None:
        """Record the runs that ended and queue their retries and chains (the loop does this at
        every tick; a runner standing by calls it while it waits)."""
        with self._lock:
            self._reap()

    def _reap(self) -> None:
        while self._finished:
            active, result, finished = self._finished.popleft()
            self._active.pop(active.key, None)  # its slot is free for this tick's admission
            job = active.spec.name
            self._running[job] -= 1
            if self._running[job] <= 0:
                del self._running[job]
            self._finish(active, result, finished)

    def _record(self, active: _Active, result: AttemptResult, finished: datetime,
                then: Callable[[], None] | None = None) -> None:
        """Queue the outcome to the writer (the supervisor's thread: it never waits for a store);
        `then` (compressing or removing the output file) runs on the writer after it."""
        d = active.due
        outcome = Finish(active.run_id or 0, result.status, finished, result.duration, result.exit_code,
                         result.error, result.output, result.result)
        if isinstance(active.claim, Claimed):
            self.recorder.put(Outcome(outcome, _maybe_cancelled(result), then))
        else:  # its row could not be written when it started: the whole row, later
            started = finished - timedelta(seconds=result.duration)
            self.recorder.put(Late(NewRun(d.job, d.trigger, started, d.scheduled_for, d.attempt, d.parent_id),
                                   outcome))
            if then is not None:
                self.recorder.put(Call(f"{d.job}: settling the output file", then))

    def _finish(self, active: _Active, result: AttemptResult, finished: datetime) -> None:
        """After a run's end (on the loop): log it, queue its retry or chained runs, notify."""
        d, spec = active.due, active.spec
        run_id = active.run_id
        # A run that died by a signal may have been stopped by `cronpy cancel` from outside:
        # then it is not retried (the writer records it as cancelled the same way).
        if run_id is not None and _maybe_cancelled(result) and self._cancelled(run_id):
            result = replace(result, status=RunStatus.CANCELLED, error=CANCELLED_ERROR)
        level = logging.INFO if result.status is RunStatus.SUCCESS else logging.WARNING
        log.log(level, "%s: run%s %s in %.3fs (exit %s)%s", spec.name, _id(active.claim), result.status.value,
                result.duration, result.exit_code, f": {result.error.splitlines()[-1]}" if result.error else "")
        retryable = (result.status in (RunStatus.FAILED, RunStatus.TIMEOUT)
                     and d.attempt <= spec.retries and not self._stopping)
        if retryable and not self._leading:
            log.warning("%s: not retrying run%s: this runner stepped down", spec.name, _id(active.claim))
        retry = retryable and self._leading
        if retry:
            delay = spec.backoff.delay(d.attempt, self.rng.random())
            log.info("%s: retry %d of %d in %.1fs", spec.name, d.attempt, spec.retries, delay)
            self.agenda.push(finished + timedelta(seconds=delay), spec.name, Trigger.RETRY,
                             d.scheduled_for, d.attempt + 1, run_id)
            self.wake.set()
        if result.status is RunStatus.SUCCESS:
            self._last_success[spec.name] = active.started_at
        if result.status is RunStatus.SUCCESS and self.chains and self._leading:
            self._fire_dependents(spec.name, run_id, finished)
        record = RunRecord(
            id=run_id or 0, job=spec.name, status=result.status, trigger=d.trigger, attempt=d.attempt,
            scheduled_for=d.scheduled_for, started_at=active.started_at, finished_at=finished,
            duration=result.duration, exit_code=result.exit_code, error=result.error, output=result.output,
            result=result.result, pid=result.pid, host=HOST)
        self.last_record = record
        self._notify(lambda o: o.run_finished(spec, record, retry))

    def _notify(self, call: Callable[[Observer], None]) -> None:
        for observer in self.observers:
            try:
                call(observer)
            except Exception:  # an observer must never break a run
                log.exception("notification failed")

    def _cancelled(self, run_id: int) -> bool:
        try:
            return self.history.cancel_requested(run_id)
        except CronpyError:
            return False

    def _fire_dependents(self, job: str, run_id: int | None, now: datetime) -> None:
        """Queue every job `after:` this one whose listed jobs have all succeeded since it last ran."""
        for name in self._dependents.get(job, ()):
            spec = self.jobs.jobs.get(name)
            if spec is None or not spec.enabled:
                continue
            try:
                # The store's answer, and this runner's own runs, whose rows the writer may not
                # have written yet.
                last_run = _latest(self.history.last_started(spec.name), self._last_start.get(spec.name))
                ready = all(
                    (t := _latest(self.history.last_success_started(dep), self._last_success.get(dep))) is not None
                    and (last_run is None or t > last_run)
                    for dep in spec.after
                )
            except CronpyError as exc:
                log.error("%s: cannot check its `after:` jobs: %s", spec.name, exc)
                continue
            if ready:
                log.info("%s: every job in its `after:` has succeeded; running it (after run%s of %s)",
                         spec.name, f" {run_id}" if run_id is not None else "", job)
                self.agenda.push(now, spec.name, Trigger.DEPENDENCY, now, parent_id=run_id)
                self.wake.set()

    def cancel_run(self, run_id: int) -> bool:
        """Stop one of this runner's runs (`cronpy cancel` from any host): TERM its process
        group, KILL after kill_grace; recorded as cancelled, not retried. False if not ours."""
        with self._lock:
            active = next((a for a in self._active.values() if a.run_id == run_id), None)
            if active is None or active.attempt is None:
                return False
            log.info("%s: cancelling run %d (asked by `cronpy cancel`)", active.spec.name, run_id)
            active.attempt.cancel(RunStatus.CANCELLED)
        return True

    # -- the loop ----------------------------------------------------------------------------

    def request_stop(self, *, now: bool = False) -> None:
        """Stop firing new runs; with `now`, also stop the running ones at once."""
        with self._lock:
            self._stopping = True
            if now:
                self._cancel_all = True
                for a in self._active.values():
                    if a.attempt:
                        a.attempt.cancel()
        self.wake.set()

    @property
    def stopping(self) -> bool:
        return self._stopping

    def step_down(self) -> None:
        """Stop scheduling (another runner leads now); runs in progress go on to their end."""
        with self._lock:
            self._leading = False
            dropped = self.agenda.clear() + len(self._pending) + len(self._queued)
            self._pending.clear()
            self._queued.clear()
            running = len(self._active)
        log.info("stepped down: %d scheduled entr%s dropped, %d run(s) in progress go on", dropped,
                 "y" if dropped == 1 else "ies", running)

    def run_forever(self, on_wake: Callable[[], None] | None = None,
                    leading: Callable[[], bool] = lambda: True) -> bool:
        """Tick, sleep until the next instant, repeat until request_stop() or until this runner
        is no longer the scheduler. Returns True after a stop (and shutdown), False after
        stepping down (see step_down: running jobs go on; start() schedules again).

        `on_wake` runs on the loop thread after every wake-up (the service reloads there).
        """
        while not self._stopping and self._leading and leading():
            self.wake.clear()
            self.beat()
            if self.steps is not None and (step := self.steps.check()) is not None:
                self.clock_stepped(step, self.clock.now())
            self.tick(self.clock.now(), lead=LEAD)
            # After the tick, not before: what on_wake does (reload check, status file, the
            # summary for systemd) must not delay the runs due at this instant.
            if on_wake is not None:
                on_wake()
            if self._stopping:
                break
            wakeup = self.next_wakeup()
            deadline = wakeup - LEAD if wakeup else None
            if self.max_sleep is not None:
                cap = self.clock.now() + timedelta(seconds=self.max_sleep)
                deadline = cap if deadline is None else min(deadline, cap)
            self.clock.sleep_until(deadline, self.wake)
        if not self._stopping:
            self.step_down()
            return False
        self.shutdown(self.jobs.shutdown_grace)
        return True

    def beat(self) -> None:
        """Stamp the heartbeat: the loop (leading or standing by) has made a pass just now."""
        self.heartbeat = time.monotonic()

    def alive(self, max_age: float) -> bool:
        """True if the loop made a pass within `max_age` seconds, or is stopping (the watchdog
        pings only then: a live thread beside a stuck loop proves nothing)."""
        return self._stopping or time.monotonic() - self.heartbeat < max_age

    def wait_idle(self, timeout: float) -> bool:
        """Block until no run is active and every outcome is written (tests, shutdown); False
        if `timeout` passed first."""
        end = time.monotonic() + timeout
        if not self._wait_runs(timeout):
            return False
        if self._recorder is None:
            return True
        return self._recorder.flush(max(0.0, end - time.monotonic()))

    @property
    def active_count(self) -> int:
        """Runs whose child has not ended (one that ended is counted out at once, before the
        loop has reaped it)."""
        with self._lock:
            return len(self._active) - len(self._finished)

    def backlog(self) -> tuple[int, float | None, float | None]:
        """What the store writer still holds: (writes, age of the oldest, seconds failing)."""
        if self._recorder is None:
            return 0, None, None
        return self._recorder.backlog()

    def shutdown(self, grace: float) -> None:
        """Wait up to `grace` seconds for running jobs, then stop them; every outcome is recorded
        (up to FLUSH_ON_STOP seconds more while the store cannot be written)."""
        with self._lock:
            self._stopping = True
            running = len(self._active)
        if running:
            log.info("stopping: waiting up to %.0fs for %d running job(s)", grace, running)
        if not self._wait_runs(grace):
            log.warning("stopping: grace period over, terminating running jobs")
            self.request_stop(now=True)
            self._wait_runs(max((s.kill_grace for s in self.jobs.jobs.values()), default=10.0) + 5.0)
        if self._recorder is not None and not self._recorder.flush(FLUSH_ON_STOP):
            log.error("stopping: %d history write(s) still waiting for the store", self._recorder.backlog()[0])

    def _wait_runs(self, timeout: float) -> bool:
        """Reap until no run is active; False if `timeout` seconds passed first."""
        end = time.monotonic() + timeout
        while True:
            self._ended.clear()
            with self._lock:
                self._reap()
                if not self._active and not self._finished:
                    return True
            remaining = end - time.monotonic()
            if remaining <= 0:
                return False
            self._ended.wait(min(remaining, 0.1))

    def close(self) -> None:
        """Stop the supervisor and the writer threads (after shutdown)."""
        if self._supervisor is not None:
            self._supervisor.close()
            self._supervisor = None
        if self._recorder is not None:
            self._recorder.close(FLUSH_ON_STOP)
            self._recorder = None


def _latest(*instants: datetime | None) -> datetime | None:
    known = [t for t in instants if t is not None]
    return max(known) if known else None


def _maybe_cancelled(result: AttemptResult) -> bool:
    """Died by a signal (or stopped by this runner), so `cronpy cancel` may be why."""
    return (result.status not in (RunStatus.SUCCESS, RunStatus.CANCELLED)
            and (result.exit_code is None or result.exit_code < 0 or result.status is RunStatus.INTERRUPTED))


def _id(result: ClaimResult) -> str:
    """ " 42" for a run with a row, " (not recorded yet)" for one without, for log lines."""
    return f" {result.run_id}" if isinstance(result, Claimed) else " (not recorded yet)"
