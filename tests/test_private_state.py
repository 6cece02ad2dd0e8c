"""The state dir is private to the runner's user whatever the umask, checked by a second real
user; `cronpy trigger` treats a hang-up as a stop request and records the run."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterator

import pytest
from conftest import wait_for

OTHER_USER = "nobody"


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory every user may enter (pytest's own tmp dir is 0700 to root, which would
    make the second user's failure prove nothing)."""
    d = Path(tempfile.mkdtemp(prefix="cronpy-perm-", dir="/tmp"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def as_other_user(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["setpriv", "--reuid", OTHER_USER, "--regid", "nogroup", "--clear-groups", *argv],
                          capture_output=True, text=True, timeout=30)


def cronpy_with_umask(umask: int, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRONPY_")}
    return subprocess.run([sys.executable, "-m", "cronpy", *args], cwd=cwd, env=env, text=True, capture_output=True,
                          timeout=60, preexec_fn=lambda: os.umask(umask) and None)


def modes(state: Path) -> dict[str, str]:
    out = {}
    for p in [state, *state.rglob("*")]:
        out[str(p.relative_to(state))] = oct(stat.S_IMODE(p.stat().st_mode))
    return out


needs_root = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                                reason="needs root and setpriv to act as a second user")


@needs_root
@pytest.mark.parametrize("umask", [0o022, 0o000])
def test_another_user_cannot_read_the_history_or_any_state_file(shared_dir: Path, umask: int) -> None:
    assert as_other_user("true").returncode == 0, "cannot act as nobody"
    (shared_dir / "jobs.yaml").write_text(
        "state_dir: state\njobs:\n  leak: {schedule: '* * * * * *', command: 'echo token=$(echo s3cr3t)-env-value'}\n")
    (shared_dir / "jobs.yaml").chmod(0o644)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRONPY_")}
    log = shared_dir / "run.log"
    with open(log, "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "cronpy", "run", "jobs.yaml"], cwd=shared_dir, env=env,
                                stdout=subprocess.DEVNULL, stderr=err, preexec_fn=lambda: os.umask(umask) and None)
    state = shared_dir / "state"
    try:
        # A runner with its WAL, shm, lock, holder and status files all present.
        assert wait_for(lambda: all((state / n).exists() for n in
                                    ("history.db-wal", "history.db-shm", "runner.json", "locks/scheduler.lock")),
                        timeout=20), log.read_text()
        def leaked() -> bool:
            with sqlite3.connect(state / "history.db", timeout=10) as con:
                return bool(con.execute("SELECT 1 FROM runs WHERE output LIKE '%s3cr3t-env-value%'").fetchall())

        assert wait_for(leaked, timeout=20)  # the secret is in there, for the other user to try
        seen = modes(state)
        for name, mode in seen.items():
            assert mode == ("0o700" if (state / name).is_dir() else "0o600"), seen
        for path in [state / "history.db", state / "history.db-wal", state / "runner.json",
                     state / "locks" / "scheduler.lock", state / "locks" / "scheduler.holder"]:
            result = as_other_user("cat", str(path))
            assert result.returncode != 0 and "Permission denied" in result.stderr, path
        assert as_other_user("ls", str(state)).returncode != 0
        grep = as_other_user("grep", "-r", "s3cr3t", str(shared_dir))
        assert "s3cr3t-env-value" not in grep.stdout
    finally:
        proc.terminate()
        proc.wait(30)
    assert proc.returncode == 0


def test_a_state_dir_left_readable_is_made_private_on_open_and_said_so(tmp_path: Path) -> None:
    (tmp_path / "jobs.yaml").write_text("state_dir: state\njobs:\n  a: {command: 'echo hi'}\n")
    state = tmp_path / "state"
    assert cronpy_with_umask(0o022, "trigger", "a", cwd=tmp_path).returncode == 0
    # As an older cronpy (or a careless restore) left it: 0755 and 0644.
    for p in [state, state / "locks"]:
        p.chmod(0o755)
    for p in [state / "history.db", state / "locks" / "job-a.lock"]:
        p.chmod(0o644)
    result = cronpy_with_umask(0o022, "trigger", "a", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "made private to this user" in result.stderr and "history.db 644->600" in result.stderr
    assert set(modes(state).values()) == {"0o700", "0o600"}
    with sqlite3.connect(state / "history.db") as con:
        assert con.execute("SELECT count(*) FROM runs").fetchone()[0] == 2


def test_trigger_treats_a_hang_up_as_a_stop_request_and_records_the_run(tmp_path: Path) -> None:
    (tmp_path / "jobs.yaml").write_text("state_dir: state\njobs:\n  slow: {command: 'sleep 300', kill_grace: 2s}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRONPY_")}
    proc = subprocess.Popen([sys.executable, "-m", "cronpy", "trigger", "slow"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    db = tmp_path / "state" / "history.db"

    def status() -> list[tuple[str, int | None]]:
        if not db.exists():
            return []
        with sqlite3.connect(db, timeout=10) as con:
            try:
                return con.execute("SELECT status, pid FROM runs").fetchall()
            except sqlite3.OperationalError:
                return []

    try:
        assert wait_for(lambda: any(pid for _, pid in status()), timeout=20)
        (_, job_pid), = status()
        proc.send_signal(signal.SIGHUP)  # what closing the SSH session sends
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != -signal.SIGHUP and proc.returncode != 128 + signal.SIGHUP  # killed outright before
    assert "received SIGHUP" in err
    assert status() == [("interrupted", job_pid)]
    assert not Path(f"/proc/{job_pid}").exists() or "Z" in Path(f"/proc/{job_pid}/stat").read_text().split()[2]
