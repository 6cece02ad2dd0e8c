"""Parse and format durations written as `45s`, `10m`, `1h30m`, `1d`, `250ms`."""

from __future__ import annotations

import re
from datetime import datetime, timedelta

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
# Patterns, not compiled patterns: re compiles (and caches) them on first use, so that the many
# commands that import this module and parse nothing do not pay for it (issue #16).
_PART = r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)"
_WHOLE = r"(?:\d+(?:\.\d+)?\s*(?:ms|s|m|h|d|w)\s*)+"


def parse_duration(text: str | int | float) -> float:
    """Return the number of seconds `text` stands for; a bare number means seconds.

    Raises ValueError with a message fit for the user when `text` is not a duration.
    """
    if isinstance(text, bool) or not isinstance(text, (str, int, float)):
        raise ValueError(f"expected a duration such as 45s, 10m or 1h30m, got {text!r}")
    if isinstance(text, (int, float)):
        try:
            seconds = float(text)
        except OverflowError:  # an int past float's range
            raise ValueError(f"not a finite duration: {text!r}") from None
    else:
        s = text.strip().lower()
        if re.fullmatch(r"\d+(?:\.\d+)?", s):
            seconds = float(s)
        elif re.fullmatch(_WHOLE, s):
            seconds = sum(float(n) * _UNITS[u] for n, u in re.findall(_PART, s))
        else:
            raise ValueError(f"expected a duration such as 45s, 10m or 1h30m, got {text!r}")
    if seconds < 0:
        raise ValueError(f"a duration cannot be negative, got {text!r}")
    if seconds != seconds or seconds == float("inf"):  # NaN, or digits past float's range
        raise ValueError(f"not a finite duration: {text!r}")
    return seconds


def format_duration(seconds: float) -> str:
    """Return a compact human form: `850ms`, `12.3s`, `4m05s`, `2h10m`, `3d4h`."""
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600}h"


_SIZE = r"(\d+(?:\.\d+)?)\s*(b|kb|kib|mb|mib|gb|gib|k|m|g)?"
_SIZE_UNITS = {None: 1, "b": 1, "k": 1024, "kb": 1000, "kib": 1024, "m": 1024**2, "mb": 1000**2,
               "mib": 1024**2, "g": 1024**3, "gb": 1000**3, "gib": 1024**3}


def parse_size(text: str | int) -> int:
    """Return the number of bytes `text` stands for: 500KB, 100MB, 1GiB, or a bare byte count.

    Raises ValueError with a message fit for the user."""
    if isinstance(text, bool) or not isinstance(text, (str, int)):
        raise ValueError(f"expected a size such as 100MB or 1GiB, got {text!r}")
    if isinstance(text, int):
        size = text
    else:
        m = re.fullmatch(_SIZE, text.strip(), re.IGNORECASE)
        if m is None:
            raise ValueError(f"expected a size such as 100MB or 1GiB, got {text!r}")
        size = int(float(m.group(1)) * _SIZE_UNITS[m.group(2).lower() if m.group(2) else None])
    if size <= 0:
        raise ValueError(f"a size must be more than zero, got {text!r}")
    return size


def parse_since(text: str, now: datetime) -> datetime:
    """A point in time written as a duration back from `now` (`7d`, `12h`) or an ISO date/time
    (local time when it has no offset); ValueError says what was expected."""
    try:
        back = parse_duration(text)
    except ValueError:
        pass
    else:
        try:
            return now - timedelta(seconds=back)
        except OverflowError:  # `99999999d`: before datetime's year 1
            raise ValueError(f"{text} reaches back before the year 1") from None
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"expected a duration (7d, 12h) or an ISO date/time, got {text!r}") from None
    return dt if dt.tzinfo else dt.astimezone()
