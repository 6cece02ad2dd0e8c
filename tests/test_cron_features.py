"""What cron users rely on: shell, user/group, stdin, @reboot once per boot, mail (Apprise),
and whole, live output (`output: keep`, `cronpy logs -f`). Real binary, real processes."""

from __future__ import annotations

import email
import json
import os
import pwd
import secrets
import shutil
import socket
import sqlite3
import stat
import subprocess
import sys
import textwrap
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import pytest
from conftest import cronpy, stop, wait_for

from cronpy import outputs
from cronpy.config import check_runnable, parse_jobs
from cronpy.errors import ConfigError
from cronpy.history import HOST

pytestmark = pytest.mark.slow


def write_jobs(folder: Path, text: str) -> Path:
    path = folder / "jobs.yaml"
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def runs(state: Path, sql: str = "SELECT job, status, trigger FROM runs ORDER BY id") -> list[tuple]:
    if not (state / "history.db").exists():
        return []
    db = sqlite3.connect(state / "history.db", timeout=10)
    try:
        return db.execute(sql).fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        db.close()


def start_runner(jobs: Path, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    full = dict(os.environ)
    full.pop("CRONPY_STATE_DIR", None)
    full.update(env or {})
    return subprocess.Popen([sys.executable, "-m", "cronpy", "run", str(jobs)], text=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=full, cwd=jobs.parent)


# -- shell ------------------------------------------------------------------------------------


def test_shell_runs_bash_syntax_that_sh_fails(tmp_path: Path) -> None:
    """`[[ … ]]` under /bin/sh (dash) fails; with `shell: /bin/bash` it runs, as SHELL= in cron."""
    path = write_jobs(tmp_path, """
        state_dir: state
        jobs:
          bashism: {command: '[[ -n "$BASH_VERSION" ]] && echo "bash $SHELL_OK"', shell: /bin/bash,
                    env: {SHELL_OK: fine}}
          plain: {command: '[[ -n "$BASH_VERSION" ]] && echo bash'}
    """)
    ok = cronpy("trigger", "bashism", "-f", str(path))
    assert ok.returncode == 0 and ok.stdout == "bash fine\n", ok.stderr
    assert cronpy("trigger", "plain", "-f", str(path)).returncode == 127  # dash: `[[: not found`


# -- user / group -----------------------------------------------------------------------------


@pytest.fixture
def system_user() -> Iterator[tuple[str, Path]]:
    """A system user created for the test (the tests run as root, as a system cron does)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to create a user")
    name = f"cronpyt{secrets.token_hex(3)}"
    base = Path(f"/tmp/{name}")
    base.mkdir(mode=0o755)
    home = base / "home"
    subprocess.run(["useradd", "--system", "--create-home", "--home-dir", str(home), "--shell", "/usr/sbin/nologin",
                    name], check=True, capture_output=True)
    try:
        yield name, home
    finally:
        subprocess.run(["userdel", "--remove", name], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


def test_user_job_runs_as_that_user_with_a_clean_login_environment(system_user, tmp_path: Path) -> None:
    name, home = system_user
    path = write_jobs(tmp_path, f"""
        state_dir: state
        jobs:
          who:
            user: {name}
            env: {{FROM_FILE: kept}}
            command: >-
              id -un; id -gn; echo "HOME=$HOME LOGNAME=$LOGNAME USER=$USER SHELL=$SHELL"; pwd;
              echo "PATH=$PATH"; echo "LEAK=${{CRONPY_TEST_LEAK-unset}} FROM_FILE=$FROM_FILE";
              touch "$HOME/made-by-job"
          grouped: {{user: {name}, group: nogroup, command: id -gn}}
    """)
    result = cronpy("trigger", "who", "-f", str(path), env={"CRONPY_TEST_LEAK": "runner-secret"})
    assert result.returncode == 0, result.stderr
    primary = subprocess.run(["id", "-gn", name], capture_output=True, text=True).stdout.strip()
    assert result.stdout.splitlines() == [
        name, primary, f"HOME={home} LOGNAME={name} USER={name} SHELL=/bin/sh", str(home),
        "PATH=/usr/bin:/bin", "LEAK=unset FROM_FILE=kept"]
    assert (home / "made-by-job").stat().st_uid == pwd.getpwnam(name).pw_uid
    grouped = cronpy("trigger", "grouped", "-f", str(path))
    assert grouped.stdout == "nogroup\n", grouped.stderr


def test_user_is_refused_at_start_when_the_runner_is_not_root(system_user) -> None:
    """`run` and `trigger` call check_runnable before opening anything. (The binary itself cannot
    be started as the test user here: the interpreter lives under root's home.)"""
    name, _ = system_user
    jobs = parse_jobs(textwrap.dedent("""
        jobs:
          rooted:
            schedule: "@daily"
            user: root
            command: "true"
    """).lstrip(), "jobs.yaml")
    with pytest.raises(ConfigError) as err:
        check_runnable(jobs, euid=pwd.getpwnam(name).pw_uid)
    assert err.value.exit_code == 2
    assert (f"jobs.yaml:2: jobs.rooted.user: running as user 'root' needs the runner to run as root "
            f"(it runs as {name})") in str(err.value)
    check_runnable(jobs, euid=0)  # as root: fine
    # An account the host does not have, whoever runs it:
    jobs = parse_jobs("jobs:\n  x: {command: 'true', user: no-such-user-here}\n", "j.yaml")
    with pytest.raises(ConfigError, match=r"j.yaml:2: jobs.x.user: no user 'no-such-user-here' on this host"):
        check_runnable(jobs, euid=0)


# -- stdin, and the keys' validation ------------------------------------------------------------


def test_stdin_key_feeds_the_job(tmp_path: Path) -> None:
    path = write_jobs(tmp_path, """
        state_dir: state
        jobs:
          upper: {command: "tr a-z A-Z", stdin: "one\\ntwo\\n"}
          none: {command: "cat; echo end"}
    """)
    assert cronpy("trigger", "upper", "-f", str(path)).stdout == "ONE\nTWO\n"
    assert cronpy("trigger", "none", "-f", str(path)).stdout == "end\n"  # /dev/null, not the caller's stdin


def test_new_keys_report_file_line_and_key() -> None:
    text = textwrap.dedent("""
        jobs:
          a:
            command: "true"
            shell: bash
            output: everything
            output_max: lots
          b:
            command: "true"
            notify: {urls: "not a url", when: [failure, sometimes]}
          c:
            command: "true"
            run_on_boot: "yes"
            user: "bad user"
    """)
    with pytest.raises(ConfigError) as err:
        parse_jobs(text, "j.yaml")
    msg = str(err.value)
    for expected in ("j.yaml:5: jobs.a.shell: expected an absolute path", "j.yaml:6: jobs.a.output: expected keep",
                     "j.yaml:7: jobs.a.output_max: expected a size", "j.yaml:10: jobs.b.notify.urls: expected an "
                     "Apprise URL", "j.yaml:10: jobs.b.notify.when: expected one or a list of failure, recovery",
                     "j.yaml:13: jobs.c.run_on_boot: expected true or false", "j.yaml:14: jobs.c.user: expected a user"):
        assert expected in msg, msg


# -- @reboot --------------------------------------------------------------------------------------


def test_run_on_boot_runs_once_per_boot_not_per_runner_start(tmp_path: Path) -> None:
    boot_id = tmp_path / "boot_id"
    boot_id.write_text("11111111-aaaa-4aaa-8aaa-000000000001\n")
    path = write_jobs(tmp_path, """
        state_dir: state
        jobs:
          at_boot: {run_on_boot: true, command: "echo booted"}
          tick: {schedule: "* * * * * *", command: "true"}
    """)
    state = tmp_path / "state"
    env = {"CRONPY_BOOT_ID_FILE": str(boot_id)}

    def boots() -> list[tuple]:
        return runs(state, "SELECT status, trigger FROM runs WHERE job = 'at_boot'")

    def ticks() -> int:
        return len(runs(state, "SELECT id FROM runs WHERE job = 'tick'"))

    for start, expected in ((1, 1), (2, 1), (3, 2)):
        if start == 3:
            boot_id.write_text("22222222-bbbb-4bbb-8bbb-000000000002\n")  # the machine rebooted
        proc = start_runner(path, env)
        try:
            before = ticks()
            # Two scheduled runs after this start prove its start-up (and any boot run) is past.
            assert wait_for(lambda: ticks() >= before + 2, timeout=20), proc.stderr
            assert wait_for(lambda: len(boots()) == expected and all(s == "success" for s, _ in boots()),
                            timeout=10), boots()
        finally:
            stop(proc)
        assert len(boots()) == expected, (start, boots())
    assert {t for _, t in boots()} == {"boot"}
    listed = cronpy("list", "-f", str(path))
    assert "@reboot" in listed.stdout and "(manual)" not in listed.stdout


def test_boot_marks_use_the_kernel_boot_id(tmp_path: Path) -> None:
    real = Path(outputs.BOOT_ID_FILE)
    if not real.exists():
        pytest.skip("no /proc boot id here")
    marks = outputs.BootMarks(tmp_path)
    assert marks.claim("job") is True
    assert marks.claim("job") is False
    assert outputs.BootMarks(tmp_path).claim("job") is False  # a new runner process, same boot
    assert json.loads((tmp_path / "boot.json").read_text()) == {"job": real.read_text().strip()}


# -- notifications through Apprise ----------------------------------------------------------------


@pytest.fixture
def smtp_sink() -> Iterator[tuple[int, list[email.message.Message]]]:
    from aiosmtpd.controller import Controller

    received: list[email.message.Message] = []

    class Handler:
        async def handle_DATA(self, server, session, envelope):  # noqa: ANN001, ANN201
            received.append(email.message_from_bytes(envelope.content))
            return "250 OK"

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    controller = Controller(Handler(), hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield port, received
    finally:
        controller.stop()


def _body(msg: email.message.Message) -> str:
    for part in msg.walk():
        if part.get_content_type() == "text/plain":
            return part.get_payload(decode=True).decode()
    return ""


def test_mail_on_failure_and_on_recovery_through_a_local_smtp_server(smtp_sink, tmp_path: Path) -> None:
    port, mails = smtp_sink
    path = write_jobs(tmp_path, f"""
        state_dir: state
        jobs:
          flaky:
            command: 'if [ -e ok ]; then echo fine; else echo broken; exit 3; fi'
            cwd: .
            notify:
              urls: "mailto://127.0.0.1:{port}?to=ops@example.com&from=cronpy@example.com&mode=insecure"
              when: [failure, recovery]
    """)
    # `trigger` waits for its notifications before it exits: no waiting needed after it.
    assert cronpy("trigger", "flaky", "-f", str(path)).returncode == 3
    assert [m["Subject"] for m in mails] == [f"cronpy: flaky failed (exit 3) on {HOST}"]
    body = _body(mails[0])
    assert "Exit code: 3" in body and "Status:    failed" in body and "broken" in body and f"Host:      {HOST}" in body
    assert "Run id:    1" in body and "Duration:" in body
    (tmp_path / "ok").touch()
    assert cronpy("trigger", "flaky", "-f", str(path)).returncode == 0
    assert [m["Subject"] for m in mails][1:] == [f"cronpy: flaky recovered on {HOST}"]
    assert cronpy("trigger", "flaky", "-f", str(path)).returncode == 0
    assert len(mails) == 2  # a second success is no news
    assert mails[0]["To"] == "ops@example.com"


def test_imported_mailto_mails_output_like_cron(smtp_sink, tmp_path: Path) -> None:
    port, mails = smtp_sink
    src = tmp_path / "crontab"
    src.write_text("MAILTO=dev@example.com\n0 0 * * * echo hello from cron\n0 1 * * * touch /dev/null\n")
    out = tmp_path / "jobs.yaml"
    imported = cronpy("import-crontab", str(src), "-o", str(out), "--tz", "UTC", "--smtp", f"127.0.0.1:{port}")
    assert imported.returncode == 0, imported.stderr
    out.write_text(out.read_text().replace("timezone: UTC", "timezone: UTC\nstate_dir: state"))
    assert cronpy("trigger", "echo-hello", "-f", str(out)).returncode == 0
    assert cronpy("trigger", "touch-null", "-f", str(out)).returncode == 0
    assert [m["Subject"] for m in mails] == [f"cronpy: echo-hello succeeded on {HOST}"]
    assert mails[0]["To"] == "dev@example.com" and "hello from cron" in _body(mails[0])


def test_apprise_json_notification_reaches_a_local_http_endpoint(tmp_path: Path) -> None:
    got: list[dict] = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            got.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        path = write_jobs(tmp_path, f"""
            state_dir: state
            jobs:
              report: {{command: "echo 42 rows", notify: {{urls: "json://127.0.0.1:{server.server_port}/hook",
                                                          when: always}}}}
        """)
        assert cronpy("trigger", "report", "-f", str(path)).returncode == 0
    finally:
        server.shutdown()
    assert len(got) == 1
    assert got[0]["title"] == f"cronpy: report succeeded on {HOST}"
    assert "Run id:    1" in got[0]["message"] and "42 rows" in got[0]["message"]


# -- whole output and logs -f -------------------------------------------------------------------------


def test_logs_follow_shows_lines_while_the_job_runs_then_the_kept_output(tmp_path: Path) -> None:
    path = write_jobs(tmp_path, """
        state_dir: state
        jobs:
          slow:
            output: keep
            cwd: .
            # waits (at most 30 s) for the test to let it finish, so the follow is seen live
            command: 'echo first; i=0; while [ ! -e go ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done; echo second'
    """)
    state = tmp_path / "state"
    job = subprocess.Popen([sys.executable, "-m", "cronpy", "trigger", "slow", "-f", str(path)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    follower = None
    try:
        assert wait_for(lambda: runs(state, "SELECT status FROM runs") == [("running",)], timeout=20)
        follower = subprocess.Popen([sys.executable, "-m", "cronpy", "logs", "slow", "-f", "--file", str(path)],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(follower.stdout), daemon=True)  # type: ignore[union-attr]
        reader.start()
        assert wait_for(lambda: lines == ["first\n"], timeout=20), lines
        assert runs(state, "SELECT status FROM runs") == [("running",)]  # seen while it still runs
        shown = cronpy("show", "1", "--file", str(path), "--json")  # `show` too has what it printed so far
        assert json.loads(shown.stdout)["output"] == "first\n", shown.stderr
        (tmp_path / "go").touch()
        assert follower.wait(20) == 0, follower.stderr.read()  # type: ignore[union-attr]
        reader.join(5)
        assert lines == ["first\n", "second\n"]
        assert job.wait(20) == 0, job.stderr.read()  # type: ignore[union-attr]
    finally:
        for p in (job, follower):
            if p is not None and p.poll() is None:
                p.kill()
    kept = state / "output" / "slow" / "1.log.gz"
    assert wait_for(kept.exists, timeout=10)
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    assert stat.S_IMODE((state / "output").stat().st_mode) == 0o700
    assert not (state / "output" / "slow" / "1.log").exists()
    shown = cronpy("logs", "1", "--file", str(path))
    assert shown.returncode == 0 and shown.stdout == "first\nsecond\n"


def test_kept_output_is_whole_while_history_keeps_a_tail(tmp_path: Path) -> None:
    path = write_jobs(tmp_path, """
        state_dir: state
        jobs:
          big: {command: "seq 1 40000", output: keep}
          tail_only: {command: "seq 1 40000"}
    """)
    whole = "".join(f"{i}\n" for i in range(1, 40001))  # 229 KB, past the 64 KiB tail
    assert cronpy("trigger", "big", "-f", str(path)).returncode == 0
    assert cronpy("trigger", "tail_only", "-f", str(path)).returncode == 0
    assert cronpy("logs", "big", "--file", str(path)).stdout == whole
    tail = cronpy("logs", "tail_only", "--file", str(path))
    assert tail.stdout != whole and whole.endswith(tail.stdout.split("\n", 1)[1])
    assert "set `output: keep`" in tail.stderr
    assert not (tmp_path / "state" / "output" / "tail_only").exists() or not any(
        (tmp_path / "state" / "output" / "tail_only").iterdir())


def test_kept_output_is_pruned_by_retention_and_size_cap(tmp_path: Path) -> None:
    folder = tmp_path / outputs.OUTPUT_DIR / "job"
    folder.mkdir(parents=True)
    now = time.time()
    for run_id, age_days in ((1, 40), (2, 3), (3, 2), (4, 1), (5, 40)):
        f = folder / f"{run_id}.log{'.gz' if run_id < 5 else ''}"  # 5: left by a runner killed mid-run
        f.write_bytes(b"x" * 1000)
        os.utime(f, (now - age_days * 86400, now - age_days * 86400))
    # 30 days' retention drops runs 1 and 5; a 2,500-byte cap keeps the two newest of the rest.
    assert outputs.prune(tmp_path, now - 30 * 86400, {"job": 2500}, 10**9) == 3
    assert sorted(p.name for p in folder.iterdir()) == ["3.log.gz", "4.log.gz"]


def test_output_max_caps_one_runs_file(tmp_path: Path) -> None:
    out = outputs.RunOutput(tmp_path, "job", 7, limit=10, keep=True)
    out.write(b"0123456")
    out.write(b"789abcdef")
    out.settle(10**6)
    chunks = outputs.read_kept(tmp_path, "job", 7)
    assert chunks is not None
    data = b"".join(chunks)
    assert data.startswith(b"0123456789\n[cronpy: output_max reached")
