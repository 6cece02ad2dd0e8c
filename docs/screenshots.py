#!/usr/bin/env python3
"""Take the README's screenshots of `cronpy web`: `python docs/screenshots.py [OUT_DIR]`.

Builds an example jobs file and two weeks of history for it (rows written through cronpy's
own schema, as the runner would have recorded them), starts a real `cronpy run` (so /now has a
scheduler and a run in progress) and a real `cronpy web`, and photographs the four pages with
Debian's chromium through Playwright. Needs the `web` and `test` extras.
"""

from __future__ import annotations

import json
import os
import random
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]

JOBS = """\
timezone: Europe/Lisbon
state_dir: state
shutdown_grace: 1s
jobs:
  backup:
    description: Nightly dump of the orders database
    schedule: "0 3 * * *"
    command: pg_dump orders > /var/backups/orders.sql
    timeout: 30m
    retries: 2
  heartbeat:
    description: Tell the status page we are alive
    schedule: 5m
    command: curl -fsS https://status.example.com/ping/9f3c
    timeout: 10s
  sync-crm:
    description: Pull contacts changed in the CRM
    schedule: "*/15 * * * *"
    command: ./bin/sync_crm --since 15m
    retries: 1
  import-orders:
    description: Import the marketplace's order feed
    schedule: "*/30 * * * *"
    command: sleep 600
    run_on_start: true
  send-reports:
    description: Daily sales report to the team
    schedule: "0 7 * * 1-5"
    python: reports.daily:send
    kwargs: {to: sales@example.com}
  cleanup-tmp:
    schedule: "@hourly"
    command: find /srv/app/tmp -mtime +2 -delete
  invoice-mail:
    description: Monthly invoices (paused during the migration)
    schedule: "0 9 1 * *"
    command: ./bin/mail_invoices
  legacy-export:
    schedule: "30 2 * * *"
    command: ./bin/export_legacy
    enabled: false
  reindex:
    description: Rebuild the search index (by hand)
    command: ./bin/reindex
"""

# job: (every seconds, offset seconds, duration range, failure share, error, output)
HISTORY = {
    "backup": (86400, 3 * 3600, (240, 330), 0.08, "exited with status 1",
               "pg_dump: dumping contents of table \"orders\"\npg_dump: error: connection to server lost"),
    "heartbeat": (300, 0, (0.15, 0.6), 0.01, "timed out after 10s", ""),
    "sync-crm": (900, 0, (8, 40), 0.09, "exited with status 2",
                 "fetched 412 contacts\nERROR: CRM API returned 503 Service Unavailable\nretry later"),
    "import-orders": (1800, 0, (60, 240), 0.03, "exited with status 1", "feed: 0 bytes\nno orders imported"),
    "send-reports": (86400, 7 * 3600, (3, 9), 0.0, "", "report sent to sales@example.com (23 rows)"),
    "cleanup-tmp": (3600, 0, (0.3, 2.5), 0.0, "", ""),
    "invoice-mail": (86400 * 30, 9 * 3600, (40, 70), 0.0, "", ""),
}


def build(work: Path) -> Path:
    jobs = work / "jobs.yaml"
    jobs.write_text(JOBS)
    sys.path.insert(0, str(REPO))
    from cronpy.history import History

    state = work / "state"
    h = History.open(state)
    h.pause("invoice-mail", datetime.now(timezone.utc) - timedelta(days=3))
    h.close()
    rng = random.Random(7)
    now = time.time()
    start = now - 14 * 86400
    rows = []
    for job, (every, offset, (lo, hi), fail, error, output) in HISTORY.items():
        t = (start // every) * every + offset
        while t < now - hi - 60:
            if t >= start:
                # a bad afternoon for the CRM two days ago, as real histories have
                bad_day = job == "sync-crm" and now - 2.2 * 86400 < t < now - 1.9 * 86400
                failed = rng.random() < (0.6 if bad_day else fail)
                d = rng.uniform(lo, hi) * (1.6 if failed and job != "heartbeat" else 1)
                st = "success" if not failed else ("timeout" if job == "heartbeat" else "failed")
                out = output if failed or job in ("send-reports",) else ""
                rows.append((job, st, "schedule", 1, t, t + rng.uniform(0.001, 0.01), t + d, d,
                             0 if st == "success" else (124 if st == "timeout" else 2), error if failed else None,
                             out or None, "app-1", 1))
            t += every
    rows.sort(key=lambda r: r[5])
    con = sqlite3.connect(state / "history.db")
    con.executemany(
        "INSERT INTO runs (job, status, trigger, attempt, scheduled_for, started_at, finished_at, duration,"
        " exit_code, error, output, host, runner_pid) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)", rows)
    con.commit()
    con.close()
    return jobs


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "docs"
    work = Path(tempfile.mkdtemp(prefix="cronpy-shots-"))
    jobs = build(work)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRONPY_")}
    env["TZ"] = "Europe/Lisbon"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    runner = subprocess.Popen([sys.executable, "-m", "cronpy", "run", str(jobs)], cwd=work, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # From the jobs file's folder, so the pages show short relative paths.
    web = subprocess.Popen([sys.executable, "-m", "cronpy", "web", "-f", "jobs.yaml", "--port", str(port)],
                           cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                status = json.load(urllib.request.urlopen(base + "/api/status", timeout=2))
                if status["running"] and status["scheduler"]:
                    break
            except OSError:
                pass
            time.sleep(0.2)
        time.sleep(3)  # a few seconds of elapsed time on the running import
        failed = json.load(urllib.request.urlopen(base + "/api/jobs/sync-crm/runs?status=failed&limit=1"))[0]["id"]
        from playwright.sync_api import sync_playwright

        with sync_playwright() as p:
            b = p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
            page = b.new_page(viewport={"width": 1360, "height": 860}, device_scale_factor=1)
            for name, path, full in (("jobs", "/", False), ("job", "/jobs/sync-crm", False),
                                     ("run", f"/runs/{failed}", False), ("now", "/now", False)):
                page.goto(base + path)
                page.wait_for_load_state("load")
                page.screenshot(path=str(out / f"web-{name}.png"), full_page=full)
                print(f"wrote {out / f'web-{name}.png'}")
            b.close()
    finally:
        for proc in (web, runner):
            proc.terminate()
            proc.wait(30)


if __name__ == "__main__":
    main()
