"""The store reads the dashboard adds (keyset paging, counts, failures by day), on SQLite and on
a real PostgreSQL server alike, and the dashboard's data layer on a fleet store."""

from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone
from pathlib import Path

from cronpy.models import RunStatus, Trigger
from cronpy.store import Store

UTC = timezone.utc
T0 = datetime(2026, 3, 1, 22, 0, tzinfo=UTC)


def add(h: Store, job: str, status: RunStatus, at: datetime, duration: float = 1.0) -> int:
    run_id = h.start_run(job, Trigger.MANUAL, at)
    assert run_id is not None
    if status is not RunStatus.RUNNING:
        h.finish_run(run_id, status, at + timedelta(seconds=duration), duration=duration,
                     exit_code=0 if status is RunStatus.SUCCESS else 1)
    return run_id


def test_history_pages_newest_first_below_a_run_id(history_db: Store) -> None:
    ids = [add(history_db, "a" if i % 3 else "b", RunStatus.SUCCESS, T0 + timedelta(minutes=i)) for i in range(9)]
    a_ids = [i for n, i in enumerate(ids) if n % 3][::-1]
    first = history_db.query("a", limit=3)
    assert [r.id for r in first] == a_ids[:3]
    second = history_db.query("a", limit=3, before_id=first[-1].id)
    assert [r.id for r in second] == a_ids[3:]
    assert [r.id for r in history_db.query(limit=2, before_id=ids[4])] == [ids[3], ids[2]]
    assert history_db.query("a", limit=3, before_id=a_ids[-1]) == []
    # Filters still apply below the cursor.
    add(history_db, "a", RunStatus.FAILED, T0 + timedelta(hours=1))
    assert [r.status for r in history_db.query("a", status=RunStatus.FAILED, before_id=10**9)] == [RunStatus.FAILED]


def test_counts_follow_every_outcome_change(history_db: Store) -> None:
    add(history_db, "a", RunStatus.SUCCESS, T0)
    add(history_db, "a", RunStatus.FAILED, T0)
    running = add(history_db, "a", RunStatus.RUNNING, T0)
    add(history_db, "b", RunStatus.TIMEOUT, T0)
    assert history_db.counts() == {"a": {RunStatus.SUCCESS: 1, RunStatus.FAILED: 1, RunStatus.RUNNING: 1},
                                   "b": {RunStatus.TIMEOUT: 1}}
    history_db.finish_run(running, RunStatus.SUCCESS, T0, duration=2.0)
    assert history_db.counts()["a"] == {RunStatus.SUCCESS: 2, RunStatus.FAILED: 1}


def test_failures_by_day_count_finished_runs_per_utc_day(history_db: Store) -> None:
    # 22:00 and 23:30 UTC on March 1 are one day; 00:30 on March 2 the next.
    add(history_db, "a", RunStatus.SUCCESS, T0)
    add(history_db, "a", RunStatus.FAILED, T0 + timedelta(minutes=90))
    add(history_db, "a", RunStatus.TIMEOUT, T0 + timedelta(minutes=150))
    add(history_db, "a", RunStatus.SUCCESS, T0 + timedelta(minutes=160))
    add(history_db, "a", RunStatus.RUNNING, T0 + timedelta(minutes=170))  # not finished: not counted
    add(history_db, "b", RunStatus.FAILED, T0)
    add(history_db, "a", RunStatus.FAILED, T0 - timedelta(days=3))  # before the window
    days = history_db.daily("a", datetime(2026, 3, 1, tzinfo=UTC))
    assert days == [(datetime(2026, 3, 1, tzinfo=UTC), 2, 1), (datetime(2026, 3, 2, tzinfo=UTC), 2, 1)]


def test_the_dashboard_reads_a_fleet_store_leader_and_heartbeats(pg_url: str, tmp_path: Path) -> None:
    from cronpy.store.postgres import PgStore
    from cronpy.web.app import status_json
    from cronpy.web.data import Dashboard

    jobs = tmp_path / "jobs.yaml"
    jobs.write_text(f"store: {pg_url}\njobs:\n  ping: {{schedule: 1m, command: 'true'}}\n")
    leader = PgStore(pg_url, lease=30)
    try:
        assert leader.leadership.try_acquire()
        leader.register_runner("run")
        add(leader, "ping", RunStatus.FAILED, datetime.now(UTC) - timedelta(minutes=1))
        dash = Dashboard(str(jobs), str(tmp_path / "state"), None)
        now = dash.now()
        assert now.scheduler is not None and now.scheduler["epoch"] is not None
        assert [f["pid"] for f in now.fleet] == [os.getpid()]
        assert [r.job for r in now.failures] == ["ping"]
        assert [job for job, _ in now.next_due] == ["ping"]
        data = status_json(now, datetime.now(UTC))
        assert data["scheduler"]["epoch"] == now.scheduler["epoch"]
        assert "password" not in (data["store"]["location"] or "")
        rows = dash.job_rows()
        assert rows[0].stats is not None and rows[0].stats.failures == 1
        dash.close()
    finally:
        leader.close()


def test_the_jobs_page_data_follows_each_run_that_starts_ends_or_is_pruned(tmp_path: Path) -> None:
    # The jobs page keeps each job's latest runs between polls and reads a job's again only
    # when its counts change: every change a user can see must still show on the next poll.
    from cronpy.store.sqlite import SqliteStore
    from cronpy.web.data import Dashboard

    jobs = tmp_path / "jobs.yaml"
    jobs.write_text("state_dir: state\njobs:\n  a: {schedule: 1h, command: 'true'}\n  b: {schedule: 1h, command: 'true'}\n")
    writer = SqliteStore.open(tmp_path / "state")
    dash = Dashboard(str(jobs), None, None)
    try:
        old = add(writer, "a", RunStatus.SUCCESS, T0 - timedelta(days=30))
        add(writer, "b", RunStatus.FAILED, T0)

        def window(job: str) -> list[tuple[int, RunStatus]]:
            row = next(r for r in dash.job_rows() if r.name == job)
            return [(r.id, r.status) for r in row.window]

        assert window("a") == [(old, RunStatus.SUCCESS)]
        running = add(writer, "a", RunStatus.RUNNING, T0)
        assert window("a") == [(old, RunStatus.SUCCESS), (running, RunStatus.RUNNING)]
        writer.finish_run(running, RunStatus.FAILED, T0 + timedelta(seconds=1), duration=1.0, exit_code=1)
        assert window("a") == [(old, RunStatus.SUCCESS), (running, RunStatus.FAILED)]
        assert writer.prune(T0 - timedelta(days=1)) >= 1
        assert window("a") == [(running, RunStatus.FAILED)]
        assert window("b")[-1][1] is RunStatus.FAILED
    finally:
        dash.close()
        writer.close()
