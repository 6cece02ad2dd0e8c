"""The one retry policy for store operations: exponential backoff with a cap, bounded by tries
and/or a deadline, interruptible by an event. Every place that retries the store uses it
(opening a fleet store, a runner's history writes, a fleet claim on a dropped connection)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Callable, Iterator, NamedTuple, TypeVar

if TYPE_CHECKING:
    import threading

from cronpy.errors import CronpyError

T = TypeVar("T")


class GaveUp(Exception):
    """Raised by RetryPolicy.call when the policy is exhausted; carries the last error."""

    def __init__(self, last: BaseException, tries: int) -> None:
        super().__init__(str(last))
        self.last = last
        self.tries = tries


class RetryPolicy(NamedTuple):
    """Delays of first, first*factor, … capped at `cap` seconds.

    `tries` bounds the attempts (None: unbounded); `patience` keeps retrying for at least that
    many seconds after the first failure even when the tries are spent (a fleet database that
    fails over or is in maintenance comes back within minutes).
    """

    first: float = 0.5
    factor: float = 2.0
    cap: float = 10.0
    tries: int | None = None
    patience: float = 0.0

    def delays(self) -> Iterator[float]:
        """The waits between tries, endless: first, first*factor, … capped at `cap`. For a
        caller that retries in a loop of its own (the store writer); others use call()."""
        delay = self.first
        while True:
            yield delay
            delay = min(delay * self.factor, self.cap)

    def call(self, fn: Callable[[], T], *, retry_on: tuple[type[BaseException], ...] = (CronpyError,),
             on_error: Callable[[int, BaseException], None] | None = None,
             stop: threading.Event | None = None, deadline: Callable[[], float] | None = None,
             fatal: tuple[type[BaseException], ...] = ()) -> T:
        """fn() until it returns. On an error of `retry_on`: on_error(try, error), wait, again.
        Raises GaveUp when the tries (and patience) are spent, when `stop` is set, when the
        next attempt would start after `deadline()` (a time.monotonic() value), or at once on
        an error of `fatal` (one that retrying cannot cure, e.g. a corrupt file)."""
        give_up_after = time.monotonic() + self.patience
        waits = self.delays()
        attempt = 0
        while True:
            try:
                return fn()
            except retry_on as exc:
                attempt += 1
                if on_error is not None:
                    on_error(attempt, exc)
                spent = (isinstance(exc, fatal)
                         or self.tries is not None and attempt >= self.tries and time.monotonic() >= give_up_after)
                delay = next(waits)
                if spent or (deadline is not None and time.monotonic() + delay > deadline()):
                    raise GaveUp(exc, attempt) from None
                if stop is not None:
                    if stop.wait(delay):
                        raise GaveUp(exc, attempt) from None
                else:
                    time.sleep(delay)


#: The runner's store writer (cronpy/runner/recorder.py): for as long as the process lives
#: (tries=None), since its writes wait in a buffer and nothing waits for them; the 2 s cap is
#: how late the history catches up after the store returns (the `fault` bench's figure).
WRITE = RetryPolicy(first=0.1, cap=2.0)
#: Opening a store that cannot be reached yet: back off up to 10 s, until stopped.
OPEN = RetryPolicy(first=0.5, cap=10.0)
#: A fleet claim on a dropped connection: the connection's own reconnect backoff starts at
#: 0.2 s; retried while the lease lasts.
CLAIM = RetryPolicy(first=0.2, factor=1.5, cap=1.0)
