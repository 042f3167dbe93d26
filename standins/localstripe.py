"""Stripe stand-ins the demo, the tests and the benchmarks share: localstripe (stateful,
sends signed webhooks; no Connect) in a subprocess of its own, and a free loopback port."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import stripe

# localstripe keeps its state in /tmp unless told otherwise; this launcher points it at the
# demo's own folder so runs do not share state.
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
    """A loopback TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalStripe:
    """localstripe in a subprocess on 127.0.0.1, its state pickled into `state_dir` (not
    /tmp). The demo's stand-in for Stripe; the tests use it too."""

    def __init__(self, state_dir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = state_dir / "localstripe.log"  # its access log: one line per request
        self.log = open(self.log_path, "w")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-c", LAUNCH_LOCALSTRIPE, str(state_dir / "localstripe.pickle"),
             "--port", str(self.port), "--from-scratch"],
            stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.stop()
                    raise RuntimeError("localstripe did not start") from None
                time.sleep(0.1)

    def client(self) -> stripe.StripeClient:
        return stripe.StripeClient("sk_test_localstripe", base_addresses={"api": self.url})

    def send_webhooks_to(self, url: str, secret: str) -> None:
        """localstripe signs and POSTs every event it makes to `url`."""
        request = urllib.request.Request(
            f"{self.url}/_config/webhooks/mismatch", method="POST",
            data=urllib.parse.urlencode({"url": url, "secret": secret}).encode())
        urllib.request.urlopen(request, timeout=5).read()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()
