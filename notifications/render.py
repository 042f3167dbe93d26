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

import templates
from config import Config
from db import CUSTOMER_UNKNOWN, Mismatch, Notification, Venue
from notifications.links import describe_age, mismatch_link
from notifications.outbox import MISSED_WEBHOOKS, OUTBOUND_TROUBLE
from notifications.view import MismatchView, dashboard_url, mismatch_view


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


def _header_text(value: str, limit: int = 120) -> str:
    """One line, no control characters: header values must never break the message."""
    cleaned = " ".join("".join(ch if ch.isprintable() else " " for ch in value).split())
    return cleaned[:limit]


def _signed_view(config: Config, session: Session, mismatch: Mismatch,
                 venue: Venue | None) -> MismatchView:
    # Signed: a venue admin has no account with us, the link is the permission.
    return mismatch_view(config, session, mismatch, venue,
                         link=mismatch_link(config, mismatch.id, mismatch.account_id))


def _mismatch_notice(config: Config, session: Session, notification: Notification
                     ) -> tuple[str, dict[str, Any], str, dict[str, str]]:
    mismatch = session.get(Mismatch, notification.mismatch_id)
    if mismatch is None:
        raise LookupError(f"mismatch {notification.mismatch_id} no longer exists")
    venue = session.get(Venue, mismatch.venue_id) if mismatch.venue_id else None
    view = _signed_view(config, session, mismatch, venue)
    ctx = {"v": view, "venue_name": view.venue_name,
           "link_age": describe_age(config.mismatch_link_max_age)}
    mode = "" if mismatch.livemode else " [test mode]"
    subject = (f"[{_header_text(view.venue_name, 60)}] Case {mismatch.case}: "
               f"{view.title} ({mismatch.subscription_id}){mode}")
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
    mismatch_ids = sorted(i for i in set(session.scalars(
        select(Notification.mismatch_id).where(Notification.id.in_(item_ids)))) if i is not None)
    mismatches = [session.get(Mismatch, i) for i in mismatch_ids]
    items = [_signed_view(config, session, m, venue) for m in mismatches if m is not None]
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


# Support's alerts: the subject of each kind (templates/email/<kind>.txt and .html).
SUPPORT_ALERTS = {
    "unrouted": "Stripe events for an account with no venue: {account_id}",
    CUSTOMER_UNKNOWN: "Stripe says it has no such customer, in {account_id}: check our key",
    MISSED_WEBHOOKS: "Webhooks missed: reconcile found subscriptions we never heard of, in "
                     "{account_id}",
}


def _support_alert(config: Config, notification: Notification
                   ) -> tuple[str, dict[str, Any], str, dict[str, str]]:
    ctx = dict(notification.context)
    ctx["venue_name"] = "Platform support"
    ctx["dashboard_url"] = dashboard_url(ctx["account_id"], bool(ctx.get("livemode")),
                                         "dashboard", config.stripe_platform_account)
    subject = SUPPORT_ALERTS[notification.kind].format(account_id=ctx["account_id"])
    return notification.kind, ctx, subject, {"X-Stripe-Account": ctx["account_id"]}


def _destination_alert(config: Config, notification: Notification
                       ) -> tuple[str, dict[str, Any], str, dict[str, str]]:
    ctx = dict(notification.context)
    ctx["venue_name"] = "Platform support"
    ctx["page_url"] = f"{config.public_base_url}/destinations/{quote(ctx['destination'])}"
    what = "disabled" if ctx.get("trouble") == "disabled" else "failing"
    subject = f"Outbound messages {what}: destination {ctx['destination']}"
    return OUTBOUND_TROUBLE, ctx, subject, {}


def render_notice(config: Config, session: Session, notification: Notification) -> Rendered:
    """Subject, text, inlined HTML and the X- headers for one outbox row."""
    if notification.kind == OUTBOUND_TROUBLE:
        template, ctx, subject, headers = _destination_alert(config, notification)
    elif notification.kind in SUPPORT_ALERTS:
        template, ctx, subject, headers = _support_alert(config, notification)
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
