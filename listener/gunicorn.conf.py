"""gunicorn's settings for the web tier, shared by the Procfile, `mismatch serve` and the
benchmarks (`gunicorn --config listener/gunicorn.conf.py …`: a file, not a module, so
loading it imports nothing of ours before gevent patches the standard library in each worker).

Async (gevent) workers: every connection is a greenlet, so a client that sends nothing, or
its request a byte at a time, holds only its own greenlet, never one of a few threads Stripe's
deliveries need (with gthread, 4 such connections stopped intake). Their timeouts:
- `keepalive`: the whole request line and headers must arrive within it, on a new connection
  as between requests on a kept-alive one; then the connection is closed;
- a body must arrive within WEBHOOK_BODY_SECONDS (listener/webhooks.py), then 408;
- `worker_connections` bounds what one worker holds open at once.
psycopg (3.1+) and redis-py cooperate with gevent's patched sockets; nothing in a request
computes for long, except a sign-in's password hash, which is rate-limited."""

import os

worker_class = "gevent"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
worker_connections = 1000
keepalive = 5
timeout = 30
graceful_timeout = 10
backlog = 2048
