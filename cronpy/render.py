"""Output of every command: a rich table on a terminal, plain tab-separated text when piped,
JSON with `--json`. Nothing here computes; it only shows what the core returned."""

from __future__ import annotations

import json
import sys
from datetime import datetime
from typing import Any, Iterable, Sequence

from cronpy.durations import format_duration
from cronpy.models import JobSpec, JobStats, RunRecord, RunStatus

STATUS_STYLE = {
    RunStatus.SUCCESS: "green",
    RunStatus.FAILED: "red",
    RunStatus.TIMEOUT: "red",
    RunStatus.INTERRUPTED: "yellow",
    RunStatus.SKIPPED: "dim",
    RunStatus.RUNNING: "cyan",
    RunStatus.CANCELLED: "magenta",
}
HEALTH_STYLE = {"healthy": "green", "warning": "yellow", "unhealthy": "red", "unknown": "dim"}


def is_terminal() -> bool:
    return sys.stdout.isatty()


def local(dt: datetime | None) -> str:
    return dt.astimezone().strftime("%Y-%m-%d %H:%M:%S") if dt else "-"


def dur(seconds: float | None) -> str:
    return format_duration(seconds) if seconds is not None else "-"


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def table(title: str | None, headers: Sequence[str], rows: Iterable[Sequence[str]],
          styles: Sequence[str | None] | None = None) -> None:
    """Print rows as a rich table on a terminal, as tab-separated lines otherwise."""
    rows = list(rows)
    if not is_terminal():
        sys.stdout.write("\t".join(h.lower().replace(" ", "_") for h in headers) + "\n")
        for row in rows:
            sys.stdout.write("\t".join(_plain(c) for c in row) + "\n")
        return
    from rich.console import Console
    from rich.table import Table

    t = Table(title=title, header_style="bold", show_edge=False, pad_edge=False)
    for h in headers:
        t.add_column(h, overflow="fold")
    for i, row in enumerate(rows):
        t.add_row(*row, style=styles[i] if styles else None)
    Console().print(t)


def _plain(cell: str) -> str:
    from re import sub

    return sub(r"\[/?[a-z ]*\]", "", cell).replace("\t", " ").replace("\n", " ")


def _status(status: RunStatus | None) -> str:
    if status is None:
        return "-"
    return f"[{STATUS_STYLE[status]}]{status.value}[/]"


def runs(records: Sequence[RunRecord], *, as_json: bool) -> None:
    if as_json:
        print_json([r.to_json(with_output=False) for r in records])
        return
    table(None, ["ID", "Job", "Status", "Trigger", "Try", "Started", "Duration", "Exit", "Error"], (
        [str(r.id), r.job, _status(r.status), r.trigger.value, str(r.attempt), local(r.started_at),
         dur(r.duration), "-" if r.exit_code is None else str(r.exit_code),
         (r.error or "").strip().splitlines()[-1][:80] if r.error else ""]
        for r in records
    ))


def run_detail(r: RunRecord, *, as_json: bool) -> None:
    if as_json:
        print_json(r.to_json())
        return
    fields = [
        ("run", str(r.id)), ("job", r.job), ("status", r.status.value), ("trigger", r.trigger.value),
        ("attempt", str(r.attempt)), ("scheduled for", local(r.scheduled_for)),
        ("started", local(r.started_at)), ("finished", local(r.finished_at)), ("duration", dur(r.duration)),
        ("exit code", "-" if r.exit_code is None else str(r.exit_code)), ("pid", str(r.pid or "-")),
        ("host", r.host or "-"),
    ]
    if r.result is not None:
        fields.append(("result", json.dumps(r.result)))
    width = max(len(k) for k, _ in fields)
    for k, v in fields:
        sys.stdout.write(f"{k:>{width}}  {v}\n")
    if r.error:
        sys.stdout.write(f"\n--- error ---\n{r.error.rstrip()}\n")
    sys.stdout.write(f"\n--- output (tail) ---\n{(r.output or '').rstrip()}\n")


def stats(items: Sequence[JobStats], next_runs: dict[str, datetime | None],
          recent: dict[str, list[tuple[RunStatus, float | None]]], *, as_json: bool) -> None:
    if as_json:
        print_json([{
            "job": s.job, "runs": s.runs, "successes": s.successes, "failures": s.failures,
            "timeouts": s.timeouts, "success_rate": s.success_rate, "mean": s.mean, "p50": s.p50,
            "p95": s.p95, "max": s.max, "last_run": s.last_started.isoformat() if s.last_started else None,
            "last_status": s.last_status.value if s.last_status else None,
            "next_run": (n.isoformat() if (n := next_runs.get(s.job)) else None), "health": s.health,
        } for s in items])
        return
    headers = ["Job", "Runs", "OK", "Failed", "Timeout", "Success", "Mean", "p50", "p95", "Max",
               "Last run", "Last", "Next run", "Health"]
    rows = [
        [s.job, str(s.runs), str(s.successes), str(s.failures), str(s.timeouts),
         "-" if s.success_rate is None else f"{s.success_rate:.1%}", dur(s.mean), dur(s.p50), dur(s.p95),
         dur(s.max), local(s.last_started), _status(s.last_status), local(next_runs.get(s.job)),
         f"[{HEALTH_STYLE[s.health]}]{s.health}[/]"]
        for s in items
    ]
    if recent:  # a terminal: the latest outcomes as marks, their durations as a sparkline
        headers += ["Recent", "Durations"]
        for row, s in zip(rows, items):
            runs = recent.get(s.job, [])
            row += [marks([st for st, _ in runs]),
                    sparkline([d for st, d in runs if d is not None and st is not RunStatus.SKIPPED])]
    table(None, headers, rows)


def job_list(specs: Sequence[JobSpec], next_runs: dict[str, datetime | None],
             last: dict[str, RunRecord], words: dict[str, str | None], paused: dict[str, datetime], *,
             as_json: bool) -> None:
    if as_json:
        print_json([{
            "job": s.name, "schedule": s.schedule.text if s.schedule else None,
            "schedule_in_words": words.get(s.name), "timezone": s.timezone,
            "enabled": s.enabled, "paused": s.name in paused, "kind": s.kind, "description": s.description,
            "next_run": (n.isoformat() if (n := next_runs.get(s.name)) else None),
            "last_status": last[s.name].status.value if s.name in last else None,
        } for s in specs])
        return
    table(None, ["Job", "Schedule", "In words", "Zone", "Enabled", "Next run", "Last", "Description"], (
        [s.name, s.schedule.text if s.schedule else ("@reboot" if s.run_on_boot else "(manual)"), words.get(s.name) or "", s.timezone,
         "paused" if s.name in paused else "yes" if s.enabled else "no",
         "-" if s.name in paused else local(next_runs.get(s.name)),
         _status(last[s.name].status) if s.name in last else "-", s.description]
        for s in specs
    ))


def instants(times: Sequence[datetime], *, as_json: bool, description: str | None = None) -> None:
    if as_json:
        print_json([t.isoformat() for t in times])
        return
    if description and is_terminal():
        sys.stdout.write(f"# {description}\n")
    for t in times:
        sys.stdout.write(t.isoformat() + "\n")


def status(st: Any, *, as_json: bool) -> None:
    """`cronpy status` (st is a service.Status)."""
    failures = sorted(st.failures, key=lambda r: r.id, reverse=True)[:5]
    now = datetime.now().astimezone()
    if as_json:
        print_json({
            "state_dir": str(st.state_dir),
            "scheduler": None if not st.scheduler_live else {
                "pid": st.scheduler.pid if st.scheduler else None,
                "host": st.scheduler.host if st.scheduler else None,
                "since": st.scheduler.since.isoformat() if st.scheduler else None,
                "epoch": st.scheduler.epoch if st.scheduler else None},
            "store": None if st.store is None else {
                "location": st.store, "error": st.store_error, "fleet": st.fleet or [],
                "this_host": (st.runner or {}).get("store")},
            "next": (st.runner or {}).get("next", []),
            "running": [dict(r.to_json(with_output=False), elapsed=(now - r.started_at).total_seconds())
                        for r in st.running if r.started_at],
            "paused": {job: since.isoformat() for job, since in st.paused.items()},
            "latest_failures": [r.to_json(with_output=False) for r in failures],
        })
        return
    out = sys.stdout.write
    if st.store is not None:
        out(f"store: {st.store}" + (f" (cannot read it: {st.store_error})" if st.store_error else "") + "\n")
        mine = (st.runner or {}).get("store") or {}
        if mine:
            link = ("connected" if mine.get("connected", True)
                    else f"DISCONNECTED since {local(datetime.fromisoformat(mine['disconnected_since']))}"
                    if mine.get("disconnected_since") else "disconnected")
            out(f"this host: pid {(st.runner or {}).get('pid')}, {mine.get('role')}, {link}\n")
    if st.scheduler_live and st.scheduler:
        epoch = f", epoch {st.scheduler.epoch}" if st.scheduler.epoch is not None else ""
        lease = (f", lease until {local(st.scheduler.expires_at)}" if st.scheduler.expires_at else "")
        out(f"scheduler: pid {st.scheduler.pid} on {st.scheduler.host} since {local(st.scheduler.since)}"
            f"{epoch}{lease}\n")
    elif st.scheduler_live:
        out("scheduler: running (holder unknown)\n")
    elif st.store is not None and st.store_error:
        out("scheduler: unknown (the store cannot be read from here)\n")
    elif st.store is not None:
        out("scheduler: no runner holds the leader lease\n")
    else:
        out(f"scheduler: no runner holds the scheduler lock of {st.state_dir}\n")
    if st.fleet:
        out("\n")
        table("Fleet", ["Host", "PID", "Role", "Last seen"], (
            [str(f["host"]), str(f["pid"]), str(f["role"]), f"{f['last_seen_ago']}s ago"] for f in st.fleet))
    behind = (st.runner or {}).get("history_behind")
    if behind:
        failing = behind.get("failing_seconds")
        out(f"history: BEHIND by {behind['pending']} write(s), the oldest {dur(behind['oldest_seconds'])} old"
            + (f"; the store has refused writes for {dur(failing)}" if failing is not None else "")
            + " (runs go on; written when the store takes writes again)\n")
    if st.paused:
        out("paused: " + ", ".join(f"{j} (since {local(t)})" for j, t in sorted(st.paused.items())) + "\n")
    out("\n")
    table("Running", ["ID", "Job", "Started", "Elapsed", "PID", "Host"], (
        [str(r.id), r.job, local(r.started_at), dur((now - r.started_at).total_seconds()) if r.started_at else "-",
         str(r.pid or "-"), r.host or "-"] for r in st.running))
    out("\n")
    nxt = (st.runner or {}).get("next", [])
    table("Next due", ["Job", "At", "Trigger"], (
        [n["job"], local(datetime.fromisoformat(n["at"])), n["trigger"]] for n in nxt))
    out("\n")
    table("Latest failures", ["ID", "Job", "Status", "Started", "Error"], (
        [str(r.id), r.job, _status(r.status), local(r.started_at),
         (r.error or "").strip().splitlines()[-1][:80] if r.error else ""] for r in failures))


SPARK = "▁▂▃▄▅▆▇█"


def sparkline(values: Sequence[float]) -> str:
    """Durations as a row of block characters, scaled between their min and max."""
    if not values:
        return ""
    lo, hi = min(values), max(values)
    span = hi - lo or 1.0
    return "".join(SPARK[min(len(SPARK) - 1, int((v - lo) / span * len(SPARK)))] for v in values)


def marks(statuses: Sequence[RunStatus]) -> str:
    """Recent outcomes, oldest first, as coloured marks."""
    glyph = {RunStatus.SUCCESS: "●", RunStatus.FAILED: "✖", RunStatus.TIMEOUT: "⧗", RunStatus.SKIPPED: "·",
             RunStatus.INTERRUPTED: "!", RunStatus.CANCELLED: "⊘", RunStatus.RUNNING: "…"}
    return "".join(f"[{STATUS_STYLE[s]}]{glyph[s]}[/]" for s in statuses)
