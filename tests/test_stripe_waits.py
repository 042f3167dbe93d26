"""Waiting on Stripe, as the workers do it: with no database transaction open, under one rate
limit for every process, and never turning Stripe's "no such customer" into a case-3 notice.

These run real worker processes (`mismatch worker`) against slow or unknowing Stripe
stand-ins on loopback, so some take as long as the wait they test (25 s, 75 s)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from rq.registry import FailedJobRegistry, StartedJobRegistry
from sqlalchemy import select, text

from config import load_config
from db import Mismatch, Notification, StripeEvent
from standins.localstripe import free_port
from tests.pages_support import SUPPORT_USERS, sign_in
from tests.smtp_server import SmtpServer
from tests.stripe_servers import ConnectStripe, RecordingStripe
from tests.support import GYM, customer, event, post_event, subscription
from workers.queue import get_queue

BIN = Path(sys.executable).parent
SLOW_LOOKUP = 25  # seconds the slow stand-in takes to answer a customer lookup
SUPPORT = "support@platform.test"
ADMINS = ["owner@harbour.test", "desk@harbour.test"]


def wait_until(condition: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def start_worker(log: Path, *args: str) -> subprocess.Popen:
    """`mismatch worker` in a process of its own, with the test's environment."""
    return subprocess.Popen([str(BIN / "mismatch"), "worker", *args], env=dict(os.environ),
                            stdout=log.open("w"), stderr=subprocess.STDOUT)


def stop(proc: subprocess.Popen, timeout: float = 20) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def slow_customer_lookups(monkeypatch: pytest.MonkeyPatch, seconds: float,
                          email: str) -> RecordingStripe:
    """A Stripe stand-in that answers every customer lookup, after `seconds`."""
    def responder(path: str, headers: dict[str, str]) -> tuple[int, dict]:
        time.sleep(seconds)
        return 200, {"id": path.rsplit("/", 1)[-1], "object": "customer", "email": email,
                     "livemode": False}

    server = RecordingStripe(responder)
    monkeypatch.setenv("STRIPE_SECRET_KEY", "sk_test_slow")
    monkeypatch.setenv("STRIPE_API_BASE", server.url)
    monkeypatch.setenv("STRIPE_TIMEOUT", str(seconds + 30))
    return server


def locks_held_by_others(db) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    """(table locks other sessions hold on the matching tables — SELECT … FOR UPDATE and
    writes show up here as RowShare/RowExclusive locks —, sessions idle in a transaction)."""
    with db.engine.connect() as conn:
        locks = conn.execute(text(
            "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
            "WHERE l.pid <> pg_backend_pid() AND c.relname IN "
            "('subscriptions', 'mismatches', 'stripe_events', 'stripe_customers', 'members')"
        )).scalar_one()
        idle = conn.execute(text(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid() AND state LIKE 'idle in transaction%'")).scalar_one()
    return locks, idle


def test_deliveries_are_stored_at_once_while_a_worker_waits_on_stripe(
        venues, client, db, monkeypatch, tmp_path):
    """The worker asks Stripe for an unmirrored customer's email with no transaction open:
    on SQLite every delivery meanwhile is stored and answered at once (the worker holds no
    write lock); on PostgreSQL it holds no lock on any row while it waits."""
    stripe = slow_customer_lookups(monkeypatch, SLOW_LOOKUP, "slow@example.com")
    assert venues.put(f"/api/venues/{GYM}/members/m1",
                      json={"email": "slow@example.com", "name": None,
                            "stripe_customer_id": None}).status_code == 201
    waiting = event("customer.subscription.created", subscription("sub_Slow", "cus_Slow"),
                    account=GYM)
    assert post_event(client, waiting).status_code == 200
    worker = start_worker(tmp_path / "worker.log", "--burst")
    try:
        wait_until(lambda: stripe.requests, 30, "the worker's customer lookup")
        asked = time.monotonic()
        answers, locks = [], []
        for n in range(20):
            payload = event("customer.created",
                            customer(f"cus_During{n:04d}", f"during{n}@example.com"),
                            account=GYM)
            started = time.perf_counter()
            response = post_event(client, payload)
            answers.append((response.status_code, time.perf_counter() - started))
            if not db.is_sqlite:
                locks.append(locks_held_by_others(db))
            time.sleep(max(0.0, asked + (n + 1) * 1.0 - time.monotonic()))
        assert time.monotonic() - asked < SLOW_LOOKUP, "deliveries outlasted the wait"
        assert worker.poll() is None and len(stripe.requests) == 1  # still waiting
        assert [status for status, _ in answers] == [200] * 20
        assert max(seconds for _, seconds in answers) < 1.0, answers
        assert all(sample == (0, 0) for sample in locks), locks
        worker.wait(SLOW_LOOKUP + 60)
    finally:
        stop(worker)
        stripe.stop()
    with db.session() as s:
        [mismatch] = s.scalars(select(Mismatch)).all()
        assert (mismatch.case, mismatch.customer_email) == (2, "slow@example.com")
        statuses = {e.event_id: e.status for e in s.scalars(select(StripeEvent))}
    assert len(statuses) == 21 and set(statuses.values()) == {"processed"}


# --- rule 3: "no such customer" ---------------------------------------------------------------

@pytest.fixture
def smtp(env, monkeypatch):  # type: ignore[no-untyped-def]
    server = SmtpServer(free_port())
    server.start()
    monkeypatch.setenv("SMTP_URL", f"smtp://127.0.0.1:{server.port}")
    monkeypatch.setenv("SUPPORT_EMAIL", SUPPORT)
    yield server
    server.stop()


def test_a_customer_stripe_does_not_know_waits_and_alerts_support_not_the_venue(
        smtp, env, monkeypatch, api, client, work, db):
    stripe = ConnectStripe()  # it knows no customer of GYM
    monkeypatch.setenv("STRIPE_SECRET_KEY", "sk_test_unknown")
    monkeypatch.setenv("STRIPE_API_BASE", stripe.url)
    monkeypatch.setenv("SUPPORT_USERS", SUPPORT_USERS)
    api.put(f"/api/venues/{GYM}", json={"name": "Harbour Gym", "admin_emails": ADMINS,
                                        "livemode": False})
    api.put(f"/api/venues/{GYM}/members/m1", json={"email": "new.member@example.com", "name": None,
                                                     "stripe_customer_id": None})
    ghosts = [event("customer.subscription.created", subscription(f"sub_Ghost{n}",
                                                                  f"cus_Ghost{n}"),
                    account=GYM) for n in (1, 2)]
    try:
        for payload in ghosts:
            assert post_event(client, payload).status_code == 200
        work()

        assert api.get("/api/mismatches").json["mismatches"] == []  # not case 3
        for n, payload in enumerate(ghosts, start=1):
            row = api.get(f"/api/events/{payload['id']}").json
            assert row["status"] != "processed" and row["outcome"] == "customer_unknown"
            assert f"Stripe has no customer cus_Ghost{n} in {GYM}" in row["last_error"]
        [alert] = smtp.messages  # one per account per day, however many events wait
        assert alert["To"] == SUPPORT and alert["X-Stripe-Account"] == GYM
        assert "no such customer" in alert["Subject"]
        assert "cus_Ghost1" in alert.get_body(("plain",)).get_content()
        # The support dashboard names the account and the likely cause.
        from listener.app import create_app

        staff = create_app(load_config()).test_client()
        assert sign_in(staff).status_code == 303
        dashboard = staff.get("/support").get_data(as_text=True)
        assert "Stripe says it has no such customer" in dashboard and GYM in dashboard
        assert "STRIPE_SECRET_KEY" in dashboard

        # The customer becomes known: the event that waited is classified as usual.
        assert post_event(client, event("customer.created",
                                        customer("cus_Ghost1", "New.Member@example.com"),
                                        account=GYM)).status_code == 200
        work()
    finally:
        stripe.stop()
    [mismatch] = api.get("/api/mismatches").json["mismatches"]
    assert (mismatch["subscription_id"], mismatch["case"]) == ("sub_Ghost1", 2)
    notices = [m for m in smtp.messages if m["X-Mismatch-Id"]]
    assert sorted(m["To"] for m in notices) == sorted(ADMINS)
    assert {m["X-Mismatch-Case"] for m in notices} == {"2"}
    row = api.get(f"/api/events/{ghosts[0]['id']}").json
    assert (row["status"], row["outcome"], row["last_error"]) == ("processed", "case_2", None)
    assert api.get(f"/api/events/{ghosts[1]['id']}").json["outcome"] == "customer_unknown"
    with db.session() as s:
        kinds = sorted(n.kind for n in s.scalars(select(Notification)))
    assert kinds == ["case_2", "case_2", "customer_unknown"]


# --- RQ stays clean around a slow batch --------------------------------------------------------

MAINTAINING_WORKER = """
from workers.queue import get_queue
from workers.runtime import runtime
from workers.service import MismatchWorker

queue = get_queue(runtime()[0])
# RQ's maintenance every 5 s (its registries' and intermediate queue's clean-up), a dequeue
# that times out every 5 s so an idle worker gets there too.
MismatchWorker([queue], connection=queue.connection, maintenance_interval=5,
               worker_ttl=20).work(logging_level="INFO")
"""


def test_a_batch_slower_than_rqs_cleanup_window_leaves_rq_clean(venues, client, config, db,
                                                                monkeypatch, tmp_path):
    """RQ fails a job that sits in its intermediate queue for over a minute outside the
    started registry. A batch whose Stripe step takes 75 s, while another worker runs RQ's
    maintenance every 5 s, must end with nothing failed or started and every event done once."""
    stripe = slow_customer_lookups(monkeypatch, 75, "slowest@example.com")
    payloads = [event("customer.subscription.created", subscription("sub_Slowest", "cus_Slowest"),
                      account=GYM)]
    for n in range(9):
        payloads += [event("customer.created", customer(f"cus_Fast{n}", f"fast{n}@example.com"),
                           account=GYM),
                     event("customer.subscription.created",
                           subscription(f"sub_Fast{n}", f"cus_Fast{n}"), account=GYM)]
    for payload in payloads:
        assert post_event(client, payload).status_code == 200
    batching = start_worker(tmp_path / "batching.log", "--burst")
    maintaining = None
    try:
        wait_until(lambda: stripe.requests, 30, "the batch's Stripe step")
        maintaining = subprocess.Popen([sys.executable, "-c", MAINTAINING_WORKER],
                                       env=dict(os.environ),
                                       stdout=(tmp_path / "maintaining.log").open("w"),
                                       stderr=subprocess.STDOUT)
        assert batching.wait(150) == 0
    finally:
        stop(batching)
        if maintaining is not None:
            stop(maintaining)
        stripe.stop()
    assert "clean" in (tmp_path / "maintaining.log").read_text().lower()  # it did maintain
    queue = get_queue(config)
    assert len(FailedJobRegistry(queue=queue)) == 0
    assert len(StartedJobRegistry(queue=queue)) == 0
    assert queue.count == 0
    with db.session() as s:
        events = list(s.scalars(select(StripeEvent)))
        mismatches = {m.subscription_id: m.case for m in s.scalars(select(Mismatch))}
    assert len(events) == len(payloads)
    assert {(e.status, e.attempts) for e in events} == {("processed", 1)}
    assert mismatches == {"sub_Slowest": 3, **{f"sub_Fast{n}": 3 for n in range(9)}}


# --- one rate limit for every process ----------------------------------------------------------

LOOKUPS = """
import sys, time
from workers.runtime import runtime
from workers.stripe_side.api import StripeApi

api = StripeApi(runtime()[0])
api.retrieve_customer("acct_1Gym000000000000", "cus_Warm")  # connection, imports: warm
time.sleep(max(0.0, float(sys.argv[2]) - time.time()))  # all processes start together
for n in range(int(sys.argv[1])):
    api.retrieve_customer("acct_1Gym000000000000", f"cus_Limit{n}")
"""


def test_one_stripe_rate_limit_holds_across_processes(env, monkeypatch, redis):
    """Three processes reading as fast as they can, STRIPE_RATE_LIMIT=5: Stripe sees at most
    5 requests in any second, from all of them together."""
    def responder(path: str, headers: dict[str, str]) -> tuple[int, dict]:
        return 200, {"id": path.rsplit("/", 1)[-1], "object": "customer", "email": None}

    arrivals: list[float] = []

    def record(path: str, headers: dict[str, str]) -> tuple[int, dict]:
        if "Warm" not in path:
            arrivals.append(time.monotonic())
        return responder(path, headers)

    server = RecordingStripe(record)
    monkeypatch.setenv("STRIPE_SECRET_KEY", "sk_test_limit")
    monkeypatch.setenv("STRIPE_API_BASE", server.url)
    monkeypatch.setenv("STRIPE_RATE_LIMIT", "5")
    try:
        start = str(time.time() + 4)  # after start-up, and after the warm-ups' window
        procs = [subprocess.Popen([sys.executable, "-c", LOOKUPS, "6", start],
                                  env=dict(os.environ)) for _ in range(3)]
        assert [p.wait(60) for p in procs] == [0, 0, 0]
    finally:
        server.stop()
    assert len(arrivals) == 18
    # Requests granted in one second can reach the server a few ms apart from their grant:
    # a 0.9 s window of arrivals only holds grants of less than one second.
    busiest = max(sum(1 for t in arrivals if start <= t < start + 0.9) for start in arrivals)
    assert busiest <= 5, arrivals
    assert arrivals[-1] - arrivals[0] >= 2.5  # 18 requests at 5/s need more than 3 windows
