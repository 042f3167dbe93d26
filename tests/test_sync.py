"""Venue and member sync through the API and the CSV imports: auth, validation, atomicity."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from db import Member, Venue
from tests.support import API_TOKEN
from tests.support import run_cli as cli

GYM = "acct_1Gym000000000000"


def test_api_needs_the_bearer_token(client):
    assert client.get("/api/mismatches").status_code == 401
    wrong = client.get("/api/mismatches", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and "token" in wrong.json["error"]
    ok = client.get("/api/mismatches", headers={"Authorization": f"Bearer {API_TOKEN}"})
    assert ok.status_code == 200


def test_api_disabled_without_token(env, monkeypatch, db, redis):
    from config import load_config
    from listener.app import create_app

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
    ("cus_123", {"name": "X", "admin_emails": [], "livemode": False}, "acct_"),
    (GYM, {"admin_emails": [], "livemode": False, "name": " "}, "'name' is required"),
    (GYM, {"name": "X", "admin_emails": ["not-an-email"], "livemode": False}, "admin_emails"),
    (GYM, {"name": "X", "admin_emails": [], "livemode": "maybe"}, "livemode"),
    (GYM, {"name": "X", "admin_emails": [], "livemode": False, "admins": []}, "'admins'"),
    (GYM, ["not", "an", "object"], "JSON object"),
])
def test_venue_bad_input_says_why(api, account, body, message):
    response = api.put(f"/api/venues/{account}", json=body)
    assert response.status_code == 400 and message in response.json["error"]


def test_member_upsert_and_delete(api, db):
    api.put(f"/api/venues/{GYM}", json={"name": "Gym", "admin_emails": [], "livemode": False})
    url = f"/api/venues/{GYM}/members/m1"
    assert api.put(url, json={"email": "Ann@Example.com", "name": None,
                              "stripe_customer_id": None}).status_code == 201
    response = api.put(url, json={"email": "ann@example.com", "name": "Ann",
                                  "stripe_customer_id": "cus_A"})
    assert response.status_code == 200 and response.json["stripe_customer_id"] == "cus_A"
    with db.session() as s:
        m = s.scalar(select(Member))
        assert (m.email_normalized, m.stripe_customer_id) == ("ann@example.com", "cus_A")
    assert api.delete(url).status_code == 200
    assert api.delete(url).status_code == 404


def test_member_of_unknown_venue_is_404(api):
    response = api.put("/api/venues/acct_1Nope/members/m1", json={
        "email": "a@b.test", "name": None, "stripe_customer_id": None})
    assert response.status_code == 404


@pytest.mark.parametrize("body, message", [
    ({"email": None, "name": None, "stripe_customer_id": None}, "'email' is required"),
    ({"email": "nope", "name": None, "stripe_customer_id": None}, "email"),
    ({"email": "a@b.test", "name": None, "stripe_customer_id": "sub_123"}, "cus_"),
])
def test_member_bad_input_says_why(api, body, message):
    api.put(f"/api/venues/{GYM}", json={"name": "Gym", "admin_emails": [], "livemode": False})
    response = api.put(f"/api/venues/{GYM}/members/m1", json=body)
    assert response.status_code == 400 and message in response.json["error"]


def test_one_customer_cannot_link_two_members(api):
    api.put(f"/api/venues/{GYM}", json={"name": "Gym", "admin_emails": [], "livemode": False})
    api.put(f"/api/venues/{GYM}/members/m1", json={"email": "a@b.test", "name": None,
                                                    "stripe_customer_id": "cus_A"})
    response = api.put(f"/api/venues/{GYM}/members/m2", json={"email": "c@b.test", "name": None,
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
    return cli(*args)


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
    api.put(f"/api/venues/{GYM}", json={"name": "Gym", "admin_emails": [], "livemode": False})
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


# --- a partial update never wipes data ------------------------------------------------------

VENUE = {"name": "Harbour Gym", "admin_emails": ["a@gym.test", "b@gym.test"], "livemode": True}
MEMBER = {"email": "ann@example.com", "name": "Ann", "stripe_customer_id": "cus_Ann"}


def stored_venue(db):  # type: ignore[no-untyped-def]
    with db.session() as s:
        v = s.scalar(select(Venue).where(Venue.account_id == GYM))
        return v.name, v.admin_emails, v.livemode


def stored_member(db):  # type: ignore[no-untyped-def]
    with db.session() as s:
        m = s.scalar(select(Member).where(Member.member_ref == "m1"))
        return m.email, m.name, m.stripe_customer_id


def test_a_venue_put_without_every_field_is_400_and_changes_nothing(api, db):
    assert api.put(f"/api/venues/{GYM}", json=VENUE).status_code == 201
    response = api.put(f"/api/venues/{GYM}", json={"name": "Renamed"})
    assert response.status_code == 400
    assert "missing fields 'admin_emails', 'livemode'" in response.json["error"]
    assert "PATCH" in response.json["error"]
    assert stored_venue(db) == ("Harbour Gym", ["a@gym.test", "b@gym.test"], True)


def test_a_venue_patch_changes_only_what_it_names(api, db):
    assert api.patch(f"/api/venues/{GYM}", json={"name": "Nowhere"}).status_code == 404
    assert api.put(f"/api/venues/{GYM}", json=VENUE).status_code == 201
    response = api.patch(f"/api/venues/{GYM}", json={"name": "Harbour Gym & Spa"})
    assert response.status_code == 200 and response.json["admin_emails"] == VENUE["admin_emails"]
    assert stored_venue(db) == ("Harbour Gym & Spa", ["a@gym.test", "b@gym.test"], True)
    assert api.patch(f"/api/venues/{GYM}", json={}).status_code == 400
    assert api.patch(f"/api/venues/{GYM}", json={"livemode": "sometimes"}).status_code == 400
    assert stored_venue(db)[2] is True


def test_a_member_put_without_its_customer_is_400_and_keeps_the_link(api, db):
    api.put(f"/api/venues/{GYM}", json=VENUE)
    assert api.put(f"/api/venues/{GYM}/members/m1", json=MEMBER).status_code == 201
    response = api.put(f"/api/venues/{GYM}/members/m1", json={"email": "ann@example.com"})
    assert response.status_code == 400
    assert "missing fields 'name', 'stripe_customer_id'" in response.json["error"]
    assert stored_member(db) == ("ann@example.com", "Ann", "cus_Ann")
    # null is the explicit unlink
    response = api.put(f"/api/venues/{GYM}/members/m1", json={**MEMBER, "stripe_customer_id": None})
    assert response.status_code == 200 and stored_member(db)[2] is None


def test_a_member_patch_changes_only_what_it_names(api, db):
    api.put(f"/api/venues/{GYM}", json=VENUE)
    url = f"/api/venues/{GYM}/members/m1"
    assert api.patch(url, json={"name": "Ann"}).status_code == 404  # PATCH never creates
    assert api.put(url, json=MEMBER).status_code == 201
    response = api.patch(url, json={"email": "Ann.New@Example.com"})
    assert response.status_code == 200 and response.json["stripe_customer_id"] == "cus_Ann"
    assert stored_member(db) == ("Ann.New@Example.com", "Ann", "cus_Ann")
    with db.session() as s:
        assert s.scalar(select(Member.email_normalized)) == "ann.new@example.com"
    assert api.patch(url, json={"stripe_customer_id": None}).status_code == 200
    assert stored_member(db) == ("Ann.New@Example.com", "Ann", None)
    assert api.patch(url, json={"customer": "cus_X"}).status_code == 400


def test_members_import_says_which_rows_change_what_and_dry_run_writes_nothing(app, api,
                                                                               tmp_path, db):
    api.put(f"/api/venues/{GYM}", json=VENUE)
    for ref, email, cus in (("m1", "ann@example.com", "cus_Ann"),
                            ("m2", "bob@example.com", None),
                            ("m3", "cy@example.com", "cus_Cy")):
        api.put(f"/api/venues/{GYM}/members/{ref}", json={"email": email, "name": ref,
                                                          "stripe_customer_id": cus})
    path = tmp_path / "members.csv"
    path.write_text("account_id,member_ref,email,name,stripe_customer_id\n"
                    f"{GYM},m1,ann@example.com,m1,\n"          # unlinks cus_Ann
                    f"{GYM},m2,bobby@example.com,m2,cus_Ann\n"  # takes cus_Ann over
                    f"{GYM},m3,cy@example.com,m3,cus_Cy\n"      # unchanged
                    f"{GYM},m4,di@example.com,Di,\n")           # new
    result = run_cli(app, "members", "import", "--dry-run", str(path))
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert f"line 2: {GYM} member m1 would change: unlinks cus_Ann" in lines
    assert f"line 3: {GYM} member m2 would change: links cus_Ann, email changed" in lines
    assert "would import 4 members: 1 new, 2 changed, 1 unchanged (dry run: nothing was " \
           "written)" in lines
    assert "bobby@example.com" not in result.output  # IDs, never emails
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(Member)) == 3
        assert s.scalar(select(Member.stripe_customer_id).where(Member.member_ref == "m1")) \
            == "cus_Ann"

    result = run_cli(app, "members", "import", str(path))
    assert result.exit_code == 0, result.output
    assert f"line 2: {GYM} member m1 changed: unlinks cus_Ann" in result.output
    assert "imported 4 members: 1 new, 2 changed, 1 unchanged" in result.output
    with db.session() as s:
        links = dict(s.execute(select(Member.member_ref, Member.stripe_customer_id)).all())
        assert links == {"m1": None, "m2": "cus_Ann", "m3": "cus_Cy", "m4": None}
        assert s.scalar(select(Venue.recheck_requested_at)) is not None


def test_members_import_refuses_a_customer_another_member_keeps(app, api, tmp_path, db):
    api.put(f"/api/venues/{GYM}", json=VENUE)
    api.put(f"/api/venues/{GYM}/members/m1", json=MEMBER)
    path = tmp_path / "members.csv"
    path.write_text("account_id,member_ref,email,name,stripe_customer_id\n"
                    f"{GYM},m2,bob@example.com,Bob,\n"
                    f"{GYM},m3,cy@example.com,Cy,cus_Ann\n"
                    f"{GYM},m2,bob@example.com,Bob,\n")
    result = run_cli(app, "members", "import", str(path))
    assert result.exit_code != 0 and "line 4: member m2" in result.output  # twice in the file
    path.write_text("account_id,member_ref,email,name,stripe_customer_id\n"
                    f"{GYM},m2,bob@example.com,Bob,\n"
                    f"{GYM},m3,cy@example.com,Cy,cus_Ann\n")
    result = run_cli(app, "members", "import", str(path))
    assert result.exit_code != 0
    assert "line 3: customer cus_Ann is already linked to member m1" in result.output
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(Member)) == 1


def test_venues_import_says_what_it_changes(app, api, tmp_path, db):
    api.put(f"/api/venues/{GYM}", json=VENUE)
    path = tmp_path / "venues.csv"
    path.write_text("account_id,name,admin_emails,livemode\n"
                    f"{GYM},Harbour Gym,,true\n")
    result = run_cli(app, "venues", "import", str(path))
    assert result.exit_code == 0, result.output
    assert (f"line 2: {GYM} changed: admin_emails 2 -> 0 (no one will get its notices)"
            in result.output)
    assert stored_venue(db) == ("Harbour Gym", [], True)
