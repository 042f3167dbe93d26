"""The database's command on the `mismatch` CLI."""

from __future__ import annotations

import click

from config import ConfigError, load_config
from db import upgrade


def init_cli(cli: click.Group) -> None:
    cli.add_command(db_group)


@click.group("db")
def db_group() -> None:
    """Database schema."""


@db_group.command("upgrade")
def db_upgrade() -> None:
    """Apply migrations up to the newest schema."""
    try:
        config = load_config()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    upgrade(config.database_url)
    click.echo("database schema is up to date")
