"""Property test: a mutated jobs file is either valid or a clear error, in bounded time and memory.

Mutations start from a realistic jobs file and splice in what breaks parsers: brackets and
braces by the thousand, anchors and aliases, merge keys, tags, control characters, NUL and
bytes that are not UTF-8, huge numbers and durations, deletions and duplications. The
in-process loader (what `validate` calls) takes the volume; a sample goes through the real
`cronpy validate` under an address-space limit, which must exit 0 or 2 without a traceback.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cronpy.config import load_jobs
from cronpy.errors import ConfigError

SEED = b"""\
timezone: Europe/Lisbon
state_dir: state
max_concurrent: 4
shutdown_grace: 30s
defaults: &defaults
  timeout: 10m
  retries: 1
  backoff: {initial: 10s, factor: 2, max: 10m, jitter: 0.1}
jobs:
  backup:
    description: Nightly database dump
    schedule: "0 3 * * *"
    command: pg_dump app > /var/backups/app.sql
    env: {PGHOST: db.internal}
    ping: https://user:pass@hc.example/ping/abc
  heartbeat:
    <<: *defaults
    schedule: 30s
    python: myapp.tasks:ping
    kwargs: {url: "http://localhost:8080/health", tries: [1, 2, 3]}
    jitter: 5s
  report:
    at: "2030-12-31T23:59:00"
    command: [./report.sh, --all]
    after: [backup]
"""

FRAGMENTS = [
    b"[", b"]", b"{", b"}", b"[" * 5000, b"{" * 5000, b"- " * 2000, b"&a ", b"*a", b"&b [*a, *a, *a, *a]",
    b"<<: *defaults", b"<<: [*defaults, *defaults]", b"!!python/object:os.system ", b"!!binary ", b"!custom ",
    b"\x00", b"\x1b[31m", b"\x07", b"\xff\xfe", b"\xc3", b"\xe2\x82", b"\t", b"\r", b"\n", b"\n  ", b"\n    ",
    b": ", b"? ", b"- ", b"'", b'"', b"|", b">", b"%YAML 1.1\n", b"%TAG ! tag:x,2000:\n", b"---\n", b"...\n", b"#",
    b"99999999999999999999999999", b"99999999999999d", b"4000000d", b"1e400", b".inf", b".nan", b"-1s", b"0s",
    b"~", b"null", b"", b"2026-02-30", b"* * * * * * *", b"@reboot", b"0 0 30 2 *",
    b"[" * 600 + b"]" * 600, b"{a: " * 300 + b"1" + b"}" * 300,
]
# Whole values put in place of a key's value: what crashed or froze the loader before, balanced
# deep nesting (RecursionError), an empty value (AttributeError on durations), plus the rest.
VALUES = [b"", b"[" * 600 + b"]" * 600, b"- " * 600 + b"x", b"*a", b"&a x", b"!!python/name:os.system",
          b"99999999999999d", b"4000000d", b"1" + b"0" * 400, b".inf", b"\x1b[31m", b"{}", b"[]", b"~"]
# Whole top-level entries put in front of the file: an alias bomb (9^8 values: minutes and
# gigabytes before), deep block nesting, a second document.
TOP = [
    b"b0: &b0 [x, x, x, x, x, x, x, x, x]\n" + b"".join(
        b"b%d: &b%d [" % (i, i) + b", ".join([b"*b%d" % (i - 1)] * 9) + b"]\n" for i in range(1, 9)),
    b"".join(b"  " * i + b"k%d:\n" % i for i in range(1500)),
    b"---\nx: 1\n---\n", b"%YAML 1.1\n---\n",
]


@st.composite
def mutated(draw: st.DrawFn, hostile: bool = False) -> bytes:
    """The seed with 1-6 mutations; with `hostile`, one that puts a known-bad value or
    top-level entry in (so that a small sample of real processes meets them, unmasked by a
    syntax error from another mutation)."""
    data = bytearray(SEED)
    for i in range(1 if hostile else draw(st.integers(1, 6))):
        at = draw(st.integers(0, len(data)))
        kinds = ["value", "top"] if hostile and i == 0 else ["insert", "delete", "duplicate", "byte", "value", "top"]
        kind = draw(st.sampled_from(kinds))
        if kind == "value":
            # Replace the value of the `key:` on the line holding `at`.
            start = data.rfind(b"\n", 0, at) + 1
            end = data.find(b"\n", start)
            end = len(data) if end < 0 else end
            colon = data.find(b": ", start, end)
            if colon >= 0:
                data[colon + 2:end] = draw(st.sampled_from(VALUES))
        elif kind == "top":
            data[0:0] = draw(st.sampled_from(TOP))
        elif kind == "insert":
            data[at:at] = draw(st.sampled_from(FRAGMENTS)) * draw(st.sampled_from([1, 1, 1, 3, 100]))
        elif kind == "delete":
            del data[at:at + draw(st.integers(1, 40))]
        elif kind == "duplicate":
            end = min(len(data), at + draw(st.integers(1, 200)))
            data[at:at] = data[at:end] * draw(st.integers(1, 4))
        else:
            data[at:at] = bytes([draw(st.integers(0, 255))])
    return bytes(data)


# Far above the ~50 ms a mutated seed needs; the alias bomb took minutes before.
DEADLINE_MS = 3000


@settings(max_examples=300, deadline=DEADLINE_MS, suppress_health_check=[HealthCheck.too_slow],
          derandomize=True)
@given(text=mutated())
def test_the_loader_accepts_or_reports_every_mutation(tmp_path_factory: pytest.TempPathFactory, text: bytes) -> None:
    path = tmp_path_factory.mktemp("prop") / "jobs.yaml"
    path.write_bytes(text)
    try:
        load_jobs(path, now=datetime(2026, 1, 1, tzinfo=timezone.utc))
    except ConfigError as exc:
        assert exc.problems, "an error with nothing to say"
        assert "\x1b" not in str(exc) and "\x00" not in str(exc)  # control characters are shown escaped
        assert all(p.line is None or p.line >= 1 for p in exc.problems)


ADDRESS_SPACE = 1024 * 2**20  # a validate needs ~600 MB of address space, ~25 MB resident


def _limit() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))


@pytest.mark.slow
@settings(max_examples=20, deadline=None, derandomize=True)
@given(text=mutated(hostile=True))
def test_the_real_validate_exits_0_or_2_without_a_traceback(tmp_path_factory: pytest.TempPathFactory,
                                                             text: bytes) -> None:
    d: Path = tmp_path_factory.mktemp("real")
    (d / "jobs.yaml").write_bytes(text)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRONPY_")}
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "cronpy", "validate", "jobs.yaml"], cwd=d, env=env,
                            capture_output=True, text=True, errors="replace", timeout=30, preexec_fn=_limit)
    assert result.returncode in (0, 2), result.stderr
    assert "Traceback" not in result.stderr
    assert time.monotonic() - started < 20
