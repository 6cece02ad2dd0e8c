"""Where things are: the jobs file and the state dir, resolved the same way by every command.

Kept apart from config.py so that `history`, `show` and completion need neither the
validator nor the schedule code; PyYAML is imported only when a file must be read.
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path
from typing import Any, Mapping


def job_names(path: str | os.PathLike[str]) -> list[str]:
    """Return the job names in a jobs file without validating it (for shell completion)."""
    raw = _read_yaml(Path(path))
    jobs = raw.get("jobs") if isinstance(raw, dict) else None
    return [str(n) for n in jobs] if isinstance(jobs, dict) else []


def find_jobs_file(option: str | None, env: Mapping[str, str] = os.environ) -> Path:
    """Return the jobs file: `-f/--file`, then $CRONPY_FILE, then ./jobs.yaml."""
    return Path(option or env.get("CRONPY_FILE") or "jobs.yaml")


def resolve_state_dir(
    option: str | None, file_state_dir: Path | None, env: Mapping[str, str] = os.environ
) -> Path:
    """Return the state dir: --state-dir, $CRONPY_STATE_DIR, the file's `state_dir`,
    $STATE_DIRECTORY (systemd's StateDirectory=), $XDG_STATE_HOME/cronpy, ~/.local/state/cronpy."""
    if option:
        return Path(option).expanduser()
    if env.get("CRONPY_STATE_DIR"):
        return Path(env["CRONPY_STATE_DIR"]).expanduser()
    if file_state_dir is not None:
        return file_state_dir
    if env.get("STATE_DIRECTORY"):
        # systemd passes a colon-separated list when the unit names several directories.
        return Path(env["STATE_DIRECTORY"].split(":")[0])
    xdg = env.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(xdg) / "cronpy"


def ensure_state_dir(path: Path) -> Path:
    """Create the state dir if needed and check it is a writable directory; a UsageError
    (exit 2, naming the dir and the fix) otherwise, never an OSError traceback."""
    from cronpy.errors import UsageError

    hint = ("choose a writable one with --state-dir, $CRONPY_STATE_DIR or the file's state_dir;"
            " under systemd, StateDirectory= provides /var/lib/cronpy")
    try:
        private_dir(path)  # created private (0700), as the runner would: no "made private" warning later
    except OSError as exc:
        raise UsageError(f"state dir {path}: cannot create it: {exc.strerror or exc} ({hint})") from None
    if not path.is_dir():
        raise UsageError(f"state dir {path}: not a directory ({hint})")
    if not os.access(path, os.W_OK | os.X_OK):
        raise UsageError(f"state dir {path}: not writable by this user ({hint})")
    return path


def is_postgres_url(url: str) -> bool:
    return url.startswith(("postgresql://", "postgres://"))


def resolve_store(option: str | None, file_store: str | None, env: Mapping[str, str] = os.environ) -> str | None:
    """Return the store URL: --store, $CRONPY_STORE, the file's `store`; None means the SQLite
    history in the state dir."""
    return option or env.get("CRONPY_STORE") or file_store or None


@functools.cache  # compiled when a file is first read for it
def _setting_line(key: str) -> re.Pattern[str]:
    """A top-level `key: value` line with a plain or quoted value and nothing YAML-special."""
    return re.compile(rf"""^{key}:[ \t]+(?:"([^"\\]*)"|'([^']*)'|([^\s#'"&*!|>{{\[][^#\n]*?))[ \t]*(?:#.*)?$""",
                      re.MULTILINE)


def file_setting(path: Path, key: str) -> str | None:
    """Return one top-level string setting of a jobs file (`state_dir`, `store`) without
    validating the rest.

    `history`, `show` and `stats` start faster without PyYAML (~30 ms), so a plain top-level
    line is read directly; anything less plain goes through the YAML parser.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    # Only where the name stands as a key: a job named `restore` must not cost a YAML parse.
    if not re.search(rf"""(?:^|[{{,\s])["']?{key}["']?\s*:""", text, re.MULTILINE):
        return None
    lines = list(_setting_line(key).finditer(text))
    block_style = not re.search(rf"^\s*[{{\[]|^{key}:\s*$|^---", text, re.MULTILINE)
    if len(lines) == 1 and block_style:
        return next(g for g in lines[0].groups() if g is not None) or None
    raw = _parse_yaml(text)
    if isinstance(raw, dict) and isinstance(raw.get(key), str):
        return str(raw[key]) or None
    return None


def file_state_dir(path: Path) -> Path | None:
    """Return only the `state_dir` a jobs file names (resolved), without validating the rest."""
    value = file_setting(path, "state_dir")
    if not value:
        return None
    return (path.resolve().parent / os.path.expanduser(value)).resolve()


def _read_yaml(path: Path) -> Any:
    """The file's data, or None if it cannot be read or parsed (callers fall back quietly)."""
    try:
        return _parse_yaml(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError):
        return None


def _parse_yaml(text: str) -> Any:
    import yaml

    from cronpy.errors import ConfigError
    from cronpy.safeyaml import compose_node

    # The C-accelerated *safe* loader when libyaml is there; never a full loader. Composed by
    # safeyaml: libyaml's own composer segfaulted on deep nesting (`history -f`, completion).
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)(text)
    try:
        node = compose_node(loader, "jobs file")
        return None if node is None else loader.construct_document(node)
    except (yaml.YAMLError, ConfigError, ValueError, TypeError):
        return None
    finally:
        loader.dispose()


# The state dir holds job output (which may hold secrets), so it and everything in it are
# private to the runner's user whatever the umask: 0700 directories, 0600 files.
PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600


def private_dir(path: Path) -> None:
    """Create directory `path` (and missing parents, under the umask) as 0700."""
    try:
        path.mkdir(mode=PRIVATE_DIR_MODE, parents=True)
    except FileExistsError:
        pass
    else:
        os.chmod(path, PRIVATE_DIR_MODE)  # mkdir's mode is masked by the umask


def create_private_file(path: Path) -> None:
    """Create `path` empty as 0600 if it does not exist, so that what opens it next (SQLite,
    which gives its -wal and -shm the database's mode) finds it private."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, PRIVATE_FILE_MODE))
    except FileExistsError:
        pass


def write_private(path: Path, text: str) -> None:
    """Write `text` to `path` atomically (a temporary file, then rename) as a 0600 file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{id(text)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, PRIVATE_FILE_MODE)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def secure_state_dir(state_dir: Path) -> list[str]:
    """Make an existing state dir private again: itself and its subdirectories 0700, its files
    0600 (a state dir made by an older cronpy, or by hand, was 0755 with 0644 files).

    Returns what it changed, for the log; entries it does not own are left alone.
    """
    fixed: list[str] = []
    uid = os.geteuid()

    def fix(p: Path, mode: int) -> None:
        try:
            st = os.lstat(p)
            if st.st_uid == uid and (st.st_mode & 0o777) & ~mode:
                os.chmod(p, mode)
                fixed.append(f"{p.name} {st.st_mode & 0o777:o}->{mode:o}")
        except OSError:
            pass  # gone meanwhile, or not ours: nothing to fix

    if not state_dir.is_dir():
        return fixed
    fix(state_dir, PRIVATE_DIR_MODE)
    for top in [state_dir, *(p for p in state_dir.iterdir() if p.is_dir() and not p.is_symlink())]:
        if top != state_dir:
            fix(top, PRIVATE_DIR_MODE)
        for entry in top.iterdir():
            if entry.is_file() and not entry.is_symlink():
                fix(entry, PRIVATE_FILE_MODE)
    return fixed
