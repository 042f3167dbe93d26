"""One handler per Stripe event type, and the table that maps types to handlers.

To see what happens on an event type, find it in HANDLERS below. Each entry has two parts:
`reads` takes from the event what it is about (workers.matching.subjects: the customer or the
subscription), and `handle` acts on exactly that object, with the rows the batch loaded for
it. Handlers return the event's outcome (stored on the inbox row); types not in the table are
marked `ignored`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from db import CUSTOMER_ACCOUNT, UNROUTED, StripeEvent
from db.records import note_customer_email
from notifications.outbox import queue_unrouted_alert
from workers.matching.batch import Batch
from workers.matching.classify import (
    mirror_customer,
    observe_subscription,
    recheck_open_mismatches,
    record_unrouted,
    release_waiting_events,
)
from workers.matching.payments import record_payment
from workers.matching.subjects import (
    CustomerSeen,
    PaymentSeen,
    Subject,
    SubscriptionSeen,
    object_id,
    text,
)


@dataclass(frozen=True)
class Event:
    """One inbox event, as handlers see it."""

    row: StripeEvent
    payload: dict[str, Any]
    account_id: str | None  # the event's account, or the platform's own for platform events

    @property
    def object(self) -> dict[str, Any]:
        obj = (self.payload.get("data") or {}).get("object")
        return obj if isinstance(obj, dict) else {}

    @property
    def livemode(self) -> bool:
        return self.row.livemode


class Ignored(Exception):
    """The event is valid but not ours to act on; the message says why, `outcome` is what the
    inbox row and the metrics call it."""

    def __init__(self, reason: str, outcome: str = "ignored") -> None:
        super().__init__(reason)
        self.outcome = outcome


# A subscription billed to an Account (Stripe's Accounts v2: `customer_account`, an acct_…
# acting as the customer) has no Customer to match to a member by email. Not handled: the
# event is set aside under its own outcome (CUSTOMER_ACCOUNT), shown on the console and in
# /metrics.


# --- customers -------------------------------------------------------------------------

def customer_seen(event: Event) -> CustomerSeen | None:
    seen = CustomerSeen.from_object(event.object, event.account_id, event.livemode,
                                    event.row.created,
                                    deleted=event.row.type == "customer.deleted")
    if seen is None:
        raise Ignored("no customer id in the event")
    return seen if event.account_id else None


def customer_changed(batch: Batch, event: Event, customer: CustomerSeen | None) -> str:
    if customer is None:
        return UNROUTED
    mirror_customer(batch, customer)
    venue = batch.venue(customer.account_id)
    if venue is not None and venue.livemode == customer.livemode:
        note_customer_email(batch.session, venue, customer.customer_id)  # email drift
    if venue is not None and venue.livemode == customer.livemode and not customer.deleted:
        # The email may have changed or become known: re-check this customer's mismatches.
        # (Not on deletion: the purged email says nothing new about who the customer was.)
        recheck_open_mismatches(batch, venue, customer_id=customer.customer_id)
    release_waiting_events(batch, event.row.account_id, customer.livemode,
                           customer.customer_id)
    return "customer_deleted" if customer.deleted else "customer_mirrored"


# --- subscriptions ---------------------------------------------------------------------

def subscription_seen(event: Event) -> SubscriptionSeen:
    sub = event.object
    subscription_id, customer_id = object_id(sub.get("id")), object_id(sub.get("customer"))
    if subscription_id and not customer_id and object_id(sub.get("customer_account")):
        raise Ignored(f"subscription {subscription_id} is billed to account "
                      f"{object_id(sub.get('customer_account'))} (customer_account), not a "
                      f"customer: not matched", CUSTOMER_ACCOUNT)
    if not subscription_id or not customer_id:
        raise Ignored("no subscription or customer id in the event")
    deleted = event.row.type == "customer.subscription.deleted"
    status = "canceled" if deleted else text(sub.get("status"), 32)
    embedded = sub.get("customer")
    return SubscriptionSeen(
        event.account_id, event.livemode, subscription_id, customer_id,
        status, canceled=status == "canceled",
        created=event.row.created,
        customer=CustomerSeen.from_object(embedded, event.account_id, event.livemode,
                                          event.row.created)
        if isinstance(embedded, dict) and event.account_id else None)


def checkout_seen(event: Event) -> SubscriptionSeen:
    session = event.object
    if session.get("mode") != "subscription":
        raise Ignored("checkout session is not in subscription mode")
    subscription_id = object_id(session.get("subscription"))
    customer_id = object_id(session.get("customer"))
    if not subscription_id or not customer_id:
        raise Ignored("no subscription or customer id in the event")
    details = session.get("customer_details")
    details = details if isinstance(details, dict) else {}
    return SubscriptionSeen(event.account_id, event.livemode, subscription_id, customer_id,
                            None, canceled=False, created=event.row.created,
                            checkout_email=text(details.get("email"), 320)
                            or text(session.get("customer_email"), 320),
                            checkout_name=text(details.get("name"), 200))


def subscription_changed(batch: Batch, event: Event, seen: SubscriptionSeen) -> str:
    venue = batch.venue(seen.account_id)
    if venue is None:
        if seen.account_id:
            record_unrouted(batch, seen)
            batch.notices.extend(queue_unrouted_alert(
                batch.session, batch.config, seen.account_id, event.row))
        return UNROUTED
    if venue.livemode != seen.livemode:
        return "livemode_mismatch"
    if seen.checkout_email and batch.find_mirrored(*seen.customer_key) is None:
        # Learned from the checkout; any customer.* event overrides it (created=0).
        mirror_customer(batch, CustomerSeen(seen.account_id, seen.livemode, seen.customer_id,
                                            seen.checkout_email, seen.checkout_name,
                                            deleted=False, created=0))
    return observe_subscription(batch, venue, seen)


# --- payments (rule 7) -----------------------------------------------------------------

def invoice_seen(event: Event) -> PaymentSeen | None:
    seen = PaymentSeen.from_invoice(event.object, event.account_id, event.livemode,
                                    event.row.created)
    if seen is None:
        raise Ignored("the invoice is not a subscription's (no subscription or invoice id)")
    return seen if event.account_id else None


def charge_seen(kind: str) -> Callable[[Event], PaymentSeen | None]:
    def reads(event: Event) -> PaymentSeen | None:
        seen = PaymentSeen.from_charge(event.object, event.account_id, event.livemode, kind)
        if seen is None:
            raise Ignored("no charge or payment intent id in the event")
        return seen if event.account_id else None

    return reads


def payment_changed(batch: Batch, event: Event, seen: PaymentSeen | None) -> str:
    if seen is None:
        return UNROUTED
    return record_payment(batch, seen)


@dataclass(frozen=True)
class Handler:
    reads: Callable[[Event], Subject | None]  # raises Ignored for an event not ours
    handle: Callable[[Batch, Event, Any], str]


HANDLERS: dict[str, Handler] = {
    "customer.created": Handler(customer_seen, customer_changed),
    "customer.updated": Handler(customer_seen, customer_changed),
    "customer.deleted": Handler(customer_seen, customer_changed),
    "customer.subscription.created": Handler(subscription_seen, subscription_changed),
    "customer.subscription.updated": Handler(subscription_seen, subscription_changed),
    "customer.subscription.deleted": Handler(subscription_seen, subscription_changed),
    "checkout.session.completed": Handler(checkout_seen, subscription_changed),
    "invoice.paid": Handler(invoice_seen, payment_changed),
    "charge.refunded": Handler(charge_seen("refunded"), payment_changed),
    "charge.dispute.created": Handler(charge_seen("disputed"), payment_changed),
}
