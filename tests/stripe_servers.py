"""Real stand-ins for Stripe's API on loopback: localstripe (stateful, platform only) and a
small recording server for what localstripe lacks (Connect's Stripe-Account, 429s)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

LAUNCH_LOCALSTRIPE = """
import sys, pickle
from localstripe import resources, server
state = sys.argv.pop(1)
def load(self):
    try:
        with open(state, 'rb') as f:
            self.clear(); self.update(pickle.load(f))
    except FileNotFoundError:
        pass
def dump(self):
    with open(state, 'wb') as f:
        pickle.dump(self, f, protocol=pickle.HIGHEST_PROTOCOL)
resources.Store.try_load_from_disk = load
resources.Store.dump_to_disk = dump
server.start()
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalStripe:
    """localstripe in a subprocess, its state pickled into `state_dir` (not /tmp)."""

    def __init__(self, state_dir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.state = state_dir / "localstripe.pickle"
        self.log = open(state_dir / "localstripe.log", "w")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-c", LAUNCH_LOCALSTRIPE, str(self.state), "--port", str(self.port),
             "--from-scratch"],
            stdout=self.log, stderr=subprocess.STDOUT, env={**os.environ})
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("localstripe did not start") from None
                time.sleep(0.1)

    def client(self):  # type: ignore[no-untyped-def]
        import stripe

        return stripe.StripeClient("sk_test_localstripe", base_addresses={"api": self.url})

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


Responder = Callable[[str, dict[str, str]], tuple[int, dict[str, Any]]]


class RecordingStripe:
    """A loopback HTTP server answering like Stripe's API from a responder function, and
    recording each request's path and headers."""

    def __init__(self, responder: Responder) -> None:
        self.requests: list[tuple[str, dict[str, str]]] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                headers = {k: v for k, v in self.headers.items()}
                owner.requests.append((self.path, headers))
                status, body = responder(self.path, headers)
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
