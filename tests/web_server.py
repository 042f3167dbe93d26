"""The web tier as the Procfile runs it (gunicorn, gevent workers), on a free port, for the
tests that need real connections and real concurrency; and a signed delivery sent to it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from standins.localstripe import free_port
from tests.support import CONNECT_SECRET, GYM, customer, event, sign

ROOT = Path(__file__).resolve().parent.parent


def web_command() -> str:
    """The Procfile's web line, as Heroku-style runners read it."""
    for line in (ROOT / "Procfile").read_text().splitlines():
        if line.startswith("web:"):
            return line.removeprefix("web:").strip()
    raise AssertionError("Procfile has no web line")


@contextmanager
def procfile_web(env: dict[str, str], **extra: str) -> Iterator[int]:
    """Start the Procfile's web line with `env` (and `extra`); yields its port."""
    port = free_port()
    child_env = {**os.environ, **env, **extra, "PORT": str(port),
                 "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.Popen(["bash", "-c", f"exec {web_command()}"], cwd=ROOT, env=child_env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                if s.recv(12).startswith(b"HTTP/1.1 200"):
                    break
        except OSError:
            time.sleep(0.2)
    else:
        proc.kill()
        raise AssertionError("web did not start: " + proc.stderr.read().decode()[-2000:])
    try:
        yield port
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=20)


def deliver(port: int, n: int, timeout: float = 10) -> tuple[int, float]:
    """One signed Connect delivery (a customer.created); (status or 0, seconds taken)."""
    body = json.dumps(event("customer.created", customer(f"cus_web{n:06d}", None),
                            account=GYM))
    request = (f"POST /webhooks/stripe/connect HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
               f"Content-Type: application/json\r\nStripe-Signature: "
               f"{sign(body, CONNECT_SECRET)}\r\nContent-Length: {len(body)}\r\n\r\n{body}")
    started = time.monotonic()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.settimeout(timeout)
            s.sendall(request.encode())
            status = int(s.recv(64).split(b" ")[1])
    except (OSError, IndexError, ValueError):
        status = 0
    return status, time.monotonic() - started
