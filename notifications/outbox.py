"""The outbox: a Notification row per message owed, created in the same transaction as the
state change that owes it, so a crash can neither lose a notice nor send it twice."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from config import Config
from db import Mismatch, Notification, StripeEvent, Venue, insert_ignoring_duplicates, utcnow


def _owe(session: Session, *, key: str, mismatch_id: int | None, recipient: str, kind: str,
         context: dict) -> int | None:
    """Create the row unless it exists; return its id when it was created now."""
    return insert_ignoring_duplicates(
        session,
        Notification,
        dict(key=key, mismatch_id=mismatch_id, recipient=recipient, kind=kind, status="pending",
             attempts=0, context=context, created_at=utcnow()),
        returning=Notification.id,
    )


def queue_mismatch_notices(session: Session, mismatch: Mismatch, venue: Venue) -> list[int]:
    """One notice per venue admin for the mismatch's current case (a new case is a new
    notice; the same case never twice). Returns the ids to send after commit."""
    session.flush()
    kind = "digest_item" if venue.digest else f"case_{mismatch.case}"
    created = []
    for recipient in sorted({e.strip().lower() for e in venue.admin_emails or [] if e.strip()}):
        new_id = _owe(session, key=f"mismatch:{mismatch.id}:{kind}:{recipient}",
                      mismatch_id=mismatch.id, recipient=recipient, kind=kind,
                      context={"case": mismatch.case})
        if new_id is not None and not venue.digest:
            created.append(new_id)
    return created


def queue_unrouted_alert(session: Session, config: Config, account_id: str,
                         event: StripeEvent) -> list[int]:
    """Tell support once per account per day that events arrive for an unknown account."""
    if not config.support_email:
        return []
    day = datetime.now(UTC).date().isoformat()
    recipient = config.support_email.strip().lower()
    new_id = _owe(session, key=f"unrouted:{account_id}:{day}:{recipient}", mismatch_id=None,
                  recipient=recipient, kind="unrouted",
                  context={"account_id": account_id, "day": day, "event_id": event.event_id,
                           "event_type": event.type, "livemode": event.livemode})
    return [new_id] if new_id is not None else []


def pending_digest_items(session: Session, venue_id: int) -> list[Notification]:
    return list(session.scalars(
        select(Notification).join(Mismatch, Notification.mismatch_id == Mismatch.id)
        .where(Notification.kind == "digest_item", Notification.status == "pending",
               Mismatch.venue_id == venue_id)
    ))
