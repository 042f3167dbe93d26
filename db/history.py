"""What keeps the inbox's history cheap to read at any size: the ids each event names (the
mismatch timeline reads an index, not payloads), tallies of finished events kept as they
finish (the gauges and the dashboard add up a few rows, not the inbox), and the pruning of
old payloads.

An event is finished when it is `processed` or `ignored`; nothing moves it back, so its
tally only grows, in the same transaction that finishes it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import ColumnElement, Table, func, literal_column, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from db.models import EventStatus, EventTally, StripeEvent, object_id, utcnow

FINISHED = (EventStatus.PROCESSED.value, EventStatus.IGNORED.value)
PRUNED = ""  # a pruned event's payload


def ids_named(event: dict[str, Any]) -> tuple[str | None, str | None]:
    """(subscription id, customer id) the event is about, in any API version's shape: a
    subscription's own id and customer, a customer's id, or what an invoice, checkout
    session or charge names (an invoice's subscription under `parent` since 2025-03-31)."""
    data = event.get("data")
    obj = data.get("object") if isinstance(data, dict) else None
    if not isinstance(obj, dict):
        return None, None
    kind = obj.get("object")
    if kind == "subscription":
        return object_id(obj.get("id")), object_id(obj.get("customer"))
    if kind == "customer":
        return None, object_id(obj.get("id"))
    subscription = object_id(obj.get("subscription"))
    parent = obj.get("parent")
    if subscription is None and isinstance(parent, dict):
        details = parent.get("subscription_details")
        if isinstance(details, dict):
            subscription = object_id(details.get("subscription"))
    return subscription, object_id(obj.get("customer"))


# --- tallies ---------------------------------------------------------------------------------

TallyKey = tuple[str, str, str, bool]  # (status, outcome, account or "", livemode)


def tally_key(row: StripeEvent) -> TallyKey:
    return (str(row.status), row.outcome or "", row.account_id or "", bool(row.livemode))


def record_finished(session: Session, rows: Iterable[StripeEvent]) -> None:
    """Add events that finished in this transaction to their tallies: one upsert per
    (status, outcome, account, mode), in key order so concurrent batches never deadlock."""
    counts: Counter[TallyKey] = Counter()
    newest: dict[TallyKey, tuple[datetime, str | None]] = {}
    for row in rows:
        key = tally_key(row)
        counts[key] += 1
        when = row.received_at or utcnow()
        if key not in newest or when >= newest[key][0]:
            newest[key] = (when, row.last_error)
    if not counts:
        return
    insert = _upsert(session)
    for key in sorted(counts):
        status, outcome, account, livemode = key
        when, detail = newest[key]
        stmt = insert(EventTally).values(
            status=status, outcome=outcome, account_id=account, livemode=livemode,
            n=counts[key], last_received_at=when, last_detail=detail)
        session.execute(stmt.on_conflict_do_update(
            index_elements=["status", "outcome", "account_id", "livemode"],
            set_={"n": EventTally.n + stmt.excluded.n,
                  "last_received_at": stmt.excluded.last_received_at,
                  "last_detail": stmt.excluded.last_detail}))


def _upsert(session: Session) -> Callable[..., Any]:
    return pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert


def rebuild_tallies(session: Session) -> int:
    """Count the finished events again from the inbox (a migration's backfill, a repair):
    one pass over the inbox. Returns the number of tallies."""
    tallies = cast(Table, EventTally.__table__)
    session.execute(tallies.delete())
    # a literal, not a parameter: GROUP BY must see the same
    none: ColumnElement[str] = literal_column("''")
    outcome = func.coalesce(StripeEvent.outcome, none)
    account = func.coalesce(StripeEvent.account_id, none)
    rows = session.execute(
        select(StripeEvent.status, outcome, account, StripeEvent.livemode, func.count(),
               func.max(StripeEvent.received_at), func.max(StripeEvent.last_error))
        .where(StripeEvent.status.in_(FINISHED))
        .group_by(StripeEvent.status, outcome, account, StripeEvent.livemode)).all()
    if rows:
        session.execute(tallies.insert(), [
            dict(status=s, outcome=o, account_id=a, livemode=bool(live), n=n,
                 last_received_at=when, last_detail=detail)
            for s, o, a, live, n, when, detail in rows])
    return len(rows)


# --- retention -------------------------------------------------------------------------------

def prune_batch(session: Session, before: datetime, after_id: int, limit: int
                ) -> tuple[int, int | None]:
    """Empty the payloads of up to `limit` finished events received before `before`, walking
    the inbox by id from `after_id`; returns (payloads freed, the last id looked at, or None
    at the end). Everything else on the row stays: its id (a redelivery is still a
    duplicate), type, account, time, status, outcome and the ids it named (the timeline)."""
    ids = list(session.execute(
        select(StripeEvent.id, StripeEvent.received_at, StripeEvent.status,
               StripeEvent.payload != PRUNED)
        .where(StripeEvent.id > after_id).order_by(StripeEvent.id).limit(limit)))
    if not ids:
        return 0, None
    due = [row_id for row_id, received, status, has_payload in ids
           if has_payload and status in FINISHED and _aware(received) < before]
    if due:
        session.execute(update(StripeEvent).where(StripeEvent.id.in_(due))
                        .values(payload=PRUNED))
    last_id, last_received = ids[-1][0], ids[-1][1]
    # Ids grow with arrival: past the cutoff, nothing later is due yet.
    return len(due), (last_id if _aware(last_received) < before else None)


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
