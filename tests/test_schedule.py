"""Schedule arithmetic: cron(8) semantics, DST in both hemispheres, intervals, one-shots.

Every expectation here is written by hand from the rules in the README, not computed.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from cronpy.models import At, JobSpec
from cronpy.schedule import compile_cron, next_fire, parse_schedule, upcoming

UTC = timezone.utc


def job(schedule: str, tz: str = "UTC", name: str = "job") -> JobSpec:
    return JobSpec(name=name, schedule=parse_schedule(schedule), timezone=tz, command="true")


def iso(times: list[datetime], tz: str) -> list[str]:
    from zoneinfo import ZoneInfo

    return [t.astimezone(ZoneInfo(tz)).isoformat() for t in times]


def utc(s: str) -> datetime:
    return datetime.fromisoformat(s).replace(tzinfo=UTC)


DST_CASES = [
    # Europe/London 2026: forward 29 Mar 01:00 GMT -> 02:00 BST (01:00Z); back 25 Oct 02:00 BST -> 01:00 GMT (01:00Z)
    ("fixed time in the skipped hour runs once at the change", "30 1 * * *", "Europe/London",
     "2026-03-28T12:00:00", ["2026-03-29T02:00:00+01:00", "2026-03-30T01:30:00+01:00"]),
    ("fixed time in the repeated hour runs once, first pass", "30 1 * * *", "Europe/London",
     "2026-10-24T12:00:00", ["2026-10-25T01:30:00+01:00", "2026-10-26T01:30:00+00:00"]),
    ("wildcard minute runs in both passes of the repeated hour", "*/30 * * * *", "Europe/London",
     "2026-10-25T00:10:00", ["2026-10-25T01:30:00+01:00", "2026-10-25T01:00:00+00:00",
                             "2026-10-25T01:30:00+00:00", "2026-10-25T02:00:00+00:00"]),
    ("wildcard hour has no run in the skipped hour", "0 * * * *", "Europe/London",
     "2026-03-29T00:30:00", ["2026-03-29T02:00:00+01:00", "2026-03-29T03:00:00+01:00"]),
    ("6-field fixed time in the skipped hour", "0 30 1 * * *", "Europe/London",
     "2026-03-28T12:00:00", ["2026-03-29T02:00:00+01:00", "2026-03-30T01:30:00+01:00"]),
    ("6-field wildcard minute in the repeated hour", "30 */30 * * * *", "Europe/London",
     "2026-10-25T00:40:00", ["2026-10-25T01:00:30+00:00", "2026-10-25T01:30:30+00:00", "2026-10-25T02:00:30+00:00"]),
    # Europe/Lisbon 2026: the same instants as London (WET/WEST)
    ("Lisbon fixed time in the repeated hour", "0 1 * * *", "Europe/Lisbon",
     "2026-10-24T12:00:00", ["2026-10-25T01:00:00+01:00", "2026-10-26T01:00:00+00:00"]),
    # America/New_York 2026: forward 8 Mar 02:00 EST -> 03:00 EDT (07:00Z); back 1 Nov 02:00 EDT -> 01:00 EST (06:00Z)
    ("New York fixed time in the skipped hour", "30 2 * * *", "America/New_York",
     "2026-03-07T12:00:00", ["2026-03-08T03:00:00-04:00", "2026-03-09T02:30:00-04:00"]),
    ("New York fixed time in the repeated hour", "30 1 * * *", "America/New_York",
     "2026-10-31T12:00:00", ["2026-11-01T01:30:00-04:00", "2026-11-02T01:30:00-05:00"]),
    ("New York wildcard hour in the repeated hour", "15 * * * *", "America/New_York",
     "2026-11-01T05:00:00", ["2026-11-01T01:15:00-04:00", "2026-11-01T01:15:00-05:00", "2026-11-01T02:15:00-05:00"]),
    # Australia/Sydney 2026: back 5 Apr 03:00 AEDT -> 02:00 AEST (16:00Z 4 Apr); forward 4 Oct 02:00 AEST -> 03:00 AEDT (16:00Z 3 Oct)
    ("Sydney fixed time in the repeated hour", "30 2 * * *", "Australia/Sydney",
     "2026-04-04T12:00:00", ["2026-04-05T02:30:00+11:00", "2026-04-06T02:30:00+10:00"]),
    ("Sydney fixed time in the skipped hour", "30 2 * * *", "Australia/Sydney",
     "2026-10-03T12:00:00", ["2026-10-04T03:00:00+11:00", "2026-10-05T02:30:00+11:00"]),
    # America/Sao_Paulo, when it had DST: forward 4 Nov 2018 00:00 -> 01:00 (03:00Z); back 17 Feb 2019 00:00 -> 16 Feb 23:00 (02:00Z)
    ("Sao Paulo fixed time in the skipped hour (midnight)", "30 0 * * *", "America/Sao_Paulo",
     "2018-11-03T12:00:00", ["2018-11-04T01:00:00-02:00", "2018-11-05T00:30:00-02:00"]),
    ("Sao Paulo fixed time in the repeated hour", "30 23 * * *", "America/Sao_Paulo",
     "2019-02-16T12:00:00", ["2019-02-16T23:30:00-02:00", "2019-02-17T23:30:00-03:00"]),
    # Australia/Lord_Howe 2026, a 30-minute shift: back 5 Apr 02:00 +11 -> 01:30 +10:30 (15:00Z 4 Apr);
    # forward 4 Oct 02:00 +10:30 -> 02:30 +11 (15:30Z 3 Oct)
    ("Lord Howe fixed time in the repeated half hour", "45 1 * * *", "Australia/Lord_Howe",
     "2026-04-04T12:00:00", ["2026-04-05T01:45:00+11:00", "2026-04-06T01:45:00+10:30"]),
    ("Lord Howe fixed time in the skipped half hour", "15 2 * * *", "Australia/Lord_Howe",
     "2026-10-03T12:00:00", ["2026-10-04T02:30:00+11:00", "2026-10-05T02:15:00+11:00"]),
    ("Lord Howe wildcard minute through the repeated half hour", "*/20 * * * *", "Australia/Lord_Howe",
     "2026-04-04T14:50:00", ["2026-04-05T01:40:00+10:30", "2026-04-05T02:00:00+10:30", "2026-04-05T02:20:00+10:30"]),
]


@pytest.mark.parametrize("what,expr,tz,start,expected", DST_CASES, ids=[c[0] for c in DST_CASES])
def test_dst_transitions_follow_cron8(what: str, expr: str, tz: str, start: str, expected: list[str]) -> None:
    assert iso(upcoming(job(expr, tz), utc(start), len(expected)), tz) == expected


def test_interval_counts_elapsed_time_across_fall_back() -> None:
    # London falls back at 01:00Z on 25 Oct 2026: a 90-minute interval ignores it.
    spec = job("every 90m", "Europe/London")
    anchor = utc("2026-10-25T00:00:00")
    first = next_fire(spec, anchor, anchor)
    second = next_fire(spec, first, first)  # type: ignore[arg-type]
    assert [first, second] == [utc("2026-10-25T01:30:00"), utc("2026-10-25T03:00:00")]


def test_interval_continues_cadence_from_anchor_after_a_gap() -> None:
    # Last scheduled at 10:00:00, every 10m, the runner comes back at 10:37: next is 10:40, not 10:47.
    spec = job("10m")
    assert next_fire(spec, utc("2026-01-01T10:37:00"), utc("2026-01-01T10:00:00")) == utc("2026-01-01T10:40:00")


@pytest.mark.parametrize("expr,start,expected", [
    ("0 0 31 * *", "2026-01-31T12:00:00", ["2026-03-31T00:00:00+00:00", "2026-05-31T00:00:00+00:00"]),
    ("0 0 29 2 *", "2026-01-01T00:00:00", ["2028-02-29T00:00:00+00:00", "2032-02-29T00:00:00+00:00"]),
    ("0 0 L * *", "2026-02-01T00:00:00", ["2026-02-28T00:00:00+00:00", "2026-03-31T00:00:00+00:00"]),
    ("0 0 L 2 *", "2027-03-01T00:00:00", ["2028-02-29T00:00:00+00:00"]),
    # Mondays: Jan 2026 5,12,19,26; Feb 2..23; Mar 2..30 (a fifth); Apr, May have four; Jun 1..29 (a fifth)
    ("0 0 * * 1#5", "2026-01-01T00:00:00", ["2026-03-30T00:00:00+00:00", "2026-06-29T00:00:00+00:00"]),
    ("0 9 * * MON#2", "2026-01-01T00:00:00", ["2026-01-12T09:00:00+00:00"]),
    ("0 0 1 1 *", "2026-12-31T23:59:59", ["2027-01-01T00:00:00+00:00"]),
    ("59 23 31 12 *", "2026-12-31T23:59:00", ["2027-12-31T23:59:00+00:00"]),
    # Vixie cron: both day fields restricted -> either matches (the 13th, or a Friday)
    ("0 0 13 * 5", "2026-02-01T00:00:00", ["2026-02-06T00:00:00+00:00", "2026-02-13T00:00:00+00:00",
                                           "2026-02-20T00:00:00+00:00"]),
    # ... but a day field starting with `*` (even */10) means both must match: a 1st/11th/21st/31st that is a Monday
    ("0 0 */10 * 1", "2026-01-01T00:00:00", ["2026-05-11T00:00:00+00:00"]),
    ("1-10/3 0 * * *", "2026-01-01T00:00:30", ["2026-01-01T00:01:00+00:00", "2026-01-01T00:04:00+00:00",
                                               "2026-01-01T00:07:00+00:00", "2026-01-01T00:10:00+00:00"]),
    ("0 12 * JAN,JUL SUN", "2026-01-01T00:00:00", ["2026-01-04T12:00:00+00:00"]),
    ("@weekly", "2026-01-01T00:00:00", ["2026-01-04T00:00:00+00:00"]),
    ("*/15 * * * * *", "2026-01-01T00:00:00", ["2026-01-01T00:00:15+00:00", "2026-01-01T00:00:30+00:00"]),
])
def test_calendar_edge_cases(expr: str, start: str, expected: list[str]) -> None:
    assert iso(upcoming(job(expr), utc(start), len(expected)), "UTC") == expected


def test_next_fire_is_strictly_after_and_never_early() -> None:
    spec = job("0 3 * * *", "Europe/Lisbon")
    at = utc("2026-06-01T02:00:00")  # 03:00 WEST
    assert next_fire(spec, at) == utc("2026-06-02T02:00:00")
    assert next_fire(spec, at - timedelta(microseconds=1)) == at


def test_hashed_fields_spread_equal_schedules_and_are_stable_per_name() -> None:
    minutes = {next_fire(job("H 3 * * *", name=f"job{i}"), utc("2026-01-01T00:00:00")) for i in range(50)}
    assert len(minutes) >= 30  # fifty jobs, not fifty runs at 03:00:00
    assert all(t.hour == 3 for t in minutes if t)  # type: ignore[union-attr]
    a = next_fire(job("H 3 * * *", name="backup"), utc("2026-01-01T00:00:00"))
    assert a == next_fire(job("H 3 * * *", name="backup"), utc("2026-01-01T00:00:00"))


def test_one_shot_fires_once_then_never() -> None:
    when = utc("2026-12-31T23:59:00")
    spec = JobSpec(name="y", schedule=At(when=when, text="x"), command="true")
    assert next_fire(spec, utc("2026-12-01T00:00:00")) == when
    assert next_fire(spec, when) is None


@pytest.mark.parametrize("text,message", [
    ("61 * * * *", "out of range"),
    ("* * * *", "5 fields"),
    ("0 0 * * * * *", "5 fields"),
    ("@fortnightly", "unknown preset"),
    ("@reboot", "run_on_start"),
    ("every 0s", "longer than zero"),
])
def test_bad_schedules_are_rejected_with_a_reason(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_schedule(text)


def test_wildcard_classification_follows_cron8() -> None:
    assert compile_cron("*/15 * * * *", "j").wildcard
    assert compile_cron("0 * * * *", "j").wildcard
    assert not compile_cron("0,30 2 * * *", "j").wildcard
    assert not compile_cron("30 2 * * 1-5", "j").wildcard


def test_a_one_value_range_means_that_value_not_every_value() -> None:
    # croniter expands `2-2` to `*`; cronpy must not inherit that.
    assert upcoming(job("0 0 2-2 * *"), utc("2026-01-01T00:00:00"), 2) == [utc("2026-01-02T00:00:00"), utc("2026-02-02T00:00:00")]
    assert upcoming(job("30 4-4 * * MON-MON"), utc("2026-01-01T00:00:00"), 1) == [utc("2026-01-05T04:30:00")]


def test_zones_come_from_the_tzdata_package_not_the_host() -> None:
    import zoneinfo

    from cronpy import schedule

    schedule._zone.cache_clear()
    zoneinfo.reset_tzpath(to=[])  # as on a machine without /usr/share/zoneinfo
    try:
        assert iso(upcoming(job("30 1 * * *", "Europe/London"), utc("2026-03-28T12:00:00"), 1), "Europe/London") == [
            "2026-03-29T02:00:00+01:00"]
    finally:
        zoneinfo.reset_tzpath()
        schedule._zone.cache_clear()


@pytest.mark.parametrize("expr,start,expected", [
    # --from 01:30 on London's spring-forward night does not exist: read as 01:30 GMT (= 02:30 BST)
    ("0 * * * *", "2026-03-29T01:30:00", ["2026-03-29T03:00:00+01:00"]),
    # --from 01:30 in the repeated hour is the first pass (fold=0): a fixed 01:45 job still runs then
    ("45 1 * * *", "2026-10-25T01:30:00", ["2026-10-25T01:45:00+01:00", "2026-10-26T01:45:00+00:00"]),
])
def test_from_inside_a_skipped_or_repeated_hour(expr: str, start: str, expected: list[str]) -> None:
    from zoneinfo import ZoneInfo

    naive = datetime.fromisoformat(start).replace(tzinfo=ZoneInfo("Europe/London"))
    assert iso(upcoming(job(expr, "Europe/London"), naive, len(expected)), "Europe/London") == expected
