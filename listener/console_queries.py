"""The console's reads and its one write outside a mismatch (a failed event back to
`received`): every query a support page makes, in one place, each reading an index or the
tallies (db/history.py), never the whole inbox."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Row, func, or_, select, update
from sqlalchemy.orm import Session

from db import (
    CUSTOMER_ACCOUNT,
    CUSTOMER_UNKNOWN,
    UNROUTED,
    EventStatus,
    EventTally,
    Member,
    Mismatch,
    MismatchStatus,
    RejectedDelivery,
    StripeAction,
    StripeCustomer,
    StripeEvent,
    Venue,
    rowcount,
)
from workers import CREATE_CUSTOMER


@dataclass
class VenueRow:
    venue_id: int | None
    name: str
    account_id: str
    livemode: bool
    cases: dict[int, int] = field(default_factory=lambda: {1: 0, 2: 0, 3: 0})

    @property
    def total(self) -> int:
        return sum(self.cases.values())


@dataclass(frozen=True)
class Drift:
    """A linked member whose Stripe customer's email changed away from the member's (the
    customer portal, a checkout): the link holds, but notices and matching by email will
    not find them."""

    venue: str
    account_id: str
    member_ref: str
    member_email: str
    customer_id: str
    customer_email: str


@dataclass(frozen=True)
class DriftSummary:
    total: int
    newest: list[Drift]


def email_drift(s: Session, limit: int) -> DriftSummary:
    """Linked members whose Stripe customer's email differs from theirs, newest first: kept
    on the member as either side changes (db.records.note_email_drift), read by its index."""
    drifted = Member.email_drift_since.is_not(None)
    total = s.scalar(select(func.count()).select_from(Member).where(drifted)) or 0
    newest = [Drift(name, account, ref, email, customer_id or "", customer_email or "")
              for name, account, ref, email, customer_id, customer_email in s.execute(
        select(Venue.name, Venue.account_id, Member.member_ref, Member.email,
               Member.stripe_customer_id, StripeCustomer.email)
        .select_from(Member).join(Venue, Venue.id == Member.venue_id)
        .outerjoin(StripeCustomer, (StripeCustomer.account_id == Venue.account_id)
                   & (StripeCustomer.livemode == Venue.livemode)
                   & (StripeCustomer.customer_id == Member.stripe_customer_id))
        .where(drifted)
        .order_by(Member.email_drift_since.desc(), Member.id.desc()).limit(limit))]
    return DriftSummary(total, newest)


def tallied(s: Session, outcome: str) -> list[tuple[str, bool, int, Any, str | None]]:
    """Finished events with this outcome per account and mode, newest first (the tallies)."""
    return [(account, livemode, n, last, detail)
            for account, livemode, n, last, detail in s.execute(
        select(EventTally.account_id, EventTally.livemode, func.sum(EventTally.n),
               func.max(EventTally.last_received_at), func.max(EventTally.last_detail))
        .where(EventTally.outcome == outcome)
        .group_by(EventTally.account_id, EventTally.livemode)
        .order_by(func.max(EventTally.last_received_at).desc()).limit(20))]


@dataclass
class Dashboard:
    """Everything /support shows that comes from the database."""

    by_venue: list[VenueRow]
    newest_open: list[Row[Any]]
    accepted: list[StripeEvent]
    rejected: list[RejectedDelivery]
    failed: list[StripeEvent]
    failed_total: int
    oldest: datetime | None
    pending: int
    unrouted: list[tuple[str | None, bool, int, Any]]
    unknown_customers: list[Row[Any]]
    drift: DriftSummary
    billed_to_accounts: list[tuple[str | None, bool, int, Any, str | None]]


def open_by_venue(s: Session) -> list[VenueRow]:
    """Open mismatches per venue and case, the venue with the most first."""
    venues: dict[int | None, VenueRow] = {}
    for venue_id, name, account_id, livemode, case, n in s.execute(
        select(Mismatch.venue_id, Venue.name, Mismatch.account_id, Mismatch.livemode,
               Mismatch.case, func.count())
        .outerjoin(Venue, Venue.id == Mismatch.venue_id)
        .where(Mismatch.status == MismatchStatus.OPEN)
        .group_by(Mismatch.venue_id, Venue.name, Mismatch.account_id, Mismatch.livemode,
                  Mismatch.case)
    ):
        row = venues.setdefault(venue_id, VenueRow(venue_id, name or account_id,
                                                   account_id, livemode))
        row.cases[case] = row.cases.get(case, 0) + n
    return sorted(venues.values(), key=lambda r: (-r.total, r.name.casefold()))


def dashboard(s: Session, recent: int) -> Dashboard:
    """The newest by id, the unfinished by (status, received_at), the finished by tallies."""
    return Dashboard(
        by_venue=open_by_venue(s),
        newest_open=list(s.execute(
            select(Mismatch, Venue.name).outerjoin(Venue, Venue.id == Mismatch.venue_id)
            .where(Mismatch.status == MismatchStatus.OPEN)
            .order_by(Mismatch.opened_at.desc(), Mismatch.id.desc()).limit(recent))),
        accepted=list(s.scalars(select(StripeEvent).order_by(StripeEvent.id.desc())
                                .limit(recent))),
        rejected=list(s.scalars(select(RejectedDelivery).order_by(
            RejectedDelivery.received_at.desc(), RejectedDelivery.id.desc()).limit(recent))),
        failed=list(s.scalars(select(StripeEvent).where(StripeEvent.status == EventStatus.FAILED)
                              .order_by(StripeEvent.received_at.desc()).limit(50))),
        failed_total=s.scalar(select(func.count()).select_from(StripeEvent)
                              .where(StripeEvent.status == EventStatus.FAILED)) or 0,
        oldest=s.scalar(select(func.min(StripeEvent.received_at)).where(
            StripeEvent.status == EventStatus.RECEIVED)),
        pending=s.scalar(select(func.count()).select_from(StripeEvent).where(
            StripeEvent.status == EventStatus.RECEIVED)) or 0,
        unrouted=[(account or None, livemode, n, last) for account, livemode, n, last, _
                  in tallied(s, UNROUTED)],
        unknown_customers=list(s.execute(
            select(StripeEvent.account_id, StripeEvent.livemode, func.count(),
                   func.max(StripeEvent.received_at), func.max(StripeEvent.last_error))
            .where(StripeEvent.status.in_((EventStatus.RECEIVED, EventStatus.FAILED)),
                   StripeEvent.outcome == CUSTOMER_UNKNOWN)
            .group_by(StripeEvent.account_id, StripeEvent.livemode)
            .order_by(func.max(StripeEvent.received_at).desc()).limit(20))),
        drift=email_drift(s, recent),
        billed_to_accounts=[(account or None, livemode, n, last, detail)
                            for account, livemode, n, last, detail
                            in tallied(s, CUSTOMER_ACCOUNT)],
    )


def reset_failed_event(s: Session, event_id: str) -> bool:
    """A failed event back to `received` (the sweeper queues it if we cannot)."""
    return bool(rowcount(s.execute(update(StripeEvent).where(
        StripeEvent.event_id == event_id, StripeEvent.status == EventStatus.FAILED)
        .values(status=EventStatus.RECEIVED))))


def mismatch_list(s: Session, *, status: str, case: str, account: str, offset: int,
                  limit: int) -> list[Row[Any]]:
    """(Mismatch, venue name) rows, newest first, filtered as the list page asks."""
    query = (select(Mismatch, Venue.name).outerjoin(Venue, Venue.id == Mismatch.venue_id)
             .order_by(Mismatch.opened_at.desc(), Mismatch.id.desc()))
    if status in ("open", "resolved"):
        query = query.where(Mismatch.status == status)
    if case in ("1", "2", "3"):
        query = query.where(Mismatch.case == int(case))
    if account:
        query = query.where(Mismatch.account_id == account)
    return list(s.execute(query.limit(limit).offset(offset)))


def timeline(s: Session, m: Mismatch, platform_account: str | None, limit: int
             ) -> list[StripeEvent]:
    """The newest events of this account and mode that named the subscription or the
    customer (the ids recorded at intake, indexed: this reads only those events)."""
    account = StripeEvent.account_id == m.account_id
    if m.account_id == platform_account:
        account = or_(account, StripeEvent.account_id.is_(None))
    named = or_(StripeEvent.subscription_id == m.subscription_id,
                StripeEvent.customer_id == m.customer_id)
    return list(s.scalars(
        select(StripeEvent).where(named, account, StripeEvent.livemode == m.livemode)
        .order_by(StripeEvent.created.desc(), StripeEvent.id.desc()).limit(limit)))


def venue_names(s: Session) -> list[Row[Any]]:
    return list(s.execute(select(Venue.account_id, Venue.name).order_by(Venue.name)))


def venue_exists(s: Session, account_id: str) -> bool:
    return s.scalar(select(Venue.id).where(Venue.account_id == account_id)) is not None


def customer_fixes(s: Session, customer_id: str) -> list[StripeAction]:
    """The "create the customer in the right account" actions asked for this customer."""
    return list(s.scalars(select(StripeAction).where(
        StripeAction.kind == CREATE_CUSTOMER,
        StripeAction.target == customer_id).order_by(StripeAction.id.desc())))


def member_email(s: Session, customer_id: str, account_id: str) -> str | None:
    return s.scalar(select(Member.email).join(Venue, Venue.id == Member.venue_id).where(
        Venue.account_id == account_id, Member.stripe_customer_id == customer_id))
