"""The read-only commands (`history`, `show`, `stats`, `list`, `status`, `next`), shared by the
Typer app and the fast path (cronpy.fast).

They import neither typer nor the service layer (runner, locks, integrations): `history`,
`show` and `stats` need only the store, the jobs file's `state_dir`/`store` lines and render.
Each function takes plain values and returns an exit status; errors are `CronpyError`s.
"""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Sequence

from cronpy.errors import CronpyError, NoHistory, UsageError
from cronpy.models import Attempt, JobStats, RunRecord, RunStatus, Trigger, health_of

if TYPE_CHECKING:
    from cronpy import jobsummary
    from cronpy.models import JobSet
    from cronpy.store import Store

#: How many of a job's latest attempts `stats` groups into runs (after retries) for the run
#: figures and health; the attempt figures come from the store's counters over all of history.
#: 50 keeps `stats` on 50 jobs to ~2,500 rows read (1,000 per job took 1.6 s of CPU).
RUN_WINDOW = 50

STATUS_HELP = ", ".join(s.value for s in RunStatus)


def jobs_path(file: str | os.PathLike[str] | None) -> Path:
    from cronpy.paths import find_jobs_file

    return find_jobs_file(str(file) if file else None)


def state_dir_for_reading(file: str | os.PathLike[str] | None, state_dir: str | os.PathLike[str] | None) -> Path:
    """The state dir, reading only `state_dir` from the jobs file (so a broken file still
    lets you read the history, and `history` does not pay for a full validation)."""
    from cronpy.paths import file_state_dir, resolve_state_dir

    if state_dir is None and not os.environ.get("CRONPY_STATE_DIR"):
        return resolve_state_dir(None, file_state_dir(jobs_path(file)))
    return resolve_state_dir(str(state_dir) if state_dir else None, None)


def store_url(file: str | os.PathLike[str] | None, store: str | None) -> str | None:
    from cronpy.paths import file_setting, resolve_store

    url = store or os.environ.get("CRONPY_STORE") or None
    return url or resolve_store(None, file_setting(jobs_path(file), "store"))


def open_for_reading(file: str | os.PathLike[str] | None, state_dir: str | os.PathLike[str] | None,
                     store: str | None) -> Store | None:
    """The history to read (the fleet's store if one is named, else the state dir's SQLite),
    or None when nothing has been recorded yet: an empty answer, not an error."""
    from cronpy.store import open_store

    url = store_url(file, store)
    sd = state_dir_for_reading(file, state_dir) if not url else Path(".")
    try:
        return open_store(url, sd, readonly=True)
    except NoHistory:
        return None


def file_job_names(file: str | os.PathLike[str] | None) -> list[str] | None:
    """The job names the jobs file defines (unvalidated), or None if there is no readable file."""
    from cronpy.paths import _read_yaml

    raw = _read_yaml(jobs_path(file))
    if not isinstance(raw, dict):
        return None
    jobs = raw.get("jobs")
    return [str(n) for n in jobs] if isinstance(jobs, dict) else []


def check_job_name(name: str, known: Sequence[str]) -> None:
    """Raise UsageError (exit 2) with a did-you-mean when `name` is not a known job."""
    if name in known:
        return
    import difflib

    close = difflib.get_close_matches(name, sorted(set(known)), n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise UsageError(f"unknown job {name!r}{hint}")


def _known(file: str | os.PathLike[str] | None, h: Store | None) -> list[str]:
    """Jobs of the file plus jobs with recorded runs (a job removed from the file keeps its history)."""
    names = list(file_job_names(file) or [])
    if h is not None:
        names += list(h.last_runs())
    return names


def since_time(text: str | None, now: datetime | None = None) -> datetime | None:
    if text is None:
        return None
    from cronpy.durations import parse_since

    try:
        return parse_since(text, now or datetime.now(timezone.utc))
    except ValueError as exc:
        raise UsageError(f"--since: {exc}") from None
    except OverflowError:
        raise UsageError(f"--since: {text!r} reaches back before year 1") from None


def parse_status(text: str | None) -> RunStatus | None:
    if text is None:
        return None
    try:
        return RunStatus(text)
    except ValueError:
        raise UsageError(f"--status: expected one of {STATUS_HELP}, got {text!r}") from None


# --- history / show ---------------------------------------------------------------------------

def history(name: str | None = None, *, status: str | None = None, since: str | None = None, limit: int = 50,
            file: str | None = None, state_dir: str | None = None, store: str | None = None,
            as_json: bool = False, wide: bool = False) -> int:
    from cronpy import render

    st, start = parse_status(status), since_time(since)
    h = open_for_reading(file, state_dir, store)
    if h is None:
        if name is not None:
            check_job_name(name, _known(file, None))
        render.runs([], as_json=as_json, wide=wide)
        return 0
    with h:
        records = h.query(name, status=st, since=start, limit=limit)
        # A job with runs in the answer is known: the name is checked (the jobs file parsed,
        # yaml imported: ~20 ms) only when the answer is empty.
        if name is not None and not records:
            check_job_name(name, _known(file, h))
    render.runs(records, as_json=as_json, wide=wide)
    return 0


def show(run_id: int, *, file: str | None = None, state_dir: str | None = None, store: str | None = None,
         as_json: bool = False) -> int:
    from cronpy import render
    from cronpy.errors import RunNotFound

    h = open_for_reading(file, state_dir, store)
    if h is None:
        raise RunNotFound(run_id)
    with h:
        rec = h.get(run_id)
    if not rec.status.finished:  # the history has its output only once it ends
        from cronpy.outputs import with_live_output

        rec = with_live_output(rec, state_dir_for_reading(file, state_dir))
    render.run_detail(rec, as_json=as_json)
    return 0


# --- stats ------------------------------------------------------------------------------------

class JobHealth(NamedTuple):
    """One job's figures for `stats`: runs (a scheduled or manual run after its retries) and the
    attempts that made them. Health comes from runs: a retry that absorbed a failure is healthy."""

    job: str
    attempts: JobStats  #: every attempt, from the store's counters
    runs: int  #: runs started in the window (retries are part of their run)
    run_successes: int
    run_failures: int  #: runs whose last attempt failed or timed out
    last_outcome: RunStatus | None  #: the latest finished run's outcome, after its retries

    @property
    def run_success_rate(self) -> float | None:
        done = self.run_successes + self.run_failures
        return self.run_successes / done if done else None

    @property
    def health(self) -> str:
        """healthy at >= 95 % of runs succeeding, warning at >= 80 %, else unhealthy; unknown
        when no run has finished."""
        return health_of(self.run_success_rate)

    def to_json(self, next_run: datetime | None) -> dict[str, Any]:
        """`stats --json`: the attempt figures keep their names from before runs were counted
        (`runs` is attempts, as scripts expect); the figures after retries are `recent_*`."""
        s = self.attempts
        return {
            "job": self.job, "health": self.health,
            "runs": s.runs, "successes": s.successes, "failures": s.failures,
            "timeouts": s.timeouts, "success_rate": s.success_rate, "mean": s.mean, "p50": s.p50,
            "p95": s.p95, "max": s.max, "last_run": s.last_started.isoformat() if s.last_started else None,
            "last_status": s.last_status.value if s.last_status else None,
            "recent_runs": self.runs, "recent_runs_ok": self.run_successes, "recent_runs_failed": self.run_failures,
            "recent_run_success_rate": self.run_success_rate,
            "last_outcome": self.last_outcome.value if self.last_outcome else None,
            "next_run": next_run.isoformat() if next_run else None,
        }


_FINAL = (RunStatus.SUCCESS, RunStatus.FAILED, RunStatus.TIMEOUT)


def run_outcomes(attempts: Sequence[Attempt]) -> list[RunStatus]:
    """The outcome (the last attempt's status) of each run that the attempts of one job make,
    oldest run first. `attempts` are oldest first (as Store.recent_attempts gives them); a
    retry belongs to the latest run of the same scheduled instant."""
    outcomes: list[RunStatus] = []
    run_of_instant: dict[Any, int] = {}  # scheduled instant -> index of its latest run
    retry = Trigger.RETRY
    for rec in attempts:
        i = run_of_instant.get(rec.instant) if rec.trigger is retry else None
        if i is None:
            run_of_instant[rec.instant] = len(outcomes)
            outcomes.append(rec.status)
        else:
            outcomes[i] = rec.status
    return outcomes


def job_health(name: str, attempts: JobStats, recent: Sequence[Attempt]) -> JobHealth:
    # A run whose first attempt fell out of the window is counted from the attempts we have.
    outcomes = run_outcomes(recent)
    ok = outcomes.count(RunStatus.SUCCESS)
    bad = outcomes.count(RunStatus.FAILED) + outcomes.count(RunStatus.TIMEOUT)
    last = next((o for o in reversed(outcomes) if o in _FINAL), None)
    return JobHealth(job=name, attempts=attempts, runs=len(outcomes), run_successes=ok, run_failures=bad,
                     last_outcome=last)


def never_ran(name: str) -> JobStats:
    return JobStats(job=name, runs=0, successes=0, failures=0, timeouts=0, mean=None, p50=None, p95=None,
                    max=None, last_started=None, last_status=None)


def stats(name: str | None = None, *, since: str | None = None, file: str | None = None,
          state_dir: str | None = None, store: str | None = None, as_json: bool = False,
          wide: bool = False) -> int:
    from cronpy import jobsummary, render

    start = since_time(since)
    now = datetime.now(timezone.utc)
    summary = file_summary(file, state_dir, now)
    file_names = summary.names if summary else file_job_names(file)
    h = open_for_reading(file, state_dir, store)
    items: list[JobHealth] = []
    recent: dict[str, list[tuple[RunStatus, float | None]]] = {}
    try:
        if name is not None:
            check_job_name(name, list(file_names or []) + (list(h.last_runs()) if h else []))
        counted = {s.job: s for s in (h.stats(name, since=start) if h else [])}
        names = [name] if name else sorted(set(counted) | set(file_names or []))
        windows = h.recent_attempts([n for n in names if n in counted], since=start, limit=RUN_WINDOW) if h else {}
        for n in names:
            window = windows.get(n, [])
            items.append(job_health(n, counted.get(n) or never_ran(n), window))
            recent[n] = [(r.status, r.duration) for r in window[-20:]]
        # The store named on the command line or in the file is the one the runner uses too.
        anchors = h.last_scheduled_many(summary.names) if h and summary else {}
    finally:
        if h is not None:
            h.close()
    render.stats(items, jobsummary.next_runs(summary, anchors, now) if summary else {}, recent, as_json=as_json,
                 wide=wide)
    return 0


def file_summary(file: str | os.PathLike[str] | None, state_dir: str | os.PathLike[str] | None,
                 now: datetime) -> jobsummary.Summary | None:
    """The jobs file's names and schedules: from the state dir's cache while the file is
    unchanged, else validated (and cached); None when the file is missing or invalid (a broken
    file still leaves the history to read)."""
    from cronpy import jobsummary

    path = jobs_path(file)
    try:
        cache_dir = state_dir_for_reading(file, state_dir)
    except (CronpyError, OSError):
        cache_dir = None
    if cache_dir is not None and (cached := jobsummary.load(path, cache_dir, now)) is not None:
        return cached
    key = jobsummary.key_of(path)  # before reading: an edit during validation leaves a stale key
    try:
        summary = jobsummary.of(load(file))
    except CronpyError:
        return None
    if cache_dir is not None:
        jobsummary.save(summary, key, cache_dir)
    return summary


# --- next runs (list, stats) ------------------------------------------------------------------

def load(file: str | os.PathLike[str] | None) -> JobSet:
    from cronpy.config import load_jobs

    return load_jobs(jobs_path(file), now=datetime.now(timezone.utc))


def _reading(jobs: JobSet, state_dir: str | None, store: str | None) -> Store | None:
    from cronpy.paths import resolve_state_dir, resolve_store
    from cronpy.store import open_store

    url = resolve_store(store, jobs.store)
    sd = resolve_state_dir(state_dir, jobs.state_dir)
    try:
        return open_store(url, sd, readonly=True, lease=jobs.leader_lease)
    except NoHistory:
        return None


def upcoming_of(jobs: JobSet, anchors: dict[str, datetime], now: datetime) -> dict[str, datetime | None]:
    """Each enabled job's next instant from `now`, as a runner started now would fire it (never
    an instant in the past: with no runner, a missed instant is not "next")."""
    from cronpy import jobsummary

    return jobsummary.next_runs(jobsummary.of(jobs), anchors, now)


def next_runs_for(jobs: JobSet, state_dir: str | None, store: str | None,
                  anchors: dict[str, datetime] | None = None) -> dict[str, datetime | None]:
    """Each job's next instant, continuing the cadence recorded in the history if readable
    (`anchors`: the last scheduled instants, when the caller has already read them)."""
    if anchors is None:
        # Nothing recorded yet: no anchors. A store that cannot be read is an error (exit 69),
        # not a silent guess from the schedule alone.
        h = _reading(jobs, state_dir, store)
        anchors = {}
        if h is not None:
            with h:
                anchors = h.last_scheduled_many(list(jobs.jobs))
    return upcoming_of(jobs, anchors, datetime.now(timezone.utc))


def list_jobs(*, file: str | None = None, state_dir: str | None = None, store: str | None = None,
              as_json: bool = False, wide: bool = False) -> int:
    from cronpy import render
    from cronpy.words import describe

    jobs = load(file)
    # One opening for all it shows. Nothing recorded yet: no history to show (h is None); a
    # store that cannot be read raises StoreUnavailable (exit 69), never invented defaults
    # such as "paused": false.
    h = _reading(jobs, state_dir, store)
    anchors: dict[str, datetime] = {}
    last: dict[str, RunRecord] = {}
    paused: dict[str, datetime] = {}
    if h is not None:
        with h:
            anchors, last, paused = h.last_scheduled_many(list(jobs.jobs)), dict(h.last_runs()), h.paused()
    words = {n: describe(s.schedule) for n, s in jobs.jobs.items()}
    render.job_list(list(jobs.jobs.values()), upcoming_of(jobs, anchors, datetime.now(timezone.utc)), last, words,
                    paused, as_json=as_json, wide=wide)
    return 0

