"""Run one attempt of one job in its own process group, and report how it ended.

The executor knows nothing of schedules or history. It spawns the job (a shell string under
/bin/sh -c, an argument list exec'd directly, or a Python entry point in a child interpreter),
streams its output line by line to a callback while keeping only a bounded tail in memory,
and on timeout or cancellation sends SIGTERM to the whole process group, then SIGKILL after
the job's grace period, so the job's own children do not outlive it.
"""

from __future__ import annotations

import errno
import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, Sequence

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
    """A started attempt, advanced by whoever watches it: `wait()` in this thread, or the
    runner's one supervisor loop for every run (see runner.supervisor).

    It never blocks: the watcher polls `fds()` (the output pipe, a pidfd of the leader) and
    calls `on_ready()` for each that fires, then `advance(now)`, which applies the timeout,
    a cancel, the kill grace and the drain, and returns when it next needs a look. When
    `finished` is true, `result()` gives the outcome.
    """

    def __init__(self, spec: JobSpec, context: RunContext, *, sink: OutputSink | None = None,
                 base_dir: Path | None = None, extra_env: dict[str, str] | None = None,
                 base_env: Mapping[str, str] | None = None, inherit_fds: Sequence[int] = (),
                 raw: RawSink | None = None) -> None:
        self.spec = spec
        self.raw = raw
        self.context = context
        self.sink = sink
        self.base_dir = base_dir or Path.cwd()
        #: called (from any thread) after cancel(), so the watcher looks at once
        self.waker: Callable[[], None] | None = None
        self._cancel_reason = RunStatus.INTERRUPTED
        self._cancelled = False
        self._result_dir: tempfile.TemporaryDirectory[str] | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self.pid: int | None = None
        self.out_fd = -1
        self.pidfd: int | None = None
        self.start_error: str | None = None
        self._started = time.monotonic()
        self._deadline = self._started + spec.timeout if spec.timeout else None
        self._tail = _Tail()
        self._lines = _Lines(self._tail, sink, raw)
        self._status: RunStatus | None = None  # what stopped the run (None: it ended by itself)
        self._kill_at: float | None = None
        self._drain_until: float | None = None
        self._pipe_open = False
        self._code: int | None = None  # the leader's exit status, once reaped
        self._ended_at: float | None = None  # monotonic instant the leader's exit was seen
        self._exit_ready = False  # the pidfd fired: reap (no waitpid per wake-up before that)
        self._exit_seen: float | None = None  # monotonic instant the watcher saw the pidfd fire
        self.finished = False
        # Anything that fails here (no descriptors left, a full /tmp, a missing program)
        # fails this attempt, not the runner.
        try:
            how = spawn_settings(spec, *self._argv_env(extra_env or {}, base_env))
            if how.identity is not None and self._result_dir is not None:
                # The entry point writes its result here as the job's user.
                os.chown(self._result_dir.name, how.identity.uid, how.identity.gid)
            self._spawn(how, inherit_fds)
        except OSError as exc:
            self.start_error = f"could not start: {exc.strerror or exc}" + (
                f" ({exc.filename})" if getattr(exc, "filename", None) else "")
            self.finished = True
            self._cleanup()

    # -- spawning ------------------------------------------------------------------------------

    def _spawn(self, how: SpawnSettings, inherit_fds: Sequence[int]) -> None:
        """posix_spawn where the job allows it (0.11 ms against Popen's 0.33 ms, measured in
        issue #12); subprocess where posix_spawn cannot do what the job needs: a working
        directory (no chdir file action before Python 3.13) or a user/group switch."""
        stdin_fd = _stdin_fd(how.stdin) if how.stdin is not None else None
        r, w = os.pipe2(os.O_CLOEXEC)  # the runner's ends never leak into other jobs
        try:
            if how.cwd is not None or how.identity is not None:
                self._proc = subprocess.Popen(
                    how.argv, stdin=stdin_fd if stdin_fd is not None else subprocess.DEVNULL, stdout=w, stderr=w,
                    cwd=how.cwd, env=how.env,
                    start_new_session=True,  # its own session and process group: killpg reaches its children
                    close_fds=True, pass_fds=tuple(inherit_fds),
                    **(how.identity.popen_args() if how.identity is not None else {}))
                self.pid = self._proc.pid
            else:
                path = _resolve(how.argv[0], how.env)
                actions: list[tuple[Any, ...]] = [
                    (os.POSIX_SPAWN_DUP2, stdin_fd, 0) if stdin_fd is not None
                    else (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                    (os.POSIX_SPAWN_DUP2, w, 1),
                    (os.POSIX_SPAWN_DUP2, w, 2),
                ]
                # dup2 onto itself clears close-on-exec (glibc 2.29+, POSIX 2024): only the
                # descriptors named here (the job lock) reach the job.
                actions += [(os.POSIX_SPAWN_DUP2, fd, fd) for fd in inherit_fds]
                self.pid = os.posix_spawn(path, how.argv, how.env, file_actions=actions, setsid=True,
                                          setsigmask=(), setsigdef=_DEFAULT_SIGNALS)
            # The job's clock starts when it runs: posix_spawn (and Popen) return once the
            # child has exec'd, so what this process spent preparing and waiting for the spawn
            # is not the job's time. With 200 `true` due together on a loaded machine, p95 of
            # the recorded duration: 14-15 ms from before the preparation, 8.4 ms from here.
            self._started = time.monotonic()
        except BaseException:
            os.close(r)
            raise
        finally:
            os.close(w)
            if stdin_fd is not None:
                os.close(stdin_fd)
        self.out_fd = r
        os.set_blocking(r, False)
        self._pipe_open = True
        self.pidfd = _pidfd_open(self.pid)

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
        else:
            env.pop("CRONPY_RUN_ID", None)  # never a stale or invented id
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

    # -- watching ------------------------------------------------------------------------------

    def cancel(self, reason: RunStatus = RunStatus.INTERRUPTED) -> None:
        """Ask the attempt to stop: TERM to its process group, KILL after the grace period."""
        self._cancel_reason = reason
        self._cancelled = True
        waker = self.waker
        if waker is not None:
            waker()

    @property
    def waits_on_fds_only(self) -> bool:
        """Nothing but its descriptors can move it on (no timeout, no cancel, a pidfd): a
        watcher need not look at it before one of them fires."""
        return (not self.finished and self.pidfd is not None and self._deadline is None
                and not self._cancelled)

    def fds(self) -> list[tuple[int, str]]:
        """What to watch now: ("out", the output pipe) while open, ("exit", a pidfd) until the
        leader has exited (no pidfd: advance() polls, see its return value)."""
        out = []
        if self._pipe_open:
            out.append((self.out_fd, "out"))
        if self.pidfd is not None and self._ended_at is None:
            out.append((self.pidfd, "exit"))
        return out

    def on_ready(self, kind: str) -> None:
        """One of fds() is readable: read the output (or note the exit, reaped in advance())."""
        if kind == "out":
            self._pipe_open = self._read_some()
        elif kind == "exit":
            self._exit_ready = True

    def exit_seen(self, at: float) -> None:
        """The watcher saw the leader's pidfd fire at monotonic `at` and looks at it later:
        the job's duration ends at `at`, not at the look."""
        if self._exit_seen is None:
            self._exit_seen = at

    def advance(self, now: float) -> float | None:
        """Apply what is due at monotonic `now`; return when to look again (None: when an fd
        fires). Sets `finished` when the attempt is over.

        On timeout or cancel: TERM to the group, KILL after the grace unless the leader is gone
        and the pipe closed. After the leader exits, output is drained for at most DRAIN
        seconds: a daemon it left behind may hold the pipe open for ever.
        """
        if self.finished:
            return None
        if self._status is None and (self._cancelled or (self._deadline is not None and now >= self._deadline)):
            self._status = self._cancel_reason if self._cancelled else RunStatus.TIMEOUT
            self._signal_group(signal.SIGTERM)
            self._kill_at = now + self.spec.kill_grace
        if self._kill_at is not None and now >= self._kill_at:
            self._signal_group(signal.SIGKILL)
            self._kill_at = None
            if self._drain_until is not None:
                self._drain_until = max(self._drain_until, now + DRAIN)  # the killed group's last output
        if self._ended_at is None and (self._exit_ready or self.pidfd is None) and self._reap():
            # The job's end: when its exit was seen, if the watcher looked at it later.
            self._ended_at = min(now, self._exit_seen) if self._exit_seen is not None else now
            self._drain_until = now + DRAIN
            if self._pipe_open:
                # The pipe's end of file is usually there already (the leader held the last
                # write end): read it now, not at one more wake-up of the watcher.
                self._pipe_open = self._read_some()
        # While a TERM'd group has its grace, a child of it may still hold the pipe: wait for
        # the KILL rather than stop reading.
        if self._drain_until is not None and (
                not self._pipe_open or (now >= self._drain_until and self._kill_at is None)):
            if self._status is not None:
                self._signal_group(signal.SIGKILL)  # what is left of the group after the grace
            self.finished = True
            return None
        waits = [t for t in (self._deadline if self._status is None else None, self._kill_at, self._drain_until)
                 if t is not None]
        if self.pidfd is None and self._ended_at is None:
            waits.append(now + POLL_WITHOUT_PIDFD)
        return min(waits) if waits else None

    def _reap(self) -> bool:
        """True once the leader has exited (its status collected)."""
        if self._proc is not None:
            code = self._proc.poll()
            if code is None:
                return False
            self._code = code
            return True
        assert self.pid is not None
        try:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:  # reaped elsewhere (a SIGCHLD handler): its status is lost
            self._code = 255
            return True
        if pid == 0:
            return False
        self._code = os.waitstatus_to_exitcode(status)
        return True

    def _signal_group(self, sig: int) -> None:
        assert self.pid is not None
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            pass

    def result(self) -> AttemptResult:
        """The outcome of a finished attempt (closes what it held)."""
        if self.pid is None:
            return AttemptResult(RunStatus.FAILED, None, 0.0, "", error=self.start_error)
        self._lines.close()
        code = self._code if self._code is not None else 255
        # The job's own duration: until its leader's exit was seen, not until the drain ended.
        duration = (self._ended_at or time.monotonic()) - self._started
        status = self._status
        result, error = None, None
        if status is None:
            status = RunStatus.SUCCESS if code == 0 else RunStatus.FAILED
        if status is RunStatus.TIMEOUT:
            error = f"timed out after {self.spec.timeout:g}s; process group terminated"
            code = 124 if code < 0 else code
        elif status is RunStatus.INTERRUPTED:
            error = "interrupted: cronpy stopped the run"
        elif self.spec.python:
            result, error = self._python_outcome(code)
        elif code < 0:
            error = f"killed by signal {signal.Signals(-code).name}"
        elif code != 0:
            error = f"exited with status {code}"
        self._cleanup()
        return AttemptResult(status, code, duration, self._tail.text(), error=error, result=result, pid=self.pid)

    def wait(self) -> AttemptResult:
        """Stream output until the attempt ends, in this thread; return its outcome."""
        if self.finished:
            return self.result()
        sel = selectors.PollSelector()  # no descriptor of its own, unlike epoll
        wake_r, wake_w = wake_fds()
        self.waker = lambda: poke(wake_w)
        try:
            sel.register(wake_r, selectors.EVENT_READ, "wake")
            watched: set[int] = set()
            while True:
                now = time.monotonic()
                until = self.advance(now)
                if self.finished:
                    break
                fds = dict(self.fds())
                for fd in watched - fds.keys():
                    sel.unregister(fd)
                for fd in fds.keys() - watched:
                    sel.register(fd, selectors.EVENT_READ, fds[fd])
                watched = set(fds)
                for key, _ in sel.select(None if until is None else max(0.0, until - now)):
                    if key.data == "wake":
                        drain_wake(wake_r)
                    else:
                        self.on_ready(key.data)
        finally:
            self.waker = None
            sel.close()
            for fd in {wake_r, wake_w}:
                os.close(fd)
        return self.result()

    def _python_outcome(self, code: int) -> tuple[Any, str | None]:
        assert self._result_dir is not None
        path = os.path.join(self._result_dir.name, "result.json")
        try:
            with open(path, "rb") as fh:
                raw = fh.read(RESULT_BYTES + 1)
        except OSError:
            return None, (f"exited with status {code} before reporting a result" if code else None)
        if len(raw) > RESULT_BYTES:
            return None, None
        try:
            data = json.loads(raw)
        except ValueError:
            return None, "the entry point's result could not be read"
        return data.get("result"), data.get("error")

    def _read_some(self) -> bool:
        """Read what the pipe holds; False at end of file."""
        while True:
            try:
                chunk = os.read(self.out_fd, _READ_CHUNK)
            except BlockingIOError:
                return True
            except OSError:
                return False
            if not chunk:
                return False
            self._lines.feed(chunk)
            if len(chunk) < _READ_CHUNK:
                return True

    def _cleanup(self) -> None:
        if self._result_dir is not None:
            self._result_dir.cleanup()
            self._result_dir = None
        for fd in (self.out_fd, self.pidfd):
            if fd is not None and fd >= 0:
                os.close(fd)
        self.out_fd, self.pidfd = -1, None
        self._pipe_open = False
        if self._proc is not None:
            self._proc.wait()  # reaped already: only lets Popen forget it


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

# Descriptors a running job holds in this process: its output pipe, its pidfd and its job
# lock file (one supervisor loop watches every run: no wake descriptor per run).
FDS_PER_RUN = 3

# Without pidfd (not Linux 5.3+) the supervisor looks for exited children this often: one
# waitpid per running job 20 times a second, the portable fallback's cost.
POLL_WITHOUT_PIDFD = 0.05

# Python ignores these; ignored dispositions survive exec, so the job gets them back at their
# defaults (as subprocess's restore_signals does): `yes | head` must end by SIGPIPE.
_DEFAULT_SIGNALS = tuple(getattr(signal, n) for n in ("SIGPIPE", "SIGXFSZ", "SIGXFZ") if hasattr(signal, n))

_PATHS: dict[tuple[str, str], str] = {}  # (program, PATH) -> resolved path: no stat per run


def _resolve(program: str, env: Mapping[str, str]) -> str:
    """The file posix_spawn must run for `program`, searched on the job's PATH as exec does."""
    if "/" in program:
        return program
    search = env.get("PATH", os.defpath)
    found = _PATHS.get((program, search))
    if found is None:
        found = shutil.which(program, path=search)
        if found is None:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), program)
        if len(_PATHS) < 4096:
            _PATHS[(program, search)] = found
    return found


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


def poke(fd: int) -> None:
    try:
        os.write(fd, _ONE)
    except OSError:
        pass


def drain_wake(fd: int) -> None:
    try:
        os.read(fd, 8)
    except OSError:
        pass


def wake_fds() -> tuple[int, int]:
    """A descriptor to wake a select() from another thread: an eventfd, else a pipe."""
    if hasattr(os, "eventfd"):
        fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        return fd, fd
    r, w = os.pipe()
    os.set_blocking(r, False)
    os.set_blocking(w, False)
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
