"""Pure schedule arithmetic: when does a job fire next after a given instant.

Nothing here reads the clock or does I/O. The runner, `cronpy next` and `cronpy list` all
call `next_fire`, so what `next` prints is what the runner fires.

Cron fields are parsed and expanded by croniter (names, ranges, steps, `L`, `#`, `H`); the
search for the next matching wall-clock time is ours, because croniter follows neither
cron(8)'s daylight-saving rules nor Vixie cron's day-of-month/day-of-week rule for fields
such as `*/2`, and constructing a croniter object costs ~200 us per job.
"""

from __future__ import annotations

import bisect
import calendar
import functools
import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronpy.durations import parse_duration
from cronpy.models import At, Cron, Every, JobSpec, Schedule

UTC = timezone.utc

PRESETS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}

# How far ahead to look for a match before calling an expression one that never fires
# (`0 0 30 2 *`). 28 years is the full cycle of weekdays against leap years.
SEARCH_YEARS = 29

_INTERVAL = re.compile(r"^(?:every\s+)?(\d+(?:\.\d+)?\s*(?:ms|s|m|h|d|w)\s*)+$", re.IGNORECASE)


def zone(name: str) -> ZoneInfo:
    """Return the IANA zone `name`; raises ValueError naming it when unknown."""
    try:
        return _zone(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r} (use an IANA name such as Europe/Lisbon)") from None


@functools.lru_cache(maxsize=None)
def _zone(name: str) -> ZoneInfo:
    # From the tzdata package, not the host's /usr/share/zoneinfo: the same rules on every
    # machine, and upgraded with `pip install -U tzdata` rather than with the OS. (ZoneInfo(name)
    # would prefer the host's files.)
    if not re.fullmatch(r"[A-Za-z0-9_+-]+(/[A-Za-z0-9_+-]+)*", name):
        raise ValueError(name)
    try:
        from importlib.resources import files

        resource = files("tzdata.zoneinfo").joinpath(*name.split("/"))
        with resource.open("rb") as fh:
            return ZoneInfo.from_file(fh, key=name)
    except ModuleNotFoundError:
        return ZoneInfo(name)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise ZoneInfoNotFoundError(name) from None


def parse_schedule(text: str) -> Cron | Every:
    """Classify and check a `schedule:` value: an interval (`10m`, `every 1h30m`) or cron."""
    s = " ".join(str(text).split())
    if not s:
        raise ValueError("schedule is empty")
    if _INTERVAL.match(s):
        seconds = parse_duration(re.sub(r"(?i)^every\s+", "", s))
        if seconds <= 0:
            raise ValueError(f"an interval must be longer than zero, got {text!r}")
        return Every(seconds=seconds, text=s)
    if s.startswith("@"):
        if s.lower() == "@reboot":
            raise ValueError("@reboot is not a schedule here: use `run_on_start: true`")
        expr = PRESETS.get(s.lower())
        if expr is None:
            raise ValueError(f"unknown preset {s!r} (known: {', '.join(sorted(PRESETS))})")
        return Cron(expr=expr, text=s)
    compile_cron(s, "")  # raises ValueError on bad fields
    return Cron(expr=s, text=s)


@dataclass(frozen=True)
class CronFields:
    """An expanded cron expression, ready for matching."""

    seconds: tuple[int, ...]
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    doms: frozenset[int]
    last_dom: bool  # `L` in the day-of-month field
    months: frozenset[int]
    dows: frozenset[int]  # 0 = Sunday
    nth: dict[int, frozenset[int]]  # weekday -> which occurrences in the month (`1#2`)
    dom_star: bool
    dow_star: bool
    # cron(8): a job is "wildcard" when its second, minute or hour field starts with `*` or
    # has a step; wildcard jobs follow the wall clock through DST changes, fixed-time jobs
    # run exactly once a day (see next_fire).
    wildcard: bool

    def day_matches(self, d: date) -> bool:
        dom_ok = d.day in self.doms or (self.last_dom and d.day == calendar.monthrange(d.year, d.month)[1])
        wd = d.isoweekday() % 7
        dow_ok = wd in self.dows and (wd not in self.nth or (d.day - 1) // 7 + 1 in self.nth[wd])
        # Vixie cron: when either day field starts with `*` (even `*/2`), both must match;
        # when both are restricted, either may match.
        if self.dom_star or self.dow_star:
            return dom_ok and dow_ok
        return dom_ok or dow_ok


_ONE_VALUE_RANGE = re.compile(r"(?<![\w#])(\w+)-\1(?:/\d+)?(?![\w-])", re.IGNORECASE)


def _normalise(field: str) -> str:
    # croniter expands a one-value range such as `2-2` to `*` (every value): write it as `2`.
    return _ONE_VALUE_RANGE.sub(r"\1", field)


def _expand(values: list[int | str], full: range) -> tuple[int, ...]:
    if values == ["*"]:
        return tuple(full)
    return tuple(sorted({int(v) for v in values}))


@functools.lru_cache(maxsize=4096)
def _compile(expr: str, hash_id: str) -> CronFields:
    from croniter import CroniterError, croniter  # deferred: ~70 ms to import

    fields = [_normalise(f) for f in expr.split()]
    if len(fields) not in (5, 6):
        raise ValueError(f"a cron expression has 5 fields (6 with leading seconds), got {len(fields)}: {expr!r}")
    if len(fields) == 6:
        sec_field, rest = fields[0], fields[1:]
    else:
        sec_field, rest = "0", fields
    try:
        expanded, nth = croniter.expand(
            " ".join(rest + [sec_field] if len(fields) == 6 else rest),
            hash_id=hash_id.encode() if hash_id else None,
        )
    except CroniterError as exc:
        raise ValueError(f"invalid cron expression {expr!r}: {_croniter_reason(exc)}") from None
    except (ValueError, TypeError, KeyError, IndexError) as exc:
        raise ValueError(f"invalid cron expression {expr!r}: {exc}") from None
    mins, hrs, doms, months, dows = expanded[:5]
    secs = expanded[5] if len(expanded) > 5 else [0]
    dom_values = [v for v in doms if v != "l"]
    minute_field, hour_field = rest[0], rest[1]
    return CronFields(
        seconds=_expand(secs, range(60)),
        minutes=_expand(mins, range(60)),
        hours=_expand(hrs, range(24)),
        doms=frozenset(range(1, 32)) if doms == ["*"] else frozenset(int(v) for v in dom_values),
        last_dom="l" in doms,
        months=frozenset(range(1, 13)) if months == ["*"] else frozenset(int(v) for v in months),
        dows=frozenset(range(7)) if dows == ["*"] else frozenset(int(v) % 7 for v in dows),
        nth={int(k) % 7: frozenset(v) for k, v in nth.items()},
        dom_star=rest[2].startswith("*") or rest[2] == "?",
        dow_star=rest[4].startswith("*") or rest[4] == "?",
        wildcard=any(f.startswith("*") or "/" in f for f in (sec_field, minute_field, hour_field)),
    )


def _croniter_reason(exc: Exception) -> str:
    msg = str(exc)
    # croniter prefixes its messages with the whole expression in brackets; we name it already.
    return re.sub(r"^\[[^\]]*\]\s*", "", msg) or msg


def compile_cron(expr: str, job_name: str) -> CronFields:
    """Expand `expr`; `H` fields are hashed from the job name so equal schedules spread out."""
    # croniter needs some hash id to expand `H`; a schedule checked outside a job gets a fixed one.
    return _compile(expr, (job_name or "cronpy") if "h" in expr.lower() else "")


def ever_fires(expr: str, job_name: str) -> bool:
    """False for an expression no date matches (`0 0 30 2 *`); zones cannot change that."""
    return _ever_fires(expr, job_name if "h" in expr.lower() else "")


@functools.lru_cache(maxsize=4096)
def _ever_fires(expr: str, hash_id: str) -> bool:
    return _next_naive(compile_cron(expr, hash_id), datetime(2000, 1, 1)) is not None


def _next_in(values: tuple[int, ...], current: int) -> int | None:
    i = bisect.bisect_right(values, current)
    return values[i] if i < len(values) else None


def _next_naive(f: CronFields, after: datetime) -> datetime | None:
    """Return the first wall-clock time strictly after naive `after` that matches `f`."""
    t = after.replace(microsecond=0) + timedelta(seconds=1)
    limit = after.year + SEARCH_YEARS
    while t.year <= limit:
        if t.month not in f.months:
            y, mo = (t.year + 1, 1) if t.month == 12 else (t.year, t.month + 1)
            t = datetime(y, mo, 1)
            continue
        if not f.day_matches(t.date()):
            t = datetime(t.year, t.month, t.day) + timedelta(days=1)
            continue
        if t.hour not in f.hours:
            h = _next_in(f.hours, t.hour)
            t = t.replace(hour=h, minute=0, second=0) if h is not None else datetime(t.year, t.month, t.day) + timedelta(days=1)
            continue
        if t.minute not in f.minutes:
            nm = _next_in(f.minutes, t.minute)
            t = t.replace(minute=nm, second=0) if nm is not None else t.replace(minute=0, second=0) + timedelta(hours=1)
            continue
        if t.second not in f.seconds:
            s = _next_in(f.seconds, t.second)
            t = t.replace(second=s) if s is not None else t.replace(second=0) + timedelta(minutes=1)
            continue
        return t
    return None


def _exists(naive: datetime, tz: ZoneInfo) -> bool:
    aware = naive.replace(tzinfo=tz)
    return aware.astimezone(UTC).astimezone(tz).replace(tzinfo=None) == naive


def _ambiguous(naive: datetime, tz: ZoneInfo) -> bool:
    return naive.replace(tzinfo=tz, fold=0).utcoffset() != naive.replace(tzinfo=tz, fold=1).utcoffset()


def _transition(lo: datetime, hi: datetime, tz: ZoneInfo) -> datetime:
    """Return the first UTC instant in (lo, hi] whose offset differs from lo's (to the second)."""
    before = lo.astimezone(tz).utcoffset()
    lo_s, hi_s = int(lo.timestamp()), int(hi.timestamp()) + 1
    while hi_s - lo_s > 1:
        mid = (lo_s + hi_s) // 2
        if datetime.fromtimestamp(mid, tz).utcoffset() == before:
            lo_s = mid
        else:
            hi_s = mid
    return datetime.fromtimestamp(hi_s, UTC)


def cron_next(f: CronFields, tz: ZoneInfo, after: datetime) -> datetime | None:
    """Return the first instant strictly after aware `after` at which `f` fires in zone `tz`.

    Daylight saving time follows cron(8) (Debian's man page, "daylight saving time"):
    - clocks go forward: a fixed-time job whose time falls in the skipped hour runs once, at
      the first instant after the change; a wildcard job simply has no run in the gap;
    - clocks go back: a fixed-time job runs once, in the first pass of the repeated hour; a
      wildcard job runs in both passes (it follows the wall clock).
    """
    after = after.astimezone(UTC)
    local = after.astimezone(tz)
    naive, in_second_pass = local.replace(tzinfo=None), local.fold == 1
    cursor = naive
    while True:
        c = _next_naive(f, cursor)
        if c is None:
            return None
        cursor = c
        if not _exists(c, tz):
            if f.wildcard:
                continue
            # Fire at the end of the gap: the transition instant.
            lo = c.replace(tzinfo=tz, fold=1).astimezone(UTC) - timedelta(hours=3)
            instant = _transition(lo, c.replace(tzinfo=tz, fold=0).astimezone(UTC), tz)
        elif _ambiguous(c, tz):
            first = c.replace(tzinfo=tz, fold=0).astimezone(UTC)
            second = c.replace(tzinfo=tz, fold=1).astimezone(UTC)
            if f.wildcard and in_second_pass:
                instant = second
            elif first > after:
                instant = first
            elif f.wildcard and second > after:
                instant = second
            else:
                continue
        else:
            instant = c.replace(tzinfo=tz).astimezone(UTC)
        if instant <= after:
            continue
        break
    if f.wildcard and not in_second_pass:
        # A fall-back between `after` and `instant` opens a second pass through the repeated
        # wall-clock times, which the naive search above walked past: look there too.
        if after.astimezone(tz).utcoffset() > instant.astimezone(tz).utcoffset():  # type: ignore[operator]
            t = _transition(after, instant, tz)
            start = t.astimezone(tz).replace(tzinfo=None)
            c = _next_naive(f, start - timedelta(seconds=1))
            if c is not None and _ambiguous(c, tz):
                second = c.replace(tzinfo=tz, fold=1).astimezone(UTC)
                if after < second < instant:
                    return second
    return instant


def every_next(interval: float, anchor: datetime, after: datetime) -> datetime:
    """Return anchor + k*interval for the smallest k >= 1 that lands strictly after `after`.

    Intervals count elapsed (UTC) time, so DST never stretches or shrinks them.
    """
    step = timedelta(seconds=interval)
    k = max(1, int((after - anchor) / step) + 1)
    candidate = anchor + k * step
    while candidate <= after:  # float rounding at the boundary
        candidate += step
    return candidate


def next_fire(spec: JobSpec, after: datetime, anchor: datetime | None = None) -> datetime | None:
    """Return the job's first scheduled instant strictly after `after` (aware, UTC), or None.

    `anchor` is the previous scheduled instant of an interval job (its cadence); without it the
    cadence starts at `after`. None means the job has no (further) scheduled run.
    """
    return schedule_next(spec.schedule, spec.timezone, spec.name, after, anchor)


def schedule_next(
    sched: Schedule | None, tz_name: str, job_name: str, after: datetime, anchor: datetime | None = None
) -> datetime | None:
    """Like next_fire, for a schedule outside any job (`cronpy next --expr`)."""
    if sched is None:
        return None
    if isinstance(sched, Cron):
        return cron_next(compile_cron(sched.expr, job_name), zone(tz_name), after)
    if isinstance(sched, Every):
        return every_next(sched.seconds, anchor if anchor is not None else after, after)
    assert isinstance(sched, At)
    return sched.when.astimezone(UTC) if sched.when > after else None


def upcoming(spec: JobSpec, after: datetime, count: int) -> list[datetime]:
    """Return the next `count` instants of the job after `after`."""
    out: list[datetime] = []
    anchor = None
    t = after
    while len(out) < count:
        nxt = next_fire(spec, t, anchor)
        if nxt is None:
            break
        out.append(nxt)
        t = anchor = nxt
    return out


def latest_fire(spec: JobSpec, since: datetime, until: datetime) -> datetime | None:
    """Return the job's last instant in (since, until], or None: what a catch-up run claims.

    Claiming the *latest* missed instant (not the first) is what makes a catch-up happen once:
    after it, nothing between the claim and `until` is left to catch up on a later restart.
    """
    sched = spec.schedule
    if sched is None or until <= since:
        return None
    if isinstance(sched, At):
        return sched.when if since < sched.when <= until else None
    if isinstance(sched, Every):
        step = timedelta(seconds=sched.seconds)
        k = int((until - since) / step)
        return since + k * step if k >= 1 else None
    # Cron: search a short window back from `until` first, widening only when it is empty.
    for window in (timedelta(hours=2), timedelta(days=3), timedelta(days=400), None):
        start = since if window is None or until - window <= since else until - window
        found, t = None, start
        while (t := next_fire(spec, t)) is not None and t <= until:  # type: ignore[assignment]
            found = t
        if found is not None or start == since:
            return found
    return None
