"""One attempt of one job: real processes, process groups, bounded output, Python entry points."""

from __future__ import annotations

import os
import resource
import sys
import textwrap
import threading
import time
from pathlib import Path

from conftest import pid_gone, wait_for

from cronpy.executor import TAIL_BYTES, Attempt, RunContext, run_attempt
from cronpy.models import JobSpec, RunStatus

CTX = RunContext("job", 7, None, 1, "manual")


def test_timeout_kills_the_whole_process_group_including_grandchildren(tmp_path: Path) -> None:
    pidfile = tmp_path / "grandchild.pid"
    spec = JobSpec(name="job", command=f"sleep 300 & echo $! > {pidfile}; wait", timeout=0.5, kill_grace=2)
    started = time.monotonic()
    result = run_attempt(spec, CTX)
    assert result.status is RunStatus.TIMEOUT and result.exit_code == 124
    assert time.monotonic() - started < 5
    grandchild = int(pidfile.read_text())
    assert wait_for(lambda: pid_gone(grandchild), timeout=5)


def test_a_job_ignoring_sigterm_is_killed_after_the_grace_period(tmp_path: Path) -> None:
    spec = JobSpec(name="job", command=["sh", "-c", "trap '' TERM; echo ready; while :; do sleep 0.05; done"],
                   timeout=0.3, kill_grace=0.5)
    started = time.monotonic()
    result = run_attempt(spec, CTX)
    elapsed = time.monotonic() - started
    assert result.status is RunStatus.TIMEOUT
    assert 0.7 <= elapsed < 5  # TERM at 0.3 s was ignored; KILL came after the 0.5 s grace


def test_exit_status_and_output_tail_are_reported() -> None:
    result = run_attempt(JobSpec(name="job", command="echo out; echo err >&2; exit 3"), CTX)
    assert (result.status, result.exit_code) == (RunStatus.FAILED, 3)
    assert result.output == "out\nerr\n"
    assert result.error == "exited with status 3"


def test_a_list_command_runs_without_a_shell(tmp_path: Path) -> None:
    result = run_attempt(JobSpec(name="job", command=("echo", "$HOME; rm -rf /")), CTX)
    assert result.output == "$HOME; rm -rf /\n"


def test_env_cwd_and_run_identity_reach_the_job(tmp_path: Path) -> None:
    spec = JobSpec(name="job", command='echo "$GREETING $CRONPY_JOB $CRONPY_RUN_ID $(pwd)"', env={"GREETING": "hi"},
                   cwd=tmp_path)
    assert run_attempt(spec, CTX).output == f"hi job 7 {tmp_path}\n"


def test_a_command_that_cannot_start_fails_with_a_reason() -> None:
    result = run_attempt(JobSpec(name="job", command=("/nonexistent/tool",)), CTX)
    assert result.status is RunStatus.FAILED and "could not start" in (result.error or "")


def test_huge_output_on_one_line_keeps_memory_bounded() -> None:
    # 200 MiB with no newline: the tail and the streamed pieces stay bounded.
    lines: list[int] = []
    spec = JobSpec(name="job", command=f"{sys.executable} -c \"import sys; [sys.stdout.write('x' * 1048576) for _ in range(200)]\"")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = run_attempt(spec, CTX, sink=lambda line: lines.append(len(line)))
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert result.status is RunStatus.SUCCESS
    assert len(result.output.encode()) < TAIL_BYTES + 100 and "earlier bytes not kept" in result.output
    assert max(lines) <= 16 * 1024 and sum(lines) == 200 * 1048576
    assert (after - before) < 50 * 1024  # KiB: far less than the 200 MiB printed


def test_python_entry_point_result_and_context(tmp_path: Path) -> None:
    (tmp_path / "tasks.py").write_text(textwrap.dedent("""
        def ping(url, context):
            print("pinging", url)
            return {"url": url, "job": context["job"], "attempt": context["attempt"]}
    """))
    spec = JobSpec(name="job", python="tasks:ping", kwargs={"url": "http://x"})
    result = run_attempt(spec, CTX, base_dir=tmp_path)
    assert result.status is RunStatus.SUCCESS
    assert result.result == {"url": "http://x", "job": "job", "attempt": 1}
    assert result.output == "pinging http://x\n"


def test_python_entry_point_exception_fails_with_traceback(tmp_path: Path) -> None:
    (tmp_path / "tasks.py").write_text("def boom(n):\n    raise ValueError(f'bad {n}')\n")
    result = run_attempt(JobSpec(name="job", python="tasks:boom", args=(3,)), CTX, base_dir=tmp_path)
    assert result.status is RunStatus.FAILED and result.exit_code == 1
    assert "Traceback" in (result.error or "") and "ValueError: bad 3" in (result.error or "")


def test_python_entry_point_that_cannot_be_imported(tmp_path: Path) -> None:
    result = run_attempt(JobSpec(name="job", python="missing_module:f"), CTX, base_dir=tmp_path)
    assert result.status is RunStatus.FAILED and "cannot load missing_module:f" in (result.error or "")


def test_cancel_terminates_and_reports_interrupted() -> None:
    attempt = Attempt(JobSpec(name="job", command="sleep 30", kill_grace=2), CTX)
    threading.Timer(0.2, attempt.cancel).start()
    result = attempt.wait()
    assert result.status is RunStatus.INTERRUPTED
    assert attempt.pid is not None and wait_for(lambda: pid_gone(attempt.pid or 0))


def test_no_file_descriptors_leak_across_attempts() -> None:
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(20):
        run_attempt(JobSpec(name="job", command="true"), CTX)
    assert len(os.listdir("/proc/self/fd")) <= before + 1
