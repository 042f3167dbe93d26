"""Rule 7: what an outside subscription charged — each paid invoice, what was refunded of it,
whether it is disputed — recorded from Stripe's events for every subscription not known to
be linked (db.payments_of reads it for every view of a mismatch)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import or_, select, update

from db import (
    Payment,
    Subscription,
    SubscriptionState,
    insert_ignoring_duplicates,
    utcnow,
)
from db.messages import note_subscription
from workers.matching.batch import Batch
from workers.matching.subjects import PaymentSeen


def record_payment(batch: Batch, seen: PaymentSeen) -> str:
    """Apply one payment event; returns the event's outcome."""
    assert seen.account_id
    if seen.kind == "paid":
        return _paid(batch, seen)
    match = (Payment.account_id == seen.account_id) & or_(
        *[column == value for column, value in ((Payment.charge_id, seen.charge_id),
                                                (Payment.payment_intent_id,
                                                 seen.payment_intent_id),
                                                (Payment.invoice_id, seen.invoice_id))
          if value])
    values: dict[str, Any] = ({"amount_refunded": seen.amount_refunded}
                              if seen.kind == "refunded" else {"disputed": True})
    if seen.charge_id:
        values["charge_id"] = seen.charge_id  # learned from the charge (newer invoices)
    found = batch.session.execute(update(Payment).where(match).values(
        **values, updated_at=utcnow()).returning(Payment.account_id,
                                                 Payment.subscription_id)).all()
    for account_id, subscription_id in found:
        note_subscription(batch.session, account_id, subscription_id)
    return f"payment_{seen.kind}" if found else "payment_not_tracked"


def _paid(batch: Batch, seen: PaymentSeen) -> str:
    state = batch.session.scalar(select(Subscription.state).where(
        Subscription.account_id == seen.account_id,
        Subscription.subscription_id == seen.subscription_id))
    if state == SubscriptionState.LINKED:
        return "payment_not_tracked"  # a member's own subscription: none of our business
    inserted = insert_ignoring_duplicates(batch.session, Payment, dict(
        account_id=seen.account_id, livemode=seen.livemode,
        subscription_id=seen.subscription_id, invoice_id=seen.invoice_id,
        charge_id=seen.charge_id, payment_intent_id=seen.payment_intent_id,
        amount=seen.amount, currency=seen.currency, paid_at=seen.at, amount_refunded=0,
        disputed=False, updated_at=utcnow()), returning=Payment.id)
    note_subscription(batch.session, seen.account_id or "", seen.subscription_id or "")
    if inserted is None and (seen.charge_id or seen.payment_intent_id):
        batch.session.execute(update(Payment).where(
            Payment.account_id == seen.account_id, Payment.invoice_id == seen.invoice_id)
            .values(charge_id=seen.charge_id, payment_intent_id=seen.payment_intent_id))
    return "payment_recorded"
