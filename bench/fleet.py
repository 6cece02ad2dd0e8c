"""The PostgreSQL fleet store: claims per second with three runners, and takeover times.

    python bench/fleet.py                 # both parts, lease 10 s (the default), ~2 minutes
    python bench/fleet.py --lease 3       # a shorter lease: faster takeovers
    python bench/fleet.py claims          # only the claim throughput

It starts a throwaway PostgreSQL server (tests/pgserver.py) with fsync and synchronous
commit on, as a production server would run, on loopback.

claims:   three processes on one database, as three runners: one holds the lease and claims
          (job, instant) rows as fast as it can, one row a transaction (what a tick with one
          due job commits) and then bursts of 200 rows a transaction; the two standbys poll
          the lease every 0.25 s, as `cronpy run` does, and each also tries a claim with a
          stale epoch every poll, which the database must refuse.
takeover: three `cronpy run` processes with an every-second job. The leader is SIGSTOPped,
          then (after the fleet settles) killed with SIGKILL, then stopped with SIGTERM. The
          figure is the time from the signal to the first run started by another runner.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent / "tests"))

from pgserver import PgServer  # noqa: E402

UTC = timezone.utc


def _leader(url: str, seconds: float, out: "mp.Queue[dict[str, float]]") -> None:
    from cronpy.store import NewRun
    from cronpy.models import Trigger
    from cronpy.store.postgres import PgStore

    store = PgStore(url, lease=30)
    assert store.leadership.try_acquire()
    base = datetime(2030, 1, 1, tzinfo=UTC)
    latencies = []
    n = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        t = time.perf_counter()
        at = base + timedelta(seconds=n)
        assert store.start_runs([NewRun("single", Trigger.SCHEDULE, at, at)]) != [None]
        latencies.append(time.perf_counter() - t)
        n += 1
    single = n / seconds
    rows = 0
    end = time.monotonic() + seconds
    burst_start = time.monotonic()
    while time.monotonic() < end:
        at = base + timedelta(seconds=rows)
        store.start_runs([NewRun(f"burst{i}", Trigger.SCHEDULE, at, at) for i in range(200)])
        rows += 200
    burst = rows / (time.monotonic() - burst_start)
    latencies.sort()
    out.put({"single_per_s": single, "p50_ms": latencies[len(latencies) // 2] * 1000,
             "p99_ms": latencies[int(len(latencies) * 0.99)] * 1000, "burst_rows_per_s": burst})
    store.close()


def _standby(url: str, seconds: float, out: "mp.Queue[dict[str, float]]") -> None:
    from cronpy.errors import NotLeader
    from cronpy.models import Trigger
    from cronpy.store.postgres import PgStore

    store = PgStore(url, lease=30)
    polls = refused = accepted = 0
    end = time.monotonic() + seconds
    at = datetime(2031, 1, 1, tzinfo=UTC)
    while time.monotonic() < end:
        store.leadership.try_acquire()
        polls += 1
        store.leadership.epoch = 0  # a stale epoch, as a paused former leader would hold
        try:
            store.start_run("stale", Trigger.SCHEDULE, at, scheduled_for=at)
            accepted += 1
        except NotLeader:
            refused += 1
        store.leadership.epoch = None
        time.sleep(0.25)
    out.put({"polls": polls, "refused": refused, "accepted": accepted})
    store.close()


def claims(server: PgServer, seconds: float) -> None:
    url = server.new_database()
    from cronpy.store.postgres import PgStore

    PgStore(url).close()  # create the schema before the race
    out: "mp.Queue[dict[str, float]]" = mp.Queue()
    procs = [mp.Process(target=_leader, args=(url, seconds, out))]
    time.sleep(0.2)
    procs += [mp.Process(target=_standby, args=(url, seconds * 2, out)) for _ in range(2)]
    procs[0].start()
    time.sleep(0.5)  # the leader takes the lease first
    for p in procs[1:]:
        p.start()
    results = [out.get(timeout=seconds * 4) for _ in procs]
    for p in procs:
        p.join()
    lead = next(r for r in results if "single_per_s" in r)
    stand = [r for r in results if "polls" in r]
    print(f"claims, 3 runners on one database (fsync on), {seconds:.0f} s per part:")
    print(f"  one row a transaction: {lead['single_per_s']:.0f} claims/s"
          f" (p50 {lead['p50_ms']:.2f} ms, p99 {lead['p99_ms']:.2f} ms a claim)")
    print(f"  200 rows a transaction: {lead['burst_rows_per_s']:.0f} claims/s")
    print(f"  standbys: {sum(s['polls'] for s in stand):.0f} lease polls, "
          f"{sum(s['refused'] for s in stand):.0f} stale claims refused, {sum(s['accepted'] for s in stand):.0f} accepted")


def _leader_pid(url: str) -> int | None:
    import psycopg

    try:
        with psycopg.connect(url, autocommit=True) as conn:
            row = conn.execute("SELECT pid FROM cronpy.leader WHERE expires_at > clock_timestamp()").fetchone()
    except psycopg.errors.UndefinedTable:  # no runner has created the schema yet
        return None
    return row[0] if row else None


def _first_run_by_other(url: str, pid: int, after: float, timeout: float) -> float | None:
    import psycopg

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        with psycopg.connect(url, autocommit=True) as conn:
            row = conn.execute("SELECT extract(epoch FROM min(started_at))::float8 FROM cronpy.runs"
                               " WHERE runner_pid <> %s AND started_at > to_timestamp(%s)", (pid, after)).fetchone()
        if row and row[0] is not None:
            return float(row[0]) - after
        time.sleep(0.05)
    return None


def takeover(server: PgServer, lease: float, rounds: int) -> None:
    url = server.new_database()
    work = Path(tempfile.mkdtemp(prefix="cronpy-fleet-"))
    jobs = work / "jobs.yaml"
    jobs.write_text(f"store: {url}\nleader_lease: {lease:g}s\njobs:\n  tick: {{schedule: '* * * * * *', command: 'true'}}\n")
    procs: list[subprocess.Popen[bytes]] = []

    def spawn(i: int) -> None:
        procs.append(subprocess.Popen([sys.executable, "-m", "cronpy", "run", str(jobs), "--state-dir",
                                       str(work / f"host{i}")], stdout=subprocess.DEVNULL,
                                      stderr=open(work / f"runner{i}.log", "ab"), cwd=work))

    for i in range(3):
        spawn(i)
    figures: dict[str, list[float]] = {"SIGSTOP": [], "SIGKILL": [], "SIGTERM": []}
    try:
        for _ in range(rounds):
            for how in figures:
                deadline = time.monotonic() + 30
                while (pid := _leader_pid(url)) is None and time.monotonic() < deadline:
                    time.sleep(0.1)
                assert pid is not None, "no leader"
                time.sleep(1.5)  # the leader is firing steadily
                victim = next(p for p in procs if p.pid == pid)
                at = time.time()
                victim.send_signal(getattr(signal, how))
                took = _first_run_by_other(url, pid, at, lease * 3 + 10)
                figures[how].append(took if took is not None else float("nan"))
                if how == "SIGSTOP":
                    victim.send_signal(signal.SIGCONT)  # it steps down and stands by
                else:
                    victim.wait(30)
                    procs.remove(victim)
                    spawn(len(procs) + 10 + len(figures[how]))  # a new host joins, as a restart would
    finally:
        for p in procs:
            p.send_signal(signal.SIGCONT)
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
    print(f"takeover, 3 `cronpy run` processes, leader_lease {lease:g}s, {rounds} round(s);"
          " signal to the first run started by another runner:")
    for how, values in figures.items():
        label = {"SIGSTOP": "leader paused (SIGSTOP)", "SIGKILL": "leader killed (kill -9)",
                 "SIGTERM": "leader stopped (SIGTERM, hands the lease back)"}[how]
        print(f"  {label}: median {statistics.median(values):.2f} s, max {max(values):.2f} s"
              f" ({', '.join(f'{v:.2f}' for v in values)})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("parts", nargs="*", choices=["claims", "takeover", []], default=[])
    parser.add_argument("--lease", type=float, default=10.0, help="leader_lease for the takeover part")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each claims part")
    parser.add_argument("--rounds", type=int, default=2, help="takeover rounds")
    args = parser.parse_args()
    parts = args.parts or ["claims", "takeover"]
    server = PgServer(fsync=True)
    try:
        print(f"{datetime.now(UTC):%Y-%m-%d}, {os.cpu_count()} cores, Python {sys.version.split()[0]}, "
              f"PostgreSQL from {server.bindir}")
        if "claims" in parts:
            claims(server, args.seconds)
        if "takeover" in parts:
            takeover(server, args.lease, args.rounds)
    finally:
        server.stop()


if __name__ == "__main__":
    main()
