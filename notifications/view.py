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
from db import Member, Mismatch, StripeCustomer, Subscription, Venue, payments_of

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
    charges: list[Charge] = field(default_factory=list)  # what the subscription charged
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
    # The booking product's invite page for this email, and the member's page (templates).
    invite_url: str | None = None
    member_url: str | None = None

    @property
    def title(self) -> str:
        return CASE_TITLES[self.case]

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
    def charge_lines(self) -> list[str]:
        """Each payment in one sentence, saying what to do about it (rule 7)."""
        return [c.sentence for c in self.charges]

    @property
    def refund_due(self) -> int:
        return sum(c.refundable for c in self.charges)

    @property
    def disputed(self) -> bool:
        return any(c.disputed for c in self.charges)

    @property
    def refund_clause(self) -> str:
        if self.disputed:
            return "a payment is disputed: don't refund, escalate"
        if self.charges:
            due = self.refund_due
            return (f"refund {money(due, self.charges[0].currency)}" if due
                    else "nothing left to refund")
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
        charges=charges_of(session, mismatch.account_id, mismatch.subscription_id),
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
        invite_url=_filled(config.invite_url_template, account_id=mismatch.account_id,
                           email=(mismatch.customer_email or "").strip()),
        member_url=_filled(config.member_url_template, account_id=mismatch.account_id,
                           member_ref=member.member_ref if member else ""),
    )


def _filled(template: str | None, **values: str) -> str | None:
    """A booking-product URL with each value URL-encoded; None without a template or when a
    value it needs is unknown."""
    if not template or any(not v and "{" + k + "}" in template for k, v in values.items()):
        return None
    return template.format(**{k: quote(v, safe="") for k, v in values.items()})


def guide_view(case: int) -> MismatchView:
    """A case's steps with placeholders for the IDs (the remediation guides)."""
    return MismatchView(case=case, guide=True)


@dataclass(frozen=True)
class Charge:
    """One payment as a notice, a page and the API show it."""

    invoice_id: str
    charge_id: str | None
    payment_intent_id: str | None
    amount: int
    currency: str
    paid_at: int
    amount_refunded: int
    disputed: bool

    @property
    def refundable(self) -> int:
        return 0 if self.disputed else max(0, self.amount - self.amount_refunded)

    @property
    def sentence(self) -> str:
        """"€49.00 charged on 22 Nov (in_…) — refund it", "refunded €49.00", "disputed …"."""
        paid = f"{money(self.amount, self.currency)} charged on {day(self.paid_at)} " \
               f"({self.invoice_id})"
        if self.disputed:
            return f"{paid} — disputed: don't refund, escalate"
        if self.amount_refunded >= self.amount > 0:
            return f"{paid} — refunded {money(self.amount_refunded, self.currency)}"
        if self.amount_refunded:
            return (f"{paid} — {money(self.amount_refunded, self.currency)} refunded, "
                    f"refund the other {money(self.refundable, self.currency)}")
        return f"{paid} — refund it" if self.amount else f"{paid} — nothing to refund"


def charges_of(session: Session, account_id: str, subscription_id: str) -> list[Charge]:
    return [Charge(p.invoice_id, p.charge_id, p.payment_intent_id, p.amount, p.currency,
                   p.paid_at, p.amount_refunded, p.disputed)
            for p in payments_of(session, account_id, subscription_id)]


CURRENCY_SIGNS = {"eur": "€", "usd": "$", "gbp": "£"}
ZERO_DECIMAL = {"jpy", "krw", "vnd", "clp", "pyg", "xof", "xaf", "ugx", "rwf", "kmf", "gnf",
                "djf", "bif", "mga", "vuv", "xpf"}


def money(amount: int, currency: str) -> str:
    """Stripe's minor units as people write them: 4900 eur → €49.00."""
    code = (currency or "").lower()
    value = f"{amount:,}" if code in ZERO_DECIMAL else f"{amount / 100:,.2f}"
    sign = CURRENCY_SIGNS.get(code)
    return f"{sign}{value}" if sign else f"{value} {code.upper()}".strip()


def day(timestamp: int) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%-d %b %Y")
