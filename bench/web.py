#!/usr/bin/env python3
"""`cronpy web` on a large history: `python bench/web.py [--rows N] [--dir DIR] [--repeat N]`.

Builds a history of 1,000,000 finished runs of 50 jobs (bench/run.py's generator, through
cronpy's own schema; ~1 minute), starts the real `cronpy web` on a free loopback port, and
times whole HTTP requests from this process: the first request of each page after start-up
(cold: templates compiled, the database's pages read from disk or the page cache) and the
median and max of the next --repeat (warm). The target is the jobs page in <= 300 ms.
With --dir, a history already built there is reused.
"""

from __future__ import annotations

import argparse
import os
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import make_history  # noqa: E402  (bench/ is not a package)

TARGET_MS = 300.0
PAGES = ["/", "/?sort=rate&dir=desc&status=failed", "/jobs/job007", "/jobs/job007?status=failed&since=7d",
         "/runs/500000", "/now", "/api/jobs", "/api/jobs/job007/runs?limit=50", "/api/status"]


def fetch_ms(url: str) -> float:
    start = time.perf_counter()
    with urllib.request.urlopen(url, timeout=60) as r:
        r.read()
        assert r.status == 200, url
    return (time.perf_counter() - start) * 1000


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--dir", type=Path, help="build (or reuse) the history here instead of a temporary dir")
    ap.add_argument("--repeat", type=int, default=20)
    args = ap.parse_args()
    work = args.dir or Path(tempfile.mkdtemp(prefix="cronpy-web-bench-"))
    db = work / "state" / "history.db"
    jobs = work / "jobs.yaml"
    jobs.write_text("state_dir: state\njobs:\n" + "".join(
        f"  job{i:03d}: {{schedule: '*/5 * * * *', command: 'true'}}\n" for i in range(50)))
    have = 0
    if db.exists():
        with sqlite3.connect(db) as con:
            have = con.execute("SELECT count(*) FROM runs").fetchone()[0]
    if have != args.rows:
        db.unlink(missing_ok=True)
        t = time.perf_counter()
        make_history(db, args.rows)
        print(f"generated {args.rows:,} rows in {time.perf_counter() - t:.1f}s", flush=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k not in ("CRONPY_STATE_DIR", "CRONPY_STORE")}
    proc = subprocess.Popen([sys.executable, "-m", "cronpy", "web", "-f", str(jobs), "--port", str(port)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(base + "/healthz", timeout=2).read()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit(f"cronpy web did not start: {proc.stderr.read().decode() if proc.stderr else ''}")
                time.sleep(0.05)
        print(f"history: {args.rows:,} rows, 50 jobs; {args.repeat} warm requests a page\n")
        print(f"{'page':<42} {'cold ms':>8} {'p50 ms':>8} {'max ms':>8}")
        result = {}
        for page in PAGES:
            cold = fetch_ms(base + page)
            warm = [fetch_ms(base + page) for _ in range(args.repeat)]
            result[page] = (cold, statistics.median(warm), max(warm))
            print(f"{page:<42} {cold:8.1f} {statistics.median(warm):8.1f} {max(warm):8.1f}", flush=True)
    finally:
        proc.terminate()
        proc.wait(10)
    jobs_page = result["/"]
    ok = jobs_page[1] <= TARGET_MS and jobs_page[2] <= TARGET_MS
    print(f"\njobs page: p50 {jobs_page[1]:.1f} ms, max {jobs_page[2]:.1f} ms (target <= {TARGET_MS:.0f} ms):"
          f" {'OK' if ok else 'OVER'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
