"""cronpy: a job runner driven by a declarative YAML jobs file."""

import logging as _logging

from cronpy.redact import RedactingFilter as _RedactingFilter

__version__ = "0.1.0"

# Every module logs to "cronpy": its records are redacted before any handler sees them, even
# Python's last-resort handler when a command set up no logging (`history` with a fleet store).
_logging.getLogger("cronpy").addFilter(_RedactingFilter())
