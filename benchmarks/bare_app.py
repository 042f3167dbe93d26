"""The baseline for benchmarks/intake.py: a bare Flask app with one POST route that reads the
body and answers 200 JSON, served by gunicorn with the same settings as the real service.

Same path and same response shape as the webhook endpoint, so the only difference the
benchmark measures is the work the service does (verify, store, enqueue).
"""

from __future__ import annotations

from flask import Flask, jsonify, request

app = Flask(__name__)


@app.post("/webhooks/stripe/connect")
def receive():  # type: ignore[no-untyped-def]
    request.get_data()
    return jsonify(received=True, duplicate=False), 200
