"""The store suite: claims, filters and stats figures on a known history, run against both
stores (SQLite in a state dir, and a real PostgreSQL server); a few SQLite-only checks last."""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from cronpy.errors import RunNotFound
from cronpy.history import History
from cronpy.models import RunStatus, Trigger

UTC = timezone.utc
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def add(h: History, job: str, status: RunStatus, duration: float, at: datetime, *, trigger: Trigger = Trigger.MANUAL,
        exit_code: int | None = None) -> int:
    run_id = h.start_run(job, trigger, at, scheduled_for=at)
    assert run_id is not None
    h.finish_run(run_id, status, at + timedelta(seconds=duration), duration=duration, exit_code=exit_code,
                 error=None if status is RunStatus.SUCCESS else "boom", output="out")
    return run_id


def test_a_scheduled_instant_can_be_claimed_only_once(history_db: History) -> None:
    first = history_db.start_run("billing", Trigger.SCHEDULE, T0, scheduled_for=T0)
    assert first is not None
    assert history_db.start_run("billing", Trigger.SCHEDULE, T0, scheduled_for=T0) is None
    # A retry of the same instant, a different job, or a manual run are not claims.
    assert history_db.start_run("billing", Trigger.RETRY, T0, scheduled_for=T0, attempt=2) is not None
    assert history_db.start_run("other", Trigger.SCHEDULE, T0, scheduled_for=T0) is not None
    assert history_db.start_run("billing", Trigger.MANUAL, T0, scheduled_for=T0) is not None


def test_a_burst_claimed_in_one_batch_gets_each_rows_own_answer(history_db) -> None:
    from cronpy.history import NewRun

    assert history_db.start_run("b", Trigger.SCHEDULE, T0, scheduled_for=T0) is not None
    ids = history_db.start_runs([
        NewRun("a", Trigger.SCHEDULE, T0, T0),  # new: claimed
        NewRun("a", Trigger.SCHEDULE, T0, T0),  # the same instant again in the batch: refused
        NewRun("a", Trigger.MANUAL, T0, T0),  # not a claim
        NewRun("b", Trigger.SCHEDULE, T0, T0),  # claimed before the batch: refused
        NewRun("c", Trigger.SCHEDULE, T0, T0, status=RunStatus.SKIPPED, error="overlap"),
    ])
    assert [i is None for i in ids] == [False, True, False, True, False]
    assert [history_db.get(i).job for i in ids if i is not None] == ["a", "a", "c"]  # type: ignore[arg-type]
    assert history_db.get(ids[4]).status is RunStatus.SKIPPED  # type: ignore[arg-type]


def test_claims_from_two_connections_racing_give_exactly_one_winner(open_store) -> None:
    results: list[int | None] = []
    barrier = threading.Barrier(4)
    stores = [open_store() for _ in range(4)]

    def claim(h) -> None:
        barrier.wait()
        results.append(h.start_run("billing", Trigger.SCHEDULE, T0, scheduled_for=T0))

    threads = [threading.Thread(target=claim, args=(h,)) for h in stores]
    [t.start() for t in threads]
    [t.join(30) for t in threads]
    assert len(results) == 4 and sum(r is not None for r in results) == 1


def test_history_filters_by_job_status_and_since(history_db: History) -> None:
    add(history_db, "a", RunStatus.SUCCESS, 1, T0)
    failed_old = add(history_db, "a", RunStatus.FAILED, 1, T0 + timedelta(hours=1), exit_code=3)
    add(history_db, "b", RunStatus.FAILED, 1, T0 + timedelta(hours=2))
    failed_new = add(history_db, "a", RunStatus.FAILED, 1, T0 + timedelta(hours=3), exit_code=4)
    assert [r.id for r in history_db.query("a", status=RunStatus.FAILED)] == [failed_new, failed_old]
    assert [r.id for r in history_db.query("a", status=RunStatus.FAILED, since=T0 + timedelta(hours=2))] == [failed_new]
    assert len(history_db.query(limit=2)) == 2
    rec = history_db.get(failed_new)
    assert (rec.exit_code, rec.output, rec.error) == (4, "out", "boom")
    with pytest.raises(RunNotFound):
        history_db.get(999)


def test_stats_figures_on_a_known_history(history_db: History) -> None:
    # 20 runs: 17 successes of 1..17 s, 2 failures of 18, 19 s, 1 timeout of 20 s.
    for i in range(1, 21):
        status = RunStatus.SUCCESS if i <= 17 else RunStatus.FAILED if i <= 19 else RunStatus.TIMEOUT
        add(history_db, "etl", status, float(i), T0 + timedelta(minutes=i))
    add(history_db, "ok", RunStatus.SUCCESS, 2.0, T0)
    etl, ok = history_db.stats()
    assert (etl.runs, etl.successes, etl.failures, etl.timeouts) == (20, 17, 2, 1)
    assert etl.success_rate == pytest.approx(0.85)
    assert etl.health == "warning"
    assert (etl.mean, etl.p50, etl.p95, etl.max) == (10.5, 10.0, 19.0, 20.0)
    assert etl.last_status is RunStatus.TIMEOUT
    assert ok.health == "healthy" and ok.p95 == 2.0
    # --since narrows the window: only the last 5 runs (16..20 s)
    (recent,) = history_db.stats("etl", since=T0 + timedelta(minutes=16))
    assert (recent.runs, recent.successes, recent.max) == (5, 2, 20.0)


def test_a_job_with_no_finished_runs_has_unknown_health(history_db: History) -> None:
    history_db.start_run("new", Trigger.MANUAL, T0)
    (s,) = history_db.stats()
    assert s.health == "unknown" and s.success_rate is None


def test_runs_left_running_by_a_dead_runner_become_interrupted(history_db: History) -> None:
    run_id = history_db.start_run("a", Trigger.MANUAL, T0)
    assert run_id is not None
    marked = history_db.mark_dead_runs(lambda pid: False, T0)
    assert [r.id for r in marked] == [run_id]
    assert history_db.get(run_id).status is RunStatus.INTERRUPTED
    live = history_db.start_run("a", Trigger.MANUAL, T0)
    assert history_db.mark_dead_runs(lambda pid: True, T0) == []
    assert history_db.get(live).status is RunStatus.RUNNING  # type: ignore[arg-type]


def test_prune_removes_only_old_finished_runs(history_db: History) -> None:
    add(history_db, "a", RunStatus.SUCCESS, 1, T0 - timedelta(days=40))
    old_running = history_db.start_run("a", Trigger.MANUAL, T0 - timedelta(days=40))
    keep = add(history_db, "a", RunStatus.SUCCESS, 1, T0)
    assert history_db.prune(T0 - timedelta(days=30)) == 1
    assert {r.id for r in history_db.query(limit=None)} == {old_running, keep}


def test_sqlite_schema_is_versioned_wal_and_intact(state_dir: Path) -> None:
    history_db = History.open(state_dir)
    db = sqlite3.connect(state_dir / "history.db")
    assert db.execute("PRAGMA user_version").fetchone()[0] == 3
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert history_db.integrity_check() == "ok"
    history_db.close()
    # Reopening does not re-run migrations.
    History.open(state_dir).close()


def test_stats_over_all_history_and_over_a_window_agree(history_db: History) -> None:
    import random

    rng = random.Random(7)
    for i in range(137):
        status = rng.choice([RunStatus.SUCCESS] * 8 + [RunStatus.FAILED, RunStatus.TIMEOUT])
        add(history_db, f"job{i % 3}", status, round(rng.uniform(0.1, 50), 3), T0 + timedelta(seconds=i))
    history_db.start_run("job0", Trigger.MANUAL, T0)  # still running: no duration, not counted
    everything = history_db.stats()
    window = history_db.stats(since=T0 - timedelta(days=1))
    assert [replace(s, mean=None) for s in everything] == [replace(s, mean=None) for s in window]
    assert [s.mean for s in everything] == pytest.approx([s.mean for s in window])
    assert [s.runs for s in everything] == [47, 46, 45]


def test_totals_kept_by_triggers_stay_right_through_pruning(history_db: History) -> None:
    for i in range(60):
        add(history_db, "job", RunStatus.FAILED if i % 4 == 0 else RunStatus.SUCCESS, float(i + 1),
            T0 + timedelta(hours=i))
    history_db.prune(T0 + timedelta(hours=30))  # drops the first 30
    (fast,) = history_db.stats()
    (slow,) = history_db.stats(since=T0 - timedelta(days=1))
    assert (fast.runs, fast.failures, fast.p50, fast.max) == (slow.runs, slow.failures, slow.p50, slow.max) == (30, 7, 45.0, 60.0)
    assert fast.mean == pytest.approx(slow.mean) == pytest.approx(45.5)


def test_runners_opening_a_new_sqlite_state_dir_together_all_succeed(tmp_path):
    # Switching a new file to WAL does not wait on SQLite's busy handler: without a retry,
    # about one start in ten of four runners on a fresh state dir failed "database is locked".
    failures: list[str] = []
    for attempt in range(60):
        path = tmp_path / f"{attempt}" / "history.db"
        barrier = threading.Barrier(4)

        def open_it(path: Path = path, barrier: threading.Barrier = barrier) -> None:
            barrier.wait()
            try:
                History(path).close()
            except Exception as exc:  # noqa: BLE001 - collected and asserted below
                failures.append(str(exc))

        threads = [threading.Thread(target=open_it) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert failures == []


def test_last_scheduled_is_the_latest_scheduled_instant_not_a_retry_or_a_manual_run(history_db) -> None:
    # The anchor an interval job's cadence continues from after a restart.
    h = history_db
    assert h.last_scheduled("sync") is None
    for minutes in (0, 10, 20):
        h.start_run("sync", Trigger.SCHEDULE, T0 + timedelta(minutes=minutes), scheduled_for=T0 + timedelta(minutes=minutes))
    h.start_run("sync", Trigger.CATCHUP, T0 + timedelta(minutes=31), scheduled_for=T0 + timedelta(minutes=30))
    h.start_run("sync", Trigger.RETRY, T0 + timedelta(minutes=45), scheduled_for=T0 + timedelta(minutes=40), attempt=2)
    h.start_run("sync", Trigger.MANUAL, T0 + timedelta(minutes=50), scheduled_for=T0 + timedelta(minutes=50))
    h.start_run("other", Trigger.SCHEDULE, T0 + timedelta(hours=1), scheduled_for=T0 + timedelta(hours=1))
    assert h.last_scheduled("sync") == T0 + timedelta(minutes=30)
    assert h.last_scheduled_many(["sync", "other", "never"]) == {
        "sync": T0 + timedelta(minutes=30), "other": T0 + timedelta(hours=1)}
