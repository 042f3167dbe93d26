"""Render a notice from its `.txt` and `.html` templates under templates/email/.

Every value is passed to the templates raw: the `.html` templates autoescape (a customer
called `<script>` arrives as text), the `.txt` ones never do. The HTML is then CSS-inlined,
because most mail clients drop `<style>` blocks, and never references anything remote.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import quote

import css_inline
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from sqlalchemy import select
from sqlalchemy.orm import Session

from config import Config
from db import Mismatch, Notification, StripeCustomer, Subscription, Venue
from notifications.links import describe_age, mismatch_link

# The three cases in the venue admin's words (DESIGN "The three cases").
CASE_TITLES = {
    1: "A member is being billed on a second Stripe customer",
    2: "A member's subscription was created outside the booking system",
    3: "Someone who isn't a member is being billed in Stripe",
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


@dataclass
class Rendered:
    subject: str
    text: str
    html: str
    headers: dict[str, str] = field(default_factory=dict)


def _wrap(value: str, width: int = 72, indent: str = "", first: str | None = None) -> str:
    """Fill a paragraph for the plain-text part (continuation lines get `indent`); ends
    with a newline, so a template line after `{% endfilter %}` starts on its own line."""
    return textwrap.fill(" ".join(str(value).split()), width=width,
                         initial_indent=indent if first is None else first,
                         subsequent_indent=indent, break_long_words=False,
                         break_on_hyphens=False) + "\n"


@cache
def env() -> Environment:
    import templates

    root = Path(templates.__file__).parent / "email"
    environment = Environment(loader=FileSystemLoader(root),
                              autoescape=select_autoescape(["html"]),
                              undefined=StrictUndefined, trim_blocks=True,
                              lstrip_blocks=True, keep_trailing_newline=True)
    environment.filters["wrap"] = _wrap
    return environment


@cache
def _inliner() -> css_inline.CSSInliner:
    # Never fetch anything: the message must render the same offline.
    return css_inline.CSSInliner(load_remote_stylesheets=False, keep_style_tags=False,
                                 keep_link_tags=False)


def inline_css(html: str) -> str:
    """Move the `<style>` rules onto the elements, as mail clients need."""
    return _inliner().inline(html)


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


def _header_text(value: str, limit: int = 120) -> str:
    """One line, no control characters: header values must never break the message."""
    cleaned = " ".join("".join(ch if ch.isprintable() else " " for ch in value).split())
    return cleaned[:limit]


def mismatch_context(config: Config, session: Session, mismatch: Mismatch,
                     venue: Venue | None) -> dict[str, Any]:
    """Everything a case template shows, looked up once."""

    def dash(kind: str, object_id: str) -> str:
        return dashboard_url(mismatch.account_id, mismatch.livemode,
                             f"{kind}/{quote(object_id, safe='')}",
                             config.stripe_platform_account)

    mirrored = session.scalar(select(StripeCustomer).where(
        StripeCustomer.account_id == mismatch.account_id,
        StripeCustomer.livemode == mismatch.livemode,
        StripeCustomer.customer_id == mismatch.customer_id))
    subscription = session.scalar(select(Subscription).where(
        Subscription.account_id == mismatch.account_id,
        Subscription.subscription_id == mismatch.subscription_id))
    status = subscription.status if subscription is not None else None
    member = mismatch.member
    candidates = list(mismatch.candidates or [])
    venue_name = venue.name if venue else mismatch.account_id
    return {
        "case": mismatch.case,
        "title": CASE_TITLES[mismatch.case],
        "short_fix": CASE_SHORT_FIX[mismatch.case],
        "mismatch": mismatch,
        "venue_name": venue_name,
        "livemode": mismatch.livemode,
        "mode": "live mode" if mismatch.livemode else "test mode",
        "email": mismatch.customer_email,
        "customer_name": mirrored.name if mirrored is not None else None,
        "note": mismatch.note,
        "member": member,
        "candidates": candidates if len(candidates) > 1 else [],
        "subscription_status": status,
        "no_charge_reason": NO_CHARGE_STATUSES.get(status or ""),
        "refund_clause": NO_CHARGE_SHORT.get(status or "", "refund if charged"),
        # Signed: a venue admin has no account with us, the link is the permission.
        "mismatch_url": mismatch_link(config, mismatch.id, mismatch.account_id),
        "link_age": describe_age(config.mismatch_link_max_age),
        "subscription_url": dash("subscriptions", mismatch.subscription_id),
        "customer_url": dash("customers", mismatch.customer_id),
        "linked_customer_url": dash("customers", mismatch.linked_customer_id)
        if mismatch.linked_customer_id else None,
        "opened_at": mismatch.opened_at.strftime("%d %b %Y, %H:%M UTC")
        if mismatch.opened_at else "",
    }


def _mismatch_notice(config: Config, session: Session, notification: Notification
                     ) -> tuple[str, dict[str, Any], str, dict[str, str]]:
    mismatch = session.get(Mismatch, notification.mismatch_id)
    if mismatch is None:
        raise LookupError(f"mismatch {notification.mismatch_id} no longer exists")
    venue = session.get(Venue, mismatch.venue_id) if mismatch.venue_id else None
    ctx = mismatch_context(config, session, mismatch, venue)
    mode = "" if mismatch.livemode else " [test mode]"
    subject = (f"[{_header_text(ctx['venue_name'], 60)}] Case {mismatch.case}: "
               f"{ctx['title']} ({mismatch.subscription_id}){mode}")
    headers = {
        "X-Mismatch-Case": str(mismatch.case),
        "X-Mismatch-Id": str(mismatch.id),
        "X-Stripe-Account": mismatch.account_id,
        "X-Stripe-Subscription": mismatch.subscription_id,
    }
    return f"case_{mismatch.case}", ctx, subject, headers


def _digest(config: Config, session: Session, notification: Notification
            ) -> tuple[str, dict[str, Any], str, dict[str, str]]:
    venue = session.get(Venue, notification.context["venue_id"])
    item_ids = notification.context.get("item_ids", [])
    mismatch_ids = sorted(set(session.scalars(
        select(Notification.mismatch_id).where(Notification.id.in_(item_ids)))) - {None})
    mismatches = [session.get(Mismatch, i) for i in mismatch_ids]
    items = [mismatch_context(config, session, m, venue) for m in mismatches if m is not None]
    venue_name = venue.name if venue else "your venue"
    count = len(items)
    noun = "subscription" if count == 1 else "subscriptions"
    subject = (f"[{_header_text(venue_name, 60)}] Daily summary: {count} {noun} created "
               f"outside the booking system")
    headers = {"X-Mismatch-Digest": str(count),
               "X-Mismatch-Ids": ",".join(str(m.id) for m in mismatches if m is not None)}
    if venue is not None:
        headers["X-Stripe-Account"] = venue.account_id
    ctx = {"venue_name": venue_name, "items": items, "count": count,
           "livemode": venue.livemode if venue else True,
           "link_age": describe_age(config.mismatch_link_max_age)}
    return "digest", ctx, subject, headers


def _unrouted(config: Config, notification: Notification
              ) -> tuple[str, dict[str, Any], str, dict[str, str]]:
    ctx = dict(notification.context)
    ctx["venue_name"] = "Platform support"
    ctx["dashboard_url"] = dashboard_url(ctx["account_id"], bool(ctx.get("livemode")),
                                         "dashboard", config.stripe_platform_account)
    subject = f"Stripe events for an account with no venue: {ctx['account_id']}"
    return "unrouted", ctx, subject, {"X-Stripe-Account": ctx["account_id"]}


def render_notice(config: Config, session: Session, notification: Notification) -> Rendered:
    """Subject, text, inlined HTML and the X- headers for one outbox row."""
    if notification.kind == "unrouted":
        template, ctx, subject, headers = _unrouted(config, notification)
    elif notification.kind == "digest":
        template, ctx, subject, headers = _digest(config, session, notification)
    elif notification.mismatch_id is not None:
        template, ctx, subject, headers = _mismatch_notice(config, session, notification)
    else:
        raise ValueError(f"notification {notification.id}: nothing to render for kind "
                         f"{notification.kind!r}")
    ctx["subject"] = subject
    ctx["recipient"] = notification.recipient
    text = env().get_template(f"{template}.txt").render(**ctx)
    html = inline_css(env().get_template(f"{template}.html").render(**ctx))
    return Rendered(subject=_header_text(subject, 200), text=text, html=html, headers=headers)
