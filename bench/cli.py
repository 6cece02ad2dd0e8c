"""Start-up of the read-only commands and completion, side by side with `python -c pass`.

    python bench/cli.py [--rows N] [--runs N]

Each command is a whole process (the `cronpy` console script of the active environment), run
`--runs` times after one warm-up; the table gives the median and the fastest wall time, and the
median CPU time (user + system, from wait4: steadier than wall time when the machine is
shared). `python -c pass` runs with the interpreter of that console script. The history is
generated through cronpy's own schema (`--rows`, default 100,000 over 50 jobs), as
bench/run.py does. Targets (issue #16): history, stats and job-name completion <= 60 ms,
--help <= 100 ms. `stats` is measured as it usually runs (its caches in the state dir hold) and,
without a target, as the first run after the jobs file changed and every job ran again.

The header says which kind of install it measured: "editable" (`pip install -e .`, the CI's,
which adds an import finder to every start) or "regular" (`pip install .`, what users get).
Children run with Python's bytecode cache on, as a user's do: PYTHONDONTWRITEBYTECODE is
removed from their environment (with it set, an editable install recompiles cronpy at every
start: +30-50 ms).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import make_history  # noqa: E402  (bench/run.py: the same generated history)


def timed(cmd: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float]:
    """Wall and CPU (user + system) seconds of one run of `cmd`."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=cwd)
    _, _, usage = os.wait4(proc.pid, 0)
    proc.returncode = 0  # reaped above
    return time.perf_counter() - start, usage.ru_utime + usage.ru_stime


INSTALL_KIND = """
import importlib.metadata as m, json, cronpy
d = m.distribution("cronpy-runner")
url = json.loads(d.read_text("direct_url.json") or "{}")
print("editable" if url.get("dir_info", {}).get("editable") else "regular", cronpy.__file__)
"""


def interpreter_of(exe: str) -> str:
    """The Python of a console script (its #! line)."""
    with open(exe, encoding="utf-8", errors="replace") as fh:
        first = fh.readline()
    return first[2:].strip() if first.startswith("#!") else sys.executable


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=21)
    opts = ap.parse_args()
    exe = shutil.which("cronpy")
    if exe is None:
        sys.exit("no `cronpy` on PATH: activate the environment it is installed in")
    with tempfile.TemporaryDirectory() as tmp_:
        tmp = Path(tmp_)
        (tmp / "jobs.yaml").write_text("state_dir: state\njobs:\n" + "".join(
            f"  job{i:03d}: {{schedule: '*/5 * * * *', command: 'true'}}\n" for i in range(50)))
        make_history(tmp / "state" / "history.db", opts.rows)
        env = dict(os.environ, CRONPY_FILE=str(tmp / "jobs.yaml"))
        env.pop("CRONPY_STATE_DIR", None)
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        python = interpreter_of(exe)
        kind = subprocess.run([python, "-c", INSTALL_KIND], capture_output=True, text=True, env=env, cwd=tmp,
                              check=False)
        complete = dict(env, _CRONPY_COMPLETE="bash", _CRONPY_INCOMPLETE="job00")
        # `stats` caches the jobs file's summary and each job's quantiles in the state dir while
        # they hold (see cronpy/jobsummary.py); "first" removes both before every run: the
        # figure after an edit of the jobs file and new runs of every job.
        caches = [tmp / "state" / "jobs-summary.json", tmp / "state" / "stats-memo.json"]
        cases: list[tuple[str, list[str], dict[str, str], int | None]] = [
            ("python -c pass", [python, "-c", "pass"], env, None),
            ("cronpy history --limit 20", [exe, "history", "--limit", "20"], env, 60),
            ("cronpy history job007 --status failed -n 20", [exe, "history", "job007", "--status", "failed",
                                                             "-n", "20"], env, 60),
            ("cronpy stats", [exe, "stats"], env, 60),
            ("cronpy stats, first (no caches)", [exe, "stats"], env, None),
            ("completion: cronpy trigger job00<Tab>", [exe, "trigger"], complete, 60),
            ("cronpy --help", [exe, "--help"], env, 100),
            ("cronpy history --help", [exe, "history", "--help"], env, 100),
        ]
        print(f"{opts.rows:,} rows, {opts.runs} runs each, {os.cpu_count()} CPUs, Python {sys.version.split()[0]}")
        print(f"install: {kind.stdout.strip() or 'unknown: ' + kind.stderr.strip()[-200:]}")
        print(f"{'command':<48} {'median':>8} {'min':>8} {'cpu':>8} {'target':>8}")
        worst = 0
        for name, cmd, e, target in cases:
            cold = "no caches" in name
            timed(cmd, e, tmp)  # warm-up: caches, and the bytecode of an editable install
            runs = []
            for _ in range(opts.runs):
                for f in caches if cold else ():
                    f.unlink(missing_ok=True)
                runs.append(timed(cmd, e, tmp))
            walls = [w * 1000 for w, _ in runs]
            med, cpu = statistics.median(walls), statistics.median(c * 1000 for _, c in runs)
            mark = "" if target is None else f"{target} ms" + (" MISSED" if med > target else "")
            worst |= target is not None and med > target
            print(f"{name:<48} {med:>6.1f}ms {min(walls):>6.1f}ms {cpu:>6.1f}ms {mark:>8}")
    return 1 if worst else 0


if __name__ == "__main__":
    sys.exit(main())
