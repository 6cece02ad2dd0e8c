"""The CLI as a person meets it: on a real pseudo-terminal of a given size and piped, with the
real `cronpy` binary (issue #16, and #14's rendering of user data)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import cronpy, on_pty, wait_for

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent
SGR = re.compile(r"\x1b\[[0-9;]*m")


def screen_lines(text: str) -> list[str]:
    return [line for line in SGR.sub("", text).split("\n") if line]


LONG = "a_job_with_a_rather_long_descriptive_name_for_the_nightly_export"
HOSTILE_ERROR = ("bad tag [/x] in input [/red] [/etc/x] \x1b]8;;http://evil.example/\x1b\\click\x1b]8;;\x1b\\ "
                 "\x1b[5mblink\x1b[0m \x1b]0;pwned\x07")


@pytest.fixture
def busy(jobs_file, tmp_path: Path) -> Path:
    """A jobs file with long names, zones, descriptions with brackets, and a few recorded runs."""
    (tmp_path / "hostile.py").write_text(f"def boom():\n    print({HOSTILE_ERROR!r})\n"
                                         f"    raise RuntimeError({HOSTILE_ERROR!r})\n")
    path = jobs_file(f"""
        state_dir: state
        timezone: Europe/Lisbon
        jobs:
          {LONG}:
            schedule: "*/5 * * * *"
            description: "[deprecated] use new; exports every table of the warehouse to the archive bucket"
            command: "echo exported"
          tokyo:
            schedule: "0 9 * * *"
            timezone: Asia/Tokyo
            description: Morning report for the Tokyo office, with a long description that goes on and on
            command: "echo report"
          hostile:
            schedule: 90m
            python: hostile:boom
          manual:
            command: "true"
    """)
    for job in (LONG, "tokyo", "hostile", "hostile", LONG):
        cronpy("trigger", job, "-f", str(path))
    return path


def test_every_table_is_one_line_per_row_within_80_columns(busy: Path) -> None:
    f = str(busy)
    for args, rows in ((("history",), 5), (("stats",), 4), (("list",), 4)):
        screen, code = on_pty(*args, "-f", f, cols=80)
        lines = screen_lines(screen)
        assert code == 0, screen
        assert len(lines) == rows + 1, (args, screen)  # a header and one line per row
        assert max(len(line) for line in lines) <= 80, (args, screen)
    listing = screen_lines(on_pty("list", "-f", f, cols=80)[0])
    tokyo = next(line for line in listing if line.startswith("tokyo"))
    # Whole tokens: the zone and a relative time (hours ahead, or minutes in the hour before
    # 09:00 in Tokyo, 00:00 UTC: the next run depends on when the test runs).
    assert "Asia/Tokyo" in tokyo and re.search(r"\b(in (\d+h\d\dm|\d+m\d\ds|\d+s)|now)\b", tokyo)
    status = screen_lines(on_pty("status", "-f", f, cols=80)[0])
    tables = [line for line in status if not line.startswith(("scheduler:", "store:", "paused:"))]
    assert "Latest failures" in tables and max(len(line) for line in tables) <= 80


def test_wide_tables_show_absolute_times_with_their_zone_at_200_columns(busy: Path) -> None:
    f = str(busy)
    for args, rows in ((("history", "--wide"), 5), (("stats", "--wide"), 4), (("list", "-w"), 4)):
        screen, code = on_pty(*args, "-f", f, cols=200)
        lines = screen_lines(screen)
        assert code == 0 and len(lines) == rows + 1, (args, screen)
        assert max(len(line) for line in lines) <= 200, (args, screen)
    listing = screen_lines(on_pty("list", "-w", "-f", f, cols=200)[0])
    tokyo = next(line for line in listing if line.startswith("tokyo"))
    # The next run in the job's own zone, with the zone named: 09:00 JST, not host time.
    assert re.search(r"\d{4}-\d\d-\d\d 09:00:00 JST", tokyo), tokyo
    history = screen_lines(on_pty("history", "-w", "-f", f, cols=200, env={"TZ": "Asia/Kolkata"})[0])
    assert all(" IST" in line for line in history[1:]), history  # TZ= shows its zone, never silently


def test_user_data_is_never_markup_on_a_terminal_or_piped(busy: Path) -> None:
    f = str(busy)
    for args in (("history",), ("history", "-w"), ("status",), ("list", "-w"), ("stats",)):
        screen, code = on_pty(*args, "-f", f, cols=200)
        assert code == 0 and "Traceback" not in screen and "MarkupError" not in screen, (args, screen)
        assert "\x1b]" not in screen and "\x1b[5m" not in screen, args  # no hyperlink, title or blink
    piped = cronpy("history", "hostile", "-f", f)
    assert piped.returncode == 0 and "bad tag [/x] in input [/red] [/etc/x]" in piped.stdout
    listing = cronpy("list", "-f", f).stdout
    assert "[deprecated] use new" in listing
    run_id = json.loads(cronpy("history", "hostile", "--json", "-n", "1", "-f", f).stdout)[0]["id"]
    exact = cronpy("show", str(run_id), "-f", f)
    assert HOSTILE_ERROR in exact.stdout  # piped: the exact text
    data = json.loads(cronpy("show", str(run_id), "--json", "-f", f).stdout)
    assert HOSTILE_ERROR in data["output"]
    screen, code = on_pty("show", str(run_id), "-f", f, cols=100)
    assert code == 0 and "\x1b]" not in screen and "\x1b[5m" not in screen and "\x07" not in screen
    assert "\\x1b]0;pwned\\x07" in screen and "bad tag [/x] in input" in screen  # made visible


def test_a_new_state_dir_gives_empty_answers(jobs_file) -> None:
    path = jobs_file("state_dir: state\njobs:\n  never: {schedule: '@daily', command: 'true'}\n")
    f = str(path)
    hist = cronpy("history", "--json", "-f", f)
    assert (hist.returncode, json.loads(hist.stdout)) == (0, [])
    assert cronpy("history", "-f", f).returncode == 0
    stats = cronpy("stats", "--json", "-f", f)
    assert stats.returncode == 0
    [never] = json.loads(stats.stdout)
    assert (never["job"], never["health"], never["runs"]) == ("never", "unknown", 0)
    assert cronpy("show", "1", "-f", f).returncode == 2
    assert on_pty("stats", "-f", f)[1] == 0


def test_unknown_job_names_are_an_error_with_did_you_mean(jobs_file) -> None:
    path = jobs_file("state_dir: state\njobs:\n  tokyo: {command: 'true'}\n")
    cronpy("trigger", "tokyo", "-f", str(path))
    for command in ("history", "stats", "trigger", "pause"):
        out = cronpy(command, "tokio", "-f", str(path))
        assert out.returncode == 2 and "did you mean 'tokyo'?" in out.stderr, (command, out.stderr)


def test_stats_health_comes_from_runs_after_retries(jobs_file, tmp_path: Path) -> None:
    counter = tmp_path / "count"
    path = jobs_file(f"""
        state_dir: state
        jobs:
          flaky:
            # fails on odd attempts: every run succeeds on its retry
            command: "n=$(cat {counter} 2>/dev/null || echo 0); echo $((n+1)) > {counter}; [ $((n % 2)) -eq 1 ]"
            retries: 1
            backoff: {{initial: 10ms, factor: 1, max: 10ms, jitter: 0}}
          idle: {{schedule: "0 3 * * *", command: "true"}}
    """)
    for _ in range(3):
        assert cronpy("trigger", "flaky", "-f", str(path)).returncode == 0
    data = {s["job"]: s for s in json.loads(cronpy("stats", "--json", "-f", str(path)).stdout)}
    flaky = data["flaky"]
    assert (flaky["recent_runs"], flaky["recent_run_success_rate"], flaky["health"]) == (3, 1.0, "healthy")
    assert flaky["last_outcome"] == "success"
    assert (flaky["runs"], flaky["success_rate"], flaky["failures"]) == (6, 0.5, 3)  # attempts, as before
    assert data["idle"]["health"] == "unknown" and data["idle"]["runs"] == 0
    from datetime import datetime, timezone

    assert datetime.fromisoformat(data["idle"]["next_run"]) > datetime.now(timezone.utc)


def test_run_and_validate_use_the_same_file_lookup(jobs_file, tmp_path: Path) -> None:
    path = jobs_file("jobs:\n  a: {command: 'true'}\n")
    for args, env in ((("validate", "-f", str(path)), {}), (("validate", str(path)), {}),
                      (("validate",), {"CRONPY_FILE": str(path)})):
        out = cronpy(*args, env=env)
        assert out.returncode == 0 and "OK, 1 job" in out.stdout, (args, out.stderr)
    assert cronpy("validate", cwd=tmp_path).returncode == 0  # ./jobs.yaml
    missing = cronpy("validate", cwd=tmp_path / "..")
    assert missing.returncode == 2 and "-f FILE" in missing.stderr and "CRONPY_FILE" in missing.stderr
    bad = jobs_file("jobs:\n  a: {command: 'true', nope: 1}\n", name="bad.yaml")
    out = cronpy("validate", "--json", "-f", str(bad))
    data = json.loads(out.stdout)
    assert out.returncode == 2 and data["ok"] is False and data["problems"][0]["line"] == 2
    # `run -f` is parsed (it then fails on the state dir, which is a file here: exit 2, no traceback)
    out = cronpy("run", "-f", str(path), "--state-dir", str(path / "x"))
    assert out.returncode == 2 and "Traceback" not in out.stderr and "state dir" in out.stderr


def test_a_bad_state_dir_is_a_clear_error_not_a_traceback(jobs_file) -> None:
    path = jobs_file("jobs:\n  a: {command: 'true'}\n")
    for command in (("run", str(path)), ("trigger", "a", "-f", str(path)), ("pause", "a", "-f", str(path))):
        out = cronpy(*command, "--state-dir", "/etc/passwd/x")
        assert out.returncode == 2 and "Traceback" not in out.stderr, (command, out.stderr)
        assert "state dir /etc/passwd/x" in out.stderr


def test_a_jobs_file_in_a_read_only_directory_exits_2_without_a_traceback(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(ro)]).returncode:
        pytest.skip("needs root to mount a read-only filesystem (as ProtectSystem=strict makes /etc)")
    try:
        shutil.copy(REPO / "jobs.example.yaml", ro / "jobs.yaml")
        subprocess.run(["mount", "-o", "remount,ro", str(ro)], check=True)
        out = cronpy("run", str(ro / "jobs.yaml"), timeout=30)
        assert out.returncode == 2 and "Traceback" not in out.stderr
        assert "state dir" in out.stderr and "Read-only file system" in out.stderr
    finally:
        subprocess.run(["umount", str(ro)])


def test_flags_are_consistent(jobs_file) -> None:
    path = jobs_file("state_dir: state\njobs:\n  a: {command: 'echo hi'}\n  i: {schedule: 10m, command: 'true'}\n")
    f = str(path)
    version = cronpy("--version")
    assert version.returncode == 0 and re.fullmatch(r"cronpy \S+\n", version.stdout)
    out = cronpy("trigger", "a", "--json", "-f", f)
    run = json.loads(out.stdout)
    assert (out.returncode, run["job"], run["status"], run["exit_status"]) == (0, "a", "success", 0)
    assert "hi" in out.stderr  # the job's output, kept off the JSON
    assert json.loads(cronpy("pause", "a", "--json", "-f", f).stdout)["paused"] is True
    assert json.loads(cronpy("resume", "a", "--json", "-f", f).stdout)["paused"] is False
    nothing = cronpy("cancel", "a", "--json", "-f", f)
    assert nothing.returncode == 1
    assert len(cronpy("next", "i", "-n", "2", "--state-dir", str(path.parent / "state"), "-f", f).stdout.split()) == 2
    assert len(cronpy("next", "i", "--limit", "3", "-f", f).stdout.split()) == 3
    usage = cronpy("run", "--bogus")
    assert usage.returncode == 2 and "{" not in usage.stderr
    helped = cronpy("history", "--help").stdout
    assert "cancelled" in helped


def test_log_format_json_is_one_object_a_line(jobs_file) -> None:
    path = jobs_file("state_dir: state\njobs:\n  a: {command: 'echo out-line'}\n")
    out = cronpy("trigger", "a", "--log-format", "json", "-f", str(path))
    assert out.returncode == 0
    objects = [json.loads(line) for line in (out.stdout + out.stderr).splitlines() if line]
    assert objects and all({"time", "level", "message"} <= set(o) for o in objects)
    assert any(o.get("job") == "a" and o["message"] == "out-line" for o in objects)


def test_run_logs_one_json_object_a_line_with_log_format_json(jobs_file, tmp_path: Path) -> None:
    path = jobs_file("state_dir: state\njobs:\n  a: {schedule: '@daily', run_on_start: true, command: 'echo from-a'}\n")
    out, err = tmp_path / "out", tmp_path / "err"
    env = {k: v for k, v in os.environ.items() if k != "CRONPY_STATE_DIR"}
    with open(out, "wb") as o, open(err, "wb") as e:
        proc = subprocess.Popen([sys.executable, "-m", "cronpy", "run", "-f", str(path), "--log-format", "json"],
                                stdout=o, stderr=e, env=env)
        try:
            assert wait_for(lambda: "from-a" in out.read_text() and "a: run 1 success" in err.read_text(), 30)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
    assert proc.returncode == 0
    lines = [line for line in (out.read_text() + err.read_text()).splitlines() if line]
    objects = [json.loads(line) for line in lines]  # every line parses: no plain-text line slipped out
    assert any(o.get("job") == "a" and o["message"] == "from-a" for o in objects)
    assert all(o["level"] in ("debug", "info", "warning", "error", "critical") and o["time"] for o in objects)


def test_trigger_spinner_and_log_lines_never_share_a_line(jobs_file) -> None:
    # A failing job with a retry logs "retry 1 of 1" while the spinner is up.
    path = jobs_file("state_dir: state\njobs:\n  r: {command: 'sleep 0.3; exit 1', retries: 1, "
                     "backoff: {initial: 300ms, factor: 1, max: 1s, jitter: 0}}\n")
    screen, code = on_pty("trigger", "r", "-f", str(path), cols=100)
    assert code == 1
    # Each logged line starts a line of its own: nothing of the spinner before it.
    segments = re.split(r"[\r\n]", re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen))
    logged = [seg for seg in segments if re.search(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\S* (INFO|WARNING)", seg)]
    assert any("retry 1 of 1" in seg for seg in logged) and any("failed" in seg for seg in logged), screen
    for seg in logged:
        assert re.match(r"\d{4}-", seg), seg  # not `⠸ r: running, 0.3s2026-… WARNING …`


def test_read_only_commands_and_completion_skip_typer_and_the_service_layer(jobs_file) -> None:
    path = jobs_file("state_dir: state\njobs:\n  a: {command: 'true'}\n")
    cronpy("trigger", "a", "-f", str(path))
    env = dict(os.environ, _CRONPY_COMPLETE="bash", _CRONPY_INCOMPLETE="")
    for args, extra in ((("history", "-f", str(path)), {}), (("stats", "-f", str(path)), {}),
                        (("show", "1", "-f", str(path)), {}), (("trigger", "-f", str(path)), env)):
        out = subprocess.run([sys.executable, "-X", "importtime", "-m", "cronpy", *args], capture_output=True,
                             text=True, env=extra or None)
        assert out.returncode == 0, out.stderr[-2000:]
        modules = {line.rsplit("|", 1)[-1].strip() for line in out.stderr.splitlines() if "|" in line}
        assert "typer" not in modules and "click" not in modules, args
        assert "cronpy.service" not in modules and "cronpy.runner" not in modules, args
        assert "rich" not in modules, args


# The wall clock of a `cronpy stats` compared with another: frozen (libfaketime), so that a
# schedule's next run cannot move between the two calls (a `*/5` job's does, at each boundary).
FROZEN = {"LD_PRELOAD": str(next(iter(sorted(Path("/usr/lib").glob("*/faketime/libfaketimeMT.so.1"))),
                                 Path("/nonexistent"))),
          "FAKETIME": "2027-01-15 12:00:00", "FAKETIME_DONT_FAKE_MONOTONIC": "1", "NO_FAKE_STAT": "1"}


def _modules(args: tuple[str, ...]) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    out = subprocess.run([sys.executable, "-X", "importtime", "-m", "cronpy", *args], capture_output=True, text=True)
    return out, {line.rsplit("|", 1)[-1].strip() for line in out.stderr.splitlines() if "|" in line}


def test_stats_answers_from_its_summary_of_the_jobs_file_until_the_file_changes(jobs_file) -> None:
    # `stats` validates the jobs file once and keeps a summary in the state dir (names,
    # schedules, zones); while the file is unchanged it needs neither PyYAML nor the validator,
    # and its answer is the same as with a fresh validation.
    path = jobs_file("state_dir: state\njobs:\n  a: {schedule: '0 9 * * *', timezone: Asia/Tokyo, command: 'true'}\n"
                     "  b: {schedule: 10m, command: 'true'}\n  c: {schedule: '*/5 * * * *', command: 'true'}\n")
    state = path.parent / "state"
    cronpy("trigger", "b", "-f", str(path))
    summary = state / "jobs-summary.json"

    def stats() -> dict[str, Any]:
        out = cronpy("stats", "--json", "-f", str(path), env=FROZEN)
        assert out.returncode == 0, out.stderr
        return {row["job"]: row for row in json.loads(out.stdout)}

    summary.unlink(missing_ok=True)
    validated = stats()
    assert summary.exists() and (summary.stat().st_mode & 0o777) == 0o600
    out, modules = _modules(("stats", "-f", str(path)))
    assert out.returncode == 0 and not modules & {"yaml", "cronpy.config", "cronpy.jobspec"}, out.stderr[-2000:]
    assert stats() == validated and set(validated) == {"a", "b", "c"}
    # An edit of the same size with the modification time put back is still seen (ctime).
    before = path.stat()
    path.write_text(path.read_text().replace("'0 9 * * *'", "'0 7 * * *'").replace("  c:", "  d:"))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert path.stat().st_size == before.st_size
    edited = stats()
    assert set(edited) == {"a", "b", "d"}
    # 07:00 and 09:00 in Tokyo after the frozen 2027-01-15 12:00 UTC (21:00 there).
    assert (validated["a"]["next_run"], edited["a"]["next_run"]) == ("2027-01-16T00:00:00+00:00",
                                                                   "2027-01-15T22:00:00+00:00")
    assert validated["b"]["next_run"] == "2027-01-15T12:10:00+00:00"  # never ran on its schedule
    # A summary that is not ours (damaged, or from another file) is not trusted.
    summary.write_text('{"key": [], "jobs": [["x"]]}')
    assert stats() == edited
    summary.write_text("not json")
    assert stats() == edited
    # A broken file: no summary is used; the history is still read and the file's names listed.
    path.write_text(path.read_text().replace("schedule: 10m", "schedule: 10 parsecs"))
    broken = stats()
    assert set(broken) == {"a", "b", "d"} and all(row["next_run"] is None for row in broken.values())


def test_stats_answers_the_same_when_its_caches_cannot_be_written(jobs_file) -> None:
    # A state dir where nothing can be replaced (here each cache's name is taken by a
    # directory, as on a read-only mount every write fails): the same answer, exit 0, no error.
    path = jobs_file("state_dir: state\njobs:\n  a: {schedule: '0 9 * * *', command: 'true'}\n"
                     "  b: {schedule: '*/5 * * * *', command: 'exit 3'}\n")
    for job in ("a", "b", "b"):
        cronpy("trigger", job, "-f", str(path))
    state = path.parent / "state"
    expected = cronpy("stats", "--json", "-f", str(path), env=FROZEN)
    assert expected.returncode == 0 and (state / "jobs-summary.json").is_file(), expected.stderr
    for name in ("jobs-summary.json", "stats-memo.json"):
        (state / name).unlink()
        (state / name).mkdir()
    out = cronpy("stats", "--json", "-f", str(path), env=FROZEN)
    assert (out.returncode, out.stderr) == (0, "")
    assert json.loads(out.stdout) == json.loads(expected.stdout)
    assert [p.name for p in state.iterdir() if p.name.startswith(".")] == []  # no temporary file left


def test_a_cached_summary_expires_when_a_one_shot_in_it_passes(tmp_path: Path) -> None:
    # A one-shot in the past makes the file invalid (unless catch_up): from that instant on the
    # summary no longer holds, and the file is validated again.
    from datetime import datetime, timedelta, timezone

    from cronpy import jobsummary
    from cronpy.config import load_jobs

    now = datetime.now(timezone.utc)
    soon, later = now + timedelta(hours=1), now + timedelta(hours=2)
    path = tmp_path / "jobs.yaml"
    path.write_text(f"jobs:\n  once: {{at: '{soon.isoformat()}', command: 'true'}}\n"
                    f"  late: {{at: '{(now - timedelta(days=1)).isoformat()}', catch_up: true, command: 'true'}}\n"
                    f"  tick: {{schedule: 1h, command: 'true'}}\n")
    key = jobsummary.key_of(path)
    summary = jobsummary.of(load_jobs(path, now=now))
    jobsummary.save(summary, key, tmp_path)
    cached = jobsummary.load(path, tmp_path, now)
    assert cached == summary and cached.valid_until == soon
    assert jobsummary.next_runs(cached, {}, now)["once"] == soon
    assert jobsummary.load(path, tmp_path, soon) is None and jobsummary.load(path, tmp_path, later) is None


def test_completion_answers_commands_options_jobs_statuses_and_zones(jobs_file) -> None:
    path = jobs_file("jobs:\n  backup: {command: x}\n  beat: {command: y}\n  clean: {command: z}\n")

    def complete(*words: str, incomplete: str = "", shell: str = "bash") -> list[str]:
        out = cronpy(*words, env={"_CRONPY_COMPLETE": shell, "_CRONPY_INCOMPLETE": incomplete})
        assert out.returncode == 0, out.stderr
        return out.stdout.splitlines()

    assert complete("trigger", "-f", str(path), incomplete="b") == ["backup", "beat"]
    assert complete(incomplete="hi") == ["history"]
    assert "clean\tjob" in complete("stats", "-f", str(path), incomplete="cl", shell="zsh")
    assert complete("history", "--status", incomplete="c") == ["cancelled"]
    assert "Asia/Tokyo" in complete("next", "--tz", incomplete="Asia/T")
    assert complete("history", "-f", incomplete="") == ["::files::"]
    assert "--wide" in complete("history", incomplete="--w")
    assert complete("show", incomplete="") == []  # a run id: nothing to guess


def test_bash_completes_through_the_committed_script(jobs_file, tmp_path: Path) -> None:
    path = jobs_file("jobs:\n  backup: {command: x}\n  beat: {command: y}\n")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "cronpy").write_text(f"#!/bin/sh\nexec {sys.executable} -m cronpy \"$@\"\n")
    (bindir / "cronpy").chmod(0o755)
    script = f"""
        source {REPO / 'completions' / 'cronpy.bash'}
        COMP_WORDS=(cronpy trigger -f {path} b); COMP_CWORD=4; _cronpy; echo "${{COMPREPLY[*]}}"
        COMP_WORDS=(cronpy his); COMP_CWORD=1; _cronpy; echo "${{COMPREPLY[*]}}"
    """
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True,
                         env=dict(os.environ, PATH=f"{bindir}:{os.environ['PATH']}"), cwd=tmp_path)
    assert out.stdout.splitlines() == ["backup beat", "history"], out.stderr


def counting_cronpy(tmp_path: Path) -> tuple[Path, Path]:
    """A `cronpy` on PATH that counts its calls, then runs this checkout's."""
    bindir, calls = tmp_path / "bin", tmp_path / "calls"
    bindir.mkdir()
    (bindir / "cronpy").write_text(f"#!/bin/sh\necho x >> {calls}\nexec {sys.executable} -m cronpy \"$@\"\n")
    (bindir / "cronpy").chmod(0o755)
    return bindir, calls


def test_zsh_completes_on_the_first_tab_when_autoloaded_from_fpath(tmp_path: Path) -> None:
    zsh = shutil.which("zsh")
    if zsh is None:
        pytest.skip("zsh is not installed (Debian package zsh)")
    bindir, calls = counting_cronpy(tmp_path)
    fpath = tmp_path / "fpath"
    fpath.mkdir()
    shutil.copy(REPO / "completions" / "_cronpy", fpath / "_cronpy")
    (tmp_path / "jobs.yaml").write_text("jobs:\n  backup: {command: x}\n  beat: {command: y}\n")
    # A real interactive zsh on a pty (zsh/zpty), compinit as a user's .zshrc runs it, one Tab.
    script = f"""
        zmodload zsh/zpty
        zpty z 'zsh -f -i'
        zpty -w z 'PATH={bindir}:$PATH; fpath=({fpath} $fpath); autoload -Uz compinit; compinit -u -D; cd {tmp_path}'
        zpty -w -n z $'cronpy trigger b\\t'
        out=""
        for i in {{1..80}}; do
          zpty -r -t z chunk && out+=$chunk
          [[ $out == *backup*beat* ]] && break
          sleep 0.1
        done
        zpty -d z
        print -r -- "$out"
    """
    out = subprocess.run([zsh, "-f", "-c", script], capture_output=True, text=True, timeout=60)
    assert "backup" in out.stdout and "beat" in out.stdout, out.stdout[-1000:]
    assert calls.read_text().count("x") == 1  # one cronpy process for the Tab


def test_fish_runs_cronpy_once_per_tab(tmp_path: Path) -> None:
    fish = shutil.which("fish")
    if fish is None:
        pytest.skip("fish is not installed (Debian package fish)")
    bindir, calls = counting_cronpy(tmp_path)
    (tmp_path / "jobs.yaml").write_text("jobs:\n  backup: {command: x}\n  beat: {command: y}\n")
    out = subprocess.run([fish, "-c", f"source {REPO / 'completions' / 'cronpy.fish'}; cd {tmp_path};"
                          " complete -C 'cronpy trigger b'; complete -C 'cronpy history --status c'"],
                         capture_output=True, text=True, timeout=60,
                         env=dict(os.environ, PATH=f"{bindir}:{os.environ['PATH']}"))
    assert out.stdout.splitlines() == ["backup\tjob", "beat\tjob", "cancelled"], out.stderr
    assert calls.read_text().count("x") == 2  # two Tabs, one cronpy each


def test_the_option_table_of_the_fast_path_matches_the_typer_app() -> None:
    import typer.main
    from typer.core import TyperArgument, TyperOption

    from cronpy.cli import app
    from cronpy.fast import FLAG, SPEC

    group: Any = typer.main.get_command(app)
    assert set(group.commands) == set(SPEC)
    for name, command in group.commands.items():
        spec = SPEC[name]
        opts = {tuple(sorted(p.opts + p.secondary_opts)): p for p in command.params
                if isinstance(p, TyperOption) and "--help" not in p.opts}
        assert opts.keys() == {tuple(sorted(o.names)) for o in spec.opts}, name
        for o in spec.opts:
            p = opts[tuple(sorted(o.names))]
            assert (o.kind == FLAG) == p.is_flag, (name, o.names)
            assert p.name == o.key, (name, o.names)
        args = [p.name for p in command.params if isinstance(p, TyperArgument)]
        assert args == [a for a, _ in spec.args], name


def test_the_fast_paths_help_texts_are_the_typer_apps_own() -> None:
    from cronpy._helpgen import source

    assert (REPO / "cronpy" / "_help.py").read_text() == source(), "cronpy/_help.py is stale: python -m cronpy._helpgen"


def test_help_piped_and_on_a_terminal_is_the_apps_text_without_importing_typer() -> None:
    from cronpy._help import HELP

    for command in ("", "history", "stats", "run", "completion"):
        args = [command, "--help"] if command else ["--help"]
        out = cronpy(*args)
        assert (out.returncode, out.stdout) == (0, HELP[command]), args
    assert cronpy("stats", "-h").stdout == HELP["stats"]
    assert "Usage: cronpy history [OPTIONS] [NAME]" in HELP["history"] and "--status" in HELP["history"]
    assert all(f"  {name} " in HELP[""] for name in ("run", "history", "stats", "completion"))
    for args in (["--help"], ["history", "--help"]):
        out = subprocess.run([sys.executable, "-X", "importtime", "-m", "cronpy", *args], capture_output=True,
                             text=True)
        modules = {line.rsplit("|", 1)[-1].strip() for line in out.stderr.splitlines() if "|" in line}
        assert out.returncode == 0 and "typer" not in modules and "cronpy.cli" not in modules, args
    screen, code = on_pty("history", "--help", cols=80)
    assert (code, screen) == (0, HELP["history"])
    # Narrower than the texts were rendered for: the app wraps them to the terminal itself.
    screen, code = on_pty("history", "--help", cols=60)
    assert code == 0 and "--status" in screen and max(map(len, screen.splitlines())) <= 60, screen


def test_history_and_show_import_neither_logging_nor_socket_nor_the_job_specs(jobs_file) -> None:
    path = jobs_file("state_dir: state\njobs:\n  a: {command: 'true'}\n")
    cronpy("trigger", "a", "-f", str(path))
    # `history a`: a job with runs in the answer needs no check of its name against the file.
    for args in (("history", "-f", str(path)), ("history", "a", "-f", str(path)), ("show", "1", "-f", str(path))):
        out = subprocess.run([sys.executable, "-X", "importtime", "-m", "cronpy", *args], capture_output=True,
                             text=True)
        assert out.returncode == 0 and re.search(r"\ba\b", out.stdout), out.stderr[-2000:]
        modules = {line.rsplit("|", 1)[-1].strip() for line in out.stderr.splitlines() if "|" in line}
        assert not modules & {"logging", "socket", "cronpy.jobspec", "cronpy.locks", "yaml"}, args
    out = cronpy("history", "b", "-f", str(path))  # no runs: the name is checked, as before
    assert out.returncode == 2 and "unknown job 'b'" in out.stderr


def test_the_unit_as_shipped_passes_systemd_analyze_verify_with_its_documented_path() -> None:
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is needed (Debian package systemd)"
    unit = REPO / "packaging" / "cronpy.service"
    text = unit.read_text()
    assert "ExecStart=/opt/cronpy/bin/cronpy run -f /etc/cronpy/jobs.yaml" in text
    assert "RestartPreventExitStatus=2" in text and "ReadWritePaths=" in text
    assert "pypi.org/project/cronpy-runner/" in text
    documented = Path("/opt/cronpy/bin/cronpy")
    made: list[Path] = []
    if not documented.exists():
        if os.geteuid() != 0:
            pytest.skip("the unit's documented binary /opt/cronpy/bin/cronpy is not installed here")
        # The README's install puts a virtualenv at /opt/cronpy: stand this one in for it.
        for d in (Path("/opt/cronpy"), Path("/opt/cronpy/bin")):
            if not d.exists():
                d.mkdir()
                made.append(d)
        documented.symlink_to(shutil.which("cronpy") or Path(sys.executable).parent / "cronpy")
        made.append(documented)
    wd = Path("/etc/cronpy")
    if not wd.exists() and os.geteuid() == 0:
        wd.mkdir()
        made.append(wd)
    try:
        result = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    finally:
        for p in reversed(made):
            p.unlink() if p.is_symlink() else p.rmdir()
    assert result.returncode == 0 and "cronpy.service" not in result.stderr, result.stderr


def test_a_fresh_virtualenv_installs_the_checkout_by_its_distribution_name_with_each_extra(tmp_path: Path) -> None:
    """`pip install cronpy` is someone else's project: this one is `cronpy-runner` (the command
    and the import package stay `cronpy`). Wheels come from a local wheelhouse (pip's cache
    fills it), then each fresh venv installs with --no-index."""
    house = tmp_path / "wheels"
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--wheel-dir", str(house),
                            f"{REPO}[metrics,postgres,notify,web]"], capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr[-3000:]
    assert list(house.glob("cronpy_runner-*.whl")), sorted(p.name for p in house.iterdir())
    # Every extra in one venv: pip names each extra it does not know, so one install checks them all.
    every = ("metrics,postgres,notify,web", "prometheus_client, psycopg, apprise, starlette, uvicorn, jinja2")
    for extra, module in (("", None), every):
        venv = tmp_path / f"venv-{'extras' if extra else 'plain'}"
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
        spec = f"cronpy-runner[{extra}]" if extra else "cronpy-runner"
        out = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--no-index", "--find-links", str(house),
                              spec], capture_output=True, text=True, timeout=600)
        assert out.returncode == 0 and "does not provide the extra" not in out.stderr, out.stderr[-3000:]
        version = subprocess.run([str(venv / "bin" / "cronpy"), "--version"], capture_output=True, text=True)
        assert version.returncode == 0 and version.stdout.startswith("cronpy ") and "unknown" not in version.stdout
        if module:
            assert subprocess.run([str(venv / "bin" / "python"), "-c", f"import {module}"]).returncode == 0


@pytest.mark.parametrize("text", [
    "jobs:\n  a: {command: x}\n  b:\n    command: |\n      echo\n    schedule: 1m\n  'c d': {command: y}\n",
    "timezone: UTC\njobs:\n  # a comment\n  x.y: {command: x}\n\n  z-1:\n    command: z\nstate_dir: s\n",
    "jobs: {a: {command: x}, b: {command: y}}\n",
    "jobs:\n  a: &d {command: x}\n  b: *d\n",
    "---\njobs:\n  a: {command: x}\n",
    "jobs:\n  ? complex\n  : {command: x}\n",
    'jobs:\n  "q\\"x": {command: x}\n',
])
def test_completion_reads_job_names_as_the_yaml_parser_does(tmp_path: Path, text: str) -> None:
    from cronpy.completion import job_names
    from cronpy.paths import job_names as parsed

    path = tmp_path / "jobs.yaml"
    path.write_text(text)
    assert job_names(str(path)) == parsed(path)
