"""`cronpy import-crontab`: every crontab feature, checked against cron(8)'s rules and cronsim."""

from __future__ import annotations

import sys
import textwrap
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml
from conftest import cronpy
from cronsim import CronSim

from cronpy.config import load_jobs, parse_jobs
from cronpy.crontab import import_crontabs, job_name, split_percent
from cronpy.schedule import next_fire, zone

UTC = timezone.utc
REPO = Path(__file__).resolve().parent.parent

# Every schedule feature of crontab(5), in zones with daylight saving time (CRON_TZ applies to
# the lines below it). Each line names itself after `#:` so the test can find its job.
CRONTAB = r"""
SHELL=/bin/bash
PATH=/usr/local/bin:/usr/bin:/bin
MAILTO=""
GREETING = "hello world"
CRON_TZ=Europe/Lisbon
30 1 * * *                echo fixed-in-the-skipped-hour
*/15 1-2 * * *            echo wildcard-across-the-change
0 9-17/2 * * Mon-FRI      echo hour-step-weekdays
5 4 * JAN,jul 7           echo sunday-as-seven
0 0 1,15 * *              echo list
CRON_TZ=America/New_York
0 12 * * sun              echo day-name-lowercase
30 2 * * *                echo fixed-new-york
15 */3 1-7 * 1            echo dom-or-dow
0 0 * * */2               echo dow-step
0 2 * mar,OCT,nov sat-7   echo saturday-to-seven
CRON_TZ=Australia/Sydney
@hourly                   echo hourly
@daily                    echo daily
@weekly                   echo weekly
@monthly                  echo monthly
@yearly                   echo yearly
0,30 2-3 * * *            echo list-in-the-changing-hours
@reboot                   echo boot
"""


def _original(line: str) -> str:
    """The time fields of a crontab line as cronsim takes them (presets spelled out)."""
    from cronpy.crontab import KEYWORDS

    first = line.split()[0]
    return KEYWORDS[first.lower()] if first.startswith("@") else " ".join(line.split()[:5])


def _gap_shift(ours: datetime, theirs: datetime, tz) -> bool:
    """The one documented difference from cronsim: a fixed-time job whose time falls in a
    spring-forward gap runs at the change (cron(8)), where cronsim shifts it by the gap."""
    at_change = (ours - timedelta(seconds=1)).astimezone(tz).utcoffset() != ours.astimezone(tz).utcoffset()
    return at_change and timedelta(0) < theirs - ours < timedelta(hours=1)


def test_imported_crontab_fires_at_cron_instants_in_dst_zones(tmp_path: Path) -> None:
    src = tmp_path / "crontab"
    src.write_text(CRONTAB)
    out = tmp_path / "jobs.yaml"
    result = cronpy("import-crontab", str(src), "-o", str(out), "--tz", "Europe/London")
    assert result.returncode == 0, result.stderr
    assert cronpy("validate", str(out)).returncode == 0
    jobs = load_jobs(out)
    lines = [l for l in CRONTAB.splitlines() if l and l[0] in "0123456789*@"]
    assert len(jobs.jobs) == len(lines)
    by_line = {spec.description.split(": ", 1)[1]: spec for spec in jobs.jobs.values()}
    # Spring forward and fall back in each hemisphere (2026): EU 29 Mar / 25 Oct, US 8 Mar /
    # 1 Nov, Sydney 5 Apr (back) / 4 Oct (forward).
    starts = [datetime(2026, 3, 6, tzinfo=UTC), datetime(2026, 3, 27, tzinfo=UTC),
              datetime(2026, 4, 3, tzinfo=UTC), datetime(2026, 10, 2, tzinfo=UTC),
              datetime(2026, 10, 23, tzinfo=UTC), datetime(2026, 10, 30, tzinfo=UTC)]
    checked = 0
    for line in lines:
        spec = by_line[line.strip()]
        if line.startswith("@reboot"):
            assert spec.run_on_boot and spec.schedule is None
            continue
        tz = zone(spec.timezone)
        expr = _original(line)
        for start in starts:
            sim = CronSim(expr, start.astimezone(tz))
            ours = start
            for _ in range(40):
                ours = next_fire(spec, ours)
                theirs = next(sim).astimezone(UTC)
                assert ours is not None
                assert ours == theirs or _gap_shift(ours, theirs, tz), (line, spec.schedule, ours, theirs)
                checked += 1
    assert checked > 3000
    # `cronpy next` prints what the runner fires by: the same instants, from the real binary.
    # 30 1 * * * in Lisbon on 29 Mar 2026 (01:00 -> 02:00 WEST): once, at the change.
    spec = by_line["30 1 * * *                echo fixed-in-the-skipped-hour"]
    shown = cronpy("next", spec.name, "-f", str(out), "-n", "3", "--from", "2026-03-28T12:00:00+00:00")
    assert shown.stdout.split() == ["2026-03-29T02:00:00+01:00", "2026-03-30T01:30:00+01:00",
                                    "2026-03-31T01:30:00+01:00"]


def test_env_lines_map_to_shell_env_zone_and_notify(tmp_path: Path) -> None:
    text, problems = import_crontabs([("ct", CRONTAB + "MAILTO=ops@example.com,dev@example.com\n"
                                             "MAILFROM=cron@example.com\n* * * * * echo mailed\n")],
                                     timezone="Europe/London", smtp="mail.internal:2525")
    assert problems == []
    doc = yaml.safe_load(text)
    assert doc["defaults"]["shell"] == "/bin/bash"
    assert doc["defaults"]["env"] == {"PATH": "/usr/local/bin:/usr/bin:/bin", "GREETING": "hello world"}
    jobs = doc["jobs"]
    lisbon = next(j for j in jobs.values() if "fixed-in-the-skipped-hour" in j["command"])
    assert lisbon["timezone"] == "Europe/Lisbon"
    mailed = next(j for j in jobs.values() if j["command"] == "echo mailed")
    assert mailed["notify"] == {"urls": ["mailto://mail.internal:2525?to=ops@example.com,dev@example.com"
                                         "&from=cron@example.com&mode=insecure"], "when": ["output"]}
    assert all("notify" not in j for j in jobs.values() if j is not mailed)  # MAILTO="" mails nothing


@pytest.mark.parametrize("line, command, stdin", [
    (r"tr a-z A-Z%hello \% world%second", "tr a-z A-Z", "hello % world\nsecond\n"),
    (r"date +\%Y-\%m-\%d", "date +%Y-%m-%d", None),
    (r"printf 'a\nb'", r"printf 'a\nb'", None),  # other backslashes stay
    (r"cat%", "cat", None),  # nothing after the %: the job reads end of file
    (r"cat%line%", "cat", "line\n"),  # ends in a newline already: none added
    (r"cat%a\\b", "cat", r"a\\b" "\n"),  # both kept: the 2nd backslash is escaped, and escapes the b
    (r"cat%a%\ ", "cat", "a\n\\ \n"),
    (r"cat%x\%", "cat", "x%\n"),
    (r"echo \\%rest", "echo \\\\", "rest\n"),  # an escaped backslash does not escape the %
])
def test_percent_is_split_exactly_as_cron_does(line: str, command: str, stdin: str | None) -> None:
    assert split_percent(line) == (command, stdin)


def test_percent_stdin_reaches_the_job_when_it_runs(tmp_path: Path) -> None:
    """The trap of the issue: `tr: extra operand` when `%` was lost. Imported and run for real."""
    src = tmp_path / "crontab"
    src.write_text(textwrap.dedent(r"""
        0 3 * * * tr a-z A-Z%hello \% world%second line
        0 4 * * * echo "100\% sure on $(date -u -d @0 +\%Y)"
        0 5 * * * sed -n 2p%one%two%three
    """))
    out = tmp_path / "jobs.yaml"
    assert cronpy("import-crontab", str(src), "-o", str(out), "--tz", "UTC").returncode == 0
    text = out.read_text()
    out.write_text(text.replace("timezone: UTC", f"timezone: UTC\nstate_dir: {tmp_path / 'state'}"))
    names = list(load_jobs(out).jobs)
    got = [cronpy("trigger", n, "-f", str(out)) for n in names]
    assert [r.returncode for r in got] == [0, 0, 0], [r.stderr for r in got]
    assert got[0].stdout == "HELLO % WORLD\nSECOND LINE\n"
    assert got[1].stdout == "100% sure on 1970\n"
    assert got[2].stdout == "two\n"


def test_untranslatable_lines_are_named_and_fail_the_import_unless_best_effort(tmp_path: Path) -> None:
    src = tmp_path / "crontab"
    src.write_text("0 0 * * 1 echo fine\n0 0 L * * echo last\n0 0 * * fri-sun echo backwards\n"
                   "5/10 * * * * echo ambiguous\n@every5m echo nope\nRANDOM_DELAY=10\n1 2 3\n")
    strict = cronpy("import-crontab", str(src), "--tz", "UTC")
    assert strict.returncode == 2 and strict.stdout == ""
    for n in (2, 3, 4, 5, 6, 7):
        assert f"{src}:{n}: " in strict.stderr
    assert f"{src}:1:" not in strict.stderr
    loose = cronpy("import-crontab", "-", "--tz", "UTC", "--best-effort", input=src.read_text())
    assert loose.returncode == 0 and "<stdin>:2: " in loose.stderr
    jobs = parse_jobs(loose.stdout, "imported.yaml")
    assert sorted(s.command for s in jobs.jobs.values()) == ["echo ambiguous", "echo fine"]  # type: ignore[type-var]


def test_system_crontab_user_column_and_stable_unique_readable_names(tmp_path: Path) -> None:
    etc = (REPO / "examples" / "etc-crontab").read_text()
    first = cronpy("import-crontab", "--system", "-", "--tz", "UTC", input=etc)
    again = cronpy("import-crontab", "--system", "-", "--tz", "UTC", input=etc)
    assert first.returncode == 0, first.stderr
    assert first.stdout == again.stdout  # stable
    jobs = parse_jobs(first.stdout, "etc.yaml").jobs
    assert list(jobs) == ["run-parts-cron.hourly", "run-parts-cron.daily", "run-parts-cron.weekly",
                          "run-parts-cron.monthly"]
    assert all(s.user == "root" for s in jobs.values())
    assert jobs["run-parts-cron.weekly"].description.endswith("47 6\t* * 7\troot\ttest -x /usr/sbin/anacron || "
                                                              "{ cd / && run-parts --report /etc/cron.weekly; }")
    assert job_name("[[ -d /srv ]] && /usr/local/bin/backup.sh --full /srv") == "backup.sh-srv"
    dup = import_crontabs([("c", "* * * * * echo a\n* * * * * echo a\n* * * * * echo a\n")])[0]
    assert list(yaml.safe_load(dup)["jobs"]) == ["echo-a", "echo-a-2", "echo-a-3"]


def test_emitted_yaml_is_safe_for_hostile_commands(tmp_path: Path) -> None:
    """Commands full of YAML syntax come back byte for byte; nothing is read as a tag or an alias."""
    commands = ["echo 'a: b' # not a comment", "echo !!python/object:os.system", "*/5 echo star",
                "echo &anchor *alias", "echo {x: 1} [y]", "echo \"quoted\" 'single' \\\\ back",
                "echo yes no on off null ~ 0x10 1e3", "echo ---", "echo 'tab\there'", "echo ünïcödé ✓"]
    crontab = "".join(f"0 0 * * * {c}\n" for c in commands)
    text, problems = import_crontabs([("c", crontab)], timezone="UTC")
    assert problems == []
    jobs = parse_jobs(text, "imported.yaml").jobs
    assert [s.command for s in jobs.values()] == commands
    path = tmp_path / "jobs.yaml"
    path.write_text(text)
    assert cronpy("validate", str(path)).returncode == 0


def test_example_crontab_imports_cleanly() -> None:
    """The README's "Coming from cron" example, as shipped."""
    result = cronpy("import-crontab", str(REPO / "examples" / "crontab"), "--tz", "Europe/London")
    assert result.returncode == 0, result.stderr
    jobs = parse_jobs(result.stdout, "example.yaml").jobs
    assert len(jobs) == 9 and any(s.run_on_boot for s in jobs.values())
    assert sum(1 for s in jobs.values() if s.stdin) == 2
