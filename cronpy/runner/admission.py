"""Admission: which due runs start now, wait, or are skipped (overlap, priority, slots).

A pure function of what is due and what runs: no clock, no store, no locks. The job locks
(another process's runs) are taken afterwards by the runner.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Collection, Mapping

from cronpy.models import JobSpec, Overlap
from cronpy.runner.agenda import Due

SKIP_RUNNING = "the previous run was still going (overlap: skip)"
SKIP_QUEUED = "a run was already queued (overlap: queue)"


@dataclass
class Admission:
    """The decision for one tick's candidates."""

    start: list[Due] = field(default_factory=list)  #: start now, in this order
    skipped: list[tuple[Due, str]] = field(default_factory=list)  #: recorded as skipped, with why
    queued: list[Due] = field(default_factory=list)  #: wait for the job's running run (overlap: queue)
    pending: list[Due] = field(default_factory=list)  #: wait for a free slot (max_concurrent)


def admit(candidates: list[Due], jobs: Mapping[str, JobSpec], running: Mapping[str, int],
          queued: Collection[str], slots: int) -> Admission:
    """Decide for `candidates` given the active runs per job (`running`), the jobs that already
    have a queued run, and the free slots. Higher priority first, then the earlier instant."""
    out = Admission()
    starting: set[str] = set()
    queueing: set[str] = set(queued)
    for d in sorted(candidates, key=lambda d: (-jobs[d.job].priority, d.when, d.seq)):
        spec = jobs[d.job]
        busy = running.get(d.job, 0) > 0 or d.job in starting
        if busy and spec.overlap is Overlap.SKIP:
            out.skipped.append((d, SKIP_RUNNING))
            continue
        if busy and spec.overlap is Overlap.QUEUE:
            if d.job in queueing:
                out.skipped.append((d, SKIP_QUEUED))
            else:
                queueing.add(d.job)
                out.queued.append(d)
            continue
        if slots <= 0:
            out.pending.append(d)
            continue
        out.start.append(d)
        starting.add(d.job)
        slots -= 1
    return out
