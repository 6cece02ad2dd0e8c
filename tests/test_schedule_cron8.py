"""Issue #18: every expression cronpy accepts means what cron(8) means, or it is refused.

One test (or a small group) per numbered point of the issue; each expected instant is
written by hand from cron(8)'s rules or the README's documented Quartz meaning.
"""

from __future__ import annotations

import textwrap
from datetime import datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from conftest import cronpy

from cronpy.config import parse_jobs
from cronpy.errors import ConfigError
from cronpy.models import JobSpec
from cronpy.schedule import compile_cron, next_fire, parse_schedule, upcoming

UTC = timezone.utc


def job(schedule: str, tz: str = "UTC", name: str = "job") -> JobSpec:
    return JobSpec(name=name, schedule=parse_schedule(schedule), timezone=tz, command="true")


def times(expr: str, tz: str, start: str, n: int, name: str = "job") -> list[str]:
    begin = datetime.fromisoformat(start)
    if begin.tzinfo is None:
        begin = begin.replace(tzinfo=UTC)
    return [t.astimezone(ZoneInfo(tz)).isoformat() for t in upcoming(job(expr, tz, name), begin, n)]


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_jobs(textwrap.dedent(text), "jobs.yaml", now=datetime(2026, 1, 1, tzinfo=UTC))
    return [p.format("jobs.yaml") for p in info.value.problems]


# 1. America/New_York springs forward on the second Sunday of March (8-14) at 02:00: every
#    time `*/30 2 8-14 3 */7` names falls in the skipped hour, so the job can never fire.
GAP_ONLY = """\
    timezone: America/New_York
    jobs:
      ok: {schedule: "0 3 * * *", command: "true"}
      gap:
        schedule: "*/30 2 8-14 3 */7"
        command: "true"
"""


def test_a_schedule_whose_every_time_is_skipped_is_refused_with_its_line() -> None:
    assert problems(GAP_ONLY) == [
        "jobs.yaml:5: jobs.gap.schedule: '*/30 2 8-14 3 */7' never fires in America/New_York: every "
        "time it names falls in a skipped daylight-saving hour"]


def test_next_fire_of_a_job_that_cannot_fire_is_none_and_does_not_raise() -> None:
    spec = job("*/30 2 8-14 3 */7", "America/New_York")
    assert next_fire(spec, datetime(2026, 1, 1, tzinfo=UTC)) is None
    # Near the end of the calendar too: no "year 10000 is out of range".
    assert next_fire(job("0 0 * * *"), datetime(9999, 12, 31, 12, tzinfo=UTC)) is None
    assert next_fire(job("*/30 2 8-14 3 */7", "America/New_York"), datetime(9990, 1, 1, tzinfo=UTC)) is None


@pytest.mark.slow
@pytest.mark.parametrize("command", [["validate"], ["list", "-f"], ["next", "gap", "-f"], ["run"]])
def test_cli_refuses_a_job_that_cannot_fire_instead_of_crashing(tmp_path: Path, command: list[str]) -> None:
    path = tmp_path / "jobs.yaml"
    path.write_text(f"state_dir: state\n{textwrap.dedent(GAP_ONLY)}")
    result = cronpy(*command, str(path), cwd=tmp_path, timeout=30)
    assert result.returncode == 2, result.stderr
    assert f"{path}:6: jobs.gap.schedule: '*/30 2 8-14 3 */7' never fires in America/New_York" in result.stderr
    assert "Traceback" not in result.stderr


# 2. A one-value range, however it is written, is that one value.
@pytest.mark.parametrize("expr,expected", [
    ("0 0 * 9-SEP *", ["2026-09-01T00:00:00+00:00", "2026-09-02T00:00:00+00:00"]),
    ("0 0 * JAN-1 *", ["2026-01-01T00:00:00+00:00", "2026-01-02T00:00:00+00:00"]),
    ("0 0 2-02 * *", ["2026-01-02T00:00:00+00:00", "2026-02-02T00:00:00+00:00"]),
    ("0 0 01-1 * *", ["2026-01-01T00:00:00+00:00", "2026-02-01T00:00:00+00:00"]),
    # 2026-01-02 is a Friday, 2026-01-04 a Sunday
    ("0 0 * * 5-FRI", ["2026-01-02T00:00:00+00:00", "2026-01-09T00:00:00+00:00"]),
    ("0 0 * * 7-SUN", ["2026-01-04T00:00:00+00:00", "2026-01-11T00:00:00+00:00"]),
    ("0 0 * * FRI-SUN", ["2026-01-02T00:00:00+00:00", "2026-01-03T00:00:00+00:00", "2026-01-04T00:00:00+00:00",
                         "2026-01-09T00:00:00+00:00"]),
    # Vixie cron: a step over a one-value range is that value (cronsim walks on to 7, 9, ...)
    ("0 5-5/2 * * *", ["2026-01-01T05:00:00+00:00", "2026-01-02T05:00:00+00:00"]),
])
def test_a_one_value_range_written_two_ways_is_one_value(expr: str, expected: list[str]) -> None:
    assert times(expr, "UTC", "2025-12-31T23:59:00", len(expected)) == expected


def test_a_backwards_range_is_refused_naming_its_field() -> None:
    with pytest.raises(ValueError, match="hour field '5-2': the range runs backwards"):
        parse_schedule("0 5-2 * * *")


# 3. `W`: the weekday nearest the given day, within the month (Quartz).
@pytest.mark.parametrize("expr,start,expected", [
    # 2026-02-15 is a Sunday: the nearest weekday is Monday the 16th
    ("0 0 15W * *", "2026-02-01T00:00:00", ["2026-02-16T00:00:00+00:00", "2026-03-16T00:00:00+00:00"]),
    # 2026-08-01 is a Saturday: 1W does not leave the month, so Monday the 3rd
    ("0 0 1W * *", "2026-07-15T00:00:00", ["2026-08-03T00:00:00+00:00"]),
    # 2026-05-31 is a Sunday: 31W is Friday the 29th; April has no 31st, so no run in April
    ("0 0 31W * *", "2026-04-01T00:00:00", ["2026-05-29T00:00:00+00:00"]),
    # LW: last weekday. 2026-01-31 is a Saturday -> Friday the 30th; 2026-02-28 a Saturday -> the 27th
    ("0 0 LW * *", "2026-01-01T00:00:00", ["2026-01-30T00:00:00+00:00", "2026-02-27T00:00:00+00:00"]),
])
def test_nearest_weekday_and_last_weekday(expr: str, start: str, expected: list[str]) -> None:
    assert times(expr, "UTC", start, len(expected)) == expected


# 4. The last given weekday of the month: Quartz `5L`, and croniter's spelling `L5`.
@pytest.mark.parametrize("expr", ["0 0 * * 5L", "0 0 * * L5", "0 0 * * FRIL"])
def test_last_weekday_of_month(expr: str) -> None:
    # Last Fridays: 2026-01-30, 2026-02-27, 2026-03-27
    assert times(expr, "UTC", "2026-01-01T00:00:00", 3) == [
        "2026-01-30T00:00:00+00:00", "2026-02-27T00:00:00+00:00", "2026-03-27T00:00:00+00:00"]


def test_last_weekday_with_a_day_of_month_follows_the_vixie_or_rule() -> None:
    # Both day fields restricted: the 15th or the last Friday.
    assert times("0 0 15 * 5L", "UTC", "2026-01-01T00:00:00", 4) == [
        "2026-01-15T00:00:00+00:00", "2026-01-30T00:00:00+00:00", "2026-02-15T00:00:00+00:00",
        "2026-02-27T00:00:00+00:00"]


# 5. A list keeps every item: `5#3,5` is every Friday (the third one included once).
def test_nth_weekday_in_a_list_keeps_the_plain_weekday() -> None:
    assert times("0 0 * * 5#3,5", "UTC", "2026-01-01T00:00:00", 3) == [
        "2026-01-02T00:00:00+00:00", "2026-01-09T00:00:00+00:00", "2026-01-16T00:00:00+00:00"]
    assert times("0 0 * * 1#1,5#3", "UTC", "2026-01-01T00:00:00", 2) == [
        "2026-01-05T00:00:00+00:00", "2026-01-16T00:00:00+00:00"]


# 6. America/New_York falls back on 2027-11-07 at 02:00 EDT (06:00Z) to 01:00 EST: a wildcard
#    job runs in both passes of 01:00-01:59, even when asked from inside the first pass.
def test_wildcard_job_runs_the_second_pass_when_the_next_day_match_is_a_year_away() -> None:
    assert times("*/20 1 1-7 11 */7", "America/New_York", "2027-11-07T00:00:00-04:00", 7) == [
        "2027-11-07T01:00:00-04:00", "2027-11-07T01:20:00-04:00", "2027-11-07T01:40:00-04:00",
        "2027-11-07T01:00:00-05:00", "2027-11-07T01:20:00-05:00", "2027-11-07T01:40:00-05:00",
        "2028-11-05T01:00:00-04:00"]


# 7. cron(8)'s rule: a job is "wildcard" when its minute or hour field starts with `*`.
def test_wildcard_is_a_minute_or_hour_field_starting_with_a_star() -> None:
    assert compile_cron("*/15 * * * *", "j").wildcard
    assert compile_cron("0 * * * *", "j").wildcard
    assert compile_cron("0 */2 * * *", "j").wildcard
    assert not compile_cron("0 1/2 * * *", "j").wildcard
    assert not compile_cron("0 0-23/2 * * *", "j").wildcard
    assert not compile_cron("*/10 0 2 * * *", "j").wildcard  # a seconds field is not cron(8)'s


def test_stepped_hour_not_starting_with_star_is_fixed_time_across_dst() -> None:
    # Europe/Dublin springs forward 2027-03-28 at 01:00 GMT to 02:00 IST (01:00Z): cron(8) runs
    # the 01:00 job of `0 1/2` at the change.
    assert times("0 1/2 * * *", "Europe/Dublin", "2027-03-28T00:00:00", 2) == [
        "2027-03-28T02:00:00+01:00", "2027-03-28T03:00:00+01:00"]
    # Europe/Berlin falls back 2027-10-31 at 03:00 CEST to 02:00 CET (01:00Z): 02:00 runs once.
    assert times("0 0-23/2 * * *", "Europe/Berlin", "2027-10-30T23:30:00", 2) == [
        "2027-10-31T02:00:00+02:00", "2027-10-31T04:00:00+01:00"]


# 8. `H` hashes each field on its own, so `H H` uses all 1,440 minutes of the day.
def test_hashed_minute_and_hour_are_independent() -> None:
    # With one hash for both fields (minute = h % 60, hour = (h >> 1) % 24) only 240 of the
    # day's 1,440 (hour, minute) slots can ever be chosen; independent hashes reach them all:
    # 1,000 names fill ~1,440 * (1 - e^(-1000/1440)) = 720 distinct slots.
    pairs = {(f.hours[0], f.minutes[0]) for f in (compile_cron("H H * * *", f"job{i}") for i in range(1000))}
    assert len(pairs) > 600


@pytest.mark.slow
def test_next_expr_takes_the_job_name_that_h_hashes(tmp_path: Path) -> None:
    path = tmp_path / "jobs.yaml"
    path.write_text('jobs:\n  backup: {schedule: "H H * * *", command: "true"}\n')
    start = "2026-01-01T00:00:00+00:00"
    by_job = cronpy("next", "backup", "-f", str(path), "--from", start, "-n", "2")
    by_expr = cronpy("next", "--expr", "H H * * *", "--name", "backup", "--from", start, "-n", "2")
    assert by_job.returncode == by_expr.returncode == 0, by_expr.stderr
    assert by_job.stdout == by_expr.stdout and by_job.stdout.strip()


# 9. Europe/Lisbon springs forward 2027-03-28 at 01:00 WET to 02:00 WEST (01:00Z).
def test_at_in_a_skipped_hour_runs_at_the_change() -> None:
    jobs = parse_jobs('timezone: Europe/Lisbon\njobs:\n  once: {at: "2027-03-28T01:30:00", command: "true"}\n',
                      "jobs.yaml")
    spec = jobs.jobs["once"]
    when = next_fire(spec, datetime(2027, 1, 1, tzinfo=UTC))
    assert when is not None and when.astimezone(ZoneInfo("Europe/Lisbon")).isoformat() == "2027-03-28T02:00:00+01:00"
    assert jobs.warnings == ("jobs.yaml:3: jobs.once.at: 2027-03-28T01:30:00 does not exist in Europe/Lisbon "
                             "(the clocks skip from 01:00 to 02:00): it runs at the change, "
                             "2027-03-28T02:00:00+01:00",)


@pytest.mark.slow
def test_validate_warns_about_an_at_in_a_skipped_hour(tmp_path: Path) -> None:
    path = tmp_path / "jobs.yaml"
    path.write_text('timezone: Europe/Lisbon\njobs:\n  once: {at: "2027-03-28T01:30:00", command: "true"}\n')
    result = cronpy("validate", str(path))
    assert result.returncode == 0, result.stderr
    assert f"warning: {path}:3: jobs.once.at: 2027-03-28T01:30:00 does not exist in Europe/Lisbon" in result.stderr


# 10. The search covers a whole 400-year Gregorian cycle, not 29 years: 2100 is not a leap year.
def test_a_rare_schedule_is_found_across_a_century_without_leap_day() -> None:
    # 29 February on a Sunday: 2032, 2060, 2088, then 2128 (2100 has no 29 February).
    assert times("0 0 29 2 */7", "UTC", "2088-03-01T00:00:00", 1) == ["2128-02-29T00:00:00+00:00"]


# 11. A jitter as long as the shortest gap between runs would thin the schedule.
def test_jitter_not_shorter_than_the_period_is_refused() -> None:
    assert problems("""\
        jobs:
          every_minute: {schedule: "* * * * *", jitter: 5m, command: "true"}
          interval: {schedule: 10m, jitter: 10m, command: "true"}
          hourly: {schedule: "0 * * * *", jitter: 5m, command: "true"}
          twice: {schedule: "0 8,9 * * *", jitter: 2h, command: "true"}
    """) == [
        "jobs.yaml:2: jobs.every_minute.jitter: 5m is not shorter than the gap between two of its runs "
        "(1m): runs would be dropped",
        "jobs.yaml:3: jobs.interval.jitter: 10m is not shorter than the gap between two of its runs (10m): "
        "runs would be dropped",
        "jobs.yaml:5: jobs.twice.jitter: 2h is not shorter than the gap between two of its runs (1h): "
        "runs would be dropped",
    ]


# 12. America/Nuuk changed its standard offset to -02 on 2023-10-28 at 23:00 local (01:00Z on
#     the 29th) while leaving DST: the offset stays -02, so no wall time repeats or vanishes.
@pytest.mark.parametrize("expr,expected", [
    ("30 23 * * *", ["2023-10-28T23:30:00-02:00", "2023-10-29T23:30:00-02:00"]),
    ("*/30 23 * * *", ["2023-10-28T23:00:00-02:00", "2023-10-28T23:30:00-02:00", "2023-10-29T23:00:00-02:00"]),
])
def test_a_change_that_keeps_the_offset_is_no_transition(expr: str, expected: list[str]) -> None:
    assert times(expr, "America/Nuuk", "2023-10-28T12:00:00", len(expected)) == expected


# The README's other promises about the parser.
def test_hashed_ranges_and_steps_stay_inside_their_range() -> None:
    f = compile_cron("H(0-29)/10 H(9-17) H * *", "backup")
    assert len(f.minutes) == 3 and f.minutes[0] < 10 and all(m < 30 for m in f.minutes)
    assert 9 <= f.hours[0] <= 17
    assert all(1 <= d <= 28 for d in f.doms) and len(f.doms) == 1  # every month has it


def test_a_seconds_field_does_not_make_a_job_wildcard() -> None:
    # London springs forward 2026-03-29 at 01:00 GMT: the six 01:30:x0 times run once, at the change.
    assert times("*/10 30 1 * * *", "Europe/London", "2026-03-29T00:00:00", 2) == [
        "2026-03-29T02:00:00+01:00", "2026-03-30T01:30:00+01:00"]


@pytest.mark.parametrize("expr,message", [
    ("0 0 * * L", "day-of-week field 'L': `L` needs a weekday here"),
    ("0 0 * * 5#6", "day-of-week field '5#6': #6: a weekday occurs 1 to 5 times a month"),
    ("0 0 32W * *", "day-of-month field '32W': 32 is out of range 1-31"),
    ("*/0 * * * *", "minute field '*/0': a step must be at least 1"),
    ("0 0 * FOO *", "month field 'FOO': 'FOO' is not a number or a name"),
    ("0 0 1,,2 * *", "day-of-month field '1,,2': an empty list item"),
    ("0 0 ? * ?", None),
])
def test_each_field_error_names_its_field(expr: str, message: str | None) -> None:
    if message is None:
        parse_schedule(expr)  # `?` is `*` in either day field
        return
    with pytest.raises(ValueError) as info:
        parse_schedule(expr)
    assert message in str(info.value)
