"""The supervisor: one thread watches every running attempt, instead of a thread per run.

It waits (epoll) on each child's pidfd and output pipe plus one eventfd that wakes it for a
cancel or a new attempt with a deadline, and on the nearest deadline (a timeout, a kill grace,
the end of a drain). A child's exit is seen when its pidfd fires, so the recorded duration is
the job's own. It never touches a store: when an attempt is over it hands the outcome to
`done` (the runner's callback, which only queues it) and goes on watching the others.

With epoll, watch() adds a new attempt's descriptors to the supervisor's epoll set itself,
from the spawning thread: the supervisor is not woken for a spawn (a wake-up per spawn cost a
context switch and a GIL hand-off each, in the middle of a burst), only when something of an
attempt fires. Without epoll (not Linux), watch() hands the attempt over and wakes the loop.

Where there is no pidfd (not Linux 5.3+), exits are polled every POLL_WITHOUT_PIDFD seconds
(one waitpid per running job, 20 times a second) instead of being signalled.

With epoll, each descriptor is watched one-shot: once it fires, the kernel stops reporting it
until the supervisor re-arms it (a pipe still open after a read) or closes it (the attempt is
over), so no system call is needed to stop watching. That is what lets the supervisor put its
work off while the loop spawns a burst (runner.burst): it notes the instant each exit was seen
and goes back to waiting; it reaps, reads and closes when the burst is over, or after
DEFER_AT_MOST seconds. A timeout is applied at once, burst or not; a cancel within DEFER_AT_MOST.
"""

from __future__ import annotations

import heapq
import itertools
import os
import select
import threading
import time
from typing import Any, Callable

from cronpy.executor import Attempt, AttemptResult, drain_wake, poke, wake_fds
from cronpy.models import RunStatus
from cronpy.redact import cronpy_logger
from cronpy.runner.burst import DEFER_AT_MOST, Burst

log = cronpy_logger()

Done = Callable[[Attempt, AttemptResult], None]


class _Poll:
    """select.epoll where there is one (registering from another thread takes effect in a
    poll already waiting), else select.poll (it does not: see Supervisor.watch)."""

    def __init__(self) -> None:
        self.shared = hasattr(select, "epoll")
        self._p: Any = select.epoll() if self.shared else select.poll()
        self._in = select.EPOLLIN if self.shared else select.POLLIN
        # epoll registrations may be one-shot: a descriptor that fired is not reported again
        # until rearm()
        self._once = select.EPOLLIN | select.EPOLLONESHOT if self.shared else self._in

    def register(self, fd: int, *, once: bool = False) -> None:
        self._p.register(fd, self._once if once else self._in)

    def rearm(self, fd: int) -> None:
        self._p.modify(fd, self._once)

    def unregister(self, fd: int) -> None:
        self._p.unregister(fd)

    def poll(self, timeout: float | None) -> list[tuple[int, int]]:
        if self.shared:
            return self._p.poll(-1 if timeout is None else timeout)
        return self._p.poll(None if timeout is None else timeout * 1000)

    def close(self) -> None:
        if self.shared:
            self._p.close()


class Supervisor:
    """Watch attempts to their end; see the module docstring. Thread-safe: watch() and the
    attempts' cancel() may be called from any thread."""

    def __init__(self, burst: Burst | None = None) -> None:
        self._poll = _Poll()
        self._wake_r, self._wake_w = wake_fds()
        self._poll.register(self._wake_r)
        # Guards the registrations (watch() makes them on the spawning thread), _touched and
        # _closed. Never held while an attempt reads its pipe or a `done` runs.
        self._mutex = threading.Lock()
        self._touched: set[int] = set()  # attempts to advance at the next wake-up (new, cancelled)
        self._watched: dict[int, tuple[Attempt, Done, dict[int, str]]] = {}  # by id(attempt)
        self._fds: dict[int, tuple[int, str]] = {}  # fd -> (id(attempt), kind)
        self._disarmed: set[int] = set()  # one-shot descriptors that fired and are not re-armed
        # What fired and waits to be handled, (key, kind), and since when (under the mutex).
        self._deferred: list[tuple[int, str]] = []
        self._deferred_since = 0.0
        # Only one-shot registrations (epoll) can wait without being reported again and again.
        self._burst = burst if self._poll.shared else None
        self._timers: list[tuple[float, int, int]] = []  # (when, seq, id(attempt)), lazily pruned
        self._next: dict[int, float | None] = {}
        self._seq = itertools.count()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="supervisor", daemon=True)
        self._thread.start()

    def watch(self, attempt: Attempt, done: Done) -> None:
        """Watch a started attempt; `done(attempt, result)` is called (in the supervisor's
        thread) once it is over. It must return at once: it holds up every other run."""
        key = id(attempt)
        attempt.waker = lambda: self._touch(key)
        quiet = self._poll.shared and attempt.waits_on_fds_only
        with self._mutex:
            registered: dict[int, str] = {}
            self._watched[key] = (attempt, done, registered)
            if self._poll.shared:
                # Watched from now on, also a run with a timeout: its exit is seen when it
                # happens even while the supervisor waits out a burst before its first look.
                self._sync(key, attempt, registered)
            if not quiet:
                self._touched.add(key)  # its deadline (or its cancel) needs the supervisor
        if not quiet:
            poke(self._wake_w)

    def _touch(self, key: int) -> None:
        with self._mutex:
            self._touched.add(key)
        poke(self._wake_w)

    def close(self) -> None:
        """Stop the thread (the runner is done; nothing is left to watch)."""
        with self._mutex:
            self._closed = True
        poke(self._wake_w)
        self._thread.join(5.0)

    # -- the loop ------------------------------------------------------------------------------

    def _loop(self) -> None:
        try:
            while True:
                now = time.monotonic()
                with self._mutex:
                    touched, self._touched = self._touched, set()
                    if self._closed and not self._watched:
                        break
                    # While the loop spawns a burst it notes the exits itself (collect()): the
                    # events wait, the supervisor does not wake for each.
                    holding = (self._burst is not None and self._burst.on and bool(self._deferred)
                               and now - self._deferred_since < DEFER_AT_MOST)
                    deferred: list[tuple[int, str]] = []
                    if not holding:
                        deferred, self._deferred = self._deferred, []
                while self._timers and self._timers[0][0] <= now:
                    _, _, key = heapq.heappop(self._timers)
                    touched.add(key)
                for key, kind in deferred:
                    entry = self._watched.get(key)
                    if entry is not None:
                        entry[0].on_ready(kind)
                        touched.add(key)
                for key in touched:
                    self._advance(key, now)
                timeout = None
                if self._timers:
                    timeout = max(0.0, self._timers[0][0] - time.monotonic())
                if holding:
                    assert self._burst is not None
                    left = max(0.0, self._deferred_since + DEFER_AT_MOST - time.monotonic())
                    self._burst.wait_over(left if timeout is None else min(timeout, left))
                    continue
                self._note(self._poll.poll(timeout), own=True)
        except Exception:  # never silently: a dead supervisor would leave every run unwatched
            log.critical("the supervisor loop failed", exc_info=True)
            raise
        finally:
            self._poll.close()
            for fd in {self._wake_r, self._wake_w}:
                try:
                    os.close(fd)
                except OSError:
                    pass

    def collect(self) -> None:
        """During a burst, on the spawning thread: note the exits that fired since the last
        look (their instants), for the supervisor to handle once the burst is over. One
        epoll_wait that does not block; nothing if no burst is on."""
        if self._burst is not None and self._burst.on:
            events = self._poll.poll(0)
            if events:
                self._note(events, own=False)

    def _note(self, events: list[tuple[int, int]], *, own: bool) -> None:
        """Queue what fired (see _loop); an exit's instant is noted now. `own`: the
        supervisor's thread, which also drains its wake-up descriptor."""
        seen = time.monotonic()
        fired = []
        with self._mutex:
            first = not self._deferred
            for fd, _ in events:
                if fd == self._wake_r:
                    if own:
                        drain_wake(self._wake_r)
                    continue
                data = self._fds.get(fd)
                if data is None:
                    continue
                key, kind = data
                entry = self._watched.get(key)
                if entry is None:
                    continue
                if kind == "exit":
                    entry[0].exit_seen(seen)  # the job's end, however late it is reaped
                self._deferred.append((key, kind))
                fired.append(fd)
            if fired and first:
                self._deferred_since = seen
            if self._poll.shared:
                self._disarmed.update(fired)
        if fired and first and not own:
            # The supervisor may be blocked in epoll_wait for events this thread has taken:
            # wake it, so that it waits for the burst's end (at most DEFER_AT_MOST) instead.
            poke(self._wake_w)

    def _sync(self, key: int, attempt: Attempt, registered: dict[int, str]) -> None:
        """Make the poll set hold what the attempt wants watched now (under the mutex)."""
        wanted = {} if attempt.finished else dict(attempt.fds())
        disarmed = self._disarmed
        for fd in [fd for fd in registered if fd not in wanted]:
            if fd in disarmed:
                # It fired and is reported no more; closing it (result()) takes it out of the
                # set: no system call here.
                disarmed.discard(fd)
            else:
                self._poll.unregister(fd)
            del registered[fd]
            self._fds.pop(fd, None)
        for fd, kind in wanted.items():
            if fd not in registered:
                registered[fd] = kind
                self._fds[fd] = (key, kind)
                self._poll.register(fd, once=True)
            elif fd in disarmed:
                disarmed.discard(fd)
                self._poll.rearm(fd)

    def _advance(self, key: int, now: float) -> None:
        entry = self._watched.get(key)
        if entry is None:
            return
        attempt, done, registered = entry
        until = attempt.advance(now)
        with self._mutex:
            self._sync(key, attempt, registered)
            if attempt.finished:
                del self._watched[key]
        if attempt.finished:
            self._next.pop(key, None)
            try:
                result = attempt.result()  # closes its descriptors: unregistered above
            except Exception as exc:  # an unreadable result must not take the loop down
                log.exception("reading the outcome of a run failed")
                result = AttemptResult(RunStatus.FAILED, None, 0.0, "", error=f"cronpy failed to run the job: {exc}")
            try:
                done(attempt, result)
            except Exception:
                log.exception("recording the end of a run failed")
            return
        if until is not None and self._next.get(key) != until:
            self._next[key] = until
            heapq.heappush(self._timers, (until, next(self._seq), key))
