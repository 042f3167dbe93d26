"""The one path every email takes: outbox row -> rendered message -> SMTP (or the local
outbox folder when SMTP_URL is unset). Exactly one message per row."""

from __future__ import annotations

import hashlib
import logging
import smtplib
import ssl
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path

from sqlalchemy import select

from config import Config
from db import Database, Mismatch, Notification, Venue, utcnow
from notifications.render import render_notice

log = logging.getLogger(__name__)


class SendFailed(Exception):
    """SMTP refused or was unreachable; the row keeps the reason and the job retries."""


def message_id(config: Config, notification: Notification) -> str:
    """Stable per (mismatch or alert, recipient, kind): a resend carries the same one."""
    digest = hashlib.sha256(notification.key.encode()).hexdigest()[:24]
    domain = (config.mail_from.rsplit("@", 1)[-1] or "localhost").strip(">")
    if notification.mismatch_id is not None:
        return f"<mismatch-{notification.mismatch_id}-{digest}@{domain}>"
    return f"<{notification.kind}-{digest}@{domain}>"


def build_message(config: Config, notification: Notification, mismatch: Mismatch | None,
                  venue: Venue | None) -> EmailMessage:
    rendered = render_notice(config, notification, mismatch, venue)
    msg = EmailMessage()
    msg["Subject"] = rendered.subject
    msg["From"] = config.mail_from
    msg["To"] = notification.recipient
    msg["Date"] = formatdate(localtime=False)
    msg["Message-ID"] = message_id(config, notification)
    for name, value in rendered.headers.items():
        msg[name] = value
    msg.set_content(rendered.text)
    msg.add_alternative(rendered.html, subtype="html")
    return msg


def _smtp_send(config: Config, msg: EmailMessage) -> None:
    smtp = config.smtp
    assert smtp is not None
    try:
        if smtp.ssl:
            client: smtplib.SMTP = smtplib.SMTP_SSL(smtp.host, smtp.port, timeout=15,
                                                    context=ssl.create_default_context())
        else:
            client = smtplib.SMTP(smtp.host, smtp.port, timeout=15)
        with client:
            if smtp.starttls:
                client.starttls(context=ssl.create_default_context())
            if smtp.username:
                client.login(smtp.username, smtp.password or "")
            client.send_message(msg)
    except (smtplib.SMTPException, OSError) as exc:
        raise SendFailed(f"{type(exc).__name__}: {exc}"[:500]) from exc


def outbox_dir(config: Config) -> Path:
    return config.instance_path / "outbox"


def _write_local(config: Config, notification: Notification, msg: EmailMessage) -> None:
    folder = outbox_dir(config)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{notification.id:08d}-{notification.kind}.eml").write_bytes(bytes(msg))


def deliver(config: Config, db: Database, notification_id: int, *,
            final_attempt: bool = True) -> str:
    """Send one outbox row unless it was already sent; record the reason on failure."""
    with db.session() as session:
        notification = session.scalar(
            select(Notification).where(Notification.id == notification_id).with_for_update()
        )
        if notification is None:
            return "missing"
        if notification.status == "sent":
            return "already_sent"
        mismatch = session.get(Mismatch, notification.mismatch_id) \
            if notification.mismatch_id else None
        venue = session.get(Venue, mismatch.venue_id) if mismatch and mismatch.venue_id else None
        msg = build_message(config, notification, mismatch, venue)
        notification.attempts += 1
        try:
            if config.smtp is None:
                _write_local(config, notification, msg)
            else:
                _smtp_send(config, msg)
        except SendFailed as exc:
            notification.last_error = str(exc)
            notification.status = "failed" if final_attempt else "pending"
            log.warning("notification %s not sent (%s)%s", notification_id, type(exc).__name__,
                        "; giving up" if final_attempt else "; will retry")
            session.commit()
            raise
        notification.status = "sent"
        notification.sent_at = utcnow()
        notification.message_id = msg["Message-ID"]
        notification.last_error = None
    log.info("notification %s sent kind=%s mismatch=%s", notification_id, notification.kind,
             notification.mismatch_id)
    return "sent"


__all__ = ["deliver", "build_message", "message_id", "outbox_dir", "SendFailed", "make_msgid"]
