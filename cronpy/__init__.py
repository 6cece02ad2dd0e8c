"""cronpy: a job runner driven by a declarative YAML jobs file."""

# Nothing is imported here: every command, the fast read-only ones included, pays for what
# this file imports. The logger's redaction is set up by cronpy.redact.cronpy_logger.

__version__ = "0.1.0"
