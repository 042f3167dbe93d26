"""Years of history: retention keeps dedup, the timeline and the mismatch's facts; tallies
agree with a recount; the 0006 migration (64-bit ids, named ids, tallies) on a database that
already holds events, on SQLite and PostgreSQL alike."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from sqlalchemy import create_engine, func, select, text, update
from sqlalchemy.engine import make_url

from db import Database, EventTally, Member, StripeEvent, upgrade, utcnow
from db.history import rebuild_tallies
from tests.pages_support import SUPPORT_USERS, sign_in
from tests.support import customer, event, post_event, run_cli, subscription

GYM = "acct_1Gym000000000000"


def cli(*args: str):  # type: ignore[no-untyped-def]

    return run_cli(*args)


def metrics(client) -> dict[str, float]:  # type: ignore[no-untyped-def]
    from prometheus_client.parser import text_string_to_metric_families

    found = {}
    for family in text_string_to_metric_families(client.get("/metrics").get_data(as_text=True)):
        if family.name in ("mismatch_events", "mismatch_events_by_outcome"):
            for sample in family.samples:
                found[f"{family.name}{sorted(sample.labels.items())}"] = sample.value
    return found


def outside_subscription(api, client, work) -> dict[str, dict]:  # type: ignore[no-untyped-def]
    """A case-1 mismatch at Harbour Gym from three delivered events, and one unhandled."""
    api.put(f"/api/venues/{GYM}", json={"name": "Harbour Gym", "livemode": False,
                                        "admin_emails": ["owner@gym.test"]})
    api.put(f"/api/venues/{GYM}/members/m-ann", json={
        "email": "ann@example.com", "name": "Ann", "stripe_customer_id": "cus_AnnOld0000001"})
    events = {
        "customer": event("customer.created", customer("cus_AnnNew0000001", "ann@example.com"),
                          account=GYM),
        "subscription": event("customer.subscription.created",
                              subscription("sub_Ann0000000001", "cus_AnnNew0000001"),
                              account=GYM),
        "updated": event("customer.subscription.updated",
                         subscription("sub_Ann0000000001", "cus_AnnNew0000001"), account=GYM),
        "unhandled": event("invoice.created", {"id": "in_1", "object": "invoice",
                                               "customer": "cus_AnnNew0000001"}, account=GYM),
    }
    for payload in events.values():
        assert post_event(client, payload).status_code == 200
    work()
    return events


def test_prune_keeps_dedup_timeline_and_facts_and_frees_payloads(
        env, api, client, work, db, monkeypatch):
    from config import load_config
    from listener.app import create_app

    events = outside_subscription(api, client, work)
    [before] = api.get("/api/mismatches").json["mismatches"]
    counts_before = metrics(client)
    # Three of them are old; one old event is still waiting (not finished): it keeps its
    # payload whatever its age.
    old = [events[k]["id"] for k in ("customer", "subscription", "unhandled")]
    waiting = event("customer.subscription.created", subscription("sub_Wait", "cus_Wait"),
                    account=GYM)
    assert post_event(client, waiting).status_code == 200
    with db.session() as s:
        s.execute(update(StripeEvent).where(StripeEvent.event_id.in_([*old, waiting["id"]]))
                  .values(received_at=utcnow() - timedelta(days=100)))
        freed_before = s.scalar(select(func.sum(func.length(StripeEvent.payload))).where(
            StripeEvent.event_id.in_(old)))
    assert freed_before > 0

    result = cli("prune")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("3 payloads emptied (events received over 90 days ago")
    with db.session() as s:
        payloads = dict(s.execute(select(StripeEvent.event_id, StripeEvent.payload)).all())
    assert all(payloads[i] == "" for i in old)  # freed
    assert json.loads(payloads[events["updated"]["id"]])["id"] == events["updated"]["id"]
    assert json.loads(payloads[waiting["id"]])["id"] == waiting["id"]

    # Dedup: a redelivery of a pruned event is still a duplicate, and changes nothing.
    again = post_event(client, events["subscription"])
    assert again.status_code == 200 and again.json["duplicate"] is True
    assert api.get(f"/api/events/{events['subscription']['id']}").json["status"] == "processed"
    # The mismatch's facts and the counts are what they were.
    [after] = api.get("/api/mismatches").json["mismatches"]
    assert after == before
    assert metrics(client) == counts_before | {
        "mismatch_events[('status', 'received')]":
            counts_before["mismatch_events[('status', 'received')]"] + 1}
    # The timeline still lists the pruned events.
    monkeypatch.setenv("SUPPORT_USERS", SUPPORT_USERS)
    console = create_app(load_config(), TESTING=True).test_client()
    sign_in(console)
    page = console.get(f"/mismatches/{before['id']}").get_data(as_text=True)
    timeline = page[page.index('id="timeline"'):]
    for key in ("customer", "subscription", "updated", "unhandled"):
        assert events[key]["id"] in timeline, key
    assert "4 events naming sub_Ann0000000001 or cus_AnnNew0000001" in timeline
    # Nothing more is due: a second run frees nothing.
    assert cli("prune").output.startswith("0 payloads emptied")


def test_tallies_are_what_a_recount_of_the_inbox_says(env, api, client, work, db):
    outside_subscription(api, client, work)
    unrouted = event("customer.subscription.created", subscription("sub_U", "cus_U"),
                     account="acct_1Nobody0000000000")
    assert post_event(client, unrouted).status_code == 200
    work()
    with db.session() as s:
        kept = sorted(tuple(r) for r in s.execute(
            select(EventTally.status, EventTally.outcome, EventTally.account_id,
                   EventTally.livemode, EventTally.n)))
        rebuild_tallies(s)
    with db.session() as s:
        recount = sorted(tuple(r) for r in s.execute(
            select(EventTally.status, EventTally.outcome, EventTally.account_id,
                   EventTally.livemode, EventTally.n)))
    assert kept == recount
    assert ("ignored", "unhandled_type", GYM, False, 1) in kept
    assert ("processed", "unrouted", "acct_1Nobody0000000000", False, 1) in kept
    found = metrics(client)
    assert found["mismatch_events[('status', 'processed')]"] == sum(
        n for status, *_, n in kept if status == "processed")
    assert found["mismatch_events_by_outcome[('outcome', 'unrouted')]"] == 1


# --- the migration ---------------------------------------------------------------------------

@pytest.fixture
def fresh_url(database_url, tmp_path):  # type: ignore[no-untyped-def]
    """An empty database of the suite's kind."""
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        yield f"sqlite:///{tmp_path / 'migrate.sqlite3'}"
        return
    name = f"{url.database}_migration"
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    yield url.set(database=name).render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def test_migrations_0006_0007_fill_named_ids_tallies_drift_and_widen_ids(fresh_url):
    upgrade(fresh_url, "0005")
    engine = create_engine(fresh_url)
    rows = [
        ("evt_1", "customer.subscription.created",
         subscription("sub_1", "cus_1"), "processed", "case_1"),
        ("evt_2", "customer.updated", customer("cus_1", "a@example.com"), "processed",
         "mirrored"),
        ("evt_3", "invoice.paid", {"id": "in_1", "object": "invoice", "customer": "cus_1",
                                   "parent": {"subscription_details": {"subscription": "sub_1"}}},
         "processed", "payment_recorded"),
        ("evt_4", "invoice.created", {"id": "in_2", "object": "invoice"}, "ignored",
         "unhandled_type"),
        ("evt_5", "customer.subscription.created", subscription("sub_2", "cus_2"), "received",
         None),
    ]
    with engine.begin() as conn:
        for event_id, type_, obj, status, outcome in rows:
            conn.execute(text(
                "INSERT INTO stripe_events (event_id, endpoint, account_id, livemode, type,"
                " created, payload, status, outcome, attempts, received_at) VALUES (:e,"
                " 'connect', :a, false, :t, 1, :p, :s, :o, 1, :r)"),
                dict(e=event_id, a=GYM, t=type_, s=status, o=outcome, r=utcnow(),
                     p=json.dumps(event(type_, obj, account=GYM, event_id=event_id))))
        # A linked member whose customer's email changed in Stripe (0007: email drift).
        conn.execute(text("INSERT INTO venues (account_id, name, admin_emails, livemode, digest,"
                          " created_at, updated_at) VALUES (:a, 'Gym', '[]', false, false, :t,"
                          " :t)"), dict(a=GYM, t=utcnow()))
        for ref, email, cus in (("m1", "a@example.com", "cus_1"), ("m2", "b@example.com",
                                                                   "cus_2")):
            conn.execute(text(
                "INSERT INTO members (venue_id, member_ref, email, email_normalized,"
                " stripe_customer_id, created_at, updated_at) SELECT id, :r, :e, :e, :c, :t, :t"
                " FROM venues"), dict(r=ref, e=email, c=cus, t=utcnow()))
        for cus, email in (("cus_1", "A@Example.com "), ("cus_2", "new@example.com")):
            conn.execute(text(
                "INSERT INTO stripe_customers (account_id, livemode, customer_id, email,"
                " deleted, last_event_created, updated_at) VALUES (:a, false, :c, :e, false, 1,"
                " :t)"), dict(a=GYM, c=cus, e=email, t=utcnow()))
    engine.dispose()

    upgrade(fresh_url)
    database = Database(fresh_url)
    with database.session() as s:
        named = {e: (sub, cus) for e, sub, cus in s.execute(
            select(StripeEvent.event_id, StripeEvent.subscription_id, StripeEvent.customer_id))}
        tallies = sorted((t.status, t.outcome, t.n) for t in s.scalars(select(EventTally)))
        drifted = {m.member_ref: m.email_drift_since is not None
                   for m in s.scalars(select(Member))}
    assert drifted == {"m1": False, "m2": True}
    assert named == {"evt_1": ("sub_1", "cus_1"), "evt_2": (None, "cus_1"),
                     "evt_3": ("sub_1", "cus_1"), "evt_4": (None, None),
                     "evt_5": ("sub_2", "cus_2")}
    assert tallies == [("ignored", "unhandled_type", 1), ("processed", "case_1", 1),
                       ("processed", "mirrored", 1), ("processed", "payment_recorded", 1)]
    if not database.is_sqlite:
        with database.engine.connect() as conn:
            assert conn.scalar(text(
                "SELECT data_type FROM information_schema.columns WHERE table_name ="
                " 'stripe_events' AND column_name = 'id'")) == "bigint"
            assert conn.scalar(text(
                "SELECT data_type FROM pg_sequences WHERE sequencename ="
                " 'stripe_events_id_seq'")) == "bigint"
            conn.execute(text("SELECT setval('stripe_events_id_seq', 3000000000)"))
    # Past 2**31 (PostgreSQL) or on SQLite's 64-bit rowid: a new event is stored.
    stored = database.store_event(dict(
        event_id="evt_big", endpoint="connect", account_id=GYM, livemode=False,
        type="customer.created", created=1, payload=json.dumps(event(
            "customer.created", customer("cus_9", None), account=GYM)),
        status="received", attempts=0, received_at=utcnow()))
    assert stored is not None and (database.is_sqlite or stored > 2**31)
    database.dispose()
