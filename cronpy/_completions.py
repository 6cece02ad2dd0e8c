"""Write the shell completion scripts under completions/: `python -m cronpy._completions DIR`.

The scripts only call back into `cronpy` (typer's completion protocol), so they stay valid as
commands and options change; the test suite regenerates them and fails if the committed ones
are stale.
"""

from __future__ import annotations

import sys
from pathlib import Path

SHELLS = {"bash": "cronpy.bash", "zsh": "_cronpy", "fish": "cronpy.fish"}


def scripts() -> dict[str, str]:
    """Return {file name: script} for bash, zsh and fish."""
    from typer._completion_shared import get_completion_script

    return {
        name: get_completion_script(prog_name="cronpy", complete_var="_CRONPY_COMPLETE", shell=shell).rstrip() + "\n"
        for shell, name in SHELLS.items()
    }


def main(argv: list[str]) -> int:
    out = Path(argv[0] if argv else "completions")
    out.mkdir(parents=True, exist_ok=True)
    for name, text in scripts().items():
        (out / name).write_text(text)
        print(out / name)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
