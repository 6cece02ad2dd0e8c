"""Jobs-file validation: every problem at once, each with file, line and key."""

from __future__ import annotations

import textwrap
from datetime import datetime, timezone
from pathlib import Path

import pytest

from cronpy.config import load_jobs, parse_jobs
from cronpy.paths import resolve_state_dir
from cronpy.errors import ConfigError
from cronpy.models import Cron, Every, Overlap

UTC = timezone.utc


def problems(text: str, now: datetime | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_jobs(textwrap.dedent(text).lstrip(), "jobs.yaml", now=now)
    return [p.format("jobs.yaml") for p in info.value.problems]


@pytest.mark.parametrize("text,expected", [
    ("jobs:\n  a: {schedule: '0 3 * * *', command: [unclosed\n", "jobs.yaml:2: YAML syntax error"),
    ("- just\n- a list\n", "jobs.yaml:1: the top level must be a mapping"),
    ("", "jobs.yaml: the file is empty"),
    ("jobs:\n  a:\n    schedule: 5m\n    comand: x\n", "jobs.yaml:4: jobs.a.comand: unknown job key (did you mean 'command'?)"),
    ("jobz: {}\n", "jobs.yaml:1: jobz: unknown top-level key (did you mean 'jobs'?)"),
    ("jobs:\n  a: {command: x}\n  a: {command: y}\n", "jobs.yaml:3: jobs.a: duplicate key (first defined on line 2)"),
    ("jobs:\n  a: {schedule: '61 3 * * *', command: x}\n", "jobs.yaml:2: jobs.a.schedule: invalid cron expression '61 3 * * *'"),
    ("jobs:\n  a:\n    command: x\n    timezone: Europe/Lisbn\n", "jobs.yaml:4: jobs.a.timezone: unknown time zone 'Europe/Lisbn'"),
    ("timezone: Mars/Base\njobs: {}\n", "jobs.yaml:1: timezone: unknown time zone 'Mars/Base'"),
    ("jobs:\n  a:\n    command: x\n    timeout: 10 minutes\n", "jobs.yaml:4: jobs.a.timeout: expected a duration"),
    ("jobs:\n  a:\n    command: x\n    retries: -1\n", "jobs.yaml:4: jobs.a.retries: must be at least 0, got -1"),
    ("max_concurrent: 0\njobs: {}\n", "jobs.yaml:1: max_concurrent: must be at least 1, got 0"),
    ("jobs:\n  a:\n    schedule: 5m\n    command: x\n    python: m:f\n", "jobs.yaml:2: jobs.a: a job needs exactly one of `command` or `python`, not both"),
    ("jobs:\n  a:\n    schedule: 5m\n", "jobs.yaml:2: jobs.a: a job needs exactly one of `command` or `python`"),
    ("jobs:\n  a:\n    schedule: !!python/object/apply:os.system ['touch /tmp/pwned']\n    command: x\n",
     "jobs.yaml:3: jobs.a.schedule: unsupported YAML tag"),
    ("jobs:\n  a:\n    python: not-an-entry-point\n", "jobs.yaml:3: jobs.a.python: expected an entry point"),
    ("jobs:\n  a:\n    command: x\n    overlap: sometimes\n", "jobs.yaml:4: jobs.a.overlap: expected one of skip, queue, allow"),
    ("jobs:\n  a: {schedule: '0 0 30 2 *', command: x}\n", "jobs.yaml:2: jobs.a.schedule: '0 0 30 2 *' never fires"),
    ("jobs:\n  a:\n    command: x\n    backoff: {initial: 10s, factor: 0.5}\n", "jobs.yaml:4: jobs.a.backoff.factor: expected a number >= 1"),
    ("jobs:\n  a:\n    command: x\n    enabled: maybe\n", "jobs.yaml:4: jobs.a.enabled: expected true or false"),
    ("defaults:\n  timeout: soon\njobs:\n  a: {command: x}\n  b: {command: y}\n", "jobs.yaml:2: defaults.timeout: expected a duration"),
    ("jobs:\n  a:\n    command: x\n    after: [extrct]\n  extract: {command: y}\n",
     "jobs.yaml:4: jobs.a.after: no job named 'extrct' (did you mean 'extract'?)"),
    ("jobs:\n  a: {command: x, after: c}\n  b: {command: y, after: a}\n  c: {command: z, after: b}\n",
     "jobs.yaml:3: jobs.b.after: a cycle: a -> b -> c -> a"),
    ("jobs:\n  a: {command: x, after: a}\n", "jobs.yaml:2: jobs.a.after: a job cannot run after itself"),
    ("jobs:\n  a:\n    command: x\n    ping: hc-ping.example/abc\n", "jobs.yaml:4: jobs.a.ping: expected an http:// or https:// URL"),
    ("jobs:\n  a:\n    command: x\n    on_failure: [notify]\n", "jobs.yaml:4: jobs.a.on_failure: expected a shell command"),
    ("state_dir: s\nstore: mysql://db/cronpy\njobs: {}\n", "jobs.yaml:2: store: expected a postgresql://"),
    ("leader_lease: 500ms\njobs: {}\n", "jobs.yaml:1: leader_lease: must be at least 1s"),
    ("leader_lease: soon\njobs: {}\n", "jobs.yaml:1: leader_lease: expected a duration"),
])
def test_each_problem_names_line_and_key(text: str, expected: str) -> None:
    found = problems(text)
    assert any(p.startswith(expected) for p in found), found


def test_all_problems_are_reported_at_once() -> None:
    found = problems("""
        timezone: Nowhere/City
        jobs:
          a:
            schedule: "99 * * * *"
            command: x
          b:
            command: y
            retries: many
          c:
            pyhton: m:f
    """)
    assert [p.split(":")[1] for p in found] == ["1", "4", "8", "9", "10"]


def test_a_bad_default_is_reported_once_not_per_job() -> None:
    found = problems("defaults:\n  timeout: soon\njobs:\n  a: {command: x}\n  b: {command: y}\n")
    assert len(found) == 1


def test_an_unsafe_tag_is_never_constructed(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    with pytest.raises(ConfigError):
        parse_jobs(f"jobs:\n  a:\n    command: !!python/object/apply:os.system ['touch {marker}']\n", "j.yaml")
    assert not marker.exists()


def test_at_in_the_past_is_an_error_unless_catch_up() -> None:
    now = datetime(2027, 1, 1, tzinfo=UTC)
    text = "jobs:\n  y:\n    at: '2026-12-31T23:59:00'\n    command: x\n"
    assert problems(text, now=now)[0].startswith("jobs.yaml:3: jobs.y.at: 2026-12-31T23:59:00+00:00 is in the past")
    ok = parse_jobs(text.replace("command: x", "command: x\n    catch_up: true"), "j.yaml", now=now)
    assert ok.jobs["y"].catch_up


def test_defaults_merge_and_job_keys_win() -> None:
    jobs = parse_jobs(textwrap.dedent("""
        timezone: Europe/Lisbon
        max_concurrent: 8
        defaults:
          timeout: 10m
          retries: 1
          env: {A: "1"}
        jobs:
          backup:
            schedule: "0 3 * * *"
            command: pg_dump app
            timeout: 30m
            retries: 3
            backoff: {initial: 10s, factor: 2, max: 10m}
            overlap: queue
            priority: 5
          beat:
            schedule: every 30s
            python: tasks:ping
            kwargs: {url: "http://localhost"}
            timezone: America/New_York
          manual:
            command: [./reindex.sh, --all]
    """), "jobs.yaml")
    b, h, m = jobs.jobs["backup"], jobs.jobs["beat"], jobs.jobs["manual"]
    assert (b.timeout, b.retries, b.backoff.initial, b.backoff.max, b.overlap, b.priority) == (1800, 3, 10, 600, Overlap.QUEUE, 5)
    assert (h.timeout, h.retries, h.timezone, h.kwargs) == (600, 1, "America/New_York", {"url": "http://localhost"})
    assert b.timezone == "Europe/Lisbon" and b.env == {"A": "1"}
    assert isinstance(b.schedule, Cron) and isinstance(h.schedule, Every) and h.schedule.seconds == 30
    assert m.schedule is None and m.command == ("./reindex.sh", "--all")
    assert jobs.max_concurrent == 8 and b.line == 9


def test_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file") as info:
        load_jobs(tmp_path / "nope.yaml")
    assert info.value.exit_code == 2


def test_state_dir_resolution_order(tmp_path: Path) -> None:
    file_dir = tmp_path / "from-file"
    env = {"CRONPY_STATE_DIR": "/env/state", "STATE_DIRECTORY": "/sd/a:/sd/b", "XDG_STATE_HOME": "/xdg", "HOME": "/home/u"}
    assert resolve_state_dir("/opt", file_dir, env) == Path("/opt")
    assert resolve_state_dir(None, file_dir, env) == Path("/env/state")
    env.pop("CRONPY_STATE_DIR")
    assert resolve_state_dir(None, file_dir, env) == file_dir
    assert resolve_state_dir(None, None, env) == Path("/sd/a")
    env.pop("STATE_DIRECTORY")
    assert resolve_state_dir(None, None, env) == Path("/xdg/cronpy")


def test_state_dir_in_file_is_relative_to_the_file(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    p = tmp_path / "sub" / "jobs.yaml"
    p.write_text("state_dir: .cronpy\njobs: {}\n")
    assert load_jobs(p).state_dir == (tmp_path / "sub" / ".cronpy").resolve()


@pytest.mark.parametrize("text,expected", [
    ("state_dir: .cronpy\njobs: {}\n", ".cronpy"),
    ("state_dir: 'my state'  # quoted\njobs: {}\n", "my state"),
    ('jobs: {}\nstate_dir: "/var/lib/x"\n', "/var/lib/x"),
    ("base: &b st\nstate_dir: *b\njobs: {}\n", "st"),  # an alias: read by the YAML parser
    ("{state_dir: flow, jobs: {}}\n", "flow"),
    ("jobs:\n  a:\n    state_dir: nested\n", None),  # not top-level
    ("jobs: {}\n", None),
])
def test_state_dir_is_read_from_the_file_quickly_and_correctly(tmp_path: Path, text: str, expected: str | None) -> None:
    from cronpy.paths import file_state_dir

    p = tmp_path / "jobs.yaml"
    p.write_text(text)
    assert file_state_dir(p) == ((tmp_path / expected).resolve() if expected else None)


def test_store_resolution_order_and_the_file_setting(tmp_path: Path) -> None:
    from cronpy.paths import file_setting, resolve_store

    p = tmp_path / "jobs.yaml"
    p.write_text("store: 'postgresql://cronpy@db.internal/cronpy'  # the fleet's\nleader_lease: 5s\njobs: {}\n")
    from_file = file_setting(p, "store")
    assert from_file == "postgresql://cronpy@db.internal/cronpy"
    jobs = load_jobs(p)
    assert (jobs.store, jobs.leader_lease) == (from_file, 5.0)
    env = {"CRONPY_STORE": "postgresql://env/x"}
    assert resolve_store("postgresql://opt/x", from_file, env) == "postgresql://opt/x"
    assert resolve_store(None, from_file, env) == "postgresql://env/x"
    assert resolve_store(None, from_file, {}) == from_file
    assert resolve_store(None, None, {}) is None  # SQLite in the state dir


def test_a_word_containing_a_setting_name_does_not_cost_a_yaml_parse(tmp_path: Path, monkeypatch) -> None:
    from cronpy import paths

    p = tmp_path / "jobs.yaml"
    p.write_text("jobs:\n  restore:\n    command: ./restore-datastore.sh\n")
    parsed: list[str] = []
    monkeypatch.setattr(paths, "_parse_yaml", lambda text: parsed.append(text))
    assert paths.file_setting(p, "store") is None
    assert parsed == []
    p.write_text("jobs: {}\n{store: postgresql://x/y}\n")  # a key after all: the parser decides
    paths.file_setting(p, "store")
    assert len(parsed) == 1
