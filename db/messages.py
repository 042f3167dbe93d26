"""The outbound log, written by the commit that makes the change (a transactional outbox).

Any unit of work that changes what a mismatch shows — the mismatch row itself, its payments,
its actions — is noted while it runs: ORM changes by `note_flushed` (an after-flush hook),
set-based statements by the caller (`note_change`, `note_subscription`). Just before the
commit, `publish` locks those mismatches, shapes each one's JSON (db/contract.py), and appends
one message per change a receiver cares about, with a delivery row for every destination that
wants it. The change and its message commit together or not at all.

A digest of the last JSON sent stops a commit that changed nothing visible from sending
anything; `revision` counts the messages about one mismatch, so a receiver can drop a stale
one (delivery order is not guaranteed)."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.orm import Session, selectinload

from db.contract import ActionOut, ChargeOut, MismatchOut
from db.models import (
    Delivery,
    Destination,
    Message,
    Mismatch,
    MismatchStatus,
    Payment,
    StripeAction,
    isoformat,
    utcnow,
)

OPENED = "mismatch.opened"
UPDATED = "mismatch.updated"
RESOLVED = "mismatch.resolved"
ACTION_SUCCEEDED = "action.succeeded"
ACTION_FAILED = "action.failed"

# session.info keys: what this unit of work changed, and (after publish) the destinations
# that have new deliveries, for the after-commit hook to queue.
_CHANGED = "outbound.changed"  # {mismatch id: [event hints]}
_SUBSCRIPTIONS = "outbound.subscriptions"  # {(account, subscription)}
_PUBLISHING = "outbound.publishing"
NEW_DELIVERIES = "outbound.new_deliveries"


# --- the JSON ----------------------------------------------------------------------------------

def _charge(p: Payment) -> ChargeOut:
    return ChargeOut(invoice_id=p.invoice_id, charge_id=p.charge_id,
                     payment_intent_id=p.payment_intent_id, amount=p.amount,
                     currency=p.currency, paid_at=p.paid_at,
                     amount_refunded=p.amount_refunded, disputed=p.disputed)


def _action(a: StripeAction) -> ActionOut:
    return ActionOut(id=a.id, kind=a.kind, target=a.target, amount=a.amount,
                     currency=a.currency, status=a.status, actor=a.actor,
                     requested_at=isoformat(a.requested_at),
                     finished_at=isoformat(a.finished_at),
                     stripe_request_id=a.stripe_request_id, result=a.result, error=a.error)


def action_json(a: StripeAction) -> dict[str, Any]:
    return _action(a).model_dump(mode="json")


def mismatch_json(m: Mismatch, payments: Iterable[Payment],
                  actions: Iterable[StripeAction]) -> dict[str, Any]:
    """The mismatch as the API answers it and every message carries it."""
    return MismatchOut(
        id=m.id, revision=m.revision or 0, case=m.case, status=m.status,  # type: ignore[arg-type]
        resolution=m.resolution, resolution_note=m.resolution_note, account_id=m.account_id,
        livemode=m.livemode, subscription_id=m.subscription_id, customer_id=m.customer_id,
        customer_email=m.customer_email, linked_customer_id=m.linked_customer_id,
        member_ref=m.member.member_ref if m.member else None,
        candidates=m.candidates or [], note=m.note, opened_at=isoformat(m.opened_at),
        resolved_at=isoformat(m.resolved_at),
        charges=[_charge(p) for p in payments], actions=[_action(a) for a in actions],
    ).model_dump(mode="json")


def mismatches_json(session: Session, mismatches: list[Mismatch]) -> list[dict[str, Any]]:
    """Many mismatches' JSON in three queries (payments, actions, members), not 3 per row."""
    payments, actions = _related(session, mismatches)
    return [mismatch_json(m, payments.get((m.account_id, m.subscription_id), []),
                          actions.get(m.id, [])) for m in mismatches]


def _related(session: Session, mismatches: list[Mismatch]
             ) -> tuple[dict[tuple[str, str], list[Payment]], dict[int, list[StripeAction]]]:
    payments: dict[tuple[str, str], list[Payment]] = defaultdict(list)
    actions: dict[int, list[StripeAction]] = defaultdict(list)
    if not mismatches:
        return payments, actions
    keys = {(m.account_id, m.subscription_id) for m in mismatches}
    # One IN per column (SQLite scans the table for a row-value IN), exact keys kept here.
    for p in session.scalars(select(Payment).where(
            Payment.account_id.in_(sorted({k[0] for k in keys})),
            Payment.subscription_id.in_(sorted({k[1] for k in keys})))
            .order_by(Payment.paid_at, Payment.id)):
        if (p.account_id, p.subscription_id) in keys:
            payments[(p.account_id, p.subscription_id)].append(p)
    for a in session.scalars(select(StripeAction).where(
            StripeAction.mismatch_id.in_(sorted({m.id for m in mismatches})))
            .order_by(StripeAction.id)):
        actions[a.mismatch_id or 0].append(a)
    return payments, actions


# --- noting what changed -------------------------------------------------------------------

def note_change(session: Session, mismatch_id: int | None, event: str | None = None) -> None:
    """A set-based statement changed what this mismatch shows (`event`: an action's outcome,
    ACTION_SUCCEEDED or ACTION_FAILED)."""
    if mismatch_id is None:
        return
    hints = session.info.setdefault(_CHANGED, {}).setdefault(mismatch_id, [])
    if event and event not in hints:
        hints.append(event)


def note_subscription(session: Session, account_id: str, subscription_id: str) -> None:
    """A set-based statement changed a subscription's payments (its mismatch, if any)."""
    session.info.setdefault(_SUBSCRIPTIONS, set()).add((account_id, subscription_id))


def note_flushed(session: Session, _context: Any) -> None:
    """After-flush hook: the ORM objects this flush wrote that a mismatch's JSON shows."""
    if session.info.get(_PUBLISHING):
        return
    for obj in (*session.new, *session.dirty, *session.deleted):
        if isinstance(obj, Mismatch):
            note_change(session, obj.id)
        elif isinstance(obj, StripeAction):
            note_change(session, obj.mismatch_id)
        elif isinstance(obj, Payment):
            note_subscription(session, obj.account_id, obj.subscription_id)


# --- publishing, in the committing transaction -----------------------------------------------

def publish(session: Session) -> None:
    """Before-commit hook: append the messages (and their deliveries) for what changed."""
    if not (session.info.get(_CHANGED) or session.info.get(_SUBSCRIPTIONS)):
        return
    session.flush()  # new mismatches get their ids; their changes are noted
    changed: dict[int, list[str]] = session.info.pop(_CHANGED, {})
    subscriptions: set[tuple[str, str]] = session.info.pop(_SUBSCRIPTIONS, set())
    session.info[_PUBLISHING] = True
    try:
        if subscriptions:
            for mismatch_id, account_id, subscription_id in session.execute(
                    select(Mismatch.id, Mismatch.account_id, Mismatch.subscription_id).where(
                        Mismatch.account_id.in_(sorted({k[0] for k in subscriptions})),
                        Mismatch.subscription_id.in_(sorted({k[1] for k in subscriptions})))):
                if (account_id, subscription_id) in subscriptions:
                    changed.setdefault(mismatch_id, [])
        if not changed:
            return
        # Locked (in id order), then read: a concurrent change to the same mismatch waits
        # for this commit and then publishes the state after both.
        mismatches = list(session.scalars(
            select(Mismatch).where(Mismatch.id.in_(sorted(changed))).order_by(Mismatch.id)
            .options(selectinload(Mismatch.member)).with_for_update(of=Mismatch)
            .execution_options(populate_existing=True)))
        payments, actions = _related(session, mismatches)
        messages = []
        for m in mismatches:
            messages += _messages_for(m, changed[m.id],
                                      payments.get((m.account_id, m.subscription_id), []),
                                      actions.get(m.id, []))
        session.add_all(messages)
        session.flush()
        if messages:
            _fan_out(session, messages)
    finally:
        session.info.pop(_PUBLISHING, None)


def forget(session: Session) -> None:
    """After-rollback hook: what a rolled-back unit of work noted was never committed."""
    for key in (_CHANGED, _SUBSCRIPTIONS, NEW_DELIVERIES):
        session.info.pop(key, None)


def _messages_for(m: Mismatch, hints: list[str], payments: list[Payment],
                  actions: list[StripeAction]) -> list[Message]:
    data = mismatch_json(m, payments, actions)
    data.pop("revision")
    digest = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()
    if m.published_sha is None:
        types = [OPENED]
    else:
        types = [hint for hint in hints if digest != m.published_sha]
        if m.status == MismatchStatus.RESOLVED and m.published_status != MismatchStatus.RESOLVED:
            types.append(RESOLVED)
        if not types and digest != m.published_sha:
            types.append(UPDATED)
    out = []
    now = utcnow()
    for kind in types:
        m.revision = (m.revision or 0) + 1
        body = {"type": kind, "timestamp": isoformat(now), "data": {**data,
                                                                   "revision": m.revision}}
        out.append(Message(message_id=f"msg_{uuid.uuid4().hex}", type=kind, mismatch_id=m.id,
                           account_id=m.account_id, revision=m.revision, created_at=now,
                           body=json.dumps(body, separators=(",", ":"))))
    m.published_sha, m.published_status = digest, m.status
    return out


def wants(destination: Destination, message: Message) -> bool:
    return (not destination.event_types or message.type in destination.event_types) and \
        (destination.account_id is None or destination.account_id == message.account_id)


def _fan_out(session: Session, messages: list[Message]) -> None:
    destinations = list(session.scalars(select(Destination).where(Destination.enabled)))
    rows = [dict(destination_id=d.id, message_id=msg.id, status="pending", attempts=0,
                 next_attempt_at=msg.created_at, created_at=msg.created_at)
            for msg in messages for d in destinations if wants(d, msg)]
    if rows:
        session.execute(insert(Delivery), rows)
        session.info.setdefault(NEW_DELIVERIES, set()).update(r["destination_id"] for r in rows)
