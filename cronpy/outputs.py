"""Whole run output on disk: the live file `cronpy logs -f` follows, kept (`output: keep`) as
gzip after the run, pruned with the history retention and each job's `output_max`; and the
once-per-boot marks of `run_on_boot` jobs.

Layout, all private to the runner's user (directories 0700, files 0600):
  STATE_DIR/output/<job>/<run id>.log     while the run goes (every run that prints something)
  STATE_DIR/output/<job>/<run id>.log.gz  after it, with `output: keep`; otherwise the .log goes
  STATE_DIR/boot.json                     {job: boot id of its last run_on_boot run}

Nothing here may fail or stall a run: a write error (a full disk) stops that run's file, logs
once, and the run goes on with its history tail as before.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import threading
import time
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Callable, Iterator

from cronpy.redact import cronpy_logger

if TYPE_CHECKING:
    from cronpy.models import RunRecord
    from cronpy.store import Store

log = cronpy_logger()

OUTPUT_DIR = "output"
BOOT_FILE = "boot.json"
# The kernel's id of the current boot: a new random UUID each boot, the same for every process.
BOOT_ID_FILE = "/proc/sys/kernel/random/boot_id"


def _job_dir(state_dir: Path, job: str) -> Path:
    return state_dir / OUTPUT_DIR / job


def run_paths(state_dir: Path, job: str, run_id: int) -> tuple[Path, Path]:
    """(the live file, the kept gzip file) of one run."""
    d = _job_dir(state_dir, job)
    return d / f"{run_id}.log", d / f"{run_id}.log.gz"


def _private_dir(path: Path) -> None:
    """STATE_DIR/output/<job>, both levels 0700 (mkdir's `parents` would give `output` the umask's mode)."""
    path.parent.parent.mkdir(parents=True, exist_ok=True)
    for d in (path.parent, path):
        try:
            d.mkdir(mode=0o700)
        except FileExistsError:
            pass


class RunOutput:
    """One run's output file: opened on the first byte (a silent job costs nothing), capped at
    `limit` bytes; finish() before the run's outcome is recorded (so a follower that sees the
    run finished has every byte), settle() after it (compress or remove)."""

    def __init__(self, state_dir: Path, job: str, run_id: int, limit: int, keep: bool) -> None:
        self.state_dir = state_dir
        self.job = job
        self.run_id = run_id
        self.limit = limit
        self.keep = keep
        self.written = 0
        self._fd = -1
        self._broken = False
        self._created = False  # the live file exists (the run printed something)
        self._lock = threading.Lock()  # write() on the watching thread, finish() on the run's

    # Made on first use: four Path joins a run (~30 us) for files most runs never create.
    @cached_property
    def live(self) -> Path:
        return run_paths(self.state_dir, self.job, self.run_id)[0]

    @cached_property
    def kept(self) -> Path:
        return run_paths(self.state_dir, self.job, self.run_id)[1]

    def write(self, data: bytes) -> None:
        with self._lock:
            if self._broken or self.written >= self.limit:
                return
            try:
                if self._fd < 0:
                    _private_dir(self.live.parent)
                    self._fd = os.open(self.live, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND | os.O_CLOEXEC,
                                       0o600)
                    self._created = True
                room = self.limit - self.written
                chunk = data[:room]
                os.write(self._fd, chunk)
                self.written += len(chunk)
                if self.written >= self.limit:
                    os.write(self._fd, f"\n[cronpy: output_max reached; the rest of the output was not kept]\n"
                             .encode())
            except OSError as exc:
                self._broken = True
                log.error("%s: cannot write the run's output to %s, not keeping it: %s", self.job, self.live, exc)

    @property
    def opened(self) -> bool:
        """A file was created (the run printed something): settle() has work to do."""
        return self._created

    def finish(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
            self._broken = True  # no more writes

    def settle(self, max_total: int) -> None:
        """Compress the file (`output: keep`) or remove it, then trim the job's files to
        `max_total` bytes, oldest first."""
        self.finish()
        if not self.live.exists():
            return
        try:
            if self.keep:
                tmp = self.kept.with_suffix(".gz.tmp")
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
                with open(self.live, "rb") as src, os.fdopen(fd, "wb") as raw, \
                        gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6) as gz:
                    shutil.copyfileobj(src, gz, 1024 * 1024)
                os.replace(tmp, self.kept)
            os.unlink(self.live)
        except OSError as exc:
            log.error("%s: cannot %s %s: %s", self.job, "compress" if self.keep else "remove", self.live, exc)
        if self.keep:
            trim_job(self.state_dir, self.job, max_total)


def _kept_files(job_dir: Path, suffix: str = ".log.gz") -> list[tuple[float, int, Path]]:
    out = []
    try:
        entries = list(os.scandir(job_dir))
    except OSError:
        return []
    for e in entries:
        if e.name.endswith(suffix):
            try:
                st = e.stat()
            except OSError:
                continue
            out.append((st.st_mtime, st.st_size, Path(e.path)))
    return sorted(out, reverse=True)


def trim_job(state_dir: Path, job: str, max_total: int) -> int:
    """Delete a job's oldest kept files beyond `max_total` bytes in all; return how many."""
    total, removed = 0, 0
    for _, size, path in _kept_files(_job_dir(state_dir, job)):
        total += size
        if total > max_total:
            try:
                path.unlink()
                removed += 1
            except OSError:
                pass
    return removed


def prune(state_dir: Path, older_than: float, caps: dict[str, int], default_cap: int) -> int:
    """Delete kept output older than `older_than` (epoch seconds, the history retention) and
    beyond each job's cap (`caps`, else `default_cap`, for jobs gone from the file); return how
    many files went."""
    removed = 0
    root = state_dir / OUTPUT_DIR
    try:
        jobs = [e.name for e in os.scandir(root) if e.is_dir()]
    except OSError:
        return 0
    for job in jobs:
        # A live file older than the retention was left by a runner killed mid-run (a running
        # job's file is written to, or removed, when the run ends).
        for mtime, _, path in _kept_files(root / job) + _kept_files(root / job, ".log"):
            if mtime < older_than:
                try:
                    path.unlink()
                    removed += 1
                except OSError:
                    pass
        removed += trim_job(state_dir, job, caps.get(job, default_cap))
    return removed


def read_kept(state_dir: Path, job: str, run_id: int) -> Iterator[bytes] | None:
    """The whole output of a finished run, if it was kept (or is still being compressed)."""
    live, kept = run_paths(state_dir, job, run_id)
    for path in (kept, live, kept):  # kept, the live file mid-compression, then kept again
        try:
            fh: BinaryIO = gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")  # type: ignore[assignment]
        except FileNotFoundError:
            continue
        return _chunks(fh)
    return None


def _chunks(fh: BinaryIO) -> Iterator[bytes]:
    with fh:
        while chunk := fh.read(64 * 1024):
            yield chunk


def follow(state_dir: Path, job: str, run_id: int, finished: Callable[[], bool],
           poll: float = 0.1) -> Iterator[bytes]:
    """Yield a running run's output as it is written until the run is recorded as finished.

    The live file appears with the first byte; the runner closes it before recording the
    outcome, so once `finished()` says so, what is left in the file is the rest.
    """
    live, _ = run_paths(state_dir, job, run_id)
    fh: BinaryIO | None = None
    last_check = 0.0
    done = False
    try:
        while True:
            if fh is None:
                try:
                    fh = open(live, "rb")
                except FileNotFoundError:
                    fh = None
            if fh is not None:
                chunk = fh.read(64 * 1024)
                if chunk:
                    yield chunk
                    continue
            if done:
                return
            now = time.monotonic()
            if now - last_check >= 0.25:  # the store, four times a second at most
                last_check = now
                done = finished()
                if done:
                    if fh is None:  # it never printed, or was already compressed: the whole file
                        kept = read_kept(state_dir, job, run_id)
                        if kept is not None:
                            yield from kept
                        return
                    continue  # read what is left in the open file
            time.sleep(poll)
    finally:
        if fh is not None:
            fh.close()


def boot_id(path: str | None = None) -> str | None:
    """The current boot's id ($CRONPY_BOOT_ID_FILE names another file, for tests and
    containers), None where there is none (not Linux)."""
    path = path or os.environ.get("CRONPY_BOOT_ID_FILE") or BOOT_ID_FILE
    try:
        with open(path, encoding="ascii") as fh:
            return fh.read().strip() or None
    except OSError:
        return None


class BootMarks:
    """Which run_on_boot jobs already ran during this boot, kept in STATE_DIR/boot.json, so a
    runner restarted (or upgraded, or failed over on this host) does not run them again."""

    def __init__(self, state_dir: Path, boot_id_file: str | None = None) -> None:
        self.path = state_dir / BOOT_FILE
        self.boot_id_file = boot_id_file
        self._lock = threading.Lock()

    def claim(self, job: str) -> bool:
        """True (and remembered) if `job` has not yet run in this boot; False if it has."""
        current = boot_id(self.boot_id_file)
        if current is None:
            log.warning("%s: no boot id on this system; run_on_boot runs at every runner start", job)
            return True
        with self._lock:
            try:
                marks = json.loads(self.path.read_text())
                if not isinstance(marks, dict):
                    marks = {}
            except (OSError, ValueError):
                marks = {}
            if marks.get(job) == current:
                return False
            marks[job] = current
            tmp = self.path.with_name(f".{BOOT_FILE}.{os.getpid()}")
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                tmp.write_text(json.dumps(marks))
                os.replace(tmp, self.path)
            except OSError as exc:
                # Better twice than never: cron's @reboot runs even when /var is read-only.
                log.error("%s: cannot record its boot run in %s: %s", job, self.path, exc)
            return True


TAIL_BYTES = 64 * 1024  # as much as the history keeps of a finished run


def with_live_output(rec: "RunRecord", state_dir: Path) -> "RunRecord":
    """A running run with the tail of what it has printed so far (`cronpy show`), from its live file."""
    live, _ = run_paths(state_dir, rec.job, rec.id)
    try:
        with open(live, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            fh.seek(max(0, size - TAIL_BYTES))
            data = fh.read(TAIL_BYTES)
    except OSError:
        return rec
    text = data.decode("utf-8", errors="replace")
    if size > TAIL_BYTES:
        text = f"[... {size - TAIL_BYTES} earlier bytes: `cronpy logs {rec.id}` ...]\n" + text
    return rec._replace(output=text)


def show_logs(store: "Store", state_dir: Path, target: str, *, follow_run: bool,
              write: Callable[[bytes], None], note: Callable[[str], None]) -> int:
    """`cronpy logs NAME|RUN_ID [-f]`: the run's whole output if it is on disk (running, or
    kept), else the tail the history keeps. With `follow_run`, a running run's output is
    written as it comes until the run ends. Returns the exit status (0)."""
    from cronpy.errors import UsageError

    if target.isdigit():
        rec = store.get(int(target))
    else:
        runs = store.query(target, limit=1)
        if not runs:
            raise UsageError(f"no runs of job {target!r} in the history")
        rec = store.get(runs[0].id)
    if not rec.status.finished:
        if follow_run:
            def finished() -> bool:
                return store.get(rec.id).status.finished

            for chunk in follow(state_dir, rec.job, rec.id, finished):
                write(chunk)
            return 0
        live, _ = run_paths(state_dir, rec.job, rec.id)
        try:
            with open(live, "rb") as fh:
                for chunk in _chunks(fh):
                    write(chunk)
        except FileNotFoundError:
            pass  # nothing printed yet (or it runs on another host)
        return 0
    kept = read_kept(state_dir, rec.job, rec.id)
    if kept is not None:
        for chunk in kept:
            write(chunk)
        return 0
    if rec.output:
        note(f"run {rec.id}: showing the output tail kept in the history (set `output: keep` to keep "
             "whole output)")
        write(rec.output.encode("utf-8", errors="replace"))
    return 0
