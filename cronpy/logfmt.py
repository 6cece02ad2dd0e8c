"""Log line formats for `run` and `trigger`: `text` (the default) or `json`, one JSON object a
line (as supercronic's -json) for log shippers: {"time", "level", "message"} plus "job" and
"output" for a line a job printed."""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone

FORMAT = "text"  #: set by the CLI's --log-format before logging is set up


def json_line(level: str, message: str, **extra: object) -> str:
    data: dict[str, object] = {"time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
                               "level": level, "message": message}
    data.update({k: v for k, v in extra.items() if v is not None})
    return json.dumps(data, ensure_ascii=False)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        extra: dict[str, object] = {}
        if record.exc_info:
            extra["exception"] = self.formatException(record.exc_info)
        return json_line(record.levelname.lower(), record.getMessage(), **extra)
