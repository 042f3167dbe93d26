"""Render a notice from its `.txt` and `.html` templates under templates/email/."""

from __future__ import annotations

from dataclasses import dataclass, field

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from config import Config
from db import Mismatch, Notification, Venue


@dataclass
class Rendered:
    subject: str
    text: str
    html: str
    headers: dict[str, str] = field(default_factory=dict)


def _env() -> Environment:
    from pathlib import Path

    import templates

    root = Path(templates.__file__).parent / "email"
    return Environment(loader=FileSystemLoader(root), autoescape=select_autoescape(["html"]),
                       undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)


_ENV = None


def env() -> Environment:
    global _ENV
    if _ENV is None:
        _ENV = _env()
    return _ENV


def dashboard_url(account_id: str, livemode: bool, path: str, platform_account: str | None
                  ) -> str:
    """A deep link into the Stripe Dashboard for that account and mode."""
    base = "https://dashboard.stripe.com"
    if account_id and account_id != platform_account:
        base += f"/{account_id}"
    if not livemode:
        base += "/test"
    return f"{base}/{path.lstrip('/')}"


def render_notice(config: Config, notification: Notification, mismatch: Mismatch | None,
                  venue: Venue | None) -> Rendered:
    if notification.kind == "unrouted":
        ctx = dict(notification.context)
        template = "unrouted"
        subject = f"Stripe events for an unknown account {ctx['account_id']}"
        headers = {"X-Stripe-Account": ctx["account_id"]}
    else:
        assert mismatch is not None
        template = f"case_{mismatch.case}"
        ctx = mismatch_context(config, mismatch, venue)
        subject = ctx["subject"]
        headers = {
            "X-Mismatch-Case": str(mismatch.case),
            "X-Mismatch-Id": str(mismatch.id),
            "X-Stripe-Account": mismatch.account_id,
            "X-Stripe-Subscription": mismatch.subscription_id,
        }
    ctx["config"] = config
    text = env().get_template(f"{template}.txt").render(**ctx)
    html = env().get_template(f"{template}.html").render(**ctx)
    return Rendered(subject=subject, text=text, html=html, headers=headers)


def mismatch_context(config: Config, mismatch: Mismatch, venue: Venue | None) -> dict:
    dash = lambda path: dashboard_url(  # noqa: E731
        mismatch.account_id, mismatch.livemode, path, config.stripe_platform_account)
    return {
        "subject": f"Membership billed outside the booking system (case {mismatch.case}) — "
                   f"{mismatch.subscription_id}",
        "mismatch": mismatch,
        "venue": venue,
        "venue_name": venue.name if venue else mismatch.account_id,
        "mismatch_url": f"{config.public_base_url}/mismatches/{mismatch.id}",
        "subscription_url": dash(f"subscriptions/{mismatch.subscription_id}"),
        "customer_url": dash(f"customers/{mismatch.customer_id}"),
        "linked_customer_url": dash(f"customers/{mismatch.linked_customer_id}")
        if mismatch.linked_customer_id else None,
        "candidates": mismatch.candidates or [],
    }
