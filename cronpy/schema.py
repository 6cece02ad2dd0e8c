"""The JSON Schema of a jobs file, for editors (`# yaml-language-server: $schema=…`).

It describes shapes and types; `cronpy validate` checks everything else (cron fields, zones,
`after:` cycles, durations' syntax). A test keeps its keys equal to config.py's.
"""

from __future__ import annotations

from typing import Any

DURATION: dict[str, Any] = {
    "description": "A duration: 250ms, 45s, 10m, 2h, 1d, 1h30m, or a number of seconds.",
    "anyOf": [
        {"type": "string", "pattern": r"^\s*(\d+(\.\d+)?\s*(ms|s|m|h|d|w)\s*)+$|^\s*\d+(\.\d+)?\s*$"},
        {"type": "number", "minimum": 0},
    ],
}
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
HOOK = {"type": "string", "description": "A shell command; the run's details are in CRONPY_* environment variables."}
URL = {"type": "string", "pattern": r"^https?://[^\s/]+"}
WHEN = ["failure", "recovery", "success", "always", "output"]

JOB_PROPERTIES: dict[str, Any] = {
    "description": {"type": "string"},
    "schedule": {
        "description": "Cron (5 fields, 6 with leading seconds), a preset (@daily), or an interval (10m, every 1h).",
        "type": ["string", "integer"],
    },
    "at": {"description": "A one-shot time, ISO 8601, in the job's zone.", "type": "string"},
    "command": {
        "description": "A string runs under /bin/sh -c; a list runs without a shell.",
        "anyOf": [{"type": "string", "minLength": 1},
                  {"type": "array", "minItems": 1, "items": {"type": ["string", "number"]}}],
    },
    "python": {"description": "An entry point: package.module:function.", "type": "string",
               "pattern": r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$"},
    "args": {"type": "array"},
    "kwargs": {"type": "object"},
    "enabled": {"type": "boolean"},
    "timezone": {"description": "An IANA zone such as Europe/Lisbon.", "type": "string"},
    "timeout": DURATION,
    "kill_grace": DURATION,
    "retries": {"type": "integer", "minimum": 0},
    "backoff": {
        "type": "object",
        "additionalProperties": False,
        "properties": {"initial": DURATION, "factor": {"type": "number", "minimum": 1}, "max": DURATION,
                       "jitter": {"type": "number", "minimum": 0, "maximum": 1}},
    },
    "env": {"type": "object", "propertyNames": {"pattern": r"^[A-Za-z_][A-Za-z0-9_]*$"},
            "additionalProperties": {"type": ["string", "number", "boolean"]}},
    "cwd": {"type": "string"},
    "run_on_start": {"type": "boolean"},
    "overlap": {"enum": ["skip", "queue", "allow"]},
    "priority": {"type": "integer"},
    "jitter": DURATION,
    "catch_up": {"type": "boolean"},
    "after": {"anyOf": [{"type": "string"}, {"type": "array", "minItems": 1, "items": {"type": "string"}}]},
    "on_failure": HOOK,
    "on_success": HOOK,
    "on_retry": HOOK,
    "ping": URL,
    "webhook": URL,
    "shell": {"type": "string", "pattern": "^/\\S+$",
              "description": "Runs a command string as SHELL -c COMMAND (cron's SHELL); default /bin/sh."},
    "user": {"type": ["string", "integer"],
             "description": "Run as this user, with its home and a login-like environment (the runner must be root)."},
    "group": {"type": ["string", "integer"], "description": "Run with this group instead of the user's own."},
    "stdin": {"type": "string", "description": "Text fed to the job's standard input (cron's `%`)."},
    "run_on_boot": {"type": "boolean", "description": "Run once per machine boot (cron's @reboot)."},
    "notify": {
        "description": "Apprise URLs (mailto://, ntfy://, slack://, json://, ...) told about finished runs.",
        "anyOf": [
            {"type": "string"},
            {"type": "array", "minItems": 1, "items": {"type": "string"}},
            {"type": "object", "additionalProperties": False, "required": ["urls"],
             "properties": {
                 "urls": {"anyOf": [{"type": "string"}, {"type": "array", "minItems": 1, "items": {"type": "string"}}]},
                 "when": {"anyOf": [{"enum": WHEN}, {"type": "array", "minItems": 1, "items": {"enum": WHEN}}]},
             }},
        ],
    },
    "output": {"enum": ["tail", "keep"],
               "description": "keep: each run's whole output in the state dir (gzip), for `cronpy logs`."},
    "output_max": {"description": "Kept output per job, older runs' files deleted first: 100MB, 1GiB, bytes.",
                   "type": ["string", "integer"]},
}

DEFAULTS_PROPERTIES = {k: v for k, v in JOB_PROPERTIES.items() if k not in ("schedule", "at", "command", "python", "after")}


def jobs_file_schema() -> dict[str, Any]:
    """Return the JSON Schema (draft 2020-12) of a cronpy jobs file."""
    job = {
        "type": "object",
        "additionalProperties": False,
        "properties": JOB_PROPERTIES,
        "oneOf": [{"required": ["command"], "not": {"required": ["python"]}},
                  {"required": ["python"], "not": {"required": ["command"]}}],
        "not": {"required": ["schedule", "at"]},
    }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://pypi.org/project/cronpy-runner/jobs.schema.json",
        "title": "cronpy jobs file",
        "type": "object",
        "additionalProperties": False,
        "required": ["jobs"],
        "properties": {
            "timezone": {"type": "string"},
            "state_dir": {"type": "string"},
            "store": {"type": ["string", "null"], "pattern": "^postgres(ql)?://",
                      "description": "A PostgreSQL URL: a fleet of runners shares one history and one schedule"},
            "leader_lease": DURATION,
            "clock_skew_warning": DURATION,
            "clock_skew_limit": DURATION,
            "max_concurrent": {"type": "integer", "minimum": 1},
            "history_retention": {"anyOf": [DURATION, {"const": "forever"}, {"type": "null"}]},
            "shutdown_grace": DURATION,
            "defaults": {"type": ["object", "null"], "additionalProperties": False, "properties": DEFAULTS_PROPERTIES},
            "jobs": {"type": ["object", "null"], "propertyNames": {"pattern": NAME_PATTERN},
                     "additionalProperties": job},
        },
    }
