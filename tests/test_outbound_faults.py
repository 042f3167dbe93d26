"""Outbound delivery under faults, with real `mismatch worker` processes: a worker SIGKILLed
while a receiver holds its request loses nothing (the message arrives, under the same
webhook-id, once the killed drain's lease lapses and the sweeper queues it again); a
destination that holds every request does not hold up the admins' notices or the other
destinations."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from db import Delivery, DeliveryStatus
from standins.localstripe import free_port
from standins.receiver import receiving
from tests.smtp_server import SmtpServer
from tests.support import BOOKING_SECRET, GYM, customer, event, post_event, subscription
from workers.runtime import runtime
from workers.upkeep.sweep import sweep

MISMATCH = str(Path(sys.executable).parent / "mismatch")


def wait_for(what: str, done: Callable[[], bool], seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def start(log: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([MISMATCH, "worker", *args], env=dict(os.environ),
                            stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=20)


def open_mismatch(client, n: int) -> None:  # type: ignore[no-untyped-def]
    sub, cus = f"sub_1Faults{n:011d}", f"cus_1Faults{n:011d}"
    for payload in (event("customer.created", customer(cus, f"walkin{n}@example.com"),
                          account=GYM),
                    event("customer.subscription.created", subscription(sub, cus),
                          account=GYM)):
        assert post_event(client, payload).status_code == 200


@pytest.fixture
def short_lease(env, monkeypatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("OUTBOUND_TIMEOUT", "2")  # the killed drain's lease: 17 s


def test_a_worker_killed_mid_delivery_loses_nothing(
        booking, short_lease, venues, client, config, db, work, deliver, tmp_path
        ):  # type: ignore[no-untyped-def]
    booking.delay = 30.0  # holds the request: the worker is killed while it waits
    open_mismatch(client, 1)
    work()
    worker = start(tmp_path / "outbound.log", "--outbound")
    try:
        wait_for("the delivery to reach the receiver", lambda: len(booking.attempts) == 1)
    finally:
        kill(worker)
    [message_id] = booking.attempts
    assert booking.received == []
    with db.session() as s:
        [delivery] = s.scalars(select(Delivery))
        assert delivery.status == DeliveryStatus.PENDING and delivery.attempts == 0

    booking.delay = 0.0
    # The killed drain's lease lapses; the sweeper (every worker runs it) then queues the
    # destination again. Until then it is left alone: nobody else sends to it meanwhile.
    assert sweep(config, runtime()[1], older_than=timedelta(0))["outbound"] == 0
    wait_for("the killed drain's lease to lapse",
             lambda: sweep(config, runtime()[1], older_than=timedelta(0))["outbound"] == 1,
             seconds=40)
    deliver()
    assert [r["webhook_id"] for r in booking.received] == [message_id]  # arrived, once
    assert booking.attempts == [message_id, message_id]  # the same id both times
    with db.session() as s:
        [delivery] = s.scalars(select(Delivery))
        assert delivery.status == DeliveryStatus.DELIVERED


@pytest.fixture
def smtp(env, monkeypatch) -> Iterator[SmtpServer]:  # type: ignore[no-untyped-def]
    server = SmtpServer(free_port())
    server.start()
    monkeypatch.setenv("SMTP_URL", f"smtp://127.0.0.1:{server.port}")
    yield server
    server.stop()


@pytest.fixture
def private_ok(env, monkeypatch):  # type: ignore[no-untyped-def]
    """A destination on loopback may be made through the API (listed before the app)."""
    monkeypatch.setenv("ALLOW_PRIVATE_DESTINATIONS", "1")
    monkeypatch.setenv("OUTBOUND_TIMEOUT", "30")  # longer than the hanging receiver holds


def test_a_destination_that_hangs_delays_neither_notices_nor_others(
        booking, smtp, private_ok, venues, client, api, tmp_path):  # type: ignore[no-untyped-def]
    """Causal, not timed: the notices and the booking product's messages all arrive while
    the hanging destination is still holding its first request."""
    with receiving(BOOKING_SECRET, delay=25.0) as hanging:
        made = api.put("/api/destinations/slow", json={"url": hanging.url})
        assert made.status_code == 201
        hanging.secret = made.json["secret"]
        logs = tmp_path
        workers = [start(logs / "events.log", "--sweep-every", "0"),
                   start(logs / "outbound-1.log", "--outbound"),
                   start(logs / "outbound-2.log", "--outbound")]
        try:
            open_mismatch(client, 0)
            wait_for("the hanging destination to be holding a request",
                     lambda: len(hanging.attempts) >= 1)
            for n in range(1, 5):  # while it holds one outbound worker
                open_mismatch(client, n)
            wait_for("five mismatch.opened messages at the booking product",
                     lambda: len(booking.received) == 5)
            wait_for("the admins' five notices", lambda: len(smtp.messages) == 5)
            assert hanging.answered == 0, "notices or messages waited for the hanging destination"
            assert len(hanging.attempts) == 1  # one request at a time: never a pile-up
        finally:
            for worker in workers:
                kill(worker)
    assert {r["type"] for r in booking.received} == {"mismatch.opened"}
    assert all(m["X-Mismatch-Case"] == "3" for m in smtp.messages)
