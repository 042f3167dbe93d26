"""Control characters are refused at the edge: every id, query parameter, form field, JSON
string and CLI argument. On PostgreSQL a NUL once reached the driver as a 500, and the 500's
log line wrote the path raw, so `%00%0a…` forged a line of the log."""

from __future__ import annotations

import logging

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from db import Member, StripeAction
from tests.pages_support import SUPPORT_USERS, csrf_from, sign_in
from tests.support import GYM

FORGED = "%00%0a2026-12-03 12:00:00,000 CRITICAL forged line"


@pytest.fixture
def venue(api):  # type: ignore[no-untyped-def]
    assert api.put(f"/api/venues/{GYM}", json={"name": "Gym", "admin_emails": [],
                                               "livemode": False}).status_code == 201
    return api


@pytest.fixture
def console(env, db, redis, monkeypatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("SUPPORT_USERS", SUPPORT_USERS)
    from config import load_config
    from listener.app import create_app

    client = create_app(load_config(), TESTING=True).test_client()
    assert sign_in(client).status_code == 303
    return client


@pytest.mark.parametrize("method, path", [
    ("GET", "/api/events/%00"),
    ("GET", "/api/events/evt_1%0d%0aX"),
    ("GET", "/api/mismatches?account=%00"),
    ("GET", "/api/mismatches?status=open%00"),
    ("DELETE", f"/api/venues/{GYM}/members/%00"),
    ("PUT", f"/api/venues/{GYM}/members/m%00"),
    ("GET", f"/api/{FORGED}"),
])
def test_api_refuses_control_characters_in_ids_and_parameters(venue, method, path, caplog):
    caplog.set_level(logging.INFO)
    response = getattr(venue, method.lower())(path)
    assert response.status_code == 400, response.get_data(as_text=True)
    assert "control character" in response.json["error"]
    assert "\x00" not in response.get_data(as_text=True)


@pytest.mark.parametrize("body, where", [
    ({"confirm": "sub_x", "actor": "eve\r\nX-Injected: 1"}, "actor"),
    ({"confirm": "sub_x\x00"}, "'confirm'"),
    ({"confirm": "sub_x", "actor": "ok", "extra": ["\x00"]}, "'extra'[0]"),
    ({"confirm": "sub_x", "a\x00": 1}, "a key"),
])
def test_api_refuses_control_characters_in_json_strings(venue, body, where):
    response = venue.post("/api/mismatches/1/cancel-subscription", json=body)
    assert response.status_code == 400 and where in response.json["error"]


def test_api_member_with_nul_stores_nothing(venue, db):
    response = venue.put(f"/api/venues/{GYM}/members/m-1", json={
        "email": "carl@example.com", "name": "Carl\x00", "stripe_customer_id": None})
    assert response.status_code == 400
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(Member)) == 0


def test_console_refuses_control_characters_in_paths_and_fields(console, db):
    token = csrf_from(console.get("/support").get_data(as_text=True))
    for path, data in (
        ("/support/events/%00/replay", {}),
        ("/support/events/evt_1%0a/replay", {}),
        ("/support/diagnose", {"pasted": "cus_\x00123"}),
        ("/support/diagnose/fix", {"customer": "cus_1\x00", "confirm": "cus_1\x00",
                                   "account": GYM}),
        ("/support/diagnose/fix", {"customer": "cus_1", "confirm": "cus_1",
                                   "account": f"{GYM}\x00"}),
    ):
        response = console.post(path, data={"csrf_token": token, **data})
        assert response.status_code == 400, (path, response.status_code)
        page = response.get_data(as_text=True)
        assert "control character" in page and "<html" in page.lower(), path
    for path in ("/mismatches?account=acct_%00x", "/support/diagnose?customer=cus_%00",
                 "/mismatches/1%00"):
        assert console.get(path).status_code == 400, path
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(StripeAction)) == 0
    # A pasted error over several lines is still fine.
    response = console.post("/support/diagnose", data={
        "csrf_token": token, "pasted": "No such customer: 'cus_Tab1'\n\tmore\r\n"})
    assert response.status_code == 200


def test_a_logged_value_cannot_forge_a_log_line(client):
    """What the service logs passes through the handlers create_app set up (scrub_logs):
    a value with %0a in it — Flask's "Exception on <path>" line — stays on its line."""
    import io

    from db.errors import scrub_logs

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        scrub_logs()
        logging.getLogger("listener").error("Exception on %s [GET]",
                                            "/api/events/\x00\nCRITICAL forged")
    finally:
        root.removeHandler(handler)
    assert stream.getvalue() == "ERROR Exception on /api/events/\\x00\\nCRITICAL forged [GET]\n"


def test_cli_refuses_control_characters_in_arguments_and_files(env, db, tmp_path):
    from listener.cli import main

    runner = CliRunner()
    for args in (["replay", "--since", "2026-01-01", "--account", "acct_\x00"],
                 ["diagnose", "cus_1\x00"], ["members", "import", "a\nb.csv"]):
        result = runner.invoke(main, args)
        assert result.exit_code == 1, args
        assert result.output.strip().splitlines() == [
            f"Error: argument {len(args)} holds a control character"], args
    path = tmp_path / "members.csv"
    path.write_text("account_id,member_ref,email,name,stripe_customer_id\n"
                    f"{GYM},m1,a@b.test,Ann,\n{GYM},m2,b@b.test,B\x00b,\n")
    result = runner.invoke(main, ["members", "import", str(path)])
    assert result.exit_code == 1
    assert "line 3: 'name' holds a control character" in result.output
    assert len(result.output.strip().splitlines()) == 1
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(Member)) == 0
