"""The supervisor: one thread watches every running attempt, instead of a thread per run.

It waits (epoll) on each child's pidfd and output pipe plus one eventfd that wakes it for a
new attempt or a cancel, and on the nearest deadline (a timeout, a kill grace, the end of a
drain). A child's exit is seen when its pidfd fires, so the recorded duration is the job's
own. It never touches a store: when an attempt is over it hands the outcome to `done` (the
runner's callback, which only queues it) and goes on watching the others.

Where there is no pidfd (not Linux 5.3+), exits are polled every POLL_WITHOUT_PIDFD seconds
(one waitpid per running job, 20 times a second) instead of being signalled.
"""

from __future__ import annotations

import heapq
import itertools
import os
import selectors
import threading
import time
from typing import Callable

from cronpy.executor import Attempt, AttemptResult, drain_wake, poke, wake_fds
from cronpy.models import RunStatus
from cronpy.redact import cronpy_logger

log = cronpy_logger()

Done = Callable[[Attempt, AttemptResult], None]


class Supervisor:
    """Watch attempts to their end; see the module docstring. Thread-safe: watch() and the
    attempts' cancel() may be called from any thread."""

    def __init__(self) -> None:
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = wake_fds()
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)
        self._mutex = threading.Lock()
        self._incoming: list[tuple[Attempt, Done]] = []
        self._touched: set[int] = set()  # attempts to advance at the next wake-up (a cancel)
        self._watched: dict[int, tuple[Attempt, Done, dict[int, str]]] = {}  # by id(attempt)
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
        with self._mutex:
            self._incoming.append((attempt, done))
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
                with self._mutex:
                    incoming, self._incoming = self._incoming, []
                    touched, self._touched = self._touched, set()
                    if self._closed and not self._watched and not incoming:
                        break
                for attempt, done in incoming:
                    self._watched[id(attempt)] = (attempt, done, {})
                    touched.add(id(attempt))
                now = time.monotonic()
                while self._timers and self._timers[0][0] <= now:
                    _, _, key = heapq.heappop(self._timers)
                    touched.add(key)
                for key in touched:
                    self._advance(key, now)
                timeout = None
                if self._timers:
                    timeout = max(0.0, self._timers[0][0] - time.monotonic())
                touched = set()
                for sel_key, _ in self._sel.select(timeout):
                    if sel_key.data is None:
                        drain_wake(self._wake_r)
                        continue
                    key, kind = sel_key.data
                    entry = self._watched.get(key)
                    if entry is not None:
                        entry[0].on_ready(kind)
                        touched.add(key)
                now = time.monotonic()
                for key in touched:
                    self._advance(key, now)
        except Exception:  # never silently: a dead supervisor would leave every run unwatched
            log.critical("the supervisor loop failed", exc_info=True)
            raise
        finally:
            self._sel.close()
            for fd in {self._wake_r, self._wake_w}:
                try:
                    os.close(fd)
                except OSError:
                    pass

    def _advance(self, key: int, now: float) -> None:
        entry = self._watched.get(key)
        if entry is None:
            return
        attempt, done, registered = entry
        until = attempt.advance(now)
        wanted = {} if attempt.finished else dict(attempt.fds())
        for fd in [fd for fd in registered if fd not in wanted]:
            self._sel.unregister(fd)
            del registered[fd]
        for fd, kind in wanted.items():
            if fd not in registered:
                self._sel.register(fd, selectors.EVENT_READ, (key, kind))
                registered[fd] = kind
        if attempt.finished:
            del self._watched[key]
            self._next.pop(key, None)
            try:
                result = attempt.result()
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
