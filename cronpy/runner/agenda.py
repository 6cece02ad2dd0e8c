"""The agenda: a heap of next instants, one entry per job (plus retries and chained runs).

Pure: no clock, no store, no processes. Only the job that fired has its next instant
computed, so taking what is due costs the same with 10 jobs or 10,000.
"""

from __future__ import annotations

import heapq
import itertools
import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Collection, Iterable

from cronpy.models import Cron, Every, JobSpec, Trigger
from cronpy.schedule import next_fire

# An instant found late by less than this (a busy machine, a slow tick) still fires; one
# further in the past was missed (downtime, suspend, a clock step) and is left to catch_up.
MISFIRE_GRACE = timedelta(seconds=10)

# The loop wakes this much before an instant and claims it (the history commit, the job lock),
# then waits for the instant itself to spawn: the child starts ~1 ms sooner, never early.
LEAD = timedelta(milliseconds=3)


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


class Agenda:
    """What is due when. Not thread-safe: the runner guards it with its own lock."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.heap: list[Due] = []
        self.anchors: dict[str, datetime] = {}  # an interval job's cadence
        self._seq = itertools.count()
        # Next instants of cron schedules after `_memo_after`, by (expression, zone, hash name):
        # the jobs due at one instant mostly share a few schedules, and each cron walk is
        # ~25 us (100 jobs every second: 2.5 ms a tick, 5% of the loop thread's CPU).
        self._memo_after: datetime | None = None
        self._memo: dict[tuple[str, str, str], datetime | None] = {}

    def seq(self) -> int:
        """A tie-breaker for entries due at the same instant (first pushed, first out)."""
        return next(self._seq)

    def push(self, when: datetime, job: str, trigger: Trigger, scheduled_for: datetime,
             attempt: int = 1, parent_id: int | None = None, *, late: bool = False) -> Due:
        due = Due(when, next(self._seq), job, trigger, scheduled_for, attempt, parent_id, late)
        heapq.heappush(self.heap, due)
        return due

    def schedule_next(self, spec: JobSpec, after: datetime) -> None:
        """Push the job's next instant strictly after `after`, keeping an interval's cadence."""
        sched = spec.schedule
        if isinstance(sched, Cron):
            if after != self._memo_after:
                self._memo_after, self._memo = after, {}
            # An `H` field hashes the job's name: such a schedule is its own.
            key = (sched.expr, spec.timezone, spec.name if "h" in sched.expr.lower() else "")
            if key in self._memo:
                nxt = self._memo[key]
            else:
                nxt = self._memo[key] = next_fire(spec, after)
        else:
            nxt = next_fire(spec, after, self.anchors.get(spec.name))
        if nxt is None:
            return
        if isinstance(spec.schedule, Every):
            self.anchors[spec.name] = nxt
        delay = self.rng.uniform(0, spec.jitter) if spec.jitter else 0.0
        self.push(nxt + timedelta(seconds=delay), spec.name, Trigger.SCHEDULE, nxt)

    def pop_due(self, horizon: datetime) -> list[Due]:
        """Take every entry due at or before `horizon`, soonest first."""
        out = []
        heap = self.heap
        while heap and heap[0].when <= horizon:
            out.append(heapq.heappop(heap))
        return out

    def next_wakeup(self) -> datetime | None:
        return self.heap[0].when if self.heap else None

    def upcoming(self, count: int) -> list[Due]:
        """The next `count` entries, soonest first, in O(count log count) whatever the number
        of jobs: walks the heap from its root."""
        heap = self.heap
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
        """Each job's earliest instant."""
        out: dict[str, datetime] = {}
        for d in self.heap:
            if d.job not in out or d.when < out[d.job]:
                out[d.job] = d.when
        return out

    def drop(self, gone: Collection[str], removed: Collection[str]) -> None:
        """Forget the scheduled entries of `gone` jobs (their retries stay) and everything of
        `removed` jobs (a reload)."""
        self.heap = [d for d in self.heap if not (d.job in gone and d.trigger is not Trigger.RETRY)
                     and d.job not in removed]
        heapq.heapify(self.heap)
        for name in removed:
            self.anchors.pop(name, None)

    def clear(self) -> int:
        """Forget everything (a step-down); return how many entries were dropped."""
        dropped = len(self.heap)
        self.heap.clear()
        self.anchors.clear()
        return dropped

    def extend(self, dues: Iterable[Due]) -> None:
        for d in dues:
            heapq.heappush(self.heap, d)
