"""Parse and format durations written as `45s`, `10m`, `1h30m`, `1d`, `250ms`."""

from __future__ import annotations

import re

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)")
_WHOLE = re.compile(r"(?:\d+(?:\.\d+)?\s*(?:ms|s|m|h|d|w)\s*)+")


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
        elif _WHOLE.fullmatch(s):
            seconds = sum(float(n) * _UNITS[u] for n, u in _PART.findall(s))
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
