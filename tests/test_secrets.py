"""Secrets never printed, credentials sent as Basic auth, a slow endpoint never a backlog without
bound: real HTTP servers on 127.0.0.1, the real CLI, real logs."""

from __future__ import annotations

import base64
import logging
import os
import subprocess
import sys
import threading
import urllib.request
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import wait_for

from cronpy.integrations import Integrations
from cronpy.models import JobSpec, RunRecord, RunStatus, Trigger
from cronpy.redact import redact_text, redact_url

SECRETS = ("pingpass", "s3cr3t", "hookpass", "hunter2", "pa/ss")


class Server:
    """A real HTTP server on 127.0.0.1 recording (path, Authorization) of each request.

    `status` is what it answers; with `gate`, each request waits for the gate to open (for
    up to 30 s), as an endpoint slower than the jobs would."""

    def __init__(self, status: int = 200, gate: threading.Event | None = None) -> None:
        self.requests: list[tuple[str, str | None]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                server.requests.append((self.path, self.headers.get("Authorization")))
                if gate is not None:
                    gate.wait(30)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    made: list[Server] = []

    def make(status: int = 200, gate: threading.Event | None = None) -> Server:
        made.append(Server(status, gate))
        return made[-1]

    yield make
    for s in made:
        s.close()


def cli(*args: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRONPY_")}
    return subprocess.run([sys.executable, "-m", "cronpy", *args], cwd=cwd, env=env, text=True,
                          capture_output=True, timeout=timeout)


@pytest.mark.parametrize("url, shown", [
    ("https://user:pingpass@hc.example/ping/abc?token=s3cr3t&x=1", "https://***@hc.example/ping/abc?token=***&x=1"),
    ("https://TOKEN123@hc.example/p", "https://***@hc.example/p"),
    ("https://hooks.example/h?api_key=s3cr3t#frag", "https://hooks.example/h?api_key=***#frag"),
    ("http://127.0.0.1:8080/ping/uuid", "http://127.0.0.1:8080/ping/uuid"),
    ("postgresql://cronpy:hunter2@db:5432/cronpy", "postgresql://cronpy:***@db:5432/cronpy"),
    # An unencoded `/` in the password: urlsplit reads `cronpy:pa` as the host.
    ("postgresql://cronpy:pa/ss@db/cronpy", "postgresql://cronpy:***@db/cronpy"),
    ("postgresql://cronpy@db/cronpy?sslmode=require&password=hunter2", "postgresql://cronpy@db/cronpy?sslmode=require&password=***"),
])
def test_every_form_of_url_secret_is_redacted(url: str, shown: str) -> None:
    assert redact_url(url) == shown
    assert redact_text(f"cannot connect to {url}: refused") == f"cannot connect to {shown}: refused"


def test_libpq_keyword_passwords_are_redacted_in_text() -> None:
    assert redact_text("host=db password=hunter2 dbname=x") == "host=db password=*** dbname=x"


def test_ping_and_webhook_userinfo_goes_as_basic_auth_and_never_into_the_log(tmp_path: Path, server) -> None:
    failing = server(status=500)  # so that every try is logged, URL included
    (tmp_path / "jobs.yaml").write_text(
        "state_dir: state\njobs:\n  a:\n    command: 'true'\n"
        f"    ping: http://user:pingpass@127.0.0.1:{failing.port}/ping/a?token=s3cr3t\n"
        f"    webhook: http://hook%40corp:hookpass@127.0.0.1:{failing.port}/hook\n")
    result = cli("trigger", "a", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    expected = {"/ping/a/start?token=s3cr3t": "Basic " + base64.b64encode(b"user:pingpass").decode(),
                "/ping/a?token=s3cr3t": "Basic " + base64.b64encode(b"user:pingpass").decode(),
                "/hook": "Basic " + base64.b64encode(b"hook@corp:hookpass").decode()}
    for path, auth in failing.requests:
        assert expected[path] == auth, path  # urllib used to take `user:pingpass@127.0.0.1` for the host
    assert {p for p, _ in failing.requests} >= set(expected)
    assert f"ping http://***@127.0.0.1:{failing.port}/ping/a?token=***" in result.stderr
    assert f"webhook http://***@127.0.0.1:{failing.port}/hook" in result.stderr
    for secret in SECRETS:
        assert secret not in result.stderr + result.stdout


@pytest.mark.parametrize("url", ["postgresql://cronpy:pa/ss@127.0.0.1:1/cronpy",
                                 "postgresql://cronpy@127.0.0.1:1/cronpy?password=hunter2"])
def test_a_store_urls_password_is_never_printed_by_status_history_or_run(tmp_path: Path, url: str) -> None:
    (tmp_path / "jobs.yaml").write_text("jobs:\n  a: {schedule: 1m, command: 'true'}\n")
    status = cli("status", "--store", url, "--state-dir", "state", cwd=tmp_path)
    history = cli("history", "--store", url, "--state-dir", "state", cwd=tmp_path)
    status_json = cli("status", "--json", "--store", url, "--state-dir", "state", cwd=tmp_path)
    assert "***" in status.stdout + status.stderr
    assert history.returncode != 0 and "Error: " in history.stderr
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRONPY_")}
    log = tmp_path / "run.log"
    with open(log, "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "cronpy", "run", "jobs.yaml", "--store", url],
                                cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=err)
    try:
        assert wait_for(lambda: "cannot" in log.read_text(), timeout=20), log.read_text()
    finally:
        proc.terminate()
        proc.wait(30)
    printed = status.stdout + status.stderr + history.stderr + status_json.stdout + log.read_text()
    for secret in SECRETS:
        assert secret not in printed, printed


def record(run_id: int) -> RunRecord:
    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    return RunRecord(id=run_id, job="a", status=RunStatus.SUCCESS, trigger=Trigger.SCHEDULE, attempt=1,
                     scheduled_for=now, started_at=now, finished_at=now, duration=0.1, exit_code=0, error=None,
                     output="", result=None, pid=None, host=None)


def test_a_slow_endpoint_drops_the_oldest_notifications_counts_them_and_says_what_was_not_sent(
        server, caplog: pytest.LogCaptureFixture) -> None:
    from prometheus_client import CollectorRegistry, Counter, generate_latest

    gate = threading.Event()
    slow = server(gate=gate)
    spec = JobSpec(name="a", command="true", webhook=f"http://u:hookpass@127.0.0.1:{slow.port}/hook")
    registry = CollectorRegistry()
    dropped = Counter("cronpy_notifications_dropped", "", registry=registry)
    integrations = Integrations(workers=1, max_pending=4, on_drop=dropped.inc)
    caplog.set_level(logging.INFO, logger="cronpy")
    try:
        integrations.run_finished(spec, record(1), will_retry=False)
        assert wait_for(lambda: len(slow.requests) == 1, timeout=10)  # the one worker is now stuck on it
        for run_id in range(2, 21):
            integrations.run_finished(spec, record(run_id), will_retry=False)
        assert integrations.pending == 4 and integrations.dropped == 15  # 19 queued behind a full queue of 4
        assert b"cronpy_notifications_dropped_total 15.0" in generate_latest(registry)
        drops = [r.getMessage() for r in caplog.records if "dropped the oldest" in r.getMessage()]
        assert len(drops) == 1  # counted, not one line per drop
        assert "4 waiting, the endpoints are too slow: dropped the oldest 1 (1 since start)" in drops[0]
        integrations.close(wait=0.2)
    finally:
        gate.set()
    stopping = [r.getMessage() for r in caplog.records if "stopping with" in r.getMessage()]
    assert stopping and "stopping with 4 not sent and 1 still being sent: a: webhook http://***@127.0.0.1" in stopping[0]
    assert "hookpass" not in caplog.text
    assert len(slow.requests) == 1  # nothing was sent after close


def test_the_metrics_endpoint_counts_dropped_notifications(tmp_path: Path) -> None:
    from cronpy.metrics import Metrics

    metrics = Metrics(0, "127.0.0.1", lambda: 0, dict)
    try:
        integrations = Integrations(workers=1, max_pending=1, on_drop=metrics.notifications_dropped.inc)
        integrations.on_drop(3) if integrations.on_drop else None
        port = metrics.server.server_address[1]
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        assert "cronpy_notifications_dropped_total 3.0" in body
        integrations.close(0)
    finally:
        metrics.close()


def test_the_dashboard_shows_ping_and_webhook_urls_redacted(tmp_path: Path) -> None:
    pytest.importorskip("starlette")
    from test_web import http

    (tmp_path / "jobs.yaml").write_text(
        "state_dir: state\njobs:\n  a:\n    command: 'true'\n    schedule: 1h\n"
        "    ping: https://user:pingpass@hc.example/ping/a?token=s3cr3t\n"
        "    webhook: https://hooks.example/h?api_key=s3cr3t\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRONPY_")}
    log = tmp_path / "web.log"
    with open(log, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "cronpy", "web", "-f", "jobs.yaml", "--port", "0"], cwd=tmp_path,
                                env=env, text=True, stdout=subprocess.DEVNULL, stderr=err)
    try:
        assert wait_for(lambda: log.read_text().startswith("cronpy web: http://"), timeout=20), log.read_text()
        url = log.read_text().split()[2].rstrip("/")
        assert wait_for(lambda: http(url + "/jobs/a")[0] == 200, timeout=20)
        status, _, body = http(url + "/jobs/a")
        _, _, api = http(url + "/api/jobs")
    finally:
        proc.terminate()
        proc.wait(20)
    assert "https://***@hc.example/ping/a?token=***" in body and "api_key=***" in body
    for secret in SECRETS:
        assert secret not in body + api + log.read_text()


def test_log_lines_are_redacted_once_merged_and_stamped_with_their_own_second() -> None:
    import io

    from cronpy.redact import RedactingFilter, cronpy_logger
    from cronpy.service import _TextFormatter

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(_TextFormatter())
    handler.addFilter(RedactingFilter())
    log = cronpy_logger()
    log.addHandler(handler)
    try:
        log.warning("ping %s failed", "http://user:pingpass@example.com/p?token=s3cr3t")  # in an argument
        log.warning("store host=db password=hunter2 is away")  # in the message itself
        log.warning("%s: started run %d (%s)", "a", 7, "schedule")  # nothing to hide
        record = log.makeRecord("cronpy", logging.INFO, "", 0, "tick", None, None)
        record.created = datetime(2026, 1, 1, 12, 0, 0, tzinfo=timezone.utc).timestamp()
        first = handler.format(record)
        record.created += 1.0  # the next second gets its own stamp, not the cached one
        second = handler.format(record)
    finally:
        log.removeHandler(handler)
    lines = stream.getvalue().splitlines()
    assert lines[0].endswith("ping http://***@example.com/p?token=*** failed")
    assert lines[1].endswith("store host=db password=*** is away")
    assert lines[2].endswith("WARNING a: started run 7 (schedule)")
    for secret in ("pingpass", "s3cr3t", "hunter2"):
        assert secret not in stream.getvalue()
    stamp = datetime.fromtimestamp(record.created - 1.0).astimezone().strftime("%Y-%m-%dT%H:%M:%S%z")
    assert first == f"{stamp} INFO tick"
    assert second != first and second.endswith(" INFO tick")
