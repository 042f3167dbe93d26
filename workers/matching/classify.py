"""The matching rules: which member (if any) a subscription's customer belongs to, and the
lifecycle of the one Mismatch per (account, subscription). docs/design.md states the rules;
the numbers below are theirs.

Every write here is safe under duplicate, late and concurrent events: rows are created with
INSERT ... ON CONFLICT DO NOTHING and then locked, and older events never undo newer state.
Every read goes through the Batch, and nothing here waits on Stripe: an email that only
Stripe can give was asked for before the transaction (Batch.answers) or is not known yet.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select, update

from db import (
    LINKED,
    EventStatus,
    Member,
    Mismatch,
    MismatchStatus,
    Resolution,
    StripeCustomer,
    StripeEvent,
    Subscription,
    SubscriptionState,
    Venue,
    case_outcome,
    insert_ignoring_duplicates,
    normalize_email,
    utcnow,
)
from notifications.outbox import queue_mismatch_notices
from workers.matching.batch import Batch
from workers.matching.subjects import CustomerKey, CustomerSeen, SubscriptionSeen
from workers.stripe_side.api import CustomerRecord, StripeUnavailable, is_live_key

log = logging.getLogger(__name__)

NO_EMAIL_NOTE = "customer has no email"
SIMILAR_MODE = re.compile(r"exists in (live|test) mode", re.IGNORECASE)


class EmailNotYetKnown(Exception):
    """The customer's email cannot be known in this transaction; the event waits and retries
    rather than guess case 3. The message names IDs only."""

    def __init__(self, key: CustomerKey, reason: str) -> None:
        super().__init__(reason)
        self.key = key


class LookupNeeded(EmailNotYetKnown):
    """Only Stripe can say: ask it (outside any transaction), then handle the event again."""


class CustomerUnknownToStripe(EmailNotYetKnown):
    """Stripe says it has no such customer in the subscription's account (or our key cannot
    see it). A subscription's customer always lives in its account, so our key or mode is
    wrong (rule 3): support is alerted, the venue is told nothing until the customer is known."""

    def __init__(self, key: CustomerKey, reason: str, stripe_message: str) -> None:
        super().__init__(key, reason)
        self.stripe_message = stripe_message


@dataclass
class Classification:
    """What rule 4 concluded for one customer in one venue."""

    case: int
    email: str | None
    member: Member | None = None
    linked_customer_id: str | None = None
    candidates: list[dict[str, Any]] = field(default_factory=list)
    note: str | None = None


@dataclass
class Linked:
    member: Member


# --- the mirror ------------------------------------------------------------------------------

def mirror_customer(batch: Batch, customer: CustomerSeen) -> None:
    """Apply one customer snapshot; an older snapshot never overwrites a newer one, and a
    deleted customer stays deleted. `created=0` (a checkout's or an API read's answer) yields
    to any customer.* event."""
    assert customer.account_id
    key = (customer.account_id, customer.livemode, customer.customer_id)
    batch.forget_mirrored(key)
    # Stripe purges a deleted customer's email and name; so does the mirror (the open
    # mismatch keeps the email it was classified with, for the venue's record).
    email, name = (None, None) if customer.deleted else (customer.email, customer.name)
    inserted = insert_ignoring_duplicates(
        batch.session, StripeCustomer,
        dict(account_id=customer.account_id, livemode=customer.livemode,
             customer_id=customer.customer_id, email=email, name=name,
             deleted=customer.deleted, last_event_created=customer.created,
             updated_at=utcnow()),
        returning=StripeCustomer.id,
    )
    if inserted is not None:
        return
    where = ((StripeCustomer.account_id == customer.account_id)
             & (StripeCustomer.livemode == customer.livemode)
             & (StripeCustomer.customer_id == customer.customer_id))
    values: dict[str, Any] = dict(email=email, name=name,
                                  last_event_created=customer.created, updated_at=utcnow())
    batch.session.execute(update(StripeCustomer)
                          .where(where, StripeCustomer.last_event_created <= customer.created)
                          .values(**values))
    if customer.deleted:  # even when a newer snapshot is already here: deletion is final
        batch.session.execute(update(StripeCustomer).where(where)
                              .values(deleted=True, email=None, name=None))


def release_waiting_events(batch: Batch, event_account: str | None, livemode: bool,
                           customer_id: str) -> None:
    """Rule 3: events that waited because Stripe did not know this customer go again now
    that it is known (after commit), failed ones included."""
    account = (StripeEvent.account_id.is_(None) if event_account is None
               else StripeEvent.account_id == event_account)
    released = batch.session.scalars(
        update(StripeEvent)
        .where(StripeEvent.waiting_for == customer_id, account,
               StripeEvent.livemode == livemode,
               StripeEvent.status.in_((EventStatus.RECEIVED, EventStatus.FAILED)))
        .values(status=EventStatus.RECEIVED)
        .returning(StripeEvent.event_id)).all()
    if released:
        log.info("customer %s is known: %d waiting events go again", customer_id,
                 len(released))
    batch.events_again.extend(released)


# --- rules 3 and 4 ---------------------------------------------------------------------------

def find_email(batch: Batch, key: CustomerKey, checkout_email: str | None = None,
               recorded: tuple[str | None, str | None] | None = None
               ) -> tuple[str | None, str | None]:
    """Rule 3: the mirror, then the checkout session, then what Stripe answered before the
    transaction. `recorded` (a re-check's earlier (email, note)) stands in for Stripe.
    Returns (email, note); raises EmailNotYetKnown when none of these can answer."""
    account_id, livemode, customer_id = key
    mirrored = batch.find_mirrored(*key)
    if mirrored is not None:
        return (mirrored.email, None) if mirrored.email else (None, NO_EMAIL_NOTE)
    if checkout_email:
        return checkout_email, None
    if recorded is not None:
        return recorded
    answer = batch.answers.get(key)
    if answer is None:
        if not batch.config.stripe_secret_key:
            raise EmailNotYetKnown(key, f"email of {customer_id} unknown: not mirrored yet "
                                        f"and STRIPE_SECRET_KEY is unset")
        raise LookupNeeded(key, f"email of {customer_id} unknown: ask Stripe")
    if isinstance(answer, StripeUnavailable):
        raise EmailNotYetKnown(key, f"email of {customer_id} unknown: {answer}")
    if not answer.found:
        raise CustomerUnknownToStripe(
            key, unknown_customer_reason(batch, key, answer), answer.not_found_message or "")
    # Keep what we learned, so the next event for this customer needs no call.
    mirror_customer(batch, CustomerSeen(account_id, livemode, customer_id, answer.email,
                                        answer.name, answer.deleted, created=0))
    return (answer.email, None) if answer.email else (None, NO_EMAIL_NOTE)


def unknown_customer_reason(batch: Batch, key: CustomerKey, answer: CustomerRecord) -> str:
    """One line for the inbox row and support's alert: which customer, and the likely cause."""
    account_id, livemode, customer_id = key
    mode = "live" if livemode else "test"
    message = answer.not_found_message or ""
    other = SIMILAR_MODE.search(message)
    key_mode = "live" if is_live_key(batch.config.stripe_secret_key) else "test"
    if other:
        cause = (f"the customer exists in {other.group(1).lower()} mode and our "
                 f"STRIPE_SECRET_KEY is a {key_mode}-mode key: set the {mode}-mode key")
    elif "access to account" in message or "does not have access" in message:
        cause = (f"our key cannot act as {account_id}: the account disconnected from the "
                 f"platform, or STRIPE_SECRET_KEY is another platform's key")
    else:
        cause = (f"STRIPE_SECRET_KEY belongs to another Stripe platform or account than the "
                 f"one that sent this {mode}-mode event")
    return f"Stripe has no customer {customer_id} in {account_id} ({mode} mode): likely {cause}"


def classify(batch: Batch, venue: Venue, email: str | None, note: str | None = None
             ) -> Classification:
    """Rule 4: members of this venue with the same normalized email."""
    normalized = normalize_email(email)
    if normalized is None:
        return Classification(case=3, email=email, note=note or NO_EMAIL_NOTE)
    members = batch.members_with_email(venue, normalized)
    if not members:
        return Classification(case=3, email=email, note=note)
    with_customer = [m for m in members if m.stripe_customer_id]
    candidates = [
        {"member_ref": m.member_ref, "email": m.email, "stripe_customer_id": m.stripe_customer_id}
        for m in members
    ]
    if with_customer:
        chosen = with_customer[0]
        return Classification(
            case=1, email=email, member=chosen if len(members) == 1 else None,
            linked_customer_id=chosen.stripe_customer_id, candidates=candidates, note=note,
        )
    return Classification(case=2, email=email, member=members[0] if len(members) == 1 else None,
                          candidates=candidates, note=note)


def evaluate(batch: Batch, venue: Venue, key: CustomerKey, checkout_email: str | None = None,
             recorded: tuple[str | None, str | None] | None = None) -> Linked | Classification:
    """Rules 2-4 for one customer of one venue."""
    member = batch.linked_member(venue, key[2])
    if member is not None:
        return Linked(member)
    email, note = find_email(batch, key, checkout_email=checkout_email, recorded=recorded)
    return classify(batch, venue, email, note)


# --- subscriptions (rules 1, 2, 5, 6) --------------------------------------------------------

def record_unrouted(batch: Batch, seen: SubscriptionSeen) -> None:
    assert seen.account_id
    row = batch.locked_subscription(seen.account_id, seen.livemode, seen.subscription_id,
                                    seen.customer_id, None)
    row.state = SubscriptionState.UNROUTED


def observe_subscription(batch: Batch, venue: Venue, seen: SubscriptionSeen) -> str:
    """Apply one sighting of a subscription (an event, or reconcile); returns the outcome.

    Raises EmailNotYetKnown (before writing anything) when rule 3 cannot answer yet."""
    # Rule 3 first: if the email cannot be known now, nothing of this event is written.
    with batch.session.no_autoflush:
        if seen.customer is not None:
            mirror_customer(batch, seen.customer)
        result = evaluate(batch, venue, seen.customer_key, checkout_email=seen.checkout_email)
    sub = batch.locked_subscription(venue.account_id, seen.livemode, seen.subscription_id,
                                    seen.customer_id, venue)
    if seen.canceled:
        sub.canceled = True
        sub.status = "canceled"
    elif seen.status and seen.created >= sub.last_event_created and not sub.canceled:
        sub.status = seen.status
    sub.last_event_created = max(sub.last_event_created, seen.created)
    sub.venue_id = venue.id
    return apply_result(batch, venue, sub, result)


def apply_result(batch: Batch, venue: Venue, sub: Subscription,
                 result: Linked | Classification) -> str:
    """Record the verdict on the subscription and its one Mismatch (rules 2, 5, 6)."""
    if isinstance(result, Linked):
        sub.state = SubscriptionState.LINKED
        sub.member_id = result.member.id
        mismatch = batch.mismatch_for_update(sub.account_id, sub.subscription_id)
        if mismatch is not None and mismatch.status == MismatchStatus.OPEN:
            mismatch.resolve(Resolution.LINKED)
            log.info("mismatch %s resolved: %s now linked", mismatch.id, sub.customer_id)
        return LINKED

    sub.state = SubscriptionState.MISMATCH
    sub.member_id = result.member.id if result.member else None
    now = utcnow()
    mismatch = batch.open_mismatch(dict(
        account_id=sub.account_id, livemode=sub.livemode, subscription_id=sub.subscription_id,
        venue_id=venue.id, case=result.case, customer_id=sub.customer_id,
        customer_email=result.email, linked_customer_id=result.linked_customer_id,
        member_id=result.member.id if result.member else None, candidates=result.candidates,
        note=result.note, status=MismatchStatus.OPEN, opened_at=now, updated_at=now))
    if mismatch.status == MismatchStatus.OPEN:
        mismatch.case = result.case
        mismatch.customer_email = result.email
        mismatch.linked_customer_id = result.linked_customer_id
        mismatch.member_id = result.member.id if result.member else None
        mismatch.candidates = result.candidates
        mismatch.note = result.note
        mismatch.venue_id = venue.id
    if sub.canceled:
        if mismatch.status == MismatchStatus.OPEN:
            mismatch.resolve(Resolution.CANCELED)
        return case_outcome(mismatch.case, canceled=True)
    if mismatch.status == MismatchStatus.OPEN and mismatch.notified_case != mismatch.case:
        batch.notices.extend(queue_mismatch_notices(batch.session, mismatch, venue))
        mismatch.notified_case = mismatch.case
        batch.notices_due += 1
    return case_outcome(mismatch.case)


def recheck_open_mismatches(batch: Batch, venue: Venue,
                            customer_id: str | None = None) -> dict[str, int]:
    """Re-run rules 2-4 for a venue's open mismatches (after a member or customer changed).

    Uses the mirror and the email already recorded; never needs Stripe."""
    query = select(Mismatch.subscription_id, Mismatch.livemode, Mismatch.customer_id).where(
        Mismatch.venue_id == venue.id, Mismatch.status == MismatchStatus.OPEN
    ).order_by(Mismatch.subscription_id)  # the key order batches lock subscriptions in
    if customer_id:
        query = query.where(Mismatch.customer_id == customer_id)
    counts: dict[str, int] = {}
    for subscription_id, livemode, customer in list(batch.session.execute(query)):
        # Same lock order as observe_subscription (subscription, then mismatch): no deadlock.
        sub = batch.locked_subscription(venue.account_id, livemode, subscription_id, customer,
                                        venue)
        mismatch = batch.mismatch_for_update(venue.account_id, subscription_id)
        if mismatch is None or mismatch.status != MismatchStatus.OPEN:
            continue
        result = evaluate(batch, venue, (venue.account_id, mismatch.livemode,
                                         mismatch.customer_id),
                          recorded=(mismatch.customer_email, mismatch.note))
        outcome = apply_result(batch, venue, sub, result)
        counts[outcome] = counts.get(outcome, 0) + 1
    return counts
