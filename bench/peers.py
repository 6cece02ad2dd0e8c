"""The schedulers the benchmark compares: cronpy and the peers that install on this machine.

Each peer turns the same job list into its own configuration and runs as a real process:

  cronpy       the `cronpy` on PATH (or `python -m cronpy` with this interpreter)
  cron         Debian's cron (`apt-get install cron`; needs root), one file in /etc/cron.d
  yacron       yacron from PyPI, in a virtualenv of its own
  APScheduler  APScheduler 3 from PyPI (same virtualenv), BlockingScheduler with a pool of
               10 worker threads, driven by bench/apscheduler_driver.py

None of the peers becomes a dependency of cronpy: the virtualenv lives under
$CRONPY_BENCH_CACHE (default ~/.cache/cronpy-bench) and Debian's cron is installed only when the
suite runs as root. A peer that cannot be installed is reported as unavailable, with the reason.
supercronic is not published on PyPI, npm or Debian, the registries this machine reaches, so it
is not measured.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
PY = sys.executable
PEER_PINS = ["yacron==0.19.0", "APScheduler==3.11.3"]
CACHE = Path(os.environ.get("CRONPY_BENCH_CACHE", Path.home() / ".cache" / "cronpy-bench"))


@dataclass(frozen=True)
class Job:
    """One job, in the subset of schedules every peer understands (day, month, weekday = *)."""

    name: str
    minute: str
    hour: str
    argv: tuple[str, ...]
    second: str | None = None  # None: a minute-granular schedule (fires at second 0)


class Unavailable(Exception):
    pass


class Peer:
    name = ""
    seconds = True  # can schedule to the second

    def setup(self) -> None:
        """Install what is missing; raise Unavailable with the reason if it cannot be."""

    def start(self, jobs: list[Job], work: Path, *, max_concurrent: int) -> subprocess.Popen[bytes]:
        raise NotImplementedError

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def validate(self, jobs: list[Job], work: Path) -> list[str] | None:
        """A command that loads and validates `jobs` and exits, or None if the peer has none."""
        return None

    def help(self) -> list[str] | None:
        return None


def _quiet(cmd: list[str], **kw: object) -> subprocess.Popen[bytes]:
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kw)  # type: ignore[call-overload]


# -- cronpy ------------------------------------------------------------------------------------

def cronpy_cmd(*args: str) -> list[str]:
    exe = shutil.which("cronpy")
    return [exe, *args] if exe else [PY, "-m", "cronpy", *args]


class Cronpy(Peer):
    name = "cronpy"

    def write(self, jobs: list[Job], work: Path, *, max_concurrent: int = 4) -> Path:
        path = work / "cronpy.yaml"
        lines = [f"max_concurrent: {max_concurrent}", f"state_dir: {work / 'cronpy-state'}", "timezone: UTC", "jobs:"]
        for j in jobs:
            spec = f"{j.second} {j.minute} {j.hour} * * *" if j.second is not None else f"{j.minute} {j.hour} * * *"
            lines.append(f"  {j.name}: {{schedule: '{spec}', command: {json.dumps(list(j.argv))}, overlap: allow}}")
        path.write_text("\n".join(lines) + "\n")
        return path

    def start(self, jobs: list[Job], work: Path, *, max_concurrent: int) -> subprocess.Popen[bytes]:
        return _quiet(cronpy_cmd("run", str(self.write(jobs, work, max_concurrent=max_concurrent))))

    def validate(self, jobs: list[Job], work: Path) -> list[str]:
        return cronpy_cmd("validate", str(self.write(jobs, work)))

    def help(self) -> list[str]:
        return cronpy_cmd("--help")


# -- Debian cron -------------------------------------------------------------------------------

class DebianCron(Peer):
    name = "cron"
    seconds = False
    CRON_D = Path("/etc/cron.d/cronpy-bench")  # run-parts naming: no dot in the name

    def setup(self) -> None:
        if shutil.which("cron") or Path("/usr/sbin/cron").exists():
            return self._check_not_running()
        if os.geteuid() != 0:
            raise Unavailable("not installed, and installing Debian's cron needs root")
        if not shutil.which("apt-get"):
            raise Unavailable("not installed and no apt-get")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        for cmd in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "--no-install-recommends", "cron"]):
            r = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
            if r.returncode != 0:
                raise Unavailable(f"{' '.join(cmd[:2])} failed: {r.stderr.strip().splitlines()[-1:]}")
        self._check_not_running()

    def _check_not_running(self) -> None:
        if os.geteuid() != 0:
            raise Unavailable("cron reads /etc/cron.d only as root")
        pidfile = Path("/run/crond.pid")
        if pidfile.exists():
            try:
                pid = int(pidfile.read_text().split()[0])
                os.kill(pid, 0)
            except (ValueError, IndexError, ProcessLookupError):
                return
            raise Unavailable(f"a cron daemon already runs (pid {pid}); stop it to measure cron alone")

    def start(self, jobs: list[Job], work: Path, *, max_concurrent: int) -> subprocess.Popen[bytes]:
        lines = [f"{j.minute} {j.hour} * * * root {shlex.join(j.argv)}" for j in jobs]
        self.CRON_D.write_text("SHELL=/bin/sh\n" + "\n".join(lines) + "\n")
        self.CRON_D.chmod(0o644)
        cron = shutil.which("cron") or "/usr/sbin/cron"
        return _quiet([cron, "-f", "-L", "0"], env=dict(os.environ, TZ="UTC"))

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        super().stop(proc)
        self.CRON_D.unlink(missing_ok=True)


# -- the PyPI peers, in their own virtualenv ---------------------------------------------------

def peer_venv() -> Path:
    venv = CACHE / "peers-venv"
    py = venv / "bin" / "python"
    marker = venv / "pins.txt"
    if py.exists() and marker.exists() and marker.read_text() == "\n".join(PEER_PINS):
        return venv
    shutil.rmtree(venv, ignore_errors=True)
    venv.parent.mkdir(parents=True, exist_ok=True)
    for cmd in ([PY, "-m", "venv", str(venv)], [str(py), "-m", "pip", "install", "-q", *PEER_PINS]):
        r = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if r.returncode != 0:
            raise Unavailable(f"{' '.join(cmd[-3:])} failed: {r.stderr.strip().splitlines()[-1:]}")
    marker.write_text("\n".join(PEER_PINS))
    return venv


class Yacron(Peer):
    name = "yacron"
    seconds = False

    def setup(self) -> None:
        self.exe = str(peer_venv() / "bin" / "yacron")

    def write(self, jobs: list[Job], work: Path, *, max_concurrent: int = 0) -> Path:
        path = work / "yacron.yaml"
        out = ["jobs:"]
        for j in jobs:
            # strictyaml (yacron's parser) refuses flow style: block lists only.
            out += [f"  - name: {j.name}", "    command:", *(f"      - {shlex.quote(a)}" for a in j.argv),
                    f"    schedule: '{j.minute} {j.hour} * * *'", "    captureStdout: false",
                    "    captureStderr: false", "    concurrencyPolicy: Allow"]
        path.write_text("\n".join(out) + "\n")
        return path

    def start(self, jobs: list[Job], work: Path, *, max_concurrent: int) -> subprocess.Popen[bytes]:
        return _quiet([self.exe, "-c", str(self.write(jobs, work))])

    def validate(self, jobs: list[Job], work: Path) -> list[str]:
        return [self.exe, "-v", "-c", str(self.write(jobs, work))]

    def help(self) -> list[str]:
        return [self.exe, "--help"]


class APScheduler(Peer):
    name = "APScheduler"

    def setup(self) -> None:
        self.py = str(peer_venv() / "bin" / "python")

    def write(self, jobs: list[Job], work: Path) -> Path:
        path = work / "apscheduler.json"
        path.write_text(json.dumps({"workers": 10, "jobs": [
            {"id": j.name, "second": j.second or "0", "minute": j.minute, "hour": j.hour, "argv": list(j.argv)}
            for j in jobs]}))
        return path

    def start(self, jobs: list[Job], work: Path, *, max_concurrent: int) -> subprocess.Popen[bytes]:
        return _quiet([self.py, str(HERE / "apscheduler_driver.py"), "run", str(self.write(jobs, work))])

    def validate(self, jobs: list[Job], work: Path) -> list[str]:
        return [self.py, str(HERE / "apscheduler_driver.py"), "load", str(self.write(jobs, work))]


ALL: list[Peer] = [Cronpy(), DebianCron(), Yacron(), APScheduler()]
