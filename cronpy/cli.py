"""The `cronpy` command: parse options, call one core function, render, map errors to exit codes.

The console script is cronpy.fast:main, which answers completion, the read-only commands and
`--help` (from this app's texts, rendered by cronpy._helpgen) without importing this module
(typer costs ~40 ms); everything else comes here. Heavy modules (the service layer, the runner) are imported inside the commands that need them.
"""

from __future__ import annotations

import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Callable, Optional

import typer

from cronpy import reads
from cronpy.errors import ConfigError, CronpyError, UsageError
from cronpy.fast import LOG_FORMATS, SHELLS, guarded

if TYPE_CHECKING:
    from cronpy.models import JobSet

app = typer.Typer(
    name="cronpy",
    no_args_is_help=True,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    add_completion=False,  # `cronpy completion SHELL` prints cronpy's own, faster scripts
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _complete_jobs(ctx: typer.Context, incomplete: str) -> list[str]:
    from cronpy.paths import job_names

    path = ctx.params.get("file") or ctx.params.get("jobs_file")
    return [n for n in job_names(reads.jobs_path(path)) if n.startswith(incomplete)]


FileOpt = Annotated[Optional[Path], typer.Option(
    "--file", "-f", help="Jobs file (default: $CRONPY_FILE, then ./jobs.yaml).", show_default=False,
    metavar="FILE")]
StateDirOpt = Annotated[Optional[Path], typer.Option(
    "--state-dir", help="History and locks (default: $CRONPY_STATE_DIR, the file's state_dir, "
    "$STATE_DIRECTORY, $XDG_STATE_HOME/cronpy).", show_default=False, metavar="DIR")]
StoreOpt = Annotated[Optional[str], typer.Option(
    "--store", help="A postgresql:// URL shared by a fleet of runners (default: $CRONPY_STORE, the file's "
    "store; without one, SQLite in the state dir).", show_default=False, metavar="URL")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON (one document on stdout).")]
WideOpt = Annotated[bool, typer.Option("--wide", "-w", help="Every column, with absolute times and zones.")]
NameArg = Annotated[str, typer.Argument(help="Job name.", autocompletion=_complete_jobs, show_default=False,
                                        metavar="NAME")]
SinceOpt = Annotated[Optional[str], typer.Option(
    "--since", help="Only runs started since: a duration back from now (7d, 12h) or an ISO date/time.",
    metavar="WHEN")]
LogFormatOpt = Annotated[str, typer.Option(
    "--log-format", help="Log lines as `text`, or `json`: one JSON object a line (time, level, message, job).",
    metavar="text|json")]


# Bounds of numeric arguments, so that a huge number is a usage error (exit 2), not an
# OverflowError from SQLite or a loop that never ends.
MAX_LIMIT = 10_000_000  #: `history --limit`
MAX_RUN_ID = 2**63 - 1  #: run ids are SQLite/PostgreSQL 64-bit integers


def _guard(fn: Callable[[], int | None]) -> None:
    """Run a command body, turning CronpyError into `Error: …` and its exit status."""
    code = guarded(fn)
    if code:
        raise typer.Exit(code)


def _str(p: Path | None) -> str | None:
    return str(p) if p is not None else None


def _file(positional: Path | None, option: Path | None) -> str | None:
    """The jobs file of `run`/`validate`: the positional argument or -f (not both differently)."""
    if positional is not None and option is not None and positional != option:
        raise UsageError(f"two jobs files given: {positional} and -f {option}")
    return _str(positional or option)


def _load(file: Path | str | None) -> JobSet:
    return reads.load(file)


def _check_state_dir(jobs: JobSet, state_dir: Path | None, store: str | None) -> None:
    """A state dir that cannot be created or written is a usage error (exit 2, no traceback):
    systemd must not restart a runner whose configuration is wrong (RestartPreventExitStatus=2)."""
    from cronpy.paths import ensure_state_dir, resolve_state_dir, resolve_store

    if resolve_store(store, jobs.store):
        return
    ensure_state_dir(resolve_state_dir(_str(state_dir), jobs.state_dir))


def _log_format(fmt: str) -> None:
    if fmt not in LOG_FORMATS:
        raise UsageError(f"--log-format: expected one of {', '.join(LOG_FORMATS)}, got {fmt!r}")
    from cronpy import logfmt

    logfmt.FORMAT = fmt


def _version(value: bool) -> None:
    if value:
        from cronpy.fast import _version as v

        sys.stdout.write(f"cronpy {v()}\n")
        raise typer.Exit(0)


@app.callback()
def _main(version: Annotated[bool, typer.Option(
        "--version", "-V", help="Print the version and exit.", callback=_version, is_eager=True)] = False) -> None:
    """A job runner driven by a declarative YAML jobs file. Every run is recorded in SQLite
    (or a fleet's PostgreSQL store).

    Conventions: the jobs file is -f FILE, then $CRONPY_FILE, then ./jobs.yaml; the history is
    --store URL or the state dir (--state-dir DIR, $CRONPY_STATE_DIR, the file's state_dir, ...).
    On a terminal tables fit its width (--wide: every column); piped, they are tab-separated;
    --json prints JSON. Exit statuses: 0 ok, 1 a job failed, 2 usage/file/state-dir error,
    75 locked elsewhere, 124 timed out.
    """


@app.command()
def run(
    jobs_file: Annotated[Optional[Path], typer.Argument(
        help="The jobs file (or -f; default: $CRONPY_FILE, then ./jobs.yaml).", show_default=False,
        metavar="[JOBS_FILE]")] = None,
    file: FileOpt = None,
    state_dir: StateDirOpt = None,
    store: StoreOpt = None,
    watch: Annotated[bool, typer.Option("--watch", help="Reload when the jobs file changes (as on SIGHUP).")] = False,
    metrics_port: Annotated[Optional[int], typer.Option(
        "--metrics-port", help="Serve Prometheus metrics on this port (needs the `metrics` extra).")] = None,
    metrics_address: Annotated[str, typer.Option("--metrics-address", help="Address for --metrics-port.")] = "127.0.0.1",
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log debug details.")] = False,
    log_format: LogFormatOpt = "text",
) -> None:
    """Run the jobs on their schedules, in the foreground, until SIGINT/SIGTERM.

    SIGHUP (or a change of the file, with --watch) reloads it without interrupting running
    jobs; an invalid file is rejected and the old jobs keep running. Several runners may share
    a state dir: one schedules, the others stand by and take over within a second. With
    --store postgresql://…, runners on many hosts share one schedule: the leader holds a
    lease, and a standby takes over within `leader_lease` of the leader's last renewal.

    Example: cronpy run jobs.yaml --watch
    """
    def body() -> int:
        from cronpy import service

        _log_format(log_format)
        path = reads.jobs_path(_file(jobs_file, file))
        jobs = _load(path)
        _check_state_dir(jobs, state_dir, store)
        return service.run(path, state_dir, store=store, verbose=verbose, watch=watch, jobs=jobs,
                           metrics_port=metrics_port, metrics_address=metrics_address)

    _guard(body)


@app.command()
def trigger(
    name: NameArg,
    file: FileOpt = None,
    state_dir: StateDirOpt = None,
    store: StoreOpt = None,
    wait: Annotated[float, typer.Option(
        "--wait", help="If the job is running elsewhere, wait up to this many seconds for it.")] = 0.0,
    chain: Annotated[bool, typer.Option("--chain", help="Then run the jobs `after:` it, as the runner would.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the run as JSON (the job's output goes to stderr).")]
    = False,
    log_format: LogFormatOpt = "text",
) -> None:
    """Run job NAME now in the foreground (with its retries, timeout and lock) and exit with its status.

    Exit status: the job's own, 124 on timeout, 75 if it is running elsewhere, 2 for an unknown name.

    Example: cronpy trigger backup -f jobs.yaml
    """
    def body() -> int:
        from cronpy import render, service

        _log_format(log_format)
        jobs = _load(file)
        _check_state_dir(jobs, state_dir, store)
        done: list[Any] = []
        code = service.trigger(jobs, name, state_dir, store=store, wait=wait, chain=chain,
                               report=done.append if as_json else None)
        if as_json:
            render.print_json(dict(done[-1].to_json(with_output=False), exit_status=code) if done
                              else {"job": name, "id": None, "status": None, "exit_status": code})
        return code

    _guard(body)


@app.command()
def history(
    name: Annotated[Optional[str], typer.Argument(help="Only this job.", autocompletion=_complete_jobs,
                                                  metavar="[NAME]")] = None,
    status: Annotated[Optional[str], typer.Option(
        "--status", "-s", help=f"Only runs with this status: {reads.STATUS_HELP}.", metavar="STATUS")] = None,
    since: SinceOpt = None,
    limit: Annotated[int, typer.Option("--limit", "-n", help="At most this many runs.", min=1, max=MAX_LIMIT)] = 50,
    file: FileOpt = None,
    state_dir: StateDirOpt = None,
    store: StoreOpt = None,
    as_json: JsonOpt = False,
    wide: WideOpt = False,
) -> None:
    """Show recorded runs, newest first (none yet: an empty answer, exit 0).

    Example: cronpy history backup --status failed --since 7d
    """
    _guard(lambda: reads.history(name, status=status, since=since, limit=limit, file=_str(file),
                                 state_dir=_str(state_dir), store=store, as_json=as_json, wide=wide))


@app.command()
def show(
    run_id: Annotated[int, typer.Argument(help="Run id, as `history` shows it.", show_default=False,
                                          metavar="RUN_ID", min=1, max=MAX_RUN_ID)],
    file: FileOpt = None,
    state_dir: StateDirOpt = None,
    store: StoreOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show one run with its error and the tail of its output.

    Example: cronpy show 42
    """
    _guard(lambda: reads.show(run_id, file=_str(file), state_dir=_str(state_dir), store=store, as_json=as_json))


@app.command()
def logs(
    target: Annotated[str, typer.Argument(help="A run id, or a job name (its latest run).",
                                          autocompletion=_complete_jobs, show_default=False, metavar="NAME|RUN_ID")],
    follow: Annotated[bool, typer.Option("--follow", "-f", help="While the run goes, print its output as it comes "
                                         "(like journalctl -f); exit when it ends.")] = False,
    # Here -f is --follow, as for tail and journalctl: the jobs file is --file only.
    file: Annotated[Optional[Path], typer.Option(
        "--file", help="Jobs file (default: $CRONPY_FILE, then ./jobs.yaml).", show_default=False,
        metavar="FILE")] = None,
    state_dir: StateDirOpt = None,
    store: StoreOpt = None,
) -> None:
    """Print the output of a run: whole while it runs and when kept (`output: keep`), else the
    tail the history keeps.

    Example: cronpy logs backup --follow
    """
    def body() -> int:
        from cronpy.outputs import show_logs

        out = sys.stdout.buffer

        def write(data: bytes) -> None:
            out.write(data)
            out.flush()

        h = reads.open_for_reading(_str(file), _str(state_dir), store)
        if h is None:
            from cronpy.errors import RunNotFound

            if target.isdigit():
                raise RunNotFound(int(target))
            reads.check_job_name(target, reads.file_job_names(_str(file)) or [])
            raise UsageError(f"no run of {target} recorded yet")
        with h:
            return show_logs(h, reads.state_dir_for_reading(_str(file), _str(state_dir)), target, follow_run=follow,
                             write=write, note=_note)

    _guard(body)


@app.command()
def stats(
    name: Annotated[Optional[str], typer.Argument(help="Only this job.", autocompletion=_complete_jobs,
                                                  metavar="[NAME]")] = None,
    since: SinceOpt = None,
    file: FileOpt = None,
    state_dir: StateDirOpt = None,
    store: StoreOpt = None,
    as_json: JsonOpt = False,
    wide: WideOpt = False,
) -> None:
    """Per job: health, runs (after retries) and attempts, durations, last and next run.

    Health comes from runs: healthy when >= 95 % of finished runs succeeded (after their
    retries), warning >= 80 %, else unhealthy; unknown for a job that never ran.

    Example: cronpy stats --since 30d
    """
    _guard(lambda: reads.stats(name, since=since, file=_str(file), state_dir=_str(state_dir), store=store,
                               as_json=as_json, wide=wide))


@app.command("list")
def list_jobs(
    file: FileOpt = None,
    state_dir: StateDirOpt = None,
    store: StoreOpt = None,
    as_json: JsonOpt = False,
    wide: WideOpt = False,
) -> None:
    """List the jobs with schedule, zone, state, next run and last status.

    Example: cronpy list -f jobs.yaml
    """
    _guard(lambda: reads.list_jobs(file=_str(file), state_dir=_str(state_dir), store=store, as_json=as_json,
                                   wide=wide))


@app.command("next")
def next_(
    name: Annotated[Optional[str], typer.Argument(help="Job name.", autocompletion=_complete_jobs,
                                                  metavar="[NAME]")] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", "--count", help="How many instants.", min=1,
                                       max=10000)] = 5,
    from_: Annotated[Optional[str], typer.Option("--from", help="Start after this ISO 8601 time (default: now).")] = None,
    expr: Annotated[Optional[str], typer.Option("--expr", help="A schedule not in any file, e.g. '0 3 * * 1-5'.")] = None,
    tz: Annotated[str, typer.Option("--tz", help="Zone for --expr.")] = "UTC",
    hash_name: Annotated[str, typer.Option(
        "--name", help="Job name that H in --expr hashes, to preview a job's hashed times.")] = "expr",
    file: FileOpt = None,
    state_dir: StateDirOpt = None,
    store: StoreOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Print the next fire times of a job (or of --expr), one ISO 8601 time with offset a line.

    This is the code the runner fires by. Without --from, an interval job continues the
    cadence recorded in the history (--state-dir/--store), as a runner started now would.

    Example: cronpy next backup -n 3 --from 2026-03-29T00:00:00+00:00
    """
    def body() -> None:
        from cronpy import render, service

        start = datetime.now(timezone.utc)
        if from_ is not None:
            try:
                start = datetime.fromisoformat(from_)
            except ValueError:
                raise UsageError(f"--from: expected an ISO 8601 time, got {from_!r}") from None
        if expr is not None:
            times, words = service.next_for_expr(expr, tz, start, limit, hash_name)
        elif name is not None:
            jobs = _load(file)
            if from_ is None:
                # The first instant as `list` shows it (recorded cadence), then the schedule.
                first = reads.next_runs_for(jobs, _str(state_dir), store).get(name)
                if first is not None:
                    start = first - timedelta(microseconds=1)
            times, words = service.next_for_job(jobs, name, start, limit)
        else:
            raise UsageError("give a job NAME or --expr")
        render.instants(times, as_json=as_json, description=words)

    _guard(body)


def _message(data: dict[str, Any], lines: str | list[str], as_json: bool) -> None:
    from cronpy import render

    render.message(data, lines, as_json=as_json)


@app.command()
def pause(name: NameArg, file: FileOpt = None, state_dir: StateDirOpt = None, store: StoreOpt = None,
          as_json: JsonOpt = False) -> None:
    """Stop the schedule from firing job NAME (a running runner notices at once); `trigger` still runs it.

    Example: cronpy pause backup
    """
    def body() -> None:
        from cronpy import service

        jobs = _load(file)
        _check_state_dir(jobs, state_dir, store)
        said = service.pause(jobs, name, state_dir, store)
        _message({"job": name, "paused": True, "message": said}, said, as_json)

    _guard(body)


@app.command()
def resume(name: NameArg, file: FileOpt = None, state_dir: StateDirOpt = None, store: StoreOpt = None,
           as_json: JsonOpt = False) -> None:
    """Let the schedule fire job NAME again.

    Example: cronpy resume backup
    """
    def body() -> None:
        from cronpy import service

        jobs = _load(file)
        _check_state_dir(jobs, state_dir, store)
        said = service.resume(jobs, name, state_dir, store)
        _message({"job": name, "paused": False, "message": said}, said, as_json)

    _guard(body)


@app.command()
def cancel(
    target: Annotated[str, typer.Argument(help="A job name (all its runs in progress) or a run id.",
                                          autocompletion=_complete_jobs, show_default=False, metavar="NAME|RUN_ID")],
    file: FileOpt = None,
    state_dir: StateDirOpt = None,
    store: StoreOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Stop a run in progress: SIGTERM to its process group, SIGKILL after the job's kill_grace.

    The run is recorded as cancelled and not retried. Exit status 1 if nothing was running.

    Example: cronpy cancel backup
    """
    def body() -> None:
        from cronpy import service

        jobs = _load(file)
        _check_state_dir(jobs, state_dir, store)
        said = service.cancel(jobs, target, state_dir, store)
        _message({"target": target, "messages": said}, said, as_json)

    _guard(body)


@app.command()
def status(file: FileOpt = None, state_dir: StateDirOpt = None, store: StoreOpt = None,
           as_json: JsonOpt = False, wide: WideOpt = False) -> None:
    """Which runner schedules (pid, host, since), runs in progress, next due runs, latest failures.

    Reads only the state dir (and a fleet's store), so it works beside a runner started by
    another user or unit. With a store it also lists the fleet and this host's connection.

    Example: cronpy status --state-dir /var/lib/cronpy
    """
    def body() -> int | None:
        from cronpy import render, service
        from cronpy.errors import EXIT_UNAVAILABLE

        st = service.status(file, state_dir, store)
        render.status(st, as_json=as_json, wide=wide)
        return EXIT_UNAVAILABLE if st.store_error else None  # shown, but not a healthy answer

    _guard(body)


@app.command("import-crontab")
def import_crontab(
    files: Annotated[list[str], typer.Argument(help="Crontab files; - reads standard input.", show_default=False,
                                               metavar="FILE...")],
    system: Annotated[bool, typer.Option("--system", help="The /etc/crontab and /etc/cron.d format: a user "
                                         "column after the time fields (the job runs as that user).")] = False,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write the jobs file here "
                                                   "(default: standard output).", show_default=False)] = None,
    best_effort: Annotated[bool, typer.Option("--best-effort", help="Write the jobs file even when some lines "
                                              "cannot be translated exactly (they are still listed).")] = False,
    tz: Annotated[Optional[str], typer.Option("--tz", help="The zone cron ran in (default: this host's).",
                                              show_default=False)] = None,
    smtp: Annotated[str, typer.Option("--smtp", help="The SMTP server that MAILTO mail goes through.")] = "localhost:25",
) -> None:
    """Translate crontabs into a jobs file: one job per line, the line as its description.

    Whatever cannot be translated exactly is listed on stderr with its line, and the exit status
    is 2 (nothing is written) unless --best-effort.

    Example: crontab -l | cronpy import-crontab - -o jobs.yaml
    """
    def body() -> int:
        from cronpy import crontab

        sources = crontab.read_sources(files, sys.stdin.read() if "-" in files else None)
        text, problems = crontab.import_crontabs(sources, system=system, timezone=tz or crontab.host_timezone(),
                                                 smtp=smtp)
        for p in problems:
            _note(p.format())
        if problems and not best_effort:
            _note(f"{len(problems)} line(s) cannot be translated exactly; nothing written (--best-effort writes "
                  "the rest)")
            return 2  # bad input, as for a jobs file (EXIT_USAGE)
        if output is None:
            sys.stdout.write(text)
        else:
            output.write_text(text, encoding="utf-8")
        return 0

    _guard(body)


def _note(text: str) -> None:
    sys.stderr.write(text + "\n")


def _say(*lines: str) -> None:
    for line in lines:
        sys.stdout.write(line + "\n")


@app.command()
def recover(file: FileOpt = None, state_dir: StateDirOpt = None) -> None:
    """Move a damaged history.db aside and recover what SQLite can still read into a fresh one.

    Run it when a runner stops with "the file is damaged". It takes the scheduler lock, so
    stop the runners of the state dir first (exit 75 while one runs). The damaged file is
    kept as history.db.damaged-TIME.

    Example: cronpy recover --state-dir /var/lib/cronpy
    """
    from cronpy import service

    _guard(lambda: _say(*service.recover(reads.state_dir_for_reading(_str(file), _str(state_dir)))))


@app.command()
def web(
    file: FileOpt = None,
    state_dir: StateDirOpt = None,
    store: StoreOpt = None,
    host: Annotated[str, typer.Option("--host", help="Address to bind; other than loopback needs --token.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port to listen on (0: any free port, printed).", min=0, max=65535)] = 8080,
    token: Annotated[Optional[str], typer.Option(
        "--token", envvar="CRONPY_WEB_TOKEN", show_envvar=False, show_default=False,
        help="Require this token (Bearer header or login cookie); default: $CRONPY_WEB_TOKEN.")] = None,
) -> None:
    """Serve a read-only dashboard of the jobs and their history (needs `pip install 'cronpy-runner[web]'`).

    Pages: / (jobs), /jobs/NAME, /runs/ID, /now; JSON: /api/jobs, /api/jobs/NAME/runs,
    /api/runs/ID, /api/status; /healthz. It binds to loopback unless --host says otherwise,
    which requires a token.

    Example: cronpy web -f jobs.yaml --port 8080
    """
    from cronpy.web import serve

    _guard(lambda: serve(str(file) if file else None, str(state_dir) if state_dir else None, store,
                         host=host, port=port, token=token))


@app.command()
def schema() -> None:
    """Print the JSON Schema of the jobs file, for editors.

    Example: cronpy schema > jobs.schema.json, then `# yaml-language-server: $schema=jobs.schema.json`
    """
    import json

    from cronpy.schema import jobs_file_schema

    sys.stdout.write(json.dumps(jobs_file_schema(), indent=2) + "\n")


@app.command()
def validate(
    jobs_file: Annotated[Optional[Path], typer.Argument(
        help="The jobs file (or -f; default: $CRONPY_FILE, then ./jobs.yaml).", show_default=False,
        metavar="[JOBS_FILE]")] = None,
    file: FileOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print {file, ok, jobs, problems} as JSON.")] = False,
) -> None:
    """Check a jobs file and report every problem with its line; exit 2 if there is any.

    Example: cronpy validate jobs.yaml
    """
    def body() -> int:
        from cronpy import render

        path = reads.jobs_path(_file(jobs_file, file))
        try:
            jobs = _load(path)
        except ConfigError as exc:
            if not as_json:
                raise
            render.print_json({"file": str(path), "ok": False, "jobs": None, "problems": [
                {"line": p.line, "key": p.key, "message": p.message} for p in exc.problems]})
            return exc.exit_code
        n = len(jobs.jobs)
        if as_json:
            render.print_json({"file": str(path), "ok": True, "jobs": n, "problems": [],
                               "warnings": list(jobs.warnings)})
        else:
            for warning in jobs.warnings:
                sys.stderr.write(f"warning: {warning}\n")
            sys.stdout.write(f"{jobs.source}: OK, {n} job{'s' if n != 1 else ''}\n")
        return 0

    _guard(body)


@app.command()
def completion(shell: Annotated[str, typer.Argument(help="bash, zsh or fish.", metavar="SHELL")]) -> None:
    """Print the completion script for SHELL (commands, options, job names, --status values, zones).

    bash: cronpy completion bash > ~/.local/share/bash-completion/completions/cronpy
    zsh:  cronpy completion zsh > "${fpath[1]}/_cronpy"   (any directory of your $fpath)
    fish: cronpy completion fish > ~/.config/fish/completions/cronpy.fish

    Example: cronpy completion bash > ~/.local/share/bash-completion/completions/cronpy
    """
    def body() -> None:
        from cronpy.completion import SCRIPTS

        if shell not in SHELLS:
            raise UsageError(f"expected one of {', '.join(SHELLS)}, got {shell!r}")
        sys.stdout.write(SCRIPTS[shell])

    _guard(body)


def main() -> Any:
    """The Typer app (cronpy.fast.main sends here what it does not answer itself); the explicit
    name keeps usage lines `cronpy …` under `python -m cronpy` too."""
    return app(prog_name="cronpy")
