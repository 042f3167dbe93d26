"""One handler per Stripe event type, and the table that maps types to handlers.

To see what happens on an event type, find it in HANDLERS below. Each handler returns the
event's outcome (stored on the inbox row); types not in the table are marked `ignored`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from db import StripeEvent
from workers.matching import (
    MatchContext,
    Sighting,
    find_mirrored,
    mirror_customer,
    observe_subscription,
    recheck_open_mismatches,
    record_unrouted,
    venue_for,
)


@dataclass
class EventContext:
    """One inbox event, as handlers see it."""

    match: MatchContext
    event: StripeEvent
    payload: dict[str, Any]
    account_id: str | None  # the event's account, or the platform's own for platform events

    @property
    def object(self) -> dict[str, Any]:
        return self.payload["data"]["object"]

    @property
    def livemode(self) -> bool:
        return self.event.livemode


class Ignored(Exception):
    """The event is valid but not ours to act on; the message says why."""


def _id(value: Any) -> str | None:
    """Stripe fields hold an ID or, when expanded, the object with its ID."""
    if isinstance(value, dict):
        return value.get("id")
    return value if isinstance(value, str) else None


# --- customers -------------------------------------------------------------------------


def customer_changed(ctx: EventContext) -> str:
    return _mirror(ctx, deleted=bool(ctx.object.get("deleted")))


def customer_deleted(ctx: EventContext) -> str:
    return _mirror(ctx, deleted=True)


def _mirror(ctx: EventContext, *, deleted: bool) -> str:
    if not ctx.account_id:
        return "unrouted"
    customer = ctx.object
    mirror_customer(
        ctx.match.session, ctx.account_id, ctx.livemode, customer["id"],
        email=customer.get("email"), name=customer.get("name"), deleted=deleted,
        event_created=ctx.event.created,
    )
    venue = venue_for(ctx.match.session, ctx.account_id)
    if venue is not None and venue.livemode == ctx.livemode:
        # The email may have changed or become known: re-check this customer's mismatches.
        recheck_open_mismatches(ctx.match, venue, customer_id=customer["id"])
    return "customer_deleted" if deleted else "customer_mirrored"


# --- subscriptions ---------------------------------------------------------------------


def subscription_changed(ctx: EventContext) -> str:
    sub = ctx.object
    return _observe(ctx, _id(sub.get("id")), _id(sub.get("customer")), sub.get("status"),
                    canceled=sub.get("status") == "canceled")


def subscription_deleted(ctx: EventContext) -> str:
    sub = ctx.object
    return _observe(ctx, _id(sub.get("id")), _id(sub.get("customer")), "canceled",
                    canceled=True)


def checkout_completed(ctx: EventContext) -> str:
    session = ctx.object
    if session.get("mode") != "subscription":
        raise Ignored("checkout session is not in subscription mode")
    details = session.get("customer_details") or {}
    email = details.get("email") or session.get("customer_email")
    customer_id = _id(session.get("customer"))
    if customer_id and email and ctx.account_id:
        # Learned from the checkout; any customer.* event overrides it (created=0).
        if find_mirrored(ctx.match.session, ctx.account_id, ctx.livemode, customer_id) is None:
            mirror_customer(ctx.match.session, ctx.account_id, ctx.livemode, customer_id,
                            email=email, name=details.get("name"), deleted=False,
                            event_created=0)
    return _observe(ctx, _id(session.get("subscription")), customer_id, None, canceled=False,
                    checkout_email=email)


def _observe(ctx: EventContext, subscription_id: str | None, customer_id: str | None,
             status: str | None, *, canceled: bool, checkout_email: str | None = None) -> str:
    if not subscription_id or not customer_id:
        raise Ignored("no subscription or customer id in the event")
    session = ctx.match.session
    venue = venue_for(session, ctx.account_id)
    if venue is None:
        if ctx.account_id:
            record_unrouted(session, ctx.account_id, ctx.livemode, subscription_id, customer_id)
            from notifications.outbox import queue_unrouted_alert

            ctx.match.after_commit.extend(
                queue_unrouted_alert(session, ctx.match.config, ctx.account_id, ctx.event)
            )
        return "unrouted"
    if venue.livemode != ctx.livemode:
        return "livemode_mismatch"
    return observe_subscription(
        ctx.match, venue, livemode=ctx.livemode, subscription_id=subscription_id,
        customer_id=customer_id, status=status, canceled=canceled,
        event_created=ctx.event.created, checkout_email=checkout_email,
    )


def sighting(event: StripeEvent, payload: dict[str, Any], account_id: str | None
             ) -> Sighting | None:
    """The subscription and customer a subscription or checkout event names, the way its
    handler reads them: what a batch prefetches rows for (jobs.process_events)."""
    obj = (payload.get("data") or {}).get("object")
    if not account_id or not isinstance(obj, dict):
        return None
    if event.type.startswith("customer.subscription."):
        subscription_id, customer_id = _id(obj.get("id")), _id(obj.get("customer"))
    elif event.type == "checkout.session.completed" and obj.get("mode") == "subscription":
        subscription_id, customer_id = _id(obj.get("subscription")), _id(obj.get("customer"))
    else:
        return None
    if not subscription_id or not customer_id:
        return None
    return Sighting(account_id, event.livemode, subscription_id, customer_id)


Handler = Callable[[EventContext], str]

HANDLERS: dict[str, Handler] = {
    "customer.created": customer_changed,
    "customer.updated": customer_changed,
    "customer.deleted": customer_deleted,
    "customer.subscription.created": subscription_changed,
    "customer.subscription.updated": subscription_changed,
    "customer.subscription.deleted": subscription_deleted,
    "checkout.session.completed": checkout_completed,
}
