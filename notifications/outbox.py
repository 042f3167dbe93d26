"""The outbox: a Notification row per message owed, created in the same transaction as the
state change that owes it, so a crash can neither lose a notice nor send it twice.

Row lifecycle: `pending` -> `sent` (or `failed` with `last_error` once retries run out).
For venues on the daily digest, a mismatch owes each admin a `digest_item` row that waits
in `awaiting_digest` (so the sweeper, which re-queues `pending` rows, leaves it alone);
building the digest moves the items to `batched` under one `digest` row, and sending that
row marks them `sent`.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from config import Config
from db import (
    CUSTOMER_UNKNOWN,
    Database,
    Mismatch,
    Notification,
    NotificationStatus,
    StripeEvent,
    Venue,
    insert_ignoring_duplicates,
    utcnow,
)

DIGEST_ITEM = "digest_item"
DIGEST = "digest"
AWAITING_DIGEST = NotificationStatus.AWAITING_DIGEST
BATCHED = NotificationStatus.BATCHED


def _owe(session: Session, *, key: str, mismatch_id: int | None, recipient: str, kind: str,
         context: dict, status: str = NotificationStatus.PENDING) -> int | None:
    """Create the row unless it exists; return its id when it was created now."""
    return insert_ignoring_duplicates(
        session,
        Notification,
        dict(key=key, mismatch_id=mismatch_id, recipient=recipient, kind=kind, status=status,
             attempts=0, context=context, created_at=utcnow()),
        returning=Notification.id,
    )


def admin_recipients(venue: Venue) -> list[str]:
    """The venue's admin addresses, each once, in a stable order."""
    return sorted({e.strip().lower() for e in venue.admin_emails or [] if e.strip()})


def queue_mismatch_notices(session: Session, mismatch: Mismatch, venue: Venue) -> list[int]:
    """One notice per venue admin for the mismatch's current case (a new case is a new
    notice; the same case never twice). Returns the ids to send after commit."""
    recipients = admin_recipients(venue)
    if not recipients:
        return []
    session.flush()  # the mismatch's id, for the notices' keys
    kind = DIGEST_ITEM if venue.digest else f"case_{mismatch.case}"
    status = AWAITING_DIGEST if venue.digest else NotificationStatus.PENDING
    created = []
    for recipient in recipients:
        new_id = _owe(session, key=f"mismatch:{mismatch.id}:{kind}:{recipient}",
                      mismatch_id=mismatch.id, recipient=recipient, kind=kind,
                      context={"case": mismatch.case}, status=status)
        if new_id is not None and not venue.digest:
            created.append(new_id)
    return created


MISSED_WEBHOOKS = "missed_webhooks"


def _support_alert(session: Session, config: Config, kind: str, account_id: str,
                   context: dict[str, Any]) -> list[int]:
    """One alert of this kind to SUPPORT_EMAIL per account per day (the key dedups it)."""
    if not config.support_email:
        return []
    day = datetime.now(UTC).date().isoformat()
    recipient = config.support_email.strip().lower()
    new_id = _owe(session, key=f"{kind}:{account_id}:{day}:{recipient}", mismatch_id=None,
                  recipient=recipient, kind=kind,
                  context={"account_id": account_id, "day": day, **context})
    return [new_id] if new_id is not None else []


def queue_unrouted_alert(session: Session, config: Config, account_id: str,
                         event: StripeEvent) -> list[int]:
    """Tell support once per account per day that events arrive for an unknown account."""
    return _support_alert(session, config, "unrouted", account_id, {
        "event_id": event.event_id, "event_type": event.type, "livemode": event.livemode})


def queue_customer_unknown_alert(session: Session, config: Config, account_id: str,
                                 livemode: bool, customer_id: str, event_id: str,
                                 reason: str) -> list[int]:
    """Tell support once per account per day that Stripe denies knowing a subscription's
    customer (rule 3): our key or mode is wrong, so the venue is told nothing."""
    return _support_alert(session, config, CUSTOMER_UNKNOWN, account_id, {
        "livemode": livemode, "customer_id": customer_id, "event_id": event_id,
        "reason": reason})


def queue_missed_webhooks_alert(session: Session, config: Config, account_id: str,
                                livemode: bool, subscription_ids: list[str]) -> list[int]:
    """Tell support once per account per day that reconcile found subscriptions no webhook
    had told us about: the endpoints or their secrets may be wrong, or Stripe gave up."""
    if not subscription_ids:
        return []
    return _support_alert(session, config, MISSED_WEBHOOKS, account_id, {
        "livemode": livemode, "missed": len(subscription_ids),
        "subscription_ids": subscription_ids[:20]})


OUTBOUND_TROUBLE = "outbound_trouble"


def queue_destination_alert(session: Session, config: Config, name: str, url: str, kind: str,
                            why: str) -> list[int]:
    """Tell support once per destination per day that its messages are not getting through
    (`kind`: "failing" — a message ran out of retries — or "disabled" — it answered 410)."""
    if not config.support_email:
        return []
    day = datetime.now(UTC).date().isoformat()
    recipient = config.support_email.strip().lower()
    new_id = _owe(session, key=f"{OUTBOUND_TROUBLE}:{name}:{day}:{recipient}",
                  mismatch_id=None, recipient=recipient, kind=OUTBOUND_TROUBLE,
                  context={"destination": name, "url": url, "trouble": kind, "why": why,
                           "day": day})
    return [new_id] if new_id is not None else []


def build_digests(db: Database, account_id: str | None = None) -> list[int]:
    """Gather every waiting digest item into one `digest` row per (venue, admin); returns
    the new rows' ids, to be sent like any other notice.

    The digest row's key names its first item, and each item joins exactly one digest, so
    running this twice (or concurrently) never builds the same digest twice."""
    created: list[int] = []
    with db.session() as session:
        query = (select(Notification, Mismatch.venue_id)
                 .join(Mismatch, Notification.mismatch_id == Mismatch.id)
                 .where(Notification.kind == DIGEST_ITEM,
                        Notification.status == AWAITING_DIGEST,
                        Mismatch.venue_id.is_not(None))
                 .order_by(Notification.id)
                 .with_for_update(of=Notification))
        if account_id:
            query = query.join(Venue, Venue.id == Mismatch.venue_id).where(
                Venue.account_id == account_id)
        groups: dict[tuple[int | None, str], list[int]] = defaultdict(list)
        for item, venue_id in session.execute(query):
            groups[(venue_id, item.recipient)].append(item.id)
        for (venue_id, recipient), item_ids in sorted(groups.items()):
            new_id = _owe(session, key=f"digest:{venue_id}:{recipient}:{item_ids[0]}",
                          mismatch_id=None, recipient=recipient, kind=DIGEST,
                          context={"venue_id": venue_id, "item_ids": item_ids})
            if new_id is None:
                continue
            session.execute(update(Notification)
                            .where(Notification.id.in_(item_ids),
                                   Notification.status == AWAITING_DIGEST)
                            .values(status=BATCHED))
            created.append(new_id)
    return created


def retry_failed(db: Database) -> list[int]:
    """Put notices that failed for good back to `pending` (after SMTP is fixed); returns
    their ids to queue. They keep their Message-ID and their last error until sent."""
    with db.session() as session:
        ids = list(session.scalars(select(Notification.id)
                                   .where(Notification.status == NotificationStatus.FAILED)
                                   .order_by(Notification.id)))
        if ids:
            session.execute(update(Notification).where(Notification.id.in_(ids))
                            .values(status=NotificationStatus.PENDING))
    return ids
