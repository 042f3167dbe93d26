"""One view of a mismatch for every place that shows one: the notice emails, the digest, the
mismatch page and (with placeholders) the remediation guides. The facts, the case wording
and the Stripe Dashboard links are worked out here once."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from sqlalchemy import select
from sqlalchemy.orm import Session

from config import Config
from db import Member, Mismatch, StripeCustomer, Subscription, Venue

# The three cases in the venue admin's words.
CASE_TITLES = {
    1: "A member is being billed on a second Stripe customer",
    2: "A member's subscription was created outside the booking system",
    3: "Someone who isn't a member is being billed in Stripe",
}
CASE_SHORT = {
    1: "Member has a different Stripe customer",
    2: "Member has no Stripe customer yet",
    3: "No member with this email",
}
# The last step of each case's fix, for the one-line summary in the digest.
CASE_SHORT_FIX = {
    1: "recreate the membership in the booking system (invite link, or assign membership "
       "- which charges immediately)",
    2: "send the member a membership invite link from the booking system",
    3: "invite the person to the booking system so they sign up and buy there",
}
# Stripe subscription statuses in which no payment has been taken.
NO_CHARGE_STATUSES = {
    "trialing": "the subscription is still in its free trial, so nobody has been charged yet",
    "incomplete": "the first payment never went through, so nobody has been charged",
    "incomplete_expired": "the first payment never went through, so nobody has been charged",
}
NO_CHARGE_SHORT = {
    "trialing": "no refund needed (still trialing)",
    "incomplete": "no refund needed (the first payment never went through)",
    "incomplete_expired": "no refund needed (the first payment never went through)",
}


def dashboard_url(account_id: str, livemode: bool, path: str, platform_account: str | None
                  ) -> str:
    """A deep link into the Stripe Dashboard for that account and mode: connected accounts
    get the `/acct_…` prefix (the Dashboard switches to that account), test mode `/test`."""
    base = "https://dashboard.stripe.com"
    if account_id and account_id != platform_account:
        base += f"/{quote(account_id, safe='')}"
    if not livemode:
        base += "/test"
    return f"{base}/{path.lstrip('/')}"


@dataclass
class MismatchView:
    """What the steps of a case refer to. On a guide page (`guide`) the IDs are placeholders."""

    case: int
    guide: bool = False
    mismatch_id: int | None = None
    status: str = "open"
    resolution: str | None = None
    venue_name: str = "the venue"
    account_id: str = "acct_…"
    livemode: bool = False
    subscription_id: str = "sub_…"
    subscription_status: str | None = None
    customer_id: str = "cus_…"
    linked_customer_id: str | None = None
    email: str | None = None
    customer_name: str | None = None
    customer_deleted: bool = False  # deleted in Stripe (its email and name are purged)
    member_ref: str | None = None
    member_name: str | None = None
    candidates: list[dict[str, Any]] = field(default_factory=list)
    note: str | None = None
    opened_at: datetime | None = None
    subscription_url: str | None = None
    customer_url: str | None = None
    linked_customer_url: str | None = None
    payments_url: str | None = None
    account_url: str | None = None
    # The page's address for whoever reads this: in an email, the signed link of its admin.
    link: str | None = None

    @property
    def title(self) -> str:
        return CASE_TITLES[self.case]

    @property
    def short_title(self) -> str:
        return CASE_SHORT[self.case]

    @property
    def short_fix(self) -> str:
        return CASE_SHORT_FIX[self.case]

    @property
    def mode(self) -> str:
        return "live mode" if self.livemode else "test mode"

    @property
    def nothing_charged(self) -> bool:
        return (self.subscription_status or "") in NO_CHARGE_STATUSES

    @property
    def no_charge_reason(self) -> str | None:
        return NO_CHARGE_STATUSES.get(self.subscription_status or "")

    @property
    def refund_clause(self) -> str:
        return NO_CHARGE_SHORT.get(self.subscription_status or "", "refund if charged")

    @property
    def several_candidates(self) -> list[dict[str, Any]]:
        """The members sharing the email, when there is more than one."""
        return self.candidates if len(self.candidates) > 1 else []

    @property
    def opened(self) -> str:
        if self.opened_at is None:
            return ""
        value = self.opened_at if self.opened_at.tzinfo else self.opened_at.replace(tzinfo=UTC)
        return value.astimezone(UTC).strftime("%d %b %Y, %H:%M UTC")


def mismatch_view(config: Config, session: Session, mismatch: Mismatch,
                  venue: Venue | None = None, *, link: str | None = None) -> MismatchView:
    """The view of one stored mismatch, with its mirror, subscription and member looked up."""
    if venue is None and mismatch.venue_id is not None:
        venue = session.get(Venue, mismatch.venue_id)

    def dash(path: str) -> str:
        return dashboard_url(mismatch.account_id, mismatch.livemode, path,
                             config.stripe_platform_account)

    mirrored = session.scalar(select(StripeCustomer).where(
        StripeCustomer.account_id == mismatch.account_id,
        StripeCustomer.livemode == mismatch.livemode,
        StripeCustomer.customer_id == mismatch.customer_id))
    subscription = session.scalar(select(Subscription).where(
        Subscription.account_id == mismatch.account_id,
        Subscription.subscription_id == mismatch.subscription_id))
    member = session.get(Member, mismatch.member_id) if mismatch.member_id else None
    customer = quote(mismatch.customer_id, safe="")
    return MismatchView(
        case=mismatch.case, mismatch_id=mismatch.id, status=mismatch.status,
        resolution=mismatch.resolution,
        venue_name=venue.name if venue else mismatch.account_id,
        account_id=mismatch.account_id, livemode=mismatch.livemode,
        subscription_id=mismatch.subscription_id,
        subscription_status=subscription.status if subscription is not None else None,
        customer_id=mismatch.customer_id, linked_customer_id=mismatch.linked_customer_id,
        email=(mismatch.customer_email or "").strip() or None,
        customer_name=mirrored.name if mirrored is not None else None,
        customer_deleted=bool(mirrored is not None and mirrored.deleted),
        member_ref=member.member_ref if member else None,
        member_name=member.name if member else None,
        candidates=list(mismatch.candidates or []), note=mismatch.note,
        opened_at=mismatch.opened_at,
        subscription_url=dash(f"subscriptions/{quote(mismatch.subscription_id, safe='')}"),
        customer_url=dash(f"customers/{customer}"),
        linked_customer_url=dash(f"customers/{quote(mismatch.linked_customer_id, safe='')}")
        if mismatch.linked_customer_id else None,
        payments_url=dash(f"payments?customer={customer}"),
        account_url=dash("dashboard"),
        link=link,
    )


def guide_view(case: int) -> MismatchView:
    """A case's steps with placeholders for the IDs (the remediation guides)."""
    return MismatchView(case=case, guide=True)
