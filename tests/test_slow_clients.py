"""The web tier as the Procfile runs it, under connections that send nothing or a byte at a
time: Stripe's deliveries still get their 200, quickly (the attack that stopped intake when a
handful of such connections held all four gthread threads)."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from tests.web_server import deliver, procfile_web

ATTACK_SECONDS = 30
IDLE, TRICKLING = 200, 20


@pytest.fixture
def served(env, db, redis):  # type: ignore[no-untyped-def]
    """The service started by the Procfile's web line on a free port."""
    with procfile_web(env) as port:
        yield port


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
            results.append(deliver(served, n))
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
