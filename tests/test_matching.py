"""The matching rules of docs/design.md, end to end: signed events in, a real RQ worker, API out."""

from __future__ import annotations

import itertools

import pytest
from sqlalchemy import select

from db import StripeEvent, Subscription
from tests.support import (
    CLUB,
    GYM,
    PLATFORM_ACCOUNT,
    checkout_session,
    customer,
    event,
    post_event,
    run_cli,
    subscription,
)


def member(api, ref, email, cus=None, account=GYM):
    response = api.put(f"/api/venues/{account}/members/{ref}",
                       json={"email": email, "name": ref.title(), "stripe_customer_id": cus})
    assert response.status_code in (200, 201), response.json
    return response.json


def deliver(client, *events):
    for payload in events:
        response = post_event(client, payload)
        assert response.status_code == 200, response.json


def mismatches(api, **params):
    query = "&".join(f"{k}={v}" for k, v in params.items())
    return api.get(f"/api/mismatches?{query}").json["mismatches"]


def only_mismatch(api):
    rows = mismatches(api)
    assert len(rows) == 1, rows
    return rows[0]


def sub_created(sub, cus, account=GYM, status="active", **kw):
    return event("customer.subscription.created", subscription(sub, cus, status),
                 account=account, **kw)


def cus_created(cus, email, account=GYM, **kw):
    return event("customer.created", customer(cus, email), account=account, **kw)


# --- rule 2: linked -------------------------------------------------------------------------

def test_linked_subscription_is_recorded_and_opens_nothing(venues, client, work, db):
    member(venues, "m1", "ann@example.com", cus="cus_Ann")
    deliver(client, cus_created("cus_Ann", "ann@example.com"), sub_created("sub_A", "cus_Ann"))
    work()
    assert mismatches(venues) == []
    with db.session() as s:
        sub = s.scalar(select(Subscription).where(Subscription.subscription_id == "sub_A"))
        assert (sub.state, sub.status) == ("linked", "active")


# --- rule 4: the three cases ----------------------------------------------------------------

def test_case_1_member_has_a_different_customer(venues, client, work):
    member(venues, "m1", "ann@example.com", cus="cus_Linked")
    deliver(client, cus_created("cus_New", "ann@example.com"), sub_created("sub_1", "cus_New"))
    work()
    m = only_mismatch(venues)
    assert (m["case"], m["status"], m["customer_id"], m["linked_customer_id"], m["member_ref"],
            m["customer_email"], m["subscription_id"], m["account_id"]) == (
        1, "open", "cus_New", "cus_Linked", "m1", "ann@example.com", "sub_1", GYM)


def test_case_2_member_without_customer(venues, client, work):
    member(venues, "m1", "bob@example.com")
    deliver(client, cus_created("cus_Bob", "bob@example.com"), sub_created("sub_2", "cus_Bob"))
    work()
    m = only_mismatch(venues)
    assert (m["case"], m["member_ref"], m["linked_customer_id"]) == (2, "m1", None)


def test_case_3_no_member(venues, client, work):
    deliver(client, cus_created("cus_Eve", "eve@example.com"), sub_created("sub_3", "cus_Eve"))
    work()
    m = only_mismatch(venues)
    assert (m["case"], m["member_ref"], m["candidates"]) == (3, None, [])


@pytest.mark.parametrize("stripe_email", ["  Ann@Example.COM ", "ANN@EXAMPLE.COM"])
def test_email_case_and_whitespace_do_not_matter(venues, client, work, stripe_email):
    member(venues, "m1", "ann@example.com")
    deliver(client, cus_created("cus_X", stripe_email), sub_created("sub_X", "cus_X"))
    work()
    assert only_mismatch(venues)["case"] == 2


def test_no_other_rewriting_of_emails(venues, client, work):
    member(venues, "m1", "ann.lee+gym@example.com")
    deliver(client, cus_created("cus_X", "annlee@example.com"), sub_created("sub_X", "cus_X"))
    work()
    assert only_mismatch(venues)["case"] == 3


def test_member_of_another_venue_never_counts(venues, client, work):
    member(venues, "c1", "ann@example.com", cus="cus_Club", account=CLUB)
    deliver(client, cus_created("cus_X", "ann@example.com"), sub_created("sub_X", "cus_X"))
    work()
    m = only_mismatch(venues)
    assert (m["case"], m["account_id"]) == (3, GYM)


def test_customer_linked_in_another_venue_is_not_linked_here(venues, client, work):
    member(venues, "c1", "ann@example.com", cus="cus_X", account=CLUB)
    deliver(client, cus_created("cus_X", "ann@example.com"), sub_created("sub_X", "cus_X"))
    work()
    assert only_mismatch(venues)["case"] == 3


def test_several_members_share_an_email(venues, client, work):
    member(venues, "m1", "family@example.com")
    member(venues, "m2", "Family@example.com", cus="cus_Kid")
    member(venues, "m3", "family@example.com")
    deliver(client, cus_created("cus_F", "family@example.com"), sub_created("sub_F", "cus_F"))
    work()
    m = only_mismatch(venues)
    assert m["case"] == 1 and m["linked_customer_id"] == "cus_Kid"
    assert [c["member_ref"] for c in m["candidates"]] == ["m1", "m2", "m3"]
    assert m["candidates"][1] == {"member_ref": "m2", "email": "Family@example.com",
                                  "stripe_customer_id": "cus_Kid"}


def test_several_members_none_linked_is_case_2_with_candidates(venues, client, work):
    member(venues, "m1", "family@example.com")
    member(venues, "m2", "family@example.com")
    deliver(client, cus_created("cus_F", "family@example.com"), sub_created("sub_F", "cus_F"))
    work()
    m = only_mismatch(venues)
    assert m["case"] == 2 and len(m["candidates"]) == 2 and m["member_ref"] is None


def test_customer_without_email_is_case_3_with_note(venues, client, work):
    deliver(client, cus_created("cus_N", None), sub_created("sub_N", "cus_N"))
    work()
    m = only_mismatch(venues)
    assert (m["case"], m["note"], m["customer_email"]) == (3, "customer has no email", None)


def test_checkout_session_email_is_used(venues, client, work):
    member(venues, "m1", "pay@example.com")
    deliver(client, event("checkout.session.completed",
                          checkout_session("cs_1", "cus_P", "sub_P", "pay@example.com"),
                          account=GYM))
    work()
    m = only_mismatch(venues)
    assert (m["case"], m["subscription_id"], m["customer_id"]) == (2, "sub_P", "cus_P")


def test_checkout_in_payment_mode_is_ignored(venues, client, work, api):
    payload = event("checkout.session.completed",
                    checkout_session("cs_2", "cus_P", None, "pay@example.com", mode="payment"),
                    account=GYM)
    deliver(client, payload)
    work()
    assert api.get(f"/api/events/{payload['id']}").json["status"] == "ignored"
    assert mismatches(venues) == []


def test_other_event_types_are_ignored(venues, client, work, api):
    payload = event("invoice.created", {"id": "in_1", "object": "invoice"}, account=GYM)
    deliver(client, payload)
    work()
    assert api.get(f"/api/events/{payload['id']}").json["status"] == "ignored"


# --- ordering and duplicates ----------------------------------------------------------------

def test_subscription_before_customer_retries_instead_of_guessing(venues, client, work, api,
                                                                  monkeypatch):
    member(venues, "m1", "late@example.com")
    sub_event = sub_created("sub_L", "cus_L")
    deliver(client, sub_event)
    work()  # no key, no mirror: retries, then fails rather than guessing case 3
    assert mismatches(venues) == []
    status = api.get(f"/api/events/{sub_event['id']}").json
    assert status["status"] == "failed" and "cus_L" in status["last_error"]
    # The customer becoming known releases the event that waited for it, failed or not.
    deliver(client, cus_created("cus_L", "late@example.com"))
    work()
    assert only_mismatch(venues)["case"] == 2
    assert api.get(f"/api/events/{sub_event['id']}").json["status"] == "processed"


def test_subscription_before_customer_in_one_drain(venues, client, work):
    """The retry after customer.created lands picks up the email."""
    member(venues, "m1", "late@example.com")
    deliver(client, sub_created("sub_L", "cus_L"), cus_created("cus_L", "late@example.com"))
    work()
    assert only_mismatch(venues)["case"] == 2


def test_same_event_twice_changes_nothing(venues, client, work, db):
    first = cus_created("cus_D", "dup@example.com")
    sub = sub_created("sub_D", "cus_D")
    deliver(client, first, sub)
    work()
    before = only_mismatch(venues)
    deliver(client, first, sub)
    from workers.jobs import process_event

    process_event(sub["id"])  # even a job run twice
    work()
    assert only_mismatch(venues) == before
    with db.session() as s:
        assert s.query(StripeEvent).count() == 2


def _end_state(api, db):
    m = mismatches(api)
    with db.session() as s:
        subs = [(x.subscription_id, x.state, x.status, x.canceled)
                for x in s.scalars(select(Subscription).order_by(Subscription.subscription_id))]
    keep = ("case", "status", "resolution", "customer_id", "customer_email", "subscription_id")
    return [{k: row[k] for k in keep} for row in m], subs


@pytest.mark.parametrize("order", list(itertools.permutations(range(3))))
def test_created_deleted_created_in_every_order_same_end_state(venues, client, work, db,
                                                               order, app):
    """customer.subscription.created → deleted → created (a replay) give one end state."""
    from tests.conftest import _wipe

    member(venues, "m1", "ord@example.com")
    base = 1_700_000_000
    story = [
        sub_created("sub_O", "cus_O", created=base + 10),
        event("customer.subscription.deleted", subscription("sub_O", "cus_O", "canceled"),
              account=GYM, created=base + 20),
        sub_created("sub_O", "cus_O", created=base + 10, event_id="evt_replayed_created"),
    ]
    deliver(client, cus_created("cus_O", "ord@example.com", created=base))
    work()
    for index in order:
        deliver(client, story[index])
        work()
    state = _end_state(venues, db)
    assert state == (
        [{"case": 2, "status": "resolved", "resolution": "canceled", "customer_id": "cus_O",
          "customer_email": "ord@example.com", "subscription_id": "sub_O"}],
        [("sub_O", "mismatch", "canceled", True)],
    )
    _wipe(db)


def test_older_update_does_not_overwrite_newer_status(venues, client, work, db):
    member(venues, "m1", "s@example.com", cus="cus_S")
    deliver(client,
            event("customer.subscription.updated", subscription("sub_S", "cus_S", "past_due"),
                  account=GYM, created=2_000),
            event("customer.subscription.updated", subscription("sub_S", "cus_S", "active"),
                  account=GYM, created=1_000))
    work()
    with db.session() as s:
        assert s.scalar(select(Subscription.status)) == "past_due"


def test_older_customer_event_does_not_overwrite_mirror(venues, client, work):
    member(venues, "m1", "new@example.com")
    deliver(client,
            event("customer.updated", customer("cus_M", "new@example.com"), account=GYM,
                  created=2_000),
            event("customer.created", customer("cus_M", "old@example.com"), account=GYM,
                  created=1_000),
            sub_created("sub_M", "cus_M"))
    work()
    m = only_mismatch(venues)
    assert (m["case"], m["customer_email"]) == (2, "new@example.com")


def test_deleted_customer_stays_deleted(venues, client, work, db):
    from db import StripeCustomer

    deliver(client,
            event("customer.deleted", customer("cus_Z", "z@example.com", deleted=True),
                  account=GYM, created=2_000),
            event("customer.updated", customer("cus_Z", "z2@example.com"), account=GYM,
                  created=1_000))
    work()
    with db.session() as s:
        row = s.scalar(select(StripeCustomer).where(StripeCustomer.customer_id == "cus_Z"))
        # Deletion is final, and Stripe purges its email and name: so does the mirror.
        assert (row.deleted, row.email, row.name) == (True, None, None)


def test_customer_email_change_rechecks_open_mismatch(venues, client, work):
    member(venues, "m1", "right@example.com")
    deliver(client, cus_created("cus_C", "wrong@example.com", created=1_000),
            sub_created("sub_C", "cus_C"))
    work()
    assert only_mismatch(venues)["case"] == 3
    deliver(client, event("customer.updated", customer("cus_C", "right@example.com"),
                          account=GYM, created=2_000))
    work()
    m = only_mismatch(venues)
    assert (m["case"], m["customer_email"]) == (2, "right@example.com")


# --- rule 5: resolution ---------------------------------------------------------------------

def test_cancel_resolves_the_mismatch(venues, client, work):
    deliver(client, cus_created("cus_Q", "q@example.com"), sub_created("sub_Q", "cus_Q"))
    work()
    deliver(client, event("customer.subscription.updated",
                          subscription("sub_Q", "cus_Q", "canceled"), account=GYM))
    work()
    m = only_mismatch(venues)
    assert (m["status"], m["resolution"]) == ("resolved", "canceled")
    assert m["resolved_at"]


def test_member_linked_later_through_api_resolves(venues, client, work):
    member(venues, "m1", "link@example.com")
    deliver(client, cus_created("cus_K", "link@example.com"), sub_created("sub_K", "cus_K"))
    work()
    assert only_mismatch(venues)["status"] == "open"
    member(venues, "m1", "link@example.com", cus="cus_K")
    work()
    m = only_mismatch(venues)
    assert (m["status"], m["resolution"]) == ("resolved", "linked")


def test_member_linked_later_through_csv_resolves(venues, client, work, app, tmp_path):
    deliver(client, cus_created("cus_K", "csv@example.com"), sub_created("sub_K", "cus_K"))
    work()
    assert only_mismatch(venues)["case"] == 3
    csv = tmp_path / "members.csv"
    csv.write_text("account_id,member_ref,email,name,stripe_customer_id\n"
                   f"{GYM},m9,csv@example.com,Csv Person,cus_K\n")
    result = run_cli("members", "import", str(csv))
    assert result.exit_code == 0, result.output
    work()
    assert (only_mismatch(venues)["status"], only_mismatch(venues)["resolution"]) == (
        "resolved", "linked")


def test_new_member_with_that_email_moves_case_3_to_case_2(venues, client, work):
    deliver(client, cus_created("cus_J", "join@example.com"), sub_created("sub_J", "cus_J"))
    work()
    assert only_mismatch(venues)["case"] == 3
    member(venues, "m1", "join@example.com")
    work()
    assert only_mismatch(venues)["case"] == 2


def test_resolve_by_hand(venues, client, work):
    deliver(client, cus_created("cus_H", "h@example.com"), sub_created("sub_H", "cus_H"))
    work()
    m = only_mismatch(venues)
    r = venues.post(f"/api/mismatches/{m['id']}/resolve", json={"note": "refunded, ticket 42"})
    assert r.status_code == 200
    assert (r.json["status"], r.json["resolution"], r.json["resolution_note"]) == (
        "resolved", "manual", "refunded, ticket 42")
    # a later renewal does not reopen it
    deliver(client, event("customer.subscription.updated", subscription("sub_H", "cus_H"),
                          account=GYM))
    work()
    assert only_mismatch(venues)["status"] == "resolved"


# --- rule 6 and rule 1 ----------------------------------------------------------------------

def test_one_mismatch_per_subscription_across_event_types(venues, client, work):
    member(venues, "m1", "one@example.com")
    deliver(client, cus_created("cus_1", "one@example.com"), sub_created("sub_1", "cus_1"),
            event("customer.subscription.updated", subscription("sub_1", "cus_1"),
                  account=GYM),
            event("checkout.session.completed",
                  checkout_session("cs_1", "cus_1", "sub_1", "one@example.com"), account=GYM))
    work()
    assert len(mismatches(venues)) == 1


def test_unknown_account_is_unrouted(venues, client, work, api, db):
    payload = sub_created("sub_U", "cus_U", account="acct_1Unknown00000000")
    deliver(client, payload)
    work()
    body = api.get(f"/api/events/{payload['id']}").json
    assert (body["status"], body["outcome"], body["unrouted"]) == ("processed", "unrouted", True)
    assert mismatches(venues) == []
    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'mismatch_events_by_outcome{outcome="unrouted"} 1.0' in metrics


def test_livemode_differs_from_venue_is_recorded_not_matched(venues, client, work, api):
    payload = sub_created("sub_T", "cus_T", livemode=True)
    deliver(client, cus_created("cus_T", "t@example.com", livemode=True), payload)
    work()
    assert api.get(f"/api/events/{payload['id']}").json["outcome"] == "livemode_mismatch"
    assert mismatches(venues) == []


def test_platform_events_belong_to_the_platform_account(api, client, work):
    api.put(f"/api/venues/{PLATFORM_ACCOUNT}", json={"name": "Platform Studio",
                                                     "admin_emails": [], "livemode": False})
    api.put(f"/api/venues/{PLATFORM_ACCOUNT}/members/p1", json={
        "email": "p@example.com", "name": None, "stripe_customer_id": None})
    deliver(client, event("customer.created", customer("cus_P", "p@example.com")),
            event("customer.subscription.created", subscription("sub_P", "cus_P")))
    work()
    m = only_mismatch(api)
    assert (m["account_id"], m["case"]) == (PLATFORM_ACCOUNT, 2)


def test_platform_events_without_platform_account_are_unrouted(api, client, work, monkeypatch):
    monkeypatch.delenv("STRIPE_PLATFORM_ACCOUNT")
    payload = event("customer.subscription.created", subscription("sub_P", "cus_P"))
    deliver(client, payload)
    work()
    assert api.get(f"/api/events/{payload['id']}").json["outcome"] == "unrouted"


def test_connect_and_platform_events_are_kept_apart(venues, api, client, work):
    """The same customer id on the platform does not feed a venue's mirror."""
    api.put(f"/api/venues/{PLATFORM_ACCOUNT}", json={"name": "Platform", "admin_emails": [],
                                                     "livemode": False})
    member(venues, "m1", "apart@example.com")
    deliver(client, event("customer.created", customer("cus_S", "apart@example.com")),
            cus_created("cus_S", "other@example.com"), sub_created("sub_S", "cus_S"))
    work()
    m = only_mismatch(venues)
    assert (m["account_id"], m["case"], m["customer_email"]) == (GYM, 3, "other@example.com")
