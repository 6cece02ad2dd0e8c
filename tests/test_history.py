"""The store suite: claims, filters and stats figures on a known history, run against both
stores (SQLite in a state dir, and a real PostgreSQL server); a few SQLite-only checks last."""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from cronpy.errors import RunNotFound
from cronpy.store.migrations import SQLITE as SQLITE_MIGRATIONS
from cronpy.store.sqlite import SqliteStore as History
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
    from cronpy.store import NewRun

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
    assert db.execute("PRAGMA user_version").fetchone()[0] == len(SQLITE_MIGRATIONS)
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
    assert [s._replace(mean=None) for s in everything] == [s._replace(mean=None) for s in window]
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


# -- retention, ranks, cancel requests, heartbeats, recovery, batches, paging: both dialects ----


def test_prune_forgets_the_cancel_requests_of_the_runs_it_deletes(history_db) -> None:
    old = add(history_db, "a", RunStatus.CANCELLED, 1, T0 - timedelta(days=40))
    keep = add(history_db, "a", RunStatus.CANCELLED, 1, T0)
    history_db.request_cancel(old, T0 - timedelta(days=40))
    history_db.request_cancel(keep, T0)
    assert history_db.prune(T0 - timedelta(days=30)) == 1
    assert not history_db.cancel_requested(old)  # an id reused later must not start cancelled
    assert history_db.cancel_requested(keep)


def test_prune_in_batches_removes_every_old_row_and_keeps_the_totals(history_db, monkeypatch) -> None:
    from cronpy.store import sql

    monkeypatch.setattr(sql, "PRUNE_BATCH", 7)  # many batches, and a last partial one
    monkeypatch.setattr(sql, "PRUNE_MIN_BATCH", 3)
    monkeypatch.setattr(sql, "PRUNE_MAX_BATCH", 9)
    monkeypatch.setattr(sql, "PRUNE_PAUSE", 0.0)
    for i in range(50):
        add(history_db, "job", RunStatus.SUCCESS, float(i), T0 + timedelta(minutes=i))
    assert history_db.prune(T0 + timedelta(minutes=45)) == 45
    assert [r.duration for r in history_db.query(limit=None)] == [49.0, 48.0, 47.0, 46.0, 45.0]
    (s,) = history_db.stats()
    assert (s.runs, s.p50, s.max) == (5, 47.0, 49.0)


@pytest.mark.parametrize("n", [1, 2, 3, 7, 20, 101])
def test_stats_ranks_are_nearest_rank_on_both_dialects(history_db, n: int) -> None:
    # Durations 1..n shuffled: the q-th percentile by nearest rank is ceil(q n / 100).
    import math
    import random

    durations = list(range(1, n + 1))
    random.Random(n).shuffle(durations)
    for i, d in enumerate(durations):
        add(history_db, "j", RunStatus.SUCCESS if i % 5 else RunStatus.FAILED, float(d), T0 + timedelta(seconds=i))
    add(history_db, "j", RunStatus.INTERRUPTED, 1000.0, T0 + timedelta(hours=1))  # not a finished outcome
    expected = (float(max(1, math.ceil(0.5 * n))), float(max(1, math.ceil(0.95 * n))), float(n))
    (everything,) = history_db.stats()
    (window,) = history_db.stats(since=T0 - timedelta(days=1))
    assert (everything.p50, everything.p95, everything.max) == expected
    assert (window.p50, window.p95, window.max) == expected


def test_recent_attempts_are_each_jobs_latest_in_a_window_oldest_first(history_db) -> None:
    # What `stats` groups into runs: the latest `limit` attempts of each job, oldest first,
    # the same on both dialects; a job with nothing in the window is left out.
    ids = {job: [add(history_db, job, RunStatus.FAILED if i % 3 else RunStatus.SUCCESS, float(i),
                     T0 + timedelta(minutes=i), trigger=Trigger.RETRY if i % 3 else Trigger.SCHEDULE)
                 for i in range(8)] for job in ("a", "b")}
    again = history_db.start_run("b", Trigger.RETRY, T0 + timedelta(minutes=8), scheduled_for=T0 + timedelta(minutes=7))
    got = history_db.recent_attempts(["a", "b", "never"], limit=5)
    assert set(got) == {"a", "b"}
    assert [r.id for r in got["a"]] == ids["a"][-5:]
    last = got["b"][-2]
    assert (last.id, last.status, last.trigger, last.duration) == (ids["b"][7], RunStatus.FAILED, Trigger.RETRY, 7.0)
    # Instants are only compared: equal for the attempts of one instant, unequal otherwise.
    assert (got["b"][-1].id, got["b"][-1].status) == (again, RunStatus.RUNNING)
    assert got["b"][-1].instant == last.instant and len({r.instant for r in got["a"]}) == 5
    window = history_db.recent_attempts(["a"], since=T0 + timedelta(minutes=6), limit=5)
    assert [r.duration for r in window["a"]] == [6.0, 7.0]
    assert history_db.recent_attempts(["a"], since=T0 + timedelta(days=1)) == {}


def test_cancel_requests_are_per_run_and_a_repeat_is_harmless(history_db) -> None:
    a = history_db.start_run("a", Trigger.MANUAL, T0)
    b = history_db.start_run("a", Trigger.MANUAL, T0)
    assert not history_db.cancel_requested(a)
    history_db.request_cancel(a, T0)
    history_db.request_cancel(a, T0 + timedelta(seconds=1))
    assert history_db.cancel_requested(a) and not history_db.cancel_requested(b)


def test_finish_runs_writes_a_batch_in_order(history_db) -> None:
    from cronpy.models import Finish

    a = history_db.start_run("a", Trigger.MANUAL, T0)
    b = history_db.start_run("b", Trigger.MANUAL, T0)
    history_db.finish_runs([
        Finish(a, RunStatus.FAILED, T0 + timedelta(seconds=1), 1.0, exit_code=3, error="boom"),
        Finish(b, RunStatus.SUCCESS, T0 + timedelta(seconds=2), 2.0, exit_code=0, output="hi\n", result={"n": 1}),
        Finish(a, RunStatus.SUCCESS, T0 + timedelta(seconds=3), 3.0, exit_code=0),  # later in the batch wins
    ])
    ra, rb = history_db.get(a), history_db.get(b)
    assert (ra.status, ra.duration, ra.exit_code) == (RunStatus.SUCCESS, 3.0, 0)
    assert (rb.status, rb.output, rb.result, rb.finished_at) == (RunStatus.SUCCESS, "hi\n", {"n": 1},
                                                                  T0 + timedelta(seconds=2))


def test_query_pages_by_id_newest_first(history_db) -> None:
    ids = [add(history_db, "a" if i % 2 else "b", RunStatus.SUCCESS, 1, T0 + timedelta(minutes=i)) for i in range(7)]
    first = history_db.query(limit=3)
    assert [r.id for r in first] == ids[:-4:-1]
    second = history_db.query(limit=3, before_id=first[-1].id)
    assert [r.id for r in second] == ids[-4:-7:-1]
    assert [r.id for r in history_db.query("a", before_id=ids[5])] == [ids[3], ids[1]]
    assert history_db.query(before_id=ids[0]) == []


def test_heartbeats_are_kept_only_by_a_store_shared_across_hosts(history_db) -> None:
    history_db.register_runner("trigger")
    fleet = history_db.fleet()
    if history_db.capabilities.shared_across_hosts:
        assert fleet is not None and [(p["pid"], p["role"]) for p in fleet] == [(os.getpid(), "leader")]
    else:
        assert fleet is None


def test_recovery_marks_another_hosts_silent_runner_only_on_a_shared_store(history_db) -> None:
    from cronpy.store import HOST

    ours = history_db.start_run("a", Trigger.MANUAL, T0)
    # A run of a runner on another host, with no heartbeat at all.
    with history_db._tx() as tx:
        tx.run("UPDATE runs SET host = ?, runner_pid = ? WHERE id = ?", ("ghost-host", 4242, ours))
    mine = history_db.start_run("a", Trigger.MANUAL, T0)
    marked = history_db.mark_dead_runs(lambda pid: True, T0 + timedelta(seconds=5))
    shared = history_db.capabilities.shared_across_hosts
    assert [r.id for r in marked] == ([ours] if shared else [])
    gone = history_db.get(ours)
    assert gone.status is (RunStatus.INTERRUPTED if shared else RunStatus.RUNNING)
    if shared:
        assert gone.duration == 5.0 and "ghost-host" in (gone.error or "") and gone.host != HOST
    assert history_db.get(mine).status is RunStatus.RUNNING


# -- migrations: today's databases upgrade; a newer one is refused, untouched ---------------

FIXTURES = Path(__file__).parent / "fixtures"


def _fixture_checks(h) -> None:
    backup = h.query("backup", limit=None, with_output=True)
    assert [r.duration for r in backup] == [6.0, 5.0, 4.0, 3.0, 2.0, 1.0]
    assert [r.output for r in backup][-1] == "line 0" and backup[3].result == {"n": 2}
    assert h.paused().keys() == {"report"}
    (report,) = h.query("report")
    assert h.cancel_requested(report.id) and report.status is RunStatus.TIMEOUT
    b, r = h.stats()
    assert (b.runs, b.failures, b.p50, b.max, r.timeouts) == (6, 2, 3.0, 6.0, 1)
    # The upgraded database takes claims, with its claim index intact.
    t = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    assert h.start_run("backup", Trigger.SCHEDULE, t, scheduled_for=t) is None
    assert h.start_run("backup", Trigger.SCHEDULE, T0 + timedelta(days=1), scheduled_for=T0 + timedelta(days=1))


def test_a_sqlite_history_of_the_previous_release_is_upgraded(state_dir: Path) -> None:
    import shutil

    shutil.copy(FIXTURES / "history-v3.db", state_dir / "history.db")
    with History.open(state_dir) as h:
        _fixture_checks(h)
    db = sqlite3.connect(state_dir / "history.db")
    assert db.execute("PRAGMA user_version").fetchone()[0] == len(SQLITE_MIGRATIONS) > 3
    assert db.execute("SELECT count(*) FROM sqlite_master WHERE name = 'runs_running_host'").fetchone()[0] == 1


def test_a_sqlite_history_from_a_newer_cronpy_is_refused_and_left_untouched(state_dir: Path) -> None:
    import hashlib
    import shutil

    from cronpy.errors import StoreTooNew

    path = state_dir / "history.db"
    shutil.copy(FIXTURES / "history-v3.db", path)
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {len(SQLITE_MIGRATIONS) + 1}")
    db.close()
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    for readonly in (False, True):
        with pytest.raises(StoreTooNew, match=r"schema version \d+ is newer than this cronpy knows.*nothing was"):
            History.open(state_dir, readonly=readonly)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before


def _load_pg_fixture(pg_server, url: str) -> None:
    import subprocess

    db = url.rsplit("/", 1)[1]
    subprocess.run([str(pg_server.bindir / "psql"), "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p",
                    str(pg_server.port), "-U", "cronpy", "-d", db, "-f", str(FIXTURES / "pgstore-v2.sql")],
                   check=True, capture_output=True)


def test_a_postgres_store_of_the_previous_release_is_upgraded(pg_server, pg_url) -> None:
    from cronpy.store.migrations import POSTGRES
    from cronpy.store.postgres import PgStore

    _load_pg_fixture(pg_server, pg_url)
    with PgStore(pg_url, lease=30) as h:
        assert h.leadership.try_acquire()
        _fixture_checks(h)
        assert h._one("SELECT max(version) FROM schema_version") == len(POSTGRES) > 2
        assert h._one("SELECT to_regclass('cronpy.runs_running_host') IS NOT NULL")


def test_a_postgres_store_from_a_newer_cronpy_is_refused_and_left_untouched(pg_server, pg_url) -> None:
    import psycopg

    from cronpy.errors import StoreTooNew
    from cronpy.store.migrations import POSTGRES
    from cronpy.store.postgres import PgStore

    _load_pg_fixture(pg_server, pg_url)
    newer = len(POSTGRES) + 1
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("INSERT INTO cronpy.schema_version (version) VALUES (%s)", (newer,))
    for readonly in (False, True):
        with pytest.raises(StoreTooNew, match=r"schema version \d+ is newer than this cronpy knows"):
            PgStore(pg_url, readonly=readonly)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        assert conn.execute("SELECT max(version), count(*) FROM cronpy.schema_version").fetchone() == (newer, 3)
        assert conn.execute("SELECT to_regclass('cronpy.runs_running_host')").fetchone() == (None,)


def test_sqlite_stats_reuse_a_jobs_quantiles_only_while_its_runs_are_unchanged(state_dir: Path) -> None:
    # `stats` keeps each job's p50/p95/max beside history.db with the totals they came from.
    # Whatever happens to the history afterwards (new runs, a finish, a prune, a replaced file,
    # a damaged memo), its figures must be those of a store that never kept one.
    def fresh() -> list:
        memo.unlink(missing_ok=True)
        with History.open(state_dir, readonly=True) as r:
            return r.stats()

    h = History.open(state_dir)
    memo = state_dir / History.STATS_MEMO
    for i in range(30):
        add(h, "a" if i % 3 else "b", RunStatus.SUCCESS if i % 4 else RunStatus.FAILED, float(i), T0 + timedelta(minutes=i))
    first = h.stats()
    assert memo.exists() and (memo.stat().st_mode & 0o777) == 0o600
    assert h.stats() == first == fresh()
    h.stats()
    add(h, "a", RunStatus.SUCCESS, 1000.0, T0 + timedelta(hours=1))  # a's figures move, b's do not
    again = h.stats()
    assert again == fresh() and again[0].max == 1000.0 and again[1] == first[1]
    h.stats()
    running = h.start_run("b", Trigger.MANUAL, T0 + timedelta(hours=2))
    assert running is not None
    h.stats()
    h.finish_run(running, RunStatus.SUCCESS, T0 + timedelta(hours=3), duration=100.0)
    after = h.stats()
    assert after == fresh() and after[1].runs == first[1].runs + 1 and after[1].p50 != first[1].p50
    h.stats()
    h.prune(T0 + timedelta(minutes=20))
    assert h.stats() == fresh()
    h.stats()
    memo.write_text('{"key": "x", "jobs": {"a": [1, 2]}}')
    assert h.stats() == fresh()
    h.stats()
    data = json.loads(memo.read_text())
    data["jobs"]["a"][1]["100"] = 1.0  # as if from another file with the same totals
    h.close()
    db = state_dir / "history.db"
    copy = state_dir / "copy.db"
    copy.write_bytes(db.read_bytes())
    copy.replace(db)  # a restored file: another inode
    memo.write_text(json.dumps(data))
    with History.open(state_dir, readonly=True) as r:
        assert r.stats()[0].max == 1000.0


def test_a_burst_claims_each_instant_once_and_each_row_gets_its_own_id(history_db) -> None:
    from cronpy.models import Finish
    from cronpy.store import NewRun

    # More rows than one statement takes (SQLite writes a burst in a few multi-row statements,
    # PostgreSQL pipelines them): three instants claimed before, a manual run twice over, and
    # one instant twice within the batch (a skipped row, then its claim).
    for job in ("j005", "j070", "j149"):
        assert history_db.start_run(job, Trigger.SCHEDULE, T0, scheduled_for=T0) is not None
    rows = [NewRun(f"j{i:03d}", Trigger.SCHEDULE, T0, T0, 1, None) for i in range(150)]
    rows[10:10] = [NewRun("m", Trigger.MANUAL, T0, T0, 1, None)] * 2
    rows.append(NewRun("k", Trigger.SCHEDULE, T0, T0, 1, None, RunStatus.SKIPPED, "still going"))
    rows.append(NewRun("k", Trigger.SCHEDULE, T0, T0, 1, None))
    ids = history_db.start_runs(rows)
    refused = [r.job for r, i in zip(rows, ids) if i is None]
    assert refused == ["j005", "j070", "j149", "k"]
    assert ids[-2] is not None and len({i for i in ids if i is not None}) == len(rows) - 4
    for row, run_id in zip(rows, ids):
        if run_id is not None:
            got = history_db.get(run_id)
            assert (got.job, got.trigger, got.status) == (row.job, row.trigger, row.status)
    # Outcomes and pids of a burst land on their own rows, however many.
    claimed = [(row, i) for row, i in zip(rows, ids) if i is not None and row.status is RunStatus.RUNNING]
    history_db.set_pids([(i, 1000 + n) for n, (_, i) in enumerate(claimed)])
    history_db.finish_runs([Finish(i, RunStatus.SUCCESS if n % 2 else RunStatus.FAILED, T0 + timedelta(seconds=1),
                                   n / 1000, exit_code=n % 2) for n, (_, i) in enumerate(claimed)])
    for n, (row, i) in enumerate(claimed):
        got = history_db.get(i)
        assert (got.job, got.duration, got.exit_code, got.pid) == (row.job, n / 1000, n % 2, 1000 + n)
    totals = {s.job: s for s in history_db.stats()}
    assert (totals["j001"].runs, totals["j001"].failures) == (1, 0) and totals["j000"].failures == 1


def test_a_sqlite_burst_is_written_in_a_few_statements(tmp_path: Path, monkeypatch) -> None:
    from cronpy.models import Finish
    from cronpy.store import NewRun
    from cronpy.store import sqlite as dialect

    statements: list[str] = []
    run = dialect._Cursor.run
    monkeypatch.setattr(dialect._Cursor, "run", lambda self, sql, params=(): statements.append(sql) or run(self, sql, params))
    store = History(tmp_path / "history.db")
    statements.clear()  # the schema's
    try:
        ids = store.start_runs([NewRun(f"j{i:03d}", Trigger.SCHEDULE, T0, T0, 1, None) for i in range(200)])
        store.finish_runs([Finish(i, RunStatus.SUCCESS, T0, 0.002) for i in ids if i is not None])
    finally:
        store.close()
    # Every statement a hand-over of the GIL to a thread that is spawning: 200 rows in 3 INSERTs
    # and 3 UPDATEs, not 200 of each (issue #12).
    assert [s.split()[0] for s in statements] == ["INSERT"] * 3 + ["UPDATE"] * 3
    assert store.ROWS_PER_STATEMENT * 12 < 999  # parameters a statement, under any build's limit
