"""A seeded differential sweep (a few seconds): cronpy against a cron(8) simulation and cronsim.

The long mode (>= 200,000 samples) is `CRONPY_SWEEP_SAMPLES=200000 pytest -m slow -s -k long_sweep`
or `python tests/schedule_diff.py --samples 200000`, which prints the counts per class.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone

import pytest
from schedule_diff import WINDOW, cron8_fires, sweep, vixie_parse

from cronpy.schedule import zone

UTC = timezone.utc


def sim(expr: str, tz: str, start: str) -> list[str]:
    entry = vixie_parse(expr)
    assert entry is not None
    begin = datetime.fromisoformat(start)
    return [t.astimezone(zone(tz)).isoformat() for t in cron8_fires(entry, zone(tz), begin, begin + WINDOW)]


# The simulation is itself checked against cron(8)'s documented behaviour, by hand.
# America/New_York 2026: forward 8 Mar 02:00 EST -> 03:00 EDT (07:00Z); back 1 Nov 02:00 EDT -> 01:00 EST (06:00Z)
@pytest.mark.parametrize("expr,start,expected", [
    ("30 2 * * *", "2026-03-08T05:00:00+00:00", ["2026-03-08T03:00:00-04:00"]),  # fixed, skipped: at the change
    ("30 * * * *", "2026-03-08T05:00:00+00:00", ["2026-03-08T00:30:00-05:00", "2026-03-08T01:30:00-05:00",
                                                 "2026-03-08T03:30:00-04:00",
                                                 "2026-03-08T04:30:00-04:00", "2026-03-08T05:30:00-04:00",
                                                 "2026-03-08T06:30:00-04:00"]),  # wildcard: none in the gap
    ("30 1 * * *", "2026-11-01T04:00:00+00:00", ["2026-11-01T01:30:00-04:00"]),  # fixed: first pass only
    ("30 * * * *", "2026-11-01T04:00:00+00:00", ["2026-11-01T00:30:00-04:00", "2026-11-01T01:30:00-04:00",
                                                 "2026-11-01T01:30:00-05:00", "2026-11-01T02:30:00-05:00",
                                                 "2026-11-01T03:30:00-05:00", "2026-11-01T04:30:00-05:00"]),
    ("0 7 * * FRI-FRI", "2026-01-02T06:00:00+00:00", ["2026-01-02T07:00:00+00:00"]),
])
def test_the_cron8_simulation_follows_the_man_page(expr: str, start: str, expected: list[str]) -> None:
    tz = "UTC" if expected[0].endswith("+00:00") else "America/New_York"
    assert sim(expr, tz, start) == expected


def test_cronpy_agrees_with_cron8_and_every_cronsim_difference_is_a_known_class() -> None:
    result = sweep(250, seed=2026)
    counts = result.counts
    assert counts["cron(8) sim: DISAGREE"] == 0, result.examples.get("cron(8) sim: DISAGREE")
    assert counts["unclassified"] == 0, result.examples.get("unclassified")
    assert not [c for c in counts if "agrees with CRONSIM" in c], result.examples
    # Most samples use Vixie syntax and are judged by the simulation; cronsim agrees on most.
    assert counts["cron(8) sim: agree"] >= 200
    assert counts["cronsim: agree"] >= 220


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("CRONPY_SWEEP_SAMPLES"), reason="the long mode: set CRONPY_SWEEP_SAMPLES=200000")
def test_long_sweep() -> None:
    result = sweep(int(os.environ["CRONPY_SWEEP_SAMPLES"]), seed=18)
    for cls, count in sorted(result.counts.items(), key=lambda kv: -kv[1]):
        print(f"{count:8d}  {cls}")
    assert result.counts["cron(8) sim: DISAGREE"] == 0, result.examples.get("cron(8) sim: DISAGREE")
    assert result.counts["unclassified"] == 0, result.examples.get("unclassified")
    assert not [c for c in result.counts if "agrees with CRONSIM" in c], result.examples


@pytest.mark.slow
def test_the_binary_prints_what_the_sweep_checked() -> None:
    # `cronpy next --expr` is the user's view of the same code: a few sweep samples through it.
    from conftest import cronpy
    from schedule_diff import samples

    from cronpy.models import JobSpec
    from cronpy.schedule import parse_schedule, upcoming

    for s in list(samples(6, seed=2026)):
        spec = JobSpec(name="expr", schedule=parse_schedule(s.expr), timezone=s.zone, command="true")
        expected = [t.astimezone(zone(s.zone)).isoformat() for t in upcoming(spec, s.start, 3)]
        result = cronpy("next", "--expr", s.expr, "--tz", s.zone, "--from", s.start.isoformat(), "-n", "3", "--json")
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout) == expected, s
