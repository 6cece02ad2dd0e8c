"""A fleet host's wall clock measured against its PostgreSQL server's.

Leases expire by the database's clock, but a leader fires instants by its own: a host whose
clock is 30 s off runs every instant 30 s early or late, and a takeover between such hosts
leaves instants unclaimed or runs nothing for as long as the offset. So the store measures
the offset when it connects and on every lease renewal (a third of a lease): above
`clock_skew_warning` it warns, above `clock_skew_limit` the host refuses to lead, and a
leader steps down. Both are keys of the jobs file (defaults below).
"""

from __future__ import annotations

import time
from typing import Any

from cronpy.redact import cronpy_logger

log = cronpy_logger()

# NTP keeps hosts within milliseconds; a second is already a host without time sync.
DEFAULT_WARNING = 1.0
# Five seconds early or late is the most a schedule may drift before the host is refused:
# half of the 10 s within which a late instant still fires.
DEFAULT_LIMIT = 5.0

_SQL = "SELECT extract(epoch FROM clock_timestamp())::float8"


class ClockSkew:
    """The last measured offset of this host's clock from the database's, and the policy."""

    def __init__(self, location: str, warning: float = DEFAULT_WARNING, limit: float = DEFAULT_LIMIT) -> None:
        self.location = location
        self.warning = warning
        self.limit = limit
        #: this host's wall clock minus the database's, in seconds (> 0: ahead); None: not measured
        self.offset: float | None = None
        self._level = 0  # 0 fine, 1 warned, 2 refused: each change is logged once

    def measure(self, cur: Any) -> float:
        """Read the server's clock on cursor `cur`; the offset is taken at the round trip's middle."""
        before = time.time()
        cur.execute(_SQL)
        server = float(cur.fetchone()[0])
        after = time.time()
        return self.observe((before + after) / 2 - server)

    def describe(self) -> str:
        off = self.offset or 0.0
        return f"this host's clock is {abs(off):.1f}s {'ahead of' if off > 0 else 'behind'} the database's"

    def observe(self, offset: float) -> float:
        self.offset = offset
        level = 2 if abs(offset) > self.limit else 1 if abs(offset) > self.warning else 0
        if level != self._level:
            if level == 2:
                log.error("store %s: %s, more than clock_skew_limit (%gs): this host will not schedule until"
                          " its clock is fixed (check NTP)", self.location, self.describe(), self.limit)
            elif level == 1:
                log.warning("store %s: %s (clock_skew_warning is %gs): instants run that much early or late"
                            " on this host; check NTP", self.location, self.describe(), self.warning)
            else:
                log.info("store %s: this host's clock agrees with the database's again (%.3fs)", self.location,
                         offset)
            self._level = level
        return offset

    def refusal(self) -> str | None:
        """Why this host must not lead, or None."""
        if self.offset is not None and abs(self.offset) > self.limit:
            return f"{self.describe()}, more than clock_skew_limit ({self.limit:g}s)"
        return None
