"""Telling the outside world: failure/success/retry hooks, healthchecks-style pings, webhooks,
and Apprise notifications (`notify:`: mail, Slack, Telegram, Matrix, ntfy, JSON, …).

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

from cronpy.models import JobSpec, NotifyWhen, RunRecord, RunStatus

log = logging.getLogger("cronpy")

HTTP_TIMEOUT = 5.0  # seconds for one ping or webhook request
HOOK_TIMEOUT = 60.0  # seconds for one hook command
TRIES = 3  # a notification is tried this many times, 1 s then 2 s apart
PING_BODY_BYTES = 10_000  # the tail of the output sent with a ping (healthchecks keeps 100 kB)
NOTIFY_OUTPUT_CHARS = 4_000  # the output tail in a notification: Slack cuts a message at 40,000
# Outcomes that count as a failure for `notify:` (and end it for `recovery`).
_FAILURES = (RunStatus.FAILED, RunStatus.TIMEOUT)


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

    def __init__(self, workers: int = 4,
                 previous: Callable[[str, int], RunStatus | None] | None = None) -> None:
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="notify")
        # How each job's last finished run ended, for `notify: recovery`; `previous` reads it
        # from the history the first time a job finishes in this process.
        self._last_status: dict[str, RunStatus] = {}
        self._previous = previous
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
        if spec.notify is not None and not will_retry and status.finished and status is not RunStatus.SKIPPED:
            self._apprise(spec, record)
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

    def _apprise(self, spec: JobSpec, record: RunRecord) -> None:
        """Decide here, in finishing order, whether the run is news; send it on the pool."""
        assert spec.notify is not None
        with self._lock:
            before = self._last_status.get(spec.name)
        if before is None and self._previous is not None and NotifyWhen.RECOVERY in spec.notify.when:
            try:
                before = self._previous(spec.name, record.id)
            except Exception as exc:  # an unreadable history: no recovery message this once
                log.warning("%s: cannot read the previous run for `notify: recovery`: %s", spec.name, exc)
        with self._lock:
            self._last_status[spec.name] = record.status
        reasons = notify_reasons(spec.notify.when, record, before)
        if not reasons:
            return
        subject, body = notification(spec, record, recovered=NotifyWhen.RECOVERY in reasons)
        for url in spec.notify.urls:
            scheme = url.split("://", 1)[0]  # never the whole URL in a log line: it may hold a password
            self._submit(f"{spec.name}: notify {scheme}://…", lambda u=url: _send_apprise(u, subject, body))  # type: ignore[misc]

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


def notify_reasons(when: frozenset[NotifyWhen], record: RunRecord, before: RunStatus | None) -> set[NotifyWhen]:
    """Which of a job's `notify: when` choices this finished run meets."""
    status = record.status
    met = {NotifyWhen.ALWAYS}
    if status in _FAILURES:
        met.add(NotifyWhen.FAILURE)
    if status is RunStatus.SUCCESS:
        met.add(NotifyWhen.SUCCESS)
        if before in _FAILURES:
            met.add(NotifyWhen.RECOVERY)
    if (record.output or "").strip():
        met.add(NotifyWhen.OUTPUT)  # cron mails whatever a job prints, whatever its status
    return met & set(when)


def notification(spec: JobSpec, record: RunRecord, *, recovered: bool = False) -> tuple[str, str]:
    """The subject and plain-text body of a run's notification."""
    status = record.status
    if recovered:
        word = "recovered"
    elif status is RunStatus.SUCCESS:
        word = "succeeded"
    elif status is RunStatus.TIMEOUT:
        word = "timed out"
    elif status is RunStatus.FAILED and record.exit_code is not None:
        word = f"failed (exit {record.exit_code})"
    else:
        word = status.value
    subject = f"cronpy: {spec.name} {word} on {record.host or '?'}"
    lines = [
        f"Job:       {spec.name}",
        f"Status:    {status.value}" + (" (first success after a failure)" if recovered else ""),
        f"Exit code: {'' if record.exit_code is None else record.exit_code}",
        f"Duration:  {'' if record.duration is None else f'{record.duration:.3f}s'}",
        f"Host:      {record.host or ''}",
        f"Run id:    {record.id}",
        f"Trigger:   {record.trigger.value}, attempt {record.attempt}",
    ]
    if record.started_at is not None:
        lines.append(f"Started:   {record.started_at.isoformat()}")
    if record.error:
        lines.append(f"Error:     {record.error.splitlines()[-1] if record.error.strip() else ''}")
    output = record.output or ""
    if output:
        tail = output[-NOTIFY_OUTPUT_CHARS:]
        cut = "" if len(tail) == len(output) else f" (last {NOTIFY_OUTPUT_CHARS} characters; `cronpy logs {record.id}`)"
        lines += ["", f"Output{cut}:", tail.rstrip("\n")]
    return subject, "\n".join(lines) + "\n"


def _send_apprise(url: str, subject: str, body: str) -> None:
    # Imported here: Apprise is an extra (`cronpy[notify]`), and loading its plugins takes ~100 ms.
    import apprise

    sender = apprise.Apprise()
    if not sender.add(url):
        raise ValueError(f"Apprise does not understand the URL ({url.split('://', 1)[0]}://…)")
    if not sender.notify(title=subject, body=body, body_format=apprise.NotifyFormat.TEXT):
        raise OSError("Apprise could not deliver the notification")
