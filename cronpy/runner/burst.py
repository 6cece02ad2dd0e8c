"""The loop's spawn bursts, as a gate the other threads of the runner can see.

While the loop spawns a tick's runs back to back, the supervisor and the store writer put off
what can wait. The supervisor does not wake for each exit: the loop notes the instants of the
exits between its spawns (Supervisor.collect, one non-blocking epoll_wait at most once a
millisecond), and the supervisor reaps, reads and closes once the burst is over; the writer
commits after it. Each system call of those threads releases the GIL, and while the loop was
spawning every release was a hand-over to the loop and back: with 100 `true` jobs due every
second the supervisor made 2.2 context switches a run and the writer 1.2; after, 0.9 and 0.7,
and the runner's CPU per run went from 0.55-0.59 ms to 0.45-0.49 ms in the same A/B runs
(issue #12).

Nothing waits on a burst for long: the supervisor defers at most DEFER_AT_MOST, the writer at
most WRITE_AT_MOST; a timeout is applied at once, burst or not, a cancel within DEFER_AT_MOST.
"""

from __future__ import annotations

import threading

#: The longest a supervisor puts off reaping, reading and closing (a burst of 10,000 due jobs
#: takes seconds to spawn: a chatty job's pipe would fill and block it meanwhile).
DEFER_AT_MOST = 0.05
#: The longest the writer holds a commit back for a burst.
WRITE_AT_MOST = 1.0


class Burst:
    """A gate: closed (`on`) while the loop spawns back to back. Thread-safe."""

    def __init__(self) -> None:
        self._quiet = threading.Event()
        self._quiet.set()

    @property
    def on(self) -> bool:
        return not self._quiet.is_set()

    def begin(self) -> None:
        self._quiet.clear()

    def end(self) -> None:
        self._quiet.set()

    def wait_over(self, timeout: float) -> bool:
        """Block until no burst is on (True), or `timeout` seconds (False)."""
        return self._quiet.wait(timeout)
