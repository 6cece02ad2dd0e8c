"""Exactly once through crashes, takeovers, reloads and signals; systemd integration.

Real runner processes, real SIGKILL/SIGHUP/SIGTERM, a real datagram socket for sd_notify.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
from conftest import Harness, jobset, pid_gone, query, runner, stop, wait_for

from cronpy.errors import HistoryError
from cronpy.store.sqlite import SqliteStore as History
from cronpy.models import RunStatus, Trigger

pytestmark = pytest.mark.slow
UTC = timezone.utc


def test_runners_sharing_a_state_dir_fire_each_instant_once_across_a_kill_9_takeover(jobs_file, tmp_path: Path) -> None:
    path = jobs_file("state_dir: state\njobs:\n  tick: {schedule: '* * * * * *', command: 'true'}\n")
    db = tmp_path / "state" / "history.db"
    procs = [runner(path, log=tmp_path / f"r{i}.log") for i in range(3)]
    try:
        assert wait_for(lambda: len(query(db, "SELECT 1 FROM runs")) >= 3, timeout=20)
        holder = (tmp_path / "state" / "locks" / "scheduler.lock").read_text()
        leader = next(p for p in procs if f'"pid": {p.pid}' in holder)
        killed_at = time.time()
        leader.kill()  # SIGKILL: no cleanup, the kernel drops its flock
        leader.wait(10)
        assert wait_for(lambda: len(query(db, f"SELECT 1 FROM runs WHERE started_at > {killed_at + 1}")) >= 3, 20)
    finally:
        stop(*procs)
    instants = [r[0] for r in query(db, "SELECT scheduled_for FROM runs WHERE trigger = 'schedule' ORDER BY scheduled_for")]
    assert len(instants) == len(set(instants)), "an instant ran twice"
    gaps = [b - a for a, b in zip(instants, instants[1:])]
    assert max(gaps) <= 3.0, f"longest gap {max(gaps)}s exceeds the takeover bound"
    standby_logs = "".join((tmp_path / f"r{i}.log").read_text() for i in range(3))
    assert "standby:" in standby_logs and "held by pid" in standby_logs and "took over" in standby_logs
    with History.open(tmp_path / "state") as h:
        assert h.integrity_check() == "ok"


def test_a_sigkilled_runners_running_row_becomes_interrupted_and_its_job_is_stopped(jobs_file, tmp_path: Path) -> None:
    path = jobs_file("state_dir: state\njobs:\n  long: {schedule: '* * * * * *', command: 'sleep 300', kill_grace: 1s}\n")
    db = tmp_path / "state" / "history.db"
    first = runner(path)
    try:
        assert wait_for(lambda: query(db, "SELECT pid FROM runs WHERE pid IS NOT NULL") != [], timeout=20)
        first.kill()
        first.wait(10)
    finally:
        stop(first)
    (run_id, job_pid), = query(db, "SELECT id, pid FROM runs")
    assert not pid_gone(job_pid)  # the job survived its runner: an orphan
    second = runner(path, log=tmp_path / "second.log")
    try:
        assert wait_for(lambda: query(db, f"SELECT status FROM runs WHERE id = {run_id}") == [("interrupted",)], 20)
        assert wait_for(lambda: pid_gone(job_pid), timeout=10)
    finally:
        stop(second)
    (error,), = query(db, f"SELECT error FROM runs WHERE id = {run_id}")
    assert "died during the run" in error and f"process group {job_pid}" in error
    with History.open(tmp_path / "state") as h:
        assert h.integrity_check() == "ok"


def test_sighup_with_a_broken_file_keeps_the_old_schedule_and_a_good_one_takes_effect(jobs_file, tmp_path: Path) -> None:
    path = jobs_file("state_dir: state\njobs:\n  old: {schedule: '* * * * * *', command: 'true'}\n")
    db = tmp_path / "state" / "history.db"
    log = tmp_path / "run.log"
    proc = runner(path, log=log)
    try:
        assert wait_for(lambda: query(db, "SELECT 1 FROM runs WHERE job = 'old'") != [], timeout=20)
        path.write_text("state_dir: state\njobs:\n  old: {schedule: '* * * * * *', comand: 'true'}\n")
        proc.send_signal(signal.SIGHUP)
        assert wait_for(lambda: "reload rejected" in log.read_text(), timeout=10)
        before = len(query(db, "SELECT 1 FROM runs WHERE job = 'old'"))
        assert wait_for(lambda: len(query(db, "SELECT 1 FROM runs WHERE job = 'old'")) >= before + 2, timeout=10)
        assert "jobs.old.comand: unknown job key" in log.read_text()
        path.write_text("state_dir: state\njobs:\n  new: {schedule: '* * * * * *', command: 'true'}\n")
        proc.send_signal(signal.SIGHUP)
        assert wait_for(lambda: query(db, "SELECT 1 FROM runs WHERE job = 'new'") != [], timeout=10)
        switched = time.time() + 1.5
        time.sleep(2.5)
        assert query(db, f"SELECT 1 FROM runs WHERE job = 'old' AND started_at > {switched}") == []
    finally:
        stop(proc)
    assert proc.returncode == 0
    assert "added new, removed old" in log.read_text()


def test_watch_reloads_when_the_file_changes(jobs_file, tmp_path: Path) -> None:
    path = jobs_file("state_dir: state\njobs:\n  a: {schedule: '0 0 1 1 *', command: 'true'}\n")
    db = tmp_path / "state" / "history.db"
    proc = runner(path, "--watch")
    try:
        time.sleep(1.5)
        path.write_text("state_dir: state\njobs:\n  b: {schedule: '* * * * * *', command: 'true'}\n")
        assert wait_for(lambda: query(db, "SELECT 1 FROM runs WHERE job = 'b'") != [], timeout=15)
    finally:
        stop(proc)


def receive_all(sock: socket.socket, until: str, timeout: float = 20.0) -> list[str]:
    messages: list[str] = []
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        sock.settimeout(max(0.01, end - time.monotonic()))
        try:
            messages.append(sock.recv(4096).decode())
        except socket.timeout:
            break
        if until in messages[-1]:
            break
    return messages


def test_sd_notify_messages_arrive_in_order_on_a_real_socket(jobs_file, tmp_path: Path) -> None:
    path = jobs_file("state_dir: state\njobs:\n  a: {schedule: '0 3 * * *', command: 'true'}\n")
    sock_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    proc = runner(path, env={"NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "400000"})
    try:
        first = receive_all(sock, "READY=1")
        assert any("READY=1" in m and "STATUS=1 jobs, 0 running, next: a at" in m for m in first), first
        assert f"MAINPID={proc.pid}" in first[-1]
        pings = receive_all(sock, "never", timeout=1.2)
        assert sum("WATCHDOG=1" in m for m in pings) >= 3  # every 0.2 s: half of WATCHDOG_USEC
        proc.send_signal(signal.SIGHUP)
        reload_msgs = [m for m in receive_all(sock, "READY=1") if "WATCHDOG=1" != m]
        assert "RELOADING=1" in reload_msgs[0] and "MONOTONIC_USEC=" in reload_msgs[0]
        assert "READY=1" in reload_msgs[-1]
        proc.send_signal(signal.SIGTERM)
        last = receive_all(sock, "STOPPING=1")
        assert "STOPPING=1" in last[-1]
        proc.wait(20)
    finally:
        stop(proc)
        sock.close()
    assert proc.returncode == 0


def test_logs_under_the_journal_carry_priorities_and_no_timestamps(jobs_file, tmp_path: Path) -> None:
    path = jobs_file("state_dir: state\njobs:\n  bad: {schedule: '* * * * * *', command: 'exit 3'}\n")
    log = tmp_path / "journal.log"
    proc = runner(path, env={"JOURNAL_STREAM": "8:12345"}, log=log)
    try:
        assert wait_for(lambda: "failed in" in log.read_text(), timeout=20)
    finally:
        stop(proc)
    lines = log.read_text().splitlines()
    assert lines[0].startswith("<6>cronpy: 1 job(s) from")
    assert any(line.startswith("<4>bad: run") and "failed" in line for line in lines)
    assert not any(line[3:5].isdigit() and line[3:7].isdigit() for line in lines)  # no "2026-…" stamps


class FlakyHistory(History):
    """A real history database whose writes fail a given number of times (a full disk)."""

    failures = 0

    def start_runs(self, runs, **kwargs):  # type: ignore[no-untyped-def]
        if FlakyHistory.failures > 0:
            FlakyHistory.failures -= 1
            raise HistoryError(str(self.path), "database or disk is full")
        return super().start_runs(runs, **kwargs)


def test_a_failing_history_write_does_not_stop_the_job_and_is_written_later(state_dir: Path, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    h = Harness(jobset(f"jobs:\n  pay: {{schedule: '0 10 * * *', command: 'touch {marker}'}}\n"), state_dir,
                datetime(2026, 5, 4, 9, 59, tzinfo=UTC))
    h.history.close()
    h.history = h.runner.history = FlakyHistory(state_dir / "history.db")
    FlakyHistory.failures = 1
    h.start().step()
    assert marker.exists()
    (row,) = h.rows("pay")
    assert row.status is RunStatus.SUCCESS and row.scheduled_for == datetime(2026, 5, 4, 10, tzinfo=UTC)
    h.history.close()


class FlakyFinish(History):
    """A real history database whose outcome writes fail a given number of times."""

    failures = 0

    def finish_runs(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        if FlakyFinish.failures > 0:
            FlakyFinish.failures -= 1
            raise HistoryError(str(self.path), "connection lost")
        return super().finish_runs(*args, **kwargs)


@pytest.mark.parametrize("fenced", [False, True])
def test_an_outcome_write_is_retried_until_the_store_takes_it_on_either_store(
        state_dir: Path, monkeypatch, fenced: bool) -> None:
    from cronpy.runner import recorder
    from cronpy.store.retry import RetryPolicy

    monkeypatch.setattr(recorder, "WRITE", RetryPolicy(first=0.001, cap=0.004))  # the schedule, not its length
    h = Harness(jobset("jobs:\n  pay: {schedule: '0 10 * * *', command: 'true'}\n"), state_dir,
                datetime(2026, 5, 4, 9, 59, tzinfo=UTC))
    h.history.close()
    h.history = h.runner.history = FlakyFinish(state_dir / "history.db")
    h.history.fenced = fenced  # type: ignore[misc]
    FlakyFinish.failures = 12  # an outage longer than the 8 tries SQLite used to give up after
    h.start().step()
    (row,) = h.rows("pay")
    assert row.status is RunStatus.SUCCESS
    assert FlakyFinish.failures == 0
    h.history.close()


def test_the_sample_unit_file_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    import shutil

    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is needed (Debian package systemd; .ci/run installs it)"
    unit = (Path(__file__).resolve().parent.parent / "packaging" / "cronpy.service").read_text()
    for line in ("Type=notify", "KillMode=mixed", "StateDirectory=cronpy", "Restart=on-failure",
                 "ExecReload=/bin/kill -HUP $MAINPID", "WatchdogSec=", "NoNewPrivileges=yes"):
        assert line in unit, line
    # verify checks that ExecStart's binary exists: point it at this environment's cronpy.
    binary = shutil.which("cronpy") or str(Path(sys.executable).parent / "cronpy")
    local = unit.replace("/opt/cronpy/bin/cronpy", binary).replace("WorkingDirectory=/etc/cronpy", f"WorkingDirectory={tmp_path}")
    (tmp_path / "cronpy.service").write_text(local)
    result = subprocess.run([analyze, "verify", str(tmp_path / "cronpy.service")], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0 and "cronpy.service" not in result.stderr, result.stderr


def test_a_second_sigint_stops_running_jobs_at_once_and_records_them(jobs_file, tmp_path: Path) -> None:
    path = jobs_file("state_dir: state\nshutdown_grace: 60s\njobs:\n  long: {schedule: '* * * * * *', command: 'sleep 60', kill_grace: 1s}\n")
    db = tmp_path / "state" / "history.db"
    proc = runner(path)
    try:
        assert wait_for(lambda: query(db, "SELECT 1 FROM runs WHERE pid IS NOT NULL") != [], timeout=20)
        proc.send_signal(signal.SIGINT)
        time.sleep(0.5)
        assert proc.poll() is None  # the first SIGINT waits for the running job (grace: 60 s)
        started = time.monotonic()
        proc.send_signal(signal.SIGINT)
        proc.wait(20)
        assert time.monotonic() - started < 10
    finally:
        stop(proc)
    assert proc.returncode == 0
    assert query(db, "SELECT status FROM runs") == [("interrupted",)]


def test_concurrent_writers_and_readers_never_see_database_is_locked(jobs_file, tmp_path: Path) -> None:
    path = jobs_file("state_dir: state\njobs:\n" + "".join(
        f"  j{i}: {{schedule: '* * * * * *', command: 'true', overlap: allow}}\n" for i in range(8)) +
        "  manual: {command: 'true', overlap: allow}\n")
    db = tmp_path / "state" / "history.db"
    log = tmp_path / "run.log"
    proc = runner(path, log=log)
    try:
        assert wait_for(lambda: query(db, "SELECT 1 FROM runs") != [], timeout=20)
        env = dict(os.environ, CRONPY_FILE=str(path))
        env.pop("CRONPY_STATE_DIR", None)
        clients = [subprocess.Popen([sys.executable, "-m", "cronpy", *args], env=env, cwd=tmp_path,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                   for args in [("trigger", "manual")] * 6 + [("history", "--limit", "5")] * 4 + [("stats",)] * 2]
        errors = [c.communicate(timeout=60)[1] for c in clients]
        assert [c.returncode for c in clients] == [0] * len(clients), errors
    finally:
        stop(proc)
    assert "locked" not in log.read_text() and not any("locked" in e for e in errors)
    assert len(query(db, "SELECT 1 FROM runs WHERE job = 'manual' AND status = 'success'")) == 6
    with History.open(tmp_path / "state") as h:
        assert h.integrity_check() == "ok"


def test_history_retention_prunes_old_runs_in_the_background(jobs_file, tmp_path: Path) -> None:
    state = tmp_path / "state"
    with History.open(state) as h:
        old = datetime(2020, 1, 1, tzinfo=UTC)
        for _ in range(3):
            run_id = h.start_run("gone", Trigger.MANUAL, old)
            h.finish_run(run_id, RunStatus.SUCCESS, old, duration=1.0)  # type: ignore[arg-type]
    path = jobs_file("state_dir: state\nhistory_retention: 7d\njobs:\n  a: {schedule: '0 0 1 1 *', command: 'true'}\n")
    proc = runner(path, log=tmp_path / "run.log")
    try:
        assert wait_for(lambda: query(state / "history.db", "SELECT 1 FROM runs WHERE job = 'gone'") == [], timeout=20)
    finally:
        stop(proc)
    assert "pruned 3 run(s)" in (tmp_path / "run.log").read_text()


def test_children_start_at_their_second_never_before_it(jobs_file, tmp_path: Path) -> None:
    # The loop claims an instant a few ms ahead of it; the child must still start after it.
    stamps = tmp_path / "stamps"
    path = jobs_file(f"state_dir: state\njobs:\n  tick: {{schedule: '* * * * * *', command: 'date +%s.%N >> {stamps}'}}\n")
    proc = runner(path)
    try:
        assert wait_for(lambda: stamps.exists() and len(stamps.read_text().split()) >= 4, timeout=20)
    finally:
        stop(proc)
    starts = [float(x) for x in stamps.read_text().split()]
    # Each start is just after a whole second (a few ms), never just before one.
    offsets = [t - round(t) for t in starts]
    assert all(0 <= off < 0.5 for off in offsets), offsets
    rows = query(tmp_path / "state" / "history.db", "SELECT scheduled_for, started_at FROM runs")
    assert rows and all(started >= scheduled for scheduled, started in rows)


def test_many_concurrent_jobs_start_under_a_low_open_files_limit(jobs_file, tmp_path: Path) -> None:
    # Each running job holds a few descriptors in the runner (output, wake, pidfd, lock).
    # With systemd's soft limit of 1,024 and a high max_concurrent, starts failed with
    # "Too many open files"; the runner raises its soft limit to what max_concurrent needs.
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1024:
        pytest.skip(f"hard open-files limit {hard} is below what the test needs")
    n = 120
    path = jobs_file(f"state_dir: state\nmax_concurrent: {n}\njobs:\n" + "".join(
        f"  j{i:03d}: {{schedule: '@yearly', run_on_start: true, command: ['sleep', '2']}}\n" for i in range(n)))
    db = tmp_path / "state" / "history.db"
    full = dict(os.environ)
    full.pop("CRONPY_STATE_DIR", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "cronpy", "run", str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env=full, cwd=tmp_path,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard)))
    try:
        assert wait_for(lambda: len(query(db, "SELECT 1 FROM runs WHERE status != 'running'")) >= n, timeout=60)
    finally:
        stop(proc)
    statuses = query(db, "SELECT status, count(*), max(error) FROM runs GROUP BY status")
    assert statuses == [("success", n, None)], statuses


def test_running_out_of_descriptors_fails_those_runs_clearly_and_the_runner_carries_on(jobs_file, tmp_path: Path) -> None:
    # A hard limit the runner cannot raise: the runs that find no descriptor fail with the
    # reason, the others succeed, and the runner keeps running.
    import resource

    n = 120
    path = jobs_file(f"state_dir: state\nmax_concurrent: {n}\njobs:\n" + "".join(
        f"  j{i:03d}: {{schedule: '@yearly', run_on_start: true, command: ['sleep', '1']}}\n" for i in range(n)))
    db = tmp_path / "state" / "history.db"
    log = tmp_path / "runner.log"
    full = dict(os.environ)
    full.pop("CRONPY_STATE_DIR", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "cronpy", "run", str(path)], stdout=subprocess.DEVNULL, stderr=open(log, "wb"),
        env=full, cwd=tmp_path, preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (200, 200)))
    try:
        assert wait_for(lambda: len(query(db, "SELECT 1 FROM runs WHERE status != 'running'")) >= n, timeout=60)
        assert proc.poll() is None, "the runner died"
    finally:
        stop(proc)
    by_status = dict(query(db, "SELECT status, count(*) FROM runs GROUP BY status"))
    assert by_status.get("success", 0) > 0 and by_status.get("failed", 0) > 0, by_status
    errors = {e for (e,) in query(db, "SELECT error FROM runs WHERE status = 'failed'")}
    assert all("Too many open files" in e for e in errors), errors
    assert "open-files limit (200) may be too low for max_concurrent 120" in log.read_text()
