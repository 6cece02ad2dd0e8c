"""Schedules in words ("At 03:00, Monday through Friday"), for `list`, `next` and the web.

Its own module so that the dashboard can describe schedules without importing the service
layer (which imports the runner).
"""

from __future__ import annotations

from cronpy.models import At, Every, Schedule


def describe(sched: Schedule | None) -> str | None:
    """The schedule in words ("At 03:00, Monday through Friday"), or None if it cannot say."""
    if sched is None:
        return None
    if isinstance(sched, Every):
        return f"Every {_whole(sched.seconds)}"
    if isinstance(sched, At):
        return f"Once, at {sched.when.isoformat(timespec='minutes')}"
    from cron_descriptor import ExpressionDescriptor, Options  # deferred: ~70 ms to import

    options = Options()
    options.use_24hour_time_format = True
    options.verbose = False
    try:
        return str(ExpressionDescriptor(sched.expr, options).get_description())
    except Exception:  # cron-descriptor knows no `H`; the expression speaks for itself then
        return None


def _whole(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"
