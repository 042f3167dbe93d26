"""The `mismatch` command: a Flask CLI group with the service's operational commands."""

from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import click
from flask import Flask
from flask.cli import FlaskGroup, with_appcontext

from config import ConfigError, load_config
from listener.demo import demo


def _create_app() -> Flask:
    from listener import create_app

    try:
        return create_app()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc


@click.group(cls=FlaskGroup, create_app=_create_app, add_default_commands=False,
             add_version_option=False)
def main() -> None:
    """Stripe webhook listener and mismatch detector."""


COMMANDS: list[click.Command] = []


def command(obj: click.Command) -> click.Command:
    """Collect a top-level command; init_app registers them on the app's CLI."""
    COMMANDS.append(obj)
    return obj


def init_app(app: Flask) -> None:
    for obj in COMMANDS:
        app.cli.add_command(obj)


# --- database --------------------------------------------------------------------------

@command
@click.group("db")
def db_group() -> None:
    """Database schema."""


@db_group.command("upgrade")
@with_appcontext
def db_upgrade() -> None:
    """Apply migrations up to the newest schema."""
    from db import upgrade
    from listener import current_config

    upgrade(current_config().database_url)
    click.echo("database schema is up to date")


# --- running -----------------------------------------------------------------------------

@command
@click.command("worker")
@click.option("--burst", is_flag=True, help="Drain the queue, then exit.")
@click.option("--sweep-every", default=30.0, show_default=True,
              help="Seconds between sweeps for stuck events (0 disables).")
@with_appcontext
def worker(burst: bool, sweep_every: float) -> None:
    """Run an RQ worker for the mismatch queue (with retries and the periodic sweep)."""
    from workers.service import run_worker

    run_worker(load_config(), burst=burst, sweep_every=sweep_every)


@command
@click.command("sweep")
@click.option("--failed", "include_failed", is_flag=True,
              help="Also reset and replay events that failed for good.")
@click.option("--all", "everything", is_flag=True,
              help="Do not wait for the one-minute grace period.")
@with_appcontext
def sweep_cmd(include_failed: bool, everything: bool) -> None:
    """Queue again stored events, re-checks and notices that were never queued."""
    from datetime import timedelta

    from listener import current_config, current_db
    from workers.jobs import sweep

    counts = sweep(current_config(), current_db(), include_failed=include_failed,
                   older_than=timedelta(0) if everything else None)
    click.echo(", ".join(f"{k}: {v}" for k, v in counts.items()))


@command
@click.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=5000, show_default=True, type=int)
@click.option("--web-workers", default=2, show_default=True, type=int)
@click.option("--workers", "rq_workers", default=1, show_default=True, type=int)
def serve(host: str, port: int, web_workers: int, rq_workers: int) -> None:
    """Run web + worker(s) together; starts the embedded Redis when REDIS_URL is unset."""
    from db import upgrade
    from workers.queue import redis_url

    try:
        config = load_config()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    upgrade(config.database_url)
    env = dict(os.environ)
    env["REDIS_URL"] = redis_url(config)
    env.setdefault("DATABASE_URL", config.database_url)
    env.setdefault("INSTANCE_PATH", str(config.instance_path))
    metrics_dir = config.instance_path / "prometheus"
    shutil.rmtree(metrics_dir, ignore_errors=True)
    metrics_dir.mkdir(parents=True)
    env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    bin_dir = Path(sys.executable).parent
    procs = [subprocess.Popen([
        str(bin_dir / "gunicorn"), "--bind", f"{host}:{port}", "--workers", str(web_workers),
        "--worker-class", "gthread", "--threads", "2",
        # Path only (%(U)s), never the query string: notice links carry signed tokens.
        "--access-logfile", "-", "--access-logformat", '%(h)s "%(m)s %(U)s" %(s)s %(b)s %(L)ss',
        "--graceful-timeout", "10", "listener.wsgi:app",
    ], env=env)]
    for _ in range(rq_workers):
        procs.append(subprocess.Popen([str(bin_dir / "mismatch"), "worker"], env=env))
    base = f"http://{host}:{port}"
    mail = (f"SMTP {config.smtp.host}" if config.smtp
            else f"local outbox {config.instance_path / 'outbox'} (and {base}/outbox)")
    click.echo(f"""
  service     {base}   (health {base}/readyz, metrics {base}/metrics)
  webhooks    POST {base}/webhooks/stripe          (platform events)
              POST {base}/webhooks/stripe/connect  (connected-account events)
  database    {config.database_url}
  redis       {env['REDIS_URL']}
  mail        {mail}
  Ctrl-C stops everything.
""")
    stop = threading.Event()

    def _stop(*_args: object) -> None:
        stop.set()

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    while not stop.is_set():
        if any(p.poll() is not None for p in procs):
            click.echo("a child process exited; stopping", err=True)
            break
        time.sleep(0.5)
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            p.kill()


# --- venues and members ------------------------------------------------------------------

VENUE_HEADER = ["account_id", "name", "admin_emails", "livemode"]
MEMBER_HEADER = ["account_id", "member_ref", "email", "name", "stripe_customer_id"]


def _rows(path: str, header: list[str]):  # type: ignore[no-untyped-def]
    """Yield (line number, row) from a CSV whose header must be exactly `header`."""
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        try:
            first = next(reader)
        except StopIteration:
            raise click.ClickException(f"{path}: line 1: the file is empty") from None
        if [h.strip() for h in first] != header:
            raise click.ClickException(
                f"{path}: line 1: header must be {','.join(header)} (got {','.join(first)})")
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                raise click.ClickException(
                    f"{path}: line {reader.line_num}: expected {len(header)} fields, "
                    f"got {len(row)}")
            yield reader.line_num, dict(zip(header, (c.strip() for c in row), strict=True))


def _import(path: str, header: list[str], apply) -> tuple[int, set[int]]:  # type: ignore[no-untyped-def]
    """All rows in one transaction: a bad row fails the file, and nothing is written."""
    from listener import current_db
    from listener.sync import InvalidInput

    count, venues = 0, set()
    try:
        with current_db().session() as s:
            for line, row in _rows(path, header):
                try:
                    venues.add(apply(s, row))
                except InvalidInput as exc:
                    raise click.ClickException(f"{path}: line {line}: {exc}") from None
                count += 1
    except OSError as exc:
        raise click.ClickException(f"{path}: {exc.strerror}") from None
    return count, venues


@command
@click.group("venues")
def venues_group() -> None:
    """Venues (connected accounts)."""


@venues_group.command("import")
@click.argument("path", type=click.Path(dir_okay=False))
@with_appcontext
def venues_import(path: str) -> None:
    """Upsert venues from CSV: account_id,name,admin_emails,livemode (emails ';'-separated)."""
    from listener.sync import upsert_venue

    def apply(s, row):  # type: ignore[no-untyped-def]
        venue, _ = upsert_venue(s, row["account_id"], {
            "name": row["name"], "admin_emails": row["admin_emails"].split(";"),
            "livemode": row["livemode"]})
        return venue.id

    count, _ = _import(path, VENUE_HEADER, apply)
    click.echo(f"imported {count} venues")


@command
@click.group("members")
def members_group() -> None:
    """Members of venues."""


@members_group.command("import")
@click.argument("path", type=click.Path(dir_okay=False))
@with_appcontext
def members_import(path: str) -> None:
    """Upsert members from CSV: account_id,member_ref,email,name,stripe_customer_id."""
    from sqlalchemy import select

    from db import Venue
    from listener import current_config
    from listener.sync import InvalidInput, upsert_member

    def apply(s, row):  # type: ignore[no-untyped-def]
        venue = s.scalar(select(Venue).where(Venue.account_id == row["account_id"]))
        if venue is None:
            raise InvalidInput(f"no venue {row['account_id']!r}; import venues first")
        upsert_member(s, venue, row["member_ref"], {
            "email": row["email"], "name": row["name"] or None,
            "stripe_customer_id": row["stripe_customer_id"] or None})
        return venue.id

    count, venues = _import(path, MEMBER_HEADER, apply)
    from workers.queue import enqueue_recheck

    for venue_id in sorted(venues):
        try:
            enqueue_recheck(current_config(), venue_id)
        except Exception:  # noqa: BLE001 - recheck_requested_at is set; the sweeper queues it
            click.echo(f"note: re-check of venue {venue_id} queued for the next sweep", err=True)
    click.echo(f"imported {count} members")


# --- recovery -------------------------------------------------------------------------------

def _stripe_api():  # type: ignore[no-untyped-def]
    from listener import current_config
    from workers.stripe_api import StripeApi

    config = current_config()
    if not config.stripe_secret_key:
        raise click.ClickException("STRIPE_SECRET_KEY is not set: this command reads Stripe")
    return StripeApi(config)


def _queue_notices(ids: list[int]) -> None:
    from listener import current_config
    from workers.queue import enqueue_notification

    for notification_id in ids:
        try:
            enqueue_notification(current_config(), notification_id)
        except Exception:  # noqa: BLE001 - pending rows are picked up by the sweep
            click.echo(f"note: notice {notification_id} left for the next sweep", err=True)


@command
@click.command("replay")
@click.option("--since", required=True, type=click.DateTime(["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S"]),
              help="Replay events created at or after this date (UTC).")
@click.option("--account", default=None, help="Only this account (acct_…).")
@click.option("--now", "inline", is_flag=True, help="Process here instead of queueing.")
@with_appcontext
def replay_cmd(since, account: str | None, inline: bool) -> None:  # type: ignore[no-untyped-def]
    """List events through the Events API and feed the missing ones through the inbox."""
    from datetime import UTC

    from listener import current_config, current_db
    from workers.jobs import process_event
    from workers.queue import enqueue_event
    from workers.recovery import replay

    config = current_config()
    summary = replay(config, current_db(), _stripe_api(), since.replace(tzinfo=UTC), account,
                     echo=click.echo, tty=sys.stderr.isatty())
    for event_id in summary.new_event_ids:
        if inline:
            try:
                process_event(event_id)
            except Exception as exc:  # noqa: BLE001 - recorded on the event; keep going
                click.echo(f"{event_id}: {type(exc).__name__}", err=True)
        else:
            enqueue_event(config, event_id)
    click.echo(f"listed {summary.listed} events in {summary.list_calls} list calls: "
               f"{summary.new} new, {summary.known} already in the inbox, "
               f"{summary.skipped_types} of types we do not handle")


@command
@click.command("reconcile")
@click.option("--account", default=None, help="Only this venue (acct_…).")
@click.option("--no-member-check", is_flag=True,
              help="Skip checking members' stored customer IDs (wrong account / mode).")
@with_appcontext
def reconcile_cmd(account: str | None, no_member_check: bool) -> None:
    """Classify every non-canceled subscription of each venue ("Sync from Stripe")."""
    from listener import current_config, current_db
    from workers.recovery import reconcile

    summary = reconcile(current_config(), current_db(), _stripe_api(), account,
                        echo=click.echo, tty=sys.stderr.isatty(),
                        check_members=not no_member_check, queue_notices=_queue_notices)
    click.echo(f"\n{'venue':<28} {'linked':>7} {'case 1':>7} {'case 2':>7} {'case 3':>7} "
               f"{'canceled':>9} {'other mode':>10}")
    for acct, counts in summary.by_venue.items():
        case = {n: sum(v for k, v in counts.items() if k.startswith(f"case_{n}")) for n in
                (1, 2, 3)}
        canceled = sum(v for k, v in counts.items() if k.endswith("_canceled"))
        click.echo(f"{acct:<28} {counts.get('linked', 0):>7} {case[1]:>7} {case[2]:>7} "
                   f"{case[3]:>7} {canceled:>9} {counts.get('other_mode', 0):>10}")
    for finding in summary.findings:
        click.echo(f"finding: {finding.account_id} member {finding.member_ref} -> "
                   f"{finding.customer_id}: {finding.problem.replace('_', ' ')} — "
                   f"{finding.detail}")
    click.echo(f"\n{summary.subscriptions} subscriptions, {summary.new_mismatches} new "
               f"mismatches, {summary.list_calls} list calls")


@command
@click.command("diagnose")
@click.argument("customer_id")
@click.option("--account", default=None, help="The venue the customer should belong to.")
@click.option("--fix", is_flag=True, help="Create the customer in the right account and "
                                          "relink the member.")
@click.option("--yes", is_flag=True, help="Do not ask before --fix changes anything.")
@with_appcontext
def diagnose_cmd(customer_id: str, account: str | None, fix: bool, yes: bool) -> None:
    """Explain a "No such customer" error: which account and mode hold the customer."""
    from listener import current_config, current_db
    from workers.queue import enqueue_recheck
    from workers.recovery import diagnose, fix_member_link

    if not customer_id.startswith("cus_"):
        raise click.ClickException(f"{customer_id!r} is not a customer ID (cus_…)")
    config, db, api = current_config(), current_db(), _stripe_api()
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
    changes = fix_member_link(config, db, api, customer_id, target)
    for member_ref, old, new in changes:
        click.echo(f"member {member_ref}: {old} -> {new}")
    from sqlalchemy import select

    from db import Venue

    with db.session() as s:
        venue_id = s.scalar(select(Venue.id).where(Venue.account_id == target))
    try:
        enqueue_recheck(config, venue_id)
    except Exception:  # noqa: BLE001
        click.echo("note: re-check queued for the next sweep", err=True)


# --- notices ---------------------------------------------------------------------------------

@command
@click.command("digest")
@click.option("--account", default=None, help="Only this venue (acct_…).")
@with_appcontext
def digest_cmd(account: str | None) -> None:
    """Send each digest venue's admins one email listing its new mismatches (run daily)."""
    from listener import current_db
    from notifications.outbox import build_digests

    ids = build_digests(current_db(), account)
    _queue_notices(ids)
    click.echo(f"queued {len(ids)} digest emails")


@command
@click.command("retry-notices")
@with_appcontext
def retry_notices_cmd() -> None:
    """Send again the notices that failed for good (after fixing SMTP_URL)."""
    from listener import current_db
    from notifications.outbox import retry_failed

    ids = retry_failed(current_db())
    _queue_notices(ids)
    click.echo(f"queued {len(ids)} failed notices again")

command(demo)
