"""The real `cronpy` binary: commands, exit statuses, signals, completions."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import cronpy, on_pty, wait_for

from cronpy._completions import scripts
from cronpy.store.sqlite import SqliteStore as History

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent


def start_runner(jobs: Path, *extra: str) -> subprocess.Popen[str]:
    env = dict(os.environ)
    env.pop("CRONPY_STATE_DIR", None)
    return subprocess.Popen([sys.executable, "-m", "cronpy", "run", str(jobs), *extra], text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=jobs.parent)


def rows(state: Path, sql: str = "SELECT job, status, trigger FROM runs ORDER BY id") -> list[tuple]:
    if not (state / "history.db").exists():
        return []
    db = sqlite3.connect(state / "history.db", timeout=10)
    try:
        return db.execute(sql).fetchall()
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):  # the runner has created the file but not migrated it yet
            return []
        raise
    finally:
        db.close()


def test_validate_reports_every_problem_and_exits_2(jobs_file) -> None:
    path = jobs_file("""
        jobs:
          a: {schedule: "0 25 * * *", command: x}
          b: {command: y, retries: -2}
    """)
    result = cronpy("validate", str(path))
    assert result.returncode == 2
    assert f"{path}:2: jobs.a.schedule: invalid cron expression" in result.stderr
    assert f"{path}:3: jobs.b.retries: must be at least 0" in result.stderr
    ok = jobs_file("jobs:\n  a: {schedule: 5m, command: x}\n", "ok.yaml")
    assert cronpy("validate", str(ok)).stdout.strip() == f"{ok}: OK, 1 job"


def test_run_with_a_bad_file_starts_nothing(jobs_file, tmp_path: Path) -> None:
    path = jobs_file("state_dir: state\njobs:\n  a: {schedule: '* * * * * *', command: 'touch ran'}\n  b: {comand: x}\n")
    result = cronpy("run", str(path), cwd=tmp_path, timeout=20)
    assert result.returncode == 2 and "jobs.b.comand: unknown job key" in result.stderr
    assert not (tmp_path / "state").exists() and not (tmp_path / "ran").exists()


def test_run_fires_records_and_stops_gracefully_on_sigterm(jobs_file, tmp_path: Path) -> None:
    path = jobs_file("""
        state_dir: state
        shutdown_grace: 20s
        jobs:
          tick: {schedule: "* * * * * *", command: "echo tick"}
          long: {schedule: "* * * * * *", command: "sleep 1.5; echo finished", overlap: skip}
    """)
    proc = start_runner(path)
    state = tmp_path / "state"
    try:
        assert wait_for(lambda: ("long", "running", "schedule") in rows(state), timeout=15)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "tick | tick" in out and "long | finished" in out  # passed through, prefixed
    statuses = rows(state, "SELECT job, status FROM runs WHERE job = 'long' AND status != 'skipped'")
    assert statuses and all(s == "success" for _, s in statuses)  # the running job was let finish
    assert "started run" in err and "success in" in err
    with History.open(state) as h:
        assert h.integrity_check() == "ok"


def test_sigterm_after_the_grace_period_interrupts_and_records(jobs_file, tmp_path: Path) -> None:
    path = jobs_file("""
        state_dir: state
        shutdown_grace: 0.5s
        jobs:
          stuck: {schedule: "* * * * * *", command: "sleep 60", kill_grace: 1s}
    """)
    proc = start_runner(path)
    state = tmp_path / "state"
    try:
        assert wait_for(lambda: rows(state, "SELECT pid FROM runs WHERE pid IS NOT NULL") != [], timeout=15)
        (pid,) = rows(state, "SELECT pid FROM runs")[0]
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0
    assert rows(state, "SELECT status FROM runs") == [("interrupted",)]
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_trigger_exit_statuses(jobs_file, tmp_path: Path) -> None:
    path = jobs_file("""
        state_dir: state
        jobs:
          ok: {command: "echo done"}
          seven: {command: "exit 7"}
          slow: {command: "sleep 30", timeout: 0.5s, kill_grace: 1s}
    """)
    ok = cronpy("trigger", "ok", "-f", str(path))
    assert (ok.returncode, ok.stdout) == (0, "done\n")
    assert cronpy("trigger", "seven", "-f", str(path)).returncode == 7
    assert cronpy("trigger", "slow", "-f", str(path)).returncode == 124
    unknown = cronpy("trigger", "nope", "-f", str(path))
    assert unknown.returncode == 2 and "no job named 'nope'" in unknown.stderr
    assert rows(tmp_path / "state") == [("ok", "success", "manual"), ("seven", "failed", "manual"),
                                        ("slow", "timeout", "manual")]


def test_trigger_while_the_scheduled_run_is_going_is_refused_or_waits(jobs_file, tmp_path: Path) -> None:
    path = jobs_file("""
        state_dir: state
        jobs:
          report: {schedule: "* * * * * *", command: "sleep 2", overlap: skip}
    """)
    proc = start_runner(path)
    state = tmp_path / "state"
    try:
        assert wait_for(lambda: rows(state, "SELECT 1 FROM runs WHERE status = 'running' AND pid IS NOT NULL") != [], 15)
        refused = cronpy("trigger", "report", "-f", str(path))
        assert refused.returncode == 75 and "already running elsewhere (held by pid" in refused.stderr
        waited = cronpy("trigger", "report", "-f", str(path), "--wait", "20")
        assert waited.returncode == 0
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    # Never two runs of the job at once, whoever started them.
    spans = rows(state, "SELECT started_at, finished_at FROM runs WHERE status = 'success' ORDER BY started_at")
    assert any(t == "manual" for (t,) in rows(state, "SELECT trigger FROM runs WHERE status = 'success'"))
    for (_, f1), (s2, _) in zip(spans, spans[1:]):
        assert f1 <= s2


def test_history_show_and_stats_read_the_database(jobs_file, tmp_path: Path) -> None:
    path = jobs_file("""
        state_dir: state
        jobs:
          good: {command: "echo fine"}
          bad: {command: "echo oops; exit 3"}
    """)
    for job in ("good", "bad", "bad", "good"):
        cronpy("trigger", job, "-f", str(path))
    hist = cronpy("history", "bad", "--status", "failed", "--json", "-f", str(path))
    data = json.loads(hist.stdout)
    assert [(r["job"], r["status"], r["exit_code"]) for r in data] == [("bad", "failed", 3)] * 2
    assert data[0]["id"] > data[1]["id"] and data[0]["started_at"].endswith("+00:00")
    plain = cronpy("history", "-f", str(path), "--limit", "3")
    lines = plain.stdout.splitlines()
    assert lines[0].split("\t")[:3] == ["id", "job", "status"] and len(lines) == 4 and "[" not in plain.stdout
    shown = cronpy("show", str(data[0]["id"]), "-f", str(path))
    assert "exited with status 3" in shown.stdout and "oops" in shown.stdout
    stats = {s["job"]: s for s in json.loads(cronpy("stats", "--json", "-f", str(path)).stdout)}
    assert (stats["good"]["runs"], stats["good"]["health"]) == (2, "healthy")
    assert (stats["bad"]["failures"], stats["bad"]["success_rate"], stats["bad"]["health"]) == (2, 0.0, "unhealthy")
    missing = cronpy("show", "999", "-f", str(path))
    assert missing.returncode == 2 and "no run with id 999" in missing.stderr
    bad_status = cronpy("history", "--status", "exploded", "-f", str(path))
    assert bad_status.returncode == 2


def test_state_dir_from_environment(jobs_file, tmp_path: Path) -> None:
    path = jobs_file("jobs:\n  a: {command: 'true'}\n")
    env = {"CRONPY_STATE_DIR": str(tmp_path / "elsewhere"), "CRONPY_FILE": str(path)}
    assert cronpy("trigger", "a", env=env).returncode == 0
    assert rows(tmp_path / "elsewhere") == [("a", "success", "manual")]
    assert json.loads(cronpy("history", "--json", env=env).stdout)[0]["job"] == "a"


def test_next_prints_the_instants_the_runner_fires_by(jobs_file) -> None:
    path = jobs_file('timezone: Europe/London\njobs:\n  n: {schedule: "30 1 * * *", command: x}\n')
    out = cronpy("next", "n", "-f", str(path), "--count", "2", "--from", "2026-03-28T12:00:00+00:00")
    assert out.stdout.splitlines() == ["2026-03-29T02:00:00+01:00", "2026-03-30T01:30:00+01:00"]
    expr = cronpy("next", "--expr", "0 3 * * 1-5", "--tz", "America/New_York", "--from", "2026-03-06T12:00:00+00:00",
                  "--json", "-n", "2")
    assert json.loads(expr.stdout) == ["2026-03-09T03:00:00-04:00", "2026-03-10T03:00:00-04:00"]
    assert cronpy("next", "--expr", "0 3 * *").returncode == 2


def test_list_shows_every_job(jobs_file) -> None:
    path = jobs_file('jobs:\n  a: {schedule: "@daily", command: x}\n  b: {command: y, enabled: false}\n')
    data = json.loads(cronpy("list", "-f", str(path), "--json").stdout)
    assert [(j["job"], j["schedule"], j["enabled"], j["next_run"] is not None) for j in data] == [
        ("a", "@daily", True, True), ("b", None, False, False)]


def test_committed_completion_scripts_are_current() -> None:
    for name, text in scripts().items():
        assert (REPO / "completions" / name).read_text() == text, f"completions/{name} is stale: run python -m cronpy._completions"


def test_help_has_an_example_for_every_command() -> None:
    for command in ("run", "trigger", "history", "show", "stats", "list", "next", "validate", "completion"):
        out = cronpy(command, "--help")
        assert out.returncode == 0 and "Example: cronpy" in out.stdout, command


def on_terminal(*args: str, cwd: Path | None = None) -> str:
    """Run the CLI with a 200-column pseudo-terminal as stdout (as a person would); the screen text."""
    return on_pty(*args, cols=200, cwd=cwd, timeout=30)[0]


def test_next_and_list_show_schedules_in_words_on_a_terminal(jobs_file) -> None:
    path = jobs_file('timezone: Europe/Lisbon\njobs:\n  r: {schedule: "0 3 * * 1-5", command: x}\n  i: {schedule: 90m, command: y}\n')
    screen = on_terminal("next", "r", "-f", str(path), "-n", "1", "--from", "2026-01-01T00:00:00+00:00")
    assert "# At 03:00, Monday through Friday (Europe/Lisbon)" in screen
    assert "2026-01-01T03:00:00+00:00" in screen
    listing = on_terminal("list", "-f", str(path))
    assert "At 03:00, Monday through Friday" in listing and "Every 90m" in listing
    assert "\x1b[1mJob" in listing and "\t" not in listing  # an aligned table, not tab-separated text
    piped = cronpy("next", "r", "-f", str(path), "-n", "1", "--from", "2026-01-01T00:00:00+00:00")
    assert piped.stdout == "2026-01-01T03:00:00+00:00\n"  # piped: only the instants, for scripts
