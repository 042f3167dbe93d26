"""Acting on Stripe about a mismatch: cancel its outside subscription, refund what it charged.

A request is checked and recorded (`stripe_actions`, the audit log) in the caller's
transaction; a worker job then calls Stripe as the venue's account, outside any transaction,
with an idempotency key made of (mismatch, action, target) — so a double click, a retried
job or a worker killed mid-call reaches Stripe once — and writes Stripe's answer back. The
mismatch itself still resolves from Stripe's own events (the cancellation's
`customer.subscription.deleted`)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import StrEnum

import stripe
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from config import Config
from db import (
    Database,
    Member,
    Mismatch,
    MismatchStatus,
    Payment,
    StripeAction,
    Subscription,
    SubscriptionState,
    Venue,
    insert_ignoring_duplicates,
    utcnow,
)
from db.messages import ACTION_FAILED, ACTION_SUCCEEDED, note_change
from notifications.view import charges_of
from workers.matching.batch import Batch
from workers.matching.classify import mirror_customer
from workers.matching.subjects import CustomerSeen
from workers.stripe_side.api import StripeApi

log = logging.getLogger(__name__)

CANCEL, REFUND, CREATE_CUSTOMER = "cancel_subscription", "refund", "create_customer"


class ActionStatus(StrEnum):
    QUEUED = "queued"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class ActionRefused(Exception):
    """The action may not be taken; the message says why (IDs only)."""


def idempotency_key(mismatch_id: int, kind: str, target: str) -> str:
    return f"mismatch-{mismatch_id}-{kind}-{target}"


def actions_of(session: Session, mismatch_id: int) -> list[StripeAction]:
    return list(session.scalars(select(StripeAction).where(
        StripeAction.mismatch_id == mismatch_id).order_by(StripeAction.id)))


def refusal(config: Config, session: Session, m: Mismatch, kind: str) -> str | None:
    """Why `kind` may not be taken on `m` now, or None. Also what a button says when off."""
    if not config.stripe_secret_key:
        return "STRIPE_SECRET_KEY is not set: the service cannot act on Stripe"
    if m.status != MismatchStatus.OPEN:
        return f"mismatch {m.id} is resolved"
    sub = session.scalar(select(Subscription).where(
        Subscription.account_id == m.account_id,
        Subscription.subscription_id == m.subscription_id))
    if sub is not None and sub.state == SubscriptionState.LINKED:
        return f"subscription {m.subscription_id} is linked to a member: not ours to change"
    if kind == CANCEL:
        if sub is not None and sub.canceled:
            return f"subscription {m.subscription_id} is already canceled"
        asked = [a for a in actions_of(session, m.id) if a.kind == CANCEL]
        if asked:
            return f"its cancellation was asked for already (action {asked[0].id}: " \
                   f"{asked[0].status})"
        return None
    charges = charges_of(session, m.account_id, m.subscription_id)
    disputed = [c.invoice_id for c in charges if c.disputed]
    if disputed:
        return f"a payment is disputed ({', '.join(disputed)}): don't refund, escalate"
    if not any(c.refundable for c in charges):
        return (f"nothing to refund: subscription {m.subscription_id} has no paid, "
                f"unrefunded payment")
    return None


def request_action(config: Config, session: Session, m: Mismatch, kind: str, actor: str
                   ) -> list[StripeAction]:
    """Record the action(s) asked for, queued, in the caller's transaction (the mismatch row
    locked by the caller); asking again returns the recorded ones. Raises ActionRefused."""
    if kind == CANCEL:
        targets: list[tuple[str, int | None, str | None]] = [(m.subscription_id, None, None)]
    else:
        targets = [(c.invoice_id, c.refundable, c.currency)
                   for c in charges_of(session, m.account_id, m.subscription_id) if c.refundable]
    recorded = [a for a in actions_of(session, m.id) if a.kind == kind]
    if kind == CANCEL and recorded:
        return recorded  # asked before: the same action, never a second cancel
    asked = {a.target for a in recorded}
    why = refusal(config, session, m, kind)
    if why is not None:
        if recorded:
            return recorded
        raise ActionRefused(why)
    for target, amount, currency in targets:
        if target in asked:
            continue
        insert_ignoring_duplicates(session, StripeAction, dict(
            mismatch_id=m.id, account_id=m.account_id, kind=kind, target=target,
            amount=amount, currency=currency,
            idempotency_key=idempotency_key(m.id, kind, target),
            status=ActionStatus.QUEUED.value, actor=actor[:200], requested_at=utcnow()))
        note_change(session, m.id)
    return [a for a in actions_of(session, m.id) if a.kind == kind]


def request_customer_fix(session: Session, account_id: str, customer_id: str, actor: str
                         ) -> StripeAction:
    """Record the "No such customer" fix (create the customer in the venue's account with the
    member's email, relink the member), queued; asking again returns the recorded one."""
    key = idempotency_key(0, CREATE_CUSTOMER, f"{account_id}-{customer_id}")
    insert_ignoring_duplicates(session, StripeAction, dict(
        mismatch_id=None, account_id=account_id, kind=CREATE_CUSTOMER, target=customer_id,
        idempotency_key=key, status=ActionStatus.QUEUED.value, actor=actor[:200],
        requested_at=utcnow()))
    action = session.scalar(select(StripeAction).where(StripeAction.idempotency_key == key))
    assert action is not None
    return action


def carry_out(config: Config, db: Database, action_id: int) -> str:
    """The worker's half: read the action, call Stripe with no transaction open, write the
    answer. A job run again after its call went through finds the action done, or sends the
    same idempotency key and gets Stripe's first answer back."""
    with db.session() as s:
        action = s.get(StripeAction, action_id)
        if action is None or action.status != ActionStatus.QUEUED:
            return action.status if action is not None else "missing"
        kind, target, key = action.kind, action.target, action.idempotency_key
        account, amount, mismatch_id = action.account_id, action.amount, action.mismatch_id
        payment = (s.scalar(select(Payment).where(Payment.account_id == account,
                                                  Payment.invoice_id == target))
                   if kind == REFUND else None)
        charge = payment.charge_id if payment else None
        intent = payment.payment_intent_id if payment else None
    api = StripeApi(config)
    request_id: str | None = None
    error: str | None = None
    result: str | None = None
    try:
        if kind == CANCEL:
            request_id = api.cancel_subscription(account, target, key)
        elif kind == REFUND:
            if not charge and not intent:  # a newer invoice names its payment only on request
                intent = api.invoice_payment_intent(account, target)
            request_id = api.refund(account, charge, intent, amount, key)
        else:
            fixed = fix_member_link(config, db, api, target, account)
            result = "; ".join(f"member {ref}: {old} -> {new}" for ref, old, new in
                               fixed.changes) or "no member links to it any more"
        status = ActionStatus.SUCCEEDED
    except stripe.StripeError as exc:  # Stripe refused (4xx): final, with its message
        status, request_id = ActionStatus.FAILED, exc.request_id
        error = f"{type(exc).__name__}: {exc.user_message or 'refused'}"[:500]
    with db.session() as s:
        if mismatch_id is not None:  # locked first, as every change to what it shows does
            s.get(Mismatch, mismatch_id, with_for_update=True)
            note_change(s, mismatch_id, ACTION_SUCCEEDED if status == ActionStatus.SUCCEEDED
                        else ACTION_FAILED)
        s.execute(update(StripeAction).where(StripeAction.id == action_id).values(
            status=status.value, finished_at=utcnow(), stripe_request_id=request_id,
            result=result, error=error))
        if status == ActionStatus.SUCCEEDED and kind == REFUND and payment is not None:
            s.execute(update(Payment).where(Payment.id == payment.id).values(
                amount_refunded=Payment.amount_refunded + (amount or 0)))
    log.info("action %s %s on %s: %s", action_id, kind, target, status.value)
    return status.value


@dataclass
class MemberLinkFix:
    venue_id: int
    changes: list[tuple[str, str, str]]  # (member_ref, old customer id, new customer id)


def fix_member_link(config: Config, db: Database, api: StripeApi, customer_id: str,
                    account_id: str) -> MemberLinkFix:
    """Give each member of the venue that links to `customer_id` a new customer in the
    venue's own account. Read, then create in Stripe with no transaction open (idempotency
    key per member and old customer), then relink in a short transaction of its own."""
    with db.session() as session:
        venue = session.scalar(select(Venue).where(Venue.account_id == account_id))
        if venue is None:
            raise ValueError(f"no venue {account_id}")
        venue_id, livemode = venue.id, venue.livemode
        members = [(m.id, m.member_ref, m.email, m.name) for m in session.scalars(
            select(Member).where(Member.venue_id == venue.id,
                                 Member.stripe_customer_id == customer_id))]
    created = []
    for member_id, member_ref, email, name in members:
        new_id = api.create_customer(
            None if account_id == config.stripe_platform_account else account_id,
            email, name, metadata={"member_ref": member_ref, "replaces": customer_id},
            idempotency_key=f"mismatch-fix-{account_id}-{member_ref}-{customer_id}")
        created.append((member_id, member_ref, email, name, new_id))
    changes = []
    with db.session() as session:
        batch = Batch(session, config)
        for member_id, member_ref, email, name, new_id in created:
            member = session.get(Member, member_id)
            if member is None or member.stripe_customer_id != customer_id:
                continue  # changed meanwhile: leave it as the booking product set it
            member.stripe_customer_id = new_id
            mirror_customer(batch, CustomerSeen(account_id, livemode, new_id, email, name,
                                                deleted=False, created=0))
            changes.append((member_ref, customer_id, new_id))
        venue = session.get(Venue, venue_id)
        if venue is not None:
            venue.recheck_requested_at = utcnow()
    return MemberLinkFix(venue_id, changes)
