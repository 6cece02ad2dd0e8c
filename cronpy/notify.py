"""systemd integration without a dependency: sd_notify(3) over $NOTIFY_SOCKET, and the watchdog.

Every call is a single non-blocking datagram; when the runner is not under systemd (no
NOTIFY_SOCKET) each call does nothing. A failed send is logged once and never raised: the
scheduler must not stop because the service manager went away.
"""

from __future__ import annotations

import os
import socket
import threading
from typing import Callable

from cronpy.redact import cronpy_logger

log = cronpy_logger()


class Notifier:
    """Sends sd_notify messages (READY=1, STATUS=…, RELOADING=1, STOPPING=1, WATCHDOG=1)."""

    def __init__(self, env: dict[str, str] | None = None) -> None:
        env = dict(os.environ) if env is None else env
        address = env.get("NOTIFY_SOCKET", "")
        self._addr: str | bytes | None = None
        if address.startswith("@"):
            self._addr = b"\0" + address[1:].encode()  # abstract namespace socket
        elif address.startswith("/"):
            self._addr = address
        self._sock: socket.socket | None = None
        if self._addr is not None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.setblocking(False)
        self._lock = threading.Lock()
        self._warned = False
        usec = env.get("WATCHDOG_USEC")
        pid = env.get("WATCHDOG_PID")
        # WATCHDOG_PID, when set, names the process the watchdog is meant for (sd_watchdog_enabled).
        self.watchdog_interval: float | None = None
        if usec and usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog_interval = int(usec) / 1e6 / 2  # ping at half the timeout, as systemd advises
        self._stop = threading.Event()

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def send(self, *fields: str) -> None:
        if self._sock is None or self._addr is None:
            return
        data = "\n".join(fields).encode()
        with self._lock:
            try:
                self._sock.sendto(data, self._addr)
            except OSError as exc:
                if not self._warned:
                    log.warning("sd_notify to %r failed: %s", self._addr, exc)
                    self._warned = True

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")

    def status(self, status: str) -> None:
        self.send(f"STATUS={status}")

    def reloading(self, monotonic_usec: int) -> None:
        # MONOTONIC_USEC lets systemd tie this reload to the request (Type=notify-reload).
        self.send("RELOADING=1", f"MONOTONIC_USEC={monotonic_usec}")

    def stopping(self) -> None:
        self.send("STOPPING=1", "STATUS=stopping")

    def start_watchdog(self, healthy: Callable[[], bool]) -> None:
        """Ping WATCHDOG=1 at half of WATCHDOG_USEC while `healthy()` says the loop is alive."""
        interval = self.watchdog_interval
        if interval is None or self._sock is None:
            return

        def loop() -> None:
            while not self._stop.wait(interval):
                if healthy():
                    self.send("WATCHDOG=1")

        threading.Thread(target=loop, name="watchdog", daemon=True).start()

    def close(self) -> None:
        self._stop.set()
        if self._sock is not None:
            self._sock.close()
            self._sock = None
