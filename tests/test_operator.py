"""The operator's view, through the real CLI: notifications, chains, pause/resume, cancel,
status, metrics, terminal rendering and the JSON Schema."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import cronpy, query, wait_for
from test_cli import on_terminal

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent


class Recorder:
    """A real HTTP server on 127.0.0.1 recording (method, path, body) of each request."""

    def __init__(self, mode: str = "ok") -> None:
        self.requests: list[tuple[str, str, bytes]] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if mode == "slow_start" and self.path.endswith("/start"):
                    time.sleep(0.5)  # a slow first request: what arrives meanwhile is recorded first
                recorder.requests.append(("POST", self.path, body))
                if mode == "hang":
                    time.sleep(30)
                    return
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"OK")

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def http():
    made: list[Recorder] = []

    def make(mode: str = "ok") -> Recorder:
        r = Recorder(mode)
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rows(state: Path, sql: str) -> list[tuple]:
    return query(state / "history.db", sql)


def runner(path: Path, *extra: str, log: Path | None = None) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    env.pop("CRONPY_STATE_DIR", None)
    return subprocess.Popen([sys.executable, "-m", "cronpy", "run", str(path), *extra], cwd=path.parent, env=env,
                            stdout=subprocess.DEVNULL, stderr=open(log, "ab") if log else subprocess.DEVNULL)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


def test_a_runs_end_ping_never_overtakes_its_start_ping(jobs_file, tmp_path: Path, http) -> None:
    # healthchecks.io takes a /start that arrives after the success for a new run that never
    # ends, and alerts. The pings go out on a pool of threads: the end waits for the start.
    server = http("slow_start")
    path = jobs_file(f"""
        state_dir: state
        jobs:
          quick: {{command: "true", ping: "{server.url}/ping/quick"}}
    """)
    assert cronpy("trigger", "quick", "-f", str(path)).returncode == 0
    assert [p for _, p, _ in server.requests] == ["/ping/quick/start", "/ping/quick"]


def test_ping_and_webhook_report_start_success_and_failure(jobs_file, tmp_path: Path, http) -> None:
    server = http()
    path = jobs_file(f"""
        state_dir: state
        jobs:
          good: {{command: "echo all fine", ping: "{server.url}/ping/good", webhook: "{server.url}/hook"}}
          bad: {{command: "echo broken; exit 3", ping: "{server.url}/ping/bad"}}
    """)
    assert cronpy("trigger", "good", "-f", str(path)).returncode == 0
    assert cronpy("trigger", "bad", "-f", str(path)).returncode == 3
    paths = [p for _, p, _ in server.requests]
    assert paths.index("/ping/good/start") < paths.index("/ping/good")
    assert "/ping/bad/start" in paths and "/ping/bad/3" in paths  # healthchecks: /<exit code>
    assert next(b for _, p, b in server.requests if p == "/ping/bad/3") == b"broken\n"  # the output tail
    hook = json.loads(next(b for _, p, b in server.requests if p == "/hook"))
    history = json.loads(cronpy("history", "good", "--json", "-f", str(path)).stdout)[0]
    assert hook == history  # the same fields as `history --json`


def test_a_hanging_or_refusing_server_never_fails_or_blocks_the_job(jobs_file, tmp_path: Path, http) -> None:
    hang = http("hang")
    refused = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    path = jobs_file(f"""
        state_dir: state
        jobs:
          a: {{command: "true", ping: "{hang.url}/p", webhook: "{refused}/w"}}
    """)
    started = time.monotonic()
    result = cronpy("trigger", "a", "-f", str(path), timeout=60)
    assert result.returncode == 0 and time.monotonic() - started < 20
    assert rows(tmp_path / "state", "SELECT status FROM runs") == [("success",)]
    assert "webhook" in result.stderr and ("retrying" in result.stderr or "giving up" in result.stderr)


def test_failure_and_success_hooks_get_values_in_their_environment_only(jobs_file, tmp_path: Path) -> None:
    out = tmp_path / "hook.out"
    marker = tmp_path / "injected"
    path = jobs_file(f"""
        state_dir: state
        defaults:
          on_failure: 'env | grep ^CRONPY_ | sort > {out}; echo "--" >> {out}; cat "$CRONPY_OUTPUT_FILE" >> {out}'
        jobs:
          bad: {{command: "echo '$(touch {marker})'; exit 4"}}
    """)
    assert cronpy("trigger", "bad", "-f", str(path)).returncode == 4
    assert wait_for(lambda: out.exists() and "--" in out.read_text(), timeout=10)
    text = out.read_text()
    for expected in ("CRONPY_JOB=bad", "CRONPY_STATUS=failed", "CRONPY_EXIT_CODE=4", "CRONPY_ATTEMPT=1",
                     "CRONPY_RUN_ID=1", "CRONPY_DURATION="):
        assert expected in text, expected
    assert f"$(touch {marker})" in text  # the output reached the hook as data
    assert not marker.exists()  # and was never run as a command


def test_trigger_chain_runs_the_jobs_after_it_with_their_cause(jobs_file, tmp_path: Path) -> None:
    path = jobs_file("""
        state_dir: state
        jobs:
          extract: {command: "echo e"}
          transform: {command: "echo t", after: extract}
          load: {command: "echo l", after: [extract, transform]}
          report: {command: "echo r", after: load}
    """)
    result = cronpy("trigger", "extract", "--chain", "-f", str(path))
    assert result.returncode == 0, result.stderr
    got = rows(tmp_path / "state", "SELECT id, job, trigger, parent_id FROM runs ORDER BY id")
    ids = {job: i for i, job, _, _ in got}
    assert [(job, trig) for _, job, trig, _ in got] == [
        ("extract", "manual"), ("transform", "dependency"), ("load", "dependency"), ("report", "dependency")]
    parents = {job: parent for _, job, _, parent in got}
    assert parents["transform"] == ids["extract"] and parents["load"] == ids["transform"]
    assert parents["report"] == ids["load"]
    # Without --chain only the job itself runs.
    assert cronpy("trigger", "extract", "-f", str(path)).returncode == 0
    assert len(rows(tmp_path / "state", "SELECT 1 FROM runs")) == 5


def test_pause_is_honoured_by_a_running_runner_and_resume_undoes_it(jobs_file, tmp_path: Path) -> None:
    path = jobs_file("state_dir: state\njobs:\n  beat: {schedule: '* * * * * *', command: 'true'}\n")
    state = tmp_path / "state"
    proc = runner(path)
    try:
        assert wait_for(lambda: rows(state, "SELECT 1 FROM runs") != [], timeout=20)
        assert "paused beat" in cronpy("pause", "beat", "-f", str(path)).stdout
        paused_at = time.time()
        time.sleep(2.5)
        assert rows(state, f"SELECT 1 FROM runs WHERE started_at > {paused_at + 1} AND trigger = 'schedule'") == []
        listing = json.loads(cronpy("list", "--json", "-f", str(path)).stdout)
        assert listing[0]["paused"] is True
        assert cronpy("trigger", "beat", "-f", str(path)).returncode == 0  # by hand it still runs
        assert "resumed beat" in cronpy("resume", "beat", "-f", str(path)).stdout
        resumed = time.time()
        assert wait_for(lambda: rows(state, f"SELECT 1 FROM runs WHERE started_at > {resumed} AND trigger = 'schedule'") != [], 10)
    finally:
        stop(proc)


def test_cancel_stops_a_run_records_cancelled_and_does_not_retry(jobs_file, tmp_path: Path) -> None:
    path = jobs_file("""
        state_dir: state
        jobs:
          long: {schedule: '* * * * * *', command: 'sleep 60', retries: 2, backoff: {initial: 1s}, kill_grace: 2s}
    """)
    state = tmp_path / "state"
    proc = runner(path)
    try:
        assert wait_for(lambda: rows(state, "SELECT pid FROM runs WHERE pid IS NOT NULL") != [], timeout=20)
        (run_id,), = rows(state, "SELECT id FROM runs WHERE status = 'running'")[:1]
        assert cronpy("pause", "long", "-f", str(path)).returncode == 0  # no new runs, to watch this one
        result = cronpy("cancel", "long", "-f", str(path))
        assert result.returncode == 0 and f"cancelled run {run_id} of long" in result.stdout
        assert wait_for(lambda: rows(state, f"SELECT status FROM runs WHERE id = {run_id}") == [("cancelled",)], 10)
        time.sleep(2)
        assert rows(state, "SELECT 1 FROM runs WHERE trigger = 'retry'") == []
    finally:
        stop(proc)
    nothing = cronpy("cancel", "long", "-f", str(path))
    assert nothing.returncode == 1 and "no run of long is in progress" in nothing.stderr


def test_status_shows_the_scheduler_running_runs_next_due_and_failures(jobs_file, tmp_path: Path) -> None:
    path = jobs_file("""
        state_dir: state
        shutdown_grace: 1s  # the stop at the end does not wait out `sleep 30`
        jobs:
          long: {schedule: '* * * * * *', command: 'sleep 30'}
          daily: {schedule: '0 3 * * *', command: 'true'}
          broken: {command: 'exit 9'}
    """)
    cronpy("trigger", "broken", "-f", str(path))
    proc = runner(path)
    try:
        state = tmp_path / "state"
        assert wait_for(lambda: rows(state, "SELECT 1 FROM runs WHERE job = 'long' AND pid IS NOT NULL") != [], 20)
        assert wait_for(lambda: (state / "runner.json").exists(), timeout=10)
        data = json.loads(cronpy("status", "-f", str(path), "--json").stdout)
        assert data["scheduler"]["pid"] == proc.pid
        assert [r["job"] for r in data["running"]] == ["long"] and data["running"][0]["elapsed"] >= 0
        assert "daily" in [n["job"] for n in data["next"]]
        assert [f["job"] for f in data["latest_failures"]] == ["broken"]
        screen = on_terminal("status", "-f", str(path))
        assert f"scheduler: pid {proc.pid}" in screen and "Running" in screen and "Latest failures" in screen
    finally:
        stop(proc)
    after = json.loads(cronpy("status", "-f", str(path), "--json").stdout)
    assert after["scheduler"] is None and after["running"] == []


def test_stats_draws_outcomes_and_durations_on_a_terminal_and_plain_text_when_piped(jobs_file) -> None:
    path = jobs_file("state_dir: state\njobs:\n  ok: {command: 'sleep 0.1'}\n  bad: {command: 'exit 1'}\n")
    for job in ("ok", "ok", "bad", "ok"):
        cronpy("trigger", job, "-f", str(path))
    screen = on_terminal("stats", "-f", str(path))
    import re

    text = re.sub(r"\x1b\[[0-9;]*m", "", screen)
    assert "●●" in text and "✖" in text  # per job: ok ●●●, bad ✖
    assert any(ch in screen for ch in "▁▂▃▄▅▆▇█")
    assert "\x1b[" in screen  # coloured
    piped = cronpy("stats", "-f", str(path)).stdout
    assert "●" not in piped and "\x1b[" not in piped and piped.startswith("job\thealth\truns")


def test_trigger_on_a_terminal_shows_elapsed_time_and_streams_output(jobs_file) -> None:
    path = jobs_file("state_dir: state\njobs:\n  slow: {command: 'echo first; sleep 1.2; echo second'}\n")
    import re

    screen = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", on_terminal("trigger", "slow", "-f", str(path)))
    assert "first" in screen and "second" in screen
    assert "slow: running, 0." in screen or "slow: running, 1." in screen
    assert "slow: finished in 1." in screen


def test_prometheus_metrics_are_scraped(jobs_file, tmp_path: Path) -> None:
    port = free_port()
    path = jobs_file("state_dir: state\njobs:\n  beat: {schedule: '* * * * * *', command: 'true'}\n"
                     "  nightly: {schedule: '0 3 * * *', command: 'true'}\n")
    proc = runner(path, "--metrics-port", str(port))
    try:
        assert wait_for(lambda: rows(tmp_path / "state", "SELECT 1 FROM runs WHERE status = 'success'") != [], 20)
        time.sleep(0.3)
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    finally:
        stop(proc)
    assert 'cronpy_runs_total{job="beat",status="success"}' in body
    assert 'cronpy_run_duration_seconds_bucket{job="beat",le="0.5"}' in body
    assert 'cronpy_last_success_timestamp_seconds{job="beat"}' in body
    assert 'cronpy_next_run_timestamp_seconds{job="nightly"}' in body
    assert "cronpy_running " in body


def test_the_json_schema_accepts_the_example_and_agrees_with_validate_on_bad_files(jobs_file, tmp_path: Path) -> None:
    import jsonschema
    import yaml

    schema = json.loads(cronpy("schema").stdout)
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    example = (REPO / "jobs.example.yaml").read_text()
    assert example.startswith("# yaml-language-server: $schema=")
    assert list(validator.iter_errors(yaml.safe_load(example))) == []
    bad_files = {
        "unknown job key": "jobs:\n  a: {command: x, comand: y}\n",
        "both command and python": "jobs:\n  a: {command: x, python: 'm:f'}\n",
        "neither": "jobs:\n  a: {schedule: 5m}\n",
        "schedule and at": "jobs:\n  a: {command: x, schedule: 5m, at: '2030-01-01T00:00:00'}\n",
        "negative retries": "jobs:\n  a: {command: x, retries: -1}\n",
        "bad overlap": "jobs:\n  a: {command: x, overlap: never}\n",
        "bad duration": "jobs:\n  a: {command: x, timeout: soon}\n",
        "bad entry point": "jobs:\n  a: {python: 'no entry'}\n",
        "unknown top-level key": "jobz: {}\njobs: {}\n",
        "no jobs": "timezone: UTC\n",
        "bad backoff key": "jobs:\n  a: {command: x, backoff: {intial: 1s}}\n",
        "bad url": "jobs:\n  a: {command: x, ping: 'not a url'}\n",
    }
    for what, text in bad_files.items():
        f = jobs_file(text, f"bad-{what.replace(' ', '-')}.yaml")
        assert list(validator.iter_errors(yaml.safe_load(text))), f"schema accepts: {what}"
        assert cronpy("validate", str(f)).returncode == 2, f"validate accepts: {what}"


def test_schema_covers_every_key_the_validator_knows() -> None:
    from cronpy.config import JOB_KEYS, TOP_KEYS
    from cronpy.schema import jobs_file_schema

    schema = jobs_file_schema()
    assert set(schema["properties"]) == TOP_KEYS
    assert set(schema["properties"]["jobs"]["additionalProperties"]["properties"]) == JOB_KEYS
