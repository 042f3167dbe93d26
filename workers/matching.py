"""The matching rules: which member (if any) a subscription's customer belongs to, and the
lifecycle of the one Mismatch per (account, subscription).

Every write here is safe under duplicate, late and concurrent events: rows are created with
INSERT ... ON CONFLICT DO NOTHING and then locked, and older events never undo newer state.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select, tuple_, update
from sqlalchemy.orm import Session

from config import Config
from db import (
    Member,
    Mismatch,
    StripeCustomer,
    Subscription,
    Venue,
    insert_ignoring_duplicates,
    normalize_email,
    utcnow,
)
from workers.stripe_api import StripeApi, StripeUnavailable

log = logging.getLogger(__name__)

NO_EMAIL_NOTE = "customer has no email"
PREFETCHED = "mismatch.prefetched"  # the Session.info key of a batch's Prefetched rows
NOT_FOUND_NOTE = "customer not found in this Stripe account"


class EmailNotYetKnown(Exception):
    """The customer's email cannot be found yet; retry rather than guess case 3."""


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


@dataclass
class MatchContext:
    """What a matching call needs besides the session; `after_commit` collects work to
    queue once the transaction is durable (notices)."""

    session: Session
    config: Config
    api: StripeApi
    after_commit: list[Any] = field(default_factory=list)
    notices_due: int = 0  # mismatches opened (or changed case) in this unit of work


@dataclass(frozen=True)
class Sighting:
    """A subscription an event names, as the lookups of its handler will key it."""

    account_id: str
    livemode: bool
    subscription_id: str
    customer_id: str


@dataclass
class Prefetched:
    """What the lookups below would read for a batch of events, loaded up front in a few
    set-based queries (prefetch). Keyed by each lookup's own arguments; a key present with
    None means "no such row". A key that is absent falls through to the lookup's own query,
    so this only saves round trips: the answers, and the rules, stay those of one event at a
    time. Lives in Session.info for one transaction."""

    venues: dict[str, Venue | None] = field(default_factory=dict)
    linked: dict[tuple[int, str], Member | None] = field(default_factory=dict)
    mirrored: dict[tuple[str, bool, str], StripeCustomer | None] = field(default_factory=dict)
    members: dict[tuple[int, str], list[Member]] = field(default_factory=dict)
    # Locked FOR UPDATE by prefetch: while this transaction holds a subscription's row, no
    # one else can create its mismatch, so "no mismatch" stays true until we create it.
    subscriptions: dict[tuple[str, str], Subscription] = field(default_factory=dict)
    mismatches: dict[tuple[str, str], Mismatch | None] = field(default_factory=dict)


def _prefetched(session: Session) -> Prefetched | None:
    return session.info.get(PREFETCHED)


def prefetch(session: Session, sightings: list[Sighting]) -> Prefetched:
    """Load, lock and remember the rows handling these sightings will read: six queries for
    the whole batch instead of six per event. Locks subscriptions in key order, so batches
    that share a subscription queue up rather than deadlock."""
    found = Prefetched()
    session.info[PREFETCHED] = found
    accounts = sorted({s.account_id for s in sightings})
    if not accounts:
        return found
    for venue in session.scalars(select(Venue).where(Venue.account_id.in_(accounts))):
        found.venues[venue.account_id] = venue
    for account in accounts:
        found.venues.setdefault(account, None)
    routed = [(s, v) for s in sightings
              if (v := found.venues[s.account_id]) is not None and v.livemode == s.livemode]
    if not routed:
        return found

    first: dict[tuple[str, str], tuple[Sighting, Venue]] = {}
    for s, venue in routed:
        first.setdefault((s.account_id, s.subscription_id), (s, venue))
    insert_ignoring_duplicates(session, Subscription, [
        _new_subscription(s.account_id, s.livemode, s.subscription_id, s.customer_id, venue)
        for s, venue in first.values()
    ])
    keys = sorted(first)
    sub_key = tuple_(Subscription.account_id, Subscription.subscription_id)
    for sub in session.scalars(select(Subscription).where(sub_key.in_(keys))
                               .order_by(Subscription.account_id, Subscription.subscription_id)
                               .with_for_update()):
        found.subscriptions[(sub.account_id, sub.subscription_id)] = sub
    found.mismatches = dict.fromkeys(keys)
    mismatch_key = tuple_(Mismatch.account_id, Mismatch.subscription_id)
    for mismatch in session.scalars(select(Mismatch).where(mismatch_key.in_(keys))
                                    .with_for_update()):
        found.mismatches[(mismatch.account_id, mismatch.subscription_id)] = mismatch

    pairs = sorted({(venue.id, s.customer_id) for s, venue in routed})
    found.linked = dict.fromkeys(pairs)
    for member in session.scalars(select(Member).where(
            tuple_(Member.venue_id, Member.stripe_customer_id).in_(pairs))):
        found.linked[(member.venue_id, member.stripe_customer_id)] = member  # type: ignore[index]

    unlinked = sorted({(s.account_id, s.livemode, s.customer_id) for s, venue in routed
                       if found.linked[(venue.id, s.customer_id)] is None})
    if not unlinked:
        return found
    found.mirrored = dict.fromkeys(unlinked)
    for customer in session.scalars(select(StripeCustomer).where(tuple_(
            StripeCustomer.account_id, StripeCustomer.livemode, StripeCustomer.customer_id
    ).in_(unlinked))):
        found.mirrored[(customer.account_id, customer.livemode, customer.customer_id)] = customer

    wanted = sorted({(venue.id, email) for s, venue in routed
                     if (c := found.mirrored.get((s.account_id, s.livemode, s.customer_id)))
                     and (email := normalize_email(c.email))})
    if wanted:
        found.members = {key: [] for key in wanted}
        for member in session.scalars(select(Member).where(
                tuple_(Member.venue_id, Member.email_normalized).in_(wanted))
                .order_by(Member.member_ref)):
            found.members[(member.venue_id, member.email_normalized)].append(member)
    return found


def venue_for(session: Session, account_id: str | None) -> Venue | None:
    if not account_id:
        return None
    if (found := _prefetched(session)) and account_id in found.venues:
        return found.venues[account_id]
    return session.scalar(select(Venue).where(Venue.account_id == account_id))


def linked_member(session: Session, venue: Venue, customer_id: str) -> Member | None:
    if (found := _prefetched(session)) and (venue.id, customer_id) in found.linked:
        return found.linked[(venue.id, customer_id)]
    return session.scalar(
        select(Member).where(Member.venue_id == venue.id, Member.stripe_customer_id == customer_id)
    )


def mirror_customer(
    session: Session,
    account_id: str,
    livemode: bool,
    customer_id: str,
    *,
    email: str | None,
    name: str | None,
    deleted: bool,
    event_created: int,
) -> None:
    """Apply one customer snapshot; an older snapshot never overwrites a newer one, and a
    deleted customer stays deleted."""
    if found := _prefetched(session):
        found.mirrored.pop((account_id, livemode, customer_id), None)  # read it afresh
    inserted = insert_ignoring_duplicates(
        session,
        StripeCustomer,
        dict(account_id=account_id, livemode=livemode, customer_id=customer_id, email=email,
             name=name, deleted=deleted, last_event_created=event_created, updated_at=utcnow()),
        returning=StripeCustomer.id,
    )
    if inserted is not None:
        return
    key = (
        (StripeCustomer.account_id == account_id)
        & (StripeCustomer.livemode == livemode)
        & (StripeCustomer.customer_id == customer_id)
    )
    values: dict[str, Any] = dict(email=email, name=name, last_event_created=event_created,
                                  updated_at=utcnow())
    if deleted:
        values["deleted"] = True
    session.execute(
        update(StripeCustomer)
        .where(key, StripeCustomer.last_event_created <= event_created)
        .values(**values)
    )
    if deleted:  # even when a newer snapshot is already here: deletion is final in Stripe
        session.execute(update(StripeCustomer).where(key).values(deleted=True))


def find_mirrored(session: Session, account_id: str, livemode: bool, customer_id: str
                  ) -> StripeCustomer | None:
    if (found := _prefetched(session)) and (account_id, livemode, customer_id) in found.mirrored:
        return found.mirrored[(account_id, livemode, customer_id)]
    return session.scalar(
        select(StripeCustomer).where(
            StripeCustomer.account_id == account_id,
            StripeCustomer.livemode == livemode,
            StripeCustomer.customer_id == customer_id,
        )
    )


def find_email(
    ctx: MatchContext,
    account_id: str,
    livemode: bool,
    customer_id: str,
    checkout_email: str | None = None,
    recorded: tuple[str | None, str | None] | None = None,
) -> tuple[str | None, str | None]:
    """DESIGN rule 3: mirror, then the checkout session, then one API read by ID.

    `recorded` (a re-check's earlier (email, note)) stands in for the API read.
    Returns (email, note). Raises EmailNotYetKnown when none of these can answer now.
    """
    mirrored = find_mirrored(ctx.session, account_id, livemode, customer_id)
    if mirrored is not None:
        return (mirrored.email, None) if mirrored.email else (None, NO_EMAIL_NOTE)
    if checkout_email:
        return checkout_email, None
    if recorded is not None:
        return recorded
    if not ctx.api.enabled:
        raise EmailNotYetKnown(
            f"email of {customer_id} unknown: not mirrored yet and STRIPE_SECRET_KEY is unset"
        )
    try:
        record = ctx.api.retrieve_customer(account_id, customer_id)
    except StripeUnavailable as exc:
        raise EmailNotYetKnown(f"email of {customer_id} unknown: {exc}") from exc
    if not record.found:
        return None, NOT_FOUND_NOTE
    # Keep what we learned so the next event for this customer needs no call;
    # last_event_created=0 lets any customer.* event override it.
    mirror_customer(ctx.session, account_id, livemode, customer_id, email=record.email,
                    name=record.name, deleted=record.deleted, event_created=0)
    return (record.email, None) if record.email else (None, NO_EMAIL_NOTE)


def classify(session: Session, venue: Venue, email: str | None, note: str | None = None
             ) -> Classification:
    """DESIGN rule 4: members of this venue with the same normalized email."""
    normalized = normalize_email(email)
    if normalized is None:
        return Classification(case=3, email=email, note=note or NO_EMAIL_NOTE)
    found = _prefetched(session)
    if found and (venue.id, normalized) in found.members:
        members = found.members[(venue.id, normalized)]
    else:
        members = list(session.scalars(
            select(Member)
            .where(Member.venue_id == venue.id, Member.email_normalized == normalized)
            .order_by(Member.member_ref)
        ))
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


def evaluate(
    ctx: MatchContext,
    venue: Venue,
    customer_id: str,
    livemode: bool,
    checkout_email: str | None = None,
    recorded: tuple[str | None, str | None] | None = None,
) -> Linked | Classification:
    """Rules 2-4 for one customer of one venue."""
    member = linked_member(ctx.session, venue, customer_id)
    if member is not None:
        return Linked(member)
    email, note = find_email(ctx, venue.account_id, livemode, customer_id,
                             checkout_email=checkout_email, recorded=recorded)
    return classify(ctx.session, venue, email, note)


def _new_subscription(account_id: str, livemode: bool, subscription_id: str, customer_id: str,
                      venue: Venue | None) -> dict[str, Any]:
    return dict(account_id=account_id, livemode=livemode, subscription_id=subscription_id,
                customer_id=customer_id, venue_id=venue.id if venue else None, canceled=False,
                state="unrouted" if venue is None else "pending", last_event_created=0,
                updated_at=utcnow())


def _locked_subscription(session: Session, account_id: str, livemode: bool, subscription_id: str,
                         customer_id: str, venue: Venue | None) -> Subscription:
    if (found := _prefetched(session)) and (account_id, subscription_id) in found.subscriptions:
        return found.subscriptions[(account_id, subscription_id)]
    insert_ignoring_duplicates(
        session, Subscription,
        _new_subscription(account_id, livemode, subscription_id, customer_id, venue),
    )
    row = session.scalar(
        select(Subscription)
        .where(Subscription.account_id == account_id,
               Subscription.subscription_id == subscription_id)
        .with_for_update()
    )
    assert row is not None
    return row


def record_unrouted(session: Session, account_id: str, livemode: bool, subscription_id: str,
                    customer_id: str) -> None:
    row = _locked_subscription(session, account_id, livemode, subscription_id, customer_id, None)
    row.state = "unrouted"


def observe_subscription(
    ctx: MatchContext,
    venue: Venue,
    *,
    livemode: bool,
    subscription_id: str,
    customer_id: str,
    status: str | None,
    canceled: bool,
    event_created: int,
    checkout_email: str | None = None,
) -> str:
    """Apply one sighting of a subscription (event or reconcile); returns the outcome."""
    sub = _locked_subscription(ctx.session, venue.account_id, livemode, subscription_id,
                               customer_id, venue)
    if canceled:
        sub.canceled = True
        sub.status = "canceled"
    elif status and event_created >= sub.last_event_created and not sub.canceled:
        sub.status = status
    sub.last_event_created = max(sub.last_event_created, event_created)
    sub.venue_id = venue.id

    # The lookups below never read the subscription row: keep its changes pending so they
    # reach the database in one UPDATE with the verdict, not one UPDATE each.
    with ctx.session.no_autoflush:
        result = evaluate(ctx, venue, customer_id, livemode, checkout_email=checkout_email)
    return apply_result(ctx, venue, sub, result)


def apply_result(ctx: MatchContext, venue: Venue, sub: Subscription,
                 result: Linked | Classification) -> str:
    """Record the verdict on the subscription and its one Mismatch (rules 2, 5, 6)."""
    session = ctx.session
    if isinstance(result, Linked):
        sub.state = "linked"
        sub.member_id = result.member.id
        mismatch = _mismatch_for_update(session, sub.account_id, sub.subscription_id)
        if mismatch is not None and mismatch.status == "open":
            mismatch.resolve("linked")
            log.info("mismatch %s resolved: %s now linked", mismatch.id, sub.customer_id)
        return "linked"

    sub.state = "mismatch"
    sub.member_id = result.member.id if result.member else None
    now = utcnow()
    values = dict(account_id=sub.account_id, livemode=sub.livemode,
                  subscription_id=sub.subscription_id, venue_id=venue.id, case=result.case,
                  customer_id=sub.customer_id, customer_email=result.email,
                  linked_customer_id=result.linked_customer_id,
                  member_id=result.member.id if result.member else None,
                  candidates=result.candidates, note=result.note, status="open",
                  opened_at=now, updated_at=now)
    key = (sub.account_id, sub.subscription_id)
    found = _prefetched(session)
    if found and key in found.mismatches and found.mismatches[key] is None:
        # We hold the subscription's lock and saw no mismatch: add it with the batch's flush.
        mismatch = found.mismatches[key] = Mismatch(**values)
        session.add(mismatch)
    else:
        insert_ignoring_duplicates(session, Mismatch, values)
        mismatch = _mismatch_for_update(session, sub.account_id, sub.subscription_id)
    assert mismatch is not None
    if mismatch.status == "open":
        mismatch.case = result.case
        mismatch.customer_email = result.email
        mismatch.linked_customer_id = result.linked_customer_id
        mismatch.member_id = result.member.id if result.member else None
        mismatch.candidates = result.candidates
        mismatch.note = result.note
        mismatch.venue_id = venue.id
    if sub.canceled:
        if mismatch.status == "open":
            mismatch.resolve("canceled")
        return f"case_{mismatch.case}_canceled"
    if mismatch.status == "open" and mismatch.notified_case != mismatch.case:
        from notifications.outbox import queue_mismatch_notices

        ctx.after_commit.extend(queue_mismatch_notices(session, mismatch, venue))
        mismatch.notified_case = mismatch.case
        ctx.notices_due += 1
    return f"case_{mismatch.case}"


def _mismatch_for_update(session: Session, account_id: str, subscription_id: str
                         ) -> Mismatch | None:
    if (found := _prefetched(session)) and (account_id, subscription_id) in found.mismatches:
        return found.mismatches[(account_id, subscription_id)]
    return session.scalar(
        select(Mismatch)
        .where(Mismatch.account_id == account_id, Mismatch.subscription_id == subscription_id)
        .with_for_update()
    )


def recheck_open_mismatches(ctx: MatchContext, venue: Venue,
                            customer_id: str | None = None) -> dict[str, int]:
    """Re-run rules 2-4 for a venue's open mismatches (after a member or customer changed).

    Uses the mirror and the email already recorded; never calls Stripe.
    """
    query = select(Mismatch.subscription_id, Mismatch.livemode, Mismatch.customer_id).where(
        Mismatch.venue_id == venue.id, Mismatch.status == "open"
    )
    if customer_id:
        query = query.where(Mismatch.customer_id == customer_id)
    counts: dict[str, int] = {}
    for subscription_id, livemode, customer in list(ctx.session.execute(query)):
        # Same lock order as observe_subscription (subscription, then mismatch): no deadlock.
        sub = _locked_subscription(ctx.session, venue.account_id, livemode, subscription_id,
                                   customer, venue)
        mismatch = _mismatch_for_update(ctx.session, venue.account_id, subscription_id)
        if mismatch is None or mismatch.status != "open":
            continue
        result = evaluate(ctx, venue, mismatch.customer_id, mismatch.livemode,
                          recorded=(mismatch.customer_email, mismatch.note))
        outcome = apply_result(ctx, venue, sub, result)
        counts[outcome] = counts.get(outcome, 0) + 1
    return counts
