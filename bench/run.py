#!/usr/bin/env python3
"""cronpy against its peers, side by side: `python bench/run.py [--only cronpy] [workload ...]`.

Every workload runs each scheduler as a real process on the same job list (bench/peers.py:
cronpy, Debian's cron, yacron, APScheduler; the peers are installed by the suite into a
virtualenv of their own or from Debian's packages). Jobs are a tiny shell script that appends
`date +%s.%N` to a file, so every tool is timed by the same clock reading in the child.

  cli        wall time of `--help` (cronpy, yacron), cronpy's job-name completion, `history`
             and `stats` on a generated history of 1,000,000 rows, and its bytes per row
  idle       CPU seconds over 60 s and RSS with 1,000 jobs none of which is due (all tools at
             once: they are idle), and cronpy with jobs.example.yaml
  precision  one job every second for a minute: p50 / p99 lateness of the child's start
             (tools that schedule to the second)
  burst      200 jobs due at the same instant: delay from the due instant to the first and the
             last start (cron and yacron fire on minute boundaries: one minute per repetition)
  overhead   scheduler CPU per run (its own process, not the jobs'): 100 jobs every second, 60 s
  scale      load and validate 10,000 jobs; dispatch lateness with 10 and with 10,000 jobs loaded
  record     cronpy's own history (the peers record nothing): 200 `true` jobs every second for
             10 s, recorded duration p95 and runs wrongly skipped as still running
  fault      cronpy with its store unwritable (another process holds SQLite's write lock) for
             30 s: an every-second job's longest gap, and whether every outcome is recorded
             once the store is back

`--short` runs every workload once and shortly (about 3 minutes): figures for a busy shared
machine, marked provisional; the full run is for a quiet one.

A table of medians over BENCH_REPEAT (default 3) repetitions closes the run; `ratio` is the
best peer's figure divided by cronpy's (above 1: cronpy is ahead). BENCH_JSON=FILE also writes
the rows as JSON. The full run takes about 13 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peers import ALL, Cronpy, Job, Peer, Unavailable, cronpy_cmd  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
REPEAT = int(os.environ.get("BENCH_REPEAT", "3"))
VALIDATE_LIMIT = float(os.environ.get("BENCH_VALIDATE_LIMIT", "60"))  # yacron needs ~330 s for 10,000 jobs


@dataclass
class Row:
    workload: str
    metric: str
    unit: str
    values: dict[str, float] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)
    digits: int = 1


ROWS: list[Row] = []


def row(workload: str, metric: str, unit: str, digits: int = 1) -> Row:
    r = Row(workload, metric, unit, digits=digits)
    ROWS.append(r)
    return r


def put(r: Row, tool: str, value: float) -> None:
    r.values[tool] = value
    print(f"  {r.workload:<10} {r.metric:<52} {tool:<12} {value:.{r.digits}f} {r.unit}", flush=True)


def wall(cmd: list[str], env: dict[str, str] | None = None, cwd: Path | None = None,
         timeout: float | None = None) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=cwd, check=False,
                   timeout=timeout)
    return time.perf_counter() - start


def median_of(fn: Callable[[], float], n: int = REPEAT) -> float:
    return statistics.median(fn() for _ in range(n))


def proc_stats(pid: int) -> tuple[float, int]:
    """CPU seconds (user+system, the process itself, not its children) and RSS in bytes."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    with open(f"/proc/{pid}/status") as fh:
        rss = next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmRSS:"))
    return cpu, rss


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(len(s) * q / 100))]


def stamp_script(tmp: Path) -> Path:
    script = tmp / "stamp.sh"
    if not script.exists():
        script.write_text('#!/bin/sh\ndate +%s.%N >> "$1"\n')
        script.chmod(0o755)
    return script


def stamps(path: Path) -> list[float]:
    try:
        return sorted(float(x) for x in path.read_text().split())
    except FileNotFoundError:
        return []


def wait_for(cond: Callable[[], bool], timeout: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(step)
    return cond()


def sleep_until(t: float) -> None:
    while (left := t - time.time()) > 0:
        time.sleep(min(left, 1.0))


def make_history(db: Path, rows: int, jobs: int = 50) -> None:
    """A history.db of `rows` finished runs, written through cronpy's own schema."""
    sys.path.insert(0, str(REPO))
    from cronpy.store.sqlite import SqliteStore as History

    History.open(db.parent).close()
    con = sqlite3.connect(db)
    rng = random.Random(1)
    t0 = datetime.now(timezone.utc).timestamp() - rows * 60
    statuses = ["success"] * 18 + ["failed", "timeout"]

    def gen():
        for i in range(rows):
            st = rng.choice(statuses)
            start = t0 + i * 60
            d = rng.uniform(0.05, 30)
            yield (f"job{i % jobs:03d}", st, "schedule", 1, start, start, start + d, d,
                   0 if st == "success" else 1, None if st == "success" else "exited with status 1", "vm", 1)

    con.execute("BEGIN")
    con.executemany(
        "INSERT INTO runs (job, status, trigger, attempt, scheduled_for, started_at, finished_at, duration,"
        " exit_code, error, host, runner_pid) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", gen())
    con.execute("COMMIT")
    con.close()


# -- workloads ---------------------------------------------------------------------------------

def bench_cli(tmp: Path, peers: list[Peer]) -> None:
    help_row = row("cli", "--help (wall)", "ms", 0)
    for p in peers:
        if (cmd := p.help()) is not None:
            wall(cmd)  # warm the page cache
            put(help_row, p.name, median_of(lambda c=cmd: wall(c)) * 1000)
    jobs = tmp / "jobs.yaml"
    jobs.write_text("state_dir: state\njobs:\n" + "".join(
        f"  job{i:03d}: {{schedule: '*/5 * * * *', command: 'true'}}\n" for i in range(50)))
    rows = int(os.environ.get("BENCH_HISTORY_ROWS", "1000000"))
    db = tmp / "state" / "history.db"
    t = time.perf_counter()
    make_history(db, rows)
    print(f"  (generated {rows:,} rows in {time.perf_counter() - t:.1f}s)", flush=True)
    put(row("cli", f"history database bytes per row ({rows:,} rows)", "B", 0), "cronpy", db.stat().st_size / rows)
    env = dict(os.environ, CRONPY_FILE=str(jobs))
    cases = {
        "job-name completion (wall)": cronpy_cmd("trigger"),
        "history NAME --status failed --limit 20 (wall)": cronpy_cmd("history", "job007", "--status", "failed", "--limit", "20"),
        "history --limit 20 (wall)": cronpy_cmd("history", "--limit", "20"),
        "stats (wall)": cronpy_cmd("stats"),
    }
    for name, cmd in cases.items():
        e = dict(env)
        if name.startswith("job-name"):
            e.update(_CRONPY_COMPLETE="bash", _CRONPY_INCOMPLETE="job0")  # cronpy.completion's protocol
        wall(cmd, e, tmp)
        put(row("cli", name, "ms", 0), "cronpy", median_of(lambda c=cmd, v=e: wall(c, v, tmp)) * 1000)
    # `stats` keeps the jobs file's summary and each job's quantiles in the state dir while they
    # hold; without them (after an edit of the file and new runs of every job) it validates the
    # file and walks every job's durations again.
    caches = [tmp / "state" / "jobs-summary.json", tmp / "state" / "stats-memo.json"]

    def first_stats() -> float:
        for f in caches:
            f.unlink(missing_ok=True)
        return wall(cronpy_cmd("stats"), env, tmp)

    put(row("cli", "stats, first after a change (wall)", "ms", 0), "cronpy", median_of(first_stats) * 1000)


def far_jobs(n: int, script: Path, out: Path, *, start: int = 0) -> list[Job]:
    """n jobs at a minute two hours away: loaded, never due during the workload."""
    far = datetime.now(timezone.utc) + timedelta(hours=2)
    return [Job(f"far{i:05d}", str(far.minute), str(far.hour), (str(script), str(out)), second="0")
            for i in range(start, start + n)]


def bench_idle(tmp: Path, peers: list[Peer]) -> None:
    seconds = float(os.environ.get("BENCH_IDLE_SECONDS", "60"))
    script = stamp_script(tmp)
    cpu_row = row("idle", f"1,000 jobs, none due: CPU per minute ({seconds:.0f} s)", "s", 3)
    rss_row = row("idle", "1,000 jobs, none due: RSS", "MB", 1)
    procs: dict[str, tuple[Peer, subprocess.Popen[bytes]]] = {}
    for p in peers:
        work = tmp / p.name
        work.mkdir()
        jobs = far_jobs(1000, script, tmp / "never")
        if not p.seconds:
            jobs = [Job(j.name, j.minute, j.hour, j.argv) for j in jobs]
        procs[p.name] = (p, p.start(jobs, work, max_concurrent=4))
    # jobs.example.yaml as shipped (its jobs fire every minute or so): what a new user runs.
    example_row = None
    if any(isinstance(p, Cronpy) for p in peers):
        example = (REPO / "jobs.example.yaml").read_text().replace("state_dir: .cronpy", "")
        shutil.copytree(REPO / "examples", tmp / "examples", dirs_exist_ok=True)
        (tmp / "example.yaml").write_text(example)
        example_row = row("idle", "jobs.example.yaml: CPU per minute, RSS", "", 3)
        procs["example"] = (Cronpy(), subprocess.Popen(
            cronpy_cmd("run", str(tmp / "example.yaml"), "--state-dir", str(tmp / "example-state")),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    try:
        settle(procs)
        before = {name: proc_stats(proc.pid)[0] for name, (_, proc) in procs.items()}
        time.sleep(seconds)
        after = {name: proc_stats(proc.pid) for name, (_, proc) in procs.items()}
    finally:
        for p, proc in procs.values():
            p.stop(proc)
    for name, (cpu, rss) in after.items():
        per_min = (cpu - before[name]) * 60 / seconds
        if name == "example" and example_row:
            put(example_row, "cronpy", per_min)
            example_row.notes["cronpy"] = f"{per_min:.3f} s, {rss / 1e6:.1f} MB"
        else:
            put(cpu_row, name, per_min)
            put(rss_row, name, rss / 1e6)


def settle(procs: dict[str, tuple[Peer, subprocess.Popen[bytes]]], limit: float = 120) -> None:
    """Wait until every process has finished starting up (parsing 1,000 jobs takes yacron
    several seconds): its CPU time stops growing for a whole second."""
    deadline = time.monotonic() + limit
    last = {name: -1.0 for name in procs}
    while time.monotonic() < deadline:
        time.sleep(1.0)
        now = {name: proc_stats(proc.pid)[0] for name, (_, proc) in procs.items()}
        if all(now[n] - last[n] < 0.02 for n in procs):
            return
        last = now


def lateness_ms(ts: list[float]) -> list[float]:
    """Signed lateness of each stamp against the nearest whole second (every-second jobs):
    negative means the child started before the second it was due at."""
    return [(t - round(t)) * 1000 for t in ts]


def bench_precision(tmp: Path, peers: list[Peer]) -> None:
    seconds = float(os.environ.get("BENCH_PRECISION_SECONDS", "60"))
    script = stamp_script(tmp)
    p50 = row("precision", "every second for a minute: child start p50 late", "ms", 2)
    p99 = row("precision", "every second for a minute: child start p99 late", "ms", 2)
    early = row("precision", "every second for a minute: children started early", "", 0)
    for p in peers:
        if not p.seconds:
            p50.notes[p.name] = p99.notes[p.name] = early.notes[p.name] = "minute granularity"
            continue
        work = tmp / p.name
        work.mkdir()
        out = work / "stamps"
        proc = p.start([Job("p", "*", "*", (str(script), str(out)), second="*")], work, max_concurrent=4)
        try:
            wait_for(lambda o=out: bool(stamps(o)), 30)
            time.sleep(seconds)
        finally:
            p.stop(proc)
        late = lateness_ms(stamps(out)[1:])  # the first may be the start-up instant
        put(p50, p.name, pct(late, 50))
        put(p99, p.name, pct(late, 99))
        put(early, p.name, sum(1 for x in late if x < 0))


def bench_burst(tmp: Path, peers: list[Peer]) -> None:
    n = int(os.environ.get("BENCH_BURST_JOBS", "200"))
    script = stamp_script(tmp)
    first_row = row("burst", f"{n} jobs due at once: first start after due", "ms", 1)
    last_row = row("burst", f"{n} jobs due at once: last start after due", "ms", 0)
    firsts: dict[str, list[float]] = {p.name: [] for p in peers}
    lasts: dict[str, list[float]] = {p.name: [] for p in peers}
    for rep in range(REPEAT):
        for p in peers:
            work = tmp / f"{p.name}-{rep}"
            work.mkdir()
            out = work / "stamps"
            now = time.time()
            if p.seconds:
                due = math.floor(now) + 4
                jobs = [Job(f"b{i:03d}", *_at(due), (str(script), str(out)), second=str(int(due) % 60)) for i in range(n)]
            else:
                due = (math.floor(now / 60) + 1) * 60
                if due - now < 5:
                    due += 60
                jobs = [Job(f"b{i:03d}", *_at(due), (str(script), str(out))) for i in range(n)]
            if due - now > 10:
                sleep_until(due - 8)
            proc = p.start(jobs, work, max_concurrent=n)
            try:
                sleep_until(due)
                wait_for(lambda o=out: len(stamps(o)) >= n, 30, 0.2)
            finally:
                p.stop(proc)
            ts = stamps(out)
            if len(ts) < n:
                print(f"  burst: {p.name} started {len(ts)} of {n}", flush=True)
            if ts:
                firsts[p.name].append((ts[0] - due) * 1000)
                lasts[p.name].append((ts[-1] - due) * 1000)
    for p in peers:
        if firsts[p.name]:
            put(first_row, p.name, statistics.median(firsts[p.name]))
            put(last_row, p.name, statistics.median(lasts[p.name]))


def _at(t: float) -> tuple[str, str]:
    d = datetime.fromtimestamp(t, timezone.utc)
    return str(d.minute), str(d.hour)


def bench_overhead(tmp: Path, peers: list[Peer]) -> None:
    seconds = float(os.environ.get("BENCH_OVERHEAD_SECONDS", "60"))
    per_second = 100
    n = int(seconds * per_second)
    script = stamp_script(tmp)
    r = row("overhead", f"scheduler CPU per run ({per_second} jobs every second, {seconds:.0f} s)", "ms", 2)
    for p in peers:
        if not p.seconds:
            r.notes[p.name] = "minute granularity"
            continue
        work = tmp / p.name
        work.mkdir()
        out = work / "stamps"
        jobs = [Job(f"t{i:02d}", "*", "*", (str(script), str(out)), second="*") for i in range(per_second)]
        proc = p.start(jobs, work, max_concurrent=per_second)
        try:
            wait_for(lambda o=out: len(stamps(o)) >= per_second, 30)
            time.sleep(1.5)
            cpu0, _ = proc_stats(proc.pid)
            c0 = len(stamps(out))
            wait_for(lambda o=out, c=c0: len(stamps(o)) - c >= n, n / per_second * 3, 0.25)
            cpu1, _ = proc_stats(proc.pid)
            runs = len(stamps(out)) - c0
        finally:
            p.stop(proc)
        put(r, p.name, (cpu1 - cpu0) / runs * 1000)


def bench_scale(tmp: Path, peers: list[Peer]) -> None:
    script = stamp_script(tmp)
    jobs = [Job(f"s{i:05d}", str(i % 60), "*" if i % 3 else f"*/{1 + i % 12}", (str(script), "out"), second="0")
            for i in range(10000)]
    r = row("scale", "load and validate 10,000 jobs (wall)", "s", 2)
    for p in peers:
        work = tmp / f"{p.name}-validate"
        work.mkdir()
        cmd = p.validate(jobs if p.seconds else [Job(j.name, j.minute, j.hour, j.argv) for j in jobs], work)
        if cmd is None:
            r.notes[p.name] = "no validate mode"
            continue
        try:
            first = wall(cmd, timeout=VALIDATE_LIMIT)
        except subprocess.TimeoutExpired:
            r.notes[p.name] = f"> {VALIDATE_LIMIT:.0f} s, stopped"
            continue
        # A peer that takes many seconds is measured once: repeats would not change the verdict.
        put(r, p.name, first if first > 15 else statistics.median([first, *(wall(cmd) for _ in range(REPEAT - 1))]))
    window = float(os.environ.get("BENCH_DISPATCH_SECONDS", "10"))
    for size in (10, 10000):
        d = row("scale", f"every-second job with {size:,} jobs loaded: p50 late", "ms", 2)
        for p in peers:
            if not p.seconds:
                d.notes[p.name] = "minute granularity"
                continue
            work = tmp / f"{p.name}-{size}"
            work.mkdir()
            out = work / "stamps"
            loaded = [Job("tick", "*", "*", (str(script), str(out)), second="*"), *far_jobs(size - 1, script, work / "never")]
            proc = p.start(loaded, work, max_concurrent=4)
            try:
                wait_for(lambda o=out: bool(stamps(o)), 60)
                time.sleep(window + 0.5)
            finally:
                p.stop(proc)
            put(d, p.name, pct(lateness_ms(stamps(out)[1:]), 50))


def _cronpy_run(tmp: Path, jobs_yaml: str) -> tuple[subprocess.Popen[bytes], Path]:
    path = tmp / "jobs.yaml"
    path.write_text(f"state_dir: {tmp / 'state'}\ntimezone: UTC\n" + jobs_yaml)
    proc = subprocess.Popen(cronpy_cmd("run", str(path)), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return proc, tmp / "state" / "history.db"


def _rows(db: Path, sql: str) -> list[tuple]:
    try:
        con = sqlite3.connect(db, timeout=30)
    except sqlite3.Error:
        return []
    try:
        return con.execute(sql).fetchall()
    except sqlite3.OperationalError:
        return []  # not created yet
    finally:
        con.close()


def bench_record(tmp: Path, peers: list[Peer]) -> None:
    if not any(isinstance(p, Cronpy) for p in peers):
        return
    n = int(os.environ.get("BENCH_RECORD_JOBS", "200"))
    seconds = float(os.environ.get("BENCH_RECORD_SECONDS", "10"))
    p95 = row("record", f"{n} `true` jobs every second: recorded duration p95", "ms", 1)
    skipped = row("record", f"{n} `true` jobs every second: runs skipped as still running", "", 0)
    jobs = "".join(f"  r{i:03d}: {{schedule: '* * * * * *', command: ['true']}}\n" for i in range(n))
    proc, db = _cronpy_run(tmp, f"max_concurrent: {2 * n}\njobs:\n{jobs}")
    try:
        wait_for(lambda: bool(_rows(db, "SELECT 1 FROM runs LIMIT 1")), 60)
        time.sleep(seconds)
    finally:
        Cronpy().stop(proc)
    durations = [r[0] * 1000 for r in _rows(db, "SELECT duration FROM runs WHERE status = 'success'")]
    put(p95, "cronpy", pct(durations, 95) if durations else float("nan"))
    put(skipped, "cronpy", _rows(db, "SELECT count(*) FROM runs WHERE status = 'skipped'")[0][0])


def bench_fault(tmp: Path, peers: list[Peer]) -> None:
    if not any(isinstance(p, Cronpy) for p in peers):
        return
    seconds = float(os.environ.get("BENCH_FAULT_SECONDS", "30"))
    gap = row("fault", f"store unwritable {seconds:.0f} s: every-second job's longest gap", "s", 2)
    lost = row("fault", f"store unwritable {seconds:.0f} s: outcomes missing afterwards", "", 0)
    script = stamp_script(tmp)
    out = tmp / "stamps"
    proc, db = _cronpy_run(tmp, f"jobs:\n  tick: {{schedule: '* * * * * *', command: [{str(script)!r}, {str(out)!r}]}}\n")
    shell = None
    try:
        wait_for(lambda: len(_rows(db, "SELECT 1 FROM runs")) >= 2, 60)
        shell = subprocess.Popen(["sqlite3", str(db)], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
        assert shell.stdin is not None
        shell.stdin.write("PRAGMA busy_timeout = 60000;\nBEGIN EXCLUSIVE;\n")
        shell.stdin.flush()
        start = time.time()
        time.sleep(seconds)
        shell.stdin.write("COMMIT;\n")
        shell.stdin.close()
        shell.wait(60)
        end = time.time()
        time.sleep(5)  # the writer's backoff is at most 2 s: everything is written by then
    finally:
        if shell is not None and shell.poll() is None:
            shell.kill()
        Cronpy().stop(proc)
    ts = [t for t in stamps(out) if start - 1 <= t <= end + 1]
    put(gap, "cronpy", max((b - a for a, b in zip(ts, ts[1:])), default=float("nan")))
    recorded = _rows(db, f"SELECT count(*) FROM runs WHERE status = 'success' AND started_at BETWEEN {start - 1}"
                         f" AND {end + 1}")[0][0]
    put(lost, "cronpy", max(0, len(ts) - recorded))


WORKLOADS = {"cli": bench_cli, "idle": bench_idle, "precision": bench_precision, "burst": bench_burst,
             "overhead": bench_overhead, "scale": bench_scale, "record": bench_record, "fault": bench_fault}

# What --short sets (unless the environment already does): every workload once, briefly.
SHORT = {"BENCH_REPEAT": "1", "BENCH_IDLE_SECONDS": "10", "BENCH_PRECISION_SECONDS": "10",
         "BENCH_OVERHEAD_SECONDS": "10", "BENCH_DISPATCH_SECONDS": "5", "BENCH_RECORD_SECONDS": "5",
         "BENCH_FAULT_SECONDS": "10", "BENCH_VALIDATE_LIMIT": "20", "BENCH_HISTORY_ROWS": "100000"}


# -- the table ---------------------------------------------------------------------------------

def table(peers: list[Peer], skipped: dict[str, str]) -> str:
    names = [p.name for p in peers] + list(skipped)
    head = ["workload", "metric", *names, "ratio"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in ROWS:
        cells = [r.workload, f"{r.metric}" + (f" ({r.unit})" if r.unit else "")]
        for name in names:
            if name in r.notes and name not in r.values:
                cells.append(f"n/a ({r.notes[name]})")
            elif name in r.notes:
                cells.append(r.notes[name])
            elif name in r.values:
                cells.append(f"{r.values[name]:.{r.digits}f}")
            else:
                cells.append("—")
        ours = r.values.get("cronpy")
        others = [v for k, v in r.values.items() if k != "cronpy"]
        if ours is not None and others and ours > 0:
            cells.append(f"{min(others) / ours:.1f}×")
        else:
            cells.append("")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("workloads", nargs="*", metavar="workload", help=", ".join(WORKLOADS) + " (default: all)")
    ap.add_argument("--only", action="append", metavar="TOOL",
                    help="measure only these tools (cronpy, cron, yacron, APScheduler); repeatable")
    ap.add_argument("--short", action="store_true",
                    help="every workload once and briefly (~3 minutes): provisional figures")
    args = ap.parse_args(argv)
    if args.short:
        global REPEAT, VALIDATE_LIMIT
        for key, value in SHORT.items():
            os.environ.setdefault(key, value)
        REPEAT = int(os.environ["BENCH_REPEAT"])
        VALIDATE_LIMIT = float(os.environ["BENCH_VALIDATE_LIMIT"])
    unknown = [n for n in args.workloads if n not in WORKLOADS]
    if unknown:
        print(f"unknown workload(s): {', '.join(unknown)}; known: {', '.join(WORKLOADS)}", file=sys.stderr)
        return 2
    started = time.monotonic()
    wanted = [p for p in ALL if not args.only or p.name in args.only]
    peers: list[Peer] = []
    skipped: dict[str, str] = {}
    for p in wanted:
        try:
            p.setup()
            peers.append(p)
        except Unavailable as exc:
            skipped[p.name] = str(exc)
            print(f"# {p.name}: not measured: {exc}", flush=True)
    print(f"# cronpy bench, {datetime.now().date()}, {os.cpu_count()} cores, Python {sys.version.split()[0]}, "
          f"tools: {', '.join(p.name for p in peers)}", flush=True)
    for name in args.workloads or list(WORKLOADS):
        with tempfile.TemporaryDirectory(prefix=f"cronpy-bench-{name}-") as d:
            WORKLOADS[name](Path(d), peers)
    print()
    print(table(peers, skipped))
    for name, why in skipped.items():
        print(f"\n{name}: not measured: {why}")
    print(f"\n(medians of {REPEAT}; ratio = best peer / cronpy, above 1 means cronpy is ahead; "
          f"{(time.monotonic() - started) / 60:.1f} minutes)")
    if os.environ.get("BENCH_JSON"):
        Path(os.environ["BENCH_JSON"]).write_text(json.dumps([r.__dict__ for r in ROWS], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
