"""The only place cronpy reads the wall clock; tests inject a FakeClock instead."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone
from typing import Protocol

UTC = timezone.utc

# Never sleep longer than this in one go: a wall-clock step (NTP, suspend, an operator's
# `date -s`) is noticed within this bound even though Event.wait counts monotonic time.
MAX_SLEEP = 30.0


class Clock(Protocol):
    """Where the runner gets the time and how it waits for it."""

    def now(self) -> datetime:
        """Return the current time, aware, in UTC."""
        ...

    def sleep_until(self, deadline: datetime | None, wake: threading.Event) -> None:
        """Block until `deadline` (None: indefinitely) or until `wake` is set, whichever is first."""
        ...


class SystemClock:
    """The real clock."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    def sleep_until(self, deadline: datetime | None, wake: threading.Event) -> None:
        timeout = MAX_SLEEP
        if deadline is not None:
            timeout = min(MAX_SLEEP, max(0.0, (deadline - self.now()).total_seconds()))
        wake.wait(timeout)


class FakeClock:
    """A clock that moves only when told: `advance()` or `set()`; sleeping jumps to the deadline."""

    def __init__(self, start: datetime) -> None:
        if start.tzinfo is None:
            raise ValueError("FakeClock needs an aware datetime")
        self._now = start.astimezone(UTC)
        self._lock = threading.Lock()

    def now(self) -> datetime:
        with self._lock:
            return self._now

    def set(self, when: datetime) -> None:
        with self._lock:
            self._now = when.astimezone(UTC)

    def advance(self, seconds: float) -> datetime:
        with self._lock:
            self._now += timedelta(seconds=seconds)
            return self._now

    def sleep_until(self, deadline: datetime | None, wake: threading.Event) -> None:
        if wake.is_set():
            return
        if deadline is not None and deadline > self.now():
            self.set(deadline)
        else:
            wake.wait(0.01)
