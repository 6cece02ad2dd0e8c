"""Differential sweep of cronpy.schedule against cron(8) and cronsim.

Two independent references:
- `cron8_fires`: a minute-by-minute simulation of the main loop of Vixie cron 4 / Debian's
  cron.c (`timeDiff` cases: 1 minute on time; 2-5 late, run every missed minute; 6-180 the
  clocks went forward, run wildcard jobs for now and fixed-time jobs for every skipped
  minute; -179-0 the clocks went back, wildcard jobs only, virtual time waits; otherwise
  jump), with its own small Vixie field parser (`*`, values, names, ranges, steps, lists;
  a job is wildcard when its minute or hour field starts with `*`; the day fields are ANDed
  when either starts with `*`). It is the arbiter for 5-field Vixie syntax.
- cronsim 2.8 (the test extra), for the Quartz forms too (`L`, `LW`, `5L`, `5#3`). It has
  known bugs, so a disagreement is classified, and where the cron(8) simulation covers the
  instant, it decides who is right.

Samples are weighted to the DST transitions of 2020-2035 in zones with 30- and 45-minute
offsets or shifts, midnight changes and Ramadan changes. `sweep(n, seed)` returns counts per
class; `python tests/schedule_diff.py --samples 200000` is the long mode.
"""

from __future__ import annotations

import argparse
import random
import re
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from pathlib import Path
from typing import Iterator
from zoneinfo import ZoneInfo

if __name__ == "__main__":  # the long mode runs from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cronpy.models import JobSpec  # noqa: E402
from cronpy.schedule import next_fire, parse_schedule, zone  # noqa: E402

UTC = timezone.utc
# Zones come from the tzdata package, as cronpy's do: the host's files may predict Morocco's
# Ramadan changes differently.
ZONES = ["Australia/Lord_Howe", "America/Santiago", "Europe/Dublin", "Africa/Casablanca", "Pacific/Chatham",
         "Asia/Tehran", "America/St_Johns"]
WINDOW = timedelta(hours=6)  # compared against the cron(8) simulation after each start
WARM_UP = timedelta(hours=4)  # the simulation starts earlier, so its virtual time is settled

# --- the cron(8) simulation ---------------------------------------------------------------

_NAMES = {3: {m: i + 1 for i, m in enumerate("JAN FEB MAR APR MAY JUN JUL AUG SEP OCT NOV DEC".split())},
          4: {d: i for i, d in enumerate("SUN MON TUE WED THU FRI SAT".split())}}
_BOUNDS = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 7)]


@dataclass(frozen=True)
class VixieEntry:
    minute: frozenset[int]
    hour: frozenset[int]
    dom: frozenset[int]
    month: frozenset[int]
    dow: frozenset[int]
    dom_star: bool
    dow_star: bool
    wild: bool  # MIN_STAR or HR_STAR

    def matches(self, t: datetime) -> bool:
        if t.minute not in self.minute or t.hour not in self.hour or t.month not in self.month:
            return False
        dom_ok = t.day in self.dom
        dow_ok = t.isoweekday() % 7 in self.dow
        return (dom_ok and dow_ok) if (self.dom_star or self.dow_star) else (dom_ok or dow_ok)


def vixie_parse(expr: str) -> VixieEntry | None:
    """Vixie cron's entry.c, in short; None for what it cannot read (Quartz forms, `H`)."""
    texts = expr.upper().split()
    if len(texts) != 5:
        return None
    sets: list[set[int]] = []
    for i, text in enumerate(texts):
        lo, hi = _BOUNDS[i]
        names = _NAMES.get(i, {})
        bits: set[int] = set()
        for item in text.split(","):
            m = re.fullmatch(r"(\*|\w+)(?:-(\w+))?(?:/(\d+))?", item)
            if not m:
                return None

            def num(s: str) -> int | None:
                v = names.get(s, int(s) if s.isdigit() else None)
                return v if v is not None and lo <= v <= hi else None

            if m[1] == "*":
                a, b = lo, hi
            else:
                a1 = num(m[1])
                if a1 is None:
                    return None
                a = a1
                if m[2] is not None:
                    b1 = num(m[2])
                    if b1 is None:
                        return None
                    b = b1
                else:
                    b = hi if m[3] else a  # `5/15`: cronie's reading (Vixie refuses it)
            step = int(m[3]) if m[3] else 1
            if step == 0:
                return None
            bits.update(range(a, b + 1, step))  # a backwards range sets nothing
        sets.append(bits)
    dow = {d % 7 for d in sets[4]}
    return VixieEntry(frozenset(sets[0]), frozenset(sets[1]), frozenset(sets[2]), frozenset(sets[3]),
                      frozenset(dow), texts[2].startswith("*"), texts[4].startswith("*"),
                      texts[0].startswith("*") or texts[1].startswith("*"))


def _local_minute(ts: int, tz: ZoneInfo) -> int:
    off = datetime.fromtimestamp(ts, tz).utcoffset()
    assert off is not None
    return (ts + int(off.total_seconds())) // 60


_EPOCH = datetime(1970, 1, 1)


def cron8_fires(entry: VixieEntry, tz: ZoneInfo, start: datetime, end: datetime) -> list[datetime]:
    """The instants in (start, end] at which cron(8) starts the job, waking each minute."""
    t = (int((start - WARM_UP).timestamp()) // 60) * 60
    virtual = _local_minute(t, tz)
    out: list[datetime] = []
    lo, hi = start.timestamp(), end.timestamp()

    def find_jobs(vminute: int, do_wild: bool, do_fixed: bool) -> None:
        if (entry.wild and do_wild) or (not entry.wild and do_fixed):
            if entry.matches(_EPOCH + timedelta(minutes=vminute)) and lo < t <= hi:
                out.append(datetime.fromtimestamp(t, UTC))

    while t <= hi:
        t += 60
        running = _local_minute(t, tz)
        diff = running - virtual
        if diff == 1:
            virtual = running
            find_jobs(virtual, True, True)
        elif 0 < diff <= 5:  # woke up late: every missed minute, all jobs
            while virtual < running:
                virtual += 1
                find_jobs(virtual, True, True)
        elif 5 < diff <= 180:  # clocks went forward
            find_jobs(running, True, False)
            while virtual < running:
                virtual += 1
                find_jobs(virtual, False, True)
        elif -180 < diff <= 0:  # clocks went back: wildcard jobs only, virtual time waits
            find_jobs(running, True, False)
        else:
            virtual = running
            find_jobs(running, True, True)
    return sorted(set(out))


# --- samples ------------------------------------------------------------------------------

@lru_cache(maxsize=None)
def transitions(name: str) -> tuple[datetime, ...]:
    """UTC instants of 2020-2035 at which the zone's offset changes."""
    tz = zone(name)
    out = []
    t = datetime(2020, 1, 1, tzinfo=UTC)
    step = timedelta(hours=6)
    prev = t.astimezone(tz).utcoffset()
    while t.year < 2036:
        nxt = t + step
        off = nxt.astimezone(tz).utcoffset()
        if off != prev:
            lo, hi = int(t.timestamp()), int(nxt.timestamp())
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if datetime.fromtimestamp(mid, tz).utcoffset() == prev:
                    lo = mid
                else:
                    hi = mid
            out.append(datetime.fromtimestamp(hi, UTC))
            prev = off
        t = nxt
    return tuple(out)


@dataclass
class Sample:
    expr: str
    zone: str
    start: datetime
    near: datetime | None  # the transition it was drawn around


def _minute_field(rng: random.Random) -> str:
    r = rng.random()
    if r < 0.25:
        return "*"
    if r < 0.45:
        return f"*/{rng.choice([2, 3, 5, 7, 10, 15, 20, 30, 45])}"
    if r < 0.7:
        return str(rng.choice([0, 0, 15, 30, 45, rng.randrange(60)]))
    if r < 0.8:
        return ",".join(str(v) for v in sorted(rng.sample(range(60), rng.randint(2, 4))))
    if r < 0.9:
        a = rng.randrange(60)
        b = rng.randrange(a, 60)
        return f"{a}-{b}" + (f"/{rng.randint(2, 20)}" if rng.random() < 0.5 else "")
    a = rng.randrange(60)
    return rng.choice([f"{a}-{a}/{rng.randint(2, 9)}", f"{a}/{rng.randint(5, 30)}", f"{a}-{a}"])


def _hour_field(rng: random.Random, near: list[int]) -> str:
    r = rng.random()
    if r < 0.3:
        return rng.choice(["*", "*", f"*/{rng.choice([2, 3, 4, 6, 12])}"])
    h = rng.choice(near) if near and rng.random() < 0.85 else rng.randrange(24)
    if r < 0.65:
        return str(h)
    if r < 0.75:
        return ",".join(str(v) for v in sorted({h, rng.randrange(24)}))
    if r < 0.9:
        a = rng.randrange(0, h + 1)
        return f"{a}-{rng.randrange(h, 24)}" + (f"/{rng.randint(2, 3)}" if rng.random() < 0.4 else "")
    return rng.choice([f"{h}/{rng.randint(2, 6)}", f"{h}-{h}", f"{h}-{h}/2", f"{h % 12}/12"])


def _day_fields(rng: random.Random, day: datetime | None, quartz: bool) -> tuple[str, str, str]:
    d = day or datetime(2026, 1, 1)
    wd = d.isoweekday() % 7
    dom, month, dow = "*", "*", "*"
    r = rng.random()
    if r < 0.15:
        dom = rng.choice([str(d.day), f"{max(1, d.day - 3)}-{min(31, d.day + 3)}", f"*/{rng.randint(2, 7)}",
                          f"{d.day}-{d.day}", f"{d.day},{rng.randint(1, 31)}"])
    elif r < 0.3:
        dow = rng.choice([str(wd), "SUN MON TUE WED THU FRI SAT".split()[wd], "7" if wd == 0 else str(wd),
                          f"{max(0, wd - 1)}-{min(7, wd + 1)}", f"*/{rng.randint(2, 7)}", "1-5", "0,6",
                          f"{wd}-{wd}"])
    elif r < 0.4:
        dom, dow = str(d.day), rng.choice([str(wd), str((wd + 1) % 7)])
    elif r < 0.45:
        dom, dow = f"*/{rng.randint(1, 3)}", str(wd)
    if quartz and rng.random() < 0.3:
        if rng.random() < 0.5:
            dom = rng.choice(["L", "LW", f"{d.day}", "L"])
        else:
            dow = rng.choice([f"{wd}L", f"{wd}#{(d.day - 1) // 7 + 1}", f"{wd}#{rng.randint(1, 5)}"])
    if rng.random() < 0.2:
        month = rng.choice([str(d.month), "JAN FEB MAR APR MAY JUN JUL AUG SEP OCT NOV DEC".split()[d.month - 1],
                            f"{d.month}-{d.month}", f"{max(1, d.month - 1)}-{min(12, d.month + 1)}", "*/2"])
    return dom, month, dow


def samples(n: int, seed: int) -> Iterator[Sample]:
    rng = random.Random(seed)
    for _ in range(n):
        name = rng.choice(ZONES)
        tz = zone(name)
        trans = transitions(name)
        near: datetime | None = None
        if trans and rng.random() < 0.85:
            near = rng.choice(trans)
            start = near + timedelta(seconds=rng.randint(-5 * 3600, 2 * 3600))
            if rng.random() < 0.5:
                start = start.replace(second=0)
        else:
            start = datetime(2020, 1, 1, tzinfo=UTC) + timedelta(seconds=rng.randrange(16 * 365 * 86400))
        hours: list[int] = []
        if near is not None:
            before, after = (near - timedelta(seconds=1)).astimezone(tz), near.astimezone(tz)
            hours = sorted({before.hour, after.hour, (before.hour + 1) % 24, (after.hour - 1) % 24})
        quartz = rng.random() < 0.15
        dom, month, dow = _day_fields(rng, (near or start).astimezone(tz), quartz)
        expr = " ".join([_minute_field(rng), _hour_field(rng, hours), dom, month, dow])
        yield Sample(expr, name, start, near)


# --- comparison ---------------------------------------------------------------------------

class _Timeout(Exception):
    pass


def _on_alarm(signum: int, frame: object) -> None:
    raise _Timeout


def cronsim_next(expr: str, tz: ZoneInfo, start: datetime, budget: float = 0.5) -> datetime | str:
    """cronsim's next instant, or why there is none ("refused", "gave up", "hung")."""
    from cronsim import CronSim, CronSimError

    old = signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, budget)
    try:
        return next(CronSim(expr, start.astimezone(tz))).astimezone(UTC)
    except CronSimError:
        return "refused"
    except StopIteration:
        return "gave up"
    except _Timeout:
        return "hung"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


@dataclass
class Result:
    counts: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    samples: int = 0
    instants: int = 0

    def add(self, cls: str, example: str) -> None:
        self.counts[cls] += 1
        self.examples.setdefault(cls, [])
        if len(self.examples[cls]) < 3:
            self.examples[cls].append(example)


def _transition_near(tz: ZoneInfo, t: datetime, span: timedelta) -> datetime | None:
    """The first offset change within `span` of `t` (any year), to the second."""
    probe, step = t - span, timedelta(minutes=15)
    prev = probe.astimezone(tz).utcoffset()
    while probe < t + span:
        nxt = probe + step
        if nxt.astimezone(tz).utcoffset() != prev:
            lo, hi = int(probe.timestamp()), int(nxt.timestamp())
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if datetime.fromtimestamp(mid, tz).utcoffset() == prev:
                    lo = mid
                else:
                    hi = mid
            return datetime.fromtimestamp(hi, UTC)
        probe = nxt
    return None


def _classify_cronsim(s: Sample, tz: ZoneInfo, ours: datetime | None, theirs: datetime | str,
                      cron8: list[datetime] | None) -> str:
    """Name the reason cronsim and cronpy disagree; "unclassified" when no known one fits."""
    texts = s.expr.upper().split()
    if isinstance(theirs, str):
        if theirs == "hung":
            return "cronsim hangs (> 0.5 s)"
        if theirs == "gave up" and (ours is None or ours - s.start > timedelta(days=365 * 50)):
            return "cronsim gives up after 50 years"
        if theirs == "refused" and ours is None:
            return "both: no instant (cronsim refuses a date no month has)"
        if theirs != "gave up" or ours is None:
            return "unclassified"
        # cronsim gave up although cronpy found an instant: judged by the DST reasons below.
    if re.search(r"(?<![\d/])(\d+)-\1/\d+", s.expr):
        return "cronsim: N-N/S walks on from N (cron(8): just N)"
    fixed = not (texts[0].startswith("*") or texts[1].startswith("*"))
    end = s.start + WINDOW
    if cron8 is None:
        verdict = "no cron(8) verdict: Quartz syntax"
    elif cron8 and cron8[0] == ours:
        verdict = "cron(8) sim agrees with cronpy"
    elif not cron8 and not isinstance(theirs, str) and theirs <= end:
        verdict = "cron(8) sim agrees with cronpy: nothing in the window"
    elif cron8 and not isinstance(theirs, str) and cron8[0] == theirs:
        verdict = "cron(8) sim agrees with CRONSIM"
    else:
        verdict = "no cron(8) verdict: beyond the window"
    if isinstance(theirs, str):
        verdict = f"cronsim gave up; {verdict}"
    ref = ours if isinstance(theirs, str) else (min(theirs, ours) if ours else theirs)
    assert ref is not None
    near = _transition_near(tz, ref, timedelta(hours=26))
    if near is not None:
        before, after = (near - timedelta(seconds=1)).astimezone(tz), near.astimezone(tz)
        shift = (after.utcoffset() - before.utcoffset()).total_seconds()  # type: ignore[operator]
        if _in_second_pass(tz, s.start):
            return f"cronsim: start in a second pass ({verdict})"
        if abs(shift) != 3600:
            return f"cronsim: {abs(shift) / 60:.0f}-minute DST shift ({verdict})"
        if shift > 0 and (after.hour == 1 or before.hour == 23) and after.minute == 0:
            return f"cronsim: midnight gap ({verdict})"
        if after.utcoffset().total_seconds() % 3600:  # type: ignore[union-attr]
            return f"cronsim: zone offset not a whole hour ({verdict})"
        if shift > 0 and fixed:
            return f"cronsim: fixed-time job in a gap runs at its time + the gap, not at the change ({verdict})"
        if shift < 0:
            return f"cronsim: repeated hour ({verdict})"
        return f"cronsim: other DST ({verdict})"
    return "unclassified"


def _in_second_pass(tz: ZoneInfo, t: datetime) -> bool:
    local = t.astimezone(tz)
    return local.fold == 1 and local.replace(fold=0).utcoffset() != local.utcoffset()


def compare(s: Sample, result: Result, with_cronsim: bool = True) -> None:
    tz = zone(s.zone)
    spec = JobSpec(name="diff", schedule=parse_schedule(s.expr), timezone=s.zone, command="true")
    end = s.start + WINDOW
    ours_all: list[datetime] = []
    t = s.start
    while (t := next_fire(spec, t)) is not None and t <= end:  # type: ignore[assignment]
        ours_all.append(t)
    first = ours_all[0] if ours_all else next_fire(spec, s.start)
    result.samples += 1
    entry = vixie_parse(s.expr)
    cron8: list[datetime] | None = None
    if entry is not None:
        cron8 = cron8_fires(entry, tz, s.start, end)
        result.instants += WINDOW // timedelta(minutes=1)
        if cron8 == ours_all:
            result.add("cron(8) sim: agree", "")
        else:
            result.add("cron(8) sim: DISAGREE", f"{s.expr!r} {s.zone} from {s.start.isoformat()}: cronpy "
                       f"{[x.isoformat() for x in ours_all[:4]]} cron(8) {[x.isoformat() for x in cron8[:4]]}")
    if not with_cronsim:
        return
    theirs = cronsim_next(s.expr, tz, s.start)
    if theirs == first:
        result.add("cronsim: agree", "")
        return
    cls = _classify_cronsim(s, tz, first, theirs, cron8)
    result.add(cls, f"{s.expr!r} {s.zone} from {s.start.isoformat()}: cronpy "
               f"{first.isoformat() if first else None} cronsim {theirs if isinstance(theirs, str) else theirs.isoformat()}")


def sweep(n: int, seed: int = 18, with_cronsim: bool = True) -> Result:
    result = Result()
    for s in samples(n, seed):
        compare(s, result, with_cronsim)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=200_000)
    parser.add_argument("--seed", type=int, default=18)
    args = parser.parse_args()
    began = time.monotonic()
    result = sweep(args.samples, args.seed)
    print(f"{result.samples} samples, {result.instants} simulated cron(8) minutes, "
          f"{time.monotonic() - began:.0f} s")
    for cls, count in sorted(result.counts.items(), key=lambda kv: -kv[1]):
        print(f"{count:8d}  {cls}")
        for ex in result.examples.get(cls, []):
            if ex:
                print(f"          e.g. {ex}")


if __name__ == "__main__":
    main()
