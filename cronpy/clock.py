"""The only place cronpy reads the wall clock; tests inject a FakeClock instead."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Callable, Protocol

UTC = timezone.utc

# Never sleep longer than this in one go: a wall-clock step (NTP, suspend, an operator's
# `date -s`) is noticed within this bound even though Event.wait counts monotonic time. A
# wake-up costs microseconds: 12 a minute do not show in the idle CPU figure.
MAX_SLEEP = 5.0

# The wall clock moving against the monotonic one by more than this between two passes of
# the loop is a step. NTP slews at most 500 ppm (2.5 ms over a 5 s sleep); `date -s`, a VM
# restore or a suspend move it by seconds to days.
STEP_THRESHOLD = 1.0

# cron(8): a time change of less than 3 hours is "small" (skipped fixed-time jobs run once,
# wildcard jobs resume); a bigger one is taken as the new time at once.
BIG_STEP = 3 * 3600.0


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


@dataclass(frozen=True)
class Step:
    """A wall-clock change seen by StepDetector."""

    seconds: float  #: how far the wall clock moved against the monotonic one: > 0 forward
    suspended: bool = False  #: the machine slept (boot time moved with the wall clock): time passed

    @property
    def big(self) -> bool:
        return abs(self.seconds) >= BIG_STEP

    def describe(self) -> str:
        if self.suspended:
            return f"the machine was suspended for {self.seconds:.1f}s"
        way = "forward" if self.seconds > 0 else "back"
        return f"the wall clock was stepped {way} by {abs(self.seconds):.1f}s"


def _mono() -> float:
    return time.clock_gettime(time.CLOCK_MONOTONIC)


def _boot() -> float:
    return time.clock_gettime(time.CLOCK_BOOTTIME)


class StepDetector:
    """Notices wall-clock steps by comparing the wall clock with the monotonic clock.

    CLOCK_MONOTONIC does not move when the wall clock is set and stops during a suspend;
    CLOCK_BOOTTIME counts the suspend too. So wall - monotonic changes on a step or a
    suspend, and wall - boottime only on a step. Call check() once per pass of the loop.
    """

    def __init__(self, wall: Callable[[], float] = time.time, mono: Callable[[], float] = _mono,
                 boot: Callable[[], float] = _boot, threshold: float = STEP_THRESHOLD) -> None:
        self._wall, self._mono, self._boot = wall, mono, boot
        self.threshold = threshold
        self._offsets = self._read()

    def _read(self) -> tuple[float, float]:
        w = self._wall()
        return w - self._mono(), w - self._boot()

    def check(self) -> Step | None:
        """The step since the last call, or None if the wall clock kept pace."""
        mono_offset, boot_offset = self._read()
        moved = mono_offset - self._offsets[0]
        boot_moved = boot_offset - self._offsets[1]
        self._offsets = (mono_offset, boot_offset)
        if abs(moved) < self.threshold:
            return None
        return Step(moved, suspended=moved > 0 and abs(boot_moved) < self.threshold)
