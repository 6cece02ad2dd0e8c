"""Notices when the files a runner holds open are no longer the ones at their paths.

An operator's `rm -rf` of the state dir (or a restore that swaps it) leaves a runner holding
its flock on a deleted lock file and writing to a deleted database: a second runner started
afterwards creates new files, takes a new lock and schedules too, and every instant runs
twice. The kernel cannot tell us, so a thread compares the device and inode of each path
with those of the file opened, once a second (a stat each: nothing measurable).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Callable

from cronpy.redact import cronpy_logger

log = cronpy_logger()

# How often the paths are compared, in seconds: "within seconds", at one stat per file.
CHECK_INTERVAL = 1.0

Identity = tuple[int, int]  # (st_dev, st_ino)


def identity(path: Path) -> Identity | None:
    """The device and inode of the file at `path` now; None if there is none."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_dev, st.st_ino)


class StateGuard:
    """The files this process holds open, by path, with the identity of the file opened."""

    def __init__(self) -> None:
        self._files: dict[Path, Identity] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()

    def watch(self, path: Path, opened: Identity | None = None) -> None:
        """Remember `path` as the file opened (`opened`, e.g. from fstat; else the file there now)."""
        ident = opened or identity(path)
        if ident is not None:
            with self._lock:
                self._files[path] = ident

    def forget(self, path: Path) -> None:
        with self._lock:
            self._files.pop(path, None)

    def check(self) -> str | None:
        """Why a watched path no longer names the file opened, or None if all still do."""
        with self._lock:
            files = list(self._files.items())
        for path, opened in files:
            try:
                now = identity(path)
            except OSError:  # unreadable for now (EACCES, EIO): no evidence of a replacement
                continue
            if now is None:
                return f"{path} was deleted"
            if now != opened:
                return f"{path} was replaced by another file"
        return None

    def start(self, on_lost: Callable[[str], None], interval: float = CHECK_INTERVAL) -> None:
        """Check every `interval` seconds in a thread; call `on_lost(why)` once, then stop."""
        def loop() -> None:
            while not self._stop.wait(interval):
                why = self.check()
                if why is not None:
                    on_lost(why)
                    return

        threading.Thread(target=loop, name="state-guard", daemon=True).start()

    def close(self) -> None:
        self._stop.set()
