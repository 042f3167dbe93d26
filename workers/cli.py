"""What every worker-side command shares (its configuration and database, Stripe, a progress
bar, queueing), and the commands whose code sits below workers/: feeding records in
(db/imports.py) and the notices (notifications/outbox.py). Each command sits beside the code
it drives and hands work to the queue through `queue_all`, so a Redis outage leaves it to the
sweeper instead of aborting halfway."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from typing import TypeVar

import click

from config import Config, ConfigError, load_config
from db import Database
from db.imports import ImportReport, import_members, import_venues
from db.records import InvalidInput
from notifications.outbox import build_digests, retry_failed
from workers.jobs import NOTICE, VENUE_RECHECK
from workers.queue import Kind, try_enqueue
from workers.runtime import runtime
from workers.stripe_side.api import StripeApi

T = TypeVar("T")


def state() -> tuple[Config, Database]:
    """The process's configuration and database, as the jobs see them; a configuration
    error, or a database without the schema, stops the command with one line naming it and
    the fix (before anything is created on its behalf)."""
    try:
        config = load_config(create_instance=False)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    require_schema(config)
    return runtime()


def require_schema(config: Config) -> None:
    probe = Database(config.database_url)
    try:
        problem = probe.schema_problem()
    finally:
        probe.dispose()
    if problem:
        raise click.ClickException(
            f"{problem}: run `mismatch db upgrade` first, or run this where the service runs "
            f"(its folder, or the same DATABASE_URL)")


def stripe_for(config: Config) -> StripeApi:
    if not config.stripe_secret_key:
        raise click.ClickException("STRIPE_SECRET_KEY is not set: this command reads Stripe")
    return StripeApi(config)


def track(items: Iterable[T], label: str) -> Iterator[T]:
    """A progress bar on a terminal (stderr, so the command's output stays clean)."""
    with click.progressbar(items, label=label, file=sys.stderr, show_pos=True) as bar:
        yield from bar


def queue_all(kind: Kind, config: Config, keys: Iterable[object], what: str) -> None:
    left = [key for key in keys if not try_enqueue(config, kind, key)]
    if left:
        click.echo(f"note: {len(left)} {what} not queued (Redis unreachable); the sweeper "
                   f"queues them within a minute", err=True)


# --- records from the booking product ---------------------------------------------------------

@click.group("venues")
def venues_group() -> None:
    """Venues (connected accounts)."""


def csv_import(command: Callable[..., None]) -> Callable[..., None]:
    """A CSV import's arguments: the file, and --dry-run."""
    command = click.option("--dry-run", is_flag=True,
                           help="Say what the file would change; write nothing.")(command)
    return click.argument("path", type=click.Path(dir_okay=False))(command)


def imported(run: Callable[[Database, str], ImportReport], db: Database, path: str
             ) -> ImportReport:
    """Run an import; a bad file stops the command in one line (FILE: line N: why)."""
    try:
        return run(db, path)
    except InvalidInput as exc:
        raise click.ClickException(str(exc)) from None


@venues_group.command("import")
@csv_import
def venues_import(path: str, dry_run: bool) -> None:
    """Upsert venues from CSV: account_id,name,admin_emails,livemode (emails ';'-separated).
    Prints every existing venue the file changes, and how."""
    report = imported(partial(import_venues, dry_run=dry_run), state()[1], path)
    for line in report.lines():
        click.echo(line)


@click.group("members")
def members_group() -> None:
    """Members of venues."""


@members_group.command("import")
@csv_import
def members_import(path: str, dry_run: bool) -> None:
    """Upsert members from CSV: account_id,member_ref,email,name,stripe_customer_id (an
    empty customer id unlinks). Prints every existing member the file changes, and how."""
    config, db = state()
    report = imported(partial(import_members, dry_run=dry_run), db, path)
    if not dry_run:
        queue_all(VENUE_RECHECK, config, sorted(report.venue_ids), "venue re-checks")
    for line in report.lines():
        click.echo(line)


# --- notices ---------------------------------------------------------------------------------

@click.command("digest")
@click.option("--account", default=None, help="Only this venue (acct_…).")
def digest_cmd(account: str | None) -> None:
    """Send each digest venue's admins one email listing its new mismatches (run daily)."""
    config, db = state()
    ids = build_digests(db, account)
    queue_all(NOTICE, config, ids, "digest emails")
    click.echo(f"queued {len(ids)} digest emails")


@click.command("retry-notices")
def retry_notices_cmd() -> None:
    """Send again the notices that failed for good (after fixing SMTP_URL)."""
    config, db = state()
    ids = retry_failed(db)
    queue_all(NOTICE, config, ids, "notices")
    click.echo(f"queued {len(ids)} failed notices again")


