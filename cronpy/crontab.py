"""`cronpy import-crontab`: translate crontab(5) files into a jobs file, exactly or not at all.

Every line is read as Vixie/Debian cron(8) reads it, and each field's set of values is worked
out independently of croniter. The emitted expression is then compiled by cronpy's own
schedule code and compared field by field (values, the day-of-month/day-of-week "star" rule,
the fixed-time/wildcard DST class): a line is only translated when cronpy will fire it at the
same instants as cron. Anything else is a Problem, reported with its file and line.

Pure: no clock, no files; the CLI reads the inputs and writes the output.
"""

from __future__ import annotations

import re
import shlex
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

import yaml

from cronpy.schedule import compile_cron, zone

MONTHS = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
DAYS = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"]
# (name, lowest, highest, names, first name's value) of the five fields, as cron(8) has them.
FIELDS = [
    ("minute", 0, 59, None, 0),
    ("hour", 0, 23, None, 0),
    ("day of month", 1, 31, None, 0),
    ("month", 1, 12, MONTHS, 1),
    ("day of week", 0, 7, DAYS, 0),  # 7 is Sunday too
]
KEYWORDS = {
    "@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *", "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *", "@midnight": "0 0 * * *", "@hourly": "0 * * * *",
}
# Variables that only shape cron's mail; Apprise writes its own message.
_MAIL_FORMAT = {"CONTENT_TYPE", "CONTENT_TRANSFER_ENCODING", "MAILFROM"}
_ENV_LINE = re.compile(r"^\s*([^\s=#]+)\s*=\s*(.*?)\s*$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class ImportProblem:
    """A line that cannot be translated exactly."""

    source: str
    line: int
    message: str

    def format(self) -> str:
        return f"{self.source}:{self.line}: {self.message}"


@dataclass
class _Env:
    shell: str | None = None
    mailto: str | None = None
    mailfrom: str | None = None
    cron_tz: str | None = None
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class _Job:
    source: str
    line: int
    text: str  #: the original line
    expr: str | None  #: None for @reboot
    command: str
    stdin: str | None
    user: str | None
    env: _Env


class _FieldError(ValueError):
    pass


def _number(token: str, index: int) -> int:
    name, low, high, names, first = FIELDS[index]
    if names is not None and token.lower() in names:
        return names.index(token.lower()) + first
    if not token.isdigit():
        raise _FieldError(f"bad {name} {token!r}" + (f" (names: {', '.join(names)})" if names else ""))
    value = int(token)
    if not low <= value <= high:
        raise _FieldError(f"{name} {value} is out of range {low}-{high}")
    return value


def parse_field(text: str, index: int) -> tuple[set[int], bool]:
    """The values cron(8) gives one field (Sunday as 0), and whether cronie and Vixie cron
    disagree on it (`5/10`: cronie reads it as 5-max/10, Vixie rejects it)."""
    name, low, high, _, _ = FIELDS[index]
    values: set[int] = set()
    ambiguous = False
    for element in text.split(","):
        if not element:
            raise _FieldError(f"empty element in {name} field {text!r}")
        rng, _, step_text = element.partition("/")
        step = 1
        if "/" in element:
            if not step_text.isdigit() or int(step_text) == 0:
                raise _FieldError(f"bad step {step_text!r} in {name} field {text!r}")
            step = int(step_text)
        if rng == "*":
            a, b = low, high
        elif "-" in rng:
            first, _, last = rng.partition("-")
            a, b = _number(first, index), _number(last, index)
            if a > b:
                raise _FieldError(f"range {rng!r} runs backwards in {name} field (cron(8) rejects it)")
        else:
            a = _number(rng, index)
            b = a
            if "/" in element:
                ambiguous = True
                b = high
        values.update(range(a, b + 1, step))
    if index == 4 and 7 in values:
        values.discard(7)
        values.add(0)
    return values, ambiguous


def _canonical(text: str, index: int) -> str:
    """The field as written, with names turned into numbers (cron accepts them in any case)."""
    _, _, _, names, first = FIELDS[index]
    if names is None:
        return text
    return re.sub(r"[A-Za-z]+", lambda m: str(names.index(m.group(0).lower()) + first), text)


def _as_list(values: set[int], index: int, star: bool) -> str:
    """An explicit list (runs of three or more as ranges); `*` kept where cron's star rule needs it."""
    _, low, high, _, _ = FIELDS[index]
    full = set(range(low, 7 if index == 4 else high + 1))
    if star and values == full:
        return "*"
    out: list[str] = []
    ordered = sorted(values)
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        out.append(f"{ordered[i]}-{ordered[j]}" if j - i >= 2 else ",".join(str(v) for v in ordered[i:j + 1]))
        i = j + 1
    return ",".join(out)


def translate_expr(fields: list[str]) -> tuple[str, list[str]]:
    """A cronpy expression that fires exactly when cron(8) fires `fields`; and what could not
    be kept exactly (empty when exact). Raises _FieldError for a line cron itself rejects."""
    sets = []
    notes: list[str] = []
    for i, f in enumerate(fields):
        values, ambiguous = parse_field(f, i)
        if ambiguous:
            notes.append(f"{FIELDS[i][0]} field {f!r}: a single value with a step means value-max/step to "
                         "cronie and is an error to Vixie cron")
        sets.append(values)
    dom_star, dow_star = fields[2].startswith("*"), fields[4].startswith("*")
    # cron(8)'s DST rule: a job whose minute or hour field starts with `*` follows the wall clock.
    wildcard = fields[0].startswith("*") or fields[1].startswith("*")
    canonical = [_canonical(f, i) for i, f in enumerate(fields)]
    listed = [_as_list(sets[i], i, fields[i].startswith("*")) for i in range(5)]
    candidates = [
        canonical,
        listed[:2] + canonical[2:],  # steps in minute/hour spelled out, should cronpy's DST class differ
        listed,
    ]
    for cand in candidates:
        expr = " ".join(cand)
        try:
            got = compile_cron(expr, "")
        except ValueError:
            continue
        if (set(got.minutes) == sets[0] and set(got.hours) == sets[1] and set(got.doms) == sets[2]
                and not got.last_dom and set(got.months) == sets[3] and set(got.dows) == sets[4]
                and not got.nth and not got.last_weekday and not got.nearest_weekday and not got.last_dows
                and got.dom_star == dom_star and got.dow_star == dow_star
                and got.wildcard == wildcard):
            return expr, notes
    notes.append("cronpy cannot express this schedule exactly")
    return " ".join(canonical), notes


def split_percent(command: str) -> tuple[str, str | None]:
    """cron(8)'s `%`: the first unescaped `%` ends the command and the rest is its standard
    input, each further `%` a newline; `\\%` is a literal `%` in both parts, and any other
    backslash is kept. Returns (command, stdin or None)."""
    out: list[str] = []
    escaped = False
    rest: str | None = None
    for i, ch in enumerate(command):
        if escaped:
            escaped = False
            if ch == "%":
                out[-1] = "%"  # the backslash becomes the percent sign
                continue
        elif ch == "\\":
            escaped = True
        elif ch == "%":
            rest = command[i + 1:]
            break
        out.append(ch)
    if not rest:  # no `%`, or nothing after it: cron writes nothing, the job reads end of file
        return "".join(out), None
    data: list[str] = []
    escaped = need_newline = False
    for ch in rest:
        if escaped:
            if ch != "%":
                data.append("\\")
        elif ch == "%":
            ch = "\n"
        escaped = ch == "\\"
        if not escaped:
            data.append(ch)
            need_newline = ch != "\n"
    if escaped:
        data.append("\\")
    if need_newline:  # cron ends the input with a newline when the last character it wrote was not one
        data.append("\n")
    return "".join(out), "".join(data)


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    return value


def _parse(source: str, text: str, system: bool, problems: list[ImportProblem]) -> list[_Job]:
    env = _Env()
    jobs: list[_Job] = []
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.lstrip(" \t")
        if not line or line.startswith("#"):
            continue
        m = _ENV_LINE.match(line)
        if m and not line.startswith("@") and not line[0].isdigit() and not line.startswith("*"):
            name, value = m.group(1), _unquote(m.group(2))
            env = _Env(env.shell, env.mailto, env.mailfrom, env.cron_tz, dict(env.env))
            if not _ENV_NAME.match(name):
                problems.append(ImportProblem(source, n, f"{name!r} is not an environment variable name cronpy "
                                              "can set"))
            elif name == "SHELL":
                if not value.startswith("/"):
                    problems.append(ImportProblem(source, n, f"SHELL={value}: not an absolute path"))
                else:
                    env.shell = value
            elif name == "MAILTO":
                env.mailto = value
            elif name == "MAILFROM":
                env.mailfrom = value
            elif name == "CRON_TZ":
                try:
                    zone(value)
                    env.cron_tz = value
                except ValueError as exc:
                    problems.append(ImportProblem(source, n, f"CRON_TZ: {exc}"))
            elif name in _MAIL_FORMAT:
                problems.append(ImportProblem(source, n, f"{name}: formats cron's mail; Apprise writes its own "
                                              "message (dropped)"))
            elif name == "RANDOM_DELAY":
                problems.append(ImportProblem(source, n, "RANDOM_DELAY: cronie's delay, fixed per daemon start, "
                                              "has no exact equivalent (`jitter:` is random per run)"))
            else:
                env.env[name] = value
            continue
        parts = line.split(None, 5 if not line.startswith("@") else 1)
        if line.startswith("@"):
            keyword = parts[0].lower()
            rest = parts[1] if len(parts) > 1 else ""
            if keyword != "@reboot" and keyword not in KEYWORDS:
                problems.append(ImportProblem(source, n, f"unknown keyword {parts[0]!r}"))
                continue
            expr_fields = None if keyword == "@reboot" else KEYWORDS[keyword].split()
        else:
            if len(parts) < 6:
                problems.append(ImportProblem(source, n, "expected five time fields and a command"))
                continue
            expr_fields, rest = parts[:5], parts[5]
        user = None
        if system:
            who = rest.split(None, 1)
            if len(who) < 2:
                problems.append(ImportProblem(source, n, "expected a user and a command after the time fields "
                                              "(--system format)"))
                continue
            user, rest = who
        if not rest.strip():
            problems.append(ImportProblem(source, n, "no command"))
            continue
        expr = None
        if expr_fields is not None:
            try:
                expr, notes = translate_expr(expr_fields)
            except _FieldError as exc:
                problems.append(ImportProblem(source, n, str(exc)))
                continue
            for note in notes:
                problems.append(ImportProblem(source, n, note))
        command, stdin = split_percent(rest)
        jobs.append(_Job(source, n, raw.strip(), expr, command, stdin, user, env))
    return jobs


# Programs that say little about what a line does: a name comes from the next command.
_SKIP_WORDS = {"cd", "test", "[", "[[", "exec", "nice", "ionice", "env", "sudo", "flock", "timeout", "if", "then",
               "sh", "bash", "chronic", "true", "false", "sleep", "{", "}", "(", ")", "!"}
_SEPARATORS = {"&&", "||", ";", "|", "{", "}", "(", ")"}


def job_name(command: str) -> str:
    """A readable name from a command: the first program that is not a wrapper or a test,
    and its first argument that looks like a name (`test -x /usr/sbin/anacron || run-parts
    --report /etc/cron.daily` → run-parts-cron.daily)."""
    try:
        lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        words = list(lexer)
    except ValueError:
        words = command.split()
    segments: list[list[str]] = [[]]
    for w in words:
        if w in _SEPARATORS or w.rstrip(";") != w and not w.rstrip(";"):
            segments.append([])
        else:
            segments[-1].append(w)
    picked: list[str] = []
    for seg in segments:
        seg = [w for w in seg if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", w)]  # VAR=value prefixes
        if not seg or seg[0].rsplit("/", 1)[-1] in _SKIP_WORDS:
            continue
        for w in seg:
            if w.startswith("-") or w.startswith(">") or w.startswith("<") or w in ("2>&1", ">", "<", ">>"):
                if w in (">", ">>", "<"):
                    break  # what follows a redirection is a file, not what the job is
                continue
            base = w.rstrip("/").rsplit("/", 1)[-1]
            slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", base).strip("-.")
            if not slug or slug.isdigit() or (picked and slug == picked[-1]):
                continue
            picked.append(slug)
            if len(picked) == 2:
                break
        if picked:
            break
    name = "-".join(picked)[:60].strip("-.") or "job"
    return name if re.match(r"^[A-Za-z0-9]", name) else f"job-{name}"


def _mail_url(to: str, mailfrom: str | None, smtp: str) -> str:
    host, _, port = smtp.partition(":")
    query = {"to": ",".join(a.strip() for a in to.split(",") if a.strip()),
             "from": mailfrom or "cronpy@localhost", "mode": "insecure"}
    return f"mailto://{host}:{port or 25}?" + urllib.parse.urlencode(query, safe="@,")


class _Dumper(yaml.SafeDumper):
    """yaml.SafeDumper (plain data only, everything quoted as needed) writing multi-line text
    (a `%` line's standard input) as a literal block, which PyYAML falls back from whenever the
    text cannot be a block exactly (trailing spaces, control characters)."""


def _text(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)


_Dumper.add_representer(str, _text)


def import_crontabs(sources: list[tuple[str, str]], *, system: bool = False, timezone: str = "UTC",
                    smtp: str = "localhost:25") -> tuple[str, list[ImportProblem]]:
    """Translate crontab texts ((name, text) pairs) into the text of a jobs file; return it
    with every problem found. `timezone` is the zone cron runs in (the host's)."""
    problems: list[ImportProblem] = []
    try:
        zone(timezone)
    except ValueError as exc:
        from cronpy.errors import UsageError

        raise UsageError(f"--tz: {exc}") from None
    parsed: list[_Job] = []
    for source, text in sources:
        parsed += _parse(source, text, system, problems)
    jobs: dict[str, dict[str, Any]] = {}
    for j in parsed:
        base = job_name(j.command)
        name, k = base, 2
        while name in jobs:
            name, k = f"{base}-{k}", k + 1
        body: dict[str, Any] = {"description": f"{j.source}:{j.line}: {j.text}"}
        if j.expr is None:
            body["run_on_boot"] = True
        else:
            body["schedule"] = j.expr
        body["command"] = j.command
        if j.stdin is not None:
            body["stdin"] = j.stdin
        if j.user is not None:
            body["user"] = j.user
        if j.env.shell is not None:
            body["shell"] = j.env.shell
        if j.env.cron_tz is not None and j.env.cron_tz != timezone:
            body["timezone"] = j.env.cron_tz
        if j.env.env:
            body["env"] = dict(j.env.env)
        if j.env.mailto:
            body["notify"] = {"urls": [_mail_url(j.env.mailto, j.env.mailfrom, smtp)], "when": ["output"]}
        jobs[name] = body
    doc: dict[str, Any] = {"timezone": timezone}
    # Settings every job shares move to `defaults:` (cron's variables apply to the lines below them).
    defaults: dict[str, Any] = {}
    if jobs:
        for key in ("shell", "env", "notify", "timezone"):
            values = [b.get(key) for b in jobs.values()]
            if values[0] is not None and all(v == values[0] for v in values):
                defaults[key] = values[0]
                for b in jobs.values():
                    del b[key]
    if defaults:
        doc["defaults"] = defaults
    doc["jobs"] = jobs
    header = "# Imported by `cronpy import-crontab` from " + ", ".join(s for s, _ in sources) + ".\n"
    header += "# Each job's description is its original crontab line.\n"
    body_text = yaml.dump(doc, Dumper=_Dumper, sort_keys=False, default_flow_style=False, allow_unicode=True,
                          width=1 << 16)
    return header + body_text, problems


def host_timezone(localtime: str = "/etc/localtime", timezone_file: str = "/etc/timezone") -> str:
    """The IANA name of the zone cron(8) runs in here (the /etc/localtime link, else
    /etc/timezone, else $TZ), or UTC when none names one."""
    import os

    candidates: list[str] = []
    try:
        target = os.readlink(localtime)
        if "zoneinfo/" in target:
            candidates.append(target.split("zoneinfo/", 1)[1])
    except OSError:
        pass
    try:
        with open(timezone_file, encoding="utf-8") as fh:
            candidates.append(fh.read().strip())
    except OSError:
        pass
    candidates.append(os.environ.get("TZ", "").lstrip(":"))
    for name in candidates:
        try:
            if name:
                zone(name)
                return name
        except ValueError:
            continue
    return "UTC"


def read_sources(paths: list[str], stdin_text: str | None) -> list[tuple[str, str]]:
    """(name, text) of each crontab to import; `-` is standard input. Raises UsageError for a
    file that cannot be read."""
    from cronpy.errors import UsageError

    out = []
    for p in paths:
        if p == "-":
            out.append(("<stdin>", stdin_text or ""))
            continue
        try:
            with open(p, encoding="utf-8") as fh:
                out.append((p, fh.read()))
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read crontab {p}: {exc}") from None
    return out
