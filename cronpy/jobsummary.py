"""What the read path needs of a validated jobs file (each job's name, schedule and zone), the
next runs it computes from them, and a cache of it in the state dir.

`cronpy stats` shows every job of the file and when it runs next. Validating the file means
importing PyYAML, the validator and the job-spec classes: ~45 ms of the ~60 ms that `stats` may
take (issue #16). So a successful validation leaves this summary in the state dir
(`jobs-summary.json`, private like the rest), and a later read uses it instead while

- the jobs file is the same file, unchanged: same real path, device, inode, size, and
  modification and change times (nanoseconds; an edit that restores the mtime still changes the
  ctime),
- cronpy and tzdata are the versions that wrote it (they decide what the schedules mean),
- no one-shot time in it has passed without `catch_up` (from then on the file is invalid, as
  validating it again would say).

Anything else (no cache, another file, a stale, unreadable or malformed cache) is a miss: the
file is validated as before and the summary written again. A state dir that cannot be written
only costs the next read the validation.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from cronpy.jobspec import JobSet

FILE_NAME = "jobs-summary.json"
FORMAT = 1
UTC = timezone.utc


class Entry(NamedTuple):
    """One job as the read path sees it."""

    name: str
    enabled: bool
    kind: str  #: "cron", "every", "at", or "" (no schedule: run by hand or by `after:`)
    expr: str  #: the cron expression (presets expanded)
    tz: str  #: the job's IANA zone
    seconds: float  #: the interval of an `every` schedule
    at: datetime | None  #: the instant of a one-shot


class Summary(NamedTuple):
    entries: list[Entry]
    #: When validating the file again would fail (its first one-shot without catch_up passes).
    valid_until: datetime | None

    @property
    def names(self) -> list[str]:
        return [e.name for e in self.entries]


def of(jobs: JobSet) -> Summary:
    """The summary of a validated job set."""
    from cronpy.jobspec import At, Cron, Every

    entries: list[Entry] = []
    until: datetime | None = None
    for spec in jobs.jobs.values():
        s = spec.schedule
        if isinstance(s, Cron):
            entries.append(Entry(spec.name, spec.enabled, "cron", s.expr, spec.timezone, 0.0, None))
        elif isinstance(s, Every):
            entries.append(Entry(spec.name, spec.enabled, "every", "", spec.timezone, s.seconds, None))
        elif isinstance(s, At):
            when = s.when.astimezone(UTC)
            entries.append(Entry(spec.name, spec.enabled, "at", "", spec.timezone, 0.0, when))
            if not spec.catch_up and (until is None or when < until):
                until = when
        else:
            entries.append(Entry(spec.name, spec.enabled, "", "", spec.timezone, 0.0, None))
    return Summary(entries, until)


def next_runs(summary: Summary, anchors: dict[str, datetime], now: datetime) -> dict[str, datetime | None]:
    """Each job's next instant after `now`, as a runner started now would fire it: an interval
    continues its recorded cadence (`anchors`: the last scheduled instants); never an instant in
    the past (with no runner, a missed instant is not "next"); None for a disabled job."""
    from cronpy.schedule import compile_cron, cron_next, every_next, zone

    out: dict[str, datetime | None] = {}
    for e in summary.entries:
        nxt: datetime | None = None
        if not e.enabled:
            pass
        elif e.kind == "cron":
            nxt = cron_next(compile_cron(e.expr, e.name), zone(e.tz), now)
        elif e.kind == "every":
            nxt = every_next(e.seconds, anchors.get(e.name) or now, now)
        elif e.kind == "at" and e.at is not None and e.at > now:
            nxt = e.at
        out[e.name] = nxt
    return out


# --- the cache ----------------------------------------------------------------------------------

def key_of(jobs_file: Path) -> list[Any] | None:
    """What must not have changed for a cached summary of `jobs_file` to hold; None when the
    file cannot be looked at (then nothing is cached)."""
    try:
        st = os.stat(jobs_file)
        real = os.path.realpath(jobs_file)
    except OSError:
        return None
    from cronpy import __version__

    return [FORMAT, real, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, __version__,
            _tzdata_version()]


def _tzdata_version() -> str:
    try:
        import tzdata  # type: ignore[import-untyped]
    except ModuleNotFoundError:  # the host's zone files: not versioned here
        return ""
    return str(getattr(tzdata, "IANA_VERSION", ""))


def load(jobs_file: Path, state_dir: Path, now: datetime) -> Summary | None:
    """The cached summary of `jobs_file` if it still holds at `now`, else None."""
    try:
        with open(state_dir / FILE_NAME, "rb") as fh:
            data = json.loads(fh.read())
    except (OSError, ValueError):
        return None
    try:
        if data["key"] != key_of(jobs_file):
            return None
        until = _time(data["valid_until"])
        if until is not None and until <= now:
            return None
        entries = [Entry(str(n), bool(en), str(k), str(x), str(tz), float(sec), _time(at))
                   for n, en, k, x, tz, sec, at in data["jobs"]]
    except (KeyError, TypeError, ValueError):  # written by something else: not ours to trust
        return None
    return Summary(entries, until)


def save(summary: Summary, key: list[Any] | None, state_dir: Path) -> None:
    """Cache `summary` under `key` (taken before the file was read, so that an edit made while
    it was being validated leaves a key that no longer matches). Only into an existing state
    dir, and quietly not at all where it cannot be written: a read never fails for its cache."""
    if key is None or not state_dir.is_dir():
        return
    from cronpy.paths import write_private

    data = {"key": key, "valid_until": _iso(summary.valid_until),
            "jobs": [[e.name, e.enabled, e.kind, e.expr, e.tz, e.seconds, _iso(e.at)] for e in summary.entries]}
    try:
        write_private(state_dir / FILE_NAME, json.dumps(data, separators=(",", ":")))
    except OSError:
        pass


def _iso(t: datetime | None) -> str | None:
    return t.isoformat() if t is not None else None


def _time(text: Any) -> datetime | None:
    if text is None:
        return None
    t = datetime.fromisoformat(str(text))
    if t.tzinfo is None:
        raise ValueError(text)
    return t
