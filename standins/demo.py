"""`make demo` (python -m standins.demo): play the story of each case against a running
service, so a newcomer can watch a webhook become a mismatch, a notice and a support page in a
minute."""

from __future__ import annotations

import json
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import replace
from pathlib import Path
from typing import Any

import click
import stripe

from config import Config, load_config
from listener.cli import dev_session_path
from standins.localstripe import LocalStripe

DEMO_VENUE = "acct_1DemoHarbourGym"

class Service:
    """The running service, reached over HTTP like Stripe and the booking product reach it."""

    def __init__(self, url: str, token: str) -> None:
        self.url, self.token = url.rstrip("/"), token

    def request(self, method: str, path: str, body: Any = None,
                headers: dict[str, str] | None = None, raw: bytes | None = None) -> Any:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None
                                            else None)
        req = urllib.request.Request(self.url + path, data=data, method=method, headers={
            "Content-Type": "application/json", "Authorization": f"Bearer {self.token}",
            **(headers or {})})
        try:
            with urllib.request.urlopen(req, timeout=10) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            raise click.ClickException(
                f"{method} {path}: HTTP {exc.code} {exc.read().decode()[:300]}") from None
        except urllib.error.URLError as exc:
            raise click.ClickException(
                f"cannot reach {self.url} ({exc.reason}); start it with `make run`") from None

    def deliver(self, payload: dict[str, Any], secret: str) -> None:
        body = json.dumps(payload)
        path = "/webhooks/stripe/connect" if payload.get("account") else "/webhooks/stripe"
        self.request("POST", path, raw=body.encode(), headers={
            "Stripe-Signature": stripe.WebhookSignature.generate_signature_header(body, secret)})


def _event(type_: str, obj: dict[str, Any], account: str, n: int) -> dict[str, Any]:
    return {"id": f"evt_demo_{int(time.time())}_{n}", "object": "event", "type": type_,
            "created": int(time.time()), "livemode": False, "account": account,
            "data": {"object": obj}, "api_version": "2024-06-20"}


def _connect_stories(service: Service, secret: str, stamp: str) -> list[str]:
    """Connect flows, as signed payloads (localstripe has no Connect)."""
    customers = {
        "linked": (f"cus_DemoLinked{stamp}", "lena.linked@example.com"),
        "case 1": (f"cus_DemoOutside{stamp}", "omar.owner@example.com"),
        "case 2": (f"cus_DemoNew{stamp}", "nina.new@example.com"),
        "case 3": (f"cus_DemoStranger{stamp}", "sam.stranger@example.com"),
    }
    members = [("M-100", "lena.linked@example.com", "Lena Linked", customers["linked"][0]),
               ("M-200", "Omar.Owner@example.com", "Omar Owner", f"cus_DemoOmarOld{stamp}"),
               ("M-300", "nina.new@example.com", "Nina New", None)]
    for ref, email, name, cus in members:
        service.request("PUT", f"/api/venues/{DEMO_VENUE}/members/{ref}",
                        {"email": email, "name": name, "stripe_customer_id": cus})
    subs = []
    for n, (story, (cus, email)) in enumerate(customers.items()):
        sub = f"sub_Demo{story.replace(' ', '').title()}{stamp}"
        service.deliver(_event("customer.created", {
            "id": cus, "object": "customer", "email": email, "name": None}, DEMO_VENUE, 2 * n),
            secret)
        service.deliver(_event("customer.subscription.created", {
            "id": sub, "object": "subscription", "customer": cus, "status": "active"},
            DEMO_VENUE, 2 * n + 1), secret)
        click.echo(f"  {story:<7} {sub} (customer {cus})")
        subs.append(sub)
    return subs


def _platform_story(service: Service, platform: str, secret: str, folder: Path) -> str | None:
    """A Dashboard-made subscription on the platform account, through localstripe, which
    really sends signed webhooks to the service."""
    try:
        local = LocalStripe(folder)
    except RuntimeError:
        click.echo("  (localstripe did not start; skipping the platform story)")
        return None
    try:
        local.send_webhooks_to(service.url + "/webhooks/stripe", secret)
        client = local.client()
        product = client.v1.products.create(params={"name": "Monthly membership"})
        plan = client.v1.plans.create(params={"amount": 4900, "currency": "usd",
                                              "interval": "month", "product": product.id})
        customer = client.v1.customers.create(params={"email": "paula.payment-link@example.com",
                                                      "name": "Paula"})
        sub = client.v1.subscriptions.create(params={
            "customer": customer.id, "items": [{"plan": plan.id}], "trial_period_days": 14})
        click.echo(f"  case 3  {sub.id} on the platform account {platform} (via localstripe)")
        time.sleep(2)  # localstripe delivers its webhooks asynchronously
        return sub.id
    finally:
        local.stop()


def _running_serve(config: Config) -> dict[str, str]:
    try:
        found = json.loads(dev_session_path(config).read_text())
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


@click.command("demo")
@click.option("--url", default=None,
              help="The running service (default: what `mismatch serve` / `make run` in this "
                   "folder serves, else http://127.0.0.1:5000).")
def demo(url: str | None) -> None:
    """Create a demo venue and members, then play linked, case 1, case 2 and case 3."""
    config = load_config()
    running = _running_serve(config)
    url = url or running.get("url") or "http://127.0.0.1:5000"
    # What this shell lacks, the running serve says (development only: it writes no file
    # in production).
    config = replace(
        config, api_token=config.api_token or running.get("api_token"),
        connect_webhook_secrets=config.connect_webhook_secrets
        or tuple(filter(None, [running.get("connect_secret")])),
        webhook_secrets=config.webhook_secrets
        or tuple(filter(None, [running.get("platform_secret")])),
        stripe_platform_account=config.stripe_platform_account
        or running.get("platform_account"))
    if not config.api_token:
        raise click.ClickException("API_TOKEN is not set (make run sets dev-token)")
    if not config.connect_webhook_secrets:
        raise click.ClickException("STRIPE_CONNECT_WEBHOOK_SECRETS is not set")
    service = Service(url, config.api_token)
    service.request("GET", "/readyz")
    stamp = str(int(time.time()))[-6:]
    service.request("PUT", f"/api/venues/{DEMO_VENUE}", {
        "name": "Harbour Gym (demo)", "admin_emails": ["owner@harbourgym.example",
                                                         "frontdesk@harbourgym.example"],
        "livemode": False})
    click.echo(f"venue {DEMO_VENUE} with members M-100 (linked), M-200, M-300\n"
               "playing the stories:")
    subs = _connect_stories(service, config.connect_webhook_secrets[0], stamp)
    if config.stripe_platform_account and config.webhook_secrets:
        service.request("PUT", f"/api/venues/{config.stripe_platform_account}", {
            "name": "Platform studio (demo)", "admin_emails": ["studio@platform.example"],
            "livemode": False})
        with tempfile.TemporaryDirectory() as folder:
            platform_sub = _platform_story(service, config.stripe_platform_account,
                                           config.webhook_secrets[0], Path(folder))
        if platform_sub:
            subs.append(platform_sub)
    else:
        click.echo("  (set STRIPE_PLATFORM_ACCOUNT and STRIPE_WEBHOOK_SECRETS for the "
                   "localstripe platform story)")

    found: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        rows = service.request("GET", "/api/mismatches?limit=1000")["mismatches"]
        found = {m["subscription_id"]: m for m in rows if m["subscription_id"] in subs}
        if len(found) >= len(subs) - 1:  # the linked one never becomes a mismatch
            break
        time.sleep(0.5)
    click.echo("\nresult:")
    for sub in subs:
        m = found.get(sub)
        if m is None:
            click.echo(f"  {sub:<34} linked (no mismatch, no email)")
        else:
            click.echo(f"  {sub:<34} case {m['case']}  {url}/mismatches/{m['id']}")
    where = (f"SMTP {config.smtp.host}:{config.smtp.port}" if config.smtp
             else f"{url}/outbox  (files: {config.instance_path / 'outbox'})")
    click.echo(f"\nemails: {where}\nsupport console: {url}/support\n"
               f"API: curl -H 'Authorization: Bearer {config.api_token}' {url}/api/mismatches")


if __name__ == "__main__":
    demo()
