"""The web tier as the Procfile runs it, under connections that send nothing or a byte at a
time: Stripe's deliveries still get their 200, quickly (the attack that stopped intake when a
handful of such connections held all four gthread threads)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from listener.stand_ins import free_port
from tests.support import CONNECT_SECRET, GYM, customer, event, sign

ROOT = Path(__file__).resolve().parent.parent
ATTACK_SECONDS = 30
IDLE, TRICKLING = 200, 20


def web_command() -> str:
    """The Procfile's web line, as Heroku-style runners read it."""
    for line in (ROOT / "Procfile").read_text().splitlines():
        if line.startswith("web:"):
            return line.removeprefix("web:").strip()
    raise AssertionError("Procfile has no web line")


@pytest.fixture
def served(env, db, redis):  # type: ignore[no-untyped-def]
    """The service started by the Procfile's web line on a free port."""
    port = free_port()
    child_env = {**os.environ, **env, "PORT": str(port),
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
    yield port
    os.killpg(proc.pid, 15)
    proc.wait(timeout=20)


def _idle(port: int, stop: threading.Event) -> None:
    """Connect and send nothing; connect again when the server hangs up."""
    while not stop.is_set():
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.settimeout(1)
                while not stop.is_set():
                    try:
                        if s.recv(1) == b"":
                            break  # closed by the server: open another
                    except TimeoutError:
                        continue
        except OSError:
            time.sleep(0.1)


def _trickle(port: int, stop: threading.Event, *, in_headers: bool) -> None:
    """Headers promising a 100 kB body, then one byte every 2 s (or the headers themselves a
    byte at a time); again when the server hangs up."""
    head = (f"POST /webhooks/stripe/connect HTTP/1.1\r\nHost: x\r\n"
            f"Stripe-Signature: t={int(time.time())},v1=00\r\nContent-Length: 100000\r\n\r\n")
    while not stop.is_set():
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                if in_headers:
                    chunks = [c.encode() for c in head]
                else:
                    s.sendall(head.encode())
                    chunks = [b"x"] * 100000
                for chunk in chunks:
                    if stop.wait(2):
                        return
                    s.sendall(chunk)
        except OSError:
            time.sleep(0.1)


def _deliver(port: int, n: int) -> tuple[int, float]:
    body = json.dumps(event("customer.created", customer(f"cus_slow{n:06d}", None),
                            account=GYM))
    request = (f"POST /webhooks/stripe/connect HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
               f"Content-Type: application/json\r\nStripe-Signature: "
               f"{sign(body, CONNECT_SECRET)}\r\nContent-Length: {len(body)}\r\n\r\n{body}")
    started = time.monotonic()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.settimeout(10)
            s.sendall(request.encode())
            status = int(s.recv(64).split(b" ")[1])
    except (OSError, IndexError, ValueError):
        status = 0
    return status, time.monotonic() - started


def test_idle_and_trickling_connections_do_not_stop_deliveries(served):  # type: ignore[no-untyped-def]
    stop = threading.Event()
    attackers = [threading.Thread(target=_idle, args=(served, stop)) for _ in range(IDLE)]
    attackers += [threading.Thread(target=_trickle, args=(served, stop),
                                   kwargs={"in_headers": n % 2 == 0}) for n in range(TRICKLING)]
    for thread in attackers:
        thread.start()
    time.sleep(3)  # every attacker connected and holding on
    results = []
    try:
        started = time.monotonic()
        n = 0
        while time.monotonic() - started < ATTACK_SECONDS:
            results.append(_deliver(served, n))
            n += 1
            time.sleep(0.2)
    finally:
        stop.set()
        for thread in attackers:
            thread.join(timeout=10)

    statuses = [status for status, _ in results]
    latencies = sorted(seconds for _, seconds in results)
    p99 = latencies[max(0, int(len(latencies) * 0.99) - 1)]
    assert len(results) >= ATTACK_SECONDS * 3, len(results)
    assert statuses == [200] * len(results), {s: statuses.count(s) for s in set(statuses)}
    assert p99 < 1.0, f"p99 {p99:.2f}s over {len(results)} deliveries"
