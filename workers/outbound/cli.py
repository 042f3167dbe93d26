"""`mismatch outbound …`: what an on-call engineer does to a destination from a shell — see
them, replay a message or every failed one, send a test, disable or enable — each in one
transaction, the sending left to the outbound workers after the commit."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import click
from sqlalchemy import select
from sqlalchemy.orm import Session

from db import Destination
from db.records import InvalidInput
from workers.cli import state
from workers.jobs import OUTBOUND
from workers.outbound import destinations
from workers.queue import try_enqueue


def _named(session: Session, name: str) -> Destination:
    try:
        found = destinations.find(session, destinations.check_name(name))
    except InvalidInput as exc:
        raise click.ClickException(str(exc)) from None
    if found is None:
        raise click.ClickException(f"no destination {name!r} (`mismatch outbound list` shows "
                                   f"them)")
    return found


def _since(value: str) -> datetime:
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a date or time (e.g. 2026-12-01 or "
                                 f"2026-12-01T09:00Z)") from None
    when = when if when.tzinfo else when.replace(tzinfo=UTC)
    if when > datetime.now(UTC):
        raise click.BadParameter(f"{value} is in the future")
    return when


def _owe(name: str, change: Callable[[Session, Destination], str]) -> None:
    """Change one destination in one transaction, then queue its drain after the commit;
    prints what `change` says was done."""
    config, db = state()
    try:
        with db.session() as s:
            d = _named(s, name)
            what, destination_id = change(s, d), d.id
    except InvalidInput as exc:
        raise click.ClickException(str(exc)) from None
    if try_enqueue(config, OUTBOUND, destination_id):
        click.echo(what)
    else:
        click.echo(f"{what}; Redis is unreachable, so the sweeper will queue it")


@click.group("outbound")
def outbound_group() -> None:
    """Signed messages to the booking product and other destinations."""


@outbound_group.command("list")
def list_cmd() -> None:
    """Every destination: where it points, whether it is on, its deliveries by status."""
    _, db = state()
    with db.session() as s:
        rows = s.scalars(select(Destination).order_by(Destination.name)).all()
        lines = [(d.name, "on" if d.enabled else "off", destinations.counts(s, d.id), d.url,
                  d.disabled_reason) for d in rows]
    if not lines:
        click.echo("no destinations (set BOOKING_WEBHOOK_URL, or PUT /api/destinations/<name>)")
        return
    for name, state_, n, url, why in lines:
        click.echo(f"{name:<20} {state_:<3} pending {n['pending']:>6}  delivered "
                   f"{n['delivered']:>8}  failed {n['failed']:>6}  {url}"
                   + (f"  ({why})" if why else ""))


@outbound_group.command("replay")
@click.argument("name")
@click.option("--message", "message_id", default=None, help="One message, by its webhook-id "
                                                            "(msg_…).")
@click.option("--failed-since", "since", default=None,
              help="Every message that failed for good since this time (ISO 8601, UTC).")
def replay_cmd(name: str, message_id: str | None, since: str | None) -> None:
    """Send a destination one message again, or every one that failed since a time."""
    if (message_id is None) == (since is None):
        raise click.UsageError("give exactly one of --message or --failed-since")
    failed_since = _since(since) if since is not None else None

    def again(s: Session, d: Destination) -> str:
        n = destinations.replay(s, d, message_id=message_id, failed_since=failed_since)
        off = "" if d.enabled else f" (it is disabled: `mismatch outbound enable {name}` " \
                                    f"sends them)"
        return f"{n} message(s) owed to {name} again{off}"

    _owe(name, again)


@outbound_group.command("test")
@click.argument("name")
def test_cmd(name: str) -> None:
    """Queue a `destination.test` message to one destination."""
    _owe(name, lambda s, d: f"test message {destinations.queue_test(s, d)} queued for {name}")


@outbound_group.command("disable")
@click.argument("name")
def disable_cmd(name: str) -> None:
    """Stop sending to a destination. What it is owed waits; messages made while it is off
    are not owed to it (the pull feed has them)."""
    _, db = state()
    with db.session() as s:
        destinations.set_enabled(_named(s, name), False, "disabled from the command line")
    click.echo(f"{name} disabled")


@outbound_group.command("enable")
@click.argument("name")
def enable_cmd(name: str) -> None:
    """Send to a destination again, starting with what it is owed."""

    def on(_s: Session, d: Destination) -> str:
        destinations.set_enabled(d, True)
        return f"{name} enabled"

    _owe(name, on)


@outbound_group.command("new-secret")
def new_secret_cmd() -> None:
    """Print a fresh signing secret for BOOKING_WEBHOOK_SECRET (whsec_ and base64). To
    rotate, put it first and keep the old one after a comma until the receiver has both."""
    click.echo(destinations.new_secret())
