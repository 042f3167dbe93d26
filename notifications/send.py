"""The one path every email takes: outbox row -> rendered message -> SMTP (or the local
outbox folder when SMTP_URL is unset). Exactly one message per row.

No database transaction is held open while talking to SMTP (on SQLite that would block
every other writer for as long as a slow server takes). Instead a short-lived Redis lock per
row keeps two jobs from sending the same row at once, and the row's status, read after the
lock is taken, keeps a later job from sending it again. The one window left is a crash
between the server's "250 OK" and our commit: the row stays pending and is sent again with
the same Message-ID, which mail clients treat as the same message.
"""

from __future__ import annotations

import hashlib
import logging
import os
import smtplib
import ssl
from datetime import datetime
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from email.utils import formatdate, parseaddr
from pathlib import Path

from redis import Redis
from sqlalchemy import update
from sqlalchemy.orm import Session

from config import Config
from db import Database, Notification, NotificationStatus, utcnow
from db.errors import describe_error
from notifications.outbox import DIGEST, DIGEST_ITEM
from notifications.render import render_notice

log = logging.getLogger(__name__)

SMTP_TIMEOUT = 10  # per SMTP command; a plain send is about six commands
# Outlives one SMTP conversation; a send whose worker was killed is retried after it.
LOCK_SECONDS = 120


class SendFailed(Exception):
    """SMTP refused or was unreachable; the row keeps the reason and the job retries.

    `permanent` (a 5xx for the recipients or the message) means retrying cannot help."""

    def __init__(self, reason: str, *, permanent: bool = False, code: int | None = None):
        super().__init__(reason)
        self.permanent = permanent
        self.code = code


def _domain(config: Config) -> str:
    address = parseaddr(config.mail_from)[1]
    domain = address.rsplit("@", 1)[-1] if "@" in address else ""
    return domain.strip("<> ") or "localhost"


def message_id(config: Config, notification: Notification) -> str:
    """Stable per outbox row (mismatch, recipient, kind): a resend carries the same one.

    A new case for the same mismatch is a new row and so a new message; reusing the ID
    there would make mail clients drop the second notice as a duplicate."""
    digest = hashlib.sha256(notification.key.encode()).hexdigest()[:24]
    if notification.mismatch_id is not None:
        return f"<mismatch-{notification.mismatch_id}-{digest}@{_domain(config)}>"
    return f"<{notification.kind}-{digest}@{_domain(config)}>"


def build_message(config: Config, session: Session, notification: Notification
                  ) -> EmailMessage:
    """The complete multipart message for one outbox row (same bytes on every attempt,
    except the Date)."""
    rendered = render_notice(config, session, notification)
    msg = EmailMessage()
    msg["Subject"] = rendered.subject
    msg["From"] = config.mail_from
    msg["To"] = notification.recipient
    if config.support_email and notification.kind != "unrouted":
        msg["Reply-To"] = config.support_email
    msg["Date"] = formatdate(localtime=False)
    msg["Message-ID"] = message_id(config, notification)
    # RFC 3834: machine-generated, so auto-responders stay quiet.
    msg["Auto-Submitted"] = "auto-generated"
    msg["X-Auto-Response-Suppress"] = "All"
    for name, value in rendered.headers.items():
        msg[name] = value
    msg.set_content(rendered.text)
    msg.add_alternative(rendered.html, subtype="html")
    return msg


def _permanent(exc: smtplib.SMTPException) -> tuple[bool, int | None]:
    """5xx for the recipients or the message will not change on retry; everything else
    (4xx, connection errors, authentication, a refused sender) might."""
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        codes = [code for code, _ in exc.recipients.values()]
        return bool(codes) and all(code >= 500 for code in codes), codes[0] if codes else None
    if isinstance(exc, smtplib.SMTPDataError):
        return exc.smtp_code >= 500, exc.smtp_code
    if isinstance(exc, smtplib.SMTPResponseException):
        return False, exc.smtp_code
    return False, None


def _smtp_send(config: Config, msg: EmailMessage) -> None:
    smtp = config.smtp
    assert smtp is not None
    try:
        if smtp.ssl:
            client: smtplib.SMTP = smtplib.SMTP_SSL(smtp.host, smtp.port, timeout=SMTP_TIMEOUT,
                                                    context=ssl.create_default_context())
        else:
            client = smtplib.SMTP(smtp.host, smtp.port, timeout=SMTP_TIMEOUT)
        with client:
            if smtp.starttls:
                client.starttls(context=ssl.create_default_context())
            if smtp.username:
                client.login(smtp.username, smtp.password or "")
            # Not send_message(): its generator rewrites body lines starting with "From "
            # to ">From " (mbox quoting), which would show up in the email.
            client.sendmail(parseaddr(config.mail_from)[1], [str(msg["To"])],
                            msg.as_bytes(policy=SMTP_POLICY))
    except smtplib.SMTPException as exc:
        permanent, code = _permanent(exc)
        # The server's text often names the recipient: the error's type and code only.
        raise SendFailed(describe_error(exc), permanent=permanent, code=code) from None
    except OSError as exc:
        raise SendFailed(describe_error(exc)) from None


def outbox_dir(config: Config) -> Path:
    """Where mail goes when SMTP_URL is unset (one .eml file per outbox row)."""
    return config.instance_path / "outbox"


def _write_local(config: Config, notification_id: int, kind: str, msg: EmailMessage) -> None:
    folder = outbox_dir(config)
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"{notification_id:08d}-{kind}.eml"
    partial = folder / f".{final.name}.{os.getpid()}.tmp"
    partial.write_bytes(bytes(msg))
    partial.replace(final)  # atomic: the outbox page never reads half a message


def deliver(config: Config, db: Database, redis: Redis, notification_id: int, *,
            final_attempt: bool = True) -> str:
    """Send one outbox row unless it was already sent; record the reason on failure.
    `redis` holds the short per-row lock.

    Returns sent | already_sent | in_progress | awaiting_digest | missing | failed; raises
    SendFailed (or a rendering error) when the job should be retried."""
    lock = redis.lock(f"mismatch:notification-lock:{notification_id}", timeout=LOCK_SECONDS,
                      blocking=False)
    if not lock.acquire():
        return "in_progress"  # another job holds it; it retries or finishes the row itself
    try:
        return _deliver_locked(config, db, notification_id, final_attempt)
    finally:
        try:
            lock.release()
        except Exception:  # noqa: BLE001 - expired or Redis gone: the lock just lapses
            pass


def _record_failure(db: Database, notification_id: int, reason: str, failed: bool) -> None:
    with db.session() as session:
        session.execute(update(Notification).where(
            Notification.id == notification_id, Notification.status != NotificationStatus.SENT
        ).values(last_error=reason[:2000],
                 status=NotificationStatus.FAILED if failed else NotificationStatus.PENDING))


def _deliver_locked(config: Config, db: Database, notification_id: int,
                    final_attempt: bool) -> str:
    with db.session() as session:
        notification = session.get(Notification, notification_id)
        if notification is None:
            return "missing"
        if notification.status == NotificationStatus.SENT:
            return "already_sent"
        if notification.kind == DIGEST_ITEM:
            return "awaiting_digest"  # goes out inside the venue's digest, never alone
        kind = notification.kind
        # Counted before the attempt, so a crash mid-send still shows up.
        notification.attempts += 1
        try:
            msg = build_message(config, session, notification)
        except Exception as exc:
            session.commit()
            _record_failure(db, notification_id, f"render: {type(exc).__name__}: {exc}",
                            final_attempt)
            log.warning("notification %s could not be rendered (%s)", notification_id,
                        type(exc).__name__)
            raise
    try:
        if config.smtp is None:
            _write_local(config, notification_id, kind, msg)
        else:
            _smtp_send(config, msg)
    except SendFailed as exc:
        give_up = final_attempt or exc.permanent
        _record_failure(db, notification_id, str(exc), give_up)
        log.warning("notification %s not sent (%s%s)%s", notification_id,
                    exc.__cause__.__class__.__name__ if exc.__cause__ else "SendFailed",
                    f" {exc.code}" if exc.code else "",
                    "; giving up" if give_up else "; will retry")
        if exc.permanent:
            return "failed"
        raise
    with db.session() as session:
        now = utcnow()
        session.execute(update(Notification).where(Notification.id == notification_id)
                        .values(status=NotificationStatus.SENT, sent_at=now,
                                message_id=msg["Message-ID"]))
        if kind == DIGEST:
            _mark_digest_items_sent(session, notification_id, msg["Message-ID"], now)
    log.info("notification %s sent kind=%s", notification_id, kind)
    return "sent"


def _mark_digest_items_sent(session: Session, digest_id: int, msg_id: str,
                            now: datetime) -> None:
    digest = session.get(Notification, digest_id)
    assert digest is not None
    item_ids = list(digest.context.get("item_ids", []))
    if item_ids:
        session.execute(update(Notification).where(
            Notification.id.in_(item_ids),
            Notification.status.in_((NotificationStatus.BATCHED,
                                     NotificationStatus.AWAITING_DIGEST))
        ).values(status=NotificationStatus.SENT, sent_at=now, message_id=msg_id))


__all__ = ["deliver", "build_message", "message_id", "outbox_dir", "SendFailed"]
