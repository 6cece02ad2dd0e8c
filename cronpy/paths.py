"""Where things are: the jobs file and the state dir, resolved the same way by every command.

Kept apart from config.py so that `history`, `show` and completion need neither the
validator nor the schedule code; PyYAML is imported only when a file must be read.
"""

from __future__ import annotations

import os
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


def file_state_dir(path: Path) -> Path | None:
    """Return only the `state_dir` a jobs file names (resolved), without validating the rest."""
    raw = _read_yaml(path)
    if isinstance(raw, dict) and isinstance(raw.get("state_dir"), str):
        return (path.resolve().parent / os.path.expanduser(raw["state_dir"])).resolve()
    return None


def _read_yaml(path: Path) -> Any:
    """The file's data, or None if it cannot be read or parsed (callers fall back quietly)."""
    import yaml

    # The C-accelerated *safe* loader when libyaml is there; never a full loader.
    safe_loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        return yaml.load(path.read_text(encoding="utf-8"), Loader=safe_loader)
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return None
