"""The claimer: one durable commit per tick, before any spawn, with a typed result per run.

Exactly-once depends on the claim: a run starts only once its row is committed, or, on a
store without fencing (SQLite behind the scheduler's flock, where no other runner can claim),
when the store cannot be written at all: then it runs `Unrecorded` and the writer inserts its
row later. Never a magic id: a run without a row has no CRONPY_RUN_ID.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence, Union

from cronpy.errors import CronpyError, NotLeader
from cronpy.redact import cronpy_logger
from cronpy.store import NewRun
from cronpy.store import Store

log = cronpy_logger()

# How long a claim may wait for a store another process keeps busy (SQLite's write lock held
# by a `sqlite3` shell, a long prune) before the runner gives up and runs unrecorded: an
# every-second job must keep its cadence (gap <= 1.5 s) whatever holds the database, and
# ordinary contention (six `cronpy trigger`s writing at once) must not make a claim fail:
# 0.25 s did, under load, when triggers used it too (they wait 10 s now).
CLAIM_WAIT = 0.3


@dataclass(frozen=True)
class Claimed:
    """The run's row is committed: run it as `run_id`."""

    run_id: int


@dataclass(frozen=True)
class Taken:
    """Another runner claimed this instant: do not run it."""


@dataclass(frozen=True)
class Refused:
    """The store refused or could not take a fenced claim: do not run it (another host may)."""

    reason: str
    #: a fenced store said this runner no longer leads: stop scheduling
    lost_lead: bool = False


@dataclass(frozen=True)
class Unrecorded:
    """The store cannot be written but nobody else can claim (no fencing): run it now, the
    writer inserts its row when the store takes writes again."""

    reason: str


ClaimResult = Union[Claimed, Taken, Refused, Unrecorded]


class Claimer:
    """Claims through one store; says once, not every tick, when claims cannot be written."""

    def __init__(self, wait: float = CLAIM_WAIT) -> None:
        self.wait = wait
        self._failing = False

    def claim(self, store: Store, rows: Sequence[NewRun]) -> list[ClaimResult]:
        """Write `rows` in one transaction; one result per row, in order."""
        if not rows:
            return []
        try:
            # While the store is failing, one quick try a tick: enough to notice it is back.
            ids = store.start_runs(rows, wait=0.0 if self._failing else self.wait)
        except NotLeader as exc:
            # A fenced store refused the claim: another runner took the lease over while this
            # one was paused or cut off. It must not run anything it did not claim.
            log.warning("the store refused %d claim(s): %s", len(rows), exc)
            return [Refused(str(exc), lost_lead=True) for _ in rows]
        except CronpyError as exc:
            level = logging.DEBUG if self._failing else logging.ERROR
            self._failing = True
            if store.fenced:
                # Without a claim nothing proves this runner still owns the instants: another
                # host may be firing them. Skip them rather than risk a second run.
                log.log(level, "cannot claim %d due run(s) in the store, not running them: %s", len(rows), exc)
                return [Refused(str(exc)) for _ in rows]
            # The history cannot be written (disk full, locked, I/O error). This runner holds
            # the scheduler lock, so nobody else fires these instants: run them, record later.
            log.log(level, "HISTORY WRITE FAILED, running due runs unrecorded for now (said once until "
                    "claims are written again): %s", exc)
            return [Unrecorded(str(exc)) for _ in rows]
        if self._failing:
            self._failing = False
            log.warning("claims are written to the store again")
        return [Claimed(i) if i is not None else Taken() for i in ids]
