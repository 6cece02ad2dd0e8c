"""Faults that must not fool the runner: a stuck loop, a deleted or corrupted state dir,
wall-clock steps, a fleet host whose clock is off.

Real runner processes, a real datagram socket for sd_notify, real SQLite files, and
libfaketime (Debian's) to step the clock of a running process.
"""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from conftest import cronpy, query, runner, stop, wait_for


pytestmark = pytest.mark.slow
UTC = timezone.utc
# Debian's libfaketime (apt-get install libfaketime), in the multiarch folder of this machine.
# The MT build: the plain one re-reads FAKETIME_TIMESTAMP_FILE into a static buffer without a
# lock, so in a threaded process (the runner) one read in a few hundred sees offset +0 while
# another thread parses it: a clock that flickers back and forth by the step (libfaketime
# PR #547). The MT build serialises those reads; a real clock never flickers.
FAKETIME_LIB = next(iter(sorted(Path("/usr/lib").glob("*/faketime/libfaketimeMT.so.1"))), Path("/nonexistent"))


def text(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


# -- the systemd watchdog proves the loop ----------------------------------------------------

def pings(sock: socket.socket, seconds: float, enough: int | None = None) -> list[float]:
    """Monotonic arrival times of WATCHDOG=1 datagrams over the next `seconds` (or until
    `enough` have arrived)."""
    out: list[float] = []
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0 and (enough is None or len(out) < enough):
        sock.settimeout(left)
        try:
            msg = sock.recv(4096).decode()
        except socket.timeout:
            break
        if "WATCHDOG=1" in msg.split("\n"):
            out.append(time.monotonic())
    return out


def test_watchdog_pings_stop_while_the_scheduling_loop_is_stuck_and_resume_after(jobs_file, tmp_path: Path) -> None:
    content = "state_dir: state\njobs:\n  tick: {schedule: '* * * * * *', command: 'true'}\n"
    path = jobs_file(content)
    db = tmp_path / "state" / "history.db"
    sock_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    # WatchdogSec=1s: a ping every 0.5 s while the loop's last pass is under 1 s old.
    proc = runner(path, env={"NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "1000000"}, log=tmp_path / "r.log")
    blocker = None
    try:
        assert wait_for(lambda: len(query(db, "SELECT 1 FROM runs")) >= 2, timeout=20)
        assert len(pings(sock, 5.0, enough=2)) >= 2, "no watchdog pings from a healthy runner"
        # Hang the loop itself: the jobs file becomes a FIFO nobody writes to, and a reload
        # (done on the loop thread) blocks opening it, while every other thread goes on. (A
        # held SQLite lock no longer does: claims give up after 0.3 s and the loop runs on.)
        path.unlink()
        os.mkfifo(path)
        proc.send_signal(signal.SIGHUP)
        blocked_at = time.monotonic()
        # Within a second the reload blocks; a beat then goes stale after 1 s more. Pings
        # are timed on arrival here, so the window starts well after that (a loaded machine).
        quiet = [t for t in pings(sock, 6.0) if t > blocked_at + 3.5]
        assert quiet == [], f"{len(quiet)} watchdog ping(s) sent while the loop was stuck"
        blocker = open(path, "w")  # the reload reads the file and the loop goes on
        blocker.write(content)
        blocker.close()
        blocker = None
        assert len(pings(sock, 5.0, enough=2)) >= 2, "pings did not resume once the loop was free"
    finally:
        if path.is_fifo():  # free a loop still blocked on it, so that it can stop
            try:
                fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
                os.write(fd, content.encode())
                os.close(fd)
            except OSError:
                pass
        stop(proc)
        sock.close()
    assert proc.returncode == 0, text(tmp_path / "r.log")


# -- wall-clock steps ------------------------------------------------------------------------

def test_the_step_detector_tells_steps_each_way_from_a_suspend() -> None:
    from cronpy.clock import StepDetector

    clocks = {"wall": 1_000_000.0, "mono": 50.0, "boot": 60.0}
    det = StepDetector(lambda: clocks["wall"], lambda: clocks["mono"], lambda: clocks["boot"])

    def tick(wall: float, mono: float, boot: float) -> None:
        for k, v in (("wall", wall), ("mono", mono), ("boot", boot)):
            clocks[k] += v

    tick(5, 5, 5)  # time passing, wall and monotonic together
    assert det.check() is None
    tick(5.0003, 5, 5)  # NTP slewing: not a step
    assert det.check() is None
    tick(-86400 + 1, 1, 1)  # `date -s yesterday`
    back = det.check()
    assert back is not None and round(back.seconds) == -86400 and not back.suspended and back.big
    assert "stepped back by 86400.0s" in back.describe()
    tick(91, 1, 1)
    fwd = det.check()
    assert fwd is not None and round(fwd.seconds) == 90 and not fwd.suspended and not fwd.big
    tick(3600, 0, 3600)  # suspended for an hour: monotonic stood still, boot time did not
    slept = det.check()
    assert slept is not None and slept.suspended and "suspended for 3600.0s" in slept.describe()


def started(h) -> list[tuple[str, str, datetime]]:  # type: ignore[no-untyped-def]
    return [(r.job, r.trigger.value, r.scheduled_for) for r in h.rows()]


def drain(h, now: datetime) -> None:  # type: ignore[no-untyped-def]
    """Tick at `now` until nothing more is due at it (a replay would start run after run)."""
    h.clock.set(now)
    for _ in range(50):
        if (nxt := h.runner.next_wakeup()) is None or nxt > now:
            break
        h.runner.tick(now)
        assert h.runner.wait_idle(20)


def test_a_runner_paused_90s_does_not_replay_an_interval_jobs_last_10s(harness) -> None:
    t0 = datetime(2026, 5, 4, 10, 0, tzinfo=UTC)
    h = harness("jobs:\n  fast: {schedule: 2s, command: 'true'}\n", t0).start()
    h.run_until(t0 + timedelta(seconds=6))
    before = len(h.rows())
    woke = t0 + timedelta(seconds=96)  # SIGSTOPped for 90 s: nothing moved the wall clock
    drain(h, woke)
    assert len(h.rows()) == before, started(h)[before:]  # the missed instants are not replayed
    nxt = h.runner.next_wakeup()
    assert nxt is not None and woke < nxt <= woke + timedelta(seconds=2)  # its cadence resumes


def step(h, seconds: float, *, suspended: bool = False) -> datetime:  # type: ignore[no-untyped-def]
    from cronpy.clock import Step

    now = h.clock.advance(seconds)
    h.runner.clock_stepped(Step(seconds, suspended), now)
    return now


JOBS = """
jobs:
  fixed: {schedule: '30 10 * * *', command: 'true'}
  wild: {schedule: '*/15 * * * *', command: 'true'}
  every: {schedule: 10s, command: 'true'}
"""


def test_a_small_forward_step_runs_a_skipped_fixed_time_job_once_and_resumes_the_others(harness) -> None:
    t0 = datetime(2026, 5, 4, 10, 0, 2, tzinfo=UTC)
    h = harness(JOBS, t0).start()
    now = step(h, 3600)  # 10:00:02 -> 11:00:02: cron(8)'s "less than 3 hours forward"
    drain(h, now)
    runs = started(h)
    assert runs == [("fixed", "schedule", t0.replace(minute=30, second=0))], runs  # once, at once
    # The interval keeps its elapsed-time cadence (first due 10 s after the 10:00:02 start:
    # 10:00:12, which is 11:00:12 on the stepped clock);
    # the wildcard job resumes at its next wall-clock instant.
    nxt = h.runner.next_per_job()
    assert nxt["every"] == datetime(2026, 5, 4, 11, 0, 12, tzinfo=UTC)
    assert nxt["wild"] == datetime(2026, 5, 4, 11, 15, tzinfo=UTC)
    assert nxt["fixed"] == datetime(2026, 5, 5, 10, 30, tzinfo=UTC)


def test_a_big_forward_step_takes_the_new_time_without_running_skipped_jobs(harness) -> None:
    t0 = datetime(2026, 5, 4, 10, 0, 2, tzinfo=UTC)
    h = harness(JOBS, t0).start()
    now = step(h, 4 * 3600)  # 3 hours or more: the new time, at once
    drain(h, now)
    assert started(h) == []
    assert h.runner.next_per_job()["fixed"] == datetime(2026, 5, 5, 10, 30, tzinfo=UTC)


def test_a_step_back_repeats_no_fixed_time_job_and_wildcards_follow_the_wall_clock(harness) -> None:
    t0 = datetime(2026, 5, 4, 10, 29, 55, tzinfo=UTC)
    h = harness(JOBS, t0).start()
    h.run_until(datetime(2026, 5, 4, 10, 31, tzinfo=UTC))
    assert ("fixed", "schedule", datetime(2026, 5, 4, 10, 30, tzinfo=UTC)) in started(h)
    step(h, -3600)  # 10:31 -> 09:31
    nxt = h.runner.next_per_job()
    assert nxt["fixed"] == datetime(2026, 5, 5, 10, 30, tzinfo=UTC)  # not repeated today
    assert nxt["wild"] == datetime(2026, 5, 4, 9, 45, tzinfo=UTC)
    assert nxt["every"] - h.clock.now() <= timedelta(seconds=10)  # elapsed cadence, no hour-long gap


def test_a_step_back_of_a_day_keeps_every_job_running_on_the_new_time(harness) -> None:
    t0 = datetime(2026, 5, 4, 10, 0, 2, tzinfo=UTC)
    h = harness(JOBS, t0).start()
    now = step(h, -86400)
    nxt = h.runner.next_per_job()
    assert nxt["every"] - now <= timedelta(seconds=10)
    assert nxt["wild"] == datetime(2026, 5, 3, 10, 15, tzinfo=UTC)
    assert nxt["fixed"] == datetime(2026, 5, 3, 10, 30, tzinfo=UTC)  # a big step: the new time


def test_a_suspend_moves_nothing_and_replays_nothing(harness) -> None:
    t0 = datetime(2026, 5, 4, 10, 0, 2, tzinfo=UTC)
    h = harness("jobs:\n  every: {schedule: 10s, command: 'true'}\n", t0).start()
    now = step(h, 3600, suspended=True)
    drain(h, now)
    assert started(h) == []  # an hour of instants missed while asleep: skipped, not replayed
    nxt = h.runner.next_wakeup()
    assert nxt is not None and now < nxt <= now + timedelta(seconds=10)


def faketime_env(control: Path) -> dict[str, str]:
    """Run under libfaketime with a wall clock the test steps by writing `control`; the
    monotonic clocks stay real, as on a machine whose clock is set by NTP or `date -s`."""
    if not FAKETIME_LIB.exists():
        pytest.fail("libfaketime is not installed (apt-get install faketime)")
    control.write_text("+0\n")
    return {"LD_PRELOAD": str(FAKETIME_LIB), "FAKETIME_TIMESTAMP_FILE": str(control), "FAKETIME_NO_CACHE": "1",
            "FAKETIME_DONT_FAKE_MONOTONIC": "1"}


def uptimes(path: Path) -> list[float]:
    """What each run appended: /proc/uptime, a clock libfaketime does not touch."""
    return [float(line.split()[0]) for line in text(path).splitlines() if line.strip()]


def test_a_runner_whose_clock_is_stepped_back_a_day_keeps_running_and_says_so(jobs_file, tmp_path: Path) -> None:
    out = tmp_path / "out"
    path = jobs_file(f"state_dir: state\njobs:\n"
                     f"  every: {{schedule: 1s, command: 'cat /proc/uptime >> {out}'}}\n"
                     f"  cron: {{schedule: '* * * * * *', command: 'cat /proc/uptime >> {out}.cron'}}\n")
    control = tmp_path / "faketime"
    log = tmp_path / "r.log"
    proc = runner(path, env=faketime_env(control), log=log)
    try:
        assert wait_for(lambda: len(uptimes(out)) >= 2 and len(uptimes(Path(f"{out}.cron"))) >= 2, timeout=20)
        control.write_text("-1d\n")
        stepped = float(Path("/proc/uptime").read_text().split()[0])
        # Noticed within the loop's longest sleep (5 s); both jobs run again on the new time.
        assert wait_for(lambda: len([u for u in uptimes(out) if u > stepped + 1]) >= 2
                        and len([u for u in uptimes(Path(f"{out}.cron")) if u > stepped + 1]) >= 2, timeout=15), \
            text(log)
    finally:
        stop(proc)
    assert "the wall clock was stepped back by 86400" in text(log)


def test_a_runner_whose_clock_is_stepped_forward_90s_replays_nothing(jobs_file, tmp_path: Path) -> None:
    out = tmp_path / "out"
    path = jobs_file(f"state_dir: state\njobs:\n  every: {{schedule: 2s, command: 'cat /proc/uptime >> {out}'}}\n")
    control = tmp_path / "faketime"
    log = tmp_path / "r.log"
    proc = runner(path, env=faketime_env(control), log=log)
    try:
        assert wait_for(lambda: len(uptimes(out)) >= 2, timeout=20)
        control.write_text("+90\n")
        stepped = float(Path("/proc/uptime").read_text().split()[0])
        assert wait_for(lambda: len([u for u in uptimes(out) if u > stepped]) >= 3, timeout=15), text(log)
    finally:
        stop(proc)
    runs = uptimes(out)
    gaps = [b - a for a, b in zip(runs, runs[1:])]
    # Today: 6 runs within 55 ms. A run started late on a loaded machine may bring two a
    # little closer than the 2 s interval, never back to back.
    assert min(gaps) > 0.5, f"runs back to back after the step: {gaps}"
    assert "the wall clock was stepped forward by 90" in text(log)


# -- a corrupted history.db ------------------------------------------------------------------

def damaged_history(state: Path, runs: int = 2000, pages_hit: tuple[float, ...] = (0.2, 0.33, 0.5, 0.75)) -> int:
    """A real history of `runs` runs, then random bytes over some of its pages (at these
    fractions of the file; 0 is the runs table's root, page 2); returns its size in pages."""
    import random

    from cronpy.store.sqlite import SqliteStore as History
    from cronpy.models import RunStatus, Trigger

    History.open(state).close()  # cronpy's own schema, indexes and triggers
    db = state / "history.db"
    t = datetime(2026, 1, 1, tzinfo=UTC).timestamp()
    con = sqlite3.connect(db)
    with con:  # one transaction: 2,000 commits with synchronous=FULL would take seconds
        con.executemany("INSERT INTO runs (job, status, trigger, scheduled_for, started_at, finished_at, duration,"
                        " output) VALUES (?, ?, ?, ?, ?, ?, 0.5, ?)",
                        [(f"job{i % 4}", RunStatus.SUCCESS.value, Trigger.SCHEDULE.value, t + i, t + i, t + i + 0.5,
                          "x" * 300) for i in range(runs)])
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    pages = db.stat().st_size // 4096
    rng = random.Random(14)
    with open(db, "r+b") as fh:
        for page in (max(1, int(pages * f)) for f in pages_hit):
            fh.seek(page * 4096)
            fh.write(rng.randbytes(4096))
    return pages


def test_a_corrupted_history_stops_the_runner_with_one_clear_error_and_recover_salvages_it(
        jobs_file, tmp_path: Path) -> None:
    state = tmp_path / "state"
    damaged_history(state)
    path = jobs_file("state_dir: state\nhistory_retention: 1d\n"
                     "jobs:\n  tick: {schedule: '* * * * * *', command: 'true'}\n")
    log = tmp_path / "r.log"
    proc = runner(path, log=log)
    try:
        proc.wait(20)  # today: it loops "standing by ... malformed" / "stepped down" without end
    finally:
        stop(proc)
    lines = text(log).splitlines()
    assert proc.returncode == 2, lines[-5:]
    assert len(lines) < 20, f"{len(lines)} log lines"  # today: 11,472 lines in 10 s
    assert any(str(state / "history.db") in line and "cronpy recover" in line for line in lines), lines
    # `history` reading the damaged pages says the same, with the same status.
    res = cronpy("history", "--state-dir", str(state), "--limit", "5000")
    assert res.returncode == 2 and "cronpy recover" in res.stderr, res.stderr

    res = cronpy("recover", "--state-dir", str(state))
    assert res.returncode == 0, res.stderr
    recovered = int(res.stdout.split("recovered ", 1)[1].split()[0])
    assert 1000 < recovered <= 2000, res.stdout
    aside = [p for p in state.iterdir() if p.name.startswith("history.db.damaged-") and "-" not in p.name[19:]]
    assert len(aside) == 1 and aside[0].stat().st_size > 0  # kept, for the operator
    assert query(state / "history.db", "PRAGMA integrity_check") == [("ok",)]
    res = cronpy("stats", "--state-dir", str(state), "-f", str(path), "--json")
    assert res.returncode == 0 and sum(j["runs"] for j in __import__("json").loads(res.stdout)) == recovered

    proc = runner(path, log=log)  # and the runner works again on the fresh file
    try:
        assert wait_for(lambda: query(state / "history.db", "SELECT 1 FROM runs WHERE job = 'tick'") != [], 20)
        res = cronpy("recover", "--state-dir", str(state))  # never under a running runner
        assert res.returncode == 75 and "stop the runners" in res.stderr, res.stderr
    finally:
        stop(proc)
    assert proc.returncode == 0


def test_recover_ends_in_bounded_time_when_the_page_every_run_hangs_from_is_gone(tmp_path: Path) -> None:
    state = tmp_path / "state"
    damaged_history(state, pages_hit=(0,))
    started_at = time.monotonic()
    res = cronpy("recover", "--state-dir", str(state), timeout=60)
    assert res.returncode == 0, res.stderr
    assert time.monotonic() - started_at < 30  # the bisection gives up instead of probing 2**62 ids
    assert "recovered 0 run(s)" in res.stdout and "unreadable, lost: every run" in res.stdout, res.stdout
    assert query(state / "history.db", "PRAGMA integrity_check") == [("ok",)]


# -- the state dir deleted under a running runner --------------------------------------------

def test_a_runner_whose_state_dir_is_deleted_steps_down_and_a_new_runner_is_the_only_scheduler(
        jobs_file, tmp_path: Path) -> None:
    import shutil

    out = tmp_path / "out"  # outside the state dir: each run appends the instant it was started for
    path = jobs_file(f"state_dir: state\nshutdown_grace: 5s\njobs:\n"
                     f"  tick: {{schedule: '* * * * * *', command: 'date +%s >> {out}'}}\n")
    state = tmp_path / "state"
    first_log, second_log = tmp_path / "first.log", tmp_path / "second.log"
    first = runner(path, log=first_log)
    second = None
    try:
        assert wait_for(lambda: len(text(out).split()) >= 2, timeout=20)
        # Out of the way in one step (the runner writes its status file there every second,
        # which a tree walk would race with), then deleted.
        os.rename(state, tmp_path / "deleted")
        shutil.rmtree(tmp_path / "deleted", ignore_errors=True)
        # Within seconds it says so, naming the path, and stops scheduling.
        assert wait_for(lambda: "was changed under this runner" in text(first_log), timeout=10), text(first_log)
        assert str(state) in text(first_log)
        second = runner(path, log=second_log)
        assert wait_for(lambda: query(state / "history.db", "SELECT count(*) FROM runs") >= [(4,)], timeout=20)
        assert first.wait(15) == 2  # a state-dir error
    finally:
        stop(first, *([second] if second else []))
    seconds = [int(s) for s in text(out).split()]
    twice = sorted({s for s in seconds if seconds.count(s) > 1})
    assert twice == [], f"instants run twice: {twice}"
    assert "standby" not in text(second_log)  # it leads alone: nobody held the new lock


# -- fleet clock skew ------------------------------------------------------------------------

def test_clock_skew_keys_are_validated(jobs_file) -> None:
    path = jobs_file("clock_skew_warning: 10s\nclock_skew_limit: 2s\njobs: {}\n")
    res = cronpy("validate", str(path))
    assert res.returncode == 2 and "jobs.yaml:1: clock_skew_warning: must not exceed clock_skew_limit (2s)" in res.stderr
    path = jobs_file("clock_skew_limit: soon\njobs: {}\n")
    res = cronpy("validate", str(path))
    assert res.returncode == 2 and "jobs.yaml:1: clock_skew_limit: expected a duration" in res.stderr, res.stderr
    from cronpy.config import load_jobs

    jobs = load_jobs(jobs_file("clock_skew_warning: 500ms\nclock_skew_limit: 1m\njobs: {}\n"))
    assert (jobs.clock_skew_warning, jobs.clock_skew_limit) == (0.5, 60.0)
    assert (load_jobs(jobs_file("jobs: {}\n")).clock_skew_warning, load_jobs(jobs_file("jobs: {}\n")).clock_skew_limit) \
        == (1.0, 5.0)


def test_a_fleet_host_whose_clock_is_30s_off_will_not_lead_and_a_leader_that_drifts_off_steps_down(
        pg_url: str, tmp_path: Path) -> None:
    import psycopg

    def pg(query: str) -> list[tuple]:
        with psycopg.connect(pg_url, autocommit=True, connect_timeout=3) as conn:
            return conn.execute(query).fetchall()  # type: ignore[arg-type]

    path = jobs_file_at(tmp_path, f"store: {pg_url}\nleader_lease: 2s\nclock_skew_warning: 1s\nclock_skew_limit: 5s\n"
                                  "jobs:\n  tick: {schedule: '* * * * * *', command: 'true'}\n")
    control = tmp_path / "faketime"
    env = faketime_env(control)
    control.write_text("+30\n")  # 30 s ahead of the database's clock from the start
    skewed_log, good_log = tmp_path / "skewed.log", tmp_path / "good.log"
    skewed = runner(path, "--state-dir", str(tmp_path / "a"), env=env, log=skewed_log)
    good = None
    try:
        assert wait_for(lambda: "clock is 30." in text(skewed_log), timeout=20), text(skewed_log)
        assert "ahead of the database's, more than clock_skew_limit (5s)" in text(skewed_log)
        assert wait_for(lambda: "standby: this host's clock is" in text(skewed_log), timeout=10)
        assert pg("SELECT count(*) FROM cronpy.runs") == [(0,)]  # it leads nothing, runs nothing
        good = runner(path, "--state-dir", str(tmp_path / "b"), log=good_log)
        assert wait_for(lambda: pg("SELECT count(*) FROM cronpy.runs")[0][0] >= 2, timeout=20), text(good_log)
        assert pg("SELECT DISTINCT runner_pid FROM cronpy.runs") == [(good.pid,)]
        assert "clock is" not in text(good_log)
        # The skewed host's clock is fixed: it warns no more and stands by behind the leader.
        control.write_text("+0\n")
        assert wait_for(lambda: "agrees with the database's again" in text(skewed_log), timeout=10)
        assert wait_for(lambda: "standby: the scheduler is already running elsewhere" in text(skewed_log), 10)
        # The leader's clock now drifts 3 s (warned) then 20 s (over the limit): at its next
        # renewal it hands the lease back, and the other host takes over.
        stop(good)
        assert wait_for(lambda: "took over" in text(skewed_log), timeout=15), text(skewed_log)
        control.write_text("+3\n")
        assert wait_for(lambda: "ahead of the database's (clock_skew_warning is 1s)" in text(skewed_log),
                        timeout=10), text(skewed_log)
        good = runner(path, "--state-dir", str(tmp_path / "b"), log=good_log)
        assert wait_for(lambda: "standby:" in text(good_log), timeout=15)
        control.write_text("+20\n")
        assert wait_for(lambda: "stepped down as the scheduler: this host's clock is 20." in text(skewed_log),
                        timeout=10), text(skewed_log)
        switched = time.time()
        assert wait_for(lambda: pg(f"SELECT count(*) FROM cronpy.runs WHERE runner_pid = {good.pid}"
                                   f" AND started_at > to_timestamp({switched})")[0][0] >= 2, timeout=15)
    finally:
        stop(skewed, *([good] if good else []))
    instants = [r[0] for r in pg("SELECT scheduled_for FROM cronpy.runs WHERE trigger = 'schedule'")]
    assert len(instants) == len(set(instants)), "an instant ran twice"


def jobs_file_at(folder: Path, body: str) -> Path:
    path = folder / "jobs.yaml"
    path.write_text(body)
    return path
