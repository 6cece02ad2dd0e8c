"""The runner: what fires jobs, in pieces that depend downward only.

agenda (pure: the heap of next instants) → admission (pure: overlap, priority, slots) →
claimer (one durable commit per tick, typed results) → supervisor (one thread watching every
run) and recorder (the store writer) → core (the Runner that composes them).
"""

from cronpy.runner.agenda import LEAD, MISFIRE_GRACE, Due
from cronpy.runner.core import FIRST_BATCH, OutputSink, Runner

__all__ = ["FIRST_BATCH", "LEAD", "MISFIRE_GRACE", "Due", "OutputSink", "Runner"]
