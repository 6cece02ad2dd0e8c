"""Where things are: the jobs file and the state dir, resolved the same way by every command.

Kept apart from config.py so that `history`, `show` and completion need neither the
validator nor the schedule code; PyYAML is imported only when a file must be read.
"""

from __future__ import annotations

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
        path.mkdir(parents=True, exist_ok=True)
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


def _setting_line(key: str) -> re.Pattern[str]:
    """A top-level `key: value` line with a plain or quoted value and nothing YAML-special."""
    return re.compile(rf"""^{key}:[ \t]+(?:"([^"\\]*)"|'([^']*)'|([^\s#'"&*!|>{{\[][^#\n]*?))[ \t]*(?:#.*)?$""",
                      re.MULTILINE)


_SETTING_LINES = {key: _setting_line(key) for key in ("state_dir", "store")}


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
    lines = list(_SETTING_LINES[key].finditer(text))
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

    # The C-accelerated *safe* loader when libyaml is there; never a full loader.
    safe_loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        return yaml.load(text, Loader=safe_loader)
    except yaml.YAMLError:
        return None
