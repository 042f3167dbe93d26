"""gunicorn's settings for the web tier, shared by the Procfile, `mismatch serve` and the
benchmarks (`gunicorn --config listener/gunicorn.conf.py …`: a file, not a module, so
loading it imports nothing of ours before gevent patches the standard library in each worker).

Async (gevent) workers: every connection is a greenlet, so a client that sends nothing, or
its request a byte at a time, holds only its own greenlet, never one of a few threads Stripe's
deliveries need (with gthread, 4 such connections stopped intake). Their timeouts:
- `keepalive`: the whole request line and headers must arrive within it, on a new connection
  as between requests on a kept-alive one; then the connection is closed;
- a body must arrive within BODY_SECONDS (listener/webhooks.py), then 408;
- `worker_connections` bounds what one worker holds open at once.
psycopg (3.1+) and redis-py cooperate with gevent's patched sockets; nothing in a request
computes for long, except a sign-in's password hash, which is rate-limited."""

import os
import sys
from typing import Any

from gunicorn.glogging import Logger


class EscapedLogger(Logger):
    """gunicorn's logger, with every value of an access-log line escaped: the path arrives
    %-decoded, and `%0a` in it would otherwise start a forged line of the log."""

    def atoms(self, resp: Any, req: Any, environ: dict[str, Any], request_time: Any
              ) -> dict[str, Any]:
        return {key: _escaped(value) for key, value in
                super().atoms(resp, req, environ, request_time).items()}


def _escaped(value: object) -> object:
    if isinstance(value, str) and not value.isprintable():
        return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in value)
    return value


logger_class = EscapedLogger
worker_class = "gevent"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
worker_connections = 1000
keepalive = 5
timeout = 30
graceful_timeout = 10
backlog = 2048


def on_starting(server: Any) -> None:
    """A bad configuration stops the web tier in one line naming the setting, before any
    worker boots (each would print a traceback and be started again, forever). config.py
    reads only the environment: nothing here is patched by gevent later."""
    from config import ConfigError, load_config

    try:
        load_config(create_instance=False)
    except ConfigError as exc:
        print(f"mismatch: {exc}", file=sys.stderr)
        sys.exit(1)
