#!/usr/bin/env python3
"""Soak test of exactly-once: several runners on one state dir, the scheduler-lock holder
killed -9 again and again, an every-second job throughout.

    python bench/soak.py [--seconds 180] [--runners 3] [--kill-every 15]

Prints how many instants ran, duplicates (an instant run twice), misses (instants in the
window with no run) and the longest gap between consecutive runs, then PRAGMA integrity_check.
A killed runner is restarted, so the number of runners stays the same.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path


def start(jobs: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    env.pop("CRONPY_STATE_DIR", None)
    return subprocess.Popen([sys.executable, "-m", "cronpy", "run", str(jobs)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env, cwd=jobs.parent)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=180)
    ap.add_argument("--runners", type=int, default=3)
    ap.add_argument("--kill-every", type=float, default=15)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="cronpy-soak-") as d:
        tmp = Path(d)
        jobs = tmp / "jobs.yaml"
        jobs.write_text("state_dir: state\njobs:\n  tick: {schedule: '* * * * * *', command: 'true'}\n")
        procs = [start(jobs) for _ in range(args.runners)]
        holder_file = tmp / "state" / "locks" / "scheduler.lock"
        begin = time.time()
        kills = 0
        try:
            while time.time() - begin < args.seconds:
                time.sleep(args.kill_every)
                try:
                    leader_pid = json.loads(holder_file.read_text())["pid"]
                except (OSError, ValueError, KeyError):
                    continue
                for i, p in enumerate(procs):
                    if p.pid == leader_pid:
                        p.send_signal(signal.SIGKILL)
                        p.wait()
                        kills += 1
                        procs[i] = start(jobs)
        finally:
            end = time.time()
            for p in procs:
                p.send_signal(signal.SIGTERM)
            for p in procs:
                p.wait(60)
        con = sqlite3.connect(tmp / "state" / "history.db")
        instants = [r[0] for r in con.execute(
            "SELECT scheduled_for FROM runs WHERE trigger IN ('schedule', 'catchup') AND status != 'skipped'"
            " ORDER BY scheduled_for")]
        counts = Counter(instants)
        duplicates = sum(c - 1 for c in counts.values() if c > 1)
        first, last = instants[0], instants[-1]
        expected = int(last - first) + 1
        misses = expected - len(counts)
        gaps = [b - a for a, b in zip(instants, instants[1:])]
        integrity = con.execute("PRAGMA integrity_check").fetchone()[0]
        interrupted = con.execute("SELECT count(*) FROM runs WHERE status = 'interrupted'").fetchone()[0]
        print(f"soak: {end - begin:.0f}s, {args.runners} runners, leader killed -9 {kills} times")
        print(f"instants run: {len(counts)} of {expected}; duplicates: {duplicates}; misses: {misses}; "
              f"longest gap: {max(gaps):.1f}s; runs marked interrupted: {interrupted}; integrity_check: {integrity}")
        return 0 if duplicates == 0 and integrity == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
