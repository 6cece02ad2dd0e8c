"""Telling the outside world: failure/success/retry hooks, healthchecks-style pings, webhooks,
and Apprise notifications (`notify:`: mail, Slack, Telegram, Matrix, ntfy, JSON, …).

Nothing here may block scheduling or fail a job. Every notification waits in a bounded queue
for one of a few worker threads, each request with a short timeout; a failure is logged and
retried a couple of times, then dropped. When the endpoints are slower than the jobs, the queue
fills and the oldest waiting notification is dropped, counted and logged (and counted in the
`cronpy_notifications_dropped_total` metric); at shutdown, what was never sent is said.
Values reach hook commands only through their environment, never spliced into the command
string. URLs are logged redacted, and a URL's `user:password@` is sent as Basic auth.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import tempfile
import threading
import time
from collections import deque
from concurrent.futures import Future, wait
from typing import Callable, Protocol

from cronpy.models import JobSpec, NotifyWhen, RunRecord, RunStatus
from cronpy.redact import cronpy_logger, redact_url

log = cronpy_logger()

HTTP_TIMEOUT = 5.0  # seconds for one ping or webhook request
HOOK_TIMEOUT = 60.0  # seconds for one hook command
TRIES = 3  # a notification is tried this many times, 1 s then 2 s apart
PING_BODY_BYTES = 10_000  # the tail of the output sent with a ping (healthchecks keeps 100 kB)
# Notifications waiting for a worker. With 4 workers and a 5 s timeout a full queue is ~80 s
# behind at worst; past it the oldest is dropped (the unbounded queue fell 49 s behind after 16
# runs of a slow webhook, and kept growing).
MAX_PENDING = 64
DROP_LOG_INTERVAL = 60.0  # seconds between "dropped" log lines while an endpoint stays slow
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


def split_userinfo(url: str) -> tuple[str, str | None]:
    """`url` without its `user:password@`, and the Basic `Authorization` value for it (None
    without userinfo). urllib takes userinfo for part of the host, so it must come off."""
    from urllib.parse import unquote, urlsplit, urlunsplit

    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url, None
    userinfo, host = parts.netloc.rsplit("@", 1)
    user, _, password = userinfo.partition(":")
    token = base64.b64encode(f"{unquote(user)}:{unquote(password)}".encode()).decode("ascii")
    return urlunsplit(parts._replace(netloc=host)), f"Basic {token}"


def _http(url: str, body: bytes | None, content_type: str) -> None:
    # Imported here: urllib.request brings http.client and ssl (~20 ms, ~2 MB), and most
    # runners never ping anything.
    import urllib.request

    target, auth = split_userinfo(url)
    headers = {"Content-Type": content_type, "User-Agent": "cronpy"}
    if auth is not None:
        headers["Authorization"] = auth
    req = urllib.request.Request(target, data=body if body is not None else b"", method="POST", headers=headers)
    with urllib.request.urlopen(req, timeout=HTTP_TIMEOUT) as resp:  # noqa: S310 (URLs from the jobs file)
        if resp.status >= 300:
            raise OSError(f"HTTP {resp.status}")


def _ping_url(base: str, suffix: str) -> str:
    """healthchecks' `/start`, `/fail`, `/<status>` go on the path, before any `?token=…`."""
    path, q, query = base.partition("?")
    return path.rstrip("/") + suffix + q + query


class _Task:
    """One queued notification: what it is (for logs), the action, and a future to wait on."""

    __slots__ = ("what", "action", "future")

    def __init__(self, what: str, action: Callable[[], None]) -> None:
        self.what = what
        self.action = action
        self.future: Future[None] = Future()


class Integrations:
    """Hooks, pings and webhooks of the jobs that ask for them."""

    def __init__(self, workers: int = 4, max_pending: int = MAX_PENDING,
                 on_drop: Callable[[int], None] | None = None,
                 previous: Callable[[str, int], RunStatus | None] | None = None) -> None:
        # How each job's last finished run ended, for `notify: recovery`; `previous` reads it
        # from the history the first time a job finishes in this process.
        self._last_status: dict[str, RunStatus] = {}
        self._previous = previous
        self._stop = threading.Event()
        self._start_pings: dict[int, Future[None]] = {}  # by run id, until the run's end ping
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)
        self._queue: deque[_Task] = deque()
        self._max_pending = max_pending
        self._closed = False
        self._busy = 0
        self.on_drop = on_drop  #: told of each drop (the metrics counter)
        self.dropped = 0  #: notifications dropped because the queue was full, since start
        self._dropped_unlogged = 0
        self._drop_logged_at: float | None = None
        self._workers = [threading.Thread(target=self._work, name=f"notify-{i}", daemon=True) for i in range(workers)]
        for t in self._workers:
            t.start()

    def _work(self) -> None:
        while True:
            with self._ready:
                while not self._queue and not self._closed:
                    self._ready.wait()
                if not self._queue:
                    return
                task = self._queue.popleft()
                self._busy += 1
            try:
                if task.future.set_running_or_notify_cancel():
                    _retrying(task.what, task.action, self._stop)
                    task.future.set_result(None)
            finally:
                with self._ready:
                    self._busy -= 1
                    self._ready.notify_all()

    def _submit(self, what: str, action: Callable[[], None]) -> Future[None] | None:
        task = _Task(what, action)
        dropped: _Task | None = None
        with self._ready:
            if self._closed:
                return None
            if len(self._queue) >= self._max_pending:
                dropped = self._queue.popleft()  # the oldest: the newest says the most
                self.dropped += 1
                self._dropped_unlogged += 1
            self._queue.append(task)
            self._ready.notify()
        if dropped is not None:
            dropped.future.cancel()  # an end ping waiting on a dropped /start goes on at once
            self._note_drop(dropped)
        return task.future

    def _note_drop(self, task: _Task) -> None:
        if self.on_drop is not None:
            self.on_drop(1)
        now = time.monotonic()
        # One line at the first drop, then at most one a minute while the endpoint stays slow.
        with self._lock:
            if self._drop_logged_at is not None and now - self._drop_logged_at < DROP_LOG_INTERVAL:
                return
            count, self._dropped_unlogged = self._dropped_unlogged, 0
            self._drop_logged_at = now
        log.warning("notifications: %d waiting, the endpoints are too slow: dropped the oldest %d (%d since "
                    "start), latest: %s", self._max_pending, count, self.dropped, task.what)

    @property
    def pending(self) -> int:
        """Notifications waiting for a worker (not counting those being sent)."""
        with self._lock:
            return len(self._queue)

    def run_started(self, spec: JobSpec, run_id: int) -> None:
        if spec.ping:
            url = _ping_url(spec.ping, "/start")
            sent = self._submit(f"{spec.name}: ping {redact_url(url)}", lambda: _http(url, None, "text/plain"))
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
                url = _ping_url(spec.ping, f"/{record.exit_code}")
            else:
                url = _ping_url(spec.ping, "/fail")
            body = (record.output or "")[-PING_BODY_BYTES:].encode("utf-8", errors="replace")
            with self._lock:
                start = self._start_pings.pop(record.id, None)

            def end_ping() -> None:
                # After the run's /start ping, never before it: healthchecks.io reads a /start
                # that arrives after the success as a new run that never ends, and alerts. The
                # queue is FIFO, so the /start task is already running, done or dropped (then
                # cancelled): no deadlock.
                if start is not None:
                    wait([start], timeout=TRIES * (HTTP_TIMEOUT + 2))
                _http(url, body, "text/plain; charset=utf-8")

            self._submit(f"{spec.name}: ping {redact_url(url)}", end_ping)
        if spec.webhook and (ok or failed):
            payload = json.dumps(record.to_json(with_output=False)).encode()
            hook_url = spec.webhook
            self._submit(f"{spec.name}: webhook {redact_url(hook_url)}", lambda: _http(hook_url, payload, "application/json"))
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
        """Let queued notifications finish for up to `wait` seconds, then drop the rest and
        say which were never sent."""
        deadline = time.monotonic() + wait
        with self._ready:
            self._closed = True
            self._ready.notify_all()
            while (self._queue or self._busy) and (left := deadline - time.monotonic()) > 0:
                self._ready.wait(left)
            unsent = list(self._queue)
            self._queue.clear()
            busy = self._busy
        self._stop.set()  # a retry waiting out its backoff gives up
        for task in unsent:
            task.future.cancel()
        if unsent or busy:
            names = "; ".join(t.what for t in unsent[:10]) + ("; …" if len(unsent) > 10 else "")
            log.warning("notifications: stopping with %d not sent%s%s", len(unsent),
                        f" and {busy} still being sent" if busy else "", f": {names}" if names else "")


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
    # Imported here: Apprise is an extra (`cronpy-runner[notify]`), and loading its plugins takes ~100 ms.
    import apprise

    sender = apprise.Apprise()
    if not sender.add(url):
        raise ValueError(f"Apprise does not understand the URL ({url.split('://', 1)[0]}://…)")
    if not sender.notify(title=subject, body=body, body_format=apprise.NotifyFormat.TEXT):
        raise OSError("Apprise could not deliver the notification")
