"""`mismatch stripe check`, the configuration doctor: what operators of webhook services get
wrong most — an endpoint never made or scoped to the wrong accounts, secrets swapped, a test
key against live venues, deliveries refused for weeks — each as a finding with its fix.

`gather` asks Stripe and the database (no transaction open during a Stripe call); `diagnose`
is pure: the facts in, the findings out. Workers run it hourly and keep the last result in
Redis for the console dashboard.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from typing import Any

import click
import stripe
from sqlalchemy import func, select

from config import (
    CONNECT,
    PLATFORM,
    SECRET_VARS,
    Config,
    ConfigError,
    load_config,
    production_problems,
)
from db import Database, RejectedDelivery, Venue, utcnow
from workers.cli import require_schema
from workers.queue import get_redis
from workers.stripe_side.api import StripeApi, StripeUnavailable, is_live_key
from workers.stripe_side.setup import API_VERSION, is_connect, missing_types, wanted

DOCTOR_KEY = "mismatch:doctor:last"
DOCTOR_DUE_KEY = "mismatch:doctor:due"
DOCTOR_EVERY = 3600  # seconds between the workers' own runs
REJECTIONS_WINDOW = timedelta(hours=24)

# What to do about each reason a delivery was refused (listener/webhooks.py).
REJECTION_FIXES = {
    "wrong_endpoint_secret": "The two endpoints' secrets are swapped (or their URLs): put each "
                             "endpoint's secret in its own variable, or run `mismatch stripe "
                             "setup`.",
    "wrong_endpoint": "An endpoint's URL points at the other route (platform events at "
                      "/connect or the reverse): run `mismatch stripe setup`.",
    "bad_signature": "No configured secret matches: the endpoint was re-created or its secret "
                     "rolled. Copy its signing secret from Stripe into the variable (keep the "
                     "old one, comma-separated, during a roll).",
    "endpoint_not_configured": "The endpoint's secret variable is empty: Stripe is retrying. "
                               "Set it.",
    "stale_timestamp": "Deliveries arrive older than STRIPE_WEBHOOK_TOLERANCE: check this "
                       "host's clock (NTP), or a proxy holding requests.",
    "future_timestamp": "Deliveries are signed in the future: check this host's clock (NTP).",
    "too_large": "Bodies over MAX_WEBHOOK_BYTES: raise it if these are Stripe's.",
    "slow_body": "Bodies that did not arrive within 10 s: a proxy buffering slowly, or junk "
                 "traffic.",
}
DEFAULT_REJECTION_FIX = ("Refused deliveries that were not Stripe's (no or malformed signature, "
                         "not an event): junk traffic, or a proxy altering bodies.")


@dataclass(frozen=True)
class SetupFinding:
    code: str
    problem: str
    fix: str


@dataclass
class Facts:
    """What the doctor knows, gathered first so the checks are plain functions of it."""

    key_set: bool
    key_live: bool
    platform_setting: str | None
    public_base_url: str
    production: bool
    secrets: dict[str, bool]  # endpoint name -> its secret variable is set
    venues: list[tuple[str, bool]]  # (account id, livemode)
    rejections: list[tuple[str, int]]  # (reason, count) in the window
    own_account: str | None = None
    endpoints: list[dict[str, Any]] | None = None  # None: Stripe did not answer
    connected: set[str] | None = None
    stripe_error: str | None = None  # why Stripe could not be asked
    errors: list[str] = field(default_factory=list)  # a part Stripe refused


def gather(config: Config, db: Database, api: StripeApi) -> Facts:
    with db.session() as s:
        venues = [(a, bool(live)) for a, live in s.execute(
            select(Venue.account_id, Venue.livemode).order_by(Venue.account_id))]
        rejections = [(reason, n) for reason, n in s.execute(
            select(RejectedDelivery.reason, func.count())
            .where(RejectedDelivery.received_at >= utcnow() - REJECTIONS_WINDOW)
            .group_by(RejectedDelivery.reason).order_by(func.count().desc()))]
    facts = Facts(
        key_set=bool(config.stripe_secret_key), key_live=is_live_key(config.stripe_secret_key),
        platform_setting=config.stripe_platform_account,
        public_base_url=config.public_base_url, production=config.production,
        secrets={PLATFORM: bool(config.webhook_secrets),
                 CONNECT: bool(config.connect_webhook_secrets)},
        venues=venues, rejections=rejections)
    if not facts.key_set:
        return facts
    try:
        facts.own_account = api.own_account()
    except (StripeUnavailable, stripe.StripeError) as exc:
        cause = exc.__cause__ if isinstance(exc, StripeUnavailable) else exc
        facts.stripe_error = type(cause or exc).__name__
        return facts
    for part, read in (("endpoints", api.webhook_endpoints),
                       ("connected", api.connected_accounts)):
        try:
            setattr(facts, part, read())
        except (StripeUnavailable, stripe.StripeError) as exc:
            facts.errors.append(f"{part}: {type(exc).__name__}")
    return facts


def production_findings(problems: list[tuple[str, str]]) -> list[SetupFinding]:
    """config.production_problems as findings: each laptop default production still has."""
    fixes = {
        "DATABASE_URL": "Set DATABASE_URL to the PostgreSQL database (postgresql://…).",
        "REDIS_URL": "Set REDIS_URL to the Redis every web and worker process shares.",
        "SMTP_URL": "Set SMTP_URL (smtp://user:pass@host:587?starttls=1) so notices reach "
                    "the venues' admins.",
        "SECRET_KEY": "Set SECRET_KEY to a random value of 32 characters or more, the same "
                      "in every process (changing it ends every sign-in and notice link).",
    }
    return [SetupFinding(f"production_{name.lower()}", f"{name} is {why}.",
                         fixes.get(name, f"Set {name}.")) for name, why in problems]


def diagnose(facts: Facts) -> list[SetupFinding]:
    findings: list[SetupFinding] = []
    add = findings.append
    if facts.production and not facts.public_base_url.startswith("https://"):
        add(SetupFinding("public_url_http", f"PUBLIC_BASE_URL is {facts.public_base_url} in "
                    "production: Stripe sends live events to HTTPS URLs only, and notice links "
                    "would go out unencrypted.", "Set PUBLIC_BASE_URL to the https:// address."))
    for name in (PLATFORM, CONNECT):
        if not facts.secrets[name]:
            add(SetupFinding(f"{name}_secret_missing", f"{SECRET_VARS[name]} is not set: every "
                        f"{name} delivery is refused (503) and Stripe keeps retrying.",
                        f"Put the {name} endpoint's signing secret (whsec_…) in "
                        f"{SECRET_VARS[name]}; `mismatch stripe setup` prints it when it "
                        "creates the endpoint."))
    findings += _key_findings(facts)
    if facts.endpoints is not None:
        findings += _endpoint_findings(facts)
    for reason, count in facts.rejections:
        add(SetupFinding(f"rejected_{reason}", f"{count} deliver{'ies' if count != 1 else 'y'} "
                    f"refused in the last 24 h: {reason}.",
                    REJECTION_FIXES.get(reason, DEFAULT_REJECTION_FIX)))
    return findings


def _key_findings(facts: Facts) -> list[SetupFinding]:
    findings: list[SetupFinding] = []
    add = findings.append
    if not facts.key_set:
        add(SetupFinding("no_key", "STRIPE_SECRET_KEY is not set: customers cannot be looked up "
                    "and nothing here can be checked against Stripe.",
                    "Set STRIPE_SECRET_KEY to the platform's secret key."))
        return findings
    mode = "live" if facts.key_live else "test"
    other = [a for a, live in facts.venues if live != facts.key_live]
    if other:
        add(SetupFinding("key_mode", f"The key is a {mode} key but {len(other)} venue"
                    f"{'s are' if len(other) != 1 else ' is'} in "
                    f"{'test' if facts.key_live else 'live'} mode ({_ids(other)}): their "
                    "customers cannot be read with it.",
                    f"Use the {'test' if facts.key_live else 'live'} key (sk_"
                    f"{'test' if facts.key_live else 'live'}_…) for them, or correct the "
                    "venues' livemode."))
    if facts.stripe_error:
        add(SetupFinding("key_rejected", f"Stripe did not answer with this key "
                    f"({facts.stripe_error}).",
                    "Check STRIPE_SECRET_KEY (revoked? a restricted key without account "
                    "read?) and STRIPE_API_BASE; run the check again."))
        return findings
    own = facts.own_account
    if not facts.platform_setting:
        add(SetupFinding("platform_account_unset", f"STRIPE_PLATFORM_ACCOUNT is not set; the key "
                    f"belongs to {own}. Platform events cannot be routed to a venue.",
                    f"Set STRIPE_PLATFORM_ACCOUNT={own}."))
    elif own and facts.platform_setting != own:
        add(SetupFinding("platform_account_wrong", f"STRIPE_PLATFORM_ACCOUNT is "
                    f"{facts.platform_setting} but the key belongs to {own}.",
                    f"Set STRIPE_PLATFORM_ACCOUNT={own}, or use that account's key."))
    for part in facts.errors:
        add(SetupFinding("stripe_partial", f"Stripe refused part of the check ({part}).",
                    "Use a key that can read webhook endpoints and connected accounts "
                    "(a standard secret key), then run the check again."))
    if facts.connected is not None:
        reachable = facts.connected | {own, facts.platform_setting}
        lost = [a for a, live in facts.venues if a not in reachable
                and live == facts.key_live]
        if lost:
            add(SetupFinding("venues_unreachable", f"{len(lost)} venue"
                        f"{'s' if len(lost) != 1 else ''} not connected to this platform "
                        f"({_ids(lost)}): the key cannot read their customers or events.",
                        "Reconnect those venues (Stripe Connect onboarding), or correct their "
                        "account ids (`mismatch venues import`)."))
    return findings


def _endpoint_findings(facts: Facts) -> list[SetupFinding]:
    findings: list[SetupFinding] = []
    add = findings.append
    endpoints = facts.endpoints or []
    fix = "Run `mismatch stripe setup --url " + facts.public_base_url + "`."
    for want in wanted(facts.public_base_url):
        at_url = [e for e in endpoints if e.get("url") == want.url]
        if not at_url:
            elsewhere = [e["id"] for e in endpoints
                         if is_connect(e) == want.connect and e.get("url", "").endswith(
                             want.url.split("/", 3)[-1])]
            hint = f" (one at another host: {_ids(elsewhere)})" if elsewhere else ""
            add(SetupFinding(f"{want.name}_endpoint_missing", f"No {want.name} endpoint in Stripe "
                        f"for {want.url}{hint}.", fix))
            continue
        for e in at_url:
            if is_connect(e) != want.connect:
                add(SetupFinding(f"{want.name}_endpoint_scope", f"{e['id']} at {want.url} is "
                            + ("scoped to connected accounts; it must listen to the "
                               "platform's own account." if is_connect(e) else
                               "scoped to \"Your account\"; it must listen to connected "
                               "accounts (connect: true)."), fix))
                continue
            if e.get("status") != "enabled":
                add(SetupFinding(f"{want.name}_endpoint_disabled", f"{e['id']} at {want.url} is "
                            f"{e.get('status')}: Stripe sends it nothing.", fix))
            lacking = missing_types(e)
            if lacking:
                add(SetupFinding(f"{want.name}_endpoint_events", f"{e['id']} does not send "
                            f"{', '.join(lacking)}.", fix))
            if e.get("api_version") != API_VERSION:
                add(SetupFinding(f"{want.name}_endpoint_api_version", f"{e['id']} renders events "
                            f"in {e.get('api_version') or 'the account default version'}, not "
                            f"{API_VERSION} (what this service reads).", fix))
        if len(at_url) > 1:
            add(SetupFinding(f"{want.name}_endpoint_duplicate", f"{len(at_url)} endpoints at "
                        f"{want.url} ({_ids(e['id'] for e in at_url)}): each event arrives "
                        "twice, one of them signed with a secret we may not have.", fix))
    return findings


def _ids(ids: Any, limit: int = 5) -> str:
    ids = list(ids)
    shown = ", ".join(ids[:limit])
    return shown + (f" and {len(ids) - limit} more" if len(ids) > limit else "")


# --- the last result, for the dashboard ----------------------------------------------------

def check(config: Config, db: Database, api: StripeApi) -> list[SetupFinding]:
    """Run the doctor and keep its result for the console."""
    findings = diagnose(gather(config, db, api))
    get_redis(config).set(DOCTOR_KEY, json.dumps(
        {"at": int(time.time()), "findings": [asdict(f) for f in findings]}))
    return findings


def check_if_due(config: Config, db: Database) -> bool:
    """The workers' hourly run: one worker per hour, whichever gets there first."""
    redis = get_redis(config)
    if not redis.set(DOCTOR_DUE_KEY, "1", nx=True, ex=DOCTOR_EVERY):
        return False
    try:
        check(config, db, StripeApi(config))
    except Exception:
        redis.delete(DOCTOR_DUE_KEY)  # not checked: the next sweep tries again
        raise
    return True


def last_setup_check(config: Config) -> tuple[int, list[SetupFinding]] | None:
    """(when, findings) of the last run, or None if it never ran."""
    raw = get_redis(config).get(DOCTOR_KEY)
    if not raw:
        return None
    data = json.loads(raw)
    return int(data["at"]), [SetupFinding(**f) for f in data["findings"]]


# --- the command ---------------------------------------------------------------------------

@click.command("check")
def stripe_check_cmd() -> None:
    """The configuration doctor: every problem found with its fix; exits 1 on any."""
    # Production's laptop defaults stop every other command; here they are findings, and
    # the rest of the check runs on the configuration as it stands.
    findings = production_findings(production_problems(os.environ))
    _say(findings)
    try:
        config = load_config(create_instance=False, allow_production_problems=True)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    require_schema(config)
    db = Database(config.database_url)
    try:
        found = check(config, db, StripeApi(config))
    finally:
        db.dispose()
    _say(found)
    total = len(findings) + len(found)
    if not total:
        click.echo("Stripe set-up OK: key, platform account, both endpoints, secrets, "
                   "venues reachable, no refused deliveries in the last 24 h.")
        return
    click.echo(f"{total} problem{'s' if total != 1 else ''} found.")
    sys.exit(1)


def _say(findings: Iterable[SetupFinding]) -> None:
    for finding in findings:
        click.echo(f"PROBLEM [{finding.code}] {finding.problem}\n  fix: {finding.fix}")
