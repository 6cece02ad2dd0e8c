"""The PostgreSQL store: the leader lease, fencing in the database, job locks across hosts.

Each PgStore stands for one host. "Stops renewing" (its keeper thread stopped) is how a
paused or cut-off leader looks to everyone else; the real-process version of the same
story, with SIGSTOP and kill -9, is tests/test_fleet.py.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timedelta, timezone
from pathlib import Path

import psycopg
import pytest
from conftest import cronpy, jobset, wait_for

from cronpy.clock import FakeClock
from cronpy.errors import LockHeld, NotLeader
from cronpy.models import RunStatus, Trigger
from cronpy.store.postgres import PgStore, redact
from cronpy.runner import Runner

UTC = timezone.utc
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def hosts(pg_url: str):
    """Make PgStores on one database, each standing for a host; all closed afterwards."""
    made: list[PgStore] = []

    def make(lease: float = 1.0) -> PgStore:
        s = PgStore(pg_url, lease=lease)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


def stop_renewing(store: PgStore) -> None:
    """What a SIGSTOPped, frozen or partitioned host looks like from the database."""
    store.coord.stop_keeper()


def test_a_standby_takes_the_lease_only_once_it_has_expired_and_with_a_new_epoch(hosts) -> None:
    a, b = hosts(), hosts()
    assert a.leadership.try_acquire()
    first = a.leadership.epoch
    assert not b.leadership.try_acquire()
    holder = b.leadership.holder()
    assert holder is not None and (holder.pid, holder.epoch) == (os.getpid(), first)
    # a renews every third of its 1 s lease: b stays a standby for several lease lengths.
    assert not wait_for(b.leadership.try_acquire, timeout=2.5, interval=0.1)
    assert a.leadership.valid()
    stop_renewing(a)
    assert wait_for(b.leadership.try_acquire, timeout=5)
    assert b.leadership.epoch == first + 1  # type: ignore[operator]
    assert wait_for(lambda: not a.leadership.valid(), timeout=2)


def test_the_database_refuses_a_claim_from_a_stale_epoch_whatever_the_client_believes(hosts, pg_url) -> None:
    a, b = hosts(), hosts()
    assert a.leadership.try_acquire()
    stale = a.leadership.epoch
    assert a.start_run("billing", Trigger.SCHEDULE, T0, scheduled_for=T0) is not None
    stop_renewing(a)
    assert wait_for(b.leadership.try_acquire, timeout=5)
    nxt = T0 + timedelta(minutes=1)
    # a wakes up still holding its old epoch (as after SIGCONT): the claim is refused...
    a.leadership.deadline = float("inf")  # its own clock says it still leads; the database decides
    with pytest.raises(NotLeader, match="does not hold the leader lease"):
        a.start_run("billing", Trigger.SCHEDULE, nxt, scheduled_for=nxt)
    # ...even written by hand, outside cronpy: the fence is a trigger in the database.
    with psycopg.connect(pg_url, autocommit=True) as conn:
        with pytest.raises(psycopg.Error, match="does not hold the leader lease"):
            conn.execute("INSERT INTO cronpy.runs (job, status, trigger, started_at, scheduled_for, epoch)"
                         " VALUES ('billing', 'running', 'schedule', now(), %s, %s)", (nxt, stale))
    # The new leader owns the instant; runs that are not claims (a manual run) need no lease.
    assert b.start_run("billing", Trigger.SCHEDULE, nxt, scheduled_for=nxt) is not None
    assert a.start_run("billing", Trigger.MANUAL, nxt) is not None
    assert [r.scheduled_for for r in b.query("billing") if r.trigger is Trigger.SCHEDULE] == [nxt, T0]


def test_a_released_lease_is_taken_over_at_once(hosts) -> None:
    a, b = hosts(lease=30), hosts(lease=30)
    assert a.leadership.try_acquire()
    assert not b.leadership.try_acquire()
    a.leadership.release()
    assert b.leadership.try_acquire()  # not 30 s later


def test_job_locks_are_shared_by_every_host_name_their_holder_and_expire_with_it(hosts) -> None:
    a, b = hosts(), hosts()
    a.locks.job("backup").acquire(run_id=7)
    with pytest.raises(LockHeld, match=r"job 'backup' is already running elsewhere \(held by pid \d+ on .*, run 7\)"):
        b.locks.job("backup").acquire()
    a.locks.job("backup").release()
    b.locks.job("backup").acquire()
    assert b.locks.job("backup").held
    # b holds it and keeps renewing past its 1 s expiry...
    with pytest.raises(LockHeld):
        a.locks.job("backup").acquire(wait=2.0)
    # ...until it stops (a dead host): the row expires and another host gets the lock.
    stop_renewing(b)
    a.locks.job("backup").acquire(wait=5.0)
    assert a.locks.job("backup").held


def test_a_runner_whose_claim_is_refused_steps_down_and_runs_nothing(hosts, tmp_path: Path) -> None:
    jobs = jobset("jobs:\n  tick: {schedule: '* * * * *', command: 'true'}\n", base_dir=tmp_path)
    a, b = hosts(), hosts()
    assert a.leadership.try_acquire()
    clock = FakeClock(T0 + timedelta(seconds=30))
    runner = Runner(jobs, a, a.locks, clock)
    runner.start(clock.now())
    when = runner.next_wakeup()
    assert when == T0 + timedelta(minutes=1)
    clock.set(when)
    assert runner.tick(when)
    assert runner.wait_idle(10)
    # a pauses past its lease; b takes over.
    stop_renewing(a)
    assert wait_for(b.leadership.try_acquire, timeout=5)
    nxt = runner.next_wakeup()
    assert nxt is not None
    clock.set(nxt)
    assert runner.tick(nxt) == []  # the store refused the claim: nothing ran
    assert runner.run_forever(leading=lambda: True) is False  # stepped down, not stopped
    assert runner.next_wakeup() is None
    assert b.start_run("tick", Trigger.SCHEDULE, nxt, scheduled_for=nxt) is not None  # b owns it
    assert [(r.status, r.scheduled_for) for r in b.query("tick") if r.trigger is Trigger.SCHEDULE] == [
        (RunStatus.RUNNING, nxt), (RunStatus.SUCCESS, when)]


def test_trigger_on_another_host_respects_the_job_lock_and_records_in_the_fleet_store(hosts, jobs_file) -> None:
    holder = hosts(lease=30)
    path = jobs_file("jobs:\n  backup: {command: 'echo dumped'}\n")
    store = ["--store", holder.url]
    holder.locks.job("backup").acquire(run_id=41)
    refused = cronpy("trigger", "backup", "-f", str(path), *store)
    assert refused.returncode == 75
    assert "job 'backup' is already running elsewhere (held by pid" in refused.stderr and "run 41" in refused.stderr
    holder.locks.job("backup").release()
    done = cronpy("trigger", "backup", "-f", str(path), *store)
    assert done.returncode == 0, done.stderr
    assert "dumped" in done.stdout
    listed = cronpy("history", "backup", "-f", str(path), *store, "--json")
    assert listed.returncode == 0, listed.stderr
    (run,) = json.loads(listed.stdout)
    assert (run["status"], run["trigger"]) == ("success", "manual")
    assert holder.get(run["id"]).output == "dumped\n"
    shown = json.loads(cronpy("show", str(run["id"]), "-f", str(path), *store, "--json").stdout)
    assert (shown["job"], shown["output"], shown["exit_code"]) == ("backup", "dumped\n", 0)
    (stats,) = json.loads(cronpy("stats", "-f", str(path), *store, "--json").stdout)
    assert (stats["job"], stats["runs"], stats["successes"]) == ("backup", 1, 1)
    # The same commands find the store through $CRONPY_STORE.
    via_env = cronpy("history", "backup", "-f", str(path), "--json", env={"CRONPY_STORE": holder.url})
    assert [r["id"] for r in json.loads(via_env.stdout)] == [run["id"]]


def test_a_password_never_reaches_a_message() -> None:
    assert redact("postgresql://cronpy:s3cret@db:5432/x") == "postgresql://cronpy:***@db:5432/x"
    assert redact("postgresql://cronpy@db/x") == "postgresql://cronpy@db/x"


def test_cancel_from_any_host_is_carried_out_by_the_runs_own_runner(hosts, tmp_path: Path) -> None:
    from conftest import pid_gone

    path = tmp_path / "jobs.yaml"
    path.write_text("jobs:\n  long: {schedule: '* * * * *', command: 'sleep 30'}\n")
    owner = hosts(lease=1)
    assert owner.leadership.try_acquire()
    runner = Runner(jobset(path.read_text(), base_dir=tmp_path), owner, owner.locks, FakeClock(T0 + timedelta(seconds=30)))
    owner.watch(on_cancel=runner.cancel_run)
    runner.start(runner.clock.now())
    when = runner.next_wakeup()
    assert when is not None
    runner.clock.set(when)  # type: ignore[attr-defined]
    (run_id,) = runner.tick(when)
    assert wait_for(lambda: owner.get(run_id).pid is not None)
    pid = owner.get(run_id).pid
    out = cronpy("cancel", "long", "-f", str(path), "--store", owner.url)
    assert out.returncode == 0, out.stderr
    assert f"cancelled run {run_id} of long on " in out.stdout and "(it ended cancelled)" in out.stdout
    assert runner.wait_idle(10)
    assert owner.get(run_id).status is RunStatus.CANCELLED
    assert pid_gone(pid)  # type: ignore[arg-type]


def test_cancel_of_a_run_whose_runner_on_another_host_is_silent_names_that_host(hosts, pg_url, tmp_path) -> None:
    path = tmp_path / "jobs.yaml"
    path.write_text("jobs:\n  long: {command: 'sleep 30'}\n")
    hosts()  # creates the schema
    with psycopg.connect(pg_url, autocommit=True) as conn:
        (run_id,) = conn.execute("INSERT INTO cronpy.runs (job, status, trigger, started_at, pid, host, runner_pid)"
                                 " VALUES ('long', 'running', 'manual', now(), 4242, 'far-away', 4242)"
                                 " RETURNING id").fetchone()  # type: ignore[misc]
    out = cronpy("cancel", str(run_id), "-f", str(path), "--store", pg_url)
    assert out.returncode == 0, out.stderr
    assert f"run {run_id} of long runs on far-away: cancel it there" in out.stdout
