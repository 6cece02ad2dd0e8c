"""Shell completion for bash, zsh and fish, answered from `cronpy.fast.SPEC` without typer.

Protocol (what the scripts below do): the shell runs `cronpy` once per Tab with
`_CRONPY_COMPLETE=<shell>`, the words before the cursor (without `cronpy`) as arguments and the
word being completed in `_CRONPY_INCOMPLETE`. cronpy prints one candidate a line, as
`value<TAB>description` for zsh and fish, or the single line `::files::` when the shell should
complete a path itself.
"""

from __future__ import annotations

import os
import sys

from cronpy.fast import (
    DIR, FILE, FLAG, GLOBAL_OPTS, JOB, LOG_FORMATS, SHELLS, SPEC, STATUSES, SHELL, LOGFMT, STATUS, ZONE, Cmd,
)

FILES = "::files::"


def candidates(words: list[str], incomplete: str, env: dict[str, str] | None = None) -> list[tuple[str, str]]:
    """(value, description) pairs completing `incomplete` after `words`."""
    env = dict(os.environ) if env is None else env
    cmd: Cmd | None = None
    rest: list[str] = []
    for i, w in enumerate(words):
        if not w.startswith("-"):
            cmd = SPEC.get(w)
            rest = words[i + 1:]
            break
    if cmd is None:
        if incomplete.startswith("-"):
            return [(o, "") for o in GLOBAL_OPTS if o.startswith(incomplete)]
        return [(c.name, c.help) for c in SPEC.values() if c.name.startswith(incomplete)]
    by_name = {n: o for o in cmd.opts for n in o.names}
    # Walk the words: which option expects a value, how many arguments were given.
    expecting: str | None = None
    nargs = 0
    file_opt: str | None = None
    used: set[str] = set()
    for w in rest:
        if expecting is not None:
            if expecting == FILE and file_opt is None:
                file_opt = w
            expecting = None
            continue
        opt = by_name.get(w.split("=", 1)[0])
        if opt is not None:
            used.add(opt.key)
            if opt.kind != FLAG and "=" not in w:
                expecting = opt.kind if opt.names[0] != "--file" else FILE
            elif opt.names[0] == "--file" and "=" in w:
                file_opt = w.split("=", 1)[1]
        elif not w.startswith("-"):
            nargs += 1
    if expecting is not None:
        kind = expecting
    elif incomplete.startswith("-"):
        return [(n, "") for o in cmd.opts if o.key not in used for n in (*o.names, )
                if n.startswith(incomplete) and n.startswith("--")] + (
            [("--help", "")] if "--help".startswith(incomplete) else [])
    elif nargs < len(cmd.args):
        kind = cmd.args[nargs][1]
    else:
        return []
    return _values(kind, incomplete, file_opt or env.get("CRONPY_FILE") or "jobs.yaml")


def _values(kind: str, incomplete: str, jobs_file: str) -> list[tuple[str, str]]:
    if kind in (FILE, DIR):
        return [(FILES, "")]
    if kind == JOB:
        return [(n, "job") for n in job_names(jobs_file) if n.startswith(incomplete)]
    if kind == STATUS:
        return [(s, "") for s in STATUSES if s.startswith(incomplete)]
    if kind == SHELL:
        return [(s, "") for s in SHELLS if s.startswith(incomplete)]
    if kind == LOGFMT:
        return [(s, "") for s in LOG_FORMATS if s.startswith(incomplete)]
    if kind == ZONE:
        return [(z, "") for z in sorted(_zones()) if z.startswith(incomplete)]
    return []


_KEY = r"""(?:"([^"\\]+)"|'([^']+)'|([^\s#'"{}\[\],&*!|>%@`:][^\s:#]*))"""


def job_names(path: str) -> list[str]:
    """The job names of a jobs file, for completion. A plain block-style `jobs:` mapping is read
    line by line (PyYAML's import alone is ~10 ms of a Tab); anything else is parsed as YAML."""
    import re

    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read(1 << 20)
    except (OSError, UnicodeDecodeError):
        return []
    lines = text.splitlines()
    plain = "---" not in text and "\t" not in text
    start = next((i for i, line in enumerate(lines) if re.fullmatch(r"jobs:[ ]*(#.*)?", line)), None)
    if plain and start is not None:
        names: list[str] = []
        indent: str | None = None
        ok = True
        for line in lines[start + 1:]:
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            if not line.startswith(" "):
                break  # the next top-level key
            lead = line[:len(line) - len(line.lstrip(" "))]
            if indent is None:
                indent = lead
            if lead != indent:
                continue  # a job's own keys, deeper
            m = re.match(_KEY + r"[ ]*:(?:[ ]|$)", line[len(lead):])
            if m is None:
                ok = False  # not a plain mapping key: let the YAML parser decide
                break
            names.append(next(g for g in m.groups() if g is not None))
        if ok and names:
            return names
    from cronpy.paths import job_names as parsed

    return parsed(path)


def _zones() -> set[str]:
    from zoneinfo import available_timezones

    return {z for z in available_timezones() if not z.startswith(("posix/", "right/"))} | {"UTC"}


def complete(shell: str, words: list[str], incomplete: str) -> int:
    out = candidates(words, incomplete)
    lines = []
    for value, desc in out:
        if value == FILES or shell == "bash" or not desc:
            lines.append(value)
        else:
            lines.append(f"{value}\t{desc}")
    if lines:
        sys.stdout.write("\n".join(lines) + "\n")
    return 0


BASH = r"""# bash completion for cronpy: source it, or put it in
# ~/.local/share/bash-completion/completions/cronpy (generated by `cronpy completion bash`)
_cronpy() {
    local cur="${COMP_WORDS[COMP_CWORD]}" IFS=$'\n'
    local out
    out=$(_CRONPY_COMPLETE=bash _CRONPY_INCOMPLETE="$cur" cronpy "${COMP_WORDS[@]:1:COMP_CWORD-1}" 2>/dev/null)
    if [[ "$out" == "::files::" ]]; then
        COMPREPLY=($(compgen -f -- "$cur"))
    else
        COMPREPLY=($out)
    fi
}
complete -o default -o bashdefault -F _cronpy cronpy
"""

ZSH = r"""#compdef cronpy
# zsh completion for cronpy: put it in a directory of your $fpath as _cronpy
# (generated by `cronpy completion zsh`); it completes on the first Tab.
_cronpy() {
    local -a lines values
    local line
    lines=("${(@f)$(_CRONPY_COMPLETE=zsh _CRONPY_INCOMPLETE="${words[CURRENT]}" cronpy "${(@)words[2,CURRENT-1]}" 2>/dev/null)}")
    if [[ "${lines[1]}" == "::files::" ]]; then
        _files
        return
    fi
    for line in "${lines[@]}"; do
        [[ -z "$line" ]] && continue
        if [[ "$line" == *$'\t'* ]]; then
            values+=("${${line%%$'\t'*}//:/\\:}:${line#*$'\t'}")
        else
            values+=("${line//:/\\:}")
        fi
    done
    (( ${#values} )) && _describe -t values 'cronpy' values
}
# Autoloaded from $fpath this file is the completion function itself, so the first Tab
# completes; sourced, it registers the function.
if [[ "${funcstack[1]}" == "_cronpy" ]]; then
    _cronpy "$@"
else
    compdef _cronpy cronpy
fi
"""

FISH = r"""# fish completion for cronpy: put it in ~/.config/fish/completions/cronpy.fish
# (generated by `cronpy completion fish`); cronpy runs once per Tab.
function __cronpy_complete
    set -lx _CRONPY_COMPLETE fish
    set -lx _CRONPY_INCOMPLETE (commandline -ct)
    set -l words (commandline -cop)
    set -l out (cronpy $words[2..-1] 2>/dev/null)
    if test "$out" = "::files::"
        __fish_complete_path (commandline -ct)
    else
        printf '%s\n' $out
    end
end
complete -c cronpy -f -a '(__cronpy_complete)'
"""

SCRIPTS = {"bash": BASH, "zsh": ZSH, "fish": FISH}
FILE_NAMES = {"bash": "cronpy.bash", "zsh": "_cronpy", "fish": "cronpy.fish"}
