"""The `mismatch` command. Each package registers its own commands (db: `db upgrade`;
workers: `worker`, `sweep`, imports, `replay`, `reconcile`, …, each beside the code it drives);
the web's are here: `serve` runs web and workers together, `hash-password`. No command builds
the web app: each runs from the configuration alone."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import click
from werkzeug.security import generate_password_hash

import db.cli
import workers
from config import Config, ConfigError, load_config
from db import upgrade
from listener.edge import CONTROL
from workers import redis_url
from workers.embedded_redis import (
    embedded_redis_running,
    ensure_embedded_redis,
    stop_embedded_redis,
)


class MismatchGroup(click.Group):
    """The `mismatch` group: one-off commands leave no embedded Redis running, and no
    argument may carry a control character."""

    def invoke(self, ctx: click.Context) -> object:
        """A command that starts the embedded Redis (a re-check queued, a rate limit kept)
        stops it again when it ends: one-off commands leave nothing running. `serve` owns the
        one it starts (and stops it on Ctrl-C); one that was running before is left alone."""
        instance = _embedded_redis_instance()
        before = instance is not None and embedded_redis_running(instance)
        try:
            return super().invoke(ctx)
        finally:
            if (instance is not None and not before and ctx.invoked_subcommand != "serve"
                    and embedded_redis_running(instance)):
                stop_embedded_redis(instance)

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        """No argument may hold a control character (a NUL cannot reach the database, a
        newline would forge a line of the output): one line naming which argument."""
        for n, arg in enumerate(args, start=1):
            if CONTROL.search(arg):
                raise click.ClickException(f"argument {n} holds a control character")
        return super().parse_args(ctx, args)


def _embedded_redis_instance() -> Path | None:
    """The instance folder whose embedded Redis commands here would use (REDIS_URL unset)."""
    try:
        config = load_config(create_instance=False, allow_production_problems=True)
    except ConfigError:
        return None
    return None if config.redis_url else config.instance_path


@click.group(cls=MismatchGroup)
def main() -> None:
    """Stripe webhook listener and mismatch detector."""


def init_cli(cli: click.Group) -> None:
    cli.add_command(serve)
    cli.add_command(hash_password)


@click.command("hash-password")
@click.password_option("--password", prompt="Password", help="Prompted (twice) if not given.")
@click.option("--user", default=None, help="Print a whole SUPPORT_USERS entry for this name.")
def hash_password(password: str, user: str | None) -> None:
    """Print a password hash for SUPPORT_USERS (werkzeug's scrypt)."""
    hashed = generate_password_hash(password)
    click.echo(f"{user}:{hashed}" if user else hashed)


def dev_session_path(config: Config) -> Path:
    """What a running `mismatch serve` tells `mismatch demo` in another terminal (its URL, API
    token and webhook secrets): development only, removed when serve stops."""
    return config.instance_path / "serve.json"


DEV_SUPPORT_USER = "support"


def _dev_support_password(config: Config) -> str:
    """One generated password per instance folder for the development support user."""
    path = config.instance_path / "dev-support-password"
    if path.exists():
        return path.read_text().strip()
    password = secrets.token_urlsafe(12)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(password + "\n")
    path.chmod(0o600)
    return password


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


@click.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=5000, show_default=True, type=int, envvar="PORT",
              help="Also from PORT (make run PORT=5001).")
@click.option("--web-workers", default=2, show_default=True, type=int)
@click.option("--workers", "rq_workers", default=1, show_default=True, type=int)
@click.option("--outbound-workers", default=2, show_default=True, type=int,
              help="Workers delivering outbound messages (one per destination at a time).")
def serve(host: str, port: int, web_workers: int, rq_workers: int,
          outbound_workers: int) -> None:
    """Run web + worker(s) together; starts the embedded Redis when REDIS_URL is unset."""
    try:
        config = load_config()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    if not _port_free(host, port):
        raise click.ClickException(
            f"port {port} on {host} is in use: stop what holds it, or choose another "
            f"(make run PORT={port + 1}, or mismatch serve --port {port + 1})")
    upgrade(config.database_url)
    base = f"http://{host}:{port}"
    env = dict(os.environ)
    env["REDIS_URL"] = redis_url(config)
    env.setdefault("DATABASE_URL", config.database_url)
    env.setdefault("INSTANCE_PATH", str(config.instance_path))
    env.setdefault("PUBLIC_BASE_URL", base)  # notices link to where this runs
    sign_in = "SUPPORT_USERS"
    if not config.support_users and not config.production:
        password = _dev_support_password(config)
        env["SUPPORT_USERS"] = f"{DEV_SUPPORT_USER}:{generate_password_hash(password)}"
        sign_in = (f"user {DEV_SUPPORT_USER}, password {password} (development only; set "
                   f"SUPPORT_USERS for real ones)")
    metrics_dir = config.instance_path / "prometheus"
    shutil.rmtree(metrics_dir, ignore_errors=True)
    metrics_dir.mkdir(parents=True)
    env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    bin_dir = Path(sys.executable).parent
    procs = [subprocess.Popen([
        str(bin_dir / "gunicorn"), "--config", str(Path(__file__).with_name("gunicorn.conf.py")),
        "--bind", f"{host}:{port}", "--workers", str(web_workers),
        # Path only (%(U)s), never the query string: notice links carry signed tokens.
        "--access-logfile", "-", "--access-logformat", '%(h)s "%(m)s %(U)s" %(s)s %(b)s %(L)ss',
        "listener.wsgi:app",
    ], env=env, start_new_session=True)]
    # Sessions of their own: a Ctrl-C reaches serve alone, which stops each child once (a
    # gunicorn worker signalled by the terminal and then by its master prints a traceback).
    for _ in range(rq_workers):
        procs.append(subprocess.Popen([str(bin_dir / "mismatch"), "worker"], env=env,
                                      start_new_session=True))
    for _ in range(outbound_workers):
        procs.append(subprocess.Popen([str(bin_dir / "mismatch"), "worker", "--outbound"],
                                      env=env, start_new_session=True))
    session = dev_session_path(config)
    if not config.production:
        session.write_text(json.dumps({
            "url": base, "api_token": env.get("API_TOKEN"),
            "connect_secret": (config.connect_webhook_secrets or [None])[0],
            "platform_secret": (config.webhook_secrets or [None])[0],
            "platform_account": config.stripe_platform_account}))
        session.chmod(0o600)
    mail = (f"SMTP {config.smtp.host}" if config.smtp
            else f"local outbox {config.instance_path / 'outbox'} (and {base}/outbox)")
    click.echo(f"""
  service     {base}   (health {base}/readyz, metrics {base}/metrics)
  console     {base}/support   sign in: {sign_in}
  webhooks    POST {base}/webhooks/stripe          (platform events)
              POST {base}/webhooks/stripe/connect  (connected-account events)
  database    {config.database_url}
  redis       {env['REDIS_URL']}
  mail        {mail}
  outbound    {config.booking_webhook_url or "no BOOKING_WEBHOOK_URL"}; feed GET {base}/api/messages
  Ctrl-C stops everything.
""")
    stop = threading.Event()
    failed = False

    def _stop(*_args: object) -> None:
        stop.set()

    for stop_signal in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # SIGHUP: terminal closed
        signal.signal(stop_signal, _stop)
    last_check = time.monotonic()
    while not stop.is_set():
        if any(p.poll() is not None for p in procs):
            click.echo("a child process exited; stopping", err=True)
            failed = True
            break
        if not config.redis_url and time.monotonic() - last_check > 5:
            last_check = time.monotonic()
            ensure_embedded_redis(config.instance_path)  # restarts it if it died
        time.sleep(0.5)
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            p.kill()
    session.unlink(missing_ok=True)
    if not config.redis_url:  # ours: it goes with us
        stop_embedded_redis(config.instance_path)
    if failed:
        sys.exit(1)


for register in (db.cli.init_cli, workers.init_cli, init_cli):
    register(main)
