"""The loop, tick by tick on an injected clock, with real processes, SQLite and file locks."""

from __future__ import annotations

import random
import subprocess
import sys
import textwrap
from datetime import datetime, timedelta, timezone
from pathlib import Path

from conftest import Harness, jobset, wait_for

from cronpy.locks import Locks
from cronpy.models import RunStatus, Trigger
from cronpy.runner import LEAD, Runner

UTC = timezone.utc
T0 = datetime(2026, 5, 4, 9, 59, 30, tzinfo=UTC)


def test_jobs_fire_at_their_instants_and_are_recorded(harness) -> None:
    h: Harness = harness("""
        jobs:
          minutely: {schedule: "* * * * *", command: "echo tick"}
          quarter: {schedule: "*/15 * * * *", command: "true"}
    """, T0).start()
    h.run_until(T0 + timedelta(minutes=16))
    minutely = h.rows("minutely")
    assert [r.scheduled_for for r in minutely] == [datetime(2026, 5, 4, 10, m, tzinfo=UTC) for m in range(16)]
    assert all(r.status is RunStatus.SUCCESS and r.output == "tick\n" for r in minutely)
    assert [r.scheduled_for for r in h.rows("quarter")] == [datetime(2026, 5, 4, 10, m, tzinfo=UTC) for m in (0, 15)]
    assert ("minutely", "tick") in h.lines


def test_the_runner_sleeps_until_the_next_instant_not_a_poll_interval(harness) -> None:
    h: Harness = harness('jobs:\n  daily: {schedule: "0 3 * * *", command: "true"}\n', T0).start()
    assert h.runner.next_wakeup() == datetime(2026, 5, 5, 3, 0, tzinfo=UTC)
    assert h.runner.tick(T0 + timedelta(hours=1)) == []  # nothing due: nothing happens


def test_retries_back_off_exponentially(harness, monkeypatch) -> None:
    h: Harness = harness("""
        jobs:
          flaky:
            schedule: "0 10 * * *"
            command: "exit 1"
            retries: 3
            backoff: {initial: 10s, factor: 3, max: 60s, jitter: 0}
    """, T0).start()
    h.run_until(T0 + timedelta(hours=1))
    rows = h.rows("flaky")
    assert [(r.attempt, r.trigger) for r in rows] == [(1, Trigger.SCHEDULE), (2, Trigger.RETRY), (3, Trigger.RETRY), (4, Trigger.RETRY)]
    starts = [r.started_at for r in rows]
    gaps = [(b - a).total_seconds() for a, b in zip(starts, starts[1:])]  # type: ignore[operator]
    assert gaps == [10.0, 30.0, 60.0]  # 10, 10*3, min(60, 10*9)
    assert all(r.scheduled_for == datetime(2026, 5, 4, 10, 0, tzinfo=UTC) for r in rows)


def test_a_success_stops_the_retries(harness, tmp_path: Path) -> None:
    marker = tmp_path / "second-try"
    h: Harness = harness(f"""
        jobs:
          flaky:
            schedule: "0 10 * * *"
            command: "test -e {marker} || {{ touch {marker}; exit 1; }}"
            retries: 5
            backoff: {{initial: 1s}}
    """, T0).start()
    h.run_until(T0 + timedelta(minutes=10))
    assert [r.status for r in h.rows("flaky")] == [RunStatus.FAILED, RunStatus.SUCCESS]


def test_overlap_skip_records_a_skipped_run(harness) -> None:
    h: Harness = harness('jobs:\n  slow: {schedule: "* * * * * *", command: "sleep 2"}\n', T0).start()
    first = datetime(2026, 5, 4, 9, 59, 31, tzinfo=UTC)
    h.clock.set(first)
    h.runner.tick(first)
    h.clock.set(first + timedelta(seconds=1))
    h.runner.tick(first + timedelta(seconds=1))
    assert h.runner.wait_idle(10)
    rows = h.rows("slow")
    assert [r.status for r in rows] == [RunStatus.SUCCESS, RunStatus.SKIPPED]
    assert "overlap: skip" in (rows[1].error or "")


def test_overlap_queue_runs_once_after_the_current_run(harness) -> None:
    h: Harness = harness('jobs:\n  slow: {schedule: "* * * * * *", command: "sleep 1", overlap: queue}\n', T0).start()
    t = datetime(2026, 5, 4, 9, 59, 31, tzinfo=UTC)
    for i in range(3):  # three instants while the first run is still going
        h.clock.set(t + timedelta(seconds=i))
        h.runner.tick(t + timedelta(seconds=i))
    assert wait_for(lambda: h.runner.active_count == 0, timeout=10)
    h.runner.tick(h.clock.now())  # the finished run wakes the loop, which starts the queued one
    assert h.runner.wait_idle(10)
    statuses = [r.status for r in h.rows("slow")]
    assert statuses == [RunStatus.SUCCESS, RunStatus.SKIPPED, RunStatus.SUCCESS]


def test_overlap_allow_runs_concurrently(harness) -> None:
    h: Harness = harness('jobs:\n  par: {schedule: "* * * * * *", command: "sleep 1", overlap: allow}\n', T0).start()
    t = datetime(2026, 5, 4, 9, 59, 31, tzinfo=UTC)
    h.runner.tick(t)
    h.runner.tick(t + timedelta(seconds=1))
    assert h.runner.active_count == 2
    assert h.runner.wait_idle(10)


def test_a_run_held_by_another_process_is_skipped_with_the_holder(harness, state_dir: Path) -> None:
    # Another process holds the job's lock (as `cronpy trigger` would).
    code = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from cronpy.locks import Locks
        lock = Locks(Path({str(state_dir)!r})).job("backup")
        lock.acquire()
        print("locked", flush=True)
        sys.stdin.readline()
    """)
    holder = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        h: Harness = harness('jobs:\n  backup: {schedule: "0 10 * * *", command: "true"}\n', T0).start()
        h.step()
        (row,) = h.rows("backup")
        assert row.status is RunStatus.SKIPPED
        assert f"pid {holder.pid}" in (row.error or "")
    finally:
        holder.communicate("\n", timeout=10)


def test_max_concurrent_queues_by_priority(harness, tmp_path: Path) -> None:
    log = tmp_path / "order"
    h: Harness = harness(f"""
        max_concurrent: 1
        jobs:
          low: {{schedule: "0 10 * * *", command: "echo low >> {log}; sleep 0.2", priority: 1}}
          high: {{schedule: "0 10 * * *", command: "echo high >> {log}; sleep 0.2", priority: 9}}
          mid: {{schedule: "0 10 * * *", command: "echo mid >> {log}; sleep 0.2", priority: 5}}
    """, T0).start()
    t = datetime(2026, 5, 4, 10, 0, tzinfo=UTC)
    h.clock.set(t)
    assert len(h.runner.tick(t)) == 1
    assert h.runner.active_count == 1
    for _ in range(2):
        assert wait_for(lambda: h.runner.active_count == 0)
        h.runner.tick(t)
    assert h.runner.wait_idle(10)
    assert log.read_text().split() == ["high", "mid", "low"]


def test_run_on_start_and_disabled_jobs(harness) -> None:
    h: Harness = harness("""
        jobs:
          boot: {schedule: "0 3 * * *", command: "true", run_on_start: true}
          off: {schedule: "* * * * *", command: "true", enabled: false}
    """, T0).start()
    h.run_until(T0 + timedelta(minutes=5))
    assert [r.trigger for r in h.rows("boot")] == [Trigger.START]
    assert h.rows("off") == []


def test_an_interval_continues_its_cadence_after_a_restart(state_dir: Path) -> None:
    jobs = jobset('jobs:\n  beat: {schedule: 10m, command: "true"}\n')
    start = datetime(2026, 5, 4, 10, 0, tzinfo=UTC)
    first = Harness(jobs, state_dir, start).start()
    first.run_until(start + timedelta(minutes=25))  # fires 10:10, 10:20
    first.history.close()
    # Restarted at 10:37: the cadence continues at 10:40, not 10:47.
    second = Harness(jobs, state_dir, start + timedelta(minutes=37)).start()
    second.run_until(start + timedelta(minutes=51))
    times = [r.scheduled_for.strftime("%H:%M") for r in second.rows("beat")]  # type: ignore[union-attr]
    assert times == ["10:10", "10:20", "10:40", "10:50"]
    second.history.close()


def test_an_instant_missed_while_no_runner_scheduled_fires_once_late_within_the_window(state_dir: Path) -> None:
    # The leader dies after firing 10:01; its successor starts at 10:02:07 (a restart, or a
    # takeover once the dead leader's lease ran out). 10:02 is 7 s late: it fires once,
    # late, as a scheduled run, and the schedule goes on at 10:03.
    jobs = jobset('jobs:\n  billing: {schedule: "* * * * *", command: "true"}\n')
    start = datetime(2026, 5, 4, 10, 0, 30, tzinfo=UTC)
    first = Harness(jobs, state_dir, start).start()
    first.run_until(datetime(2026, 5, 4, 10, 1, 30, tzinfo=UTC))
    first.history.close()
    second = Harness(jobs, state_dir, datetime(2026, 5, 4, 10, 2, 7, tzinfo=UTC)).start()
    second.run_until(datetime(2026, 5, 4, 10, 3, 30, tzinfo=UTC))
    rows = second.rows("billing")
    assert [(r.scheduled_for.strftime("%H:%M:%S"), r.started_at.strftime("%H:%M:%S"), r.trigger)  # type: ignore[union-attr]
            for r in rows] == [("10:01:00", "10:01:00", Trigger.SCHEDULE), ("10:02:00", "10:02:07", Trigger.SCHEDULE),
                               ("10:03:00", "10:03:00", Trigger.SCHEDULE)]
    second.history.close()
    # Past the window (a fleet passes its lease + 10 s), a missed instant is left to catch_up.
    third = Harness(jobs, state_dir, datetime(2026, 5, 4, 10, 4, 15, tzinfo=UTC))
    third.runner.start(third.clock.now(), late_window=timedelta(seconds=10))
    assert third.runner.next_wakeup() == datetime(2026, 5, 4, 10, 5, tzinfo=UTC)
    third.history.close()


def test_a_one_shot_runs_once_even_across_a_restart(state_dir: Path) -> None:
    jobs = jobset("jobs:\n  once: {at: '2026-05-04T10:00:00+00:00', command: 'true', catch_up: true}\n")
    first = Harness(jobs, state_dir, T0).start()
    first.run_until(T0 + timedelta(minutes=5))
    first.history.close()
    second = Harness(jobs, state_dir, T0 + timedelta(minutes=10)).start()  # restart after it ran
    second.run_until(T0 + timedelta(minutes=20))
    assert [r.status for r in second.rows("once")] == [RunStatus.SUCCESS]
    second.history.close()


def test_two_runners_on_one_state_dir_claim_each_instant_once(state_dir: Path) -> None:
    jobs = jobset('jobs:\n  billing: {schedule: "* * * * *", command: "true"}\n')
    a, b = Harness(jobs, state_dir, T0).start(), Harness(jobs, state_dir, T0).start()
    for minute in range(5):
        t = datetime(2026, 5, 4, 10, minute, tzinfo=UTC)
        for h in (a, b):
            h.clock.set(t)
            h.runner.tick(t)
        a.runner.wait_idle(10), b.runner.wait_idle(10)
    rows = a.rows("billing")
    assert len(rows) == 5 and len({r.scheduled_for for r in rows}) == 5
    a.history.close(), b.history.close()


def test_a_wall_clock_jump_forward_does_not_replay_missed_runs(harness) -> None:
    h: Harness = harness('jobs:\n  m: {schedule: "* * * * *", command: "true"}\n', T0).start()
    h.step()  # 10:00
    later = datetime(2026, 5, 4, 14, 0, 30, tzinfo=UTC)  # suspended for four hours
    h.clock.set(later)
    h.runner.tick(later)
    h.runner.wait_idle(10)
    h.run_until(datetime(2026, 5, 4, 14, 1, 30, tzinfo=UTC))
    times = [r.scheduled_for.strftime("%H:%M") for r in h.rows("m")]  # type: ignore[union-attr]
    assert times == ["10:00", "14:01"]


def test_catch_up_fires_once_after_a_jump_however_many_were_missed(harness) -> None:
    h: Harness = harness('jobs:\n  m: {schedule: "* * * * *", command: "true", catch_up: true}\n', T0).start()
    h.step()  # 10:00
    later = datetime(2026, 5, 4, 14, 0, 30, tzinfo=UTC)
    h.clock.set(later)
    h.runner.tick(later)
    h.runner.wait_idle(10)
    h.run_until(datetime(2026, 5, 4, 14, 1, 30, tzinfo=UTC))
    rows = [(r.trigger.value, r.scheduled_for.strftime("%H:%M")) for r in h.rows("m")]  # type: ignore[union-attr]
    assert rows == [("schedule", "10:00"), ("catchup", "14:00"), ("schedule", "14:01")]


def test_catch_up_after_downtime_fires_once_and_not_again_on_the_next_restart(state_dir: Path) -> None:
    jobs = jobset('jobs:\n  nightly: {schedule: "0 2 * * *", command: "true", catch_up: true}\n')
    first = Harness(jobs, state_dir, datetime(2026, 5, 4, 1, 59, tzinfo=UTC)).start()
    first.run_until(datetime(2026, 5, 4, 2, 1, tzinfo=UTC))
    first.runner.shutdown(0), first.history.close()
    # Down for three nights; back at 09:00 on the 7th.
    second = Harness(jobs, state_dir, datetime(2026, 5, 7, 9, 0, tzinfo=UTC)).start()
    second.run_until(datetime(2026, 5, 7, 9, 1, tzinfo=UTC))
    second.runner.shutdown(0), second.history.close()
    third = Harness(jobs, state_dir, datetime(2026, 5, 7, 9, 5, tzinfo=UTC)).start()
    third.run_until(datetime(2026, 5, 7, 9, 6, tzinfo=UTC))
    rows = [(r.trigger.value, r.scheduled_for.isoformat()) for r in third.rows("nightly")]  # type: ignore[union-attr]
    assert rows == [("schedule", "2026-05-04T02:00:00+00:00"), ("catchup", "2026-05-07T02:00:00+00:00")]
    third.runner.shutdown(0), third.history.close()


def test_jitter_delays_the_start_but_not_the_scheduled_instant(state_dir: Path) -> None:
    jobs = jobset('jobs:\n  j: {schedule: "0 10 * * *", command: "true", jitter: 30s}\n')
    h = Harness(jobs, state_dir, T0)
    h.runner = Runner(jobs, h.history, Locks(state_dir), h.clock, rng=random.Random(4))
    h.start()
    due = h.runner.next_wakeup()
    nominal = datetime(2026, 5, 4, 10, 0, tzinfo=UTC)
    assert due is not None and nominal < due < nominal + timedelta(seconds=30)
    h.step()
    (row,) = h.rows("j")
    assert row.scheduled_for == nominal and row.started_at == due
    h.history.close()


def test_runner_walks_dst_nights_and_records_what_cron8_says(state_dir: Path) -> None:
    # Europe/London 2026: forward 29 Mar 01:00 GMT -> 02:00 BST (01:00Z); back 25 Oct 02:00 BST -> 01:00 GMT (01:00Z)
    jobs = jobset("""
        timezone: Europe/London
        jobs:
          fixed: {schedule: "30 1 * * *", command: "true"}
          wild: {schedule: "*/30 1 * * *", command: "true"}
    """)
    spring = Harness(jobs, state_dir, datetime(2026, 3, 28, 23, 0, tzinfo=UTC)).start()
    spring.run_until(datetime(2026, 3, 29, 3, 0, tzinfo=UTC))
    assert [r.scheduled_for.isoformat() for r in spring.rows("fixed")] == ["2026-03-29T01:00:00+00:00"]  # type: ignore[union-attr]
    assert spring.rows("wild") == []  # 01:xx does not exist that night
    spring.history.close()
    autumn = Harness(jobs, state_dir, datetime(2026, 10, 24, 23, 0, tzinfo=UTC)).start()
    autumn.run_until(datetime(2026, 10, 25, 3, 0, tzinfo=UTC))
    fixed = [r.scheduled_for.isoformat() for r in autumn.rows("fixed") if r.scheduled_for.month == 10]  # type: ignore[union-attr]
    wild = [r.scheduled_for.isoformat() for r in autumn.rows("wild") if r.scheduled_for.month == 10]  # type: ignore[union-attr]
    assert fixed == ["2026-10-25T00:30:00+00:00"]  # once, in the first pass (01:30 BST)
    assert wild == ["2026-10-25T00:00:00+00:00", "2026-10-25T00:30:00+00:00",  # 01:00, 01:30 BST
                    "2026-10-25T01:00:00+00:00", "2026-10-25T01:30:00+00:00"]  # 01:00, 01:30 GMT
    autumn.history.close()


def test_a_clock_step_back_never_repeats_an_instant_already_run(state_dir: Path) -> None:
    jobs = jobset('jobs:\n  m: {schedule: "* * * * *", command: "true"}\n')
    h = Harness(jobs, state_dir, T0).start()
    h.run_until(datetime(2026, 5, 4, 10, 2, 30, tzinfo=UTC))  # 10:00, 10:01, 10:02
    h.runner.shutdown(0), h.history.close()
    # NTP steps the clock back five minutes and the runner restarts: 10:00-10:02 come due again.
    again = Harness(jobs, state_dir, datetime(2026, 5, 4, 9, 57, 30, tzinfo=UTC)).start()
    again.run_until(datetime(2026, 5, 4, 10, 3, 30, tzinfo=UTC))
    times = [r.scheduled_for.strftime("%H:%M") for r in again.rows("m") if r.status is RunStatus.SUCCESS]  # type: ignore[union-attr]
    assert times == ["10:00", "10:01", "10:02", "09:58", "09:59", "10:03"]
    again.runner.shutdown(0), again.history.close()


def test_an_instant_claimed_ahead_starts_at_the_instant_and_not_without_lead(harness) -> None:
    h: Harness = harness('jobs:\n  minutely: {schedule: "* * * * *", command: "true"}\n', T0).start()
    due = datetime(2026, 5, 4, 10, 0, tzinfo=UTC)
    early = due - timedelta(milliseconds=2)
    h.clock.set(early)
    assert h.runner.tick(early) == []  # 2 ms early and no lead: nothing starts
    started = h.runner.tick(early, lead=LEAD)
    assert len(started) == 1
    assert h.clock.now() >= due  # the runner waited for the instant before spawning
    assert h.runner.wait_idle(20)
    [row] = h.rows("minutely")
    assert row.scheduled_for == due and row.started_at == due


def test_upcoming_lists_the_soonest_instants_in_order_among_many_jobs(harness) -> None:
    rng = random.Random(7)
    text = "jobs:\n" + "".join(
        f'  j{i:03d}: {{schedule: "{rng.randrange(60)} {rng.randrange(24)} * * *", command: "true"}}\n'
        for i in range(300))
    h: Harness = harness(text, T0).start()
    expected = sorted(h.runner.agenda.heap)[:10]
    assert h.runner.upcoming(10) == expected
    assert h.runner.next_due() == expected[0]


def test_one_store_writer_per_runner_whichever_threads_first_need_it(harness) -> None:
    # The supervisor's thread (a `true` job's outcome) and the loop's (its pid) both reach for
    # the writer, which starts on first use. Two writers made at once left one of them with the
    # outcome and no one to flush it: `cronpy trigger` exited with its run still `running`.
    import threading

    h = harness("jobs:\n  a: {schedule: '0 10 * * *', command: 'true'}\n", datetime(2026, 5, 4, 9, tzinfo=UTC))
    for _ in range(20):
        h.runner.close()  # no writer yet: the next use starts one
        barrier = threading.Barrier(8)
        seen: list[object] = []

        def grab() -> None:
            barrier.wait()
            seen.append(h.runner.recorder)

        threads = [threading.Thread(target=grab) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert len({id(r) for r in seen}) == 1, "two store writers for one runner"
