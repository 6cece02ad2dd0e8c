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
import selectors
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol

from cronpy.models import JobSpec, RunStatus

TAIL_BYTES = 64 * 1024  # the output kept per run, for history and hooks
LINE_BYTES = 16 * 1024  # a longer line is passed through in pieces of this size
RESULT_BYTES = 1024 * 1024  # a Python result larger than this is not stored
_READ_CHUNK = 64 * 1024
DRAIN = 1.0  # seconds output is still read after the job's leader exits

OutputSink = Callable[[str], None]


class RawSink(Protocol):
    """Receives every byte of a run's output as it arrives (`output: keep`, `cronpy logs -f`).

    write() must not raise or block for long: it runs on the thread that watches the job."""

    def write(self, data: bytes) -> None: ...


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
                 base_env: Mapping[str, str] | None = None, raw: RawSink | None = None) -> None:
        self.spec = spec
        self.raw = raw
        self.context = context
        self.sink = sink
        self.base_dir = base_dir or Path.cwd()
        self._cancel = threading.Event()
        # cancel() writes here to wake the watching thread from poll() at once: an eventfd
        # (one descriptor) where there is one, else a pipe.
        self._wake_r = self._wake_w = -1
        self._wake_lock = threading.Lock()  # cancel() must not write to a closed (reused) fd
        self._cancel_reason = RunStatus.INTERRUPTED
        self._result_dir: tempfile.TemporaryDirectory[str] | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.start_error: str | None = None
        self._started = time.monotonic()
        # Anything that fails here (no descriptors left, a full /tmp, a missing program)
        # fails this attempt, not the runner.
        try:
            self._wake_r, self._wake_w = _wake_fds()
            env_argv = self._argv_env(extra_env or {}, base_env)
            how = spawn_settings(spec, *env_argv)
            if how.identity is not None and self._result_dir is not None:
                # The entry point writes its result here as the job's user.
                os.chown(self._result_dir.name, how.identity.uid, how.identity.gid)
            stdin_fd = _stdin_fd(how.stdin) if how.stdin is not None else None
            try:
                self.proc = subprocess.Popen(
                    how.argv,
                    stdin=stdin_fd if stdin_fd is not None else subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    cwd=how.cwd,
                    env=how.env,
                    start_new_session=True,  # its own session and process group: killpg reaches its children
                    close_fds=True,
                    **(how.identity.popen_args() if how.identity is not None else {}),
                )
            finally:
                if stdin_fd is not None:
                    os.close(stdin_fd)
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
            return [self.spec.shell or "/bin/sh", "-c", cmd], env
        assert cmd is not None
        return list(cmd), env

    def cancel(self, reason: RunStatus = RunStatus.INTERRUPTED) -> None:
        """Ask the attempt to stop: TERM to its process group, KILL after the grace period."""
        self._cancel_reason = reason
        self._cancel.set()
        with self._wake_lock:
            if self._wake_w >= 0:
                try:
                    os.write(self._wake_w, _ONE)
                except OSError:
                    pass

    def _signal_group(self, sig: int) -> None:
        assert self.proc is not None
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass

    def wait(self) -> AttemptResult:
        """Stream output until the attempt ends; return its outcome."""
        if self.proc is None:
            return AttemptResult(RunStatus.FAILED, None, 0.0, "", error=self.start_error)
        tail = _Tail()
        status = self._watch(_Lines(tail, self.sink, self.raw))
        code = self.proc.wait()
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

    def _watch(self, lines: _Lines) -> RunStatus | None:
        """Read output and wait for the end, the deadline or a cancel, in this one thread.

        poll() on the output pipe, a pidfd of the leader (woken by its exit: no polling)
        and the wake eventfd that cancel() writes to. On timeout or cancel: TERM to the group, KILL after the grace
        unless the leader is gone and the pipe closed. After the leader exits, output is
        drained for at most DRAIN seconds: a daemon it left behind may hold the pipe open for
        ever. Returns the status that stopped the run, None if it ended by itself.
        """
        proc = self.proc
        assert proc is not None and proc.stdout is not None
        fd = proc.stdout.fileno()
        os.set_blocking(fd, False)
        sel = selectors.PollSelector()  # no descriptor of its own, unlike epoll
        sel.register(fd, selectors.EVENT_READ, "out")
        sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        pidfd = _pidfd_open(proc.pid)
        if pidfd is not None:
            sel.register(pidfd, selectors.EVENT_READ, "exit")
        deadline = self._started + self.spec.timeout if self.spec.timeout else None
        status: RunStatus | None = None
        kill_at: float | None = None
        drain_until: float | None = None
        pipe_open = True
        try:
            while True:
                now = time.monotonic()
                if status is None and (self._cancel.is_set() or (deadline is not None and now >= deadline)):
                    status = self._cancel_reason if self._cancel.is_set() else RunStatus.TIMEOUT
                    self._signal_group(signal.SIGTERM)
                    kill_at = now + self.spec.kill_grace
                if kill_at is not None and now >= kill_at:
                    self._signal_group(signal.SIGKILL)
                    kill_at = None
                    if drain_until is not None:
                        drain_until = max(drain_until, now + DRAIN)  # the killed group's last output
                if drain_until is None and proc.poll() is not None:
                    drain_until = now + DRAIN
                    if pidfd is not None:
                        sel.unregister(pidfd)
                # While a TERM'd group has its grace, a child of it may still hold the pipe:
                # wait for the KILL rather than stop reading.
                if drain_until is not None and (not pipe_open or (now >= drain_until and kill_at is None)):
                    break
                waits = [t - now for t in (deadline if status is None else None, kill_at, drain_until) if t is not None]
                if pidfd is None and drain_until is None:
                    waits.append(0.05)  # no pidfd (not Linux): poll for the exit
                for key, _ in sel.select(max(0.0, min(waits)) if waits else None):
                    if key.data == "out":
                        pipe_open = self._read_some(fd, lines)
                        if not pipe_open:
                            sel.unregister(fd)
                    elif key.data == "wake":
                        os.read(self._wake_r, 8)
            if status is not None:
                self._signal_group(signal.SIGKILL)  # what is left of the group after the grace
        finally:
            lines.close()
            sel.close()
            if pidfd is not None:
                os.close(pidfd)
            proc.stdout.close()
        return status

    @staticmethod
    def _read_some(fd: int, lines: _Lines) -> bool:
        """Read what the pipe holds; False at end of file."""
        while True:
            try:
                chunk = os.read(fd, _READ_CHUNK)
            except BlockingIOError:
                return True
            except OSError:
                return False
            if not chunk:
                return False
            lines.feed(chunk)
            if len(chunk) < _READ_CHUNK:
                return True

    def _cleanup(self) -> None:
        if self._result_dir is not None:
            self._result_dir.cleanup()
            self._result_dir = None
        with self._wake_lock:
            for fd in {self._wake_r, self._wake_w}:
                if fd >= 0:
                    os.close(fd)
            self._wake_r = self._wake_w = -1


class _Lines:
    """Output as it arrives: all of it into the tail, and whole lines to the sink."""

    def __init__(self, tail: _Tail, sink: OutputSink | None, raw: RawSink | None = None) -> None:
        self.tail = tail
        self.sink = sink
        self.raw = raw
        self.pending = bytearray()

    def feed(self, chunk: bytes) -> None:
        self.tail.add(chunk)
        if self.raw is not None:
            self.raw.write(chunk)
        if self.sink is None:
            return
        pending = self.pending
        pending += chunk
        while True:
            nl = pending.find(b"\n")
            if nl < 0:
                # A line that never ends is passed on in bounded pieces.
                while len(pending) >= LINE_BYTES:
                    self.sink(pending[:LINE_BYTES].decode("utf-8", errors="replace"))
                    del pending[:LINE_BYTES]
                return
            self.sink(pending[:nl].decode("utf-8", errors="replace").rstrip("\r"))
            del pending[: nl + 1]

    def close(self) -> None:
        if self.pending and self.sink is not None:
            self.sink(self.pending.decode("utf-8", errors="replace"))
        self.pending.clear()


_ONE = (1).to_bytes(8, sys.byteorder)  # what an eventfd counts up by (fine for a pipe too)

# Descriptors a running job holds in this process: its output pipe, the wake eventfd and the
# pidfd (a pipe end more without eventfd), and its job lock file.
FDS_PER_RUN = 4


@dataclass(frozen=True)
class Identity:
    """Who a job runs as (`user:`/`group:`), resolved from the host's account database."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str

    def popen_args(self) -> dict[str, Any]:
        return {"user": self.uid, "group": self.gid, "extra_groups": list(self.groups)}


@dataclass(frozen=True)
class SpawnSettings:
    """Everything needed to start one attempt's process; the executor's one seam for how a job
    is started (argv, environment, directory, standard input, identity), whatever spawns it."""

    argv: list[str]
    env: dict[str, str]
    cwd: str | None
    stdin: bytes | None  #: None: /dev/null
    identity: Identity | None


def resolve_identity(user: str | None, group: str | None) -> Identity | None:
    """The uid, gid, supplementary groups and home of `user` (and `group`); None for neither.

    Raises OSError (failing the attempt, not the runner) when the account has gone since the
    file was loaded."""
    if user is None and group is None:
        return None
    import grp
    import pwd

    try:
        if user is None:
            pw = pwd.getpwuid(os.geteuid())
        else:
            pw = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
    except KeyError:
        raise OSError(f"no user {user!r} on this host") from None
    gid = pw.pw_gid
    if group is not None:
        try:
            gid = int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
        except KeyError:
            raise OSError(f"no group {group!r} on this host") from None
    groups = tuple(os.getgrouplist(pw.pw_name, gid)) if user is not None else ()
    return Identity(pw.pw_name, pw.pw_uid, gid, groups, pw.pw_dir or "/")


# What the executor itself sets for every attempt: all that passes from the runner's side into a
# `user:` job's clean environment (a CRONPY_* variable of the runner's own environment does not).
_OWN_VARIABLES = frozenset({"CRONPY_JOB", "CRONPY_ATTEMPT", "CRONPY_RUN_ID", "CRONPY_ENTRY", "PYTHONUNBUFFERED"})

# cron(8) gives a job of /etc/crontab this environment (plus the crontab's own variables);
# PATH as Debian's cron sets it.
LOGIN_PATH = "/usr/bin:/bin"


def spawn_settings(spec: JobSpec, argv: list[str], env: dict[str, str]) -> SpawnSettings:
    """Apply `user:`/`group:`/`stdin:` to an attempt's argv and environment.

    With `user:`, the job gets a clean login-like environment, as cron gives one: HOME, LOGNAME,
    USER and SHELL of that user's account (SHELL: the job's `shell`, else /bin/sh, as cron),
    PATH=/usr/bin:/bin, then the job's `env:` and cronpy's own CRONPY_* variables; it starts in
    the user's home unless `cwd:` says otherwise. Nothing of the runner's environment leaks in.
    """
    identity = resolve_identity(spec.user, spec.group)
    cwd = str(spec.cwd) if spec.cwd else None
    if identity is not None and spec.user is not None:
        clean = {"HOME": identity.home, "LOGNAME": identity.name, "USER": identity.name,
                 "SHELL": spec.shell or "/bin/sh", "PATH": LOGIN_PATH}
        clean.update(spec.env)
        clean.update({k: v for k, v in env.items() if k in _OWN_VARIABLES})
        env = clean
        if cwd is None:
            cwd = identity.home if os.path.isdir(identity.home) else "/"
    stdin = spec.stdin.encode("utf-8") if spec.stdin is not None else None
    return SpawnSettings(argv, env, cwd, stdin, identity)


def _stdin_fd(data: bytes) -> int:
    """A readable descriptor holding `data`, positioned at its start: a memfd (no file on disk,
    no writer thread, no pipe buffer to fill), or an unlinked temporary file."""
    try:
        fd = os.memfd_create("cronpy-stdin", os.MFD_CLOEXEC)
    except (AttributeError, OSError):
        fh = tempfile.TemporaryFile()
        fd = os.dup(fh.fileno())
        fh.close()
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def _wake_fds() -> tuple[int, int]:
    if hasattr(os, "eventfd"):
        fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        return fd, fd
    r, w = os.pipe()
    os.set_blocking(r, False)
    return r, w


def ensure_fd_budget(concurrent_runs: int) -> tuple[int, int, int]:
    """Raise the soft limit on open files (up to the hard limit) so that `concurrent_runs`
    jobs can run at once: systemd's default soft limit is 1,024.

    Returns the soft limit before and after, and what `concurrent_runs` needs."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = FDS_PER_RUN * concurrent_runs + 256  # + the database, locks, sockets, stdio
    if soft != resource.RLIM_INFINITY and soft < needed:
        new = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        if new > soft:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
            return soft, new, needed
    return soft, soft, needed


def _pidfd_open(pid: int) -> int | None:
    """A file descriptor that becomes readable when `pid` exits (Linux 5.3+), else None."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


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
