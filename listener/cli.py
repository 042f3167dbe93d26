"""The `mismatch` command. Each package registers its own commands on the app (db: `db
upgrade`; workers: `worker`, `sweep`, imports, `replay`, `reconcile`, `diagnose`, `digest`,
…); the web's are here: `serve` runs web and workers together, `demo` plays against it."""

from __future__ import annotations

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
from flask.cli import FlaskGroup

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


def init_app(app: Flask) -> None:
    app.cli.add_command(serve)
    app.cli.add_command(demo)


@click.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=5000, show_default=True, type=int)
@click.option("--web-workers", default=2, show_default=True, type=int)
@click.option("--workers", "rq_workers", default=1, show_default=True, type=int)
def serve(host: str, port: int, web_workers: int, rq_workers: int) -> None:
    """Run web + worker(s) together; starts the embedded Redis when REDIS_URL is unset."""
    from db import upgrade
    from workers import redis_url

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
        str(bin_dir / "gunicorn"), "--config", str(Path(__file__).with_name("gunicorn.conf.py")),
        "--bind", f"{host}:{port}", "--workers", str(web_workers),
        # Path only (%(U)s), never the query string: notice links carry signed tokens.
        "--access-logfile", "-", "--access-logformat", '%(h)s "%(m)s %(U)s" %(s)s %(b)s %(L)ss',
        "listener.wsgi:app",
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
