"""While the loop spawns a burst, the supervisor puts its work off (runner.burst): what a user
sees must not change. Durations stay the jobs' own, timeouts are applied on time, and nothing
waits for a burst longer than DEFER_AT_MOST. Real processes, real pidfds."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import pid_gone, wait_for

from cronpy.executor import Attempt, AttemptResult, RunContext
from cronpy.models import JobSpec, RunStatus
from cronpy.runner import supervisor as supervisor_module
from cronpy.runner.burst import Burst
from cronpy.runner.supervisor import Supervisor


@pytest.fixture
def burst() -> Burst:
    return Burst()


@pytest.fixture
def watcher(burst: Burst):  # type: ignore[no-untyped-def]
    sup = Supervisor(burst)
    yield sup
    burst.end()
    sup.close()


def watch(sup: Supervisor, spec: JobSpec) -> tuple[Attempt, list[AttemptResult]]:
    done: list[AttemptResult] = []
    attempt = Attempt(spec, RunContext(spec.name, 1, None, 1, "schedule"))
    assert attempt.pid is not None, attempt.start_error
    sup.watch(attempt, lambda _, result: done.append(result))
    return attempt, done


def test_a_run_that_ends_during_a_burst_is_recorded_with_its_own_duration(
        watcher: Supervisor, burst: Burst, monkeypatch) -> None:
    monkeypatch.setattr(supervisor_module, "DEFER_AT_MOST", 30.0)  # only the burst's end counts
    burst.begin()
    attempt, done = watch(watcher, JobSpec(name="quick", command=["true"]))
    assert attempt.pid is not None
    assert wait_for(lambda: pid_gone(attempt.pid), timeout=10)
    watcher.collect()  # the spawning loop looks between its spawns
    # Its outcome waits for the burst (half a second here) ...
    assert not wait_for(lambda: bool(done), timeout=0.5)
    burst.end()
    assert wait_for(lambda: bool(done), timeout=10)
    # ... but its duration ends where its exit was seen, not where it was handled.
    assert done[0].status is RunStatus.SUCCESS
    assert done[0].duration < 0.25, done[0].duration


def test_a_timeout_is_applied_on_time_during_a_burst(watcher: Supervisor, burst: Burst, tmp_path: Path,
                                                    monkeypatch) -> None:
    monkeypatch.setattr(supervisor_module, "DEFER_AT_MOST", 30.0)
    burst.begin()
    pidfile = tmp_path / "pid"
    spec = JobSpec(name="slow", command=f"echo $$ > {pidfile}; exec sleep 30", timeout=0.5, kill_grace=1.0)
    _, done = watch(watcher, spec)
    assert wait_for(lambda: pidfile.exists() and pidfile.read_text().strip() != "", timeout=10)
    pid = int(pidfile.read_text())
    # Terminated at its timeout while the burst goes on (one that lasted 30 s would not be).
    assert wait_for(lambda: pid_gone(pid), timeout=5)
    burst.end()
    assert wait_for(lambda: bool(done), timeout=10)
    assert done[0].status is RunStatus.TIMEOUT


def test_no_outcome_waits_for_a_burst_longer_than_the_bound(watcher: Supervisor, burst: Burst) -> None:
    # A burst that never ends (10,000 due jobs take seconds to spawn): outcomes come anyway.
    burst.begin()
    attempts = [watch(watcher, JobSpec(name=f"j{i}", command=["true"])) for i in range(20)]
    watcher.collect()
    assert wait_for(lambda: all(done for _, done in attempts), timeout=10)
    assert burst.on
    assert all(done[0].status is RunStatus.SUCCESS and done[0].duration < 1.0 for _, done in attempts)


def test_every_outcome_of_a_burst_is_recorded_with_nothing_else_happening(state_dir: Path) -> None:
    # The loop takes the exits it notes between spawns off the supervisor's epoll set: the
    # supervisor must still learn of them when nothing else will wake it (no later run, no
    # timer). Before the fix, 2 of 3 such tests left a burst's last runs `running` for good.
    from datetime import datetime, timezone

    from conftest import jobset

    from cronpy.clock import FakeClock
    from cronpy.locks import Locks
    from cronpy.runner import Runner
    from cronpy.store.sqlite import SqliteStore

    jobs = jobset("max_concurrent: 200\njobs:\n" + "".join(
        f"  j{i:02d}: {{schedule: '* * * * * *', command: ['true'], overlap: allow}}\n" for i in range(100)))
    clock = FakeClock(datetime(2026, 5, 4, 10, 0, 0, tzinfo=timezone.utc))
    history = SqliteStore.open(state_dir)
    runner = Runner(jobs, history, Locks(state_dir), clock, state_dir=state_dir)
    try:
        runner.start(clock.now())
        for _ in range(15):
            when = runner.next_wakeup()
            assert when is not None
            clock.set(when)
            assert len(runner.tick(when)) == 100
            assert runner.wait_idle(10), f"{runner.active_count} runs never seen to end"
        assert history.stats()[0].runs == 15
        assert not [r for r in history.query(None, limit=None) if r.status is not RunStatus.SUCCESS]
    finally:
        runner.shutdown(0)
        runner.close()
        history.close()


def test_a_run_with_a_timeout_that_ends_during_a_burst_keeps_its_own_duration(
        watcher: Supervisor, burst: Burst, monkeypatch) -> None:
    # A run with a timeout needs the supervisor's first look (its deadline), which waits for
    # the burst: its exit must still be seen when it happens, not at that look.
    monkeypatch.setattr(supervisor_module, "DEFER_AT_MOST", 30.0)
    _, first = watch(watcher, JobSpec(name="first", command=["true"]))
    burst.begin()
    assert wait_for(lambda: (watcher.collect() or True) and bool(watcher._deferred), timeout=10)
    attempt, done = watch(watcher, JobSpec(name="timed", command=["true"], timeout=60))
    assert attempt.pid is not None
    assert wait_for(lambda: pid_gone(attempt.pid), timeout=10)
    watcher.collect()
    assert not wait_for(lambda: bool(done), timeout=0.5)  # the supervisor waits for the burst
    burst.end()
    assert wait_for(lambda: bool(done) and bool(first), timeout=10)
    assert done[0].status is RunStatus.SUCCESS and done[0].duration < 0.25, done[0].duration
