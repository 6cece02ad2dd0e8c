"""Run a job list under APScheduler 3, for bench/run.py (runs in the peers' virtualenv).

    apscheduler_driver.py run JOBS.json    a BlockingScheduler until SIGTERM
    apscheduler_driver.py load JOBS.json   add every job, compute each first fire time, exit

JOBS.json: {"workers": N, "jobs": [{"id", "second", "minute", "hour", "argv": [...]}, ...]}.
Each job runs its argv (no shell) in the scheduler's thread pool, the usual way to run
commands from APScheduler.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.schedulers.blocking import BlockingScheduler
from apscheduler.triggers.cron import CronTrigger


def run_command(argv: list[str]) -> None:
    subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)


def add_jobs(scheduler, spec) -> None:
    for job in spec["jobs"]:
        trigger = CronTrigger(second=job["second"], minute=job["minute"], hour=job["hour"], timezone="UTC")
        scheduler.add_job(run_command, trigger, args=[job["argv"]], id=job["id"], max_instances=1000,
                          misfire_grace_time=60, coalesce=True)


def main() -> int:
    mode, path = sys.argv[1], sys.argv[2]
    with open(path) as fh:
        spec = json.load(fh)
    executors = {"default": ThreadPoolExecutor(spec["workers"])}
    if mode == "load":
        scheduler = BackgroundScheduler(executors=executors, timezone="UTC")
        add_jobs(scheduler, spec)
        scheduler.start(paused=True)  # computes every job's next fire time
        scheduler.shutdown(wait=False)
        return 0
    scheduler = BlockingScheduler(executors=executors, timezone="UTC")
    add_jobs(scheduler, spec)
    signal.signal(signal.SIGTERM, lambda *_: scheduler.shutdown(wait=False))
    scheduler.start()
    return 0


if __name__ == "__main__":
    sys.exit(main())
