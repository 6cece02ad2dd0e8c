"""Write the shell completion scripts under completions/: `python -m cronpy._completions DIR`.

The scripts only call back into `cronpy` (the protocol of cronpy.completion), so they stay
valid as commands and options change; the test suite fails if the committed ones are stale.
"""

from __future__ import annotations

import sys
from pathlib import Path

from cronpy.completion import FILE_NAMES, SCRIPTS


def scripts() -> dict[str, str]:
    """Return {file name: script} for bash, zsh and fish."""
    return {FILE_NAMES[shell]: text for shell, text in SCRIPTS.items()}


def main(argv: list[str]) -> int:
    out = Path(argv[0] if argv else "completions")
    out.mkdir(parents=True, exist_ok=True)
    for name, text in scripts().items():
        (out / name).write_text(text)
        print(out / name)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
