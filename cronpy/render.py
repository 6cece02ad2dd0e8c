"""Output of every command: aligned tables on a terminal, tab-separated text when piped, JSON
with `--json`. Nothing here computes; it only shows what the core returned.

Rules (issue #16, #14):
- On a terminal a table prints one line per row and never more than the terminal's width:
  optional columns are dropped first, then free-text columns are shortened with `…`. Cells are
  never wrapped, so tokens (names, zones, times) are never broken. `--wide` shows every column,
  with absolute times and their zone, still one line per row.
- Times carry their zone: absolute times are printed with the zone's abbreviation (`UTC`,
  `WET`, `JST`), relative ones as `in 4m12s` / `3h05m ago` (as `systemctl list-timers`).
- User data (job names, descriptions, errors, output) is data: it never goes through a markup
  parser. On a terminal control characters are shown as `\\x1b`-style escapes, so a job's output
  cannot retitle the terminal, make a live hyperlink or blink; piped and `--json` output keep
  the exact text (a TSV cell only has its tabs and newlines turned into spaces).

This module imports neither rich nor typer: `history`, `stats` and `list` stay on the fast path.
"""

from __future__ import annotations

import functools
import json
import os
import re
import sys
from datetime import datetime, timezone, tzinfo
from typing import TYPE_CHECKING, Any, Iterable, Mapping, NamedTuple, Sequence

from cronpy.durations import format_duration
from cronpy.models import JobStats, RunRecord, RunStatus

if TYPE_CHECKING:
    from cronpy.models import JobSpec

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
_SGR = {"green": "32", "red": "31", "yellow": "33", "dim": "2", "cyan": "36", "magenta": "35", "bold": "1"}

GAP = 2  # spaces between columns, as systemctl list-timers


def is_terminal() -> bool:
    return sys.stdout.isatty()


def _colour() -> bool:
    # https://no-color.org: any non-empty NO_COLOR disables colour.
    return not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb"


def width() -> int:
    """The terminal's width: $COLUMNS, else the tty's size, else 80 (at least 20)."""
    from cronpy.fast import terminal_columns

    return max(20, terminal_columns())


# --- text: user data shown verbatim, control characters visible on a terminal -----------------

# Compiled on first use: a text that is all printable (str.isprintable is False for every
# character these match) needs neither, and compiling both costs every table ~1 ms of start-up.
@functools.cache
def _control(keep_lines: bool) -> re.Pattern[str]:
    if keep_lines:
        return re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
    return re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def _escape_char(m: re.Match[str]) -> str:
    ch = m.group()
    return {"\n": "\\n", "\t": "\\t", "\r": "\\r"}.get(ch) or (
        f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}")


def visible(text: str) -> str:
    """`text` with every control character (ESC, BEL, newline, bidi overrides…) as an escape,
    for one cell of a terminal table."""
    return text if text.isprintable() else _control(False).sub(_escape_char, text)


def visible_lines(text: str) -> str:
    """Like `visible`, but newlines and tabs stay (for `show`'s error and output blocks)."""
    return text if text.isprintable() else _control(True).sub(_escape_char, text)


def _char_width(ch: str) -> int:
    import unicodedata  # only for non-ASCII text: ~1.5 ms of every table's start-up otherwise

    if unicodedata.combining(ch):
        return 0
    return 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1


def text_width(text: str) -> int:
    if text.isascii():
        return len(text)
    return sum(_char_width(ch) for ch in text)


def clip(text: str, room: int) -> str:
    """`text` cut to `room` columns, ending in `…` when cut."""
    if text_width(text) <= room:
        return text
    if room <= 0:
        return ""
    out, used = [], 0
    for ch in text:
        w = _char_width(ch)
        if used + w > room - 1:
            break
        out.append(ch)
        used += w
    return "".join(out) + "…"


# --- times ----------------------------------------------------------------------------------

def _zone(tz: str | tzinfo | None) -> tzinfo | None:
    if tz is None or isinstance(tz, tzinfo):
        return tz
    from zoneinfo import ZoneInfo

    try:
        return ZoneInfo(tz)
    except Exception:  # an unknown zone was refused by the validator; show UTC rather than crash
        return timezone.utc


def when(dt: datetime | None, tz: str | tzinfo | None = None) -> str:
    """An absolute time with its zone: `2026-11-23 18:09:13 UTC`, in `tz` (default: local)."""
    if dt is None:
        return "-"
    z = _zone(tz)
    local = dt.astimezone(z) if z else dt.astimezone()
    name = local.strftime("%Z") or local.strftime("%z")
    return local.strftime("%Y-%m-%d %H:%M:%S") + " " + name


local = when  # the name earlier callers used


def relative(dt: datetime | None, now: datetime) -> str:
    """`in 4m12s`, `3h05m ago`, `now` (seconds are rounded towards zero)."""
    if dt is None:
        return "-"
    delta = (dt - now).total_seconds()
    if abs(delta) < 1:
        return "now"
    text = _span(abs(delta))
    return f"in {text}" if delta > 0 else f"{text} ago"


def _span(seconds: float) -> str:
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600}h"


def dur(seconds: float | None) -> str:
    return format_duration(seconds) if seconds is not None else "-"


def iso(dt: datetime | None) -> str:
    return dt.isoformat() if dt else ""


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


# --- tables ---------------------------------------------------------------------------------

class Col(NamedTuple):
    """A table column. `drop`: dropped to fit the width, lowest first (None: always kept).
    `flex`: free text, shortened with `…` before anything else. `wide`: only with --wide.
    `piped`: in tab-separated output (which always has every column but terminal-only ones)."""

    header: str
    right: bool = False
    flex: bool = False
    drop: int | None = None
    wide: bool = False
    narrow: bool = False  # only without --wide (the relative form of a time shown in full there)
    terminal: bool = False  # only on a terminal (coloured marks, sparklines)
    key: str | None = None  # the TSV header; default: header lower-cased with underscores


Cell = str | tuple[str, str | None]  # text, or (text, style)


def _text(cell: Cell) -> str:
    return cell if isinstance(cell, str) else cell[0]


def _style(cell: Cell) -> str | None:
    return None if isinstance(cell, str) else cell[1]


def table(cols: Sequence[Col], rows: Iterable[Sequence[Cell]], *, wide: bool = False,
          title: str | None = None, empty: str = "(none)") -> None:
    """Print `rows` under `cols`: fitted to the terminal, or as tab-separated lines when piped."""
    rows = list(rows)
    if not is_terminal():
        keep = [i for i, c in enumerate(cols) if not c.terminal and not c.narrow]
        sys.stdout.write("\t".join(cols[i].key or cols[i].header.lower().replace(" ", "_") for i in keep) + "\n")
        for row in rows:
            sys.stdout.write("\t".join(_tsv(_text(row[i])) for i in keep) + "\n")
        return
    out = sys.stdout.write
    colour = _colour()
    if title:
        out((f"\x1b[1m{title}\x1b[0m" if colour else title) + "\n")
    keep = [i for i, c in enumerate(cols) if (c.wide <= wide) and not (c.narrow and wide)]
    cells = [[visible(_text(row[i])) for i in keep] for row in rows]
    if not rows:
        out(empty + "\n")
        return
    shown = [cols[i] for i in keep]
    widths = [max([text_width(c.header)] + [text_width(r[j]) for r in cells]) for j, c in enumerate(shown)]
    room = width()
    alive = list(range(len(shown)))

    def total() -> int:
        return sum(widths[j] for j in alive) + GAP * (len(alive) - 1)

    def least(j: int) -> int:  # free text shrinks to 20 columns; shorter, it says too little
        return min(widths[j], max(20, text_width(shown[j].header))) if shown[j].flex else widths[j]

    # 1. drop optional columns, lowest priority first, while even shortened text would not fit
    for j in sorted((j for j in alive if shown[j].drop is not None), key=lambda j: shown[j].drop or 0):
        if sum(least(k) for k in alive) + GAP * (len(alive) - 1) <= room:
            break
        alive.remove(j)
    # 2. shorten free-text columns
    for j in reversed([j for j in alive if shown[j].flex]):  # free text at the right end first
        if total() > room:
            widths[j] = max(least(j), widths[j] - (total() - room))
    # 3. then columns from the right (a token cut in half is worse than a column left out)
    while total() > room and len(alive) > 2:
        alive.pop()
    # 4. last resort (a terminal narrower than two columns): shorten the widest
    while total() > room and max(widths[j] for j in alive) > 3:
        j = max(alive, key=lambda j: widths[j])
        widths[j] -= 1
    styles = [[_style(row[i]) for i in keep] for row in rows]

    def line(texts: Sequence[str], sts: Sequence[str | None]) -> str:
        parts = []
        for n, j in enumerate(alive):
            t = clip(texts[j], widths[j])
            pad = " " * (widths[j] - text_width(t))
            t = pad + t if shown[j].right else (t + pad if n < len(alive) - 1 else t)
            st = sts[j]
            parts.append(f"\x1b[{_SGR[st]}m{t}\x1b[0m" if colour and st in _SGR else t)
        return (" " * GAP).join(parts).rstrip()

    header = line([c.header for c in shown], ["bold"] * len(shown))
    out(header + "\n")
    for texts, sts in zip(cells, styles):
        out(line(texts, sts) + "\n")


def _tsv(text: str) -> str:
    return text.replace("\t", " ").replace("\r\n", " ").replace("\n", " ").replace("\r", " ")


def _status(status: RunStatus | None) -> Cell:
    if status is None:
        return "-"
    return (status.value, STATUS_STYLE[status])


def _last_error_line(error: str | None) -> str:
    if not error or not error.strip():
        return ""
    return error.strip().splitlines()[-1]


def _now() -> datetime:
    return datetime.now(timezone.utc)


# --- commands -------------------------------------------------------------------------------

HISTORY_COLS = [
    Col("ID", right=True), Col("Job", flex=True), Col("Status"), Col("Trigger", drop=1), Col("Try", right=True, drop=2),
    Col("Scheduled", wide=True, key="scheduled_for"), Col("Started", narrow=True),
    Col("Started at", wide=True, key="started"), Col("Finished", wide=True),
    Col("Took", right=True, key="duration"), Col("Exit", right=True, drop=3), Col("Host", wide=True, drop=4),
    Col("Error", flex=True, drop=5),
]


def runs(records: Sequence[RunRecord], *, as_json: bool, wide: bool = False, now: datetime | None = None) -> None:
    if as_json:
        print_json([r.to_json(with_output=False) for r in records])
        return
    now = now or _now()
    term = is_terminal()
    fmt = when if term else (lambda dt, tz=None: iso(dt))
    table(HISTORY_COLS, (
        [str(r.id), r.job, _status(r.status), r.trigger.value, str(r.attempt), fmt(r.scheduled_for),
         relative(r.started_at, now), fmt(r.started_at), fmt(r.finished_at), dur(r.duration),
         "-" if r.exit_code is None else str(r.exit_code), r.host or "-", _last_error_line(r.error)]
        for r in records
    ), wide=wide, empty="no runs recorded")


def run_detail(r: RunRecord, *, as_json: bool) -> None:
    if as_json:
        print_json(r.to_json())
        return
    term = is_terminal()
    show = visible if term else (lambda s: s)
    block = visible_lines if term else (lambda s: s)
    fmt = when if term else (lambda dt, tz=None: iso(dt) or "-")
    fields = [
        ("run", str(r.id)), ("job", show(r.job)), ("status", r.status.value), ("trigger", r.trigger.value),
        ("attempt", str(r.attempt)), ("scheduled for", fmt(r.scheduled_for)),
        ("started", fmt(r.started_at)), ("finished", fmt(r.finished_at)), ("duration", dur(r.duration)),
        ("exit code", "-" if r.exit_code is None else str(r.exit_code)), ("pid", str(r.pid or "-")),
        ("host", show(r.host or "-")),
    ]
    if r.result is not None:
        fields.append(("result", show(json.dumps(r.result, ensure_ascii=False))))
    w = max(len(k) for k, _ in fields)
    out = sys.stdout.write
    for k, v in fields:
        out(f"{k:>{w}}  {v}\n")
    if r.error:
        out(f"\n--- error ---\n{block(r.error.rstrip())}\n")
    out(f"\n--- output (tail) ---\n{block((r.output or '').rstrip())}\n")


STATS_COLS = [
    Col("Job", flex=True), Col("Health"), Col("Runs", right=True), Col("OK", right=True, key="run_success_rate"),
    Col("Tries", right=True, drop=4, key="attempts"), Col("Try OK", right=True, drop=3, key="success_rate"),
    Col("Succ", right=True, wide=True, key="successes"), Col("Failed", right=True, wide=True, key="failures"),
    Col("Timeout", right=True, wide=True, key="timeouts"), Col("Mean", right=True, wide=True),
    Col("p50", right=True, drop=2), Col("p95", right=True, drop=5), Col("Max", right=True, wide=True),
    Col("Last status", wide=True, key="last_status"),
    Col("Last", narrow=True), Col("Last run", wide=True, key="last_run"),
    Col("Next", narrow=True, drop=6), Col("Next run", wide=True, key="next_run"),
    Col("Recent", terminal=True, drop=1), Col("Durations", terminal=True, drop=0),
]


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.0%}" if x in (0.0, 1.0) else f"{x:.1%}"


def stats(items: Sequence[Any], next_runs: Mapping[str, datetime | None],
          recent: Mapping[str, list[tuple[RunStatus, float | None]]], *, as_json: bool, wide: bool = False,
          now: datetime | None = None) -> None:
    """`items` are `service.JobHealth` (a JobStats with run figures after retries)."""
    if as_json:
        print_json([s.to_json(next_runs.get(s.job)) for s in items])
        return
    now = now or _now()
    term = is_terminal()
    fmt = when if term else (lambda dt, tz=None: iso(dt))
    rows = []
    for s in items:
        st: JobStats = s.attempts
        runs_ = recent.get(s.job, [])
        rows.append([
            s.job, (s.health, HEALTH_STYLE[s.health]), str(s.runs), _pct(s.run_success_rate), str(st.runs),
            _pct(st.success_rate), str(st.successes), str(st.failures), str(st.timeouts), dur(st.mean),
            dur(st.p50), dur(st.p95), dur(st.max), _status(st.last_status) if st.last_status else "-",
            relative(st.last_started, now), fmt(st.last_started),
            relative(next_runs.get(s.job), now), fmt(next_runs.get(s.job)),
            marks([x for x, _ in runs_]) if term else "",
            sparkline([d for x, d in runs_ if d is not None and x is not RunStatus.SKIPPED]) if term else "",
        ])
    table(STATS_COLS, rows, wide=wide, empty="no jobs")


LIST_COLS = [
    Col("Job", flex=True), Col("Schedule"), Col("In words", flex=True, drop=3, key="schedule_in_words"),
    Col("Zone", key="timezone"), Col("State", key="enabled"),
    Col("Next", narrow=True), Col("Next run", wide=True, key="next_run"),
    Col("Last", key="last_status", drop=4), Col("Description", flex=True, drop=2),
]


def job_list(specs: Sequence[JobSpec], next_runs: Mapping[str, datetime | None],
             last: Mapping[str, RunRecord], words: Mapping[str, str | None], paused: Mapping[str, datetime], *,
             as_json: bool, wide: bool = False, now: datetime | None = None) -> None:
    if as_json:
        print_json([{
            "job": s.name, "schedule": s.schedule.text if s.schedule else None,
            "schedule_in_words": words.get(s.name), "timezone": s.timezone,
            "enabled": s.enabled, "paused": s.name in paused, "kind": s.kind, "description": s.description,
            "next_run": (n.isoformat() if (n := next_runs.get(s.name)) else None),
            "last_status": last[s.name].status.value if s.name in last else None,
        } for s in specs])
        return
    now = now or _now()
    term = is_terminal()
    rows: list[list[Cell]] = []
    for s in specs:
        nxt = None if s.name in paused else next_runs.get(s.name)
        # The next run in the job's own zone: the zone column and the time agree.
        full = when(nxt, s.timezone) if term else iso(nxt.astimezone(_zone(s.timezone)) if nxt else None)
        rows.append([
            s.name, s.schedule.text if s.schedule else ("@reboot" if s.run_on_boot else "(manual)"), words.get(s.name) or "", s.timezone,
            "paused" if s.name in paused else "enabled" if s.enabled else "disabled",
            relative(nxt, now), full,
            _status(last[s.name].status) if s.name in last else "-", s.description,
        ])
    table(LIST_COLS, rows, wide=wide, empty="no jobs")


def instants(times: Sequence[datetime], *, as_json: bool, description: str | None = None) -> None:
    if as_json:
        print_json([t.isoformat() for t in times])
        return
    if description and is_terminal():
        sys.stdout.write(f"# {visible(description)}\n")
    for t in times:
        sys.stdout.write(t.isoformat() + "\n")


def status(st: Any, *, as_json: bool, wide: bool = False) -> None:
    """`cronpy status` (st is a service.Status)."""
    failures = sorted(st.failures, key=lambda r: r.id, reverse=True)[:5]
    now = _now()
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
    term = is_terminal()
    show = visible if term else (lambda s: s)
    fmt = when if term else (lambda dt, tz=None: iso(dt))
    out = sys.stdout.write
    if st.store is not None:
        out(f"store: {show(st.store)}" + (f" (cannot read it: {show(st.store_error)})" if st.store_error else "")
            + "\n")
        mine = (st.runner or {}).get("store") or {}
        if mine:
            link = ("connected" if mine.get("connected", True)
                    else f"DISCONNECTED since {fmt(datetime.fromisoformat(mine['disconnected_since']))}"
                    if mine.get("disconnected_since") else "disconnected")
            out(f"this host: pid {(st.runner or {}).get('pid')}, {mine.get('role')}, {link}\n")
    if st.scheduler_live and st.scheduler:
        epoch = f", epoch {st.scheduler.epoch}" if st.scheduler.epoch is not None else ""
        lease = (f", lease until {fmt(st.scheduler.expires_at)}" if st.scheduler.expires_at else "")
        out(f"scheduler: pid {st.scheduler.pid} on {show(st.scheduler.host)} since {fmt(st.scheduler.since)}"
            f"{epoch}{lease}\n")
    elif st.scheduler_live:
        out("scheduler: running (holder unknown)\n")
    elif st.store is not None and st.store_error:
        out("scheduler: unknown (the store cannot be read from here)\n")
    elif st.store is not None:
        out("scheduler: no runner holds the leader lease\n")
    else:
        out(f"scheduler: no runner holds the scheduler lock of {show(str(st.state_dir))}\n")
    if st.fleet:
        out("\n")
        table([Col("Host"), Col("PID", right=True), Col("Role"), Col("Last seen", right=True)], (
            [str(f["host"]), str(f["pid"]), str(f["role"]), f"{f['last_seen_ago']}s ago"] for f in st.fleet),
            title="Fleet", wide=wide)
    behind = (st.runner or {}).get("history_behind")
    if behind:
        failing = behind.get("failing_seconds")
        out(f"history: BEHIND by {behind['pending']} write(s), the oldest {dur(behind['oldest_seconds'])} old"
            + (f"; the store has refused writes for {dur(failing)}" if failing is not None else "")
            + " (runs go on; written when the store takes writes again)\n")
    if st.paused:
        out("paused: " + ", ".join(f"{show(j)} (since {fmt(t)})" for j, t in sorted(st.paused.items())) + "\n")
    out("\n")
    table([Col("ID", right=True), Col("Job", flex=True), Col("Started", narrow=True), Col("Started at", wide=True, key="started"),
           Col("Elapsed", right=True), Col("PID", right=True, drop=1), Col("Host", drop=2)], (
        [str(r.id), r.job, relative(r.started_at, now), fmt(r.started_at),
         dur((now - r.started_at).total_seconds()) if r.started_at else "-",
         str(r.pid or "-"), r.host or "-"] for r in st.running), title="Running", wide=wide)
    out("\n")
    nxt = (st.runner or {}).get("next", [])
    table([Col("Job", flex=True), Col("Next", narrow=True), Col("At", wide=True), Col("Trigger", drop=1)], (
        [n["job"], relative(datetime.fromisoformat(n["at"]), now), fmt(datetime.fromisoformat(n["at"])),
         n["trigger"]] for n in nxt), title="Next due", wide=wide)
    out("\n")
    table([Col("ID", right=True), Col("Job", flex=True), Col("Status"), Col("Started", narrow=True),
           Col("Started at", wide=True, key="started"), Col("Error", flex=True, drop=1)], (
        [str(r.id), r.job, _status(r.status), relative(r.started_at, now), fmt(r.started_at),
         _last_error_line(r.error)] for r in failures), title="Latest failures", wide=wide)


def message(data: Mapping[str, Any], text: str | Sequence[str], *, as_json: bool) -> None:
    """A command's outcome: `text` lines for people, `data` as one JSON object with --json."""
    if as_json:
        print_json(dict(data))
        return
    for line in [text] if isinstance(text, str) else text:
        sys.stdout.write((visible(line) if is_terminal() else line) + "\n")


SPARK = "▁▂▃▄▅▆▇█"


def sparkline(values: Sequence[float]) -> str:
    """Durations as a row of block characters, scaled between their min and max."""
    if not values:
        return ""
    lo, hi = min(values), max(values)
    span = hi - lo or 1.0
    return "".join(SPARK[min(len(SPARK) - 1, int((v - lo) / span * len(SPARK)))] for v in values)


GLYPH = {RunStatus.SUCCESS: "●", RunStatus.FAILED: "✖", RunStatus.TIMEOUT: "⧗", RunStatus.SKIPPED: "·",
         RunStatus.INTERRUPTED: "!", RunStatus.CANCELLED: "⊘", RunStatus.RUNNING: "…"}


def marks(statuses: Sequence[RunStatus]) -> str:
    """Recent outcomes, oldest first, one glyph each (the table colours the cell as a whole)."""
    return "".join(GLYPH[s] for s in statuses)
