"""Telling the outside world: failure/success/retry hooks, healthchecks-style pings, webhooks.

Nothing here may block scheduling or fail a job. Every notification runs on a small pool of
worker threads with a short timeout; a failure is logged and retried a couple of times, then
dropped. Values reach hook commands only through their environment, never spliced into the
command string.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import tempfile
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Callable, Protocol

from cronpy.models import JobSpec, RunRecord, RunStatus

log = logging.getLogger("cronpy")

HTTP_TIMEOUT = 5.0  # seconds for one ping or webhook request
HOOK_TIMEOUT = 60.0  # seconds for one hook command
TRIES = 3  # a notification is tried this many times, 1 s then 2 s apart
PING_BODY_BYTES = 10_000  # the tail of the output sent with a ping (healthchecks keeps 100 kB)


class Observer(Protocol):
    """What the runner tells about runs (integrations, metrics)."""

    def run_started(self, spec: JobSpec, run_id: int) -> None: ...

    def run_finished(self, spec: JobSpec, record: RunRecord, will_retry: bool) -> None: ...


def _retrying(what: str, action: Callable[[], None], stop: threading.Event) -> None:
    for attempt in range(1, TRIES + 1):
        try:
            action()
            return
        except Exception as exc:  # a notification must never take anything down
            if attempt == TRIES:
                log.warning("%s failed, giving up after %d tries: %s", what, TRIES, exc)
                return
            log.info("%s failed (try %d of %d), retrying: %s", what, attempt, TRIES, exc)
            if stop.wait(float(2 ** (attempt - 1))):
                return


def _http(url: str, body: bytes | None, content_type: str) -> None:
    # Imported here: urllib.request brings http.client and ssl (~20 ms, ~2 MB), and most
    # runners never ping anything.
    import urllib.request

    req = urllib.request.Request(url, data=body if body is not None else b"", method="POST",
                                 headers={"Content-Type": content_type, "User-Agent": "cronpy"})
    with urllib.request.urlopen(req, timeout=HTTP_TIMEOUT) as resp:  # noqa: S310 (URLs from the jobs file)
        if resp.status >= 300:
            raise OSError(f"HTTP {resp.status}")


class Integrations:
    """Hooks, pings and webhooks of the jobs that ask for them."""

    def __init__(self, workers: int = 4) -> None:
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="notify")
        self._stop = threading.Event()
        self._start_pings: dict[int, Future[None]] = {}  # by run id, until the run's end ping
        self._lock = threading.Lock()

    def _submit(self, what: str, action: Callable[[], None]) -> Future[None] | None:
        try:
            return self._pool.submit(_retrying, what, action, self._stop)
        except RuntimeError:  # shutting down
            return None

    def run_started(self, spec: JobSpec, run_id: int) -> None:
        if spec.ping:
            url = f"{spec.ping}/start"
            sent = self._submit(f"{spec.name}: ping {url}", lambda: _http(url, None, "text/plain"))
            if sent is not None:
                with self._lock:
                    self._start_pings[run_id] = sent

    def run_finished(self, spec: JobSpec, record: RunRecord, will_retry: bool) -> None:
        status = record.status
        ok = status is RunStatus.SUCCESS
        failed = status in (RunStatus.FAILED, RunStatus.TIMEOUT, RunStatus.INTERRUPTED, RunStatus.CANCELLED)
        if spec.ping and (ok or failed):
            if ok:
                url = spec.ping
            elif record.exit_code is not None and 0 < record.exit_code < 256:
                url = f"{spec.ping}/{record.exit_code}"
            else:
                url = f"{spec.ping}/fail"
            body = (record.output or "")[-PING_BODY_BYTES:].encode("utf-8", errors="replace")
            with self._lock:
                start = self._start_pings.pop(record.id, None)

            def end_ping() -> None:
                # After the run's /start ping, never before it: healthchecks.io reads a /start
                # that arrives after the success as a new run that never ends, and alerts. The
                # pool is FIFO, so the /start task is already running or done: no deadlock.
                if start is not None:
                    wait([start], timeout=TRIES * (HTTP_TIMEOUT + 2))
                _http(url, body, "text/plain; charset=utf-8")

            self._submit(f"{spec.name}: ping {url}", end_ping)
        if spec.webhook and (ok or failed):
            payload = json.dumps(record.to_json(with_output=False)).encode()
            hook_url = spec.webhook
            self._submit(f"{spec.name}: webhook {hook_url}", lambda: _http(hook_url, payload, "application/json"))
        command = None
        if will_retry:
            command = spec.on_retry
        elif ok:
            command = spec.on_success
        elif failed:
            command = spec.on_failure
        if command:
            hook = command
            self._submit(f"{spec.name}: hook", lambda: self._run_hook(hook, spec, record))

    @staticmethod
    def _run_hook(command: str, spec: JobSpec, record: RunRecord) -> None:
        with tempfile.NamedTemporaryFile("w", prefix=f"cronpy-{spec.name}-", suffix=".out", delete=False,
                                         encoding="utf-8") as fh:
            fh.write(record.output or "")
            output_file = fh.name
        try:
            env = dict(os.environ)
            env.update(spec.env)
            env.update({
                "CRONPY_JOB": spec.name,
                "CRONPY_RUN_ID": str(record.id),
                "CRONPY_STATUS": record.status.value,
                "CRONPY_EXIT_CODE": "" if record.exit_code is None else str(record.exit_code),
                "CRONPY_ATTEMPT": str(record.attempt),
                "CRONPY_DURATION": "" if record.duration is None else f"{record.duration:.3f}",
                "CRONPY_ERROR": (record.error or "")[-4000:],
                "CRONPY_OUTPUT_FILE": output_file,
            })
            started = time.monotonic()
            result = subprocess.run(["/bin/sh", "-c", command], env=env, cwd=str(spec.cwd) if spec.cwd else None,
                                    stdin=subprocess.DEVNULL, capture_output=True, timeout=HOOK_TIMEOUT,
                                    start_new_session=True)
            if result.returncode != 0:
                tail = result.stderr.decode(errors="replace").strip()[-500:]
                raise OSError(f"exited with status {result.returncode}" + (f": {tail}" if tail else ""))
            log.debug("%s: hook done in %.2fs", spec.name, time.monotonic() - started)
        finally:
            os.unlink(output_file)

    def close(self, wait: float = 5.0) -> None:
        """Let queued notifications finish for up to `wait` seconds, then drop the rest."""
        done = threading.Event()

        def drain() -> None:
            self._pool.shutdown(wait=True)
            done.set()

        threading.Thread(target=drain, daemon=True).start()
        if not done.wait(wait):
            self._stop.set()
            self._pool.shutdown(wait=False, cancel_futures=True)
