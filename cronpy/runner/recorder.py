"""The store writer: pids, outcomes and late rows, off the critical path, in order.

One thread takes what the runner queued and commits it in groups (one transaction for every
outcome waiting, Store.finish_runs): a store that cannot be written (disk full, a held lock,
a database away) delays the record, never a spawn, a timeout, a cancel or output draining.
Failed commits are retried for as long as the process lives, on the one retry policy of the
store (cronpy.store.retry.WRITE: 0.1 s doubling to 2 s between tries); everything is
written, in the order it happened, once the store takes writes again.

The buffer is bounded (MAX_PENDING items, MAX_OUTPUT_BYTES of kept output; the environment
variable CRONPY_HISTORY_BUFFER="ITEMS[,BYTES]" sets smaller or larger bounds). When the item
bound is reached, waiting pid updates are dropped first (a pid is only for `status`); when the
output budget is spent, further outcomes are kept without their output (marked so); when the
buffer holds nothing but outcomes, new outcomes are dropped (each is still in the runner's log
line for that run). Calls (a job lock's release, an output file's housekeeping) are never
dropped. Each of the three losses is logged once per outage, not per run, and the line that
says the writes resumed (or caught up) counts what was dropped.
"""

from __future__ import annotations

import collections
import os
import threading
import time
from typing import Any, Callable, Deque, NamedTuple, Union

from cronpy.errors import CronpyError, UsageError
from cronpy.redact import cronpy_logger
from cronpy.store import NewRun
from cronpy.models import Finish, RunStatus
from cronpy.store import Store
from cronpy.runner.burst import WRITE_AT_MOST, Burst
from cronpy.store.retry import WRITE, RetryPolicy

log = cronpy_logger()

MAX_PENDING = 50_000  # ~25 MB of outcomes without output: hours of an outage at 1 run/s
MAX_OUTPUT_BYTES = 32 * 1024 * 1024  # 512 full 64 KiB tails
GROUP = 500  # rows a commit at most: a commit stays short for the readers waiting behind it
# After the first write arrives, wait this long for more before committing: the outcomes of a
# tick's runs end within milliseconds of each other, and one commit for all of them costs a
# fraction of one each (0.045 ms against 0.19-0.40 ms a row, issue #12).
LINGER = 0.02
OUTPUT_DROPPED = "[output not kept: the history was unwritable and its buffer full]"
BUFFER_ENV = "CRONPY_HISTORY_BUFFER"


def buffer_bounds(environ: "os._Environ[str] | dict[str, str] | None" = None) -> tuple[int, int]:
    """(items, output bytes) the writer may keep waiting: CRONPY_HISTORY_BUFFER="ITEMS[,BYTES]",
    else MAX_PENDING and MAX_OUTPUT_BYTES. ConfigError (exit 2) naming the variable if malformed."""
    raw = (os.environ if environ is None else environ).get(BUFFER_ENV, "").strip()
    if not raw:
        return MAX_PENDING, MAX_OUTPUT_BYTES
    parts = raw.split(",")
    try:
        items = int(parts[0])
        size = int(parts[1]) if len(parts) > 1 else MAX_OUTPUT_BYTES
        if len(parts) > 2 or items < 1 or size < 0:
            raise ValueError
    except ValueError:
        raise UsageError(f"${BUFFER_ENV}: {raw!r} is not ITEMS[,BYTES] (a positive count of "
                          "writes, then a byte count of output)") from None
    return items, size


# What the writer is given: tuples (cheaper to build than frozen dataclasses: one of each a run).

class Pids(NamedTuple):
    pairs: tuple[tuple[int, int], ...]  # (run id, pid)


class Outcome(NamedTuple):
    """A run's outcome. `cancelled_if_asked`: it died by a signal, which may have been
    `cronpy cancel` from outside (it signals the group): written as cancelled if one was asked."""

    finish: Finish
    cancelled_if_asked: bool = False
    #: file work that must follow the outcome (settling the run's output file), done by the
    #: writer once the outcome is committed. Queued as a Call of its own it would split the
    #: outcomes' group: one commit per run (0.27 ms of CPU each, against 0.04 ms a row grouped).
    then: Callable[[], None] | None = None


class Late(NamedTuple):
    """A run that ran unrecorded (its claim could not be written): its row, then its outcome
    (None: a skipped row, complete in itself)."""

    row: NewRun
    outcome: Finish | None = None  # run_id is filled in once the row exists


class Call(NamedTuple):
    """Something else to do on the store, in order (a fleet job lock's release)."""

    what: str
    call: Callable[[], None]


Item = Union[Pids, Outcome, Late, Call]


class Recorder:
    """Queue writes with put(); a thread commits them (see the module docstring)."""

    def __init__(self, store: Store, clock: Callable[[], float] = time.monotonic, *,
                 max_pending: int | None = None, max_output_bytes: int | None = None,
                 retry: RetryPolicy | None = None, burst: Burst | None = None) -> None:
        """`max_pending`/`max_output_bytes`: the buffer's bounds (default: buffer_bounds());
        `retry`: the waits between tries of a failing store (default: retry.WRITE); `burst`:
        the runner's spawn bursts, which commits wait for (at most WRITE_AT_MOST seconds)."""
        self.store = store
        self._burst = burst
        self._now = clock
        default_items, default_bytes = buffer_bounds()
        self.max_pending = default_items if max_pending is None else max_pending
        self.max_output_bytes = default_bytes if max_output_bytes is None else max_output_bytes
        self._retry = retry or WRITE
        self._items: Deque[tuple[float, Item]] = collections.deque()  # (queued at, item)
        self._cond = threading.Condition()
        self._busy = False  # a batch is being written
        self._inflight = 0  # items at the head of the queue being written: never dropped
        self._error: str | None = None  # the last write's error, for the one log line
        self._output_bytes = 0
        self._failing_since: float | None = None
        # What the bounds cost during this outage, each said once (see the module docstring).
        self._said_pids = self._said_output = self._said_full = False
        self._dropped_pids = self._stripped = self._dropped = 0
        self._stop = False
        self._thread = threading.Thread(target=self._loop, name="store-writer", daemon=True)
        self._thread.start()

    # -- the runner's side (never blocks on the store) -----------------------------------------

    def put(self, item: Item) -> None:
        """Queue `item` to be written in order; never blocks on the store, never raises. When
        the buffer is full, what is dropped follows the module docstring."""
        with self._cond:
            if len(self._items) >= self.max_pending:
                if not self._make_room(item):
                    if isinstance(item, Outcome) and item.then is not None:
                        # The outcome is lost, its output file's housekeeping is not (as a Call).
                        self._items.append((self._now(), Call(f"run {item.finish.run_id}: settling the output file",
                                                              item.then)))
                    return
            if isinstance(item, (Outcome, Late)):
                item = self._within_output_budget(item)
            self._items.append((self._now(), item))
            # Only an empty queue has the writer waiting for its first item (or a full group
            # ending its linger early): a notify per item woke it for every outcome of a burst
            # (2.3 context switches a run at 100 runs a second; 0.1 after).
            # notify_all: flush() may wait on the same condition, and must not take the wake-up.
            if len(self._items) == 1 or len(self._items) == GROUP:
                self._cond.notify_all()

    def _make_room(self, item: Item) -> bool:
        """The buffer is full: drop a waiting pid update (or `item` itself if it is one) to make
        room, else drop `item`; a Call is kept over the bound (a job lock's release, an output
        file's housekeeping: dropping one would hold the lock or the file forever). Each kind of
        loss is logged once per outage."""
        victim = None if isinstance(item, Pids) else next(
            (i for i, (_, queued) in enumerate(self._items) if i >= self._inflight and isinstance(queued, Pids)), None)
        if isinstance(item, Pids) or victim is not None:
            if victim is not None:
                del self._items[victim]
            self._dropped_pids += 1
            if not self._said_pids:
                self._said_pids = True
                log.error("the history buffer is full (%d writes waiting for the store): pid updates are "
                          "dropped first", len(self._items))
            return victim is not None or isinstance(item, Call)
        if isinstance(item, Call):
            return True
        self._dropped += 1
        if not self._said_full:
            self._said_full = True
            log.critical("the history buffer is full (%d writes waiting for the store): new outcomes are "
                         "not recorded until it drains; each is still in this log", len(self._items))
        return False

    def _within_output_budget(self, item: Outcome | Late) -> Outcome | Late:
        outcome = _finish_of(item)
        if outcome is None or not outcome.output:
            return item
        size = len(outcome.output)
        if self._output_bytes + size <= self.max_output_bytes:
            self._output_bytes += size
            return item
        self._stripped += 1
        if not self._said_output:
            self._said_output = True
            log.error("the history buffer holds %d bytes of output waiting for the store: outcomes are "
                      "now kept without their output until it drains", self._output_bytes)
        stripped = outcome._replace(output=OUTPUT_DROPPED)
        return item._replace(outcome=stripped) if isinstance(item, Late) else item._replace(finish=stripped)

    def backlog(self) -> tuple[int, float | None, float | None]:
        """(writes waiting, age in seconds of the oldest, seconds the store has been failing)."""
        with self._cond:
            now = self._now()
            pending = len(self._items) + (1 if self._busy else 0)
            oldest = now - self._items[0][0] if self._items else None
            failing = now - self._failing_since if self._failing_since is not None else None
            return pending, oldest, failing

    def flush(self, timeout: float) -> bool:
        """Wait until everything queued is written; False if `timeout` seconds passed first."""
        end = self._now() + timeout
        with self._cond:
            while self._items or self._busy:
                remaining = end - self._now()
                if remaining <= 0:
                    return False
                self._cond.wait(min(remaining, 0.1))
        return True

    def close(self, timeout: float) -> bool:
        """Flush (up to `timeout` seconds), then stop the thread. False if writes were left."""
        done = self.flush(timeout)
        with self._cond:
            self._stop = True
            left = len(self._items)
            self._cond.notify_all()
        if not done:
            log.critical("stopping with %d history write(s) not done (the store is unwritable); "
                         "their outcomes are only in this log", left)
        self._thread.join(1.0)
        return done

    # -- the writer thread ---------------------------------------------------------------------

    def _loop(self) -> None:
        waits = self._retry.delays()
        while True:
            with self._cond:
                while not self._items and not self._stop:
                    self._cond.wait()
                linger_until = time.monotonic() + LINGER
                while not self._stop and self._failing_since is None and len(self._items) < GROUP:
                    left = linger_until - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
                burst = self._burst if not self._stop and self._failing_since is None else None
            if burst is not None and burst.on:
                # The loop is spawning a burst: commit after it (a commit's every statement
                # hands the GIL to the loop and back, see runner.burst).
                burst.wait_over(WRITE_AT_MOST)
            with self._cond:
                if self._stop and (not self._items or self._failing_since is not None):
                    return
                batch = [item for _, item in list(self._items)[:GROUP]]
                self._busy = True
                self._inflight = len(batch)
            error: Exception | None = None
            try:
                done = self._write(batch)
            except Exception as exc:  # a bug must not kill the writer: log, retry later
                log.exception("history writer: unexpected error")
                done, error = 0, exc
            with self._cond:
                for _ in range(done):
                    _, item = self._items.popleft()
                    if isinstance(item, (Outcome, Late)):
                        outcome = _finish_of(item)
                        if outcome is not None and outcome.output:
                            self._output_bytes -= len(outcome.output)
                self._busy = False
                self._inflight = 0
                self._cond.notify_all()
                failing = done < len(batch)
                if failing and self._failing_since is None:
                    self._failing_since = self._now()
                    log.error("HISTORY WRITE FAILED, keeping %d write(s) to retry until the store takes "
                              "writes again (runs go on): %s", len(self._items), self._error or error)
                elif not failing and not self._items and (
                        self._failing_since is not None or self._dropped or self._stripped or self._dropped_pids):
                    # Said also when no write failed outright: a store that only made each write
                    # wait (SQLite's busy_timeout) fills the buffer just the same.
                    lost = [f"{n} {what}" for n, what in ((self._dropped, "outcome(s) dropped"),
                                                          (self._stripped, "output(s) not kept"),
                                                          (self._dropped_pids, "pid update(s) dropped")) if n]
                    log.warning("history writes %s; everything waiting has been written%s",
                                "caught up" if self._failing_since is None else
                                f"resumed after {self._now() - self._failing_since:.1f}s",
                                f" except: {', '.join(lost)} while the buffer was full" if lost else "")
                    self._failing_since = None
                    self._said_pids = self._said_output = self._said_full = False
                    self._dropped_pids = self._stripped = self._dropped = 0
                if self._stop and failing:
                    return
            if failing:
                with self._cond:
                    self._cond.wait_for(lambda: self._stop, timeout=next(waits))
            else:
                waits = self._retry.delays()

    def _write(self, batch: list[Item]) -> int:
        """Write a prefix of `batch`, grouping consecutive items of a kind; return how many
        items were written (fewer than all when the store failed)."""
        written = 0
        i = 0
        while i < len(batch):
            kind = type(batch[i])
            j = i
            while j < len(batch) and type(batch[j]) is kind and kind in (Pids, Outcome):
                j += 1
            j = max(j, i + 1)
            group = batch[i:j]
            try:
                self._write_group(group, i)
            except CronpyError as exc:
                self._error = str(exc)
                return written
            written += len(group)
            i = j
        return written

    def _write_group(self, group: list[Any], index: int) -> None:
        first = group[0]
        if isinstance(first, Pids):
            self.store.set_pids([p for item in group for p in item.pairs])
        elif isinstance(first, Outcome):
            self.store.finish_runs([self._resolve(item) for item in group])
            for item in group:
                if item.then is not None:
                    try:
                        item.then()
                    except Exception as exc:  # file work: said, never retried (the outcome is in)
                        log.error("%s: after recording run %d: %s", type(exc).__name__, item.finish.run_id, exc)
        elif isinstance(first, Late):
            (run_id,) = self.store.start_runs([first.row])
            if run_id is None:
                log.error("%s: instant %s was claimed by another runner while history was failing",
                          first.row.job, first.row.scheduled_for.isoformat() if first.row.scheduled_for else "?")
            elif first.outcome is not None:
                outcome = first.outcome._replace(run_id=run_id)
                try:
                    self.store.finish_runs([outcome])
                except CronpyError:
                    # The row exists now: what is left to write is its outcome, not the row
                    # (inserting it again would find its instant claimed).
                    with self._cond:
                        queued_at, _ = self._items[index]
                        self._items[index] = (queued_at, Outcome(outcome))
                    raise
        elif isinstance(first, Call):
            try:
                first.call()
            except CronpyError:
                raise  # the store: retried with the rest
            except Exception as exc:  # anything else is not retried: said, and dropped
                log.error("%s failed: %s", first.what, exc)

    def _resolve(self, item: Outcome) -> Finish:
        if item.cancelled_if_asked and self.store.cancel_requested(item.finish.run_id):
            return item.finish._replace(status=RunStatus.CANCELLED, error=CANCELLED_ERROR)
        return item.finish


CANCELLED_ERROR = "cancelled by `cronpy cancel`"


def _finish_of(item: Outcome | Late) -> Finish | None:
    return item.outcome if isinstance(item, Late) else item.finish
