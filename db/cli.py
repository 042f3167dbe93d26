"""The database's command on the `mismatch` CLI."""

from __future__ import annotations

import click
from flask import Flask

from config import ConfigError, load_config


def init_app(app: Flask) -> None:
    app.cli.add_command(db_group)


@click.group("db")
def db_group() -> None:
    """Database schema."""


@db_group.command("upgrade")
def db_upgrade() -> None:
    """Apply migrations up to the newest schema."""
    from db import upgrade

    try:
        config = load_config()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    upgrade(config.database_url)
    click.echo("database schema is up to date")
