"""Hostile jobs files and arguments: a clear error with file and line, exit 2, never a traceback,
a hang or unbounded memory. The real `cronpy` binary, under an address-space limit."""

from __future__ import annotations

import os
import resource
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import stop, wait_for

from cronpy.config import MAX_ALIAS_NODES, MAX_DEPTH, parse_jobs
from cronpy.errors import ConfigError

# The bomb took 1.5 GB before; a validate of a normal file needs ~25 MB resident and ~600 MB of
# address space (thread stacks and libraries are mapped, not used).
ADDRESS_SPACE = 1024 * 2**20


def _limit() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))


def cli(*args: str, cwd: Path, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """The real CLI with bounded memory (RLIMIT_AS) and time (the subprocess timeout)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRONPY_")}
    return subprocess.run([sys.executable, "-m", "cronpy", *args], cwd=cwd, env=env, text=True,
                          capture_output=True, timeout=timeout, preexec_fn=_limit)


def alias_bomb(levels: int = 9) -> str:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    return "\n".join(lines) + "\njobs:\n  tick: {schedule: 1s, command: 'true', kwargs: *a%d}\n" % (levels - 1)


def assert_refused(result: subprocess.CompletedProcess[str], *expected: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    for text in expected:
        assert text in result.stderr, result.stderr


@pytest.mark.parametrize("command", ["validate", "list", "trigger"])
def test_an_alias_bomb_is_refused_at_once_with_its_line(tmp_path: Path, command: str) -> None:
    (tmp_path / "jobs.yaml").write_text(alias_bomb())
    args = {"validate": ["validate", "jobs.yaml"], "list": ["list", "-f", "jobs.yaml"],
            "trigger": ["trigger", "tick", "-f", "jobs.yaml", "--state-dir", "state"]}[command]
    started = time.monotonic()
    result = cli(*args, cwd=tmp_path, timeout=30)
    assert_refused(result, "jobs.yaml:6: aliases expand to more than 100,000 values")
    assert time.monotonic() - started < 10  # 15-30 s and 1.5 GB before


def test_aliases_and_merge_keys_within_the_budget_still_work() -> None:
    text = "defaults: &c {timeout: 1m, retries: 1}\njobs:\n" + "".join(
        f"  j{i}: {{<<: *c, schedule: 1m, command: 'true'}}\n" for i in range(2000))
    jobs = parse_jobs(text)
    assert len(jobs.jobs) == 2000 and jobs.jobs["j7"].timeout == 60


def test_merge_keys_that_multiply_count_against_the_alias_budget() -> None:
    lines = ["a0: &a0 {" + ", ".join(f"k{i}: {i}" for i in range(9)) + "}"]
    for i in range(1, 9):
        lines.append(f"a{i}: &a{i} {{<<: [" + ", ".join([f"*a{i - 1}"] * 9) + "]}")
    with pytest.raises(ConfigError, match="aliases expand to more than"):
        parse_jobs("\n".join(lines) + "\njobs: {}\n")
    assert MAX_ALIAS_NODES == 100_000


def test_an_alias_to_an_anchor_still_open_is_an_error_not_endless_recursion() -> None:
    with pytest.raises(ConfigError, match=r"jobs.yaml:1: alias \*a refers to no anchor defined before it"):
        parse_jobs("x: &a [1, *a]\njobs: {}\n", "jobs.yaml")


@pytest.mark.parametrize("text, line", [
    ("[" * 100_000, 1),  # the C composer segfaulted (exit 139)
    ("jobs: " + "[" * 600 + "]" * 600 + "\n", 1),  # RecursionError
    ("jobs:\n" + "".join("  " * i + f"k{i}:\n" for i in range(1, 700)), MAX_DEPTH + 1),  # block style
])
def test_deep_nesting_is_refused_with_its_line(tmp_path: Path, text: str, line: int) -> None:
    (tmp_path / "jobs.yaml").write_text(text)
    assert_refused(cli("validate", "jobs.yaml", cwd=tmp_path), f"jobs.yaml:{line}: nested more than 64 levels deep")


def test_empty_durations_are_errors_naming_each_key(tmp_path: Path) -> None:
    (tmp_path / "jobs.yaml").write_text(
        "shutdown_grace:\nleader_lease:\njobs:\n  a:\n    command: 'true'\n    kill_grace:\n")
    result = cli("validate", "jobs.yaml", cwd=tmp_path)
    assert_refused(result, "jobs.yaml:1: shutdown_grace: empty: expected a duration",
                   "jobs.yaml:2: leader_lease: empty: expected a duration",
                   "jobs.yaml:6: jobs.a.kill_grace: empty: expected a duration")


def test_huge_durations_and_intervals_are_refused_by_validate(tmp_path: Path) -> None:
    (tmp_path / "jobs.yaml").write_text(
        "jobs:\n  a:\n    command: 'true'\n    schedule: 4000000d\n"
        "  b:\n    command: 'true'\n    schedule: 1m\n    jitter: 99999999999999d\n"
        "  c:\n    command: 'true'\n    timeout: 1" + "0" * 400 + "\n")
    result = cli("validate", "jobs.yaml", cwd=tmp_path)
    assert_refused(result, "jobs.yaml:4: jobs.a.schedule: an interval must be longer than zero and at most 3660d",
                   "jobs.yaml:8: jobs.b.jitter: longer than the longest allowed, 3660d",
                   "jobs.yaml:11: jobs.c.timeout: not a finite duration")


def test_control_characters_in_a_rejected_name_are_shown_escaped(tmp_path: Path) -> None:
    (tmp_path / "jobs.yaml").write_text('jobs:\n  "bad\\e]0;owned\\a\\e[31mname":\n    command: "true"\n')
    result = cli("validate", "jobs.yaml", cwd=tmp_path)
    assert_refused(result, r"jobs.yaml:2: jobs.bad\x1b]0;owned\x07\x1b[31mname: a job name is")
    assert "\x1b" not in result.stderr and "\x07" not in result.stderr


def test_bytes_that_are_not_utf8_or_yaml_are_reported_by_line_and_column(tmp_path: Path) -> None:
    (tmp_path / "latin1.yaml").write_bytes(b"jobs:\n  a:\n    command: 'caf\xe9'\n")
    (tmp_path / "nul.yaml").write_bytes(b"jobs:\n  a:\n    command: 'tr\x00ue'\n")
    assert_refused(cli("validate", "latin1.yaml", cwd=tmp_path), "latin1.yaml:3: column 18: not UTF-8 (byte 0xe9)")
    assert_refused(cli("validate", "nul.yaml", cwd=tmp_path), "nul.yaml:3: column 17: a NUL byte is not allowed")


@pytest.mark.parametrize("args, expected", [
    (["history", "--limit", "99999999999999999999"], "is not in the range"),
    (["show", "99999999999999999999999"], "is not in the range"),
    (["history", "--since", "99999999d"], "--since: 99999999d reaches back before the year 1"),
    (["stats", "--since", "99999999d"], "--since: 99999999d reaches back before the year 1"),
    (["next", "tick", "--count", "100000000"], "is not in the range"),
    (["cancel", "99999999999999999999999"], "no run with id 99999999999999999999999"),
    (["next", "--expr", "4000000d"], "an interval must be at most 3660d"),
])
def test_huge_numbers_on_the_command_line_are_usage_errors(tmp_path: Path, args: list[str], expected: str) -> None:
    (tmp_path / "jobs.yaml").write_text("state_dir: state\njobs:\n  tick: {schedule: 1m, command: 'true'}\n")
    assert cli("trigger", "tick", cwd=tmp_path).returncode == 0  # a history to read
    assert_refused(cli(*args, cwd=tmp_path, timeout=20), expected)


def test_next_stops_at_the_end_of_the_calendar_instead_of_crashing(tmp_path: Path) -> None:
    result = cli("next", "--expr", "3660d", "--count", "1000", "--from", "2026-01-01T00:00:00+00:00", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.split()
    assert len(lines) == 795 and lines[-1].startswith("99")


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:"))


@pytest.mark.slow
def test_an_alias_bomb_by_sighup_is_refused_and_the_runner_keeps_firing(tmp_path: Path) -> None:
    path = tmp_path / "jobs.yaml"
    good = "state_dir: state\njobs:\n  tick: {schedule: 1s, command: 'true'}\n"
    path.write_text(good)
    db = tmp_path / "state" / "history.db"
    log = tmp_path / "run.log"

    def runs() -> int:
        if not db.exists():
            return 0
        con = sqlite3.connect(db, timeout=10)
        try:
            return int(con.execute("SELECT count(*) FROM runs WHERE job = 'tick'").fetchone()[0])
        except sqlite3.OperationalError:
            return 0
        finally:
            con.close()

    env = {k: v for k, v in os.environ.items() if not k.startswith("CRONPY_")}
    with open(log, "ab") as err:
        proc = subprocess.Popen([sys.executable, "-m", "cronpy", "run", str(path)], stdout=subprocess.DEVNULL,
                                stderr=err, env=env, cwd=tmp_path)
    try:
        assert wait_for(lambda: runs() >= 1, timeout=20)
        before_rss = rss_kib(proc.pid)
        path.write_text("state_dir: state\n" + alias_bomb())
        proc.send_signal(signal.SIGHUP)
        assert wait_for(lambda: "reload rejected" in log.read_text(), timeout=10)
        assert "aliases expand to more than 100,000 values" in log.read_text()
        count = runs()
        assert wait_for(lambda: runs() >= count + 2, timeout=10), "the runner stopped firing"
        assert rss_kib(proc.pid) < before_rss + 50 * 1024  # 1.25 GB within 30 s before
    finally:
        stop(proc)
    assert proc.returncode == 0


def test_the_light_readers_of_a_jobs_file_survive_deep_nesting(tmp_path: Path) -> None:
    # `history -f` reads only `state_dir`/`store`, completion only the job names: both went
    # through libyaml's recursive composer and segfaulted (exit 139) on this file.
    (tmp_path / "jobs.yaml").write_text("state_dir: state\njobs:\n  a: {schedule: 1m, command: 'true'}\nx:\n  "
                                        + "[" * 100_000 + "]" * 100_000 + "\n")
    result = cli("history", "-f", "jobs.yaml", cwd=tmp_path)
    assert result.returncode in (0, 1, 2) and "Traceback" not in result.stderr, (result.returncode, result.stderr)
    from cronpy.paths import file_setting, job_names

    assert job_names(tmp_path / "jobs.yaml") == [] and file_setting(tmp_path / "jobs.yaml", "state_dir") is None
