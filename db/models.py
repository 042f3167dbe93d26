"""The records the matching rules read and write.

Every rule that must hold under duplicate or concurrent delivery has a unique constraint
behind it, so idempotency never rests on "check, then insert".
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


def isoformat(value: datetime | None) -> str | None:
    """UTC ISO-8601 on both databases (SQLite hands back naive datetimes)."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


class EventStatus(StrEnum):
    """Where an inbox event is. `received` covers "not yet handled" and "waiting for a retry"
    (the reason is in `last_error`); `failed` means the retries ran out."""

    RECEIVED = "received"
    PROCESSED = "processed"
    IGNORED = "ignored"
    FAILED = "failed"


# An event's outcome (stripe_events.outcome), as the console, /metrics and reconcile read it:
LINKED = "linked"
UNROUTED = "unrouted"  # no venue has the account
UNHANDLED_TYPE = "unhandled_type"  # stored and answered, but no handler for its type
CUSTOMER_UNKNOWN = "customer_unknown"  # waits: Stripe says it has no such customer (rule 3)
CUSTOMER_ACCOUNT = "customer_account"  # billed to an Account (Accounts v2), not a Customer


def case_outcome(case: int, *, canceled: bool = False) -> str:
    """"case_2", or "case_2_canceled" for a mismatch whose subscription has ended."""
    return f"case_{case}_canceled" if canceled else f"case_{case}"


class SubscriptionState(StrEnum):
    PENDING = "pending"  # recorded, not classified yet
    LINKED = "linked"
    MISMATCH = "mismatch"
    UNROUTED = "unrouted"


class MismatchStatus(StrEnum):
    OPEN = "open"
    RESOLVED = "resolved"


class Resolution(StrEnum):
    LINKED = "linked"  # a member is now linked to the subscription's customer
    CANCELED = "canceled"  # Stripe canceled the subscription
    MANUAL = "manual"  # someone marked it resolved, with a note


class NotificationStatus(StrEnum):
    PENDING = "pending"
    SENT = "sent"
    FAILED = "failed"
    AWAITING_DIGEST = "awaiting_digest"  # a digest venue's item, not sent alone
    BATCHED = "batched"  # the item is in a digest row that is not sent yet


# What every Stripe ID, event type and account id is: printable ASCII without spaces. No
# control character (CR/LF would forge log lines and break mail headers), no NUL, no lone
# surrogate from a JSON \ud800 escape.
_STRIPE_TOKEN = re.compile(r"[!-~]+")


def is_stripe_token(value: object, limit: int = 64) -> bool:
    """A Stripe ID, type or account a column of `limit` characters can hold (most take 64)."""
    return isinstance(value, str) and 0 < len(value) <= limit \
        and _STRIPE_TOKEN.fullmatch(value) is not None


def object_id(value: Any) -> str | None:
    """Stripe fields hold an ID or, when expanded, the object with its ID; anything that is
    not a Stripe ID (CR/LF, spaces, too long) is no ID at all."""
    if isinstance(value, dict):
        value = value.get("id")
    return value if is_stripe_token(value) else None


def normalize_email(email: str | None) -> str | None:
    """Trim and casefold; nothing else (matching rule 4: no dot or plus rewriting)."""
    if email is None:
        return None
    value = email.strip().casefold()
    return value or None


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


TZDateTime = DateTime(timezone=True)
# Row ids are 64-bit: BIGINT on PostgreSQL; SQLite's INTEGER PRIMARY KEY is already 64-bit
# (and must stay INTEGER to be the rowid).
RowIdType = BigInteger().with_variant(Integer, "sqlite")
ROW_ID_MAX = 2**63 - 1


class Venue(Base):
    __tablename__ = "venues"

    id: Mapped[int] = mapped_column(RowIdType, primary_key=True)
    account_id: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    admin_emails: Mapped[list[str]] = mapped_column(JSON, default=list)
    livemode: Mapped[bool] = mapped_column(Boolean, default=False)
    digest: Mapped[bool] = mapped_column(Boolean, default=False)
    # Set with a member change in the same transaction; cleared by the re-check job. The
    # sweeper re-enqueues a re-check that was requested but never ran (Redis was down).
    recheck_requested_at: Mapped[datetime | None] = mapped_column(TZDateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(TZDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(TZDateTime, default=utcnow, onupdate=utcnow)

    members: Mapped[list[Member]] = relationship(back_populates="venue", passive_deletes=True)


class Member(Base):
    __tablename__ = "members"
    __table_args__ = (
        UniqueConstraint("venue_id", "member_ref"),
        UniqueConstraint("venue_id", "stripe_customer_id"),
        Index("ix_members_venue_email", "venue_id", "email_normalized"),
        Index("ix_members_email_drift", "email_drift_since",
              postgresql_where=text("email_drift_since IS NOT NULL"),
              sqlite_where=text("email_drift_since IS NOT NULL")),
    )

    id: Mapped[int] = mapped_column(RowIdType, primary_key=True)
    venue_id: Mapped[int] = mapped_column(RowIdType, ForeignKey("venues.id", ondelete="CASCADE"))
    member_ref: Mapped[str] = mapped_column(String(128))
    email: Mapped[str] = mapped_column(String(320))
    email_normalized: Mapped[str] = mapped_column(String(320))
    name: Mapped[str | None] = mapped_column(String(200), nullable=True)
    stripe_customer_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # Since when the linked customer's email in Stripe (the mirror) differs from the
    # member's; NULL when they agree (db.records.note_email_drift).
    email_drift_since: Mapped[datetime | None] = mapped_column(TZDateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(TZDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(TZDateTime, default=utcnow, onupdate=utcnow)

    venue: Mapped[Venue] = relationship(back_populates="members")


class StripeCustomer(Base):
    """Mirror of Stripe customers seen in `customer.*` events, so matching needs no API call."""

    __tablename__ = "stripe_customers"
    __table_args__ = (UniqueConstraint("account_id", "livemode", "customer_id"),)

    id: Mapped[int] = mapped_column(RowIdType, primary_key=True)
    account_id: Mapped[str] = mapped_column(String(64))
    livemode: Mapped[bool] = mapped_column(Boolean)
    customer_id: Mapped[str] = mapped_column(String(64))
    email: Mapped[str | None] = mapped_column(String(320), nullable=True)
    name: Mapped[str | None] = mapped_column(String(200), nullable=True)
    deleted: Mapped[bool] = mapped_column(Boolean, default=False)
    # `created` of the newest event applied; 0 when filled from an API read.
    last_event_created: Mapped[int] = mapped_column(BigInteger, default=0)
    updated_at: Mapped[datetime] = mapped_column(TZDateTime, default=utcnow, onupdate=utcnow)


class StripeEvent(Base):
    """The inbox: every verified delivery, stored before it is acknowledged."""

    __tablename__ = "stripe_events"
    __table_args__ = (
        Index("ix_stripe_events_status_received", "status", "received_at"),
        Index("ix_stripe_events_waiting_for", "waiting_for",
              postgresql_where=text("waiting_for IS NOT NULL"),
              sqlite_where=text("waiting_for IS NOT NULL")),
        # The mismatch timeline: the events that named a subscription or a customer.
        Index("ix_stripe_events_subscription", "subscription_id",
              postgresql_where=text("subscription_id IS NOT NULL"),
              sqlite_where=text("subscription_id IS NOT NULL")),
        Index("ix_stripe_events_customer", "customer_id",
              postgresql_where=text("customer_id IS NOT NULL"),
              sqlite_where=text("customer_id IS NOT NULL")),
    )

    id: Mapped[int] = mapped_column(RowIdType, primary_key=True)
    event_id: Mapped[str] = mapped_column(String(255), unique=True)
    endpoint: Mapped[str] = mapped_column(String(16))  # platform | connect
    account_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    livemode: Mapped[bool] = mapped_column(Boolean, default=False)
    type: Mapped[str] = mapped_column(String(128))
    created: Mapped[int] = mapped_column(BigInteger)
    payload: Mapped[str] = mapped_column(Text)  # "" once pruned (db/history.py)
    # The subscription and customer the event names (db.history.ids_named), at intake.
    subscription_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    customer_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    status: Mapped[str] = mapped_column(String(16), default=EventStatus.RECEIVED)
    # What processing concluded: linked, case_1, unrouted, livemode_mismatch, ...
    outcome: Mapped[str | None] = mapped_column(String(64), nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    # The customer whose email this event waits for (not mirrored yet, or Stripe does not
    # know it); a `customer.*` event for it releases the event. NULL once handled.
    waiting_for: Mapped[str | None] = mapped_column(String(64), nullable=True)
    received_at: Mapped[datetime] = mapped_column(TZDateTime, default=utcnow)
    processed_at: Mapped[datetime | None] = mapped_column(TZDateTime, nullable=True)


class RejectedDelivery(Base):
    """A delivery we refused: why and from where, never the body or a secret."""

    __tablename__ = "rejected_deliveries"

    id: Mapped[int] = mapped_column(RowIdType, primary_key=True)
    endpoint: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(String(64))
    detail: Mapped[str | None] = mapped_column(Text, nullable=True)
    remote_addr: Mapped[str | None] = mapped_column(String(64), nullable=True)
    body_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    body_size: Mapped[int] = mapped_column(Integer, default=0)
    received_at: Mapped[datetime] = mapped_column(TZDateTime, default=utcnow, index=True)


def by_subscription(table: str, *more: Index) -> tuple[UniqueConstraint | Index, ...]:
    """One row per (account, subscription), found by (account, customer): the two ids every
    subscription event names."""
    return (UniqueConstraint("account_id", "subscription_id"),
            Index(f"ix_{table}_account_customer", "account_id", "customer_id"), *more)


class Subscription(Base):
    """Last known state of each subscription we classified (linked or not)."""

    __tablename__ = "subscriptions"
    __table_args__ = by_subscription("subscriptions")

    id: Mapped[int] = mapped_column(RowIdType, primary_key=True)
    account_id: Mapped[str] = mapped_column(String(64))
    livemode: Mapped[bool] = mapped_column(Boolean)
    subscription_id: Mapped[str] = mapped_column(String(64))
    customer_id: Mapped[str] = mapped_column(String(64))
    venue_id: Mapped[int | None] = mapped_column(
        RowIdType, ForeignKey("venues.id", ondelete="SET NULL"), nullable=True)
    status: Mapped[str | None] = mapped_column(String(32), nullable=True)  # Stripe's status
    canceled: Mapped[bool] = mapped_column(Boolean, default=False)
    state: Mapped[str] = mapped_column(String(16))  # SubscriptionState
    member_id: Mapped[int | None] = mapped_column(
        RowIdType, ForeignKey("members.id", ondelete="SET NULL"), nullable=True)
    last_event_created: Mapped[int] = mapped_column(BigInteger, default=0)
    updated_at: Mapped[datetime] = mapped_column(TZDateTime, default=utcnow, onupdate=utcnow)


class Mismatch(Base):
    __tablename__ = "mismatches"
    __table_args__ = by_subscription(
        "mismatches", Index("ix_mismatches_status_venue", "status", "venue_id"))

    id: Mapped[int] = mapped_column(RowIdType, primary_key=True)
    account_id: Mapped[str] = mapped_column(String(64))
    livemode: Mapped[bool] = mapped_column(Boolean)
    subscription_id: Mapped[str] = mapped_column(String(64))
    venue_id: Mapped[int | None] = mapped_column(
        RowIdType, ForeignKey("venues.id", ondelete="CASCADE"), nullable=True)
    case: Mapped[int] = mapped_column(Integer)
    customer_id: Mapped[str] = mapped_column(String(64))
    customer_email: Mapped[str | None] = mapped_column(String(320), nullable=True)
    linked_customer_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    member_id: Mapped[int | None] = mapped_column(
        RowIdType, ForeignKey("members.id", ondelete="SET NULL"), nullable=True)
    candidates: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    note: Mapped[str | None] = mapped_column(Text, nullable=True)
    status: Mapped[str] = mapped_column(String(16), default=MismatchStatus.OPEN)
    resolution: Mapped[str | None] = mapped_column(String(32), nullable=True)  # Resolution
    resolution_note: Mapped[str | None] = mapped_column(Text, nullable=True)
    # The case the admins were last told about; a notice goes out when `case` differs.
    notified_case: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # The outbound log (db/messages.py): the number of the last message about this mismatch,
    # a digest of what it said, and the status it said, so a commit that changed nothing a
    # receiver sees sends nothing.
    revision: Mapped[int] = mapped_column(Integer, default=0)
    published_sha: Mapped[str | None] = mapped_column(String(64), nullable=True)
    published_status: Mapped[str | None] = mapped_column(String(16), nullable=True)
    opened_at: Mapped[datetime] = mapped_column(TZDateTime, default=utcnow)
    resolved_at: Mapped[datetime | None] = mapped_column(TZDateTime, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(TZDateTime, default=utcnow, onupdate=utcnow)

    venue: Mapped[Venue | None] = relationship()
    member: Mapped[Member | None] = relationship()

    def resolve(self, resolution: Resolution, note: str | None = None) -> bool:
        """Close an open mismatch; False if already closed."""
        if self.status == MismatchStatus.RESOLVED:
            return False
        self.status = MismatchStatus.RESOLVED
        self.resolution = resolution
        self.resolution_note = note
        self.resolved_at = utcnow()
        return True


class Notification(Base):
    """The outbox: one row per message we owe, so a retry never sends a second one."""

    __tablename__ = "notifications"
    __table_args__ = (
        UniqueConstraint("mismatch_id", "recipient", "kind"),
        Index("ix_notifications_status", "status"),
    )

    id: Mapped[int] = mapped_column(RowIdType, primary_key=True)
    # mismatch:<id>:<kind>:<recipient> or unrouted:<acct>:<day>:<recipient>; unique even
    # where mismatch_id is NULL (SQL treats NULLs as distinct).
    key: Mapped[str] = mapped_column(String(512), unique=True)
    mismatch_id: Mapped[int | None] = mapped_column(
        RowIdType, ForeignKey("mismatches.id", ondelete="CASCADE"), nullable=True)
    recipient: Mapped[str] = mapped_column(String(320))
    kind: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default=NotificationStatus.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    message_id: Mapped[str | None] = mapped_column(String(255), nullable=True)
    context: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(TZDateTime, default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(TZDateTime, nullable=True)


class EndedSession(Base):
    """A console session signed out before its cookie expired: the cookie alone would still
    open the console, so its id is refused until it would have expired anyway."""

    __tablename__ = "ended_sessions"

    session_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    ended_at: Mapped[datetime] = mapped_column(TZDateTime, default=utcnow, index=True)


class Payment(Base):
    """What an outside subscription charged (rule 7): one row per paid invoice, with what was
    refunded of it and whether it is disputed. Recorded for every subscription not known to
    be linked (its mismatch may open after the invoice), read by the mismatch's views."""

    __tablename__ = "payments"
    __table_args__ = (
        UniqueConstraint("account_id", "invoice_id"),
        Index("ix_payments_account_subscription", "account_id", "subscription_id"),
        Index("ix_payments_account_charge", "account_id", "charge_id"),
        Index("ix_payments_account_payment_intent", "account_id", "payment_intent_id"),
    )

    id: Mapped[int] = mapped_column(RowIdType, primary_key=True)
    account_id: Mapped[str] = mapped_column(String(64))
    livemode: Mapped[bool] = mapped_column(Boolean, default=False)
    subscription_id: Mapped[str] = mapped_column(String(64))
    invoice_id: Mapped[str] = mapped_column(String(64))
    charge_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    payment_intent_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    amount: Mapped[int] = mapped_column(BigInteger)  # minor units (cents)
    currency: Mapped[str] = mapped_column(String(8))
    paid_at: Mapped[int] = mapped_column(BigInteger)  # Unix time, as Stripe gives it
    amount_refunded: Mapped[int] = mapped_column(BigInteger, default=0)
    disputed: Mapped[bool] = mapped_column(Boolean, default=False)
    updated_at: Mapped[datetime] = mapped_column(TZDateTime, default=utcnow, onupdate=utcnow)


class StripeAction(Base):
    """The audit log of what we asked Stripe to do about a mismatch: who, when, what, with
    which idempotency key, Stripe's request id and answer. One row per (mismatch, kind,
    target): asking twice finds the first."""

    __tablename__ = "stripe_actions"
    __table_args__ = (Index("ix_stripe_actions_mismatch", "mismatch_id"),)

    id: Mapped[int] = mapped_column(RowIdType, primary_key=True)
    # The mismatch acted on; none for the "No such customer" fix (/support/diagnose).
    mismatch_id: Mapped[int | None] = mapped_column(
        RowIdType, ForeignKey("mismatches.id", ondelete="CASCADE"), nullable=True)
    account_id: Mapped[str] = mapped_column(String(64))  # acted as
    kind: Mapped[str] = mapped_column(String(32))  # cancel_subscription | refund | create_customer
    target: Mapped[str] = mapped_column(String(64))  # the subscription or charge acted on
    amount: Mapped[int | None] = mapped_column(BigInteger, nullable=True)  # refunds
    currency: Mapped[str | None] = mapped_column(String(8), nullable=True)
    idempotency_key: Mapped[str] = mapped_column(String(128), unique=True)
    status: Mapped[str] = mapped_column(String(16), default="queued")
    actor: Mapped[str] = mapped_column(String(200))
    requested_at: Mapped[datetime] = mapped_column(TZDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(TZDateTime, nullable=True)
    stripe_request_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    result: Mapped[str | None] = mapped_column(Text, nullable=True)  # what it made, in IDs
    error: Mapped[str | None] = mapped_column(Text, nullable=True)


class ThinEvent(Base):
    """A thin event (Stripe Event Destinations) as it arrived: an id and a type, no object.
    Kept until a worker has fetched the full (snapshot) event it stands for and stored that
    in the inbox, where it is deduplicated with the snapshot delivery of the same event."""

    __tablename__ = "thin_events"
    __table_args__ = (Index("ix_thin_events_status_received", "status", "received_at"),)

    id: Mapped[int] = mapped_column(RowIdType, primary_key=True)
    event_id: Mapped[str] = mapped_column(String(255), unique=True)  # the thin event's own id
    type: Mapped[str] = mapped_column(String(128))  # v1.customer.subscription.created, …
    context: Mapped[str | None] = mapped_column(String(64), nullable=True)  # acct_… or none
    livemode: Mapped[bool] = mapped_column(Boolean, default=False)
    payload: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default="received")  # received|fetched|failed
    snapshot_event: Mapped[str | None] = mapped_column(String(255), nullable=True)
    outcome: Mapped[str | None] = mapped_column(String(32), nullable=True)  # stored|duplicate
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    received_at: Mapped[datetime] = mapped_column(TZDateTime, default=utcnow)
    fetched_at: Mapped[datetime | None] = mapped_column(TZDateTime, nullable=True)


class EventTally(Base):
    """How many inbox events finished (processed or ignored) with each outcome, per account
    and mode, kept in the transaction that finishes them: `/metrics` and the dashboard add up
    these rows instead of counting the inbox (db/history.py)."""

    __tablename__ = "event_tallies"

    status: Mapped[str] = mapped_column(String(16), primary_key=True)
    outcome: Mapped[str] = mapped_column(String(64), primary_key=True)  # "" for none
    account_id: Mapped[str] = mapped_column(String(64), primary_key=True)  # "" for none
    livemode: Mapped[bool] = mapped_column(Boolean, primary_key=True)
    n: Mapped[int] = mapped_column(BigInteger, default=0)
    last_received_at: Mapped[datetime | None] = mapped_column(TZDateTime, nullable=True)
    last_detail: Mapped[str | None] = mapped_column(Text, nullable=True)  # newest last_error


class Message(Base):
    """The outbound log: one row per change a receiver cares about, written in the same
    transaction as the change (db/messages.py). Its `id` is the log order and the pull feed's
    cursor; `message_id` is the `webhook-id` every attempt of every destination sends."""

    __tablename__ = "messages"
    __table_args__ = (Index("ix_messages_mismatch", "mismatch_id"),)

    id: Mapped[int] = mapped_column(RowIdType, primary_key=True)
    message_id: Mapped[str] = mapped_column(String(64), unique=True)
    type: Mapped[str] = mapped_column(String(64))
    mismatch_id: Mapped[int | None] = mapped_column(
        RowIdType, ForeignKey("mismatches.id", ondelete="SET NULL"), nullable=True)
    account_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    revision: Mapped[int] = mapped_column(Integer, default=0)
    body: Mapped[str] = mapped_column(Text)  # the JSON body exactly as signed and sent
    created_at: Mapped[datetime] = mapped_column(TZDateTime, default=utcnow, index=True)


class Destination(Base):
    """Where messages are pushed: the operator's BOOKING_WEBHOOK_URL (`from_config`, its
    secrets read from the configuration) or one made through the API (its secrets here)."""

    __tablename__ = "destinations"

    id: Mapped[int] = mapped_column(RowIdType, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    url: Mapped[str] = mapped_column(String(2048))
    # [{"secret": "whsec_…", "expires_at": ISO-8601 or null}], newest first.
    secrets: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    event_types: Mapped[list[str]] = mapped_column(JSON, default=list)  # [] = every type
    account_id: Mapped[str | None] = mapped_column(String(64), nullable=True)  # a filter
    from_config: Mapped[bool] = mapped_column(Boolean, default=False)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    disabled_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    # A worker draining it holds it until then (one drain per destination at a time).
    draining_until: Mapped[datetime | None] = mapped_column(TZDateTime, nullable=True)
    alerted_on: Mapped[str | None] = mapped_column(String(10), nullable=True)  # YYYY-MM-DD
    created_at: Mapped[datetime] = mapped_column(TZDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(TZDateTime, default=utcnow, onupdate=utcnow)


class DeliveryStatus(StrEnum):
    PENDING = "pending"  # due at next_attempt_at
    DELIVERED = "delivered"
    FAILED = "failed"  # the retries ran out, or the destination answered 410


class Delivery(Base):
    """One message owed to one destination: attempts, the last answer, the next attempt."""

    __tablename__ = "deliveries"
    __table_args__ = (
        UniqueConstraint("destination_id", "message_id"),
        Index("ix_deliveries_due", "destination_id", "status", "next_attempt_at"),
        Index("ix_deliveries_message", "message_id"),
    )

    id: Mapped[int] = mapped_column(RowIdType, primary_key=True)
    destination_id: Mapped[int] = mapped_column(
        RowIdType, ForeignKey("destinations.id", ondelete="CASCADE"))
    message_id: Mapped[int] = mapped_column(
        RowIdType, ForeignKey("messages.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(16), default=DeliveryStatus.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(TZDateTime, default=utcnow)
    last_status_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    last_latency_ms: Mapped[int | None] = mapped_column(Integer, nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(TZDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(TZDateTime, nullable=True)
