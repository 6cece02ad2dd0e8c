"""Pure schedule arithmetic: when does a job fire next after a given instant.

Nothing here reads the clock or does I/O. The runner, `cronpy next` and `cronpy list` all
call `next_fire`, so what `next` prints is what the runner fires.

Cron fields are parsed here, field by field, so that every error names its field and every
accepted expression has one meaning (croniter, used before, expanded `9-SEP` to every month
and ignored `W`). The search for the next matching wall-clock time follows cron(8)'s
daylight-saving rules and Vixie cron's day-of-month/day-of-week rule.
"""

from __future__ import annotations

import bisect
import functools
import os
import re
from datetime import date, datetime, timedelta, timezone
from typing import TYPE_CHECKING, Mapping, NamedTuple
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronpy.durations import parse_duration

if TYPE_CHECKING:
    # Loaded where a schedule object is built or inspected: the job-spec dataclasses cost the
    # read path (`stats`, which only needs cron_next and every_next) ~15 ms of import.
    from cronpy.jobspec import At, Cron, Every, JobSpec, Schedule

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
# (`0 0 30 2 *`): the Gregorian calendar repeats, weekdays included, every 400 years, and
# zoneinfo extends a zone's last rule forever, so a job that fires at all fires within one
# cycle of any start. (28 years is not a cycle: 2100 has no 29 February.)
HORIZON_YEARS = 400

# Patterns here are strings that re compiles (and caches) on first use: `stats` imports this
# module for cron_next and parses nothing (issue #16).
_INTERVAL = r"^(?:every\s+)?(\d+(?:\.\d+)?\s*(?:ms|s|m|h|d|w)\s*)+$"


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
        import tzdata  # type: ignore[import-untyped]
    except ModuleNotFoundError:
        return ZoneInfo(name)
    try:
        # The package's files directly when it is a directory (it always is when pip installed
        # it): importlib.resources costs 9 ms of import, a sixth of `stats`' budget (issue #16).
        base = os.path.join(os.path.dirname(tzdata.__file__ or ""), "zoneinfo")
        if os.path.isdir(base):
            with open(os.path.join(base, *name.split("/")), "rb") as fh:
                return ZoneInfo.from_file(fh, key=name)
        from importlib.resources import files  # a zipped install

        with files("tzdata.zoneinfo").joinpath(*name.split("/")).open("rb") as fh:
            return ZoneInfo.from_file(fh, key=name)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise ZoneInfoNotFoundError(name) from None


def parse_schedule(text: str) -> Cron | Every:
    """Classify and check a `schedule:` value: an interval (`10m`, `every 1h30m`) or cron."""
    from cronpy.jobspec import Cron, Every

    s = " ".join(str(text).split())
    if not s:
        raise ValueError("schedule is empty")
    if re.match(_INTERVAL, s, re.IGNORECASE):
        seconds = parse_duration(re.sub(r"(?i)^every\s+", "", s))
        if seconds <= 0:
            raise ValueError(f"an interval must be longer than zero, got {text!r}")
        return Every(seconds=seconds, text=s)
    if s.startswith("@"):
        if s.lower() == "@reboot":
            raise ValueError("@reboot is not a schedule here: use `run_on_boot: true` (once per boot) "
                             "or `run_on_start: true` (every runner start)")
        expr = PRESETS.get(s.lower())
        if expr is None:
            raise ValueError(f"unknown preset {s!r} (known: {', '.join(sorted(PRESETS))})")
        return Cron(expr=expr, text=s)
    compile_cron(s, "")  # raises ValueError on bad fields
    return Cron(expr=s, text=s)


_MONTHS = {name: i + 1 for i, name in enumerate("JAN FEB MAR APR MAY JUN JUL AUG SEP OCT NOV DEC".split())}
_DAYS = {name: i for i, name in enumerate("SUN MON TUE WED THU FRI SAT".split())}


class _Kind(NamedTuple):
    """One field of a cron expression: its name, the values it takes, the names it knows."""

    name: str
    lo: int
    hi: int  # day-of-week: 7 (Sunday again), as in Vixie cron, so `5-7` and `*/7` work
    names: Mapping[str, int]
    # `H` picks from this range: day-of-month stops at 28 so the job runs every month
    # (Jenkins' rule), day-of-week at 6 so Sunday is not twice as likely.
    hash_hi: int


_SECOND = _Kind("second", 0, 59, {}, 59)
_MINUTE = _Kind("minute", 0, 59, {}, 59)
_HOUR = _Kind("hour", 0, 23, {}, 23)
_DOM = _Kind("day-of-month", 1, 31, {}, 28)
_MONTH = _Kind("month", 1, 12, _MONTHS, 12)
_DOW = _Kind("day-of-week", 0, 7, _DAYS, 6)

_NUM = r"(\d+|[A-Z]{3})"
_RANGE_ITEM = rf"^(?:(\*)|{_NUM}(?:-{_NUM})?)(?:/(\d+))?$"
_HASH_ITEM = r"^H(?:\((\d+)-(\d+)\))?(?:/(\d+))?$"
_NEAREST = r"^(\d+)W$"
_LAST_DOW = rf"^(?:{_NUM}L|L{_NUM})$"
_NTH_DOW = rf"^{_NUM}#(\d+)$"


class _FieldError(ValueError):
    pass


class _Field:
    """What one field matches: plain values plus the Quartz day forms."""

    __slots__ = ("values", "last_day", "last_weekday", "nearest", "last_of", "nth")

    def __init__(self) -> None:
        self.values: set[int] = set()
        self.last_day = False  # `L` in day-of-month
        self.last_weekday = False  # `LW`
        self.nearest: set[int] = set()  # `15W`
        self.last_of: set[int] = set()  # `5L`: the last Friday
        self.nth: set[tuple[int, int]] = set()  # `5#3`: (weekday, occurrence)


def _hash(key: str, kind: _Kind) -> int:
    # One digest per field (the field's name is the salt), so a job's hashed minute says
    # nothing about its hashed hour: `H H * * *` reaches all 1,440 minutes of the day.
    # Imported here: hashlib maps OpenSSL's libcrypto, 3.7 MB of a runner's RSS that only
    # `H` schedules need.
    import hashlib

    return int.from_bytes(hashlib.sha256(f"{key}\0{kind.name}".encode()).digest()[:8], "big")


def _value(text: str, kind: _Kind) -> int:
    if text.isdigit():
        v = int(text)
    elif text in kind.names:
        v = kind.names[text]
    else:
        raise _FieldError(f"{text!r} is not a number" + (" or a name" if kind.names else ""))
    if not kind.lo <= v <= kind.hi:
        raise _FieldError(f"{v} is out of range {kind.lo}-{kind.hi}")
    return v


def _parse_field(text: str, kind: _Kind, hash_key: str) -> _Field:
    out = _Field()
    for item in text.split(","):
        if not item:
            raise _FieldError("an empty list item")
        _parse_item(item, kind, hash_key, out)
    return out


def _parse_item(item: str, kind: _Kind, hash_key: str, out: _Field) -> None:
    day_kind = kind in (_DOM, _DOW)
    if item == "?" and day_kind:
        out.values.update(v % 7 if kind is _DOW else v for v in range(kind.lo, kind.hi + 1))  # Quartz `?`: `*`
        return
    if kind is _DOM:
        if item == "L":
            out.last_day = True
            return
        if item == "LW":
            out.last_weekday = True
            return
        if m := re.match(_NEAREST, item):
            out.nearest.add(_value(m[1], kind))
            return
    if kind is _DOW:
        if item == "L":
            raise _FieldError("`L` needs a weekday here: `5L` is the last Friday of the month")
        if m := re.match(_LAST_DOW, item):
            out.last_of.add(_value(m[1] or m[2], kind) % 7)
            return
        if m := re.match(_NTH_DOW, item):
            n = int(m[2])
            if not 1 <= n <= 5:
                raise _FieldError(f"#{n}: a weekday occurs 1 to 5 times a month")
            out.nth.add((_value(m[1], kind) % 7, n))
            return
    if m := re.match(_HASH_ITEM, item):
        lo, hi = kind.lo, kind.hash_hi
        if m[1] is not None:
            lo, hi = _value(m[1], kind), _value(m[2], kind)
            if lo > hi:
                raise _FieldError(f"H({lo}-{hi}): the range runs backwards")
        if not hash_key:
            raise _FieldError("`H` needs a job name to hash")
        h = _hash(hash_key, kind)
        if m[3] is None:
            out.values.add(lo + h % (hi - lo + 1))
        else:
            step = _step(m[3])
            out.values.update(range(lo + h % min(step, hi - lo + 1), hi + 1, step))
        return
    m = re.match(_RANGE_ITEM, item)
    if not m:
        raise _FieldError(f"{item!r} is not a value, range, step or list" + (
            " (day forms: L, LW, 15W)" if kind is _DOM else " (day forms: 5L, 5#3)" if kind is _DOW else ""))
    star, first, last, step_text = m[1], m[2], m[3], m[4]
    if star:
        lo, hi = kind.lo, kind.hi
    else:
        lo = _value(first, kind)
        if last is not None:
            hi = _value(last, kind)
            if kind is _DOW and hi == 0 and lo > 0:
                hi = 7  # `FRI-SUN`, `7-SUN`: Sunday at the end of a range is day 7
        else:
            # `5/15` is `5-59/15` (cronie, croniter, cronsim; Vixie cron refuses it)
            hi = kind.hi if step_text is not None else lo
        if lo > hi:
            raise _FieldError(f"the range runs backwards ({lo} > {hi})")
    step = _step(step_text) if step_text is not None else 1
    out.values.update(v % 7 if kind is _DOW else v for v in range(lo, hi + 1, step))


def _step(text: str) -> int:
    step = int(text)
    if step < 1:
        raise _FieldError("a step must be at least 1")
    return step


_MONTH_DAYS = (0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def _monthrange(year: int, month: int) -> tuple[int, int]:
    """calendar.monthrange (weekday of the 1st, Monday = 0; days in the month), without
    importing calendar and locale for it (~1.5 ms of `stats`, issue #16)."""
    leap = month == 2 and year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
    return date(year, month, 1).weekday(), _MONTH_DAYS[month] + leap


class CronFields:
    """An expanded cron expression, ready for matching (immutable: one is shared by every job
    with the same expression).

    A plain slotted class, not a dataclass: the read path (`stats` computes next runs) must not
    import dataclasses (issue #16)."""

    __slots__ = ("seconds", "minutes", "hours", "months", "doms", "last_dom", "last_weekday", "nearest_weekday",
                 "dows", "last_dows", "nth", "dom_star", "dow_star", "wildcard", "_days")

    def __init__(self, *, seconds: tuple[int, ...], minutes: tuple[int, ...], hours: tuple[int, ...],
                 months: frozenset[int], doms: frozenset[int], last_dom: bool, last_weekday: bool,
                 nearest_weekday: frozenset[int], dows: frozenset[int], last_dows: frozenset[int],
                 nth: frozenset[tuple[int, int]], dom_star: bool, dow_star: bool, wildcard: bool) -> None:
        self.seconds = seconds
        self.minutes = minutes
        self.hours = hours
        self.months = months
        self.doms = doms
        self.last_dom = last_dom  # `L`
        self.last_weekday = last_weekday  # `LW`
        self.nearest_weekday = nearest_weekday  # `15W`
        self.dows = dows  # 0 = Sunday
        self.last_dows = last_dows  # `5L`
        self.nth = nth  # `5#3`: (weekday, occurrence in the month)
        # Vixie cron: when either day field starts with `*`, a day must match both fields;
        # when both are restricted, either field may match.
        self.dom_star = dom_star
        self.dow_star = dow_star
        # cron(8) (Vixie/Debian entry.c): a job is "wildcard" when its minute or hour field starts
        # with `*`; wildcard jobs follow the wall clock through DST changes, the others (fixed-time)
        # run once per wall-clock time (see cron_next).
        self.wildcard = wildcard
        self._days: dict[tuple[int, int], tuple[int, ...]] = {}

    def month_days(self, year: int, month: int) -> tuple[int, ...]:
        """The days of `month` that match the day-of-month and day-of-week fields."""
        key = (year, month)
        days = self._days.get(key)
        if days is None:
            if len(self._days) > 2048:  # a 400-year search should not keep 4,800 months
                self._days.clear()
            days = self._days[key] = tuple(self._compute_days(year, month))
        return days

    def _compute_days(self, year: int, month: int) -> list[int]:
        first_wd, last = _monthrange(year, month)  # Monday = 0
        first = (first_wd + 1) % 7  # Sunday = 0, as in cron

        def weekday(day: int) -> int:
            return (first + day - 1) % 7

        def nearest(day: int) -> int | None:
            # Quartz `W`: the weekday nearest `day`, never leaving the month.
            if day > last:
                return None
            wd = weekday(day)
            if wd == 6:
                return day - 1 if day > 1 else day + 2
            if wd == 0:
                return day + 1 if day < last else day - 2
            return day

        dom_days = {d for d in self.doms if d <= last}
        if self.last_dom:
            dom_days.add(last)
        if self.last_weekday:
            dom_days.add(nearest(last) or last)
        for n in self.nearest_weekday:
            d = nearest(n)
            if d is not None:
                dom_days.add(d)
        out = []
        for day in range(1, last + 1):
            wd = weekday(day)
            dow_ok = (wd in self.dows or (wd, (day - 1) // 7 + 1) in self.nth
                      or (wd in self.last_dows and day + 7 > last))
            dom_ok = day in dom_days
            if (dom_ok and dow_ok) if (self.dom_star or self.dow_star) else (dom_ok or dow_ok):
                out.append(day)
        return out


@functools.lru_cache(maxsize=4096)
def _compile(expr: str, hash_id: str) -> CronFields:
    texts = expr.upper().split()
    if len(texts) not in (5, 6):
        raise ValueError(f"a cron expression has 5 fields (6 with leading seconds), got {len(texts)}: {expr!r}")
    if len(texts) == 5:
        texts = ["0"] + texts
    parsed = []
    for text, kind in zip(texts, (_SECOND, _MINUTE, _HOUR, _DOM, _MONTH, _DOW)):
        try:
            parsed.append(_parse_field(text, kind, hash_id))
        except _FieldError as exc:
            raise ValueError(f"invalid cron expression {expr!r}: {kind.name} field {text!r}: {exc}") from None
    sec, minute, hour, dom, month, dow = parsed
    return CronFields(
        seconds=tuple(sorted(sec.values)),
        minutes=tuple(sorted(minute.values)),
        hours=tuple(sorted(hour.values)),
        months=frozenset(month.values),
        doms=frozenset(dom.values),
        last_dom=dom.last_day,
        last_weekday=dom.last_weekday,
        nearest_weekday=frozenset(dom.nearest),
        dows=frozenset(dow.values),
        last_dows=frozenset(dow.last_of),
        nth=frozenset(dow.nth),
        dom_star=texts[3][0] in "*?",
        dow_star=texts[5][0] in "*?",
        wildcard=texts[1].startswith("*") or texts[2].startswith("*"),
    )


def compile_cron(expr: str, job_name: str) -> CronFields:
    """Expand `expr`; `H` fields are hashed from the job name so equal schedules spread out."""
    # A schedule checked outside any job (`parse_schedule`) hashes `H` with a fixed name.
    return _compile(expr, (job_name or "cronpy") if "h" in expr.lower() else "")


def ever_fires(expr: str, job_name: str) -> bool:
    """False for an expression no date matches (`0 0 30 2 *`); zones cannot change that."""
    return _ever_fires(expr, job_name if "h" in expr.lower() else "")


@functools.lru_cache(maxsize=4096)
def _ever_fires(expr: str, hash_id: str) -> bool:
    # The Gregorian calendar repeats every 400 years, weekdays included: a day pattern that
    # matches no date in one cycle matches none ever.
    return _next_naive(compile_cron(expr, hash_id), datetime(2000, 1, 1)) is not None


def _time_from(f: CronFields, h: int, m: int, s: int) -> tuple[int, int, int] | None:
    """The first (hour, minute, second) of `f` at or after h:m:s on one day, or None."""
    for hour in f.hours[bisect.bisect_left(f.hours, h):]:
        if hour > h:
            return hour, f.minutes[0], f.seconds[0]
        for minute in f.minutes[bisect.bisect_left(f.minutes, m):]:
            if minute > m:
                return hour, minute, f.seconds[0]
            i = bisect.bisect_left(f.seconds, s)
            if i < len(f.seconds):
                return hour, minute, f.seconds[i]
    return None


def _next_naive(f: CronFields, after: datetime) -> datetime | None:
    """Return the first wall-clock time strictly after naive `after` that matches `f`.

    The search covers HORIZON_YEARS, and stops quietly at the end of year 9999.
    """
    try:
        t = after.replace(microsecond=0) + timedelta(seconds=1)
    except OverflowError:
        return None
    limit = min(t.year + HORIZON_YEARS, 9999)
    year, month, day, hms = t.year, t.month, t.day, (t.hour, t.minute, t.second)
    while year <= limit:
        if month in f.months:
            for d in f.month_days(year, month):
                if d < day:
                    continue
                found = _time_from(f, *hms) if d == day else (f.hours[0], f.minutes[0], f.seconds[0])
                if found is not None:
                    return datetime(year, month, d, *found)
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
        day, hms = 1, (0, 0, 0)
    return None


def _instants(naive: datetime, tz: ZoneInfo) -> list[datetime]:
    """Every UTC instant whose wall-clock time in `tz` is `naive`: none in a skipped hour,
    two in a repeated one.

    Worked out from the UTC -> local direction only: zoneinfo's local -> UTC guess (`fold`)
    is wrong where a change keeps the offset (America/Nuuk, 2023-10-28, -02 to -02).
    """
    p = naive.replace(tzinfo=UTC)
    first, second = naive.replace(tzinfo=tz, fold=0).utcoffset(), naive.replace(tzinfo=tz, fold=1).utcoffset()
    if first == second:  # zoneinfo sees no change here (it flags every real one by PEP 495's fold)
        return [p - first]  # type: ignore[operator]
    day = timedelta(days=1)
    offsets = {(p - day).astimezone(tz).utcoffset(), (p + day).astimezone(tz).utcoffset(), first, second}
    found = {u for o in offsets if (u := p - o).astimezone(tz).replace(tzinfo=None) == naive}  # type: ignore[operator]
    return sorted(found)


def _gap_end(naive: datetime, tz: ZoneInfo) -> datetime:
    """The instant the clocks jumped over skipped wall-clock time `naive`: the change itself."""
    p = naive.replace(tzinfo=UTC)
    day = timedelta(days=1)
    offsets = [(p - day).astimezone(tz).utcoffset(), (p + day).astimezone(tz).utcoffset(),
               naive.replace(tzinfo=tz, fold=0).utcoffset(), naive.replace(tzinfo=tz, fold=1).utcoffset()]
    return _transition(p - max(offsets), p - min(offsets), tz)  # type: ignore[type-var, operator]


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

    Daylight saving time follows cron(8)'s main loop (Vixie cron 4 / Debian cron.c, and its
    man page, "daylight saving time"):
    - clocks go forward: a fixed-time job whose time falls in the skipped hour runs once, at
      the change; a wildcard job simply has no run in the gap;
    - clocks go back: a fixed-time job runs once, in the first pass of the repeated hour; a
      wildcard job runs in both passes (it follows the wall clock).
    Each matching wall-clock time maps to 0, 1 or 2 instants; the answer is the earliest one
    after `after`. Earliest instants grow with wall-clock time, so the walk stops at the first
    wall-clock time whose earliest instant is past the best found: only a second pass (which
    comes after later first-pass times) can be out of order, and it is found before that.
    """
    after = after.astimezone(UTC)
    local = after.astimezone(tz).replace(tzinfo=None)
    cursor = local
    try:
        if f.wildcard and after.astimezone(tz).replace(fold=1).utcoffset() != after.astimezone(tz).utcoffset():
            here = _instants(local.replace(microsecond=0), tz)
            if len(here) == 2 and after < here[1]:
                # `after` is in the first pass of a repeated hour: times before it in that hour
                # come round again in the second pass. Walk from the start of the repeat.
                change = _transition(here[0], here[1], tz)
                cursor = change.astimezone(tz).replace(tzinfo=None) - timedelta(seconds=1)
        best: datetime | None = None
        while (c := _next_naive(f, cursor)) is not None:
            cursor = c
            instants = _instants(c, tz)
            if not instants:
                if f.wildcard:
                    continue
                instants = [_gap_end(c, tz)]
            elif not f.wildcard:
                instants = instants[:1]
            if best is not None and instants[0] >= best:
                break
            for u in instants:
                if u > after and (best is None or u < best):
                    best = u
            if best is not None and best <= instants[0]:
                break  # later wall-clock times have no instant earlier than this one's first
        return best
    except OverflowError:  # at the edge of year 1 or 9999
        return None


def wall_time(naive: datetime, tz: ZoneInfo) -> tuple[datetime, str | None]:
    """Resolve a wall-clock time (an `at:` without offset) as cron(8) does a fixed-time job.

    Returns the instant, and a note when the time is skipped (the job runs at the change) or
    repeated (it runs in the first pass).
    """
    instants = _instants(naive, tz)
    if len(instants) == 1:
        return instants[0], None
    if instants:
        first = instants[0].astimezone(tz)
        return instants[0], (f"{naive.isoformat()} happens twice in {tz.key} (the clocks go back): it runs "
                             f"once, at the first, {first.isoformat()}")
    change = _gap_end(naive, tz)
    before = (change - timedelta(seconds=1)).astimezone(tz) + timedelta(seconds=1)
    return change, (f"{naive.isoformat()} does not exist in {tz.key} (the clocks skip from "
                    f"{before:%H:%M} to {change.astimezone(tz):%H:%M}): it runs at the change, "
                    f"{change.astimezone(tz).isoformat()}")


def fires_in_zone(expr: str, job_name: str, tz_name: str, after: datetime) -> bool:
    """False when every time `expr` names after `after` falls in a skipped daylight-saving
    hour of `tz_name` (a wildcard job such as `*/30 2 8-14 3 */7` in America/New_York)."""
    return cron_next(compile_cron(expr, job_name), zone(tz_name), after) is not None


def shortest_gap(sched: Schedule, tz_name: str, job_name: str, after: datetime,
                 enough: float = 1.0) -> float | None:
    """Seconds between the two closest consecutive runs, looking at up to 1,000 runs within
    about a year of `after` (a one-shot has no gap: None). Stops early at a gap of `enough`
    seconds or less: the caller only asks whether some gap is that short."""
    from cronpy.jobspec import Cron, Every

    if isinstance(sched, Every):
        return sched.seconds
    if not isinstance(sched, Cron):
        return None
    f, tz = compile_cron(sched.expr, job_name), zone(tz_name)
    end = after + timedelta(days=400)
    prev = cron_next(f, tz, after)
    best: float | None = None
    for _ in range(1000):
        if prev is None or prev > end:
            break
        nxt = cron_next(f, tz, prev)
        if nxt is None:
            break
        gap = (nxt - prev).total_seconds()
        best = gap if best is None else min(best, gap)
        if best <= enough:
            break
        prev = nxt
    return best


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
    from cronpy.jobspec import At, Cron, Every

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
    from cronpy.jobspec import At, Every

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
