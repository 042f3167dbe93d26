"""The floor for benchmarks/intake.py: the least verify → store → enqueue can cost here.

The bare endpoint (benchmarks/bare_app.py) plus exactly the work intake cannot skip, done the
cheapest way this machine offers: stripe-python's `WebhookSignature.verify_header` with the
one secret, `json.loads` (the row needs the event's id, type, account and created), one
autocommit `INSERT … ON CONFLICT DO NOTHING RETURNING id` of the same row on a psycopg
connection kept per thread (prepared after its first uses), and one RQ `enqueue_call` of the
same job (same function, job id, retry, TTLs and description) on a one-round-trip pipeline.

No rejection records, metrics, log line, dialect choice, pool, or reconnect: this is a measuring
stick, not a way to run the service. Its jobs go to the RQ queue `mismatch-floor`, so
intake.py's check of the service's own queue is not disturbed; its rows carry their own
`evt_bench_…f_` prefix.
"""

from __future__ import annotations

import json
import os
import queue

import psycopg
import redis
import stripe
from flask import Flask, jsonify, request
from rq import Queue, Retry

from config import load_config

app = Flask(__name__)
_config = load_config()
_secret = _config.connect_webhook_secrets[0]
_queue = Queue("mismatch-floor", connection=redis.Redis.from_url(os.environ["REDIS_URL"]))
_retry = Retry(max=len(_config.job_retry_intervals), interval=list(_config.job_retry_intervals))
_idle: queue.LifoQueue[psycopg.Connection] = queue.LifoQueue()  # one per concurrent request
_INSERT = (
    "INSERT INTO stripe_events (event_id, endpoint, account_id, livemode, type, created,"
    " payload, status, attempts, received_at)"
    " VALUES (%s, 'connect', %s, %s, %s, %s, %s, 'received', 0, now())"
    " ON CONFLICT DO NOTHING RETURNING id"
)


def _insert(params: tuple) -> tuple | None:
    try:
        conn = _idle.get_nowait()
    except queue.Empty:
        url = os.environ["DATABASE_URL"].replace("postgresql+psycopg://", "postgresql://")
        conn = psycopg.connect(url, autocommit=True)
    try:
        return conn.execute(_INSERT, params).fetchone()
    finally:
        _idle.put(conn)


@app.post("/webhooks/stripe/connect")
def receive():  # type: ignore[no-untyped-def]
    payload = request.get_data(as_text=True)
    try:
        stripe.WebhookSignature.verify_header(
            payload, request.headers.get("Stripe-Signature", ""), _secret, tolerance=300)
    except stripe.SignatureVerificationError:
        return jsonify(error="bad signature"), 400
    event = json.loads(payload)
    row = _insert((event["id"], event.get("account"), bool(event.get("livemode")),
                   event["type"], event["created"], payload))
    if row is not None:
        with _queue.connection.pipeline() as pipe:
            _queue.enqueue_call(
                "workers.jobs.process_event", args=(event["id"],), job_id=f"event-{event['id']}",
                retry=_retry, result_ttl=0, failure_ttl=7 * 24 * 3600,
                description=f"event {event['id']}", pipeline=pipe)
            pipe.execute()
    return jsonify(received=True, duplicate=row is None), 200
