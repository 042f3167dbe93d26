"""The workers' commands on the `mismatch` CLI: run a worker, sweep, feed records in, catch up
with Stripe, send the daily digest. Each hands work to the queue through `try_enqueue`, so a
Redis outage leaves it to the sweeper instead of aborting halfway."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import TypeVar

import click
import stripe
from flask import Flask
from sqlalchemy import select

from config import Config, ConfigError, load_config, production_problems
from db import Database, Venue
from db.imports import import_members, import_venues
from db.records import InvalidInput
from workers.jobs import EVENT, NOTICE, VENUE_RECHECK, queue_after_commit
from workers.queue import Kind, record_reconcile, try_enqueue
from workers.runtime import runtime
from workers.stripe_side.api import StripeApi, StripeUnavailable

T = TypeVar("T")


def init_app(app: Flask) -> None:
    for command in (worker, sweep_cmd, venues_group, members_group, replay_cmd,
                    reconcile_cmd, diagnose_cmd, digest_cmd, retry_notices_cmd, stripe_group,
                    prune_cmd):
        app.cli.add_command(command)


def _state() -> tuple[Config, Database]:
    """The process's configuration and database, as the jobs see them; a configuration
    error, or a database without the schema, stops the command with one line naming it and
    the fix (before anything is created on its behalf)."""
    try:
        config = load_config(create_instance=False)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    _require_schema(config)
    return runtime()


def _require_schema(config: Config) -> None:
    probe = Database(config.database_url)
    try:
        problem = probe.schema_problem()
    finally:
        probe.dispose()
    if problem:
        raise click.ClickException(
            f"{problem}: run `mismatch db upgrade` first, or run this where the service runs "
            f"(its folder, or the same DATABASE_URL)")


def _stripe(config: Config) -> StripeApi:
    if not config.stripe_secret_key:
        raise click.ClickException("STRIPE_SECRET_KEY is not set: this command reads Stripe")
    return StripeApi(config)


def _track(items: Iterable[T], label: str) -> Iterator[T]:
    """A progress bar on a terminal (stderr, so the command's output stays clean)."""
    with click.progressbar(items, label=label, file=sys.stderr, show_pos=True) as bar:
        yield from bar


def _queue_all(kind: Kind, config: Config, keys: Iterable[object], what: str) -> None:
    left = [key for key in keys if not try_enqueue(config, kind, key)]
    if left:
        click.echo(f"note: {len(left)} {what} not queued (Redis unreachable); the sweeper "
                   f"queues them within a minute", err=True)


# --- running ---------------------------------------------------------------------------------

@click.command("worker")
@click.option("--burst", is_flag=True, help="Drain the queue, then exit.")
@click.option("--sweep-every", default=30.0, show_default=True,
              help="Seconds between sweeps for stuck events (0 disables).")
def worker(burst: bool, sweep_every: float) -> None:
    """Run an RQ worker for the mismatch queue (with retries and the periodic sweep)."""
    from workers.service import run_worker

    run_worker(_state()[0], burst=burst, sweep_every=sweep_every)


@click.command("sweep")
@click.option("--failed", "include_failed", is_flag=True,
              help="Also reset and replay events that failed for good.")
@click.option("--all", "everything", is_flag=True,
              help="Do not wait for the one-minute grace period.")
def sweep_cmd(include_failed: bool, everything: bool) -> None:
    """Queue again stored events, re-checks and notices that were never queued."""
    from workers.upkeep.sweep import sweep

    config, db = _state()
    counts = sweep(config, db, include_failed=include_failed,
                   older_than=timedelta(0) if everything else None)
    click.echo(", ".join(f"{k}: {v}" for k, v in counts.items()))


# --- records from the booking product ---------------------------------------------------------

@click.group("venues")
def venues_group() -> None:
    """Venues (connected accounts)."""


@venues_group.command("import")
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--dry-run", is_flag=True, help="Say what the file would change; write nothing.")
def venues_import(path: str, dry_run: bool) -> None:
    """Upsert venues from CSV: account_id,name,admin_emails,livemode (emails ';'-separated).
    Prints every existing venue the file changes, and how."""
    try:
        report = import_venues(_state()[1], path, dry_run=dry_run)
    except InvalidInput as exc:
        raise click.ClickException(str(exc)) from None
    for line in report.lines():
        click.echo(line)


@click.group("members")
def members_group() -> None:
    """Members of venues."""


@members_group.command("import")
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--dry-run", is_flag=True, help="Say what the file would change; write nothing.")
def members_import(path: str, dry_run: bool) -> None:
    """Upsert members from CSV: account_id,member_ref,email,name,stripe_customer_id (an
    empty customer id unlinks). Prints every existing member the file changes, and how."""
    config, db = _state()
    try:
        report = import_members(db, path, dry_run=dry_run)
    except InvalidInput as exc:
        raise click.ClickException(str(exc)) from None
    if not dry_run:
        _queue_all(VENUE_RECHECK, config, sorted(report.venue_ids), "venue re-checks")
    for line in report.lines():
        click.echo(line)


# --- catching up with Stripe ----------------------------------------------------------------

@click.command("replay")
@click.option("--since", required=True, type=click.DateTime(["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S"]),
              help="Replay events created at or after this date (UTC).")
@click.option("--account", default=None, help="Only this account (acct_…).")
@click.option("--now", "inline", is_flag=True, help="Process here instead of queueing.")
@click.option("--undelivered", is_flag=True,
              help="Only events Stripe reports as not delivered (delivery_success=false).")
def replay_cmd(since: datetime, account: str | None, inline: bool, undelivered: bool) -> None:
    """List events through the Events API and feed the missing ones through the inbox."""
    from workers.matching.inbox import handle_events
    from workers.upkeep.recovery import replay

    config, db = _state()
    summary = replay(config, db, _stripe(config), since.replace(tzinfo=UTC), account,
                     echo=click.echo, track=_track, undelivered=undelivered)
    if inline:
        outcomes = handle_events(config, db, StripeApi(config), summary.new_event_ids,
                                 after_commit=partial(queue_after_commit, config))
        for event_id, outcome in outcomes.items():
            if not outcome.done:
                click.echo(f"{event_id}: {outcome.reason}", err=True)
    else:
        _queue_all(EVENT, config, summary.new_event_ids, "events")
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
    from workers.upkeep.recovery import reconcile

    config, db = _state()
    summary = reconcile(config, db, _stripe(config), account, echo=click.echo, track=_track,
                        check_members=not no_member_check)
    _queue_all(NOTICE, config, summary.notices, "notices")
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
    from notifications.outbox import queue_missed_webhooks_alert

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
    _queue_all(NOTICE, config, alerts, "alerts to SUPPORT_EMAIL")


@click.command("diagnose")
@click.argument("customer_id")
@click.option("--account", default=None, help="The venue the customer should belong to.")
@click.option("--fix", is_flag=True, help="Create the customer in the right account and "
                                          "relink the member.")
@click.option("--yes", is_flag=True, help="Do not ask before --fix changes anything.")
def diagnose_cmd(customer_id: str, account: str | None, fix: bool, yes: bool) -> None:
    """Explain a "No such customer" error: which account and mode hold the customer."""
    from workers.upkeep.recovery import diagnose, fix_member_link

    if not customer_id.startswith("cus_"):
        raise click.ClickException(f"{customer_id!r} is not a customer ID (cus_…)")
    config, db = _state()
    api = _stripe(config)
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
    _queue_all(VENUE_RECHECK, config, [fixed.venue_id], "venue re-checks")


# --- notices ---------------------------------------------------------------------------------

@click.command("digest")
@click.option("--account", default=None, help="Only this venue (acct_…).")
def digest_cmd(account: str | None) -> None:
    """Send each digest venue's admins one email listing its new mismatches (run daily)."""
    from notifications.outbox import build_digests

    config, db = _state()
    ids = build_digests(db, account)
    _queue_all(NOTICE, config, ids, "digest emails")
    click.echo(f"queued {len(ids)} digest emails")


@click.command("retry-notices")
def retry_notices_cmd() -> None:
    """Send again the notices that failed for good (after fixing SMTP_URL)."""
    from notifications.outbox import retry_failed

    config, db = _state()
    ids = retry_failed(db)
    _queue_all(NOTICE, config, ids, "notices")
    click.echo(f"queued {len(ids)} failed notices again")


@click.group("stripe")
def stripe_group() -> None:
    """Set up and check the platform's Stripe webhook endpoints."""


@stripe_group.command("setup")
@click.option("--url", "base_url", default=None,
              help="The service's public address (default PUBLIC_BASE_URL), https://host.")
@click.option("--yes", is_flag=True, help="Do not ask before changing anything in Stripe.")
def stripe_setup_cmd(base_url: str | None, yes: bool) -> None:
    """Create or update the platform and Connect endpoints: our URL, exactly the event types
    handled, the API version pinned. Prints new signing secrets and where each goes."""
    from workers.stripe_side.setup import API_VERSION, EVENT_TYPES, apply, plan, secret_lines

    config, db = _state()
    base = (base_url or config.public_base_url).rstrip("/")
    if not base.startswith(("https://", "http://")) or " " in base:
        raise click.ClickException(f"--url: expected https://host, got {base!r}")
    if config.production and not base.startswith("https://"):
        raise click.ClickException("--url: Stripe sends live events to https:// URLs only")
    api = _stripe(config)
    try:
        changes = plan(api.webhook_endpoints(), base)
    except StripeUnavailable as exc:
        raise click.ClickException(f"{exc}; nothing was changed") from None
    click.echo(f"{len(EVENT_TYPES)} event types, API version {API_VERSION}, at {base}")
    for change in changes:
        click.echo(f"  {change.describe()}")
    writes = [c for c in changes if c.writes]
    if not writes:
        click.echo("Nothing to change.")
        return
    if not yes:
        click.confirm(f"Make {len(writes)} change{'s' if len(writes) != 1 else ''} in "
                      f"Stripe?", abort=True)
    try:
        applied = apply(db, api, changes)
    except (StripeUnavailable, stripe.StripeError) as exc:
        raise click.ClickException(
            f"Stripe refused a change ({type(exc).__name__}); what was done is in "
            f"stripe_actions, and running setup again finishes the rest") from None
    for item in applied:
        if item.change.writes:
            click.echo(f"done: {item.change.kind} {item.change.name} endpoint "
                       f"{item.endpoint_id or item.change.endpoint_id}")
    lines = secret_lines(applied)
    if lines:
        click.echo("\nNew signing secrets (Stripe shows each only once; put them in the "
                   "service's environment and restart it):")
        for line in lines:
            click.echo(f"  {line}")


@stripe_group.command("check")
def stripe_check_cmd() -> None:
    """The configuration doctor: every problem found with its fix; exits 1 on any."""
    from workers.stripe_side.doctor import check, production_findings

    # Production's laptop defaults stop every other command; here they are findings, and
    # the rest of the check runs on the configuration as it stands.
    findings = production_findings(production_problems(os.environ))
    _say(findings)
    try:
        config = load_config(create_instance=False, allow_production_problems=True)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    _require_schema(config)
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


def _say(findings: Iterable) -> None:  # type: ignore[type-arg]
    for finding in findings:
        click.echo(f"PROBLEM [{finding.code}] {finding.problem}\n  fix: {finding.fix}")


@click.command("prune")
@click.option("--older-than-days", "days", type=click.IntRange(min=1), default=None,
              help="Default PAYLOAD_RETENTION_DAYS (90).")
@click.option("--from-start", is_flag=True,
              help="Walk the whole inbox, not only from where the last run stopped.")
def prune_cmd(days: int | None, from_start: bool) -> None:
    """Empty the payloads of finished events past the retention age; their rows stay
    (dedup, timelines, tallies). Workers also run this daily."""
    from workers.upkeep.retention import prune

    config, db = _state()
    done = prune(config, db, days=days, from_start=from_start)
    click.echo(f"{done.payloads} payloads emptied (events received over "
               f"{days or config.payload_retention_days} days ago, processed or ignored); "
               f"{done.rejected} refused deliveries and {done.thin} fetched thin events "
               f"deleted")
