"""The store under faults, with real processes: a big prune beside an every-second job, a fleet
connection terminated under the leader, a job lock whose release failed, a host that died
with runs in progress, and every command on a store that cannot be read (exit status 69)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from conftest import cronpy, stop, wait_for

UTC = timezone.utc


def _runner(path: Path, state_dir: Path, log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    full = dict(os.environ)
    full.pop("CRONPY_STATE_DIR", None)
    full.pop("CRONPY_STORE", None)
    full.update(env or {})
    return subprocess.Popen([sys.executable, "-m", "cronpy", "run", str(path), "--state-dir", str(state_dir)],
                            stdout=subprocess.DEVNULL, stderr=open(log, "ab"), env=full, cwd=path.parent)


def _gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in zip(times, times[1:])]


# -- #12 point 5: pruning in small batches -----------------------------------------------------


@pytest.mark.slow
def test_a_prune_of_500000_rows_leaves_no_gap_over_1_5s_in_an_every_second_job(tmp_path: Path) -> None:
    from cronpy.store.sqlite import SqliteStore

    state = tmp_path / "state"
    SqliteStore.open(state).close()
    db = sqlite3.connect(state / "history.db", isolation_level=None)
    old = (datetime.now(UTC) - timedelta(days=40)).timestamp()
    db.execute("WITH RECURSIVE c(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM c WHERE i < 499999)"
               " INSERT INTO runs (job, status, trigger, started_at, finished_at, duration, output, host)"
               " SELECT 'old', 'success', 'schedule', ? + i / 1000.0, ? + i / 1000.0 + 1, 1.0, 'output', 'h' FROM c",
               (old, old))
    path = tmp_path / "jobs.yaml"
    path.write_text("history_retention: 30d\njobs:\n  tick: {schedule: '* * * * * *', command: 'true'}\n")
    log = tmp_path / "runner.log"
    proc = _runner(path, state, log)

    def left() -> int:
        return int(db.execute("SELECT count(*) FROM runs WHERE job = 'old'").fetchone()[0])

    try:
        assert wait_for(lambda: left() < 500_000, timeout=30), log.read_text()  # the prune has begun
        assert wait_for(lambda: left() == 0, timeout=240), log.read_text()
        done = time.time()
        assert wait_for(lambda: db.execute("SELECT count(*) FROM runs WHERE job = 'tick' AND started_at > ?",
                                           (done + 1,)).fetchone()[0] >= 2, timeout=10)
    finally:
        stop(proc)
    assert "pruned 500000 run(s) older than the retention" in log.read_text()
    starts = [r[0] for r in db.execute("SELECT started_at FROM runs WHERE job = 'tick' AND trigger = 'schedule'"
                                       " AND status <> 'skipped' ORDER BY started_at")]
    assert len(starts) >= 5
    assert max(_gaps(starts)) <= 1.5, f"longest gap between starts {max(_gaps(starts)):.2f}s"


# -- #12 point 6: fleet claims, lock rows, dead hosts -----------------------------------------


@pytest.mark.slow
def test_a_claim_on_a_terminated_connection_is_retried_and_no_instant_is_lost(pg_url: str, tmp_path: Path) -> None:
    import psycopg

    path = tmp_path / "jobs.yaml"
    path.write_text(f"store: {pg_url}\nleader_lease: 3s\njobs:\n  tick: {{schedule: '* * * * * *', command: 'true'}}\n")
    log = tmp_path / "runner.log"
    proc = _runner(path, tmp_path / "host", log)

    def scheduled() -> list[float]:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            if conn.execute("SELECT to_regclass('cronpy.runs')").fetchone() == (None,):
                return []  # the runner has not created its tables yet
            return [r[0] for r in conn.execute(
                "SELECT extract(epoch FROM scheduled_for)::float8 FROM cronpy.runs WHERE trigger = 'schedule'"
                " ORDER BY scheduled_for").fetchall()]

    try:
        assert wait_for(lambda: len(scheduled()) >= 3, timeout=30), log.read_text()
        terminated = 0
        for _ in range(6):  # every connection of the runner, again and again, between ticks
            with psycopg.connect(pg_url, autocommit=True) as conn:
                terminated += sum(1 for (ok,) in conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'cronpy'"
                    " AND pid <> pg_backend_pid()").fetchall() if ok)
            end = time.monotonic() + 1.3
            while time.monotonic() < end:
                time.sleep(0.05)
        seen = len(scheduled())
        assert wait_for(lambda: len(scheduled()) >= seen + 3, timeout=15)
    finally:
        stop(proc)
    assert terminated >= 6
    text = log.read_text()
    assert "not running them" not in text, text
    instants = scheduled()
    assert _gaps(instants) and set(_gaps(instants)) == {1.0}, f"instants lost: {_gaps(instants)}"
    assert "retrying on a fresh connection" in text


def test_a_job_lock_whose_release_failed_does_not_block_later_runs_fleet_wide(pg_url: str) -> None:
    import psycopg

    from cronpy.errors import LockHeld
    from cronpy.store.postgres import PgStore

    a, b = PgStore(pg_url, lease=1), PgStore(pg_url, lease=1)
    try:
        a.register_runner("run")  # a keeper renewing a's rows, as in a runner
        lock = a.locks.job("backup")
        lock.acquire(run_id=1)
        with psycopg.connect(pg_url, autocommit=True) as conn:  # a's connection drops
            conn.execute("SELECT pg_terminate_backend(%s)", (a._db.get().info.backend_pid,))
        lock.release()  # fails: the row stays behind for now
        assert not lock.held
        with pytest.raises(LockHeld):
            b.locks.job("backup").acquire()
        # The keeper renews only locks still held, and deletes the row a failed to release.
        b.locks.job("backup").acquire(wait=3.0)
        b.locks.job("backup").release()
        lock.acquire(wait=3.0)  # and a's own later run takes it again
        assert lock.held
    finally:
        a.close()
        b.close()


@pytest.mark.slow
def test_a_dead_hosts_running_run_is_recovered_by_the_leader_without_a_restart(pg_url: str, tmp_path: Path) -> None:
    import psycopg

    path = tmp_path / "jobs.yaml"
    path.write_text(f"store: {pg_url}\nleader_lease: 1s\njobs:\n  long: {{command: 'sleep 60'}}\n"
                    "  tick: {schedule: '* * * * * *', command: 'true'}\n")
    log = tmp_path / "leader.log"
    leader = _runner(path, tmp_path / "host-a", log)

    def row() -> tuple | None:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            if conn.execute("SELECT to_regclass('cronpy.runs')").fetchone() == (None,):
                return None  # the leader has not created its tables yet
            return conn.execute("SELECT id, status, pid, host, error FROM cronpy.runs WHERE job = 'long'").fetchone()

    env = dict(os.environ, CRONPY_HOST="ghost-host")  # a second host of the fleet, on this machine
    env.pop("CRONPY_STORE", None)
    trigger = subprocess.Popen([sys.executable, "-m", "cronpy", "trigger", "long", "-f", str(path)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path)
    job_pid = None
    try:
        assert wait_for(lambda: (r := row()) is not None and r[2] is not None, timeout=30), log.read_text()
        run_id, status, job_pid, host, _ = row()  # type: ignore[misc]
        assert (status, host) == ("running", "ghost-host")
        trigger.kill()  # the host dies: no heartbeat, no outcome
        trigger.wait(10)
        killed = time.monotonic()
        # Three leases without a heartbeat (the last one up to a third of a lease before the
        # kill), then the leader's next look, every lease: well within 15 s.
        assert wait_for(lambda: row()[1] == "interrupted", timeout=15), log.read_text()  # type: ignore[index]
        assert time.monotonic() - killed >= 3.0 - 1 / 3 - 0.1
        error = row()[4]  # type: ignore[index]
        assert "stopped reporting during the run" in error and "ghost-host" in error
        assert f"run {run_id} was left running by a runner that died; marked interrupted" in log.read_text()
        assert leader.poll() is None  # no restart, no takeover
    finally:
        stop(leader)
        if trigger.poll() is None:
            trigger.kill()
        if job_pid:
            try:
                os.killpg(job_pid, signal.SIGKILL)  # another host's job is not the leader's to stop
            except ProcessLookupError:
                pass


# -- #13: a store that cannot be read is an error for every command ----------------------------


def test_every_reading_command_exits_69_on_an_unreadable_sqlite_history(jobs_file, tmp_path: Path) -> None:
    # Unopenable, not damaged (a damaged file exits 2 and names `cronpy recover`).
    state = tmp_path / "state"
    (state / "history.db").mkdir(parents=True)
    path = jobs_file(f"state_dir: {state}\njobs:\n  a: {{schedule: '@daily', command: 'true'}}\n")
    for args in (["list", "--json"], ["history"], ["stats"], ["show", "1"], ["status"], ["pause", "a"]):
        out = cronpy(*args, "-f", str(path))
        assert out.returncode == 69, (args, out.returncode, out.stdout, out.stderr)
        assert "Error: history database " in out.stderr and "history.db: " in out.stderr, (args, out.stderr)
        assert '"paused": false' not in out.stdout


def test_list_on_a_fresh_state_dir_shows_the_jobs_with_no_history(jobs_file, tmp_path: Path) -> None:
    path = jobs_file(f"state_dir: {tmp_path / 'state'}\njobs:\n  a: {{schedule: '@daily', command: 'true'}}\n")
    out = cronpy("list", "--json", "-f", str(path))
    assert out.returncode == 0, out.stderr
    (job,) = json.loads(out.stdout)
    assert (job["job"], job["paused"], job["last_status"]) == ("a", False, None)


def test_every_reading_command_exits_69_when_the_fleet_store_is_unreachable(jobs_file, tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    path = jobs_file(f"store: postgresql://cronpy@127.0.0.1:{port}/cronpy\njobs:\n  a: {{schedule: '@daily', command: 'true'}}\n")
    for args in (["list", "--json"], ["history"], ["stats"], ["status"]):
        out = cronpy(*args, "-f", str(path), "--state-dir", str(tmp_path / "state"))
        assert out.returncode == 69, (args, out.returncode, out.stdout, out.stderr)
        assert "cannot connect" in out.stdout + out.stderr, (args, out.stderr)
