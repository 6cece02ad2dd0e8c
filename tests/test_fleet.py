"""A fleet on one PostgreSQL database: real `cronpy run` processes, real SIGSTOP, SIGCONT,
SIGKILL, and a database that stops taking connections.

Each runner has a state dir of its own, as a runner on another host would.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest
from conftest import cronpy, pid_gone, stop, wait_for

pytestmark = pytest.mark.slow

LEASE = 3  # seconds; an integer, so instants (whole seconds) bound a gap to LEASE + 1


def start_runner(path: Path, state_dir: Path, log: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    env.pop("CRONPY_STATE_DIR", None)
    env.pop("CRONPY_STORE", None)
    return subprocess.Popen([sys.executable, "-m", "cronpy", "run", str(path), "--state-dir", str(state_dir)],
                            stdout=subprocess.DEVNULL, stderr=open(log, "ab"), env=env, cwd=path.parent)


def sql(url: str, query: str, params: tuple = ()) -> list[tuple]:
    try:
        with psycopg.connect(url, autocommit=True, connect_timeout=3) as conn:
            return conn.execute(query, params).fetchall()  # type: ignore[arg-type]
    except psycopg.Error:
        return []


def leader_pid(url: str) -> int | None:
    rows = sql(url, "SELECT pid FROM cronpy.leader WHERE expires_at > clock_timestamp()")
    return rows[0][0] if rows else None


def started_after(url: str, t: float) -> int:
    rows = sql(url, "SELECT count(*) FROM cronpy.runs WHERE trigger = 'schedule' AND started_at > to_timestamp(%s)",
               (t,))
    return rows[0][0] if rows else 0


def wait_and_read(log: Path, text: str, timeout: float = 10) -> str:
    wait_for(lambda: text in log.read_text(), timeout=timeout)
    return log.read_text()


def test_three_runners_on_one_database_fire_each_instant_once_through_a_pause_and_a_kill_9(
        pg_url: str, tmp_path: Path) -> None:
    path = tmp_path / "jobs.yaml"
    path.write_text(f"store: {pg_url}\nleader_lease: {LEASE}s\njobs:\n"
                    "  tick: {schedule: '* * * * * *', command: 'echo \"$CRONPY_RUN_ID\" >> executions.txt'}\n")
    logs = [tmp_path / f"runner{i}.log" for i in range(3)]
    procs = [start_runner(path, tmp_path / f"host{i}", logs[i]) for i in range(3)]
    by_pid = {p.pid: (p, logs[i]) for i, p in enumerate(procs)}
    try:
        assert wait_for(lambda: leader_pid(pg_url) in by_pid and started_after(pg_url, 0) >= 3, timeout=30)
        paused, paused_log = by_pid[leader_pid(pg_url)]  # type: ignore[index]
        paused.send_signal(signal.SIGSTOP)
        stopped_at = time.time()
        # Another runner takes over once the lease has expired, and fires.
        assert wait_for(lambda: leader_pid(pg_url) not in (None, paused.pid)
                        and started_after(pg_url, stopped_at + LEASE) >= 3, timeout=30)
        assert time.time() - stopped_at > LEASE  # paused for longer than the lease
        paused.send_signal(signal.SIGCONT)
        assert wait_for(lambda: "stepped down as the scheduler" in paused_log.read_text(), timeout=15)
        # Now kill -9 the current leader: no hand-back, the lease must run out.
        victim, _ = by_pid[leader_pid(pg_url)]  # type: ignore[index]
        victim.kill()
        victim.wait(10)
        killed_at = time.time()
        assert wait_for(lambda: leader_pid(pg_url) not in (None, victim.pid)
                        and started_after(pg_url, killed_at + LEASE) >= 3, timeout=30)
    finally:
        stop(*procs)

    rows = sql(pg_url, "SELECT id, extract(epoch FROM scheduled_for)::float8, runner_pid FROM cronpy.runs"
                       " WHERE trigger = 'schedule' ORDER BY scheduled_for")
    instants = [r[1] for r in rows]
    assert len(instants) == len(set(instants)), "an instant was claimed twice"
    executed = [int(line) for line in (tmp_path / "executions.txt").read_text().split()]
    assert [n for n, c in collections.Counter(executed).items() if c > 1] == [], "a run executed twice"
    instant_of = {r[0]: r[1] for r in rows}
    ran = [instant_of[i] for i in executed if i in instant_of]
    assert len(ran) == len(set(ran)), "an instant ran twice"
    # The paused runner, a healthy standby again by the kill, may win the lease back.
    assert len({r[2] for r in rows}) >= 2, "the schedule moved to another runner"
    gaps = [b - a for a, b in zip(instants, instants[1:])]
    assert max(gaps) <= LEASE + 1, f"longest gap {max(gaps)}s is over the lease ({LEASE}s) plus a second"
    text = paused_log.read_text()
    # Whichever noticed first: its own clock (the lease ran out while paused) or the store.
    assert ("stepped down as the scheduler: the lease ran out" in text
            or "stepped down as the scheduler: the lease was taken over (epoch" in text), text
    assert "standby: the scheduler is already running elsewhere (held by pid" in text
    first = rows[0][2]
    for pid in {r[2] for r in rows} - {first}:  # every runner that fired after the first one
        assert "took over the scheduler lease" in by_pid[pid][1].read_text()


def test_a_runner_that_loses_its_database_keeps_its_jobs_stops_scheduling_and_says_so(
        pg_server, pg_url: str, tmp_path: Path) -> None:
    db = pg_url.rsplit("/", 1)[1]
    path = tmp_path / "jobs.yaml"
    path.write_text(f"store: {pg_url}\nleader_lease: 2s\njobs:\n"
                    "  long: {schedule: '@yearly', run_on_start: true, command: 'sleep 4; echo finished; touch done'}\n"
                    "  tick: {schedule: '* * * * * *', command: 'true'}\n")
    log = tmp_path / "runner.log"
    sd = tmp_path / "host"
    proc = start_runner(path, sd, log)
    try:
        assert wait_for(lambda: sql(pg_url, "SELECT pid FROM cronpy.runs WHERE job = 'long' AND pid IS NOT NULL"),
                        timeout=30)
        job_pid = sql(pg_url, "SELECT pid FROM cronpy.runs WHERE job = 'long'")[0][0]
        # The database goes away: no new connections, and the runner's are cut.
        pg_server.execute(f'ALTER DATABASE "{db}" ALLOW_CONNECTIONS false')
        pg_server.execute(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{db}'")
        cut_at = time.time()
        assert wait_for(lambda: "stepped down as the scheduler" in log.read_text(), timeout=15)
        assert not pid_gone(job_pid), "the running job was stopped"
        assert wait_for(lambda: "DISCONNECTED since" in cronpy("status", "-f", str(path), "--state-dir", str(sd)).stdout,
                        timeout=10)
        text = log.read_text()
        assert "connection lost" in text and text.count("standby: cannot reach the store") == 1
        # The job ends while the database is still away: its outcome waits for it.
        assert wait_for(lambda: (tmp_path / "done").exists(), timeout=15)
        assert "HISTORY WRITE FAILED" in wait_and_read(log, "HISTORY WRITE FAILED")
        pg_server.execute(f'ALTER DATABASE "{db}" ALLOW_CONNECTIONS true')
        # It reconnects, records the job that ran through the outage, and schedules again.
        assert wait_for(lambda: sql(pg_url, "SELECT 1 FROM cronpy.runs WHERE job = 'long' AND status = 'success'"
                                            " AND output LIKE 'finished%%'"), timeout=60)
        assert wait_for(lambda: started_after(pg_url, time.time()) == 0 and started_after(pg_url, cut_at + 1) >= 2,
                        timeout=30)
        # The runner rewrites its status file at most once a second: poll for its next one.
        assert wait_for(lambda: f"this host: pid {proc.pid}, leader, connected"
                        in cronpy("status", "-f", str(path), "--state-dir", str(sd)).stdout, timeout=5)
        shown = cronpy("status", "-f", str(path), "--state-dir", str(sd)).stdout
        assert f"scheduler: pid {proc.pid} on" in shown and "epoch 2" in shown
        status = json.loads(cronpy("status", "-f", str(path), "--state-dir", str(sd), "--json").stdout)
        assert (status["scheduler"]["pid"], status["scheduler"]["epoch"]) == (proc.pid, 2)
        assert [(f["pid"], f["role"]) for f in status["store"]["fleet"]] == [(proc.pid, "leader")]
        assert status["store"]["this_host"]["connected"] is True
    finally:
        stop(proc)
    text = log.read_text()
    assert "took over the scheduler lease" in text
    assert "skipped" not in text  # run_on_start ran once, not again when it led again
    assert [r[0] for r in sql(pg_url, "SELECT status FROM cronpy.runs WHERE job = 'long'")] == ["success"]


def test_a_runner_started_while_its_database_is_away_waits_for_it_then_leads(
        pg_server, pg_url: str, tmp_path: Path) -> None:
    db = pg_url.rsplit("/", 1)[1]
    pg_server.execute(f'ALTER DATABASE "{db}" ALLOW_CONNECTIONS false')
    path = tmp_path / "jobs.yaml"
    path.write_text(f"store: {pg_url}\njobs:\n  tick: {{schedule: '* * * * * *', command: 'true'}}\n")
    log = tmp_path / "runner.log"
    proc = start_runner(path, tmp_path / "host", log)
    try:
        assert wait_for(lambda: "cannot reach the store, waiting for it" in log.read_text(), timeout=20)
        assert proc.poll() is None  # waiting, not exited
        pg_server.execute(f'ALTER DATABASE "{db}" ALLOW_CONNECTIONS true')
        assert wait_for(lambda: started_after(pg_url, 0) >= 2, timeout=30)
    finally:
        stop(proc)
    assert proc.returncode == 0


def test_a_runner_waiting_for_its_database_stops_on_sigterm(jobs_file, tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    path = tmp_path / "jobs.yaml"
    path.write_text(f"store: postgresql://cronpy@127.0.0.1:{port}/none\njobs:\n  a: {{command: 'true'}}\n")
    log = tmp_path / "runner.log"
    proc = start_runner(path, tmp_path / "host", log)
    assert wait_for(lambda: "cannot reach the store, waiting for it" in log.read_text(), timeout=20)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0
    assert "stopped before the store could be reached" in log.read_text()


def test_a_runner_stopped_while_standing_by_still_waits_for_the_jobs_it_kept(
        pg_server, pg_url: str, tmp_path: Path) -> None:
    db = pg_url.rsplit("/", 1)[1]
    path = tmp_path / "jobs.yaml"
    path.write_text(f"store: {pg_url}\nleader_lease: 2s\njobs:\n"
                    "  long: {schedule: '@yearly', run_on_start: true, command: 'sleep 3; touch done'}\n")
    log = tmp_path / "runner.log"
    proc = start_runner(path, tmp_path / "host", log)
    try:
        assert wait_for(lambda: sql(pg_url, "SELECT 1 FROM cronpy.runs WHERE job = 'long' AND pid IS NOT NULL"),
                        timeout=30)
        pg_server.execute(f'ALTER DATABASE "{db}" ALLOW_CONNECTIONS false')
        pg_server.execute(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{db}'")
        assert wait_for(lambda: "stepped down as the scheduler" in log.read_text(), timeout=15)
        assert not (tmp_path / "done").exists()
        proc.send_signal(signal.SIGTERM)  # standing by, with `long` still running
        assert wait_for(lambda: (tmp_path / "done").exists(), timeout=15)
        assert proc.poll() is None  # it waits for the outcome to be written, not just the job
        pg_server.execute(f'ALTER DATABASE "{db}" ALLOW_CONNECTIONS true')
        assert proc.wait(30) == 0
    finally:
        pg_server.execute(f'ALTER DATABASE "{db}" ALLOW_CONNECTIONS true')
        stop(proc)
    assert [r[0] for r in sql(pg_url, "SELECT status FROM cronpy.runs WHERE job = 'long'")] == ["success"]
