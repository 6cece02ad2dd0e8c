"""Secrets out of everything cronpy prints: URL passwords, tokens in query strings, DSN passwords.

One module, used wherever a URL or a message that may quote one is shown: logs (a filter on
the handler), `Error: …` lines, `cronpy status` and the status file. It parses by hand, with
`re` only, for two reasons: the CLI imports it on its fast path, and `urllib.parse` splits
`postgresql://u:pa/ss@host/db` (a password with an unencoded `/`, which libpq accepts) at the
`/`, so that the password would be printed as part of the path.
"""

from __future__ import annotations

import logging
import re

MASK = "***"

# Query keys whose values are secrets (matched as a part of the key, any case): `token`,
# `access_token`, `api_key`, `apikey`, `password`, `sslpassword`, `client_secret`, `sig`, …
_SECRET_KEY = re.compile(r"pass|pwd|token|secret|key|auth|sig|credential|session|jwt|bearer", re.IGNORECASE)
# A URL inside free text: a scheme, `://`, then anything up to whitespace or a quote, less
# the punctuation that ends a sentence (`… at postgresql://db/x: refused`).
_URL_IN_TEXT = re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>`]*[^\s'\"<>`.,:;)\]]")
# libpq's key=value form: `host=db password=s3cret`, `password='a b'`.
_DSN_PASSWORD = re.compile(r"\b(password|sslpassword)\s*=\s*(?!\*\*\*)('(?:[^'\\]|\\.)*'|[^\s&]+)", re.IGNORECASE)
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)(.*)$", re.DOTALL)


def redact_url(url: str) -> str:
    """`url` with the password of its userinfo and its secret-looking query values masked.

    An http(s) URL's userinfo is masked whole (`https://TOKEN@host` carries a token as the
    user name); other schemes keep the user name, which `status` shows to say who connects.
    """
    m = _SCHEME.match(url)
    if m is None:
        return url
    scheme, rest = m.groups()
    # The query and fragment start at the first `?` or `#`; the userinfo ends at the last `@`
    # before them (a password may hold an unencoded `/` or `:`, never an unencoded `@` that
    # libpq or urllib would accept, but mask up to the last one to be safe).
    cut = min((i for i in (rest.find("?"), rest.find("#")) if i >= 0), default=len(rest))
    head, tail = rest[:cut], rest[cut:]
    at = head.rfind("@")
    if at >= 0:
        userinfo, hostpath = head[:at], head[at + 1:]
        if scheme.lower().startswith("http"):
            userinfo = MASK
        elif ":" in userinfo:
            userinfo = userinfo.split(":", 1)[0] + ":" + MASK
        head = f"{userinfo}@{hostpath}"
    return scheme + head + _redact_query(tail)


def _redact_query(tail: str) -> str:
    if not tail.startswith("?"):
        return tail
    query, hash_, fragment = tail[1:].partition("#")
    parts = []
    for pair in query.split("&"):
        key, eq, value = pair.partition("=")
        if eq and value and _SECRET_KEY.search(key):
            value = MASK
        parts.append(f"{key}{eq}{value}")
    return "?" + "&".join(parts) + hash_ + fragment


def redact_text(text: str) -> str:
    """`text` with every URL in it redacted (`redact_url`) and libpq `password=…` masked."""
    if "://" in text:
        text = _URL_IN_TEXT.sub(lambda m: redact_url(m.group()), text)
    if "=" in text:
        text = _DSN_PASSWORD.sub(lambda m: f"{m.group(1)}={MASK}", text)
    return text


class RedactingFilter(logging.Filter):
    """A logging filter that redacts each record's final message (arguments merged in), so
    no handler it is attached to can print a URL's secret, whoever logged it."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = redact_text(record.getMessage())
        if record.args or message != record.msg:
            # The message is merged with its arguments once, here: the handler's filter and
            # formatter then take it as it is (3 -> 1 %-formatting a line, issue #12).
            record.msg, record.args = message, None
        return True


def cronpy_logger() -> logging.Logger:
    """The "cronpy" logger every module logs to, with a RedactingFilter attached (once): its
    records are redacted before any handler sees them, even Python's last-resort handler when a
    command set up no logging (`history` with a fleet store). Each module that logs gets its
    logger here rather than the package's __init__ importing logging for every command
    (~5 ms of `history`'s start-up, issue #16)."""
    log = logging.getLogger("cronpy")
    if not any(isinstance(f, RedactingFilter) for f in log.filters):
        log.addFilter(RedactingFilter())
    return log
