#!/usr/bin/env python3
"""cronpy benchmarks: `python bench/run.py [workload ...]` prints a table of medians.

Workloads (each starts the real `cronpy` in child processes; nothing here is a test):
  cli        wall time of `cronpy --help`, job-name completion, `history --limit 20`,
             `history NAME --status failed --limit 20` and `stats` on a generated history
  idle       RSS and CPU seconds of `cronpy run` over a window with nothing due
             (jobs.example.yaml shifted so nothing fires, and 1,000 jobs)
  precision  lateness of an every-second job: p50 / p99 / max, and whether any fired early
  burst      200 jobs due at the same second: delay from the due instant to the first and
             last child start (each child appends a high-resolution timestamp)
  overhead   runner CPU per run over N runs of `true`
  scale      load-and-validate time of a 10,000-job file

Environment: BENCH_REPEAT (default 3) repetitions; medians are reported.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parent.parent
PY = sys.executable
REPEAT = int(os.environ.get("BENCH_REPEAT", "3"))
RESULTS: list[tuple[str, str, str]] = []  # (workload, metric, value)


def cronpy_cmd(*args: str) -> list[str]:
    exe = shutil.which("cronpy")
    return [exe, *args] if exe else [PY, "-m", "cronpy", *args]


def report(workload: str, metric: str, value: str) -> None:
    RESULTS.append((workload, metric, value))
    print(f"  {workload:<10} {metric:<48} {value}", flush=True)


def wall(cmd: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=cwd, check=False)
    return time.perf_counter() - start


def median_of(fn: Callable[[], float], n: int = REPEAT) -> float:
    return statistics.median(fn() for _ in range(n))


def proc_stats(pid: int) -> tuple[float, int]:
    """CPU seconds (user+system) and RSS in bytes of a live process, from /proc."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    with open(f"/proc/{pid}/status") as fh:
        rss = next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmRSS:"))
    return cpu, rss


def make_history(db: Path, rows: int, jobs: int = 50) -> None:
    """A history.db of `rows` finished runs, written through cronpy's own schema."""
    sys.path.insert(0, str(REPO))
    from cronpy.history import History

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

def bench_cli(tmp: Path) -> None:
    jobs = tmp / "jobs.yaml"
    jobs.write_text("state_dir: state\njobs:\n" + "".join(
        f"  job{i:03d}: {{schedule: '*/5 * * * *', command: 'true'}}\n" for i in range(50)))
    rows = int(os.environ.get("BENCH_HISTORY_ROWS", "1000000"))
    db = tmp / "state" / "history.db"
    t = time.perf_counter()
    make_history(db, rows)
    print(f"  (generated {rows:,} rows in {time.perf_counter() - t:.1f}s)", flush=True)
    report("cli", "database bytes per row (no output stored)", f"{db.stat().st_size / rows:.0f}")
    env = dict(os.environ, CRONPY_FILE=str(jobs))
    cases = {
        "cronpy --help": cronpy_cmd("--help"),
        "completion of job names": cronpy_cmd(),
        "cronpy history --limit 20": cronpy_cmd("history", "--limit", "20"),
        "cronpy history job007 --status failed --limit 20": cronpy_cmd("history", "job007", "--status", "failed", "--limit", "20"),
        "cronpy stats": cronpy_cmd("stats"),
    }
    for name, cmd in cases.items():
        e = dict(env)
        if name.startswith("completion"):
            e.update(_CRONPY_COMPLETE="complete_bash", COMP_WORDS="cronpy trigger job0", COMP_CWORD="2")
        wall(cmd, e, tmp)  # warm the page cache
        report("cli", name + " (wall, median)", f"{median_of(lambda c=cmd, v=e: wall(c, v, tmp)) * 1000:.0f} ms")


def _idle_run(tmp: Path, jobs_text: str, seconds: float, label: str) -> None:
    jobs = tmp / f"{label}.yaml"
    jobs.write_text(jobs_text)
    proc = subprocess.Popen(cronpy_cmd("run", str(jobs), "--state-dir", str(tmp / f"state-{label}")),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(3)  # start-up and first tick
        cpu0, _ = proc_stats(proc.pid)
        time.sleep(seconds)
        cpu1, rss = proc_stats(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    report("idle", f"{label}: CPU over {seconds:.0f}s", f"{cpu1 - cpu0:.3f} s ({(cpu1 - cpu0) * 60 / seconds:.3f} s/min)")
    report("idle", f"{label}: RSS", f"{rss / 1e6:.1f} MB")


def bench_idle(tmp: Path) -> None:
    seconds = float(os.environ.get("BENCH_IDLE_SECONDS", "60"))
    # jobs.example.yaml as shipped: what a new user runs (its jobs fire every minute or so).
    example = (REPO / "jobs.example.yaml").read_text().replace("state_dir: .cronpy", "")
    shutil.copytree(REPO / "examples", tmp / "examples", dirs_exist_ok=True)
    _idle_run(tmp, example, seconds, "jobs.example.yaml")
    far = (datetime.now(timezone.utc) + timedelta(hours=2)).strftime("%M %H")
    many = "jobs:\n" + "".join(f"  j{i:04d}: {{schedule: '{far} * * *', command: 'true'}}\n" for i in range(1000))
    _idle_run(tmp, many, seconds, "1000 jobs, none due")


def bench_precision(tmp: Path) -> None:
    seconds = float(os.environ.get("BENCH_PRECISION_SECONDS", "60"))
    jobs = tmp / "precision.yaml"
    stamp = tmp / "stamps"
    jobs.write_text(f"jobs:\n  p: {{schedule: '* * * * * *', command: ['{PY}', '-c', "
                    f"'import time; open(\"{stamp}\", \"a\").write(repr(time.time()) + chr(10))']}}\n")
    proc = subprocess.Popen(cronpy_cmd("run", str(jobs), "--state-dir", str(tmp / "state-p")),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(seconds + 1)
    proc.send_signal(signal.SIGTERM)
    proc.wait(30)
    con = sqlite3.connect(tmp / "state-p" / "history.db")
    late = sorted((s - d) * 1000 for s, d in con.execute("SELECT started_at, scheduled_for FROM runs"))
    report("precision", f"runs in {seconds:.0f}s", str(len(late)))
    report("precision", "claim lateness p50 / p99 / max", f"{_pct(late, 50):.2f} / {_pct(late, 99):.2f} / {late[-1]:.2f} ms")
    # The child's own clock reading, after fork+exec of a Python interpreter: the user-visible start.
    starts = sorted(float(x) for x in stamp.read_text().split())
    child = sorted((t - int(t)) * 1000 for t in starts)
    report("precision", "child start after the due second p50 / p99 (python -c)", f"{_pct(child, 50):.1f} / {_pct(child, 99):.1f} ms")
    report("precision", "fired early", str(sum(1 for x in late if x < 0)))


def bench_burst(tmp: Path) -> None:
    n = int(os.environ.get("BENCH_BURST_JOBS", "200"))
    stamps = tmp / "burst"
    stamps.mkdir()
    script = tmp / "stamp.sh"
    # date +%s.%N: a high-resolution timestamp from a tiny shell script, as the suite asks.
    script.write_text('#!/bin/sh\ndate +%s.%N >> "$1"\n')
    script.chmod(0o755)
    results_first, results_last = [], []
    for _ in range(REPEAT):
        due = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(seconds=4)
        spec = f"{due.second} {due.minute} {due.hour} * * *"
        jobs = tmp / "burst.yaml"
        out = stamps / f"{due.timestamp():.0f}"
        jobs.write_text(f"max_concurrent: {n}\njobs:\n" + "".join(
            f"  b{i:03d}: {{schedule: '{spec}', command: ['{script}', '{out}']}}\n" for i in range(n)))
        proc = subprocess.Popen(cronpy_cmd("run", str(jobs), "--state-dir", str(tmp / f"state-b{due.timestamp():.0f}")),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(max(0.0, due.timestamp() - time.time()) + 3)
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        times = sorted(float(x) for x in out.read_text().split())
        assert len(times) == n, f"{len(times)} of {n} ran"
        results_first.append(times[0] - due.timestamp())
        results_last.append(times[-1] - due.timestamp())
    report("burst", f"{n} jobs due at once: first start (median)", f"{statistics.median(results_first) * 1000:.1f} ms")
    report("burst", f"{n} jobs due at once: last start (median)", f"{statistics.median(results_last) * 1000:.0f} ms")


def bench_overhead(tmp: Path) -> None:
    n = int(os.environ.get("BENCH_OVERHEAD_RUNS", "2000"))
    jobs = tmp / "overhead.yaml"
    # 20 jobs each every second, overlap allowed: 20 runs a second through the whole path.
    jobs.write_text("max_concurrent: 64\njobs:\n" + "".join(
        f"  t{i:02d}: {{schedule: '* * * * * *', command: ['true'], overlap: allow}}\n" for i in range(20)))
    proc = subprocess.Popen(cronpy_cmd("run", str(jobs), "--state-dir", str(tmp / "state-o")),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    db = tmp / "state-o" / "history.db"
    time.sleep(2.5)
    cpu0, _ = proc_stats(proc.pid)
    c0 = _count(db)
    while _count(db) - c0 < n:
        time.sleep(0.5)
    cpu1, _ = proc_stats(proc.pid)
    runs = _count(db) - c0
    proc.send_signal(signal.SIGTERM)
    proc.wait(60)
    report("overhead", f"runner CPU per run ({runs} runs of `true`)", f"{(cpu1 - cpu0) / runs * 1000:.2f} ms")


def bench_scale(tmp: Path) -> None:
    jobs = tmp / "scale.yaml"
    exprs = ["*/5 * * * *", "0 3 * * *", "H H * * *", "15 */2 * * 1-5", "10m", "0 0 1 * *", "30 4 * * SUN"]
    jobs.write_text("jobs:\n" + "".join(
        f"  s{i:05d}: {{schedule: '{exprs[i % len(exprs)]}', command: 'true', timezone: Europe/Lisbon}}\n"
        for i in range(10000)))
    t = median_of(lambda: wall(cronpy_cmd("validate", str(jobs))))
    report("scale", "cronpy validate, 10,000 jobs (wall)", f"{t:.2f} s")


def _count(db: Path) -> int:
    try:
        con = sqlite3.connect(db, timeout=10)
        try:
            return int(con.execute("SELECT count(*) FROM runs WHERE status != 'running'").fetchone()[0])
        finally:
            con.close()
    except sqlite3.Error:
        return 0


def _pct(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * q / 100))]


WORKLOADS = {"cli": bench_cli, "idle": bench_idle, "precision": bench_precision, "burst": bench_burst,
             "overhead": bench_overhead, "scale": bench_scale}


def main(argv: list[str]) -> int:
    names = argv or list(WORKLOADS)
    unknown = [n for n in names if n not in WORKLOADS]
    if unknown:
        print(f"unknown workload(s): {', '.join(unknown)}; known: {', '.join(WORKLOADS)}", file=sys.stderr)
        return 2
    print(f"# cronpy bench, {datetime.now().date()}, {os.cpu_count()} cores, Python {sys.version.split()[0]}")
    for name in names:
        with tempfile.TemporaryDirectory(prefix=f"cronpy-bench-{name}-") as d:
            WORKLOADS[name](Path(d))
    if os.environ.get("BENCH_JSON"):
        Path(os.environ["BENCH_JSON"]).write_text(json.dumps(RESULTS, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
