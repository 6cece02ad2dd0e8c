"""The `cronpy` entry point, and its fast path.

Importing typer (with click and its completion machinery) costs ~40 ms of a ~100 ms start;
the service layer (runner, locks, integrations, the schedule parser) more. The read-only commands and
shell completion need neither, so `main` answers them here, from `SPEC`, a plain table of every
command's options:

- completion (`_CRONPY_COMPLETE=bash|zsh|fish`, the protocol of the scripts `cronpy completion
  SHELL` prints) reads only `SPEC` and, for job names, the jobs file;
- `history`, `show`, `stats` and `list` are parsed here and run `cronpy.reads`, which the Typer
  commands call too, so both paths behave the same;
- `cronpy --help` and `cronpy CMD --help` print the app's own help texts, rendered into
  cronpy/_help.py by `python -m cronpy._helpgen` (a test fails when they drift);
- anything this parser does not fully understand (an unknown option, a bad number, any other
  command, help on a terminal under 80 columns) goes to the Typer app in cronpy.cli, which
  prints the usual usage errors.

How a command joins: add its `Cmd` to `SPEC` (a test checks that `SPEC` matches the Typer app,
option for option). For the fast path too, add a function taking the parsed options as keyword
arguments to `FAST` (it must not import typer, nor cronpy.service unless it is `run`: the
runner pays that import anyway, and keeping typer out saves a long-lived process 5.4 MB).
"""

from __future__ import annotations

import gc
import os
import sys

# typing is not imported at run time (a few ms of the completion budget); mypy reads this.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable

# Option value kinds, for parsing and for completion.
FLAG, FILE, DIR, URL, JOB, STATUS, ZONE, INT, FLOAT, TEXT, SHELL, LOGFMT = (
    "flag", "file", "dir", "url", "job", "status", "zone", "int", "float", "text", "shell", "logfmt")

STATUSES = ("running", "success", "failed", "timeout", "interrupted", "skipped", "cancelled")
SHELLS = ("bash", "zsh", "fish")
LOG_FORMATS = ("text", "json")


class Opt:
    """One option: its names (the long one first), the kind of its value (FLAG: none) and the
    keyword argument it fills (default: the long name with `-` as `_`)."""

    __slots__ = ("names", "kind", "key")

    def __init__(self, names: tuple[str, ...], kind: str = FLAG, dest: str = "") -> None:
        self.names = names
        self.kind = kind
        self.key = dest or names[0].lstrip("-").replace("-", "_")


class Cmd:
    """One command: its positional arguments (name, kind), options, and which arguments must be
    given. Plain classes, not dataclasses: importing dataclasses costs completion ~5 ms."""

    __slots__ = ("name", "help", "args", "opts", "required")

    def __init__(self, name: str, help: str, args: tuple[tuple[str, str], ...] = (), opts: tuple[Opt, ...] = (),
                 required: tuple[str, ...] = ()) -> None:
        self.name = name
        self.help = help
        self.args = args
        self.opts = opts
        self.required = required


F = Opt(("--file", "-f"), FILE)
SD = Opt(("--state-dir",), DIR)
ST = Opt(("--store",), URL)
JSON = Opt(("--json",), FLAG, "as_json")
WIDE = Opt(("--wide", "-w"), FLAG)
LOGF = Opt(("--log-format",), LOGFMT)
WHERE = (F, SD, ST)

SPEC: dict[str, Cmd] = {c.name: c for c in (
    Cmd("run", "Run the jobs on their schedules, in the foreground", (("jobs_file", FILE),), (
        *WHERE, Opt(("--watch",)), Opt(("--metrics-port",), INT), Opt(("--metrics-address",), TEXT),
        Opt(("--verbose", "-v")), LOGF)),
    Cmd("trigger", "Run a job now in the foreground", (("name", JOB),), (
        *WHERE, Opt(("--wait",), FLOAT), Opt(("--chain",)), JSON, LOGF), required=("name",)),
    Cmd("history", "Show recorded runs, newest first", (("name", JOB),), (
        Opt(("--status", "-s"), STATUS), Opt(("--since",), TEXT), Opt(("--limit", "-n"), INT), *WHERE, JSON, WIDE)),
    Cmd("show", "Show one run with its error and output", (("run_id", INT),), (*WHERE, JSON), required=("run_id",)),
    Cmd("stats", "Per-job figures and health", (("name", JOB),), (Opt(("--since",), TEXT), *WHERE, JSON, WIDE)),
    Cmd("list", "List the jobs with their next run", (), (*WHERE, JSON, WIDE)),
    Cmd("next", "Print the next fire times of a job", (("name", JOB),), (
        Opt(("--limit", "-n", "--count"), INT), Opt(("--from",), TEXT, "from_"), Opt(("--expr",), TEXT),
        Opt(("--tz",), ZONE), Opt(("--name",), TEXT, "hash_name"), *WHERE, JSON)),
    Cmd("logs", "Print the output of a run", (("target", JOB),), (
        Opt(("--follow", "-f")), Opt(("--file",), FILE), SD, ST), required=("target",)),
    Cmd("import-crontab", "Translate crontabs into a jobs file", (("files", FILE),), (
        Opt(("--system",)), Opt(("--output", "-o"), FILE), Opt(("--best-effort",)), Opt(("--tz",), ZONE),
        Opt(("--smtp",), TEXT))),
    Cmd("pause", "Stop the schedule from firing a job", (("name", JOB),), (*WHERE, JSON), required=("name",)),
    Cmd("resume", "Let the schedule fire a job again", (("name", JOB),), (*WHERE, JSON), required=("name",)),
    Cmd("cancel", "Stop a run in progress", (("target", JOB),), (*WHERE, JSON), required=("target",)),
    Cmd("status", "Who schedules, what runs, what is due", (), (*WHERE, JSON, WIDE)),
    Cmd("recover", "Salvage a damaged history database", (), (F, SD)),
    Cmd("web", "Serve a read-only dashboard", (), (
        *WHERE, Opt(("--host",), TEXT), Opt(("--port",), INT), Opt(("--token",), TEXT))),
    Cmd("schema", "Print the JSON Schema of the jobs file"),
    Cmd("validate", "Check a jobs file", (("jobs_file", FILE),), (F, JSON)),
    Cmd("completion", "Print the shell completion script", (("shell", SHELL),), (), required=("shell",)),
)}
GLOBAL_OPTS = ("--help", "--version")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("cronpy-runner")
    except PackageNotFoundError:  # run from a checkout without installing
        return "unknown"


# --- parsing ----------------------------------------------------------------------------------

Value = str | int | float | bool | None


def parse(cmd: Cmd, argv: list[str]) -> dict[str, Value] | None:
    """The keyword arguments of `argv` for `cmd`, or None for anything not plainly understood
    (then the Typer app parses it and reports the error)."""
    by_name = {n: o for o in cmd.opts for n in o.names}
    out: dict[str, Value] = {}
    positional: list[str] = []
    i = 0
    only_args = False
    while i < len(argv):
        a = argv[i]
        i += 1
        if only_args or a == "-" or not a.startswith("-"):
            positional.append(a)
            continue
        if a == "--":
            only_args = True
            continue
        name, eq, inline = a.partition("=") if a.startswith("--") else (a, "", "")
        opt = by_name.get(name)
        if opt is None:
            return None  # --help, an unknown option, bundled short flags: Typer's business
        if opt.kind == FLAG:
            if eq:
                return None
            out[opt.key] = True
            continue
        if eq:
            raw = inline
        elif i < len(argv):
            raw = argv[i]
            i += 1
        else:
            return None
        value = _convert(opt.kind, raw)
        if value is None:
            return None
        out[opt.key] = value
    if len(positional) > len(cmd.args):
        return None
    for (name, kind), raw in zip(cmd.args, positional):
        value = _convert(kind, raw)
        if value is None:
            return None
        out[name] = value
    if any(r not in out for r in cmd.required):
        return None
    return out


def _convert(kind: str, raw: str) -> Value:
    if kind == INT:
        # Decimal digits in 1..10,000,000 only: anything else (0, a huge --limit or run id)
        # goes to Typer, which applies cli.py's bounds and prints their message.
        if not raw.isdigit() or len(raw) > 8 or not 1 <= int(raw) <= 10_000_000:
            return None
        return int(raw)
    if kind == FLOAT:
        try:
            return float(raw)
        except ValueError:
            return None
    return raw


# --- the fast commands ------------------------------------------------------------------------

def _history(**kw: Value) -> int:
    from cronpy import reads

    return reads.history(**kw)  # type: ignore[arg-type]


def _show(**kw: Value) -> int:
    from cronpy import reads

    return reads.show(**kw)  # type: ignore[arg-type]


def _stats(**kw: Value) -> int:
    from cronpy import reads

    return reads.stats(**kw)  # type: ignore[arg-type]


def _list(**kw: Value) -> int:
    from cronpy import reads

    return reads.list_jobs(**kw)  # type: ignore[arg-type]


def _run(*, jobs_file: str | None = None, file: str | None = None, state_dir: str | None = None,
         store: str | None = None, watch: bool = False, metrics_port: int | None = None,
         metrics_address: str = "127.0.0.1", verbose: bool = False, log_format: str = "text") -> int:
    """`cronpy run` as cli.run does it, without typer: a runner lives for months, and typer with
    click is 5.4 MB of its resident memory (issue #12's idle figure: 1,000 jobs, RSS)."""
    from pathlib import Path

    from cronpy import logfmt, reads, service
    from cronpy.errors import UsageError
    from cronpy.paths import ensure_state_dir, resolve_state_dir, resolve_store

    if log_format not in LOG_FORMATS:
        raise UsageError(f"--log-format: expected one of {', '.join(LOG_FORMATS)}, got {log_format!r}")
    logfmt.FORMAT = log_format
    if jobs_file is not None and file is not None and Path(jobs_file) != Path(file):
        raise UsageError(f"two jobs files given: {jobs_file} and -f {file}")
    path = reads.jobs_path(jobs_file or file)
    jobs = reads.load(path)
    if not resolve_store(store, jobs.store):
        ensure_state_dir(resolve_state_dir(state_dir, jobs.state_dir))
    return service.run(path, Path(state_dir) if state_dir else None, store=store, verbose=verbose, watch=watch,
                       metrics_port=metrics_port, metrics_address=metrics_address, jobs=jobs)


FAST: dict[str, Callable[..., int]] = {"history": _history, "show": _show, "stats": _stats, "list": _list,
                                       "run": _run}


def guarded(fn: Callable[[], int | None]) -> int:
    """Run a command body: a CronpyError becomes `Error: …` and its exit status; a closed pipe
    (`cronpy history | head`) ends quietly."""
    try:
        return fn() or 0
    except BrokenPipeError:
        # Python would complain again while flushing stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as exc:
        # cronpy.errors is imported only when something failed: `--help` never needs it.
        from cronpy.errors import CronpyError

        if not isinstance(exc, CronpyError):
            raise
        from cronpy.redact import redact_text

        # A store error may quote its URL: never print the password or a token in it.
        sys.stderr.write(f"Error: {redact_text(str(exc))}\n")
        return exc.exit_code


HELP_FLAGS = ("--help", "-h")


def terminal_columns(stream: Any = None) -> int:
    """The terminal's width as shutil.get_terminal_size finds it ($COLUMNS, then `stream`'s
    terminal, default stdout's, then 80) without importing shutil (bz2, lzma: ~5 ms).
    render.width uses it too."""
    try:
        columns = int(os.environ.get("COLUMNS", "0"))
    except ValueError:
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size((stream or sys.stdout).fileno()).columns
        except (AttributeError, OSError, ValueError):
            columns = 0
    return columns or 80


def help_text(argv: list[str]) -> str | None:
    """The text of `cronpy --help` / `cronpy CMD --help` (or -h), rendered from the Typer app into
    cronpy/_help.py (python -m cronpy._helpgen; a test keeps it current), or None for anything
    else, or a terminal narrower than the help was rendered for (the app then renders it)."""
    if not argv or argv[-1] not in HELP_FLAGS or len(argv) > 2 or (len(argv) == 2 and argv[0] not in SPEC):
        return None
    from cronpy._help import HELP, WIDTH

    return HELP.get(argv[0] if len(argv) == 2 else "") if terminal_columns(sys.__stdout__) >= WIDTH else None


def _write(text: str) -> int:
    sys.stdout.write(text)
    return 0


def main() -> None:
    argv = sys.argv[1:]
    if argv[:1] != ["run"]:
        # What this module answers itself (completion, help, the read-only commands) prints and
        # exits: no cyclic garbage collection, whose passes over what the imports create were
        # ~4 % of `stats` (10 M of 248 M instructions). Reference counting still frees memory.
        # Long-lived commands (run, web, logs -f, trigger) go to the Typer app, collector on.
        gc.disable()
    if os.environ.get("_CRONPY_COMPLETE") in SHELLS:
        from cronpy.completion import complete

        sys.exit(complete(os.environ["_CRONPY_COMPLETE"], argv, os.environ.get("_CRONPY_INCOMPLETE", "")))
    if argv in (["--version"], ["-V"]):
        sys.stdout.write(f"cronpy {_version()}\n")
        sys.exit(0)
    text = help_text(argv)
    if text is not None:
        sys.exit(guarded(lambda: _write(text)))
    if argv and argv[0] in FAST:
        params = parse(SPEC[argv[0]], argv[1:])
        if params is not None:
            fn = FAST[argv[0]]
            sys.exit(guarded(lambda: fn(**params)))
    gc.enable()
    from cronpy.cli import main as typer_main

    typer_main()
