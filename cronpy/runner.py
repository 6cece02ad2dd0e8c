"""The scheduling loop.

`Runner.tick(now)` does one pass: it takes every due entry off a heap of next instants,
decides for each (overlap, concurrency, priority, job lock), claims the whole batch in one
history transaction, and starts the claimed runs in worker threads. `run_forever()` sleeps
until the earliest instant on the heap (or until woken by a signal or a finished run) and
ticks again. Only the job that fired has its next instant computed, so a tick costs the same
with 10 jobs or 10,000.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import random
import threading
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Callable, Sequence

from cronpy.clock import Clock, Step, StepDetector
from cronpy.errors import CronpyError, HistoryDamaged, HistoryError, LockHeld, NotLeader
from cronpy.executor import Attempt, AttemptResult, RunContext
from cronpy.history import HOST, NewRun
from cronpy.integrations import Observer
from cronpy.store import JobLock, JobLocks, Store
from cronpy.models import At, Every, JobSet, JobSpec, Overlap, RunRecord, RunStatus, Trigger
from cronpy.outputs import BootMarks, RunOutput
from cronpy.schedule import compile_cron, latest_fire, next_fire

log = logging.getLogger("cronpy")

# An instant found late by less than this (a busy machine, a slow tick) still fires; one
# further in the past was missed (downtime, suspend, a clock step) and is left to catch_up.
MISFIRE_GRACE = timedelta(seconds=10)

# Runs of a burst claimed (and so started) before the rest are claimed; see _dispatch.
FIRST_BATCH = 4

# The loop wakes this much before an instant and claims it (the history commit, the job lock),
# then waits for the instant itself to spawn: the child starts ~1 ms sooner, never early.
LEAD = timedelta(milliseconds=3)

# A failed history write (disk full, a lost store) is retried, backing off from the first
# to the second figure, in seconds: RECORD_TRIES times (~50 s) on SQLite; on a fleet store
# for up to FLEET_RECORD_PATIENCE, since its database may be failing over or in maintenance
# for minutes, while this runner stands by anyway.
RECORD_BACKOFF = (0.2, 30.0)
RECORD_TRIES = 8
FLEET_RECORD_PATIENCE = 3600.0

OutputSink = Callable[[str, str], None]  # (job name, line)


@dataclass(order=True)
class Due:
    """An entry of the heap: a run of `job` to start at `when`."""

    when: datetime
    seq: int
    job: str = field(compare=False)
    trigger: Trigger = field(compare=False)
    scheduled_for: datetime = field(compare=False)
    attempt: int = field(default=1, compare=False)
    parent_id: int | None = field(default=None, compare=False)
    #: a scheduled instant found late at start-up (a restart, a takeover) that still fires
    late: bool = field(default=False, compare=False)


@dataclass
class _Active:
    due: Due
    run_id: int
    lock: JobLock | None
    spec: JobSpec
    started_at: datetime
    attempt: Attempt | None = None
    thread: threading.Thread | None = None
    pid_recorded: bool = False
    output: RunOutput | None = None


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
        self._heap: list[Due] = []
        self._pending: list[tuple[int, datetime, int, Due]] = []  # waiting for a free slot
        self._queued: dict[str, Due] = {}  # overlap: queue, waiting for the job to finish
        self._active: dict[int, _Active] = {}  # by run id
        self._seq = itertools.count()
        self._lock = threading.RLock()
        self._idle = threading.Condition(self._lock)
        self.wake = threading.Event()
        self._never = threading.Event()  # what _until sleeps on: only the clock ends that wait
        self._stopping = False
        self._cancel_all = False
        self._anchors: dict[str, datetime] = {}
        self._prelocked: dict[str, JobLock] = {}  # job locks taken before dispatch (foreground trigger)
        self._leading = True  # False once a fenced claim is refused: stop firing (see step_down)
        self._started = False  # run_on_start runs once per process, not again after a step-down
        #: monotonic time of the loop's last pass (standby included): the watchdog's evidence
        self.heartbeat = time.monotonic()
        #: the longest the loop sleeps between passes (None: the clock's own bound); the service
        #: sets it to the watchdog interval so that an idle loop still beats often enough
        self.max_sleep: float | None = None
        #: wall-clock step detector, consulted once per pass (None: steps are not looked for)
        self.steps: StepDetector | None = None

    # -- the heap ----------------------------------------------------------------------------

    def _push(self, when: datetime, job: str, trigger: Trigger, scheduled_for: datetime,
              attempt: int = 1, parent_id: int | None = None, *, late: bool = False) -> None:
        with self._lock:
            heapq.heappush(self._heap, Due(when, next(self._seq), job, trigger, scheduled_for, attempt, parent_id,
                                           late))
        self.wake.set()

    def _schedule_next(self, spec: JobSpec, after: datetime) -> None:
        """Push the job's next instant strictly after `after`, keeping an interval's cadence."""
        anchor = self._anchors.get(spec.name)
        nxt = next_fire(spec, after, anchor)
        if nxt is None:
            return
        if isinstance(spec.schedule, Every):
            self._anchors[spec.name] = nxt
        delay = self.rng.uniform(0, spec.jitter) if spec.jitter else 0.0
        self._push(nxt + timedelta(seconds=delay), spec.name, Trigger.SCHEDULE, nxt)

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
                self._anchors[spec.name] = last
            missed = self._missed_while_down(spec, now, last)
            late = None if missed is not None else self._missed_lately(spec, now, late_window, last)
            if missed is not None:
                self._push(now, spec.name, Trigger.CATCHUP, missed)
            elif late is not None:
                log.info("%s: firing the run due at %s late (no runner was scheduling then)",
                         spec.name, late.isoformat())
                self._push(now, spec.name, Trigger.SCHEDULE, late, late=True)
            if isinstance(spec.schedule, Every) and (missed or late):
                self._anchors[spec.name] = missed or late  # type: ignore[assignment]
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
            self._heap = [d for d in self._heap if not (d.job in gone and d.trigger is not Trigger.RETRY)
                          and d.job not in removed]
            heapq.heapify(self._heap)
            self._pending = [p for p in self._pending if p[3].job not in removed]
            heapq.heapify(self._pending)
            for name in removed:
                self._queued.pop(name, None)
                self._anchors.pop(name, None)
            self.jobs = jobs
            for name in sorted(resched):
                spec = jobs.jobs[name]
                if not isinstance(spec.schedule, Every):
                    self._anchors.pop(name, None)
                if spec.enabled:
                    self._schedule_next(spec, now)
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
            entries, self._heap = self._heap, []
            for d in entries:
                spec = self.jobs.jobs.get(d.job)
                if spec is None:
                    continue
                scheduled = d.trigger is Trigger.SCHEDULE and not d.late
                if scheduled and isinstance(spec.schedule, At):
                    heapq.heappush(self._heap, d)  # a one-shot keeps its wall time
                    continue
                if not scheduled or isinstance(spec.schedule, Every):
                    d.when += shift  # a retry's delay, an interval: elapsed time, kept
                    if scheduled:
                        d.scheduled_for += shift
                        self._anchors[spec.name] = d.scheduled_for
                    heapq.heappush(self._heap, d)
                    continue
                fixed = not compile_cron(spec.schedule.expr, spec.name).wildcard  # type: ignore[union-attr]
                if step.seconds < 0 and fixed and not step.big:
                    heapq.heappush(self._heap, d)  # not repeated: still the instant after the old time
                    continue
                if step.seconds > 0 and fixed and not step.big and d.scheduled_for <= now:
                    skipped = latest_fire(spec, d.scheduled_for - timedelta(microseconds=1), now) or d.scheduled_for
                    log.info("%s: running the instant %s skipped by the step, once", spec.name,
                             skipped.isoformat())
                    heapq.heappush(self._heap, replace(d, when=now, scheduled_for=skipped, late=True))
                nxt = next_fire(spec, now)
                if nxt is not None:
                    delay = d.when - d.scheduled_for  # keep its jitter
                    heapq.heappush(self._heap, replace(d, when=nxt + delay, scheduled_for=nxt, late=False))
        self.wake.set()

    def next_wakeup(self) -> datetime | None:
        """Return when the next tick is due (None: nothing scheduled)."""
        with self._lock:
            return self._heap[0].when if self._heap else None

    def upcoming(self, count: int) -> list[Due]:
        """The next `count` entries of the heap, soonest first (status, metrics).

        Walks the heap from its root, O(count log count) whatever the number of jobs: this
        runs after every wake-up, and 10,000 loaded jobs must not slow a busy runner down.
        """
        with self._lock:
            heap = self._heap
            out: list[Due] = []
            frontier = [(heap[0], 0)] if heap else []
            while frontier and len(out) < count:
                d, i = heapq.heappop(frontier)
                out.append(d)
                for child in (2 * i + 1, 2 * i + 2):
                    if child < len(heap):
                        heapq.heappush(frontier, (heap[child], child))
            return out

    def next_per_job(self) -> dict[str, datetime]:
        """Each job's earliest instant on the heap."""
        with self._lock:
            out: dict[str, datetime] = {}
            for d in self._heap:
                if d.job not in out or d.when < out[d.job]:
                    out[d.job] = d.when
            return out

    def next_due(self) -> Due | None:
        with self._lock:
            return self._heap[0] if self._heap else None

    def run_foreground(self, name: str, *, wait: float = 0.0) -> int | None:
        """Run job `name` now, with its retries, through the same dispatch as scheduled runs.

        Takes the job lock first (waiting up to `wait` seconds; LockHeld if it stays taken),
        then ticks until the run and its retries are over. Returns the last run's id.
        """
        spec = self.jobs.jobs[name]
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
                    if not self._active and (not self._heap or self._stopping):
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
        """Start what is due at `now`; return the ids of the runs started.

        With `lead`, what falls due up to `now + lead` is claimed now and spawned at its
        instant (run_forever passes LEAD).
        """
        with self._lock:
            due: list[Due] = []
            horizon = now + lead
            while self._heap and self._heap[0].when <= horizon:
                due.append(heapq.heappop(self._heap))
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
                if not self._running(job):
                    candidates.append(self._queued.pop(job))
            candidates += [p[3] for p in self._pending]
            self._pending.clear()
            candidates = self._without_paused(candidates)
            started = self._dispatch(candidates, now)
            # The next instants are computed after the spawns: a burst of 200 due jobs starts
            # ~20 ms sooner, and the heap is whole again before this tick returns.
            self._reschedule(reschedule)
            return started

    def _reschedule(self, items: list[tuple[JobSpec, datetime]]) -> None:
        for spec, after in items:
            self._schedule_next(spec, after)

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

    def _running(self, job: str) -> bool:
        return any(a.due.job == job for a in self._active.values())

    def _dispatch(self, candidates: list[Due], now: datetime) -> list[int]:
        """Decide, claim in one transaction, then lock and spawn each run back to back.

        The order matters for a burst of due jobs: everything slow (threads, holder files,
        history updates) happens after the last child has been spawned.
        """
        jobs = self.jobs.jobs
        candidates.sort(key=lambda d: (-jobs[d.job].priority, d.when, d.seq))
        to_start: list[Due] = []
        prelocked: dict[int, JobLock] = {}  # by Due.seq: overlap=queue jobs lock before claiming
        skipped: list[tuple[Due, str]] = []
        slots = self.jobs.max_concurrent - len(self._active)
        starting: set[str] = set()
        for d in candidates:
            spec = jobs[d.job]
            busy = self._running(d.job) or d.job in starting
            if busy and spec.overlap is Overlap.SKIP:
                skipped.append((d, "the previous run was still going (overlap: skip)"))
                continue
            if busy and spec.overlap is Overlap.QUEUE:
                if d.job in self._queued:
                    skipped.append((d, "a run was already queued (overlap: queue)"))
                else:
                    self._queued[d.job] = d
                continue
            if slots <= 0:
                heapq.heappush(self._pending, (-spec.priority, d.when, d.seq, d))
                continue
            if spec.overlap is Overlap.QUEUE and d.job not in self._prelocked:
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
            starting.add(d.job)
            slots -= 1
        spawned: list[_Active] = []
        held_elsewhere: list[tuple[Due, int, str]] = []
        lock_failed: list[tuple[Due, int, str]] = []
        skipped_ids: list[int | None] = []
        # Claim a small first batch alone, so the first child starts after a one-row commit
        # (~1 ms) instead of after the whole burst's (~20 ms for 200 rows); skipped rows ride
        # with the last batch.
        batches = [to_start[:FIRST_BATCH], to_start[FIRST_BATCH:]] if len(to_start) > FIRST_BATCH else [to_start]
        for n, batch in enumerate(batches):
            last = n == len(batches) - 1
            rows = [NewRun(d.job, d.trigger, max(now, d.when), d.scheduled_for, d.attempt, d.parent_id)
                    for d in batch]
            if last:
                rows += [NewRun(d.job, d.trigger, now, d.scheduled_for, d.attempt, d.parent_id,
                                RunStatus.SKIPPED, reason) for d, reason in skipped]
            ids = self._claim(rows, len(batch))
            for d, run_id in zip(batch, ids[: len(batch)]):
                lock = prelocked.get(d.seq) or self._prelocked.get(d.job)
                if not run_id:  # None: claimed by another runner; 0: the store refused the claim
                    if run_id is None:
                        log.info("%s: instant %s already claimed (by another runner, or before the wall clock"
                                 " was stepped back); not running it",
                                 d.job, d.scheduled_for.isoformat())
                    if lock is not None and lock is not self._prelocked.get(d.job):
                        lock.release()
                    continue
                spec = jobs[d.job]
                if lock is None and spec.overlap is Overlap.SKIP:
                    lock = self.locks.job(d.job)
                    try:
                        lock.acquire(now=now, write_holder=False)
                    except LockHeld as exc:
                        held_elsewhere.append((d, run_id, str(exc)))
                        continue
                    except OSError as exc:  # no descriptors left, an unwritable state dir, no store
                        lock_failed.append((d, run_id, f"could not take the job lock: {exc}"))
                        continue
                self._until(d.when)
                spawned.append(self._spawn(spec, d, run_id, lock, max(now, d.when)))
            if last:
                skipped_ids = ids[len(batch):]
        # The pids of the whole tick in one commit (a burst of 80 was 80 commits, one per
        # run thread); a failed write falls back to each run thread's retrying write.
        pids = [(a.run_id, a.attempt.pid) for a in spawned
                if a.attempt is not None and a.attempt.pid is not None and a.run_id > 0]
        try:
            self.history.set_pids(pids)
        except CronpyError as exc:
            log.error("cannot record the pids of %d started run(s) yet: %s", len(pids), exc)
        else:
            for a in spawned:
                a.pid_recorded = True
        for active in spawned:
            thread = threading.Thread(target=self._run, args=(active,), name=f"run-{active.run_id}", daemon=True)
            active.thread = thread
            thread.start()
        for d, run_id, reason in held_elsewhere:
            # Claimed, then found running in another process (a `cronpy trigger`): skipped.
            self._record(lambda r=run_id, why=reason: self.history.finish_run(  # type: ignore[misc]
                r, RunStatus.SKIPPED, now, duration=0.0, error=why))
            log.warning("%s: skipped run %d (%s): %s", d.job, run_id, d.trigger.value, reason)
        for d, run_id, reason in lock_failed:
            self._record(lambda r=run_id, why=reason: self.history.finish_run(  # type: ignore[misc]
                r, RunStatus.FAILED, now, duration=0.0, error=why))
            log.error("%s: run %d (%s) failed to start: %s", d.job, run_id, d.trigger.value, reason)
        for (d, reason), run_id in zip(skipped, skipped_ids):
            if run_id:
                log.warning("%s: skipped run %d (%s): %s", d.job, run_id, d.trigger.value, reason)
        return [a.run_id for a in spawned]

    def _until(self, when: datetime) -> None:
        """Wait for the instant of a run claimed ahead of it (see LEAD): never start early."""
        while (left := when - self.clock.now()) > timedelta(0):
            if left > 2 * LEAD + timedelta(seconds=1):
                return  # the wall clock was stepped back while waiting: the instant is due, run it
            self.clock.sleep_until(when, self._never)

    def _claim(self, rows: list[NewRun], starting: int) -> list[int | None]:
        """Write run rows (claiming their instants); ids, None where claimed elsewhere."""
        if not rows:
            return []
        try:
            return self.history.start_runs(rows)
        except NotLeader as exc:
            # A fenced store refused the claim: another runner took the lease over while this
            # one was paused or cut off. It must not run anything it did not claim.
            log.warning("the store refused %d claim(s): %s", len(rows), exc)
            self._leading = False
            self.wake.set()
            return [0] * len(rows)
        except CronpyError as exc:
            if self.history.fenced:
                # Without a claim nothing proves this runner still owns the instants: another
                # host may be firing them. Skip them rather than risk a second run.
                log.error("cannot claim %d due run(s) in the store, not running them: %s", len(rows), exc)
                return [0] * len(rows)
            # The history cannot be written (disk full, I/O error). This runner holds the
            # scheduler lock, so nobody else fires these instants: run them, and write their
            # rows when the database takes writes again.
            log.error("HISTORY WRITE FAILED, running %d due run(s) unrecorded for now: %s", starting, exc)
            return [-next(self._seq) - 1 for _ in rows]

    def _spawn(self, spec: JobSpec, d: Due, run_id: int, lock: JobLock | None, now: datetime) -> _Active:
        sink = None
        if self.output is not None:
            out = self.output
            sink = lambda line: out(spec.name, line)  # noqa: E731
        ctx = RunContext(spec.name, run_id, d.scheduled_for, d.attempt, d.trigger.value)
        active = _Active(d, run_id, lock, spec, now)  # the started_at written to history
        if self.state_dir is not None and run_id > 0:
            # Opens its file on the first byte, on the watching thread: nothing here on the path.
            active.output = RunOutput(self.state_dir, spec.name, run_id, spec.output_max, spec.keep_output)
        active.attempt = Attempt(spec, ctx, sink=sink, base_dir=self.jobs.base_dir, base_env=self._base_env,
                                 raw=active.output)
        if self._cancel_all:
            active.attempt.cancel()
        self._active[run_id] = active
        log.info("%s: started run %d (%s, attempt %d)", d.job, run_id, d.trigger.value, d.attempt)
        return active

    def _run(self, active: _Active) -> None:
        """Watch one spawned attempt to its end (in its own thread), record it, queue a retry."""
        d, spec, attempt = active.due, active.spec, active.attempt
        assert attempt is not None
        result: AttemptResult | None = None
        try:
            if active.lock is not None:
                try:
                    active.lock.set_holder(run_id=active.run_id)
                except OSError as exc:  # who holds the lock is for `status`; the run goes on
                    log.warning("%s: cannot write the lock holder file: %s", spec.name, exc)
            if attempt.pid is not None and active.run_id > 0 and not active.pid_recorded:
                self._record(lambda: self.history.set_pids([(active.run_id, attempt.pid or 0)]))
            self._notify(lambda o: o.run_started(spec, active.run_id))
            result = attempt.wait()
            if result.status is not RunStatus.SUCCESS and active.run_id > 0 and self._cancelled(active.run_id):
                result = replace(result, status=RunStatus.CANCELLED, error="cancelled by `cronpy cancel`")
        finally:
            finished = self.clock.now()
            if result is None:
                result = AttemptResult(RunStatus.FAILED, None, 0.0, "", error="cronpy failed to run the job")
            if active.output is not None:
                active.output.finish()  # every byte on disk before the outcome: `logs -f` ends there
            self._record(lambda: self._finish(active, result, finished))
            if active.lock and active.lock is not self._prelocked.get(spec.name):
                active.lock.release()
            level = logging.INFO if result.status is RunStatus.SUCCESS else logging.WARNING
            log.log(level, "%s: run %d %s in %.3fs (exit %s)%s", spec.name, active.run_id, result.status.value,
                    result.duration, result.exit_code, f": {result.error.splitlines()[-1]}" if result.error else "")
            with self._lock:
                del self._active[active.run_id]
                retryable = (result.status in (RunStatus.FAILED, RunStatus.TIMEOUT)
                             and d.attempt <= spec.retries and not self._stopping)
                if retryable and not self._leading:
                    log.warning("%s: not retrying run %d: this runner stepped down", spec.name, active.run_id)
                retry = retryable and self._leading
                if retry:
                    delay = spec.backoff.delay(d.attempt, self.rng.random())
                    log.info("%s: retry %d of %d in %.1fs", spec.name, d.attempt, spec.retries, delay)
                    self._push(finished + timedelta(seconds=delay), spec.name, Trigger.RETRY,
                               d.scheduled_for, d.attempt + 1, active.run_id)
                if result.status is RunStatus.SUCCESS and self.chains and self._leading:
                    self._fire_dependents(spec.name, active.run_id, finished)
                self._idle.notify_all()
            record = RunRecord(
                id=active.run_id, job=spec.name, status=result.status, trigger=d.trigger, attempt=d.attempt,
                scheduled_for=d.scheduled_for, started_at=active.started_at, finished_at=finished,
                duration=result.duration, exit_code=result.exit_code, error=result.error, output=result.output,
                result=result.result, pid=result.pid, host=HOST)
            self._notify(lambda o: o.run_finished(spec, record, retry))
            self.wake.set()
            if active.output is not None:
                active.output.settle(spec.output_max)  # gzip (`output: keep`) on this run's thread

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

    def _fire_dependents(self, job: str, run_id: int, now: datetime) -> None:
        """Queue every job `after:` this one whose listed jobs have all succeeded since it last ran."""
        for spec in self.jobs.jobs.values():
            if job not in spec.after or not spec.enabled:
                continue
            try:
                last_run = self.history.last_started(spec.name)
                ready = all(
                    (t := self.history.last_success_started(dep)) is not None and (last_run is None or t > last_run)
                    for dep in spec.after
                )
            except CronpyError as exc:
                log.error("%s: cannot check its `after:` jobs: %s", spec.name, exc)
                continue
            if ready:
                log.info("%s: every job in its `after:` has succeeded; running it (after run %d of %s)",
                         spec.name, run_id, job)
                self._push(now, spec.name, Trigger.DEPENDENCY, now, parent_id=run_id)

    def _finish(self, active: _Active, result: AttemptResult, finished: datetime) -> None:
        run_id = active.run_id
        if run_id < 0:  # its start could not be written: write the whole row now
            d = active.due
            started = finished - timedelta(seconds=result.duration)
            written = self.history.start_run(d.job, d.trigger, started, scheduled_for=d.scheduled_for,
                                             attempt=d.attempt, parent_id=d.parent_id)
            if written is None:
                log.error("%s: instant %s was claimed by another runner while history was failing",
                          d.job, d.scheduled_for.isoformat())
                return
            run_id = written
        self.history.finish_run(run_id, result.status, finished, duration=result.duration,
                                exit_code=result.exit_code, error=result.error, output=result.output,
                                result=result.result)

    def _record(self, write: Callable[[], None]) -> None:
        """Write to history, retrying a failed write loudly (see RECORD_BACKOFF)."""
        patience = FLEET_RECORD_PATIENCE if self.history.fenced else 0.0
        deadline = time.monotonic() + patience
        attempt = 0
        while True:
            try:
                write()
                return
            except CronpyError as exc:
                attempt += 1
                log.error("HISTORY WRITE FAILED (try %d%s): %s", attempt,
                          "" if patience else f" of {RECORD_TRIES}", exc)
                if isinstance(exc, HistoryDamaged) or (attempt >= RECORD_TRIES and time.monotonic() >= deadline):
                    break  # a corrupt file stays corrupt: the runner is stopping on it (see service)
                threading.Event().wait(min(RECORD_BACKOFF[1], RECORD_BACKOFF[0] * 2 ** (attempt - 1)))
        log.critical("giving up on a history write after %d tries; the run's outcome is only in this log", attempt)

    def cancel_run(self, run_id: int) -> bool:
        """Stop one of this runner's runs (`cronpy cancel` from any host): TERM its process
        group, KILL after kill_grace; recorded as cancelled, not retried. False if not ours."""
        with self._lock:
            active = self._active.get(run_id)
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
            dropped = len(self._heap) + len(self._pending) + len(self._queued)
            self._heap.clear()
            self._pending.clear()
            self._queued.clear()
            self._anchors.clear()
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
        """Block until no run is active (tests, shutdown); False if `timeout` passed first."""
        end = time.monotonic() + timeout
        with self._idle:
            while self._active:
                remaining = end - time.monotonic()
                if remaining <= 0:
                    return False
                self._idle.wait(min(remaining, 0.1))
        return True

    @property
    def active_count(self) -> int:
        with self._lock:
            return len(self._active)

    def shutdown(self, grace: float) -> None:
        """Wait up to `grace` seconds for running jobs, then stop them; every outcome is recorded."""
        with self._lock:
            self._stopping = True
            running = len(self._active)
        if running:
            log.info("stopping: waiting up to %.0fs for %d running job(s)", grace, running)
        if not self.wait_idle(grace):
            log.warning("stopping: grace period over, terminating running jobs")
            self.request_stop(now=True)
            self.wait_idle(max((s.kill_grace for s in self.jobs.jobs.values()), default=10.0) + 5.0)
