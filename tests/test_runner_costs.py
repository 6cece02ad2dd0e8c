"""What the runner's own work costs per run (issue #12's figures), checked with real processes,
real SQLite and real files: how often it commits, what it leaves on disk, what it wakes."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Sequence

from conftest import jobset, wait_for

from cronpy.clock import FakeClock
from cronpy.locks import Locks
from cronpy.models import Finish, RunStatus
from cronpy.runner import Runner
from cronpy.store.sqlite import SqliteStore

UTC = timezone.utc
T0 = datetime(2026, 5, 4, 9, 59, 30, tzinfo=UTC)


class CountingStore(SqliteStore):
    """SQLite as it is, counting the transactions that write outcomes."""

    finish_commits = 0

    def finish_runs(self, items: Sequence[Finish]) -> None:
        super().finish_runs(items)
        type(self).finish_commits += 1


def test_a_bursts_outcomes_share_commits_even_when_every_run_printed(state_dir: Path) -> None:
    # Each run that prints has an output file to settle after its outcome. Queued between the
    # outcomes, those settles split the writer's groups: one commit (an fsync) per run, 0.27 ms
    # of the writer's CPU each at 100 runs a second, against 0.04 ms a row grouped.
    n = 40
    jobs = jobset("max_concurrent: 100\njobs:\n" + "".join(
        f"  j{i:02d}: {{schedule: '0 10 * * *', command: 'echo out{i}'}}\n" for i in range(n)))
    clock = FakeClock(T0)
    history = CountingStore.open(state_dir)
    writer = CountingStore.open(state_dir)
    runner = Runner(jobs, history, Locks(state_dir), clock, writer=writer, state_dir=state_dir)
    try:
        runner.start(clock.now())
        when = runner.next_wakeup()
        assert when is not None
        clock.set(when)
        # Every child ends (and its outcome is queued) before the writer takes the first one.
        with writer._lock:
            assert len(runner.tick(when)) == n
            assert wait_for(lambda: runner.active_count == 0, timeout=20)
        CountingStore.finish_commits = 0
        assert runner.wait_idle(20)
        # The writer's first batch (taken before the lock was let go) and the rest, each split
        # at most once by the burst's pid update: 4 commits at most, not one per run.
        assert CountingStore.finish_commits <= 4, CountingStore.finish_commits
        rows = history.query(None, limit=None, with_output=True)
        assert sorted(r.output for r in rows) == sorted(f"out{i}\n" for i in range(n))
        assert all(r.status is RunStatus.SUCCESS for r in rows)
        # Settled after its outcome: the live file is gone (no `output: keep`).
        assert not list((state_dir / "output").rglob("*.log"))
    finally:
        runner.shutdown(0)
        runner.close()
        history.close()
        writer.close()
