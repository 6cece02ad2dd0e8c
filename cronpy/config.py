"""Read and validate a jobs file: every problem at once, each with its file, line and key.

`parse_jobs(text, source)` does the work on a string; `load_jobs(path)` is a thin wrapper.
Only safe YAML is loaded: the document is composed into nodes (which keeps line numbers and
lets a repeated key be reported instead of silently winning), and each scalar is built by
PyYAML's SafeLoader, so a tag such as `!!python/object` is an error, never a constructor.
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any, Mapping

import yaml

from cronpy.durations import parse_duration, parse_size
from cronpy.errors import ConfigError, Problem, UsageError
from cronpy.models import (DEFAULT_OUTPUT_MAX, At, Backoff, Cron, Every, JobSet, JobSpec, Notify, NotifyWhen, Overlap,
                           Schedule)
from cronpy.schedule import ever_fires, fires_in_zone, parse_schedule, shortest_gap, wall_time, zone
from cronpy.paths import is_postgres_url
from cronpy.safeyaml import MAX_ALIAS_NODES, MAX_DEPTH, compose_node  # noqa: F401 (the limits, re-exported)

TOP_KEYS = {"timezone", "state_dir", "store", "leader_lease", "clock_skew_warning", "clock_skew_limit", "max_concurrent", "history_retention", "shutdown_grace",
            "defaults", "jobs"}
JOB_KEYS = {
    "description", "schedule", "at", "command", "python", "args", "kwargs", "enabled", "timezone",
    "timeout", "kill_grace", "retries", "backoff", "env", "cwd", "run_on_start", "overlap",
    "priority", "jitter", "catch_up", "after", "on_failure", "on_success", "on_retry", "ping", "webhook",
    "shell", "user", "group", "stdin", "run_on_boot", "notify", "output", "output_max",
}
NOTIFY_KEYS = {"urls", "when"}
_ACCOUNT = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}\$?$")  # useradd's names, or a numeric id
BACKOFF_KEYS = {"initial", "factor", "max", "jitter"}
_JOB_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_ENTRY_POINT = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


@dataclass
class _Doc:
    """A composed YAML document turned into Python values, with the line of every path."""

    lines: dict[tuple[Any, ...], int] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)  #: valid, but probably not what was meant

    def line(self, *path: Any) -> int | None:
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return self.lines.get(())

    def error(self, path: tuple[Any, ...], message: str) -> None:
        key = ".".join(str(p) for p in path)
        # One problem per key: a bad default is reported once, not once per job, and a value
        # already rejected (an unsafe tag) is not reported again as the wrong type.
        if not any(p.key == key for p in self.problems):
            self.problems.append(Problem(self.line(*path), key, message))


_SAFE_SCALAR_TAGS = {
    "tag:yaml.org,2002:str", "tag:yaml.org,2002:int", "tag:yaml.org,2002:float",
    "tag:yaml.org,2002:bool", "tag:yaml.org,2002:null", "tag:yaml.org,2002:timestamp",
}


def _build(node: yaml.Node, path: tuple[Any, ...], doc: _Doc, loader: Any) -> Any:
    doc.lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        if node.tag != "tag:yaml.org,2002:map":
            doc.error(path, f"unsupported YAML tag {node.tag!r}: only plain (safe) YAML is accepted")
            return None
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.value != "<<":
                if key_node.value in seen:
                    doc.problems.append(Problem(
                        key_node.start_mark.line + 1,
                        ".".join(str(p) for p in path + (key_node.value,)),
                        f"duplicate key (first defined on line {seen[key_node.value]})",
                    ))
                else:
                    seen[key_node.value] = key_node.start_mark.line + 1
        try:
            loader.flatten_mapping(node)  # resolve `<<: *anchor` merge keys
        except yaml.YAMLError as exc:
            doc.error(path, str(exc).splitlines()[0])
            return None
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = _build(key_node, path + ("<key>",), doc, loader)
            if not isinstance(key, (str, int, float, bool)) and key is not None:
                doc.error(path, "mapping keys must be plain scalars")
                continue
            key = str(key) if not isinstance(key, str) else key
            doc.lines[path + (key,)] = key_node.start_mark.line + 1
            out[key] = _build(value_node, path + (key,), doc, loader)
        return out
    if isinstance(node, yaml.SequenceNode):
        if node.tag != "tag:yaml.org,2002:seq":
            doc.error(path, f"unsupported YAML tag {node.tag!r}: only plain (safe) YAML is accepted")
            return None
        return [_build(item, path + (i,), doc, loader) for i, item in enumerate(node.value)]
    if node.tag not in _SAFE_SCALAR_TAGS:
        doc.error(path, f"unsupported YAML tag {node.tag!r}: only plain (safe) YAML is accepted")
        return None
    if node.tag == "tag:yaml.org,2002:str":
        return node.value  # most scalars: no constructor needed
    try:
        return loader.construct_object(node, deep=True)
    except yaml.YAMLError as exc:
        doc.error(path, str(exc).splitlines()[0])
        return None


# Limits on hostile input besides safeyaml's depth and alias limits.
# The longest duration any key takes (and the longest interval): past it, instants and
# deadlines overflow datetime (year 9999) within a few `cronpy next` steps.
MAX_DURATION = 3660 * 86400.0  # ~10 years
MAX_FILE_BYTES = 32 * 1024 * 1024  #: a 10,000-job file is ~1 MB
# Characters YAML 1.1 allows in a stream (tab, newlines, printable Unicode); anything else is
# reported with its line and column instead of the parser's character offset.
_NOT_YAML = re.compile("[^\t\n\r\x20-\x7e\x85\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _line_col(text: str, offset: int) -> tuple[int, int]:
    line = text.count("\n", 0, offset) + 1
    return line, offset - (text.rfind("\n", 0, offset) + 1) + 1


def _bad_characters(text: str) -> list[Problem]:
    problems: list[Problem] = []
    for match in _NOT_YAML.finditer(text):
        line, col = _line_col(text, match.start())
        if problems and problems[-1].line == line:
            continue  # one report per line is enough
        name = "a NUL byte" if match.group() == "\0" else f"control character U+{ord(match.group()):04X}"
        problems.append(Problem(line, "", f"column {col}: {name} is not allowed in YAML"))
        if len(problems) == 10:
            break
    return problems


def _compose(text: str, source: str) -> tuple[Any, _Doc]:
    """Compose the single document of `text` with safeyaml's bounded composer, then build it
    (which visits an aliased subtree once per alias: linear, since expansion is bounded)."""
    doc = _Doc()
    bad = _bad_characters(text)
    if bad:
        raise ConfigError(source, bad)
    # libyaml's safe parser when PyYAML was built with it (the wheels are): events and marks
    # as the pure-Python one gives, ~10x faster on a 10,000-job file.
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)(text)
    try:
        node = compose_node(loader, source)
    except yaml.MarkedYAMLError as exc:
        # Point at where the broken construct began (an unclosed `[` is only noticed at the
        # end of the file), and say where the parser gave up.
        mark = exc.context_mark or exc.problem_mark
        line = mark.line + 1 if mark else None
        message = f"YAML syntax error: {exc.problem or exc}"
        if exc.context and exc.problem_mark is not None:
            message += f" ({exc.context}; noticed on line {exc.problem_mark.line + 1})"
        raise ConfigError(source, [Problem(line, "", message)]) from None
    except yaml.YAMLError as exc:
        raise ConfigError(source, [Problem(None, "", f"YAML error: {str(exc).splitlines()[0]}")]) from None
    finally:
        loader.dispose()
    if node is None:
        return None, doc
    return _build(node, (), doc, loader), doc


def _did_you_mean(key: str, known: set[str]) -> str:
    close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


class _Checker:
    """Turns the raw mapping of one document into a JobSet, collecting problems as it goes."""

    def __init__(self, doc: _Doc, base_dir: Path, now: datetime | None) -> None:
        self.doc = doc
        self.base_dir = base_dir
        self.now = now
        # Where "never fires in this zone" and the gaps between runs are judged from; without a
        # clock (config never reads it), a fixed date keeps the answer reproducible.
        self.reference = now if now is not None else datetime(2000, 1, 1, tzinfo=timezone.utc)

    def err(self, path: tuple[Any, ...], message: str) -> None:
        self.doc.error(path, message)

    def warn(self, path: tuple[Any, ...], message: str) -> None:
        self.doc.warnings.append(Problem(self.doc.line(*path), ".".join(str(p) for p in path), message))

    def unknown_keys(self, mapping: Mapping[str, Any], known: set[str], path: tuple[Any, ...], what: str) -> None:
        for key in mapping:
            if key not in known:
                self.err(path + (key,), f"unknown {what} key{_did_you_mean(key, known)}")

    def typed(self, value: Any, path: tuple[Any, ...], kind: type | tuple[type, ...], expect: str) -> bool:
        ok = isinstance(value, kind) and not (isinstance(value, bool) and bool not in _as_tuple(kind))
        if not ok:
            self.err(path, f"expected {expect}, got {_describe(value)}")
        return ok

    def duration(self, value: Any, path: tuple[Any, ...], *, positive: bool = False,
                 maximum: float = MAX_DURATION) -> float | None:
        if value is None:  # `kill_grace:` with nothing after it
            self.err(path, "empty: expected a duration such as 45s, 10m or 1h30m")
            return None
        try:
            seconds = parse_duration(value)
        except (ValueError, TypeError) as exc:
            self.err(path, str(exc) if isinstance(exc, ValueError) else f"expected a duration, got {_describe(value)}")
            return None
        if seconds > maximum:
            self.err(path, f"longer than the longest allowed, {maximum / 86400:g}d")
            return None
        if positive and seconds <= 0:
            self.err(path, "must be longer than zero")
            return None
        return seconds

    def integer(self, value: Any, path: tuple[Any, ...], *, minimum: int | None = None) -> int | None:
        if not self.typed(value, path, int, "a whole number"):
            return None
        if minimum is not None and value < minimum:
            self.err(path, f"must be at least {minimum}, got {value}")
            return None
        return int(value)

    def timezone(self, value: Any, path: tuple[Any, ...]) -> str | None:
        if not self.typed(value, path, str, "an IANA time zone name"):
            return None
        try:
            zone(value)
        except ValueError as exc:
            self.err(path, str(exc))
            return None
        return str(value)

    def top(self, raw: Any) -> JobSet | None:
        if raw is None:
            self.err((), "the file is empty: expected a mapping with a `jobs:` key")
            return None
        if not isinstance(raw, dict):
            self.err((), f"the top level must be a mapping with a `jobs:` key, got {_describe(raw)}")
            return None
        self.unknown_keys(raw, TOP_KEYS, (), "top-level")
        tz = self.timezone(raw.get("timezone", "UTC"), ("timezone",)) or "UTC"
        state_dir = None
        if "state_dir" in raw and self.typed(raw["state_dir"], ("state_dir",), str, "a path"):
            state_dir = (self.base_dir / os.path.expanduser(raw["state_dir"])).resolve()
        store = None
        if "store" in raw and raw["store"] is not None and self.typed(raw["store"], ("store",), str, "a URL"):
            store = raw["store"]
            if not is_postgres_url(store):
                self.err(("store",), "expected a postgresql://user@host/database URL (without it, the "
                         "history is the SQLite file in the state dir)")
        lease = self.duration(raw.get("leader_lease", 10), ("leader_lease",), positive=True)
        if lease is not None and lease < 1:
            self.err(("leader_lease",), "must be at least 1s: the lease is renewed every third of it")
        skew_warning = self.duration(raw.get("clock_skew_warning", 1), ("clock_skew_warning",), positive=True)
        skew_limit = self.duration(raw.get("clock_skew_limit", 5), ("clock_skew_limit",), positive=True)
        if skew_warning is not None and skew_limit is not None and skew_warning > skew_limit:
            self.err(("clock_skew_warning",), f"must not exceed clock_skew_limit ({skew_limit:g}s): a host is"
                     " warned about before it is refused")
        max_conc = self.integer(raw.get("max_concurrent", 4), ("max_concurrent",), minimum=1) or 4
        retention: float | None = 30 * 86400.0
        if "history_retention" in raw:
            retention = None if raw["history_retention"] in (None, "forever") else self.duration(
                raw["history_retention"], ("history_retention",), positive=True)
        grace = self.duration(raw.get("shutdown_grace", 30), ("shutdown_grace",))
        defaults: dict[str, Any] = {}
        if "defaults" in raw and raw["defaults"] is not None:
            if self.typed(raw["defaults"], ("defaults",), dict, "a mapping of job keys"):
                defaults = raw["defaults"]
                self.unknown_keys(defaults, JOB_KEYS, ("defaults",), "job")
                for key in ("schedule", "at", "command", "python"):
                    if key in defaults:
                        self.err(("defaults", key), "cannot be a default: every job says its own")
        jobs: dict[str, JobSpec] = {}
        raw_jobs = raw.get("jobs")
        if "jobs" not in raw:
            self.err((), "missing `jobs:` mapping")
        elif raw_jobs is not None and self.typed(raw_jobs, ("jobs",), dict, "a mapping of job names to jobs"):
            for name, body in raw_jobs.items():
                spec = self.job(str(name), body, defaults, tz)
                if spec is not None:
                    jobs[spec.name] = spec
        self.chains(jobs, raw_jobs if isinstance(raw_jobs, dict) else {})
        return JobSet(
            jobs=jobs, timezone=tz, state_dir=state_dir, max_concurrent=max_conc,
            history_retention=retention, shutdown_grace=grace if grace is not None else 30.0,
            store=store, leader_lease=lease if lease is not None and lease >= 1 else 10.0,
            clock_skew_warning=skew_warning or 1.0, clock_skew_limit=skew_limit or 5.0,
        )

    def job(self, name: str, body: Any, defaults: Mapping[str, Any], default_tz: str) -> JobSpec | None:
        path: tuple[Any, ...] = ("jobs", name)
        if not _JOB_NAME.match(name):
            self.err(path, "a job name is letters, digits, `_`, `-` and `.`, starting with a letter or digit")
        if not isinstance(body, dict):
            self.err(path, f"a job is a mapping of keys such as schedule and command, got {_describe(body)}")
            return None
        self.unknown_keys(body, JOB_KEYS, path, "job")
        merged = {k: v for k, v in defaults.items() if k in JOB_KEYS}
        merged.update(body)

        def where(key: str) -> tuple[Any, ...]:
            return path + (key,) if key in body else ("defaults", key)

        ok = True
        tz = default_tz
        if "timezone" in merged:
            tz = self.timezone(merged["timezone"], where("timezone")) or default_tz
        command: str | tuple[str, ...] | None = None
        python: str | None = None
        has_cmd, has_py = "command" in body, "python" in body
        if has_cmd == has_py:
            ok = False
            self.err(path, "a job needs exactly one of `command` or `python`" + (", not both" if has_cmd else ""))
        if has_cmd:
            c = body["command"]
            if isinstance(c, str) and c.strip():
                command = c
            elif isinstance(c, list) and c and all(isinstance(a, (str, int, float)) and not isinstance(a, bool) for a in c):
                command = tuple(str(a) for a in c)
            else:
                ok = False
                self.err(path + ("command",), "expected a shell command string or a non-empty list of arguments")
        if has_py:
            p = body["python"]
            if isinstance(p, str) and _ENTRY_POINT.match(p.strip()):
                python = p.strip()
            else:
                ok = False
                self.err(path + ("python",), f"expected an entry point `package.module:function`, got {_describe(p)}")
        args: tuple[Any, ...] = ()
        kwargs: dict[str, Any] = {}
        if "args" in merged:
            if self.typed(merged["args"], where("args"), list, "a list"):
                args = tuple(merged["args"])
        if "kwargs" in merged:
            if self.typed(merged["kwargs"], where("kwargs"), dict, "a mapping"):
                kwargs = dict(merged["kwargs"])
        if (args or kwargs) and command is not None:
            self.err(where("args" if args else "kwargs"), "`args` and `kwargs` go with `python`, not `command`")
            ok = False

        schedule: Schedule | None = None
        if "schedule" in body and "at" in body:
            ok = False
            self.err(path, "a job takes `schedule` or `at`, not both")
        elif "schedule" in body:
            s = body["schedule"]
            if isinstance(s, (str, int)) and not isinstance(s, bool) and str(s).strip():
                try:
                    schedule = parse_schedule(str(s))
                    if isinstance(schedule, Every) and not 0 < schedule.seconds <= MAX_DURATION:
                        raise ValueError(f"an interval must be longer than zero and at most "
                                         f"{MAX_DURATION / 86400:g}d, got {str(s)!r}")
                    # A syntactically valid expression that matches no date (`0 0 30 2 *`).
                    if isinstance(schedule, Cron) and not ever_fires(schedule.expr, name):
                        ok = False
                        self.err(path + ("schedule",), f"{str(s)!r} never fires (no date matches it)")
                    elif isinstance(schedule, Cron) and not fires_in_zone(schedule.expr, name, tz, self.reference):
                        # A wildcard job whose every time is skipped by the clocks going forward.
                        ok = False
                        self.err(path + ("schedule",), f"{str(s)!r} never fires in {tz}: every time it names "
                                 "falls in a skipped daylight-saving hour")
                except ValueError as exc:
                    ok = False
                    self.err(path + ("schedule",), str(exc))
            else:
                ok = False
                self.err(path + ("schedule",), f"expected a cron expression or an interval, got {_describe(s)}")
        elif "at" in body:
            schedule = self.at(body["at"], path + ("at",), tz, bool(merged.get("catch_up", False)))
            ok = ok and schedule is not None

        timeout = None
        if merged.get("timeout") is not None:
            timeout = self.duration(merged["timeout"], where("timeout"), positive=True)
        kill_grace = self.duration(merged.get("kill_grace", 10), where("kill_grace"))
        retries = self.integer(merged.get("retries", 0), where("retries"), minimum=0)
        backoff = self.backoff(merged.get("backoff"), where("backoff"))
        env: dict[str, str] = {}
        if merged.get("env") is not None and self.typed(merged["env"], where("env"), dict, "a mapping of names to values"):
            for k, v in merged["env"].items():
                if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", k):
                    self.err(where("env") + (k,), "not a valid environment variable name")
                elif isinstance(v, (dict, list)) or v is None:
                    self.err(where("env") + (k,), f"expected a string, got {_describe(v)}")
                else:
                    env[k] = str(v).lower() if isinstance(v, bool) else str(v)
        cwd = None
        if merged.get("cwd") is not None and self.typed(merged["cwd"], where("cwd"), str, "a path"):
            cwd = (self.base_dir / os.path.expanduser(merged["cwd"])).resolve()
        overlap = Overlap.SKIP
        if "overlap" in merged:
            try:
                overlap = Overlap(merged["overlap"])
            except ValueError:
                self.err(where("overlap"), f"expected one of skip, queue, allow, got {_describe(merged['overlap'])}")
        bools = {}
        for key in ("enabled", "run_on_start", "catch_up", "run_on_boot"):
            if key in merged:
                if self.typed(merged[key], where(key), bool, "true or false"):
                    bools[key] = merged[key]
        priority = self.integer(merged.get("priority", 0), where("priority")) if "priority" in merged else 0
        jitter = self.duration(merged.get("jitter", 0), where("jitter")) if "jitter" in merged else 0.0
        description = ""
        if "description" in merged and self.typed(merged["description"], where("description"), str, "text"):
            description = merged["description"]
        hooks: dict[str, str | None] = {}
        for key in ("on_failure", "on_success", "on_retry"):
            value = merged.get(key)
            if value is not None and self.typed(value, where(key), str, "a shell command"):
                hooks[key] = value
        urls: dict[str, str | None] = {}
        for key in ("ping", "webhook"):
            value = merged.get(key)
            if value is None:
                continue
            if isinstance(value, str) and re.match(r"^https?://[^\s/]+", value):
                urls[key] = value.rstrip("/") if key == "ping" else value
            else:
                self.err(where(key), f"expected an http:// or https:// URL, got {_describe(value)}")
        after: tuple[str, ...] = ()
        if "after" in body:
            raw_after = body["after"]
            if isinstance(raw_after, str):
                raw_after = [raw_after]
            if isinstance(raw_after, list) and raw_after and all(isinstance(a, str) for a in raw_after):
                after = tuple(raw_after)
            else:
                self.err(path + ("after",), "expected a job name or a list of job names")
        cron_keys = self.cron_keys(merged, where, command)
        if jitter and schedule is not None and ok:
            # The runner delays each run by up to `jitter`; a delay that reaches the next run
            # makes the two collide and one is dropped (every minute with 5m ran 21 times an hour).
            gap = shortest_gap(schedule, tz, name, self.reference, enough=jitter)
            if gap is not None and jitter >= gap:
                self.err(where("jitter"), f"{merged['jitter']} is not shorter than the gap between two of its "
                         f"runs ({_whole(gap)}): runs would be dropped")
                return None
        if not ok or None in (kill_grace, retries, backoff, priority, jitter) or cron_keys is None:
            return None
        assert kill_grace is not None and retries is not None and backoff is not None
        return JobSpec(
            name=name, schedule=schedule, command=command, python=python, args=args, kwargs=kwargs,
            description=description, enabled=bools.get("enabled", True), timezone=tz, timeout=timeout,
            kill_grace=kill_grace, retries=retries, backoff=backoff, env=env, cwd=cwd,
            run_on_start=bools.get("run_on_start", False), overlap=overlap, priority=priority or 0,
            jitter=jitter or 0.0, catch_up=bools.get("catch_up", False), after=after,
            on_failure=hooks.get("on_failure"), on_success=hooks.get("on_success"), on_retry=hooks.get("on_retry"),
            ping=urls.get("ping"), webhook=urls.get("webhook"), run_on_boot=bools.get("run_on_boot", False),
            line=self.doc.line(*path), **cron_keys,
        )

    def cron_keys(self, merged: Mapping[str, Any], where: Any,
                  command: str | tuple[str, ...] | None) -> dict[str, Any] | None:
        """shell, user, group, stdin, notify, output, output_max: what a crontab line needs."""
        out: dict[str, Any] = {}
        good = True
        if merged.get("shell") is not None:
            shell = merged["shell"]
            if not self.typed(shell, where("shell"), str, "the path of a shell"):
                good = False
            elif not os.path.isabs(shell) or any(c.isspace() for c in shell):
                # cron runs SHELL itself with `-c`; a relative path would depend on the PATH.
                self.err(where("shell"), f"expected an absolute path such as /bin/bash, got {shell!r}")
                good = False
            else:
                out["shell"] = shell
        for key in ("user", "group"):
            value = merged.get(key)
            if value is None:
                continue
            if isinstance(value, int) and not isinstance(value, bool):
                value = str(value)
            if not isinstance(value, str) or not _ACCOUNT.match(value):
                self.err(where(key), f"expected a {key} name or numeric id, got {_describe(value)}")
                good = False
            else:
                out[key] = value
        if merged.get("stdin") is not None:
            if self.typed(merged["stdin"], where("stdin"), str, "text"):
                out["stdin"] = merged["stdin"]
            else:
                good = False
        if merged.get("notify") is not None:
            notify = self.notify(merged["notify"], where("notify"))
            if notify is None:
                good = False
            else:
                out["notify"] = notify
        if "output" in merged:
            value = merged["output"]
            if value not in ("keep", "tail"):
                self.err(where("output"), f"expected keep (the whole output of each run, in the state dir) or "
                         f"tail (the last 64 KiB, in the history), got {_describe(value)}")
                good = False
            out["keep_output"] = value == "keep"
        if "output_max" in merged:
            try:
                out["output_max"] = parse_size(merged["output_max"])
            except ValueError as exc:
                self.err(where("output_max"), str(exc))
                good = False
        else:
            out["output_max"] = DEFAULT_OUTPUT_MAX
        return out if good else None

    def notify(self, raw: Any, path: tuple[Any, ...]) -> Notify | None:
        """`notify: URL`, `notify: [URL, …]` or `notify: {urls: …, when: [failure, recovery]}`."""
        when: Any = [NotifyWhen.FAILURE.value]
        urls: Any = raw
        upath = path
        if isinstance(raw, dict):
            self.unknown_keys(raw, NOTIFY_KEYS, path, "notify")
            urls, upath = raw.get("urls"), path + ("urls",)
            when = raw.get("when", when)
        if isinstance(urls, str):
            urls = [urls]
        good = True
        if not isinstance(urls, list) or not urls or not all(isinstance(u, str) and u for u in urls):
            self.err(upath, f"expected an Apprise URL (mailto://…, ntfy://…, json://…) or a list of them, "
                     f"got {_describe(urls)}")
            good = False
        else:
            for i, url in enumerate(urls):
                if not re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://\S", url):
                    self.err(upath + (i,) if len(urls) > 1 else upath,
                             f"expected an Apprise URL such as mailto://… or ntfy://…, got {url!r}")
                    good = False
        if isinstance(when, str):
            when = [when]
        known = ", ".join(w.value for w in NotifyWhen)
        whens: set[NotifyWhen] = set()
        if not isinstance(when, list) or not when:
            self.err(path + ("when",), f"expected one or a list of {known}, got {_describe(when)}")
            good = False
        else:
            for w in when:
                try:
                    whens.add(NotifyWhen(w))
                except ValueError:
                    self.err(path + ("when",), f"expected one or a list of {known}, got {_describe(w)}")
                    good = False
        return Notify(tuple(urls), frozenset(whens)) if good else None

    def chains(self, jobs: Mapping[str, JobSpec], raw_jobs: Mapping[str, Any]) -> None:
        """`after:` names must exist, and following them must never lead back to the start."""
        names = set(raw_jobs)
        for spec in jobs.values():
            for dep in spec.after:
                if dep not in names:
                    self.err(("jobs", spec.name, "after"), f"no job named {dep!r}{_did_you_mean(dep, names)}")
                elif dep == spec.name:
                    self.err(("jobs", spec.name, "after"), "a job cannot run after itself")
        # Depth-first search for a cycle; report it once, on the job where it was found.
        state: dict[str, int] = {}  # 1: on the current path, 2: done

        def visit(name: str, trail: list[str]) -> None:
            state[name] = 1
            for dep in jobs[name].after if name in jobs else ():
                if dep not in jobs or dep == name:
                    continue
                if state.get(dep) == 1:
                    cycle = trail[trail.index(dep):] + [dep] if dep in trail else [name, dep]
                    self.err(("jobs", name, "after"), "a cycle: " + " -> ".join(reversed(cycle)))
                elif dep not in state:
                    visit(dep, trail + [dep])
            state[name] = 2

        for name in jobs:
            if name not in state:
                visit(name, [name])

    def backoff(self, raw: Any, path: tuple[Any, ...]) -> Backoff | None:
        if raw is None:
            return Backoff()
        if not self.typed(raw, path, dict, "a mapping with initial, factor, max"):
            return None
        self.unknown_keys(raw, BACKOFF_KEYS, path, "backoff")
        base = Backoff()
        initial = self.duration(raw.get("initial", base.initial), path + ("initial",))
        maximum = self.duration(raw.get("max", base.max), path + ("max",))
        factor = raw.get("factor", base.factor)
        jitter = raw.get("jitter", base.jitter)
        good = initial is not None and maximum is not None
        if not isinstance(factor, (int, float)) or isinstance(factor, bool) or factor < 1:
            self.err(path + ("factor",), f"expected a number >= 1, got {_describe(factor)}")
            good = False
        if not isinstance(jitter, (int, float)) or isinstance(jitter, bool) or not 0 <= jitter <= 1:
            self.err(path + ("jitter",), f"expected a fraction between 0 and 1, got {_describe(jitter)}")
            good = False
        if not good:
            return None
        assert initial is not None and maximum is not None
        return Backoff(initial=initial, factor=float(factor), max=maximum, jitter=float(jitter))

    def at(self, raw: Any, path: tuple[Any, ...], tz: str, catch_up: bool) -> At | None:
        if isinstance(raw, datetime):
            when = raw
        elif isinstance(raw, str):
            try:
                when = datetime.fromisoformat(raw.strip())
            except ValueError:
                self.err(path, f"expected an ISO 8601 time such as 2026-12-31T23:59:00, got {raw!r}")
                return None
        elif isinstance(raw, date):
            when = datetime(raw.year, raw.month, raw.day)
        else:
            self.err(path, f"expected an ISO 8601 time, got {_describe(raw)}")
            return None
        if when.tzinfo is None:
            # A wall-clock time means what it would for a fixed-time cron job: in a skipped
            # hour it runs at the change, in a repeated hour in the first pass (cron(8)).
            when, note = wall_time(when, zone(tz))
            if note:
                self.warn(path, note)
        if self.now is not None and when <= self.now and not catch_up:
            self.err(path, f"{when.isoformat()} is in the past (set `catch_up: true` to run it once anyway)")
            return None
        return At(when=when, text=str(raw))


def _whole(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def _as_tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _describe(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return f"{value!r} (a boolean)".lower()
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, (int, float)):
        return f"{value!r} (a number)"
    return repr(value)


def parse_jobs(text: str, source: str = "<string>", *, base_dir: Path | None = None, now: datetime | None = None) -> JobSet:
    """Parse and validate a jobs file's text; raise ConfigError listing every problem.

    `now` lets `at` times in the past be rejected; None skips that check (e.g. `cronpy next`).
    """
    raw, doc = _compose(text, source)
    base = base_dir if base_dir is not None else Path.cwd()
    jobset = _Checker(doc, base, now).top(raw)
    if doc.problems or jobset is None:
        raise ConfigError(source, doc.problems)
    src = Path(source) if source != "<string>" else None
    return JobSet(
        jobs=jobset.jobs, source=src, timezone=jobset.timezone, state_dir=jobset.state_dir,
        max_concurrent=jobset.max_concurrent, history_retention=jobset.history_retention,
        shutdown_grace=jobset.shutdown_grace, store=jobset.store, leader_lease=jobset.leader_lease,
        clock_skew_warning=jobset.clock_skew_warning, clock_skew_limit=jobset.clock_skew_limit,
        warnings=tuple(w.format(source) for w in sorted(doc.warnings, key=lambda w: (w.line or 0, w.key))),
    )


def load_jobs(path: str | os.PathLike[str], *, now: datetime | None = None) -> JobSet:
    """Read and validate the jobs file at `path`."""
    p = Path(path)
    try:
        with p.open("rb") as fh:
            data = fh.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(str(p), [Problem(None, "", "no such file (name the jobs file with -f FILE or "
                                                    "$CRONPY_FILE; the default is ./jobs.yaml)")]) from None
    except IsADirectoryError:
        raise ConfigError(str(p), [Problem(None, "", "is a directory, not a jobs file")]) from None
    except OSError as exc:
        raise ConfigError(str(p), [Problem(None, "", f"cannot read: {exc.strerror or exc}")]) from None
    if len(data) > MAX_FILE_BYTES:
        raise ConfigError(str(p), [Problem(None, "", f"larger than {MAX_FILE_BYTES // 2**20} MiB: not a jobs file?")])
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        # Say where, as an editor would (line and column), not as a byte offset.
        line = data.count(b"\n", 0, exc.start) + 1
        col = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise ConfigError(str(p), [Problem(line, "", f"column {col}: not UTF-8 (byte 0x{data[exc.start]:02x}); "
                                           "save the file as UTF-8")]) from None
    return parse_jobs(text, str(p), base_dir=p.resolve().parent, now=now)


def get_job(jobs: JobSet, name: str) -> JobSpec:
    """Return job `name` or raise a usage error listing close names."""
    try:
        return jobs.jobs[name]
    except KeyError:
        hint = _did_you_mean(name, set(jobs.jobs))
        raise UsageError(f"no job named {name!r} in {jobs.source or 'the jobs file'}{hint}") from None


def check_runnable(jobs: JobSet, *, euid: int | None = None, only: str | None = None) -> None:
    """What only the host running the jobs can tell: `user:`/`group:` exist and the runner may
    switch to them (it must be root, as cron is), and `notify:` has Apprise installed.

    `cronpy validate` does not call this (a file for a server validates on a laptop); `run` does
    before anything starts, `trigger` for its job (`only`). Raises ConfigError naming file:line:key.
    """
    import grp
    import pwd

    euid = os.geteuid() if euid is None else euid
    me = pwd.getpwuid(euid).pw_name if euid != 0 else "root"
    problems: list[Problem] = []
    apprise_missing: str | None = None
    for spec in jobs.jobs.values():
        if only is not None and spec.name != only:
            continue
        for key, value, lookup in (("user", spec.user, pwd.getpwnam), ("group", spec.group, grp.getgrnam)):
            if value is None:
                continue
            try:
                if value.isdigit():
                    (pwd.getpwuid if key == "user" else grp.getgrgid)(int(value))
                else:
                    lookup(value)
            except KeyError:
                problems.append(Problem(spec.line, f"jobs.{spec.name}.{key}", f"no {key} {value!r} on this host"))
                continue
            if euid != 0:
                problems.append(Problem(spec.line, f"jobs.{spec.name}.{key}",
                                        f"running as {key} {value!r} needs the runner to run as root "
                                        f"(it runs as {me}); remove `{key}:` or start cronpy as root"))
        if spec.notify is not None and apprise_missing is None:
            try:
                import apprise  # noqa: F401
            except ImportError:
                apprise_missing = spec.name
                problems.append(Problem(spec.line, f"jobs.{spec.name}.notify",
                                        "notifications need Apprise: pip install 'cronpy-runner[notify]'"))
    if problems:
        raise ConfigError(str(jobs.source or "<string>"), problems)
