"""Venue and member sync through the API and the CSV imports: auth, validation, atomicity."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from db import Member, Venue
from tests.support import API_TOKEN

GYM = "acct_1Gym000000000000"


def test_api_needs_the_bearer_token(client):
    assert client.get("/api/mismatches").status_code == 401
    wrong = client.get("/api/mismatches", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and "token" in wrong.json["error"]
    ok = client.get("/api/mismatches", headers={"Authorization": f"Bearer {API_TOKEN}"})
    assert ok.status_code == 200


def test_api_disabled_without_token(env, monkeypatch, db, redis):
    from config import load_config
    from listener import create_app

    monkeypatch.delenv("API_TOKEN")
    response = create_app(load_config()).test_client().get(
        "/api/mismatches", headers={"Authorization": "Bearer anything"})
    assert response.status_code == 403 and "API_TOKEN" in response.json["error"]


def test_venue_upsert_creates_then_updates(api, db):
    body = {"name": "Harbour Gym", "admin_emails": ["a@gym.test", "b@gym.test"],
            "livemode": True}
    assert api.put(f"/api/venues/{GYM}", json=body).status_code == 201
    body["name"] = "Harbour Gym & Spa"
    response = api.put(f"/api/venues/{GYM}", json=body)
    assert response.status_code == 200 and response.json["name"] == "Harbour Gym & Spa"
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(Venue)) == 1


@pytest.mark.parametrize("account, body, message", [
    ("cus_123", {"name": "X"}, "acct_"),
    (GYM, {"admin_emails": []}, "'name' is required"),
    (GYM, {"name": "X", "admin_emails": ["not-an-email"]}, "admin_emails"),
    (GYM, {"name": "X", "livemode": "maybe"}, "livemode"),
    (GYM, ["not", "an", "object"], "JSON object"),
])
def test_venue_bad_input_says_why(api, account, body, message):
    response = api.put(f"/api/venues/{account}", json=body)
    assert response.status_code == 400 and message in response.json["error"]


def test_member_upsert_and_delete(api, db):
    api.put(f"/api/venues/{GYM}", json={"name": "Gym", "admin_emails": []})
    url = f"/api/venues/{GYM}/members/m1"
    assert api.put(url, json={"email": "Ann@Example.com"}).status_code == 201
    response = api.put(url, json={"email": "ann@example.com", "stripe_customer_id": "cus_A"})
    assert response.status_code == 200 and response.json["stripe_customer_id"] == "cus_A"
    with db.session() as s:
        m = s.scalar(select(Member))
        assert (m.email_normalized, m.stripe_customer_id) == ("ann@example.com", "cus_A")
    assert api.delete(url).status_code == 200
    assert api.delete(url).status_code == 404


def test_member_of_unknown_venue_is_404(api):
    response = api.put("/api/venues/acct_1Nope/members/m1", json={"email": "a@b.test"})
    assert response.status_code == 404


@pytest.mark.parametrize("body, message", [
    ({}, "'email' is required"),
    ({"email": "nope"}, "email"),
    ({"email": "a@b.test", "stripe_customer_id": "sub_123"}, "cus_"),
])
def test_member_bad_input_says_why(api, body, message):
    api.put(f"/api/venues/{GYM}", json={"name": "Gym", "admin_emails": []})
    response = api.put(f"/api/venues/{GYM}/members/m1", json=body)
    assert response.status_code == 400 and message in response.json["error"]


def test_one_customer_cannot_link_two_members(api):
    api.put(f"/api/venues/{GYM}", json={"name": "Gym", "admin_emails": []})
    api.put(f"/api/venues/{GYM}/members/m1", json={"email": "a@b.test",
                                                    "stripe_customer_id": "cus_A"})
    response = api.put(f"/api/venues/{GYM}/members/m2", json={"email": "c@b.test",
                                                                "stripe_customer_id": "cus_A"})
    assert response.status_code == 400 and "already linked to member m1" in response.json["error"]


def test_mismatch_and_event_lookups_404(api):
    assert api.get("/api/mismatches/999").status_code == 404
    assert api.post("/api/mismatches/999/resolve", json={}).status_code == 404
    assert api.get("/api/events/evt_missing").status_code == 404


@pytest.mark.parametrize("query", ["status=closed", "case=4", "limit=0", "limit=x"])
def test_mismatch_list_rejects_bad_filters(api, query):
    response = api.get(f"/api/mismatches?{query}")
    assert response.status_code == 400 and response.json["error"]


# --- CSV ------------------------------------------------------------------------------------

def run_cli(app, *args):
    return app.test_cli_runner().invoke(args=list(args))


def test_venues_import(app, tmp_path, db):
    path = tmp_path / "venues.csv"
    path.write_text("account_id,name,admin_emails,livemode\n"
                    f"{GYM},Harbour Gym,a@gym.test;b@gym.test,false\n"
                    "acct_1Club,City Club,boss@club.test,true\n")
    result = run_cli(app, "venues", "import", str(path))
    assert result.exit_code == 0 and "imported 2 venues" in result.output
    with db.session() as s:
        gym = s.scalar(select(Venue).where(Venue.account_id == GYM))
        assert gym.admin_emails == ["a@gym.test", "b@gym.test"] and gym.livemode is False


@pytest.mark.parametrize("rows, line, message", [
    ([f"{GYM},m1,a@b.test,Ann,", f"{GYM},m2,not-an-email,Bob,"], 3, "email"),
    ([f"{GYM},m1,a@b.test,Ann,", "acct_1Nobody,m2,b@b.test,Bob,"], 3, "no venue"),
    ([f"{GYM},m1,a@b.test,Ann,cus_A", f"{GYM},m2,b@b.test,Bob,cus_A"], 3, "already linked"),
    ([f"{GYM},m1,a@b.test,Ann"], 2, "expected 5 fields"),
])
def test_bad_member_row_fails_the_whole_file_with_its_line(app, api, tmp_path, db, rows, line,
                                                           message):
    api.put(f"/api/venues/{GYM}", json={"name": "Gym", "admin_emails": []})
    path = tmp_path / "members.csv"
    path.write_text("account_id,member_ref,email,name,stripe_customer_id\n" + "\n".join(rows))
    result = run_cli(app, "members", "import", str(path))
    assert result.exit_code != 0
    assert f"line {line}:" in result.output and message in result.output
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(Member)) == 0


def test_wrong_header_is_reported_on_line_1(app, tmp_path):
    path = tmp_path / "members.csv"
    path.write_text("account,ref,email\n")
    result = run_cli(app, "members", "import", str(path))
    assert result.exit_code != 0 and "line 1: header must be" in result.output


def test_missing_file_is_a_clear_error(app, tmp_path):
    result = run_cli(app, "venues", "import", str(tmp_path / "nope.csv"))
    assert result.exit_code != 0 and "No such file" in result.output
