"""The `cronpy` command: parse options, call one core function, render, map errors to exit codes.

Heavy modules (croniter, the runner, rich) are imported inside the commands that need them,
so `--help`, completion and `history` start fast.
"""

from __future__ import annotations

import os
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Callable, Optional

import typer

from cronpy.errors import CronpyError, UsageError

if TYPE_CHECKING:
    from cronpy.models import JobSet
    from cronpy.store import Store

app = typer.Typer(
    name="cronpy",
    help="A job runner driven by a declarative YAML jobs file. Every run is recorded in SQLite.",
    no_args_is_help=True,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _complete_jobs(ctx: typer.Context, incomplete: str) -> list[str]:
    from cronpy.paths import find_jobs_file, job_names

    path = ctx.params.get("file") or ctx.params.get("jobs_file")
    return [n for n in job_names(find_jobs_file(path)) if n.startswith(incomplete)]


FileOpt = Annotated[Optional[Path], typer.Option(
    "--file", "-f", help="Jobs file (default: $CRONPY_FILE, then ./jobs.yaml).", show_default=False)]
StateDirOpt = Annotated[Optional[Path], typer.Option(
    "--state-dir", help="History and locks (default: $CRONPY_STATE_DIR, the file's state_dir, "
    "$STATE_DIRECTORY, $XDG_STATE_HOME/cronpy).", show_default=False)]
StoreOpt = Annotated[Optional[str], typer.Option(
    "--store", help="A postgresql:// URL shared by a fleet of runners (default: $CRONPY_STORE, the file's "
    "store; without one, SQLite in the state dir).", show_default=False)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]
NameArg = Annotated[str, typer.Argument(help="Job name.", autocompletion=_complete_jobs, show_default=False)]
SinceOpt = Annotated[Optional[str], typer.Option(
    "--since", help="Only runs started since: a duration back from now (7d, 12h) or an ISO date/time.")]


def _fail(exc: CronpyError) -> typer.Exit:
    sys.stderr.write(f"Error: {exc}\n")
    return typer.Exit(exc.exit_code)


def _guard(fn: Callable[[], int | None]) -> None:
    """Run a command body, turning CronpyError into `Error: …` and its exit status."""
    try:
        code = fn()
    except CronpyError as exc:
        raise _fail(exc) from None
    if code:
        raise typer.Exit(code)


def _load(file: Path | None) -> JobSet:
    from cronpy.config import load_jobs
    from cronpy.paths import find_jobs_file

    return load_jobs(find_jobs_file(str(file) if file else None), now=datetime.now(timezone.utc))


def _state_dir_for_reading(file: Path | None, state_dir: Path | None) -> Path:
    """The state dir, reading only `state_dir` from the jobs file (so a broken file still
    lets you read the history, and `history` does not pay for a full validation)."""
    from cronpy.paths import file_state_dir, find_jobs_file, resolve_state_dir

    if state_dir is None and not os.environ.get("CRONPY_STATE_DIR"):
        path = find_jobs_file(str(file) if file else None)
        return resolve_state_dir(None, file_state_dir(path))
    return resolve_state_dir(str(state_dir) if state_dir else None, None)


def _store_for_reading(file: Path | None, state_dir: Path | None, store: str | None) -> Store:
    """The history to read: the fleet's store if one is named, else the state dir's SQLite."""
    from cronpy.paths import file_setting, find_jobs_file, resolve_store
    from cronpy.store import open_store

    url = store or os.environ.get("CRONPY_STORE") or None
    if url is None:
        url = resolve_store(None, file_setting(find_jobs_file(str(file) if file else None), "store"))
    return open_store(url, _state_dir_for_reading(file, state_dir) if not url else Path("."), readonly=True)


def _since(text: str | None) -> datetime | None:
    if text is None:
        return None
    from cronpy.durations import parse_since

    try:
        return parse_since(text, datetime.now(timezone.utc))
    except ValueError as exc:
        raise UsageError(f"--since: {exc}") from None


@app.command()
def run(
    jobs_file: Annotated[Path, typer.Argument(help="The jobs file.", show_default=False)],
    state_dir: StateDirOpt = None,
    store: StoreOpt = None,
    watch: Annotated[bool, typer.Option("--watch", help="Reload when the jobs file changes (as on SIGHUP).")] = False,
    metrics_port: Annotated[Optional[int], typer.Option(
        "--metrics-port", help="Serve Prometheus metrics on this port (needs the `metrics` extra).")] = None,
    metrics_address: Annotated[str, typer.Option("--metrics-address", help="Address for --metrics-port.")] = "127.0.0.1",
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log debug details.")] = False,
) -> None:
    """Run the jobs of JOBS_FILE on their schedules, in the foreground, until SIGINT/SIGTERM.

    SIGHUP (or a change of the file, with --watch) reloads it without interrupting running
    jobs; an invalid file is rejected and the old jobs keep running. Several runners may share
    a state dir: one schedules, the others stand by and take over within a second. With
    --store postgresql://…, runners on many hosts share one schedule: the leader holds a
    lease, and a standby takes over within `leader_lease` of the leader's last renewal.

    Example: cronpy run jobs.yaml --watch
    """
    from cronpy import service

    _guard(lambda: service.run(jobs_file, state_dir, store=store, verbose=verbose, watch=watch, metrics_port=metrics_port,
                               metrics_address=metrics_address))


@app.command()
def trigger(
    name: NameArg,
    file: FileOpt = None,
    state_dir: StateDirOpt = None,
    store: StoreOpt = None,
    wait: Annotated[float, typer.Option(
        "--wait", help="If the job is running elsewhere, wait up to this many seconds for it.")] = 0.0,
    chain: Annotated[bool, typer.Option("--chain", help="Then run the jobs `after:` it, as the runner would.")] = False,
) -> None:
    """Run job NAME now in the foreground (with its retries, timeout and lock) and exit with its status.

    Exit status: the job's own, 124 on timeout, 75 if it is running elsewhere, 2 for an unknown name.

    Example: cronpy trigger backup -f jobs.yaml
    """
    from cronpy import service

    _guard(lambda: service.trigger(_load(file), name, state_dir, store=store, wait=wait, chain=chain))


@app.command()
def history(
    name: Annotated[Optional[str], typer.Argument(help="Only this job.", autocompletion=_complete_jobs)] = None,
    status: Annotated[Optional[str], typer.Option(
        "--status", "-s", help="Only runs with this status: running, success, failed, timeout, interrupted, skipped.")] = None,
    since: SinceOpt = None,
    limit: Annotated[int, typer.Option("--limit", "-n", help="At most this many runs.", min=1)] = 50,
    file: FileOpt = None,
    state_dir: StateDirOpt = None,
    store: StoreOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show recorded runs, newest first.

    Example: cronpy history backup --status failed --since 7d
    """
    def body() -> None:
        from cronpy import render
        from cronpy.models import RunStatus

        st = None
        if status is not None:
            try:
                st = RunStatus(status)
            except ValueError:
                raise UsageError(f"--status: expected one of {', '.join(s.value for s in RunStatus)}, got {status!r}") from None
        with _store_for_reading(file, state_dir, store) as h:
            render.runs(h.query(name, status=st, since=_since(since), limit=limit), as_json=as_json)

    _guard(body)


@app.command()
def show(
    run_id: Annotated[int, typer.Argument(help="Run id, as `history` shows it.", show_default=False)],
    file: FileOpt = None,
    state_dir: StateDirOpt = None,
    store: StoreOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show one run with its error and the tail of its output.

    Example: cronpy show 42
    """
    def body() -> None:
        from cronpy import render

        with _store_for_reading(file, state_dir, store) as h:
            rec = h.get(run_id)
        if not rec.status.finished:  # the history has its output only once it ends
            from cronpy.outputs import with_live_output

            rec = with_live_output(rec, _state_dir_for_reading(file, state_dir))
        render.run_detail(rec, as_json=as_json)

    _guard(body)


@app.command()
def logs(
    target: Annotated[str, typer.Argument(help="A run id, or a job name (its latest run).",
                                          autocompletion=_complete_jobs, show_default=False)],
    follow: Annotated[bool, typer.Option("--follow", "-f", help="While the run goes, print its output as it comes "
                                         "(like journalctl -f); exit when it ends.")] = False,
    # Here -f is --follow, as for tail and journalctl: the jobs file is --file only.
    file: Annotated[Optional[Path], typer.Option(
        "--file", help="Jobs file (default: $CRONPY_FILE, then ./jobs.yaml).", show_default=False)] = None,
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

        with _store_for_reading(file, state_dir, store) as h:
            return show_logs(h, _state_dir_for_reading(file, state_dir), target, follow_run=follow, write=write,
                             note=lambda text: _note(text))

    _guard(body)


@app.command()
def stats(
    name: Annotated[Optional[str], typer.Argument(help="Only this job.", autocompletion=_complete_jobs)] = None,
    since: SinceOpt = None,
    file: FileOpt = None,
    state_dir: StateDirOpt = None,
    store: StoreOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Per job: runs, failures, success rate, durations (mean, p50, p95, max), last and next run, health.

    Example: cronpy stats --since 30d
    """
    def body() -> None:
        from cronpy import render, service

        with _store_for_reading(file, state_dir, store) as h:
            items = h.stats(name, since=_since(since))
            recent = {s.job: h.recent(s.job) for s in items} if render.is_terminal() and not as_json else {}
        render.stats(items, service.next_runs_if_readable(file, state_dir, store), recent, as_json=as_json)

    _guard(body)


@app.command("list")
def list_jobs(
    file: FileOpt = None,
    state_dir: StateDirOpt = None,
    store: StoreOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List the jobs with schedule, zone, enabled, next run and last status.

    Example: cronpy list -f jobs.yaml
    """
    def body() -> None:
        from cronpy import render, service

        jobs = _load(file)
        words = {n: service.describe(s.schedule) for n, s in jobs.jobs.items()}
        render.job_list(list(jobs.jobs.values()), service.next_runs(jobs, state_dir, store),
                        service.last_runs(jobs, state_dir, store), words, service.paused_jobs(jobs, state_dir, store),
                        as_json=as_json)

    _guard(body)


@app.command("next")
def next_(
    name: Annotated[Optional[str], typer.Argument(help="Job name.", autocompletion=_complete_jobs)] = None,
    count: Annotated[int, typer.Option("--count", "-n", help="How many instants.", min=1)] = 5,
    from_: Annotated[Optional[str], typer.Option("--from", help="Start after this ISO 8601 time (default: now).")] = None,
    expr: Annotated[Optional[str], typer.Option("--expr", help="A schedule not in any file, e.g. '0 3 * * 1-5'.")] = None,
    tz: Annotated[str, typer.Option("--tz", help="Zone for --expr.")] = "UTC",
    hash_name: Annotated[str, typer.Option(
        "--name", help="Job name that H in --expr hashes, to preview a job's hashed times.")] = "expr",
    file: FileOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Print the next fire times of a job (or of --expr), one ISO 8601 time with offset a line.

    This is the code the runner fires by.

    Example: cronpy next backup --count 3 --from 2026-03-29T00:00:00+00:00
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
            times, words = service.next_for_expr(expr, tz, start, count, hash_name)
        elif name is not None:
            times, words = service.next_for_job(_load(file), name, start, count)
        else:
            raise UsageError("give a job NAME or --expr")
        render.instants(times, as_json=as_json, description=words)

    _guard(body)


@app.command()
def pause(name: NameArg, file: FileOpt = None, state_dir: StateDirOpt = None, store: StoreOpt = None) -> None:
    """Stop the schedule from firing job NAME (a running runner notices at once); `trigger` still runs it.

    Example: cronpy pause backup
    """
    from cronpy import service

    _guard(lambda: _say(service.pause(_load(file), name, state_dir, store)))


@app.command()
def resume(name: NameArg, file: FileOpt = None, state_dir: StateDirOpt = None, store: StoreOpt = None) -> None:
    """Let the schedule fire job NAME again.

    Example: cronpy resume backup
    """
    from cronpy import service

    _guard(lambda: _say(service.resume(_load(file), name, state_dir, store)))


@app.command()
def cancel(
    target: Annotated[str, typer.Argument(help="A job name (all its runs in progress) or a run id.",
                                          autocompletion=_complete_jobs, show_default=False)],
    file: FileOpt = None,
    state_dir: StateDirOpt = None,
    store: StoreOpt = None,
) -> None:
    """Stop a run in progress: SIGTERM to its process group, SIGKILL after the job's kill_grace.

    The run is recorded as cancelled and not retried. Exit status 1 if nothing was running.

    Example: cronpy cancel backup
    """
    from cronpy import service

    _guard(lambda: _say(*service.cancel(_load(file), target, state_dir, store)))


@app.command()
def status(file: FileOpt = None, state_dir: StateDirOpt = None, store: StoreOpt = None,
           as_json: JsonOpt = False) -> None:
    """Which runner schedules (pid, host, since), runs in progress, next due runs, latest failures.

    Reads only the state dir (and a fleet's store), so it works beside a runner started by
    another user or unit. With a store it also lists the fleet and this host's connection.

    Example: cronpy status --state-dir /var/lib/cronpy
    """
    def body() -> None:
        from cronpy import render, service

        render.status(service.status(file, state_dir, store), as_json=as_json)

    _guard(body)


@app.command("import-crontab")
def import_crontab(
    files: Annotated[list[str], typer.Argument(help="Crontab files; - reads standard input.", show_default=False)],
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


@app.command()
def recover(file: FileOpt = None, state_dir: StateDirOpt = None) -> None:
    """Move a damaged history.db aside and recover what SQLite can still read into a fresh one.

    Run it when a runner stops with "the file is damaged". It takes the scheduler lock, so
    stop the runners of the state dir first (exit 75 while one runs). The damaged file is
    kept as history.db.damaged-TIME.

    Example: cronpy recover --state-dir /var/lib/cronpy
    """
    from cronpy import service

    _guard(lambda: _say(*service.recover(_state_dir_for_reading(file, state_dir))))


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
    """Serve a read-only dashboard of the jobs and their history (needs `pip install 'cronpy[web]'`).

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


def _note(text: str) -> None:
    sys.stderr.write(text + "\n")


def _say(*lines: str) -> None:
    for line in lines:
        sys.stdout.write(line + "\n")


@app.command()
def validate(
    jobs_file: Annotated[Optional[Path], typer.Argument(
        help="The jobs file (default: $CRONPY_FILE, then ./jobs.yaml).", show_default=False)] = None,
) -> None:
    """Check a jobs file and report every problem with its line; exit 2 if there is any.

    Example: cronpy validate jobs.yaml
    """
    def body() -> None:
        jobs = _load(jobs_file)
        for warning in jobs.warnings:
            sys.stderr.write(f"warning: {warning}\n")
        sys.stdout.write(f"{jobs.source}: OK, {len(jobs.jobs)} job{'s' if len(jobs.jobs) != 1 else ''}\n")

    _guard(body)


def main() -> Any:
    """Console-script entry point (also `python -m cronpy`, hence the explicit name: click
    derives the completion variable _CRONPY_COMPLETE from it)."""
    return app(prog_name="cronpy")
