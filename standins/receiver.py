"""The booking product's side of outbound messages, as its docs tell a receiver to be: verify
with the `standardwebhooks` library, drop a webhook-id already handled, drop a revision older
than one already seen. A real HTTP server on loopback; tests and the benchmark script what it
answers (`answers`: statuses to give, in order, before 204s) and how slowly."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks.webhooks import Webhook, WebhookVerificationError


@dataclass
class Receiver:
    secret: str
    answers: list[int] = field(default_factory=list)  # statuses to answer first, in order
    delay: float = 0.0  # seconds before each answer
    received: list[dict[str, Any]] = field(default_factory=list)  # verified, deduplicated
    attempts: list[str] = field(default_factory=list)  # webhook-id of every request
    answered: int = 0  # requests answered (fewer than attempts while some are held)
    refused: int = 0  # requests whose signature did not verify
    revisions: dict[int, int] = field(default_factory=dict)  # mismatch id -> newest revision
    arrived: list[float] = field(default_factory=list)  # time.time() of each accepted one
    lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""

    def handle(self, body: bytes, headers: dict[str, str]) -> int:
        """What the docs' receiver does with one request; returns the status to answer."""
        with self.lock:
            self.attempts.append(headers.get("webhook-id", ""))  # as it arrives
        if self.delay:
            time.sleep(self.delay)
        with self.lock:
            self.answered += 1
            if self.answers:
                return self.answers.pop(0)
        try:
            message = Webhook(self.secret).verify(body, headers)
        except WebhookVerificationError:
            with self.lock:
                self.refused += 1
            return 401
        with self.lock:
            seen = {m["webhook_id"] for m in self.received}
            if headers["webhook-id"] in seen:
                return 204  # at-least-once: a redelivery, already handled
            data = message["data"]
            mismatch = data.get("id")
            if isinstance(mismatch, int) and data.get("revision", 0) > self.revisions.get(
                    mismatch, 0):
                self.revisions[mismatch] = data["revision"]
            self.received.append({"webhook_id": headers["webhook-id"], **message})
            self.arrived.append(time.time())
        return 204


@contextmanager
def receiving(secret: str, **options: Any) -> Iterator[Receiver]:
    """A receiver on 127.0.0.1 and a free port while the block runs."""
    receiver = Receiver(secret, **options)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            body = self.rfile.read(int(self.headers.get("content-length") or 0))
            status = receiver.handle(body, {k.lower(): v for k, v in self.headers.items()})
            self.send_response(status)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *_args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    receiver.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/mismatch"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
