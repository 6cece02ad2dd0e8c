"""Run one attempt of one job in its own process group, and report how it ended.

The executor knows nothing of schedules or history. It spawns the job (a shell string under
/bin/sh -c, an argument list exec'd directly, or a Python entry point in a child interpreter),
streams its output line by line to a callback while keeping only a bounded tail in memory,
and on timeout or cancellation sends SIGTERM to the whole process group, then SIGKILL after
the job's grace period, so the job's own children do not outlive it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Mapping

from cronpy.models import JobSpec, RunStatus

TAIL_BYTES = 64 * 1024  # the output kept per run, for history and hooks
LINE_BYTES = 16 * 1024  # a longer line is passed through in pieces of this size
RESULT_BYTES = 1024 * 1024  # a Python result larger than this is not stored
_READ_CHUNK = 64 * 1024

OutputSink = Callable[[str], None]


@dataclass(frozen=True)
class RunContext:
    """What a run knows about itself; a Python entry point may ask for it as `context`."""

    job: str
    run_id: int | None
    scheduled_for: datetime | None
    attempt: int
    trigger: str

    def to_json(self) -> dict[str, Any]:
        return {
            "job": self.job,
            "run_id": self.run_id,
            "scheduled_for": self.scheduled_for.isoformat() if self.scheduled_for else None,
            "attempt": self.attempt,
            "trigger": self.trigger,
        }


@dataclass(frozen=True)
class AttemptResult:
    """How one attempt ended."""

    status: RunStatus
    exit_code: int | None
    duration: float
    output: str  #: the last TAIL_BYTES of stdout and stderr, interleaved as they came
    error: str | None = None  #: why it failed, in words (or a Python traceback)
    result: Any = None  #: a Python entry point's JSON-serialisable return value
    pid: int | None = None


class _Tail:
    """The last `limit` bytes of a stream; memory stays bounded whatever the job prints."""

    def __init__(self, limit: int = TAIL_BYTES) -> None:
        self.limit = limit
        self.buf = bytearray()
        self.dropped = 0

    def add(self, data: bytes) -> None:
        self.buf += data
        excess = len(self.buf) - self.limit
        if excess > 0:
            del self.buf[:excess]
            self.dropped += excess

    def text(self) -> str:
        text = self.buf.decode("utf-8", errors="replace")
        if self.dropped:
            return f"[... {self.dropped} earlier bytes not kept ...]\n" + text
        return text


class Attempt:
    """A started attempt: wait for it, or cancel it from another thread."""

    def __init__(self, spec: JobSpec, context: RunContext, *, sink: OutputSink | None = None,
                 base_dir: Path | None = None, extra_env: dict[str, str] | None = None,
                 base_env: Mapping[str, str] | None = None) -> None:
        self.spec = spec
        self.context = context
        self.sink = sink
        self.base_dir = base_dir or Path.cwd()
        self._cancel = threading.Event()
        self._cancel_reason = RunStatus.INTERRUPTED
        self._result_dir: tempfile.TemporaryDirectory[str] | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.start_error: str | None = None
        self._started = time.monotonic()
        argv, env = self._argv_env(extra_env or {}, base_env)
        try:
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                cwd=str(spec.cwd) if spec.cwd else None,
                env=env,
                start_new_session=True,  # its own session and process group: killpg reaches its children
                close_fds=True,
            )
        except OSError as exc:
            self.start_error = f"could not start: {exc.strerror or exc}" + (
                f" ({exc.filename})" if getattr(exc, "filename", None) else "")
            self._cleanup()

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def _argv_env(self, extra_env: dict[str, str],
                  base_env: Mapping[str, str] | None) -> tuple[list[str], dict[str, str]]:
        # A runner passes a snapshot of its environment: copying os.environ decodes every
        # variable, ~0.3 ms a run, which adds up in a burst of due jobs.
        env = dict(base_env if base_env is not None else os.environ)
        env.update(self.spec.env)
        env.update(extra_env)
        env["CRONPY_JOB"] = self.spec.name
        env["CRONPY_ATTEMPT"] = str(self.context.attempt)
        if self.context.run_id is not None:
            env["CRONPY_RUN_ID"] = str(self.context.run_id)
        if self.spec.python:
            self._result_dir = tempfile.TemporaryDirectory(prefix="cronpy-")
            env["CRONPY_ENTRY"] = json.dumps({
                "target": self.spec.python,
                "args": list(self.spec.args),
                "kwargs": dict(self.spec.kwargs),
                "context": self.context.to_json(),
                "path": str(self.base_dir),
                "result_file": os.path.join(self._result_dir.name, "result.json"),
            })
            env["PYTHONUNBUFFERED"] = "1"
            return [sys.executable, "-m", "cronpy._entry"], env
        cmd = self.spec.command
        if isinstance(cmd, str):
            return ["/bin/sh", "-c", cmd], env
        assert cmd is not None
        return list(cmd), env

    def cancel(self, reason: RunStatus = RunStatus.INTERRUPTED) -> None:
        """Ask the attempt to stop: TERM to its process group, KILL after the grace period."""
        self._cancel_reason = reason
        self._cancel.set()

    def _signal_group(self, sig: int) -> None:
        assert self.proc is not None
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass

    def _terminate(self, reader: threading.Thread) -> None:
        """TERM the group; KILL it if the leader or its output are still there after the grace."""
        self._signal_group(signal.SIGTERM)
        deadline = time.monotonic() + self.spec.kill_grace
        assert self.proc is not None
        while time.monotonic() < deadline:
            # Wait for the leader *and* for the pipe to close: a grandchild holding stdout is
            # still alive, and must not survive its job.
            if self.proc.poll() is not None and not reader.is_alive():
                break
            reader.join(0.02)
        self._signal_group(signal.SIGKILL)

    def wait(self) -> AttemptResult:
        """Stream output until the attempt ends; return its outcome."""
        if self.proc is None:
            return AttemptResult(RunStatus.FAILED, None, 0.0, "", error=self.start_error)
        tail = _Tail()
        reader = threading.Thread(target=self._pump, args=(tail,), daemon=True, name=f"out-{self.spec.name}")
        reader.start()
        timeout = self.spec.timeout
        deadline = self._started + timeout if timeout else None
        status: RunStatus | None = None
        while True:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                status = RunStatus.TIMEOUT
                break
            if self._cancel.wait(min(remaining, 0.05) if remaining is not None else 0.05):
                status = self._cancel_reason
                break
            if self.proc.poll() is not None:
                break
        if status is not None:
            self._terminate(reader)
        code = self.proc.wait()
        # The leader is gone; its output may still be in the pipe. A background process it left
        # behind may hold the pipe open for ever, so stop reading after a short drain.
        reader.join(1.0)
        duration = time.monotonic() - self._started
        result, error = None, None
        if status is None:
            status = RunStatus.SUCCESS if code == 0 else RunStatus.FAILED
        if status is RunStatus.TIMEOUT:
            error = f"timed out after {self.spec.timeout:g}s; process group terminated"
            code = 124 if code is None or code < 0 else code
        elif status is RunStatus.INTERRUPTED:
            error = "interrupted: cronpy stopped the run"
        elif self.spec.python:
            result, error = self._python_outcome()
        elif code < 0:
            error = f"killed by signal {signal.Signals(-code).name}"
        elif code != 0:
            error = f"exited with status {code}"
        self._cleanup()
        return AttemptResult(status, code, duration, tail.text(), error=error, result=result, pid=self.proc.pid)

    def _python_outcome(self) -> tuple[Any, str | None]:
        assert self.proc is not None and self._result_dir is not None
        path = os.path.join(self._result_dir.name, "result.json")
        try:
            with open(path, "rb") as fh:
                raw = fh.read(RESULT_BYTES + 1)
        except OSError:
            code = self.proc.returncode
            return None, (f"exited with status {code} before reporting a result" if code else None)
        if len(raw) > RESULT_BYTES:
            return None, None
        try:
            data = json.loads(raw)
        except ValueError:
            return None, "the entry point's result could not be read"
        return data.get("result"), data.get("error")

    def _pump(self, tail: _Tail) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        pending = bytearray()
        try:
            while True:
                chunk = os.read(fd, _READ_CHUNK)
                if not chunk:
                    break
                tail.add(chunk)
                if self.sink is None:
                    continue
                pending += chunk
                while True:
                    nl = pending.find(b"\n")
                    if nl < 0:
                        # A line that never ends is passed on in bounded pieces.
                        while len(pending) >= LINE_BYTES:
                            self.sink(pending[:LINE_BYTES].decode("utf-8", errors="replace"))
                            del pending[:LINE_BYTES]
                        break
                    self.sink(pending[:nl].decode("utf-8", errors="replace").rstrip("\r"))
                    del pending[: nl + 1]
            if pending and self.sink is not None:
                self.sink(pending.decode("utf-8", errors="replace"))
        except OSError:
            pass
        finally:
            self.proc.stdout.close()

    def _cleanup(self) -> None:
        if self._result_dir is not None:
            self._result_dir.cleanup()
            self._result_dir = None


def run_attempt(spec: JobSpec, context: RunContext, *, sink: OutputSink | None = None,
                base_dir: Path | None = None) -> AttemptResult:
    """Run one attempt to completion (the simple form of Attempt(...).wait())."""
    return Attempt(spec, context, sink=sink, base_dir=base_dir).wait()


def _is_run_process(pid: int, run_id: int) -> bool:
    """True if `pid` is a live process group leader started for run `run_id` (not a reused pid)."""
    try:
        if os.getpgid(pid) != pid:
            return False
        with open(f"/proc/{pid}/environ", "rb") as fh:
            environ = fh.read().split(b"\0")
    except (OSError, ProcessLookupError):
        return False
    return f"CRONPY_RUN_ID={run_id}".encode() in environ


def terminate_run(pid: int, run_id: int, grace: float) -> bool:
    """Stop a run's process group from outside its runner (a dead runner's orphan, `cronpy
    cancel`): TERM, then KILL after `grace`. True if there was one to stop.

    The pid is checked to still be that run's group leader (its environment carries the run
    id), so a recycled pid is never signalled.
    """
    if not _is_run_process(pid, run_id):
        return False
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return True
