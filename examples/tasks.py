"""Python entry points used by jobs.example.yaml."""

from __future__ import annotations

import shutil
from typing import Any


def disk_report(path: str = ".", context: dict[str, Any] | None = None) -> dict[str, Any]:
    """Return free space at `path`; cronpy stores the returned dict with the run."""
    usage = shutil.disk_usage(path)
    free_pct = round(100 * usage.free / usage.total, 1)
    print(f"{path}: {free_pct}% free")
    return {"path": path, "free_percent": free_pct, "run": context["run_id"] if context else None}


def flaky(fail_ratio: float = 0.5) -> str:
    """Fail about `fail_ratio` of the time, to show retries with backoff."""
    import random

    if random.random() < fail_ratio:
        raise RuntimeError("transient failure (this job fails on purpose, to show retries)")
    return "ok"
