"""A batch: one transaction's worth of event handling, passed to every rule that reads a row.

It holds the session, the rows the handlers will read (for a whole batch of events loaded up
front by `load`, in a few set-based queries; a row nobody loaded is looked up on its own),
what Stripe told us about customers in the step before the transaction, and the work to queue
once the transaction commits. Nothing here calls Stripe, sleeps or waits on anything but the
database.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Select, and_, select, tuple_
from sqlalchemy.orm import Session

from config import Config
from db import (
    Member,
    Mismatch,
    StripeCustomer,
    Subscription,
    SubscriptionState,
    Venue,
    insert_ignoring_duplicates,
    normalize_email,
    utcnow,
)
from db.messages import note_change
from workers.matching.subjects import CustomerKey, Subject, SubscriptionSeen
from workers.stripe_side.api import CustomerRecord, StripeUnavailable

# What Stripe answered for a customer before the transaction: the record (found or not), or
# why it could not answer.
Answer = CustomerRecord | StripeUnavailable


def new_subscription(account_id: str, livemode: bool, subscription_id: str, customer_id: str,
                     venue: Venue | None) -> dict[str, Any]:
    return dict(account_id=account_id, livemode=livemode, subscription_id=subscription_id,
                customer_id=customer_id, venue_id=venue.id if venue else None, canceled=False,
                state=SubscriptionState.UNROUTED if venue is None else SubscriptionState.PENDING,
                last_event_created=0, updated_at=utcnow())


@dataclass
class Batch:
    session: Session
    config: Config
    answers: dict[CustomerKey, Answer] = field(default_factory=dict)
    # Work to queue once this unit of work is committed (workers.jobs.queue_after_commit).
    notices: list[int] = field(default_factory=list)  # outbox rows to send
    events_again: list[str] = field(default_factory=list)  # events their customer released
    notices_due: int = 0  # mismatches opened (or changed case) in this unit of work

    # Loaded rows, keyed as each lookup is asked; a key present with None means "no such row".
    venues: dict[str, Venue | None] = field(default_factory=dict)
    linked: dict[tuple[int, str], Member | None] = field(default_factory=dict)
    mirrored: dict[CustomerKey, StripeCustomer | None] = field(default_factory=dict)
    members: dict[tuple[int, str], list[Member]] = field(default_factory=dict)
    # Locked FOR UPDATE: while this transaction holds a subscription's row nobody else can
    # create its mismatch, so "no mismatch" stays true until we create it.
    subscriptions: dict[tuple[str, str], Subscription] = field(default_factory=dict)
    mismatches: dict[tuple[str, str], Mismatch | None] = field(default_factory=dict)

    # --- loading ---------------------------------------------------------------------------

    def load(self, subjects: Iterable[Subject]) -> None:
        """Load and lock the rows handling these subjects will read: six queries for the
        whole batch instead of six per event. Subscriptions are locked in key order, so
        batches that share a subscription queue up rather than deadlock."""
        session = self.session
        subjects = list(subjects)
        seen = [s for s in subjects if isinstance(s, SubscriptionSeen) and s.account_id]
        accounts = sorted({s.account_id for s in subjects if s.account_id} - self.venues.keys())
        if accounts:
            for venue in session.scalars(select(Venue).where(Venue.account_id.in_(accounts))):
                self.venues[venue.account_id] = venue
            for account in accounts:
                self.venues.setdefault(account, None)
        routed = [(s, v) for s in seen
                  if (v := self.venues.get(s.account_id or "")) is not None
                  and v.livemode == s.livemode]
        if not routed:
            return

        first: dict[tuple[str, str], tuple[SubscriptionSeen, Venue]] = {}
        for s, venue in routed:
            first.setdefault((s.account_id or "", s.subscription_id), (s, venue))
        keys = sorted(first.keys() - self.subscriptions.keys())
        if keys:
            insert_ignoring_duplicates(session, Subscription, [
                new_subscription(s.account_id or "", s.livemode, s.subscription_id,
                                 s.customer_id, venue)
                for key, (s, venue) in first.items() if key in set(keys)])
            for sub in self._with_keys(
                    select(Subscription)
                    .order_by(Subscription.account_id, Subscription.subscription_id)
                    .with_for_update(),
                    (Subscription.account_id, Subscription.subscription_id), keys):
                self.subscriptions[(sub.account_id, sub.subscription_id)] = sub
            self.mismatches.update(dict.fromkeys(keys))
            for mismatch in self._with_keys(select(Mismatch).with_for_update(),
                                            (Mismatch.account_id, Mismatch.subscription_id),
                                            keys):
                self.mismatches[(mismatch.account_id, mismatch.subscription_id)] = mismatch

        pairs = sorted({(venue.id, s.customer_id) for s, venue in routed} - self.linked.keys())
        if pairs:
            self.linked.update(dict.fromkeys(pairs))
            for member in self._with_keys(select(Member),
                                          (Member.venue_id, Member.stripe_customer_id), pairs):
                self.linked[(member.venue_id, member.stripe_customer_id)] = member

        unlinked = sorted({s.customer_key for s, venue in routed
                           if self.linked[(venue.id, s.customer_id)] is None}
                          - self.mirrored.keys())
        if unlinked:
            self.mirrored.update(dict.fromkeys(unlinked))
            for customer in self._with_keys(
                    select(StripeCustomer), (StripeCustomer.account_id, StripeCustomer.livemode,
                                             StripeCustomer.customer_id), unlinked):
                self.mirrored[(customer.account_id, customer.livemode,
                               customer.customer_id)] = customer

        wanted = sorted({(venue.id, email) for s, venue in routed
                         if (email := normalize_email(self._known_email(s)))}
                        - self.members.keys())
        if wanted:
            self.members.update({key: [] for key in wanted})
            for member in self._with_keys(select(Member).order_by(Member.member_ref),
                                          (Member.venue_id, Member.email_normalized), wanted):
                self.members[(member.venue_id, member.email_normalized)].append(member)

    def _with_keys(self, query: Select, columns: tuple[Any, ...],
                   keys: list[tuple[Any, ...]]) -> Iterator[Any]:
        """The rows of `query` whose `columns` equal one of `keys`. PostgreSQL gets one
        row-value IN. SQLite plans a row-value IN (`IN (VALUES …)`) as a scan of the whole
        table, so it gets one IN per column, which it answers from the index, and the few
        rows that match a column each but not a key together are dropped here."""
        if self.session.get_bind().dialect.name != "sqlite":
            yield from self.session.scalars(query.where(tuple_(*columns).in_(keys)))
            return
        wanted = set(keys)
        per_column = [column.in_(sorted({key[n] for key in keys}))
                      for n, column in enumerate(columns)]
        for row in self.session.scalars(query.where(and_(*per_column))):
            if tuple(getattr(row, column.key) for column in columns) in wanted:
                yield row

    def _known_email(self, s: SubscriptionSeen) -> str | None:
        """The email rule 3 will use for this sighting, as far as loaded rows tell."""
        if s.customer is not None:
            return s.customer.email
        mirrored = self.mirrored.get(s.customer_key)
        if mirrored is not None:
            return mirrored.email
        if s.checkout_email:
            return s.checkout_email
        answer = self.answers.get(s.customer_key)
        return answer.email if isinstance(answer, CustomerRecord) else None

    def needs_stripe(self, s: SubscriptionSeen) -> CustomerKey | None:
        """The customer only Stripe can tell rule 3 about for this sighting (to be asked with
        no transaction open), or None when the rows and the event answer it."""
        if not s.account_id:
            return None
        venue = self.venue(s.account_id)
        if venue is None or venue.livemode != s.livemode:
            return None
        if self.linked_member(venue, s.customer_id) is not None:
            return None
        if s.customer is not None or s.checkout_email:
            return None
        if self.find_mirrored(*s.customer_key) is not None:
            return None
        return s.customer_key

    # --- lookups ---------------------------------------------------------------------------

    def venue(self, account_id: str | None) -> Venue | None:
        if not account_id:
            return None
        if account_id not in self.venues:
            self.venues[account_id] = self.session.scalar(
                select(Venue).where(Venue.account_id == account_id))
        return self.venues[account_id]

    def linked_member(self, venue: Venue, customer_id: str) -> Member | None:
        key = (venue.id, customer_id)
        if key not in self.linked:
            return self.session.scalar(select(Member).where(
                Member.venue_id == venue.id, Member.stripe_customer_id == customer_id))
        return self.linked[key]

    def find_mirrored(self, account_id: str, livemode: bool, customer_id: str
                      ) -> StripeCustomer | None:
        key = (account_id, livemode, customer_id)
        if key not in self.mirrored:
            return self.session.scalar(select(StripeCustomer).where(
                StripeCustomer.account_id == account_id, StripeCustomer.livemode == livemode,
                StripeCustomer.customer_id == customer_id))
        return self.mirrored[key]

    def forget_mirrored(self, key: CustomerKey) -> None:
        """The mirror row just changed: read it afresh next time."""
        self.mirrored.pop(key, None)

    def members_with_email(self, venue: Venue, normalized: str) -> list[Member]:
        key = (venue.id, normalized)
        if key not in self.members:
            return list(self.session.scalars(
                select(Member)
                .where(Member.venue_id == venue.id, Member.email_normalized == normalized)
                .order_by(Member.member_ref)))
        return self.members[key]

    def locked_subscription(self, account_id: str, livemode: bool, subscription_id: str,
                            customer_id: str, venue: Venue | None) -> Subscription:
        if (account_id, subscription_id) in self.subscriptions:
            return self.subscriptions[(account_id, subscription_id)]
        insert_ignoring_duplicates(self.session, Subscription, new_subscription(
            account_id, livemode, subscription_id, customer_id, venue))
        row = self.session.scalar(
            select(Subscription)
            .where(Subscription.account_id == account_id,
                   Subscription.subscription_id == subscription_id)
            .with_for_update())
        assert row is not None
        return row

    def mismatch_for_update(self, account_id: str, subscription_id: str) -> Mismatch | None:
        if (account_id, subscription_id) in self.mismatches:
            return self.mismatches[(account_id, subscription_id)]
        return self.session.scalar(
            select(Mismatch)
            .where(Mismatch.account_id == account_id, Mismatch.subscription_id == subscription_id)
            .with_for_update())

    def open_mismatch(self, values: dict[str, Any]) -> Mismatch:
        """The one Mismatch of (account, subscription): created if there is none yet (INSERT
        … ON CONFLICT DO NOTHING, or through the ORM when this batch loaded the subscription's
        lock and saw none), then locked."""
        key = (values["account_id"], values["subscription_id"])
        if key in self.mismatches and self.mismatches[key] is None:
            mismatch = self.mismatches[key] = Mismatch(**values)
            self.session.add(mismatch)
            return mismatch
        insert_ignoring_duplicates(self.session, Mismatch, values)
        found = self.mismatch_for_update(*key)
        assert found is not None
        note_change(self.session, found.id)  # inserted by a statement, not by the ORM
        return found
