"""Catching up with Stripe when webhooks were lost: replay the Events API into the inbox,
reconcile every live subscription against the members, and diagnose one customer ID.

All three read Stripe by list (paginated, never search) or by ID, within the rate limit.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, TypeVar

import click
from sqlalchemy import select
from sqlalchemy.orm import Session

from config import Config
from db import (
    Database,
    EventStatus,
    Member,
    StripeEvent,
    Subscription,
    Venue,
    insert_ignoring_duplicates,
    object_id,
    utcnow,
)
from notifications.outbox import queue_missed_webhooks_alert
from workers.cli import queue_all, state, stripe_for, track
from workers.jobs import EVENT, NOTICE, VENUE_RECHECK, queue_after_commit
from workers.matching.batch import Batch
from workers.matching.classify import (
    SIMILAR_MODE,
    EmailNotYetKnown,
    mirror_customer,
    observe_subscription,
)
from workers.matching.handlers import HANDLERS
from workers.matching.inbox import handle_events
from workers.matching.subjects import CustomerSeen, SubscriptionSeen
from workers.queue import record_reconcile
from workers.stripe_side.actions import fix_member_link
from workers.stripe_side.api import StripeApi, StripeUnavailable

EVENT_RETENTION = timedelta(days=30)  # Stripe's Events API returns the last 30 days only

Echo = Callable[[str], None]
T = TypeVar("T")
# Wraps a loop's items for a progress display (the CLI passes click's progress bar).
Track = Callable[[Iterable[Any], str], Iterable[Any]]


def _untracked(items: Iterable[T], _label: str) -> Iterable[T]:
    return items


def _accounts(session: Session, config: Config, account: str | None
              ) -> list[tuple[str | None, Venue | None]]:
    """(account to ask Stripe as, its venue): the platform, then every venue's account."""
    venues = {v.account_id: v for v in session.scalars(select(Venue).order_by(Venue.account_id))}
    if account:
        if account == config.stripe_platform_account:
            return [(None, venues.get(account))]
        return [(account, venues.get(account))]
    result: list[tuple[str | None, Venue | None]] = [
        (None, venues.get(config.stripe_platform_account or ""))]
    result += [(acct, v) for acct, v in venues.items() if acct != config.stripe_platform_account]
    return result


# --- replay ---------------------------------------------------------------------------------

@dataclass
class ReplaySummary:
    listed: int = 0
    new: int = 0
    known: int = 0
    skipped_types: int = 0
    list_calls: int = 0
    new_event_ids: list[str] = field(default_factory=list)
    clamped_since: datetime | None = None


def replay(config: Config, db: Database, api: StripeApi, since: datetime,
           account: str | None = None, echo: Echo = print, track: Track = _untracked,
           *, undelivered: bool = False) -> ReplaySummary:
    """Feed events Stripe has but our inbox lacks through the same inbox (dedup by id).
    `undelivered`: only those Stripe reports as not delivered to an endpoint
    (`delivery_success=false`), each account asked separately."""
    summary = ReplaySummary()
    oldest = datetime.now(UTC) - EVENT_RETENTION
    if since < oldest:
        summary.clamped_since = oldest
        echo(f"note: Stripe keeps events for 30 days; replaying from {oldest:%Y-%m-%d %H:%M} "
             f"UTC instead of {since:%Y-%m-%d}. Use `mismatch reconcile` for anything older.")
        since = oldest
    with db.session() as session:
        targets = _accounts(session, config, account)
    for acct, _venue in targets:
        # Listed before the transaction: no Stripe call while one is open.
        params: dict[str, Any] = {"created": {"gte": int(since.timestamp())}}
        if undelivered:
            params["delivery_success"] = False
        events = list(api.list_all(f"events.list {acct or 'platform'}", api.client.v1.events.list,
                                   acct, params))
        # The API answers newest first; the handlers are order-independent, but oldest
        # first keeps the mirror and timeline natural.
        events.sort(key=lambda e: (e.get("created", 0), e.get("id", "")))
        with db.session() as session:
            for item in track(events, f"events of {acct or 'the platform'}"):
                summary.listed += 1
                if item.get("type") not in HANDLERS:
                    summary.skipped_types += 1
                    continue
                if acct:
                    item["account"] = acct
                new_id = insert_ignoring_duplicates(session, StripeEvent, dict(
                    event_id=item["id"], endpoint="connect" if acct else "platform",
                    account_id=acct, livemode=bool(item.get("livemode")), type=item["type"],
                    created=int(item.get("created") or 0), payload=json.dumps(item),
                    status=EventStatus.RECEIVED, attempts=0, received_at=utcnow(),
                ), returning=StripeEvent.id)
                if new_id is None:
                    summary.known += 1
                else:
                    summary.new += 1
                    summary.new_event_ids.append(item["id"])
    summary.list_calls = api.list_calls
    return summary


# --- reconcile ------------------------------------------------------------------------------

@dataclass
class Finding:
    """A member's stored customer ID that points outside the venue's account or mode."""

    account_id: str
    member_ref: str
    customer_id: str
    problem: str  # wrong_account | wrong_mode | deleted | missing
    detail: str


@dataclass
class ReconcileSummary:
    by_venue: dict[str, Counter] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    list_calls: int = 0
    subscriptions: int = 0
    new_mismatches: int = 0
    notices: list[int] = field(default_factory=list)  # outbox rows to send
    # Subscriptions reconcile had to record because no event about them had reached us: the
    # missed-webhook alarm, per venue account (their IDs).
    missed: dict[str, list[str]] = field(default_factory=dict)


def reconcile(config: Config, db: Database, api: StripeApi, account: str | None = None,
              echo: Echo = print, track: Track = _untracked, check_members: bool = True
              ) -> ReconcileSummary:
    """Classify every non-canceled subscription of each venue with the matching rules."""
    summary = ReconcileSummary()
    with db.session() as session:
        targets = [(acct, v) for acct, v in _accounts(session, config, account) if v is not None]
    for acct, venue in targets:
        assert venue is not None
        counts: Counter = Counter()
        seen_at = int(time.time())
        # Default listing excludes canceled subscriptions; no search, one call per page, and
        # the customers come expanded so classifying needs no call per subscription. Each
        # page is fetched before its transaction opens.
        pages = api.list_pages(f"subscriptions.list {venue.account_id}",
                               api.client.v1.subscriptions.list, acct,
                               {"expand": ["data.customer"]})
        for page in track(pages, f"subscription pages of {venue.account_id}"):
            with db.session() as session:  # one transaction per page
                venue_row = session.get(Venue, venue.id)
                assert venue_row is not None
                batch = Batch(session, config)
                known = _known_subscriptions(session, venue.account_id, page)
                for sub in page:
                    outcome = _reconcile_one(batch, venue_row, sub, seen_at)
                    if outcome not in ("canceled", "other_mode") and sub.get("id") not in known:
                        summary.missed.setdefault(venue.account_id, []).append(sub["id"])
                    if outcome != "canceled":  # the listing leaves them out anyway
                        counts[outcome] += 1
                    if outcome not in ("canceled", "other_mode"):
                        summary.subscriptions += 1
            summary.new_mismatches += batch.notices_due
            summary.notices += batch.notices
        summary.by_venue[venue.account_id] = counts
        if check_members:
            summary.findings += _check_member_links(config, db, api, venue)
    summary.list_calls = api.list_calls
    return summary


def _known_subscriptions(session: Session, account_id: str,
                         page: list[dict[str, Any]]) -> set[str]:
    """Which of a page's subscriptions an event had already told us about."""
    ids = [sub["id"] for sub in page if isinstance(sub.get("id"), str)]
    return set(session.scalars(select(Subscription.subscription_id).where(
        Subscription.account_id == account_id, Subscription.subscription_id.in_(ids))))


def _reconcile_one(batch: Batch, venue: Venue, sub: dict[str, Any], seen_at: int) -> str:
    """One listed subscription through the same rules as its events; the list is the newest
    truth, so it counts as seen now."""
    if sub.get("status") == "canceled":
        return "canceled"
    if bool(sub.get("livemode")) != venue.livemode:
        return "other_mode"
    customer = sub.get("customer")
    seen = SubscriptionSeen(
        venue.account_id, venue.livemode, sub["id"],
        object_id(customer) or "",
        sub.get("status"), canceled=False, created=seen_at,
        customer=CustomerSeen.from_object(customer, venue.account_id, venue.livemode, seen_at)
        if isinstance(customer, dict) else None)
    try:
        return observe_subscription(batch, venue, seen)
    except EmailNotYetKnown:  # an unexpanded customer nobody mirrored: its events will tell
        return "email_unknown"


def _check_member_links(config: Config, db: Database, api: StripeApi, venue: Venue
                        ) -> list[Finding]:
    """Members whose customer ID is not in the venue's own account and mode."""
    findings = []
    with db.session() as session:
        members = list(session.scalars(select(Member).where(
            Member.venue_id == venue.id, Member.stripe_customer_id.is_not(None))))
        batch = Batch(session, config)
        unmirrored = [m for m in members if batch.find_mirrored(
            venue.account_id, venue.livemode, m.stripe_customer_id or "") is None]
    for member in unmirrored:
        customer_id = member.stripe_customer_id or ""
        verdict = locate_customer(config, api, customer_id, venue)
        if verdict.problem:
            findings.append(Finding(venue.account_id, member.member_ref, customer_id,
                                    verdict.problem, verdict.sentence))
        elif verdict.found_in == venue.account_id:
            with db.session() as session:
                mirror_customer(Batch(session, config), CustomerSeen(
                    venue.account_id, venue.livemode, customer_id, verdict.email, None,
                    deleted=False, created=0))
    return findings


# --- diagnose -------------------------------------------------------------------------------

@dataclass
class Location:
    """Where a customer ID lives, relative to the venue that should own it."""

    customer_id: str
    found_in: str | None = None  # account id where it exists
    livemode: bool | None = None
    deleted: bool = False
    email: str | None = None
    other_mode: str | None = None  # "live"/"test" when Stripe says it exists in that mode
    problem: str | None = None
    sentence: str = ""


def _mode(livemode: bool | None) -> str:
    return "live" if livemode else "test"


def locate_customer(config: Config, api: StripeApi, customer_id: str, venue: Venue | None,
                    extra_accounts: Iterable[str] = ()) -> Location:
    """Look in the venue's account, then the platform, then `extra_accounts`; say what is
    wrong in one sentence."""
    loc = Location(customer_id)
    accounts: list[str | None] = []
    if venue is not None:
        accounts.append(venue.account_id)
    if config.stripe_platform_account not in accounts or not accounts:
        accounts.append(config.stripe_platform_account)  # None = the platform itself
    accounts += [a for a in extra_accounts if a not in accounts]
    for acct in accounts:
        record = api.retrieve_customer(acct, customer_id)
        acct = acct or config.stripe_platform_account
        if record.found:
            loc.found_in = acct or "the platform account"
            loc.livemode, loc.deleted, loc.email = record.livemode, record.deleted, record.email
            break
        match = SIMILAR_MODE.search(record.not_found_message or "")
        if match and loc.other_mode is None:
            loc.other_mode = match.group(1).lower()
    where = venue.account_id if venue else None
    venue_mode = _mode(venue.livemode) if venue else None
    if loc.found_in is None:
        if loc.other_mode:
            loc.problem = "wrong_mode"
            runs_in = f"venue {where} runs in {venue_mode} mode" if where else \
                f"our key is a {'test' if loc.other_mode == 'live' else 'live'}-mode key"
            loc.sentence = (f"{customer_id} exists only in {loc.other_mode} mode, but {runs_in}:"
                            f" the stored ID was copied from the wrong mode.")
        else:
            loc.problem = "missing"
            loc.sentence = (f"No account we can reach has {customer_id} (checked "
                            f"{', '.join(a or 'the platform' for a in accounts)}): the ID is "
                            f"wrong or belongs to another platform.")
    elif where and loc.found_in != where:
        loc.problem = "wrong_account"
        loc.sentence = (f"{customer_id} lives in {loc.found_in}, not in the venue's connected "
                        f"account {where}: charges and subscriptions for it never reach the "
                        f"venue.")
    elif loc.deleted:
        loc.problem = "deleted"
        loc.sentence = f"{customer_id} was deleted in {loc.found_in}."
    elif venue is not None and loc.livemode is not None and loc.livemode != venue.livemode:
        loc.problem = "wrong_mode"
        loc.sentence = (f"{customer_id} is a {_mode(loc.livemode)}-mode customer, but venue "
                        f"{where} runs in {venue_mode} mode.")
    else:
        loc.sentence = (f"{customer_id} exists in {loc.found_in} ({_mode(loc.livemode)} mode) "
                        f"and is not deleted.")
    return loc


@dataclass
class Diagnosis:
    location: Location
    members: list[tuple[str, str]]  # (account_id, member_ref) linking to the customer
    fix: str
    fixable: bool


def diagnose(config: Config, db: Database, api: StripeApi, customer_id: str,
             account: str | None = None) -> Diagnosis:
    """The support SOP for "No such customer", automated."""
    with db.session() as session:
        linked = list(session.execute(
            select(Venue.account_id, Member.member_ref, Venue.id)
            .join(Member, Member.venue_id == Venue.id)
            .where(Member.stripe_customer_id == customer_id)))
        venue_account = account or (linked[0][0] if linked else None)
        venue = session.scalar(select(Venue).where(Venue.account_id == venue_account)) \
            if venue_account else None
        others = [a for a in session.scalars(select(Venue.account_id)) if a != venue_account]
    if not config.stripe_secret_key:
        raise StripeUnavailable("diagnose needs STRIPE_SECRET_KEY to ask Stripe")
    location = locate_customer(config, api, customer_id, venue, extra_accounts=others)
    members = [(a, r) for a, r, _ in linked]
    fixable = bool(venue is not None and location.problem and members)
    if location.problem is None:
        fix = ("Nothing to fix in Stripe." if members else
               f"No member links to {customer_id}; link it through the API or a CSV import if "
               f"it belongs to one.")
    elif fixable and venue is not None:
        fix = (f"Create the customer in {venue.account_id} ({_mode(venue.livemode)} mode) with "
               f"the member's email and link the member to it: run again with --fix --yes.")
    else:
        fix = "Check which venue this customer belongs to and link the member by hand."
    return Diagnosis(location, members, fix, fixable)


@dataclass(frozen=True)
class Pasted:
    """What support pasted from a "No such customer" ticket, read out."""

    customer_id: str | None
    account_id: str | None = None  # from the request_log_url
    livemode: bool | None = None
    request_log_url: str | None = None
    message: str | None = None


_CUSTOMER_ID = re.compile(r"\bcus_[A-Za-z0-9]{1,60}\b")
_LOG_URL = re.compile(r"https://dashboard\.stripe\.com/(?:(acct_[A-Za-z0-9]{1,40})/)?"
                      r"(?:(test)/)?logs/(req_[A-Za-z0-9]{1,40})[^\s\"'<>]*")


def read_pasted(text: str) -> Pasted:
    """A `cus_…`, Stripe's error payload (JSON or not) or its `request_log_url`: the customer
    and, when the log URL is there, the account and mode that handled the request."""
    text = text[:20_000]
    message: str | None = None
    try:
        payload = json.loads(text)
        error = payload.get("error") if isinstance(payload, dict) else None
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            message = error["message"][:500]
    except ValueError:
        pass
    found = _CUSTOMER_ID.search(text)
    log_url = _LOG_URL.search(text)
    return Pasted(
        customer_id=found.group(0) if found else None,
        account_id=log_url.group(1) if log_url else None,
        livemode=(log_url.group(2) is None) if log_url else None,
        request_log_url=log_url.group(0) if log_url else None,
        message=message)


def same_email_customers(api: StripeApi, account_id: str, email: str) -> list[str]:
    """Other customers with this email in the venue's account (at most one page)."""
    for page in api.list_pages(f"customers.list {account_id}", api.client.v1.customers.list,
                               account_id, {"email": email}):
        return [c["id"] for c in page if not c.get("deleted")]
    return []


# --- the command ---------------------------------------------------------------------------

@click.command("replay")
@click.option("--since", required=True, type=click.DateTime(["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S"]),
              help="Replay events created at or after this date (UTC).")
@click.option("--account", default=None, help="Only this account (acct_…).")
@click.option("--now", "inline", is_flag=True, help="Process here instead of queueing.")
@click.option("--undelivered", is_flag=True,
              help="Only events Stripe reports as not delivered (delivery_success=false).")
def replay_cmd(since: datetime, account: str | None, inline: bool, undelivered: bool) -> None:
    """List events through the Events API and feed the missing ones through the inbox."""
    config, db = state()
    summary = replay(config, db, stripe_for(config), since.replace(tzinfo=UTC), account,
                     echo=click.echo, track=track, undelivered=undelivered)
    if inline:
        outcomes = handle_events(config, db, StripeApi(config), summary.new_event_ids,
                                 after_commit=partial(queue_after_commit, config))
        for event_id, outcome in outcomes.items():
            if not outcome.done:
                click.echo(f"{event_id}: {outcome.reason}", err=True)
    else:
        queue_all(EVENT, config, summary.new_event_ids, "events")
    which = "undelivered events" if undelivered else "events"
    click.echo(f"listed {summary.listed} {which} in {summary.list_calls} list calls: "
               f"{summary.new} new, {summary.known} already in the inbox, "
               f"{summary.skipped_types} of types we do not handle")


@click.command("reconcile")
@click.option("--account", default=None, help="Only this venue (acct_…).")
@click.option("--no-member-check", is_flag=True,
              help="Skip checking members' stored customer IDs (wrong account / mode).")
def reconcile_cmd(account: str | None, no_member_check: bool) -> None:
    """Classify every non-canceled subscription of each venue ("Sync from Stripe")."""
    config, db = state()
    summary = reconcile(config, db, stripe_for(config), account, echo=click.echo, track=track,
                        check_members=not no_member_check)
    queue_all(NOTICE, config, summary.notices, "notices")
    click.echo(f"\n{'venue':<28} {'linked':>7} {'case 1':>7} {'case 2':>7} {'case 3':>7} "
               f"{'canceled':>9} {'other mode':>10}")
    for acct, counts in summary.by_venue.items():
        case = {n: sum(v for k, v in counts.items() if k.startswith(f"case_{n}"))
                for n in (1, 2, 3)}
        canceled = sum(v for k, v in counts.items() if k.endswith("_canceled"))
        click.echo(f"{acct:<28} {counts.get('linked', 0):>7} {case[1]:>7} {case[2]:>7} "
                   f"{case[3]:>7} {canceled:>9} {counts.get('other_mode', 0):>10}")
    for finding in summary.findings:
        click.echo(f"finding: {finding.account_id} member {finding.member_ref} -> "
                   f"{finding.customer_id}: {finding.problem.replace('_', ' ')} — "
                   f"{finding.detail}")
    click.echo(f"\n{summary.subscriptions} subscriptions, {summary.new_mismatches} new "
               f"mismatches, {summary.list_calls} list calls")
    _missed_webhooks_alarm(config, db, summary.missed, whole_run=account is None)


def _missed_webhooks_alarm(config: Config, db: Database, missed: dict[str, list[str]], *,
                           whole_run: bool) -> None:
    """Reconcile as the missed-webhook alarm: say how many subscriptions no event had told us
    about, keep the count for /metrics, and email SUPPORT_EMAIL (once per account per day)."""
    total = sum(len(subs) for subs in missed.values())
    click.echo(f"{total} subscription{'s' if total != 1 else ''} had to be repaired because "
               f"no event had reached us" + (f": {', '.join(sorted(missed))}" if total else ""))
    if whole_run:
        record_reconcile(config, total)
    alerts: list[int] = []
    with db.session() as session:
        for account_id, subscription_ids in sorted(missed.items()):
            venue = session.scalar(select(Venue).where(Venue.account_id == account_id))
            alerts += queue_missed_webhooks_alert(session, config, account_id,
                                                  bool(venue and venue.livemode),
                                                  subscription_ids)
    queue_all(NOTICE, config, alerts, "alerts to SUPPORT_EMAIL")


@click.command("diagnose")
@click.argument("customer_id")
@click.option("--account", default=None, help="The venue the customer should belong to.")
@click.option("--fix", is_flag=True, help="Create the customer in the right account and "
                                          "relink the member.")
@click.option("--yes", is_flag=True, help="Do not ask before --fix changes anything.")
def diagnose_cmd(customer_id: str, account: str | None, fix: bool, yes: bool) -> None:
    """Explain a "No such customer" error: which account and mode hold the customer."""
    if not customer_id.startswith("cus_"):
        raise click.ClickException(f"{customer_id!r} is not a customer ID (cus_…)")
    config, db = state()
    api = stripe_for(config)
    result = diagnose(config, db, api, customer_id, account)
    loc = result.location
    click.echo(f"customer:  {customer_id}")
    click.echo(f"found in:  {loc.found_in or 'no account we can reach'}"
               + (f" ({'live' if loc.livemode else 'test'} mode)" if loc.found_in else "")
               + (" — deleted" if loc.deleted else ""))
    members = ", ".join(f"{a} member {r}" for a, r in result.members) or "none"
    click.echo(f"linked by: {members}")
    click.echo(f"\n{loc.sentence}\nFix: {result.fix}")
    if not fix:
        return
    if not result.fixable:
        raise click.ClickException("nothing --fix can do here; see the fix above")
    target = account or result.members[0][0]
    if not yes:
        if not sys.stdin.isatty():
            raise click.ClickException("--fix changes Stripe and our records: add --yes")
        click.confirm(f"Create a new customer in {target} and relink?", abort=True)
    fixed = fix_member_link(config, db, api, customer_id, target)
    for member_ref, old, new in fixed.changes:
        click.echo(f"member {member_ref}: {old} -> {new}")
    queue_all(VENUE_RECHECK, config, [fixed.venue_id], "venue re-checks")
