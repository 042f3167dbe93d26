"""How an error may be told: stored on a row, logged, raised to RQ or shown by the API. It sits
in the lowest package so every layer tells errors the same way.

Our own exceptions name IDs only (the project's rule); anyone else's message may carry the
values it was given — a database error's DETAIL (`Key (email)=(…)`), an SMTP refusal naming
its recipient, a parser quoting its input — so of those only the type and a code are kept."""

from __future__ import annotations

import logging
import smtplib

from sqlalchemy.exc import SQLAlchemyError

OWN_PACKAGES = {"listener", "workers", "notifications", "db", "config"}


def is_own(exc: BaseException) -> bool:
    return type(exc).__module__.split(".")[0] in OWN_PACKAGES


def describe_error(exc: BaseException) -> str:
    """The error's type (and code), never the values in its message; ours in full."""
    if isinstance(exc, SQLAlchemyError):
        cause = getattr(exc, "orig", None)
        code = getattr(cause, "sqlstate", None)
        return type(exc).__name__ + (f" ({type(cause).__name__})" if cause is not None else "") \
            + (f" SQLSTATE {code}" if code else "")
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        codes = sorted({code for code, _msg in exc.recipients.values()})
        return f"SMTPRecipientsRefused {' '.join(map(str, codes))}".strip()
    if isinstance(exc, smtplib.SMTPResponseException):
        return f"{type(exc).__name__} {exc.smtp_code}"
    if is_own(exc):
        return str(exc)
    if isinstance(exc, OSError) and exc.errno is not None:
        return f"{type(exc).__name__} (errno {exc.errno})"
    return type(exc).__name__


class Scrubbed(Exception):
    """Stands in for an exception whose message may carry personal data, keeping its
    traceback (where it happened) and its description (what it was)."""


def _chain(exc: BaseException | None) -> list[BaseException]:
    found, seen = [], set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        found.append(exc)
        exc = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
    return found


def scrubbed(exc: BaseException) -> BaseException:
    """`exc` itself when it and every exception chained to it are safe to tell; else a
    Scrubbed with `exc`'s traceback and the chain's descriptions (no messages of others)."""
    chain = _chain(exc)
    if all(is_own(e) for e in chain):
        return exc
    told = " <- ".join(f"{type(e).__module__}.{describe_error(e)}" if not is_own(e)
                       else f"{type(e).__name__}: {e}" for e in chain)
    return Scrubbed(told).with_traceback(exc.__traceback__)


class ScrubTracebacks(logging.Filter):
    """On a log handler: tracebacks keep their frames, but a foreign exception's message
    (and its chained causes') is replaced by its description (describe_error)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            exc = scrubbed(record.exc_info[1])
            record.exc_info = (type(exc), exc, exc.__traceback__)
            record.exc_text = None
        return True


def escape_controls(text: str) -> str:
    """`text` with every control character but none shown as an escape (`\\x00`, `\\n`):
    what it names stays readable, and it can never start a line of its own."""
    return "".join(c if c.isprintable() or c == " " else ascii(c)[1:-1] for c in text)


class EscapeControls(logging.Filter):
    """On a log handler: a message (formatted with its arguments) holding a control character
    — a request path with %0a, an id someone typed — has them escaped, so no input can
    forge a log line. A traceback's own lines are not the message and stay as they are."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - logging reports its own formatting errors
            return True
        if not message.isprintable():
            record.msg, record.args = escape_controls(message), None
        return True


def scrub_logs() -> None:
    """Install ScrubTracebacks and EscapeControls on every handler of the root logger (after
    basicConfig)."""
    for handler in logging.getLogger().handlers:
        for kind in (ScrubTracebacks, EscapeControls):
            if not any(isinstance(f, kind) for f in handler.filters):
                handler.addFilter(kind())
